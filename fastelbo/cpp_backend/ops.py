"""The C++ operators (csrc/binding/schema.cpp) made traceable and twice differentiable: register_fake
(output shapes for torch.compile) for each, once the library is loaded, and the implementations of
the composite ops of their second-order backward.

Their autograd is in C++, at the Autograd dispatch key (csrc/binding/autograd.cpp): the first-order
backward runs no Python. When the backward is itself recorded (create_graph=True) or a gradient
buffer has a gradient of its own, it calls the `fastelbo::*_backward_differentiable` ops instead,
implemented here as CompositeImplicitAutograd with the rules of fastelbo/_op_rules.py (the ones the
Triton backend's Python autograd uses), so autograd records them and higher derivatives are exact.

Importing this module builds (if needed) and loads the CPU library; it raises ImportError with the
reason when the library is unavailable.
"""
from __future__ import annotations

import torch

from .. import _op_rules as rules
from .._dtypes import compute_dtype
from . import _build

_reason = _build.cpu_library()
if _reason is not None:
    raise ImportError(f"fastelbo's C++ library is unavailable: {_reason}")

ops = torch.ops.fastelbo


def _fake(name: str):
    return torch.library.register_fake(f"fastelbo::{name}")


def _composite(name: str):
    """Implement `fastelbo::<name>` in torch ops, recorded by autograd (CompositeImplicitAutograd).
    None results are undefined tensors (no gradient) on the C++ side."""
    return torch.library.impl(f"fastelbo::{name}", "CompositeImplicitAutograd")


# ---- the Gaussian likelihood: its backward is a kernel of its own (the logvar gradient is
# summed in it, from the grad-mean buffer, without a per-element logvar buffer) ----

@_fake("gaussian_log_prob")
def _gaussian_fake(mean, x, logvar, logvar_value, event_dims, need_grad):
    dtype = compute_dtype(mean, logvar)
    return (mean.new_empty(rules.batch_shape(mean, event_dims), dtype=dtype),
            mean.new_empty(mean.shape if need_grad else (0,), dtype=dtype))


@_fake("gaussian_log_prob_backward")
def _gaussian_backward_fake(grad_out, buffer, logvar, logvar_value, event_dims, need_logvar):
    with_v = need_logvar and logvar is not None
    return buffer.new_empty(buffer.shape), (logvar.new_empty(logvar.shape) if with_v else buffer.new_empty(0))


@_fake("normal_noise")
def _noise_fake(seed, n_samples, n_rows, dim, float64):
    return seed.new_empty((n_samples, n_rows, dim), dtype=torch.float64 if float64 else torch.float32)


@_fake("philox_words")
def _philox_words_fake(counter, key):
    return counter.new_empty((4, counter.shape[1]), dtype=torch.int64)


for _name, _fn in (("latent", rules.latent_fake), ("latent_backward", rules.latent_backward_fake),
                   ("kl", rules.kl_fake), ("kl_backward", rules.kl_backward_fake),
                   ("binary_log_prob", rules.binary_fake), ("categorical_log_prob", rules.categorical_fake),
                   ("estimate", rules.estimate_fake)):
    torch.library.register_fake(f"fastelbo::{_name}", _fn)


# ---- the second-order backward (called by csrc/binding/autograd.cpp; see schema.cpp) ----

@_composite("latent_backward_differentiable")
def _latent_backward_differentiable(grad_z, grad_log_q, grad_log_p, grad_kl, mu, scale, prior_mu, prior_scale, eps,
                                    seed, param, n_samples, stl, needs):
    return tuple(rules.latent_reference_grads(param, n_samples, stl, mu, scale, prior_mu, prior_scale, eps, seed,
                                              needs, (grad_z, grad_log_q, grad_log_p, grad_kl)))


@_composite("kl_backward_differentiable")
def _kl_backward_differentiable(grad, mu, scale, prior_mu, prior_scale, param, per_dim, needs):
    return tuple(rules.kl_reference_grads(param, per_dim, mu, scale, prior_mu, prior_scale, needs, grad))


@_composite("binary_log_prob_backward_differentiable")
def _binary_backward_differentiable(grad_out, grad_buffer, buffer, logits, x, event_dims, continuous, logits_dtype,
                                    needs):
    return rules.binary_grads(grad_out, grad_buffer, buffer, logits, x, event_dims, continuous, logits_dtype, needs)


@_composite("gaussian_log_prob_backward_differentiable")
def _gaussian_backward_differentiable(grad_out, grad_buffer, buffer, logvar, logvar_value, event_dims, mean_dtype,
                                      x_shape, x_dtype, needs):
    meta = (mean_dtype, x_shape, x_dtype, None if logvar is None else (logvar.shape, logvar.dtype))
    return rules.gaussian_backward_differentiable(grad_out, grad_buffer, buffer, logvar, logvar_value, event_dims,
                                                  needs, meta)


@_composite("categorical_log_prob_backward_differentiable")
def _categorical_backward_differentiable(grad_out, grad_buffer, buffer, target, event_dims, logits_dtype):
    return rules.categorical_grads(grad_out, grad_buffer, buffer, target, event_dims + 1, logits_dtype)


@_composite("estimate_backward_differentiable")
def _estimate_backward_differentiable(grad, log_lik, log_q, log_p, needs):
    return tuple(rules.iwae_reference_grads(grad, log_lik, log_q, log_p, needs))
