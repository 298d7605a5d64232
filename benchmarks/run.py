"""`fastelbo bench`: the workloads of workloads.py on every available fused backend
against eager PyTorch and torch.compile of that same code, in one run.

    fastelbo bench                                   # the default workloads for the device
    fastelbo bench --workloads W2 W5 --reps 100 --out benchmarks/results
    python -m fastelbo.benchmarks.run ...            # the same, without the console script

Implementations: "plain" (the step in plain PyTorch as VAE code writes it, torch.randn noise: for
context), "eager" (fastelbo's reference path), "compile" (torch.compile of the reference path) and
each available fused backend ("cpu", "triton", "cuda"). Speedups are over "eager" and "compile".

Per workload, mode (fwd, fwd+bwd) and implementation: the median time (CUDA events on a GPU,
perf_counter on CPU), the speedups, the effective bandwidth from the minimal-bytes formula of
workloads.py, that bandwidth as a fraction of a device copy measured in the same run, and the peak
memory of one step (measure.peak_bytes says what exactly is counted). A table on screen, row by
row, with a progress bar on stderr; in the output folder <device>-<UTC time>.csv, .json and .md
(the machine, versions and commit on every row) and .png (speedups, fwd+bwd; needs matplotlib).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys

import torch

from .. import __version__
from .._backend import NAMES, backends, runs_on
from .measure import copy_bandwidth, median_time, peak_bytes
from .plot import speedup_plot
from .report import Progress, header, markdown, table_row
from .workloads import WORKLOADS, leaves, make_inputs, plain_step, step

IMPLS = ("plain", "eager", "compile") + tuple(name for name in NAMES if name != "reference")
MODES = ((False, "fwd"), (True, "fwd+bwd"))


def available_impls(device: torch.device) -> dict:
    """name -> (backend, compiled?) or the reason it cannot be timed on `device`, for every impl."""
    impls = {"plain": ("plain", False), "eager": ("reference", False), "compile": ("reference", True)}
    for name, status in backends().items():
        if name == "reference":
            continue
        if status != "available":
            impls[name] = status
        elif not runs_on(name, device.type):
            impls[name] = f"it takes {'CPU' if name == 'cpu' else 'CUDA'} tensors, not {device.type}"
        elif name == "triton" and device.type == "cpu":
            impls[name] = "on CPU tensors it runs in Triton's interpreter: a correctness tool, not timed"
        else:
            impls[name] = (name, False)
    return impls


def run_one(w, impl, inputs, device, backward, reps, warmup):
    """(median seconds, peak bytes) of one workload step on one implementation."""
    backend, compiled = impl
    if backend == "plain":
        fn = lambda w, t, _, backward: plain_step(w, t, backward)  # noqa: E731
    elif compiled:
        # A fresh compile per workload and mode, as one training script would get: without the
        # reset, dynamo would recompile `step` for each new workload with dynamic shapes, and give
        # up compiling it after its recompile limit (8).
        torch._dynamo.reset()
        fn = torch.compile(step)
    else:
        fn = step
    state = {}

    def before():  # fresh leaves, so gradients never accumulate
        state["t"] = leaves(inputs, backward)

    def call():
        fn(w, state["t"], backend, backward)

    seconds = median_time(call, device, reps, warmup, before)
    before()
    return seconds, peak_bytes(call, device)


def _cpu_name() -> str:
    """The CPU's model name and core count, e.g. "AMD EPYC, 2 cores, AVX2"."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}"


def _commit() -> str | None:
    """The short commit of the checkout this file is in, "-dirty" when tracked files differ from
    it; None outside a git checkout (an installed wheel)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here)
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], capture_output=True, cwd=here).returncode == 1
    except OSError:
        return None
    commit = head.stdout.strip()
    return (commit + "-dirty" if dirty else commit) if head.returncode == 0 and commit else None


def machine_info(device: torch.device) -> dict:
    """Where the numbers come from, recorded on every row."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {"device": name, "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "triton": triton_version, "fastelbo": __version__, "commit": _commit()}


