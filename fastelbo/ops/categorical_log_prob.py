"""fastelbo.categorical_log_prob: log softmax(logits)[target] summed over the event dims.

    per element: l_t - logsumexp(l) (NaN for t outside [0, C): never a wrong number)
    b = d/d l = onehot(t) - softmax(l)

The public function, the schema of `fastelbo::categorical_log_prob`, the fake, the reference and
the gradient rules, as for every op (see fastelbo/ops/__init__.py).
"""
from __future__ import annotations

import math

import torch

from .. import _validate as V
from .._backend import OVERLOAD, resolve
from .._dtypes import compute_dtype
from . import _checks
from ._autograd import add, needs_grad, scale_buffer
from ._cpp_calls import kernel
from ._math import sum_event_dims

NAME = "categorical_log_prob"
SCHEMAS = {"categorical_log_prob": "(Tensor logits, Tensor target, int event_dims, bool need_grad) -> (Tensor, Tensor)"}


def categorical_log_prob(logits, target, *, event_dims=1, backend=None) -> torch.Tensor:
    """sum over event dims of log softmax(logits)[target]; logits (..., C), integer target in [0, C)
    broadcastable to logits.shape[:-1]."""
    V.tensor("logits", logits, min_dim=1)
    if logits.shape[-1] < 1:
        raise ValueError("logits must have at least one class in its last dim")
    _checks.data("target", target, "logits (without the class dim)", logits, logits.shape[:-1], V.INDEX_DTYPES)
    if V.active:
        V.finite("logits", logits)
        V.index_range("target", target, logits.shape[-1])
    event_dims = _checks.event_dims(event_dims, logits.dim() - 1, "logits (without the class dim)")
    name = resolve(backend, logits.device)
    if name == "reference":
        return reference(logits, target, event_dims)
    return kernel(NAME, OVERLOAD[name], (logits, target))(logits, target, event_dims, needs_grad(logits))[0]


def reference(logits, target, event_dims):
    """log softmax(l)[target]; a target outside [0, C) gives NaN (never a wrong number)."""
    dtype = compute_dtype(logits)
    log_probs = torch.log_softmax(logits.to(dtype), dim=-1)
    n_classes = logits.shape[-1]
    target = target.expand(logits.shape[:-1])
    valid = (target >= 0) & (target < n_classes)
    index = torch.where(valid, target, 0).long().unsqueeze(-1)
    picked = log_probs.gather(-1, index).squeeze(-1)
    return sum_event_dims(torch.where(valid, picked, math.nan), event_dims)


def fake(logits, target, event_dims, need_grad):
    dtype = compute_dtype(logits)
    out_shape = logits.shape[: logits.dim() - 1 - event_dims]
    return logits.new_empty(out_shape, dtype=dtype), logits.new_empty(logits.shape if need_grad else (0,), dtype=dtype)


FAKES = {"categorical_log_prob": fake}


def buffer_vjp(buffer, target, u):
    """(d b / d l)^T u for b = onehot(t) - softmax(l): -(s u - s sum_c s u) with s = onehot - b."""
    index = target.expand(buffer.shape[:-1]).long().clamp(0, buffer.shape[-1] - 1).unsqueeze(-1)
    s = torch.zeros_like(buffer).scatter_(-1, index, 1.0) - buffer
    su = s * u
    return su.sum(-1, keepdim=True) * s - su


def backward_differentiable(grad_out, grad_buffer, buffer, target, event_dims, logits_dtype):
    """grad_logits from the gradients of the op's (out, buffer), in torch ops on b (differentiable);
    `event_dims` without the class dim, as in the op."""
    grad_logits = None
    if grad_out is not None:
        grad_logits = scale_buffer(buffer, grad_out, event_dims + 1)  # the class dim too
    if grad_buffer is not None:  # only when the backward itself is differentiated
        grad_logits = add(grad_logits, buffer_vjp(buffer, target, grad_buffer))
    return None if grad_logits is None else grad_logits.to(logits_dtype)


def setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    if not inputs[3]:
        ctx.mark_non_differentiable(output[1])  # no need_grad: an empty placeholder
    ctx.event_dims = inputs[2]
    ctx.logits_dtype = inputs[0].dtype
    ctx.save_for_backward(output[1], inputs[1])


def backward(ctx, grad_out, grad_buffer):
    """The `.triton` and `.cuda_sim` overloads' autograd (the C++ op's: csrc/binding/autograd.cpp)."""
    buffer, target = ctx.saved_tensors
    return (backward_differentiable(grad_out, grad_buffer, buffer, target, ctx.event_dims, ctx.logits_dtype),
            None, None, None)


AUTOGRAD = {"categorical_log_prob": (backward, setup_context)}
SECOND_ORDER = {"categorical_log_prob_backward_differentiable": backward_differentiable}
