"""fastelbo.linear_gaussian_log_prob: a decoder's last nn.Linear and the Gaussian log-likelihood of
its output in one op, the means never materialized in full:

    m = h W^T + b,   out = sum_n -((x - m)^2 e^-v + v + log 2 pi)/2   per row, or its sum / mean
    d out/d m = (x - m) e^-v,   d out/d v = ((x - m)^2 e^-v - 1)/2,
    d h = (d m) W,   d W = (d m)^T h,   d b = sum_rows d m

v = logvar, a number or a tensor broadcasting to m (e.g. one learned value per output, (Dx,)),
in blocks of W's rows (fastelbo/ops/_linear_head.py explains the blocks, the reductions and the
second order). The public function, the schemas of `fastelbo::linear_gaussian_log_prob` and its
backward, the kernels, the fakes, the reference and the autograd, as for every op.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import _validate as V
from .._backend import OVERLOAD, resolve
from .._dtypes import compute_dtype
from . import _linear_head as head
from ._autograd import needs_grad
from .gaussian_log_prob import reference as gaussian_reference

NAME = "linear_gaussian_log_prob"
SCHEMAS = {
    NAME: "(Tensor input, Tensor weight, Tensor? bias, Tensor x, Tensor? logvar, float logvar_value, int reduction, "
          "int chunk_size, str kernel, bool[4] needs) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    f"{NAME}_backward": "(Tensor grad_out, Tensor input, Tensor weight, Tensor? bias, Tensor x, Tensor? logvar, "
                        "float logvar_value, int chunk_size, str kernel, bool[4] needs) -> "
                        "(Tensor, Tensor, Tensor, Tensor)",
}


def linear_gaussian_log_prob(input, weight, bias, x, *, logvar=0.0, reduction="none", chunk_size=None,
                             backend=None) -> torch.Tensor:
    """sum over the last dim of -((x - m)^2 e^-v + v + log 2 pi)/2 with m = F.linear(input, weight,
    bias), without materializing m; per row (input's batch shape), or its "sum" / "mean". logvar: a
    number or a tensor broadcasting to m (learnable). chunk_size: columns of weight per block."""
    reduction, chunk_size = head.check_arguments(input, weight, bias, x, reduction, chunk_size, V.FLOAT_DTYPES)
    V.finite("x", x)
    tensor_logvar = isinstance(logvar, torch.Tensor)
    if tensor_logvar:
        V.tensor("logvar", logvar)
        V.same_device("logvar", logvar, "input", input)
        V.broadcasts_to("logvar", logvar, input.shape[:-1] + weight.shape[:1], "the means (input's batch shape, "
                        "out_features)")
        V.finite("logvar", logvar)
    else:
        logvar = V.real("logvar", logvar)
    name = resolve(backend, input.device)
    if name == "reference":
        return reference(input, weight, bias, x, logvar if tensor_logvar else None, 0.0 if tensor_logvar else logvar,
                         reduction)
    needs = head.linear_needs(input, weight, bias) + [tensor_logvar and needs_grad(logvar)]
    value = 0.0 if tensor_logvar else logvar
    op = EAGER.apply if reduction and head.use_owning_path() else torch.ops.fastelbo.linear_gaussian_log_prob
    return op(input, weight, bias, x, logvar if tensor_logvar else None, value, reduction, chunk_size, OVERLOAD[name],
              needs)[0]


def reference(input, weight, bias, x, logvar, logvar_value, reduction):
    """The unfused composition: F.linear, then the Gaussian reference, then the reduction."""
    v = logvar if logvar is not None else logvar_value
    return head.reduce(gaussian_reference(F.linear(input, weight, bias), x, v, 1), reduction)


def block_likelihood(kernel: str, x, logvar, logvar_value, need_logvar: bool):
    """The Gaussian kernels (overload `kernel`) on one block of means, for head.run_blocks; the
    third result is the block's logvar gradient (logvar's block shape) when need_logvar."""
    forward = getattr(torch.ops.fastelbo.gaussian_log_prob, kernel)
    scale = getattr(torch.ops.fastelbo.gaussian_log_prob_backward, kernel)
    need_logvar = need_logvar and logvar is not None

    def run(mean, c0, c1, row_grad):
        v = head.columns(logvar, c0, c1)
        out, grad = forward(mean, head.columns(x, c0, c1), v, logvar_value, 1, row_grad is not None)
        if row_grad is None:
            return out, None, None
        if not isinstance(row_grad, torch.Tensor) and not need_logvar:
            return out, grad, None
        g = row_grad if isinstance(row_grad, torch.Tensor) else torch.ones_like(out)
        grad, grad_v = scale(g, grad, v, logvar_value, 1, need_logvar)
        return out, grad, grad_v if need_logvar else None

    return run


def logvar_gradient(blocks, logvar):
    """The logvar gradient from the blocks' (concatenated where logvar was cut into blocks)."""
    if len(blocks) == 0:
        return torch.zeros_like(logvar, dtype=compute_dtype(logvar))
    if head.columns(logvar, 0, 1) is logvar:
        return torch.stack(blocks).sum(0)
    return torch.cat(blocks, dim=-1)


