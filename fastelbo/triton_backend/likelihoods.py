"""The likelihoods as torch.library custom ops on the Triton kernels.

Each forward op returns the per-row log-prob and, when asked (need_grad), the elementwise
gradient in a buffer it owns, in the compute dtype (float32, float64 for float64 inputs): the
backward pass only scales that buffer by the incoming per-row gradient (one elementwise multiply)
and rounds once to the parameters' dtype, as the reference does. Absent buffers are empty tensors.

fastelbo::triton_binary_log_prob(logits, x, event_dims, continuous, need_grad) -> (out, grad_logits)
fastelbo::triton_gaussian_log_prob(mean, x, logvar?, logvar_value, event_dims, need_grad)
    -> (out, grad_mean, grad_logvar)      grad_logvar per element, float32/64, only for a logvar tensor
fastelbo::triton_categorical_log_prob(logits, target, event_dims, need_grad) -> (out, grad_logits)
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
from torch import Tensor

from .. import _op_rules as rules
from ..triton_kernels.likelihoods import (
    binary_log_prob_kernel,
    categorical_log_prob_kernel,
    gaussian_log_prob_kernel,
)
from ._common import block_rows, compute, split_scalar
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

@torch.library.custom_op("fastelbo::triton_binary_log_prob", mutates_args=())
def binary_op(logits: Tensor, x: Tensor, event_dims: int, continuous: bool, need_grad: bool) -> tuple[Tensor, Tensor]:
    dtype, tl_dtype = compute(logits)
    out = torch.empty(rules.batch_shape(logits, event_dims), dtype=dtype, device=logits.device)
    grad = _grad_buffer(need_grad, logits, dtype)
    if out.numel() == 0:
        return out, grad
    (logits_, x_), layout = plan([logits, x.expand(logits.shape)], event_dims)
    grid, block_r, block_n = _row_grid(layout)
    binary_log_prob_kernel[grid](
        logits_, x_, out, grad if need_grad else out,
        layout.rows, layout.cols, layout.n1, layout.n2, *layout.args(0), *layout.args(1),
        CONTINUOUS=continuous, NEED_GRAD=need_grad, DTYPE=tl_dtype, BLOCK_R=block_r, BLOCK_N=block_n,
    )
    return out, grad


binary_op.register_fake(rules.binary_fake)
binary_op.register_autograd(rules.binary_backward, setup_context=rules.binary_setup_context)


# ---- Gaussian ----

@torch.library.custom_op("fastelbo::triton_gaussian_log_prob", mutates_args=())
def gaussian_op(mean: Tensor, x: Tensor, logvar: Optional[Tensor], logvar_value: float, event_dims: int,
                need_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    dtype, tl_dtype = compute(mean, logvar)
    out = torch.empty(rules.batch_shape(mean, event_dims), dtype=dtype, device=mean.device)
    grad_mean = _grad_buffer(need_grad, mean, dtype)
    need_grad_v = need_grad and logvar is not None
    grad_logvar = _grad_buffer(need_grad_v, mean, dtype)
    if out.numel() == 0:
        return out, grad_mean, grad_logvar
    tensors = [mean, x.expand(mean.shape)] + ([logvar.expand(mean.shape)] if logvar is not None else [])
    tensors, layout = plan(tensors, event_dims)
    v_tensor = tensors[2] if logvar is not None else mean
    v_strides = layout.args(2) if logvar is not None else (0, 0, 0, 0)
    grid, block_r, block_n = _row_grid(layout)
    const_hi, const_lo = split_scalar(layout.cols * HALF_LOG_2PI)
    v_hi, v_lo = split_scalar(logvar_value)
    gaussian_log_prob_kernel[grid](
        tensors[0], tensors[1], v_tensor, out, grad_mean if need_grad else out, grad_logvar if need_grad_v else out,
        layout.rows, layout.cols, layout.n1, layout.n2, *layout.args(0), *layout.args(1), *v_strides,
        v_hi, v_lo, const_hi, const_lo,
        V_TENSOR=logvar is not None, NEED_GRAD=need_grad, NEED_GRAD_V=need_grad_v, DTYPE=tl_dtype,
        BLOCK_R=block_r, BLOCK_N=block_n,
    )
    return out, grad_mean, grad_logvar


@gaussian_op.register_fake
def _(mean, x, logvar, logvar_value, event_dims, need_grad):
    dtype, _ = compute(mean, logvar)
    need_grad_v = need_grad and logvar is not None
    return (mean.new_empty(rules.batch_shape(mean, event_dims), dtype=dtype),
            mean.new_empty(mean.shape if need_grad else (0,), dtype=dtype),
            mean.new_empty(mean.shape if need_grad_v else (0,), dtype=dtype))


def _gaussian_setup_context(ctx, inputs, output):
    mean, x, logvar, logvar_value, event_dims, need_grad = inputs
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(output[2])  # the per-element logvar gradient: derived from b when differentiated
    ctx.options = (logvar_value, event_dims)
    ctx.meta = rules.gaussian_meta(mean, x, logvar)
    ctx.save_for_backward(output[1], output[2], logvar)


def _gaussian_backward(ctx, grad_out, grad_buffer, _):
    grad_mean_buffer, grad_logvar_buffer, logvar = ctx.saved_tensors
    logvar_value, event_dims = ctx.options
    needs = ctx.needs_input_grad[:3]
    if grad_buffer is not None or rules.differentiating():
        grads = rules.gaussian_backward_differentiable(grad_out, grad_buffer, grad_mean_buffer, logvar, logvar_value,
                                                       event_dims, needs, ctx.meta)
        return (*grads, None, None, None)
    if grad_out is None:
        return None, None, None, None, None, None
    mean_dtype, x_shape, x_dtype, logvar_meta = ctx.meta
    grad_mean = grad_x = grad_logvar = None
    scaled = rules.scale_buffer(grad_mean_buffer, grad_out, event_dims)
    if needs[0]:
        grad_mean = scaled.to(mean_dtype)
    if needs[1]:  # d/dx = -d/dm
        grad_x = (-scaled).sum_to_size(x_shape).to(x_dtype)
    if needs[2] and logvar_meta is not None:
        shape, dtype = logvar_meta
        grad_logvar = rules.scale_buffer(grad_logvar_buffer, grad_out, event_dims).sum_to_size(shape).to(dtype)
    return grad_mean, grad_x, grad_logvar, None, None, None


gaussian_op.register_autograd(_gaussian_backward, setup_context=_gaussian_setup_context)


# ---- categorical ----

@torch.library.custom_op("fastelbo::triton_categorical_log_prob", mutates_args=())
def categorical_op(logits: Tensor, target: Tensor, event_dims: int, need_grad: bool) -> tuple[Tensor, Tensor]:
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


categorical_op.register_fake(rules.categorical_fake)
categorical_op.register_autograd(rules.categorical_backward, setup_context=rules.categorical_setup_context)
