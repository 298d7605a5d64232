"""The dtype policy of every op (part of the op contracts, shared by the reference, the fakes and
every backend's launchers): which float dtypes the ops take, and the dtype they compute and
return log-densities in."""
from __future__ import annotations

import numpy as np
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any floating input is float64, else float32 (half inputs compute in float32)."""
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            return torch.float64
    return torch.float32


def split_scalar(value: float) -> tuple[float, float]:
    """A float as two float32 run-time arguments hi + lo, as the Triton kernels take float scalars
    (their `scalar` helper adds them back): never compile-time constants, and float64 kernels keep
    ~48 bits, hi + lo exactly."""
    hi = float(np.float32(value))
    return hi, float(np.float32(value - hi))


def kernel_scalar(value: float, overload: str) -> float:
    """The float a kernel of `overload` computes with when given `value`: the Triton kernels rebuild
    it from split_scalar's two float32 halves (about 48 bits in float64), the C++ kernels take it
    whole. A backward that undoes a kernel's scaling divides by this, for an exact round trip."""
    return sum(split_scalar(value)) if overload == "triton" else value