def run(names, impls: dict, device, reps: int, warmup: int, copy: float, machine: dict) -> list:
    """Every row of one run; prints each workload and mode's rows as they finish."""
    progress = Progress(len(names) * len(MODES) * len(impls))
    rows = []
    for name in names:
        w = WORKLOADS[name]
        inputs = make_inputs(w, device)
        for backward, mode in MODES:
            block = []
            for impl_name, impl in impls.items():
                progress.show(f"{name} {mode} {impl_name}")
                seconds, peak = run_one(w, impl, inputs, device, backward, reps, warmup)
                progress.advance()
                gbps = w.bytes_moved(backward) / seconds / 1e9
                block.append({
                    "workload": name, "mode": mode, "impl": impl_name, "median_ms": seconds * 1e3,
                    "speedup_vs_eager": None, "speedup_vs_compile": None, "GB_per_s": gbps,
                    "copy_fraction": gbps * 1e9 / copy, "peak_MiB": peak / 2**20,
                    "bytes": w.bytes_moved(backward), "copy_GB_per_s": copy / 1e9, "reps": reps, **machine,
                })
            base = {r["impl"]: r["median_ms"] for r in block}
            for row in block:
                for baseline in ("eager", "compile"):
                    if baseline in base:
                        row[f"speedup_vs_{baseline}"] = base[baseline] / row["median_ms"]
                progress.print(table_row(row))
            rows += block
    progress.clear()
    return rows


def write_results(rows, machine: dict, copy: float, out: str, plot: bool) -> list:
    """<out>/<device>-<UTC time>.csv, .json, .md and (with plot and matplotlib) .png; the paths written."""
    os.makedirs(out, exist_ok=True)
    slug = "".join(ch if ch.isalnum() else "-" for ch in machine["device"]).strip("-").lower()
    stem = os.path.join(out, f"{slug}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%SZ}")
    with open(stem + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(stem + ".json", "w") as f:
        json.dump({"machine": machine, "copy_GB_per_s": copy / 1e9, "rows": rows}, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(rows, _summary(machine, copy)))
    written = [stem + ext for ext in (".csv", ".json", ".md")]
    if not plot:
        return written
    if importlib.util.find_spec("matplotlib") is None:
        print("no PNG: matplotlib is not installed (it comes with `pip install fastelbo[demo]`)")
    elif speedup_plot(rows, stem + ".png", f"fastelbo on {machine['device']} (commit {machine['commit']})"):
        written.append(stem + ".png")
    else:
        print("no PNG: the speedup plot needs eager or compile among --impls")
    return written


def _summary(machine: dict, copy: float) -> str:
    return (f"Device: {machine['device']}; torch {machine['torch']}, triton {machine['triton']}, "
            f"fastelbo {machine['fastelbo']} ({machine['commit']}); copy bandwidth {copy / 1e9:.1f} GB/s.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `fastelbo bench` (and of python -m fastelbo.benchmarks.run)."""
    gpu = torch.cuda.is_available()
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), metavar="W",
                        help=f"workloads among {', '.join(sorted(WORKLOADS))} (default: W1-W5 on a GPU, "
                             "W1-W4 on CPU; W5 is bandwidth-bound, for GPUs)")
    parser.add_argument("--device", default="cuda" if gpu else "cpu", help="device to run on (default: %(default)s)")
    parser.add_argument("--reps", type=int, default=None, help="timed calls per measurement (default: 50 GPU, 10 CPU)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first (default: %(default)s)")
    parser.add_argument("--impls", nargs="+", choices=IMPLS, metavar="IMPL",
                        help=f"implementations among {', '.join(IMPLS)} (default: all available on the device; "
                             "without eager or compile, the speedups over it are left out)")
    parser.add_argument("--out", default="fastelbo-bench",
                        help="folder for the CSV, JSON, Markdown and PNG (default: ./%(default)s; the "
                             "repository records its runs with --out benchmarks/results)")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")


def main_from_args(args) -> int:
    """Run the benchmark the parsed options ask for; 0, or 2 for options that cannot run here."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return _refuse(f"--device {args.device}: no CUDA device here")
    if (args.reps is not None and args.reps < 1) or args.warmup < 0:
        return _refuse("--reps must be at least 1 and --warmup at least 0")
    names = args.workloads or [n for n, w in WORKLOADS.items() if device.type == "cuda" or not w.gpu_only]
    reps = args.reps or (50 if device.type == "cuda" else 10)
    known = available_impls(device)
    wanted = list(dict.fromkeys(args.impls or known))
    refused = [f"{name}: {known[name]}" for name in wanted if isinstance(known[name], str)]
    if args.impls and refused:
        return _refuse("cannot time " + "; ".join(refused))
    impls = {name: known[name] for name in wanted if not isinstance(known[name], str)}

    machine = machine_info(device)
    copy = copy_bandwidth(device, reps)
    print(_summary(machine, copy))
    for reason in refused:
        print(f"not timed: {reason}")
    print(f"{len(names)} workloads x {len(MODES)} modes x {len(impls)} implementations; "
          f"median of {reps} calls after {args.warmup} warmup calls")
    print(header(), flush=True)
    rows = run(names, impls, device, reps, args.warmup, copy, machine)
    print("wrote " + "\n      ".join(write_results(rows, machine, copy, args.out, not args.no_plot)))
    return 0


def _refuse(message: str) -> int:
    print(f"fastelbo bench: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastelbo.benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return main_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
