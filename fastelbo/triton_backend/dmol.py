"""The Triton kernel of fastelbo::discretized_logistic_mixture_log_prob (the discretized mixture of
logistics), registered as its `.triton` overload by fastelbo/triton_backend/register.py, with the
schema, fake and autograd of fastelbo/ops/discretized_logistic_mixture_log_prob.py.

params (..., 10 M) and x (..., 3) are channels last with any strides (a movedim view of NCHW
tensors, a broadcast x with stride 0): the pixels are addressed as rows through their strides
(fastelbo/triton_backend/_layout.py) and never copied unless their dims cannot be described by
three row strides. The kernel writes one log-prob per pixel into a scratch tensor, which torch
sums over the event dims (a fixed reduction order: the result is the same bit for bit on every run).
"""
from __future__ import annotations

import math

import torch
import triton
from torch import Tensor

from ..triton_kernels.dmol import dmol_log_prob_kernel
from ._common import compute, split_scalar
from ._layout import MAX_ROW_DIMS, _row_dims

MAX_BITS = 10
# Pixels x components one program holds per tile: about 30 tiles are live at once (the three
# channels' values and derivatives), so 8 warps keep 4 elements per thread at 1024.
TILE_ELEMENTS = 1024


def _check(params: Tensor, x: Tensor, n_mix: int, bits: int, event_dims: int) -> None:
    """The C++ op's checks (csrc/binding/checks.h), for direct calls of the torch op."""
    op = "discretized_logistic_mixture_log_prob"
    for name, t in (("params", params), ("x", x)):
        if not t.is_floating_point():
            raise ValueError(f"{op}: {name} must be a floating tensor, got {t.dtype}")
    if x.device != params.device:
        raise ValueError(f"{op}: x and params must be on the same device, got {x.device} and {params.device}")
    if n_mix < 1:
        raise ValueError(f"{op}: n_mix must be >= 1, got {n_mix}")
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"{op}: bits must be in [1, {MAX_BITS}], got {bits}")
    if params.dim() < 1 or params.shape[-1] != 10 * n_mix:
        raise ValueError(f"{op}: params must have 10 * n_mix = {10 * n_mix} entries in its last (channel) dim, "
                         f"got shape {tuple(params.shape)}")
    if x.dim() < 1 or x.shape[-1] != 3:
        raise ValueError(f"{op}: x must have 3 channels in its last dim, got shape {tuple(x.shape)}")
    pixels = tuple(params.shape[:-1]) + (3,)
    if x.dim() > len(pixels) or any(n != 1 and n != m for n, m in zip(reversed(x.shape), reversed(pixels))):
        raise ValueError(f"{op}: x of shape {tuple(x.shape)} does not broadcast to params' pixels (with 3 "
                         f"channels) {pixels}")
    if not 0 <= event_dims < params.dim():
        raise ValueError(f"{op}: event_dims={event_dims} must be in [0, {params.dim() - 1}] (params' pixel dims)")


def _rows(pixels: tuple[int, ...], tensors: list[Tensor]):
    """(n1, n2, [(s0, s1, s2, channel stride) per tensor]) addressing the tensors' pixels as rows,
    or None when their pixel dims need more than three row strides."""
    dims = _row_dims(pixels, [t.stride()[:-1] for t in tensors], 0)
    if len(dims) > MAX_ROW_DIMS:
        return None
    dims = [(1, [0] * len(tensors))] * (MAX_ROW_DIMS - len(dims)) + dims
    (_, st0), (n1, st1), (n2, st2) = dims
    return n1, n2, [(st0[i], st1[i], st2[i], t.stride(-1)) for i, t in enumerate(tensors)]


def discretized_logistic_mixture_log_prob(params: Tensor, x: Tensor, n_mix: int, bits: int, event_dims: int,
                                          need_grad: bool) -> tuple[Tensor, Tensor]:
    _check(params, x, n_mix, bits, event_dims)
    dtype, tl_dtype = compute(params)
    pixels = tuple(params.shape[:-1])
    # The buffer has params' layout (empty_like keeps a dense tensor's strides), as the fake says.
    buffer = torch.empty_like(params, dtype=dtype) if need_grad else params.new_empty((0,), dtype=dtype)
    per_pixel = torch.empty(pixels, dtype=dtype, device=params.device)
    n_pixels = per_pixel.numel()
    if n_pixels > 0:
        p_, x_, g_ = params, x.expand(pixels + (3,)), buffer if need_grad else params
        rows = _rows(pixels, [p_, x_, g_])
        if rows is None:  # copy params (and write a contiguous buffer), then x in its own shape, then broadcast
            p_ = params.contiguous()
            g_ = torch.empty(params.shape, dtype=dtype, device=params.device) if need_grad else p_
            x_ = x.contiguous().expand(pixels + (3,))
            rows = _rows(pixels, [p_, x_, g_])
            if rows is None:
                x_ = x_.contiguous()
                rows = _rows(pixels, [p_, x_, g_])
        n1, n2, strides = rows
        levels = 2 ** bits - 1
        block_m = triton.next_power_of_2(n_mix)
        block_p = max(1, min(triton.next_power_of_2(n_pixels), TILE_ELEMENTS // block_m))
        dmol_log_prob_kernel[(triton.cdiv(n_pixels, block_p),)](
            p_, x_, per_pixel, g_ if need_grad else per_pixel,
            n_pixels, n_mix, n1, n2, *strides[0], *strides[1], *strides[2],
            *split_scalar(1.0 / levels), *split_scalar(math.log(levels / 2.0)),
            NEED_GRAD=need_grad, DTYPE=tl_dtype, BLOCK_P=block_p, BLOCK_M=block_m,
            num_warps=8 if block_p * block_m >= TILE_ELEMENTS else 4,
        )
        if need_grad and g_ is not buffer:
            buffer.copy_(g_)
    if event_dims == 0:
        return per_pixel, buffer
    return per_pixel.sum(dim=tuple(range(len(pixels) - event_dims, len(pixels)))), buffer
