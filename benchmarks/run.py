"""`fastelbo bench`: the workloads of workloads.py (the ELBO pieces around a stand-in decoder) on
every available fused backend against plain PyTorch and torch.compile of that plain code, in one
run.

    fastelbo bench                                   # the default workloads for the device
    fastelbo bench --workloads S1 W2 --reps 100 --out benchmarks/results
    python -m fastelbo.benchmarks.run ...            # the same, without the console script

Implementations (workloads.py shows the code of each):
  plain            the step as VAE code writes it in plain PyTorch (torch.randn_like noise, BCE
                   with logits or the Gaussian formula, the closed-form KL or MC log-weights,
                   logsumexp for IWAE), eager: a baseline
  compile(plain)   torch.compile(fullgraph=True) of that plain step, compiled afresh for each
                   workload and mode: the other baseline ("compile" for short in --impls)
  reference        fastelbo's reference path (pure PyTorch, Philox noise in int64 tensor ops):
                   for context, never a baseline
  cpu, triton, cuda                 each available fused backend, eager
  cpu+compile, triton+compile, ...  the fused step inside torch.compile(fullgraph=True)
Speedups are over plain and over compile(plain) only (above 1: faster than the baseline).

Per workload and mode (fwd, fwd+bwd) the implementations are timed in turn, round-robin (CUDA
events on a GPU, perf_counter on CPU), and each gets: the median time, the speedups, the effective
bandwidth from the minimal-bytes formula of workloads.py, that bandwidth as a fraction of a device
copy measured in the same run, and the peak memory of one step (measure.peak_bytes says what
exactly is counted). A table on screen, row by row, with a progress bar on stderr; in the output
folder <device>-<UTC time>.csv, .json and .md (the machine, versions and commit on every row) and
.png (speedups, fwd+bwd; needs matplotlib).
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
from typing import NamedTuple, Optional

import torch

from .. import __version__
from .._backend import NAMES, backends, runs_on
from .measure import copy_bandwidth, interleaved_medians, peak_bytes, steady_malloc, step_call
from .plot import speedup_plot
from .report import Progress, header, markdown, table_row
from .workloads import WORKLOADS, fused_loss, leaves, make_inputs, plain_loss

PLAIN, COMPILE_PLAIN = "plain", "compile(plain)"
BASELINES = {PLAIN: "speedup_vs_plain", COMPILE_PLAIN: "speedup_vs_compile_plain"}  # the only baselines
FUSED = tuple(name for name in NAMES if name != "reference")
IMPLS = (PLAIN, COMPILE_PLAIN, "reference") + tuple(n for name in FUSED for n in (name, f"{name}+compile"))
ALIASES = {"compile": COMPILE_PLAIN}
MODES = ((False, "fwd"), (True, "fwd+bwd"))


class Impl(NamedTuple):
    backend: Optional[str]  # None: plain PyTorch
    compiled: bool


def available_impls(device: torch.device) -> dict:
    """name -> Impl, or the reason it cannot be timed on `device`, for every implementation."""
    impls = {PLAIN: Impl(None, False), COMPILE_PLAIN: Impl(None, True), "reference": Impl("reference", False)}
    status = backends()
    for name in FUSED:
        if status.get(name, "unknown backend") != "available":
            reason = status.get(name, "unknown backend")
        elif not runs_on(name, device.type):
            reason = f"it takes {'CPU' if name == 'cpu' else 'CUDA'} tensors, not {device.type}"
        elif name == "triton" and device.type == "cpu":
            reason = "on CPU tensors it runs in Triton's interpreter: a correctness tool, not timed"
        else:
            reason = None
        impls[name] = reason or Impl(name, False)
        impls[f"{name}+compile"] = reason or Impl(name, True)
    return impls


def step_function(w, impl: Impl):
    """inputs -> loss of one workload on one implementation; a compiled one compiles on its first call."""
    if impl.backend is None:
        fn = lambda t: plain_loss(w, t)  # noqa: E731
    else:
        fn = lambda t: fused_loss(w, t, impl.backend)  # noqa: E731
    return torch.compile(fn, fullgraph=True) if impl.compiled else fn


def block_calls(w, impls: dict, inputs: dict, backward: bool) -> tuple[dict, dict]:
    """{name: (call, before)} for one workload and mode, and {name: why it failed} for the
    implementations whose first call (a compiled one's compile) raised."""
    # A fresh compile per workload and mode, as one training script would get: without the reset,
    # dynamo would recompile for each new workload with dynamic shapes, and give up compiling
    # after its recompile limit (8).
    torch._dynamo.reset()
    calls, failed = {}, {}
    for name, impl in impls.items():
        call, before = step_call(step_function(w, impl), lambda: leaves(inputs, backward), backward)
        try:
            before()
            call()
        except Exception as error:  # noqa: BLE001 (reported, and the other rows still run)
            first_line = (str(error).strip().splitlines() or [""])[0]
            failed[name] = f"{type(error).__name__}: {first_line}"
            continue
        calls[name] = (call, before)
    return calls, failed


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


def machine_info(device: torch.device, malloc: str) -> dict:
    """Where the numbers come from, recorded on every row."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {"device": name, "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "triton": triton_version, "fastelbo": __version__, "commit": _commit(), "malloc": malloc}


def run(names, impls: dict, device, reps: int, warmup: int, copy: float, machine: dict,
        min_seconds: float = 0.0) -> list:
    """Every row of one run; prints each workload and mode's rows as they finish."""
    progress = Progress(len(names) * len(MODES))
    rows = []
    for name in names:
        w = WORKLOADS[name]
        inputs = make_inputs(w, device)
        for backward, mode in MODES:
            progress.show(f"{name} {mode}: {len(impls)} implementations in turn")
            calls, failed = block_calls(w, impls, inputs, backward)
            for impl_name, why in failed.items():
                progress.print(f"not timed: {impl_name} on {name} {mode}: {why}")
            medians = interleaved_medians(calls, device, reps, warmup, min_seconds) if calls else {}
            block = []
            for impl_name, (call, before) in calls.items():
                seconds, timed = medians[impl_name]
                before()
                peak = peak_bytes(call, device)
                gbps = w.bytes_moved(backward) / seconds / 1e9
                block.append({
                    "workload": name, "mode": mode, "impl": impl_name, "median_ms": seconds * 1e3,
                    "speedup_vs_plain": None, "speedup_vs_compile_plain": None, "GB_per_s": gbps,
                    "copy_fraction": gbps * 1e9 / copy, "peak_MiB": peak / 2**20,
                    "bytes": w.bytes_moved(backward), "copy_GB_per_s": copy / 1e9, "reps": timed,
                    "description": w.describe(), **machine,
                })
            progress.advance()
            base = {r["impl"]: r["median_ms"] for r in block}
            for row in block:
                for baseline, key in BASELINES.items():
                    if baseline in base:
                        row[key] = base[baseline] / row["median_ms"]
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
        f.write(markdown(rows, _summary(machine, copy), _legend(rows)))
    written = [stem + ext for ext in (".csv", ".json", ".md")]
    if not plot:
        return written
    if importlib.util.find_spec("matplotlib") is None:
        print("no PNG: matplotlib is not installed (it comes with `pip install fastelbo[demo]`)")
    elif speedup_plot(rows, stem + ".png", f"fastelbo on {machine['device']} (commit {machine['commit']})"):
        written.append(stem + ".png")
    else:
        print(f"no PNG: the speedup plot needs {PLAIN} or {COMPILE_PLAIN} among --impls")
    return written


def _legend(rows) -> list:
    """The lines under the Markdown table that say what the workloads and implementations are."""
    described = dict.fromkeys((r["workload"], r["description"]) for r in rows)
    lines = [f"- {name}: {description}" for name, description in described]
    lines.append("- plain: the step in plain PyTorch, eager; compile(plain): torch.compile(fullgraph=True) of it; "
                 "reference: fastelbo's reference path (for context, not a baseline); <backend>: a fused backend; "
                 "<backend>+compile: the fused step inside torch.compile(fullgraph=True). Speedups are over plain "
                 "and compile(plain); the code of each is in benchmarks/workloads.py.")
    return lines


def _summary(machine: dict, copy: float) -> str:
    return (f"Device: {machine['device']}; torch {machine['torch']}, triton {machine['triton']}, "
            f"fastelbo {machine['fastelbo']} ({machine['commit']}); copy bandwidth {copy / 1e9:.1f} GB/s; "
            f"malloc {machine['malloc']}.")


def _impl_name(value: str) -> str:
    return ALIASES.get(value, value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `fastelbo bench` (and of python -m fastelbo.benchmarks.run)."""
    gpu = torch.cuda.is_available()
    defaults = {"cuda": [n for n in WORKLOADS], "cpu": [n for n, w in WORKLOADS.items() if not w.gpu_only]}
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), metavar="W",
                        help=f"workloads among {', '.join(WORKLOADS)} (default: {' '.join(defaults['cuda'])} on a "
                             f"GPU, {' '.join(defaults['cpu'])} on CPU; W5 is bandwidth-bound, for GPUs)")
    parser.add_argument("--device", default="cuda" if gpu else "cpu", help="device to run on (default: %(default)s)")
    parser.add_argument("--reps", type=int, default=None,
                        help="rounds of timed calls per workload and mode, each implementation once a round "
                             "(default: 50 GPU, 30 CPU)")
    parser.add_argument("--min-time", type=float, default=None,
                        help="more rounds until a workload and mode's timed calls add up to this many seconds "
                             "(default: 0.5 GPU, 1 CPU; at most 100 times --reps rounds)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls of each first (default: %(default)s)")
    parser.add_argument("--impls", nargs="+", type=_impl_name, choices=IMPLS, metavar="IMPL",
                        help=f"implementations among {', '.join(IMPLS)} ('compile' is short for {COMPILE_PLAIN}; "
                             "default: all available on the device; without plain or compile(plain), the speedups "
                             "over it are left out)")
    parser.add_argument("--out", default="fastelbo-bench",
                        help="folder for the CSV, JSON, Markdown and PNG (default: ./%(default)s; the "
                             "repository records its runs with --out benchmarks/results)")
    parser.add_argument("--malloc", choices=["steady", "default"], default="steady",
                        help="steady: glibc's malloc keeps freed memory (no page faults that depend on the calls "
                             "before; measure.steady_malloc says why); default: glibc as it is (default: %(default)s)")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")


def main_from_args(args) -> int:
    """Run the benchmark the parsed options ask for; 0, or 2 for options that cannot run here."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return _refuse(f"--device {args.device}: no CUDA device here")
    if (args.reps is not None and args.reps < 1) or args.warmup < 0 or (args.min_time or 0) < 0:
        return _refuse("--reps must be at least 1, --warmup and --min-time at least 0")
    names = args.workloads or [n for n, w in WORKLOADS.items() if device.type == "cuda" or not w.gpu_only]
    reps = args.reps or (50 if device.type == "cuda" else 30)
    min_seconds = args.min_time if args.min_time is not None else (0.5 if device.type == "cuda" else 1.0)
    known = available_impls(device)
    wanted = list(dict.fromkeys(args.impls or known))
    refused = [f"{name}: {known[name]}" for name in wanted if isinstance(known[name], str)]
    if args.impls and refused:
        return _refuse("cannot time " + "; ".join(refused))
    impls = {name: known[name] for name in wanted if not isinstance(known[name], str)}

    malloc = steady_malloc() if args.malloc == "steady" else "default"
    machine = machine_info(device, malloc)
    copy = copy_bandwidth(device, reps)
    print(_summary(machine, copy))
    for reason in refused:
        print(f"not timed: {reason}")
    print(f"{len(names)} workloads x {len(MODES)} modes x {len(impls)} implementations, timed in turn; median "
          f"of at least {reps} calls each (and {min_seconds:g} s of calls per workload and mode) after "
          f"{args.warmup} warmup calls")
    print(header(), flush=True)
    rows = run(names, impls, device, reps, args.warmup, copy, machine, min_seconds)
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
