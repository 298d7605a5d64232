"""How the benchmark numbers are taken: the median times of several implementations timed in turn
(round-robin, CUDA events on a GPU, perf_counter on CPU), the bandwidth of a device copy, and the
peak memory one call allocates."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import statistics
import time

import torch


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2**20  # the most glibc takes on 64-bit
TRIM_THRESHOLD = 2**30


def steady_malloc() -> str:
    """Make glibc's malloc keep freed memory in the process, so that a call's time does not depend
    on what ran before it; what was done, for the record ("steady (...)", or "default (why not)").

    PyTorch's CPU tensors come from malloc. With glibc's defaults a block above the mmap threshold
    (128 KiB, raised on the fly up to 32 MiB) is mapped afresh and unmapped when freed, and free
    memory at the top of the heap is returned to the OS past a trim threshold; the next call then
    faults its pages in again. On the 2-core virtual machines a page fault costs more than the
    kernel's work on the page (W4's plain forward timed alone: 4-7 ms with the memory kept, 20 ms
    without), and whether a call faults depends on what the calls before it allocated and freed,
    so the same step's time changed 2x with the implementations timed beside it. Serving blocks up to 32 MiB
    from the heap and never trimming it makes every implementation reuse its memory from call to
    call. `fastelbo bench --malloc default` leaves glibc as it is.
    """
    path = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(path).mallopt if path else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return "default (no glibc mallopt here)"
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return "default (mallopt refused)"
    return f"steady (glibc mmap threshold {MMAP_THRESHOLD // 2**20} MiB, no trim)"


def script_setup(device_name: str) -> tuple[torch.device, str, str]:
    """What the benchmark scripts (decoder_share, linear_head, hierarchical) start with: the device,
    the fused C++ backend of its type ("cpu" or "cuda"; SystemExit with the reason when it is
    unavailable) and the malloc setting (steady_malloc on CPU)."""
    import fastelbo as fe

    device = torch.device(device_name)
    backend = "cpu" if device.type == "cpu" else "cuda"
    if fe.backends()[backend] != "available":
        raise SystemExit(f"backend {backend!r} is unavailable: {fe.backends()[backend]}")
    return device, backend, steady_malloc() if device.type == "cpu" else "n/a"


def step_call(fn, fresh_inputs, backward: bool) -> tuple:
    """(call, before) for interleaved_medians: call runs one step, loss = fn(inputs), and its
    backward when timing fwd+bwd; before (untimed) makes fresh inputs, leaves whose gradients
    never accumulate from call to call."""
    state = {}

    def before():
        state["t"] = fresh_inputs()

    def call():
        loss = fn(state["t"])
        if backward:
            loss.backward()

    return call, before


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


def median_time(fn, device: torch.device, reps: int, warmup: int, before=None) -> float:
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


def interleaved_medians(calls: dict, device: torch.device, reps: int, warmup: int,
                        min_seconds: float = 0.0) -> dict:
    """{name: (median seconds, timed calls)} of each `calls[name] = (fn, before)`, timed in turn.

    First `warmup` untimed calls of each (a compiled function compiles in its first), then rounds:
    each round times one call of every implementation, the first of the round moving one place on
    each time (round r starts at the (r mod n)-th), so that a burst of load on a shared machine, or
    the order itself, falls on all of them alike. Rounds go on until there are `reps` of them and
    their timed calls add up to `min_seconds` (more samples for short calls; at most 100 * reps
    rounds). `before` (or None) runs untimed ahead of each call of its fn (fresh leaves, so
    gradients never accumulate).
    """
    timed = _timer(device)
    names = list(calls)
    for name in names:
        fn, before = calls[name]
        for _ in range(warmup):
            if before:
                before()
            fn()
    samples = {name: [] for name in names}
    spent, rounds = 0.0, 0
    while rounds < reps or (spent < min_seconds and rounds < 100 * reps):
        start = rounds % len(names)
        for name in names[start:] + names[:start]:
            fn, before = calls[name]
            if before:
                before()
            seconds = timed(fn)
            samples[name].append(seconds)
            spent += seconds
        rounds += 1
    return {name: (statistics.median(s), len(s)) for name, s in samples.items()}


def copy_bandwidth(device: torch.device, reps: int) -> float:
    """Bytes/s of dst.copy_(src) (read + write) on a buffer far larger than the caches."""
    n = (256 if device.type == "cuda" else 32) * 2**20 // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / median_time(lambda: dst.copy_(src), device, reps, 3)


def peak_bytes(fn, device: torch.device) -> int:
    """The most bytes that tensors allocated during one call of fn hold at any moment of the call:
    the peak memory fn adds on top of what was live before it (temporaries it frees again count, as
    do the tensors it leaves alive).

    CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), less the bytes allocated
    before (the caching allocator's tensor bytes, not what it reserved from the driver).
    CPU: torch.profiler with profile_memory=True records each allocation and free of torch's CPU
    allocator as a "[memory]" event (+bytes or -bytes, time-stamped); the running sum of those
    events in time order is what the call holds, and its maximum is the peak. (The profiler does not
    see the free of a block allocated before it started, so on CPU such a free does not lower the
    count as it does on CUDA.) Counted are the allocations of the thread that runs fn, which on CPU
    also runs the autograd backward; not counted is memory from outside torch's allocator (the C++
    kernels' per-thread scratch rows, std::vector) or allocated inside intra-op worker threads, which
    the profiler does not follow (fastelbo's C++ kernels allocate their tensors before going
    parallel, as torch's elementwise ops and reductions do).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    return _cpu_peak_bytes(fn)


def _cpu_peak_bytes(fn) -> int:
    from torch.profiler import DeviceType, ProfilerActivity, profile

    # Kineto writes "profiler_start"/"profiler_stop" lines to stderr on every profile at all of its
    # log levels (0-5), which would break the progress bar; it reads this variable once, at its
    # first profile in the process. A value the user set is kept.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
    held = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):  # stable: equal stamps keep record order
        held += event.nbytes()
        peak = max(peak, held)
    return peak