def run(input, weight, bias, x, logvar, logvar_value, chunk_size, kernel, row_grad, needs):
    dtype = compute_dtype(input, logvar)  # (float64 when logvar is, as the reference computes)
    if logvar is not None:  # in the compute dtype: the kernels then sum its gradient there (one rounding)
        logvar = logvar.to(dtype)
    block = block_likelihood(kernel, x, logvar, logvar_value, needs[3])
    out, grad_h, grad_w, grad_b, extras = head.run_blocks(block, input, weight, bias, chunk_size, row_grad, needs,
                                                          dtype)
    grad_v = logvar_gradient(extras, logvar) if row_grad is not None and needs[3] and logvar is not None else None
    return out, (grad_h, grad_w, grad_b, grad_v)


def forward_kernel(input, weight, bias, x, logvar, logvar_value, reduction, chunk_size, kernel, needs):
    out, grads = run(input, weight, bias, x, logvar, logvar_value, chunk_size, kernel, 1.0 if reduction else None,
                     needs)
    return (head.reduce(out, reduction), *(head.empty_or(t, input) for t in grads))


def backward_kernel(grad_out, input, weight, bias, x, logvar, logvar_value, chunk_size, kernel, needs):
    _, grads = run(input, weight, bias, x, logvar, logvar_value, chunk_size, kernel, grad_out, needs)
    likes = (input, weight, input, logvar)
    return tuple(head.empty_or(None if g is None else g.to(t.dtype), input) for g, t in zip(grads, likes))


def _shapes(input, weight, logvar):
    dtype = compute_dtype(input, logvar)
    v = (logvar.shape, dtype) if logvar is not None else ((0,), dtype)
    return ((input.shape, dtype), (weight.shape, dtype), (weight.shape[:1], dtype), v)


def fake(input, weight, bias, x, logvar, logvar_value, reduction, chunk_size, kernel, needs):
    out = input.new_empty(() if reduction else input.shape[:-1], dtype=compute_dtype(input, logvar))
    return (out, *(input.new_empty(s, dtype=d) if reduction and need else input.new_empty(0)
                   for (s, d), need in zip(_shapes(input, weight, logvar), needs)))


def backward_fake(grad_out, input, weight, bias, x, logvar, logvar_value, chunk_size, kernel, needs):
    likes = (input, weight, input, logvar)
    return tuple(input.new_empty(s, dtype=t.dtype) if need else input.new_empty(0)
                 for ((s, _), t), need in zip(zip(_shapes(input, weight, logvar), likes), needs))


def setup_context(ctx, inputs, output):
    input, weight, bias, x, logvar, logvar_value, reduction, chunk_size, kernel, needs = inputs
    ctx.options = (logvar_value, reduction, chunk_size, kernel, math.prod(input.shape[:-1]))
    ctx.save_for_backward(input, weight, bias, x, logvar, *head.keep_buffers(ctx, output))


def backward(ctx, grad_out, *unused):
    none = (None,) * 5
    if grad_out is None:
        return (None, None, None, None, None, *none)
    input, weight, bias, x, logvar, *saved = ctx.saved_tensors
    logvar_value, reduction, chunk_size, kernel, rows = ctx.options
    needs = [ctx.needs_input_grad[i] for i in (0, 1, 2, 4)]
    likes = (input, weight, input, logvar)
    buffers, owned = head.taken_buffers(ctx, saved)
    if head.differentiating():
        grads = head.reference_backward(lambda h, w, b, v: reference(h, w, b, x, v, logvar_value, reduction),
                                        (input, weight, bias, logvar), needs, grad_out)
    elif reduction == 0:  # one gradient per row: each block recomputed and scaled by it
        grads = torch.ops.fastelbo.linear_gaussian_log_prob_backward(grad_out, input, weight, bias, x, logvar,
                                                                     logvar_value, chunk_size, kernel, needs)
    else:
        if buffers is None:  # a retained graph's second backward: the forward's gradients again
            buffers, owned = forward_kernel(input, weight, bias, x, logvar, logvar_value, reduction, chunk_size,
                                            kernel, needs)[1:], True
        factor = grad_out / max(rows, 1) if reduction == 2 else grad_out  # (no rows: the gradients are 0)
        grads = [head.scaled(b, factor, t.dtype, owned) if need else None
                 for b, t, need in zip(buffers, likes, needs)]
    grads = [g if need else None for g, need in zip(grads, needs)]
    return (grads[0], grads[1], grads[2], None, grads[3], *none)


head.define(NAME, SCHEMAS[NAME], forward_kernel, fake)
head.define(f"{NAME}_backward", SCHEMAS[f"{NAME}_backward"], backward_kernel, backward_fake)
torch.library.register_autograd(f"fastelbo::{NAME}", backward, setup_context=setup_context, lib=head.LIBRARY)
EAGER = head.owning_function(forward_kernel, setup_context, backward)
