"""Benchmark the ELBO workloads (benchmarks/workloads.py) on every available fused backend against
eager PyTorch (the reference path, as users write it) and torch.compile of that same code, all in
one run.

    python benchmarks/run.py                       # default workloads for the device
    python benchmarks/run.py --workloads W2 W5 --reps 100 --out benchmarks/results

Implementations: "plain" (the step in plain PyTorch as VAE code writes it, torch.randn noise: for
context), "eager" (fastelbo's reference path), "compile" (torch.compile of the reference path) and
each available fused backend. Speedups are over "eager" and "compile", as DESIGN.md §7 asks.

Per workload, mode (fwd, fwd+bwd) and implementation: the median time (CUDA events on a GPU,
perf_counter on CPU), the speedups over eager and over torch.compile, the effective bandwidth from
the minimal-bytes formula of workloads.py, that bandwidth as a fraction of a device copy measured
in the same run, and the peak memory of one step (GPU). Results go to <out>/<device>-<time>.{csv,json,md}
with the machine, versions and commit on every row.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workloads import WORKLOADS, leaves, make_inputs, plain_step, step  # noqa: E402


def _timer(device: torch.device):
    """fn -> seconds of one call, synchronized properly for the device."""
    if device.type == "cuda":
        def timed(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
    else:
        def timed(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
    return timed


def median_time(fn, device, reps: int, warmup: int, before=None) -> float:
    """Median seconds of fn over `reps` calls after `warmup` calls; `before` runs untimed first."""
    timed = _timer(device)
    for _ in range(warmup):
        if before:
            before()
        fn()
    samples = []
    for _ in range(reps):
        if before:
            before()
        samples.append(timed(fn))
    return statistics.median(samples)


def copy_bandwidth(device, reps: int) -> float:
    """Bytes/s of dst.copy_(src) (read + write) on a buffer far larger than the caches."""
    n = (256 if device.type == "cuda" else 32) * 2**20 // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / median_time(lambda: dst.copy_(src), device, reps, 3)


def _implementations(device) -> dict:
    """name -> (backend, compiled?) for every implementation measured on this device."""
    import fastelbo as fe

    from fastelbo._backend import runs_on

    impls = {"plain": ("plain", False), "eager": ("reference", False), "compile": ("reference", True)}
    for name, status in fe.backends().items():
        # Triton on CPU tensors is its interpreter: a correctness tool, not something to time.
        fused = name != "reference" and (name != "triton" or device.type == "cuda")
        if fused and status == "available" and runs_on(name, device.type):
            impls[name] = (name, False)
    return impls


def run_one(w, impl, inputs, device, backward, reps, warmup):
    """(median seconds, peak MiB or None) of one workload step on one implementation."""
    backend, compiled = impl
    if backend == "plain":
        fn = lambda w, t, _, backward: plain_step(w, t, backward)  # noqa: E731
    else:
        fn = torch.compile(step) if compiled else step
    state = {}

    def before():  # fresh leaves, so gradients never accumulate
        state["t"] = leaves(inputs, backward)

    def call():
        fn(w, state["t"], backend, backward)

    seconds = median_time(call, device, reps, warmup, before)
    peak = None
    if device.type == "cuda":
        before()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return seconds, peak


def _cpu_name() -> str:
    """The CPU's model name and core count, e.g. "AMD EPYC, 2 cores, AVX2"."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}"


def _machine(device) -> dict:
    import fastelbo

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except OSError:
        commit = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {"device": name, "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "triton": triton_version, "fastelbo": fastelbo.__version__, "commit": commit}


def run(workload_names, device, reps, warmup):
    """All rows of one benchmark run."""
    machine = _machine(device)
    copy = copy_bandwidth(device, reps)
    impls = _implementations(device)
    rows = []
    for name in workload_names:
        w = WORKLOADS[name]
        inputs = make_inputs(w, device)
        for backward in (False, True):
            mode = "fwd+bwd" if backward else "fwd"
            times = {}
            for impl_name, impl in impls.items():
                seconds, peak = run_one(w, impl, inputs, device, backward, reps, warmup)
                times[impl_name] = seconds
                gbps = w.bytes_moved(backward) / seconds / 1e9
                rows.append({
                    "workload": name, "mode": mode, "impl": impl_name, "median_ms": seconds * 1e3,
                    "GB_per_s": gbps, "copy_fraction": gbps * 1e9 / copy, "peak_MiB": peak,
                    "bytes": w.bytes_moved(backward), **machine,
                })
            for row in rows[-len(impls):]:
                row["speedup_vs_eager"] = times["eager"] / (row["median_ms"] / 1e3)
                row["speedup_vs_compile"] = times["compile"] / (row["median_ms"] / 1e3)
            print(_format_rows(rows[-len(impls):]), flush=True)
    return rows, copy


COLUMNS = ["workload", "mode", "impl", "median_ms", "speedup_vs_eager", "speedup_vs_compile", "GB_per_s",
           "copy_fraction", "peak_MiB"]


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _format_rows(rows) -> str:
    return "\n".join(" | ".join(_cell(r[c]) for c in COLUMNS) for r in rows)


def markdown(rows, copy, machine) -> str:
    lines = [f"Device: {machine['device']}; torch {machine['torch']}, triton {machine['triton']}, "
             f"fastelbo {machine['fastelbo']} ({machine['commit']}); copy bandwidth {copy / 1e9:.1f} GB/s.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=None,
                        help="default: W1-W5 on a GPU, W1-W4 on CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=None, help="timed calls per measurement (default 50 GPU, 10 CPU)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    names = args.workloads or [n for n, w in WORKLOADS.items() if device.type == "cuda" or not w.gpu_only]
    reps = args.reps or (50 if device.type == "cuda" else 10)
    print(" | ".join(COLUMNS))
    rows, copy = run(names, device, reps, args.warmup)
    machine = _machine(device)
    os.makedirs(args.out, exist_ok=True)
    slug = "".join(ch if ch.isalnum() else "-" for ch in machine["device"]).strip("-").lower()
    stem = os.path.join(args.out, f"{slug}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%SZ}")
    with open(stem + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(stem + ".json", "w") as f:
        json.dump({"machine": machine, "copy_GB_per_s": copy / 1e9, "rows": rows}, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(rows, copy, machine))
    print(f"wrote {stem}.csv, .json, .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
