"""fastelbo.linear_bernoulli_log_prob: a decoder's last nn.Linear and the Bernoulli log-likelihood
of its output in one op, the logits never materialized in full:

    l = h W^T + b,   out = sum_n x l - softplus(l)   per row (reduction "none"), or its sum / mean
    d out/d l = x - sigmoid(l),   d h = (d l) W,   d W = (d l)^T h,   d b = sum_rows d l

in blocks of W's rows (output columns), each block's logits and gradient buffer kept in cache
between the GEMM and the likelihood kernel (fastelbo/ops/_linear_head.py explains the blocks,
the reductions and the second order). The public function, the schemas of
`fastelbo::linear_bernoulli_log_prob` and its backward, the kernels, the fakes, the reference and
the autograd, as for every op (see fastelbo/ops/__init__.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import _validate as V
from .._backend import OVERLOAD, resolve
from .._dtypes import compute_dtype
from . import _linear_head as head
from .bernoulli_log_prob import reference as bernoulli_reference

NAME = "linear_bernoulli_log_prob"
SCHEMAS = {
    NAME: "(Tensor input, Tensor weight, Tensor? bias, Tensor x, int reduction, int chunk_size, str kernel, "
          "bool[3] needs) -> (Tensor, Tensor, Tensor, Tensor)",
    f"{NAME}_backward": "(Tensor grad_out, Tensor input, Tensor weight, Tensor? bias, Tensor x, int chunk_size, "
                        "str kernel, bool[3] needs) -> (Tensor, Tensor, Tensor)",
}


def linear_bernoulli_log_prob(input, weight, bias, x, *, reduction="none", chunk_size=None,
                              backend=None) -> torch.Tensor:
    """sum over the last dim of x l - softplus(l) with l = F.linear(input, weight, bias), without
    materializing l; per row (input's batch shape), or its "sum" / "mean" (reduction). x: the data
    in [0, 1] (float, bool or uint8), broadcasting to l's shape. chunk_size: columns of weight per
    block (default: about 2^18 logits per block)."""
    reduction, chunk_size = head.check_arguments(input, weight, bias, x, reduction, chunk_size, V.DATA_DTYPES)
    V.unit_interval("x", x)
    name = resolve(backend, input.device)
    if name == "reference":
        return reference(input, weight, bias, x, reduction)
    op = EAGER.apply if reduction and head.use_owning_path() else torch.ops.fastelbo.linear_bernoulli_log_prob
    return op(input, weight, bias, x, reduction, chunk_size, OVERLOAD[name], head.linear_needs(input, weight, bias))[0]


def reference(input, weight, bias, x, reduction):
    """The unfused composition: F.linear, then the Bernoulli reference, then the reduction."""
    return head.reduce(bernoulli_reference(F.linear(input, weight, bias), x, 1), reduction)


def block_likelihood(kernel: str, x):
    """The Bernoulli kernel (overload `kernel`) on one block of logits, for head.run_blocks."""
    op = getattr(torch.ops.fastelbo.bernoulli_log_prob, kernel)

    def run(logits, c0, c1, row_grad):
        out, grad = op(logits, head.columns(x, c0, c1), 1, row_grad is not None)
        if row_grad is None:
            return out, None, None
        if isinstance(row_grad, torch.Tensor):
            grad.mul_(row_grad.unsqueeze(-1))  # the kernel's own buffer
        return out, grad, None

    return run


def forward_kernel(input, weight, bias, x, reduction, chunk_size, kernel, needs):
    out, grad_h, grad_w, grad_b, _ = head.run_blocks(block_likelihood(kernel, x), input, weight, bias, chunk_size,
                                                     1.0 if reduction else None, needs)
    return (head.reduce(out, reduction), *(head.empty_or(t, input) for t in (grad_h, grad_w, grad_b)))


def backward_kernel(grad_out, input, weight, bias, x, chunk_size, kernel, needs):
    _, grad_h, grad_w, grad_b, _ = head.run_blocks(block_likelihood(kernel, x), input, weight, bias, chunk_size,
                                                   grad_out, needs)
    return tuple(head.empty_or(None if g is None else g.to(t.dtype), input)
                 for g, t in zip((grad_h, grad_w, grad_b), (input, weight, input)))


def fake(input, weight, bias, x, reduction, chunk_size, kernel, needs):
    dtype = compute_dtype(input)
    out = input.new_empty(() if reduction else input.shape[:-1], dtype=dtype)
    shapes = ((input.shape, dtype), (weight.shape, dtype), (weight.shape[:1], dtype))
    return (out, *(input.new_empty(s, dtype=d) if reduction and need else input.new_empty(0)
                   for (s, d), need in zip(shapes, needs)))


def backward_fake(grad_out, input, weight, bias, x, chunk_size, kernel, needs):
    shapes = (input.shape, weight.shape, weight.shape[:1])
    return tuple(input.new_empty(s) if need else input.new_empty(0) for s, need in zip(shapes, needs))


def setup_context(ctx, inputs, output):
    input, weight, bias, x, reduction, chunk_size, kernel, needs = inputs
    ctx.options = (reduction, chunk_size, kernel, math.prod(input.shape[:-1]))
    ctx.save_for_backward(input, weight, bias, x, *head.keep_buffers(ctx, output))


def backward(ctx, grad_out, *unused):
    none = (None,) * 5
    if grad_out is None:
        return (None, None, None, *none)
    input, weight, bias, x, *saved = ctx.saved_tensors
    reduction, chunk_size, kernel, rows = ctx.options
    needs = list(ctx.needs_input_grad[:3])
    buffers, owned = head.taken_buffers(ctx, saved)
    if head.differentiating():
        grads = head.reference_backward(lambda h, w, b: reference(h, w, b, x, reduction), (input, weight, bias),
                                        needs, grad_out)
    elif reduction == 0:  # one gradient per row: each block recomputed and scaled by it
        grads = torch.ops.fastelbo.linear_bernoulli_log_prob_backward(grad_out, input, weight, bias, x, chunk_size,
                                                                      kernel, needs)
    else:
        if buffers is None:  # a retained graph's second backward: the forward's gradients again
            buffers, owned = forward_kernel(input, weight, bias, x, reduction, chunk_size, kernel, needs)[1:], True
        factor = grad_out / max(rows, 1) if reduction == 2 else grad_out  # (no rows: the gradients are 0)
        grads = [head.scaled(b, factor, t.dtype, owned) if need else None
                 for b, t, need in zip(buffers, (input, weight, input), needs)]
    return (*(g if need else None for g, need in zip(grads, needs)), *none)


head.define(NAME, SCHEMAS[NAME], forward_kernel, fake)
head.define(f"{NAME}_backward", SCHEMAS[f"{NAME}_backward"], backward_kernel, backward_fake)
torch.library.register_autograd(f"fastelbo::{NAME}", backward, setup_context=setup_context, lib=head.LIBRARY)
EAGER = head.owning_function(forward_kernel, setup_context, backward)
