"""The C++ operators (csrc/binding/schema.cpp) made differentiable and traceable: register_fake
(output shapes for torch.compile) and register_autograd for each, once the library is loaded.

Importing this module builds (if needed) and loads the CPU library; it raises ImportError with the
reason when the library is unavailable.
"""
from __future__ import annotations

import torch

from .. import _op_rules as rules
from . import _build

_reason = _build.cpu_library()
if _reason is not None:
    raise ImportError(f"fastelbo's C++ library is unavailable: {_reason}")

ops = torch.ops.fastelbo


def _register(name: str, fake, backward=None, setup_context=None) -> None:
    torch.library.register_fake(f"fastelbo::{name}", fake)
    if backward is not None:
        torch.library.register_autograd(f"fastelbo::{name}", backward, setup_context=setup_context)


# ---- the Gaussian likelihood: its backward is a kernel of its own (the logvar gradient is
# summed in it, from the grad-mean buffer, without a per-element logvar buffer) ----

def _gaussian_fake(mean, x, logvar, logvar_value, event_dims, need_grad):
    from .._validate import compute_dtype

    dtype = compute_dtype(mean, logvar)
    return (mean.new_empty(rules.batch_shape(mean, event_dims), dtype=dtype),
            mean.new_empty(mean.shape if need_grad else (0,), dtype=dtype))


def _gaussian_backward_fake(grad_out, buffer, logvar, logvar_value, event_dims, need_logvar):
    with_v = need_logvar and logvar is not None
    return buffer.new_empty(buffer.shape), (logvar.new_empty(logvar.shape) if with_v else buffer.new_empty(0))


def _gaussian_setup_context(ctx, inputs, output):
    mean, x, logvar, logvar_value, event_dims, need_grad = inputs
    ctx.set_materialize_grads(False)
    ctx.options = (logvar_value, event_dims)
    ctx.meta = rules.gaussian_meta(mean, x, logvar)
    ctx.save_for_backward(output[1], logvar)


def _gaussian_backward(ctx, grad_out, grad_buffer):
    buffer, logvar = ctx.saved_tensors
    logvar_value, event_dims = ctx.options
    needs = ctx.needs_input_grad[:3]
    if grad_buffer is not None or rules.differentiating():
        grads = rules.gaussian_backward_differentiable(grad_out, grad_buffer, buffer, logvar, logvar_value,
                                                       event_dims, needs, ctx.meta)
        return (*grads, None, None, None)
    if grad_out is None:
        return None, None, None, None, None, None
    mean_dtype, x_shape, x_dtype, _ = ctx.meta
    need_logvar = logvar is not None and needs[2]
    scaled, grad_logvar = ops.gaussian_log_prob_backward(grad_out, buffer, logvar, logvar_value, event_dims,
                                                         need_logvar)
    grad_mean = scaled.to(mean_dtype) if needs[0] else None
    grad_x = (-scaled).sum_to_size(x_shape).to(x_dtype) if needs[1] else None  # d/dx = -d/dm
    return grad_mean, grad_x, grad_logvar if need_logvar else None, None, None, None


def _noise_fake(seed, n_samples, n_rows, dim, float64):
    return seed.new_empty((n_samples, n_rows, dim), dtype=torch.float64 if float64 else torch.float32)


_register("latent", rules.latent_fake, *rules.latent_autograd(ops.latent_backward))
_register("latent_backward", rules.latent_backward_fake)
_register("kl", rules.kl_fake, *rules.kl_autograd(ops.kl_backward))
_register("kl_backward", rules.kl_backward_fake)
_register("binary_log_prob", rules.binary_fake, rules.binary_backward, rules.binary_setup_context)
_register("gaussian_log_prob", _gaussian_fake, _gaussian_backward, _gaussian_setup_context)
_register("gaussian_log_prob_backward", _gaussian_backward_fake)
_register("categorical_log_prob", rules.categorical_fake, rules.categorical_backward, rules.categorical_setup_context)
_register("estimate", rules.estimate_fake, rules.estimate_backward, rules.estimate_setup_context)
_register("normal_noise", _noise_fake)
_register("philox_words", lambda counter, key: counter.new_empty((4, counter.shape[1]), dtype=torch.int64))
