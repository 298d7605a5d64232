"""The Triton kernels of the likelihood ops (fastelbo::bernoulli_log_prob,
continuous_bernoulli_log_prob, gaussian_log_prob and its backward kernel, categorical_log_prob),
registered as their `.triton` overloads by fastelbo/triton_backend/register.py.

Each forward returns the per-row log-prob and, when asked (need_grad), the elementwise gradient
buffer b in the compute dtype (float32, float64 for float64 inputs); absent buffers are empty
tensors. The op contracts (outputs, buffers, gradients) are the C++ kernels', in fastelbo/ops/.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
from torch import Tensor

from ..ops import _checks
from ..ops._autograd import batch_shape
from ..triton_kernels.likelihoods import (
    binary_log_prob_kernel,
    categorical_log_prob_kernel,
    gaussian_log_prob_backward_kernel,
    gaussian_log_prob_kernel,
)
from ._common import TL_DTYPES, block_rows, compute, split_scalar
from ._layout import plan

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
MAX_BLOCK_N = 2048


def _row_grid(layout):
    block_n = min(MAX_BLOCK_N, max(16, triton.next_power_of_2(max(layout.cols, 1))))
    block_r = block_rows(block_n, layout.rows)
    return (triton.cdiv(layout.rows, block_r),), block_r, block_n


def _grad_buffer(need: bool, like: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.empty(like.shape if need else (0,), dtype=dtype, device=like.device)


# ---- Bernoulli and continuous Bernoulli ----

def _binary(logits: Tensor, x: Tensor, event_dims: int, continuous: bool, need_grad: bool,
            expected_grad: float) -> tuple[Tensor, Tensor]:
    _checks.expected_grad(expected_grad)
    dtype, tl_dtype = compute(logits)
    out = torch.empty(batch_shape(logits, event_dims), dtype=dtype, device=logits.device)
    grad = _grad_buffer(need_grad, logits, dtype)
    if out.numel() == 0:
        return out, grad
    (logits_, x_), layout = plan([logits, x.expand(logits.shape)], event_dims)
    grid, block_r, block_n = _row_grid(layout)
    binary_log_prob_kernel[grid](
        logits_, x_, out, grad if need_grad else out,
        layout.rows, layout.cols, layout.n1, layout.n2, *layout.args(0), *layout.args(1),
        *split_scalar(expected_grad),
        CONTINUOUS=continuous, NEED_GRAD=need_grad, DTYPE=tl_dtype, BLOCK_R=block_r, BLOCK_N=block_n,
    )
    return out, grad


def bernoulli_log_prob(logits: Tensor, x: Tensor, event_dims: int, need_grad: bool,
                       expected_grad: float = 1.0) -> tuple[Tensor, Tensor]:
    return _binary(logits, x, event_dims, False, need_grad, expected_grad)


def continuous_bernoulli_log_prob(logits: Tensor, x: Tensor, event_dims: int, need_grad: bool,
                                  expected_grad: float = 1.0) -> tuple[Tensor, Tensor]:
    return _binary(logits, x, event_dims, True, need_grad, expected_grad)


# ---- Gaussian ----

def gaussian_log_prob(mean: Tensor, x: Tensor, logvar: Optional[Tensor], logvar_value: float, event_dims: int,
                      need_grad: bool, expected_grad: float = 1.0) -> tuple[Tensor, Tensor]:
    _checks.expected_grad(expected_grad)
    dtype, tl_dtype = compute(mean, logvar)
    out = torch.empty(batch_shape(mean, event_dims), dtype=dtype, device=mean.device)
    grad_mean = _grad_buffer(need_grad, mean, dtype)
    if out.numel() == 0:
        return out, grad_mean
    tensors = [mean, x.expand(mean.shape)] + ([logvar.expand(mean.shape)] if logvar is not None else [])
    tensors, layout = plan(tensors, event_dims)
    v_tensor = tensors[2] if logvar is not None else mean
    v_strides = layout.args(2) if logvar is not None else (0, 0, 0, 0)
    grid, block_r, block_n = _row_grid(layout)
    const_hi, const_lo = split_scalar(layout.cols * HALF_LOG_2PI)
    v_hi, v_lo = split_scalar(logvar_value)
    gaussian_log_prob_kernel[grid](
        tensors[0], tensors[1], v_tensor, out, grad_mean if need_grad else out,
        layout.rows, layout.cols, layout.n1, layout.n2, *layout.args(0), *layout.args(1), *v_strides,
        v_hi, v_lo, const_hi, const_lo, *split_scalar(expected_grad),
        V_TENSOR=logvar is not None, NEED_GRAD=need_grad, DTYPE=tl_dtype, BLOCK_R=block_r, BLOCK_N=block_n,
    )
    return out, grad_mean


def gaussian_log_prob_backward(grad_out: Tensor, buffer: Tensor, logvar: Optional[Tensor], logvar_value: float,
                               event_dims: int, need_logvar: bool, expected_grad: float = 1.0,
                               need_mean: bool = True) -> tuple[Tensor, Tensor]:
    """(grad_mean = g b in the compute dtype (empty without need_mean), grad_logvar = sum of
    g ((b e^(v/2))^2 - 1)/2 in logvar's shape and dtype, or empty) from the forward's buffer c b,
    c = expected_grad."""
    _checks.expected_grad(expected_grad)
    need_v = need_logvar and logvar is not None
    grad_mean = torch.empty_like(buffer) if need_mean else buffer.new_empty(0)
    if buffer.numel() == 0:
        grad_logvar = torch.zeros_like(logvar) if need_v else buffer.new_empty(0)
        return grad_mean, grad_logvar
    grad_v = torch.empty_like(buffer) if need_v else buffer.new_empty(0)
    (v_tensor,), layout = plan([logvar.expand(buffer.shape) if need_v else buffer], event_dims)
    grid, block_r, block_n = _row_grid(layout)
    gaussian_log_prob_backward_kernel[grid](
        grad_out.contiguous(), buffer, v_tensor, grad_mean if need_mean else buffer, grad_v if need_v else buffer,
        layout.rows, layout.cols, layout.n1, layout.n2, *layout.args(0), *split_scalar(expected_grad),
        NEED_MEAN=need_mean, NEED_GRAD_V=need_v, DTYPE=TL_DTYPES[buffer.dtype], BLOCK_R=block_r, BLOCK_N=block_n,
    )
    grad_logvar = grad_v.sum_to_size(logvar.shape).to(logvar.dtype) if need_v else buffer.new_empty(0)
    return grad_mean, grad_logvar


# ---- categorical ----

def categorical_log_prob(logits: Tensor, target: Tensor, event_dims: int, need_grad: bool) -> tuple[Tensor, Tensor]:
    dtype, tl_dtype = compute(logits)
    elem_shape = logits.shape[:-1]
    grad = _grad_buffer(need_grad, logits, dtype)
    per_element = torch.empty(elem_shape, dtype=dtype, device=logits.device)
    if per_element.numel() > 0:
        target_full = target.expand(elem_shape).unsqueeze(-1).expand(logits.shape)
        (logits_, target_), layout = plan([logits, target_full], 1)
        n_classes = logits.shape[-1]
        block_c = min(MAX_BLOCK_N, max(16, triton.next_power_of_2(n_classes)))
        block_e = block_rows(block_c, layout.rows)
        categorical_log_prob_kernel[(triton.cdiv(layout.rows, block_e),)](
            logits_, target_, per_element, grad if need_grad else per_element,
            layout.rows, n_classes, layout.n1, layout.n2, *layout.args(0), *layout.args(1)[:3],
            NEED_GRAD=need_grad, DTYPE=tl_dtype, BLOCK_E=block_e, BLOCK_C=block_c,
        )
    out = per_element.sum(dim=tuple(range(-event_dims, 0))) if event_dims else per_element
    return out, grad

