"""How one benchmark number is taken: the median time of a call (CUDA events on a GPU, perf_counter
on CPU), the bandwidth of a device copy, and the peak memory one call allocates."""
from __future__ import annotations

import os
import statistics
import time

import torch


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
