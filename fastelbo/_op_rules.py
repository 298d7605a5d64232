"""What every fused backend's ops share: their output shapes (the fake implementations that
torch.compile traces) and their gradients (the autograd formulas around each backend's kernels).

The op signatures are those of csrc/binding/schema.cpp (the C++ backends) and of the Triton custom
ops (fastelbo/triton_backend/), which follow the same conventions:

    latent(mu, scale, prior_mu?, prior_scale?, eps?, seed?, param, n_samples, stl)
        -> z (K, *mu.shape), log_q (K, *batch), log_p (K, *batch), kl (*batch)
    kl(mu, scale, prior_mu?, prior_scale?, param, per_dim) -> kl
    binary_log_prob(logits, x, event_dims, continuous, need_grad) -> (out, grad buffer)
    categorical_log_prob(logits, target, event_dims, need_grad) -> (out, grad buffer)
    estimate(log_lik, log_q, log_p, kl, mode, beta) -> (value, weights)

Log-densities are float32 (float64 when an input is float64); gradient buffers are in that compute
dtype; absent optional gradients are empty tensors.

Second order. A backward that autograd records (`create_graph=True`: grad mode is on inside the
backward) must return gradients that are differentiable functions of the op's inputs. Two
mechanisms give exact second derivatives:

- The Bernoulli, Gaussian and categorical gradient buffers b = d out / d params are differentiable
  outputs of their ops, saved for backward. The first-order backward g * b is then recorded on b,
  and differentiating it calls the op's backward again with a gradient u for b, answered by the
  closed form of d b / d params applied to u, written in b itself (below, `*_buffer_vjp`):
      Bernoulli    b = x - s, s = sigmoid(l):       d b/d l = -s (1 - s),  d b/d x = 1
      Gaussian     b = (x - m) e^-v:                 d b/d m = -e^-v, d b/d x = e^-v, d b/d v = -b
      categorical  b = onehot(t) - s, s = softmax:   (d b/d l)^T u = -(s u - s sum_c s u)
  No input is kept alive for it (s is x - b, or onehot - b), and every order works the same way.
- The latent, the KL, the continuous Bernoulli and the IWAE combine recompute their gradient with
  the reference implementation under autograd (`reference_vjp`): their inputs are small (the
  posterior's parameters, per-sample log-weights) or, for the continuous Bernoulli, its logits
  are kept for this.

The Triton ops use the ctx-based `*_backward` / `*_autograd` rules below as their Python autograd.
The C++ ops have their autograd in C++ (csrc/binding/autograd.cpp); their second-order backward
calls the composite ops `fastelbo::*_backward_differentiable` (fastelbo/cpp_backend/ops.py), which
are the ctx-free cores of the same rules (`latent_reference_grads`, `kl_reference_grads`,
`binary_grads`, `gaussian_backward_differentiable`, `categorical_grads`, `iwae_reference_grads`).
"""
from __future__ import annotations

import functools
import math

import torch

from ._dtypes import compute_dtype
from .reference_backend import estimators as reference_estimators
from .reference_backend import latent as reference_latent
from .reference_backend import likelihoods as reference_likelihoods

PARAM_NAMES = ("logvar", "log_std", "softplus")


def batch_shape(params: torch.Tensor, event_dims: int):
    return params.shape[: params.dim() - event_dims]


def scale_buffer(buffer: torch.Tensor, grad_out: torch.Tensor, event_dims: int) -> torch.Tensor:
    """buffer * grad_out broadcast over the event dims (the backward of a likelihood)."""
    return buffer * grad_out.reshape(grad_out.shape + (1,) * event_dims)


def _like_or_empty(t, fallback):
    return t.new_empty(t.shape) if t is not None else fallback.new_empty(0)


def differentiating() -> bool:
    """True inside a backward that autograd records (create_graph=True): its gradients must be
    differentiable functions of the op's inputs."""
    return torch.is_grad_enabled()


def reference_vjp(forward, inputs, needs, grads) -> list:
    """d(sum_i <forward(*inputs)_i, grads_i>) / d inputs[j] for each j with needs[j], as a
    differentiable function of the inputs and grads (autograd over the reference implementation,
    create_graph=True); None for the others."""
    wanted = [j for j, (t, need) in enumerate(zip(inputs, needs)) if need and t is not None and t.requires_grad]
    result = [None] * len(inputs)
    with torch.enable_grad():
        outputs = forward(*inputs)
    pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
    if not wanted or not pairs:
        return result
    found = torch.autograd.grad([o for o, _ in pairs], [inputs[j] for j in wanted], [g for _, g in pairs],
                                create_graph=True, allow_unused=True)
    for j, grad in zip(wanted, found):
        result[j] = grad
    return result


# ---- latent ----

def latent_fake(mu, scale, prior_mu, prior_scale, eps, seed, param, n_samples, stl):
    dtype = compute_dtype(mu, scale, prior_mu, prior_scale)
    batch = mu.shape[:-1]
    z = mu.new_empty((n_samples, *mu.shape))
    log_q = mu.new_empty((n_samples, *batch), dtype=dtype)
    return z, log_q, torch.empty_like(log_q), mu.new_empty(batch, dtype=dtype)


def latent_backward_fake(grad_z, grad_log_q, grad_log_p, grad_kl, mu, scale, prior_mu, prior_scale, eps, seed, param,
                         n_samples, stl):
    return (mu.new_empty(mu.shape), scale.new_empty(scale.shape), _like_or_empty(prior_mu, mu),
            _like_or_empty(prior_scale, mu))


def latent_autograd(backward_op):
    """(backward, setup_context) of a latent op whose backward kernel is `backward_op`."""

    def setup_context(ctx, inputs, output):
        mu, scale, prior_mu, prior_scale, eps, seed, param, n_samples, stl = inputs
        ctx.save_for_backward(mu, scale, prior_mu, prior_scale, eps, seed)
        ctx.options = (param, n_samples, stl)
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_z, grad_log_q, grad_log_p, grad_kl):
        mu, scale, prior_mu, prior_scale, eps, seed = ctx.saved_tensors
        if differentiating():
            grads = latent_reference_grads(*ctx.options, mu, scale, prior_mu, prior_scale, eps, seed,
                                           ctx.needs_input_grad[:4], (grad_z, grad_log_q, grad_log_p, grad_kl))
            return (*grads, None, None, None, None, None)
        grads = backward_op(grad_z, grad_log_q, grad_log_p, grad_kl, mu, scale, prior_mu, prior_scale, eps, seed,
                            *ctx.options)
        has_prior = prior_mu is not None
        return (grads[0], grads[1], grads[2] if has_prior else None, grads[3] if has_prior else None,
                None, None, None, None, None)

    return backward, setup_context


def latent_reference_grads(param, n_samples, stl, mu, scale, prior_mu, prior_scale, eps, seed, needs, grads):
    """The latent's gradients (mu, scale, prior_mu, prior_scale) for the gradients `grads` of its four
    outputs, recomputed by the reference under autograd (differentiable; None where not `needs`)."""
    return reference_vjp(functools.partial(_reference_latent, param, n_samples, stl),
                         (mu, scale, prior_mu, prior_scale, eps, seed), tuple(needs[:4]) + (False,) * 2, grads)[:4]


def _prior(prior_mu, prior_scale):
    return None if prior_mu is None else (prior_mu, prior_scale)


def _reference_latent(param, n_samples, stl, mu, scale, prior_mu, prior_scale, eps, seed):
    """The latent op's outputs (z with its sample dim) by the reference implementation."""
    latent = reference_latent.latent(mu, scale, PARAM_NAMES[param], n_samples, _prior(prior_mu, prior_scale), stl,
                                     eps, seed)
    return tuple(latent)


# ---- analytic KL ----

def kl_fake(mu, scale, prior_mu, prior_scale, param, per_dim):
    dtype = compute_dtype(mu, scale, prior_mu, prior_scale)
    return mu.new_empty(mu.shape if per_dim else mu.shape[:-1], dtype=dtype)


def kl_backward_fake(grad, mu, scale, prior_mu, prior_scale, param, per_dim):
    return (mu.new_empty(mu.shape), scale.new_empty(scale.shape), _like_or_empty(prior_mu, mu),
            _like_or_empty(prior_scale, mu))


def kl_autograd(backward_op):
    def setup_context(ctx, inputs, output):
        mu, scale, prior_mu, prior_scale, param, per_dim = inputs
        ctx.save_for_backward(mu, scale, prior_mu, prior_scale)
        ctx.options = (param, per_dim)

    def backward(ctx, grad):
        mu, scale, prior_mu, prior_scale = ctx.saved_tensors
        if differentiating():
            return (*kl_reference_grads(*ctx.options, mu, scale, prior_mu, prior_scale, ctx.needs_input_grad[:4], grad),
                    None, None)
        grads = backward_op(grad, mu, scale, prior_mu, prior_scale, *ctx.options)
        has_prior = prior_mu is not None
        return grads[0], grads[1], grads[2] if has_prior else None, grads[3] if has_prior else None, None, None

    return backward, setup_context


def kl_reference_grads(param, per_dim, mu, scale, prior_mu, prior_scale, needs, grad):
    """The KL's gradients (mu, scale, prior_mu, prior_scale), recomputed by the reference under
    autograd (differentiable; None where not `needs`)."""
    def forward(mu, scale, prior_mu, prior_scale):
        return (reference_latent.kl(mu, scale, PARAM_NAMES[param], _prior(prior_mu, prior_scale), per_dim),)

    return reference_vjp(forward, (mu, scale, prior_mu, prior_scale), tuple(needs[:4]), (grad,))


# ---- Bernoulli and continuous Bernoulli ----

def binary_fake(logits, x, event_dims, continuous, need_grad):
    dtype = compute_dtype(logits)
    return (logits.new_empty(batch_shape(logits, event_dims), dtype=dtype),
            logits.new_empty(logits.shape if need_grad else (0,), dtype=dtype))


def no_grad_buffers(ctx, *buffers) -> None:
    """The gradient buffers are outputs autograd must not differentiate, nor fill with zeros for
    backward (a whole pass over a parameter-sized tensor)."""
    ctx.mark_non_differentiable(*buffers)
    ctx.set_materialize_grads(False)


def _expand_events(t: torch.Tensor, event_dims: int) -> torch.Tensor:
    return t.reshape(t.shape + (1,) * event_dims)


def _add(a, b):
    return b if a is None else a if b is None else a + b


def binary_setup_context(ctx, inputs, output):
    logits, x, event_dims, continuous, need_grad = inputs
    ctx.set_materialize_grads(False)
    ctx.event_dims = event_dims
    ctx.continuous = continuous
    ctx.logits_dtype = logits.dtype
    if continuous:  # its second derivative is recomputed from the logits (see the module docstring)
        ctx.mark_non_differentiable(output[1])
    # d/dx of x l is l: keep the logits when a float x asks for its gradient (or for the above).
    keep_logits = x.requires_grad or continuous
    ctx.save_for_backward(output[1], logits if keep_logits else None, x)


def bernoulli_buffer_vjp(buffer, x, u):
    """(d b / d l) u for b = x - sigmoid(l): -s (1 - s) u with s = x - b."""
    s = x.to(buffer.dtype) - buffer
    return -s * (1.0 - s) * u


def binary_backward(ctx, grad_out, grad_buffer):
    buffer, logits, x = ctx.saved_tensors
    grads = binary_grads(grad_out, grad_buffer, buffer, logits, x, ctx.event_dims, ctx.continuous, ctx.logits_dtype,
                         ctx.needs_input_grad[:2])
    return (*grads, None, None, None)


def binary_grads(grad_out, grad_buffer, buffer, logits, x, event_dims, continuous, logits_dtype, needs):
    """(grad_logits, grad_x) of a binary likelihood from the gradients of its (out, buffer); `logits`
    is needed for grad_x and for the continuous Bernoulli's recorded backward."""
    needs_logits, needs_x = needs[:2]
    if continuous and differentiating():
        def forward(logits, x):
            return (reference_likelihoods.continuous_bernoulli(logits, x, event_dims),)

        return tuple(reference_vjp(forward, (logits, x), (needs_logits, needs_x), (grad_out,)))
    grad_logits = grad_x = None
    if needs_logits:
        if grad_out is not None:
            grad_logits = scale_buffer(buffer, grad_out, event_dims)
        if grad_buffer is not None:  # only when the backward itself is differentiated
            grad_logits = _add(grad_logits, bernoulli_buffer_vjp(buffer, x, grad_buffer))
        grad_logits = None if grad_logits is None else grad_logits.to(logits_dtype)
    if needs_x:  # d out/dx = l, d b/dx = 1
        if grad_out is not None:
            grad_x = scale_buffer(logits, grad_out, event_dims)
        grad_x = _add(grad_x, grad_buffer)
        grad_x = None if grad_x is None else grad_x.sum_to_size(x.shape).to(x.dtype)
    return grad_logits, grad_x


# ---- Gaussian ----
# Backward of out = sum -((x - m)^2 e^-v + v + log 2 pi)/2 from its buffer b = (x - m) e^-v:
#   d out/d m = b, d out/d x = -b, d out/d v = ((b e^(v/2))^2 - 1)/2.

def gaussian_meta(mean, x, logvar):
    """What a Gaussian likelihood's backward needs to know of its inputs: dtypes and shapes."""
    return mean.dtype, x.shape, x.dtype, None if logvar is None else (logvar.shape, logvar.dtype)


def gaussian_backward_differentiable(grad_out, grad_buffer, buffer, logvar, logvar_value, event_dims, needs, meta):
    """The Gaussian likelihood's gradients (mean, x, logvar) written in torch ops on its buffer b,
    so that a recorded backward differentiates through b (see the module docstring)."""
    mean_dtype, x_shape, x_dtype, logvar_shape_dtype = meta
    v = logvar.to(buffer.dtype) if logvar is not None else logvar_value
    inv_var = torch.exp(-v) if logvar is not None else math.exp(-v)
    g = None if grad_out is None else _expand_events(grad_out, event_dims)
    grad_mean = grad_x = grad_logvar = None
    if needs[0] or needs[1]:
        d_mean = _add(None if g is None else g * buffer, None if grad_buffer is None else -inv_var * grad_buffer)
        if needs[0] and d_mean is not None:
            grad_mean = d_mean.to(mean_dtype)
        if needs[1] and d_mean is not None:
            grad_x = (-d_mean).sum_to_size(x_shape).to(x_dtype)
    if needs[2] and logvar is not None:
        half_sigma = torch.exp(0.5 * v)
        d_v = _add(None if g is None else g * (0.5 * (buffer * half_sigma) ** 2 - 0.5),
                   None if grad_buffer is None else -buffer * grad_buffer)
        if d_v is not None:
            shape, dtype = logvar_shape_dtype
            grad_logvar = d_v.sum_to_size(shape).to(dtype)
    return grad_mean, grad_x, grad_logvar


# ---- categorical ----

def categorical_fake(logits, target, event_dims, need_grad):
    dtype = compute_dtype(logits)
    out_shape = logits.shape[: logits.dim() - 1 - event_dims]
    return logits.new_empty(out_shape, dtype=dtype), logits.new_empty(logits.shape if need_grad else (0,), dtype=dtype)


def categorical_setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.event_dims = inputs[2] + 1  # the class dim too
    ctx.logits_dtype = inputs[0].dtype
    ctx.save_for_backward(output[1], inputs[1])


def categorical_buffer_vjp(buffer, target, u):
    """(d b / d l)^T u for b = onehot(t) - softmax(l): -(s u - s sum_c s u) with s = onehot - b."""
    index = target.expand(buffer.shape[:-1]).long().clamp(0, buffer.shape[-1] - 1).unsqueeze(-1)
    s = torch.zeros_like(buffer).scatter_(-1, index, 1.0) - buffer
    su = s * u
    return su.sum(-1, keepdim=True) * s - su


def categorical_backward(ctx, grad_out, grad_buffer):
    buffer, target = ctx.saved_tensors
    return categorical_grads(grad_out, grad_buffer, buffer, target, ctx.event_dims, ctx.logits_dtype), None, None, None


def categorical_grads(grad_out, grad_buffer, buffer, target, event_dims, logits_dtype):
    """grad_logits of the categorical likelihood from the gradients of its (out, buffer);
    `event_dims` counts the class dim."""
    grad_logits = None
    if grad_out is not None:
        grad_logits = scale_buffer(buffer, grad_out, event_dims)
    if grad_buffer is not None:  # only when the backward itself is differentiated
        grad_logits = _add(grad_logits, categorical_buffer_vjp(buffer, target, grad_buffer))
    return None if grad_logits is None else grad_logits.to(logits_dtype)


# ---- estimator combine ----
# mode 0 elbo/MC KL, 1 elbo/analytic KL, 2 iwae. Backward (g the incoming gradient per data point):
#   mode 0: d/dlog_lik = g/K, d/dlog_p = beta g/K, d/dlog_q = -beta g/K
#   mode 1: d/dlog_lik = g/K, d/dkl = -beta g
#   mode 2: d/dlog_lik = d/dlog_p = g w~, d/dlog_q = -g w~

ESTIMATOR_MODES = {("elbo", "mc"): 0, ("elbo", "analytic"): 1, ("iwae", "mc"): 2}


def estimate_fake(log_lik, log_q, log_p, kl, mode, beta):
    dtype = torch.promote_types(log_lik.dtype, log_q.dtype)
    return (log_lik.new_empty(log_lik.shape[1:], dtype=dtype),
            log_lik.new_empty(log_lik.shape if mode == 2 else (0,), dtype=dtype))


def estimate_setup_context(ctx, inputs, output):
    log_lik, log_q, log_p, kl, mode, beta = inputs
    no_grad_buffers(ctx, output[1])
    ctx.options = (mode, beta, log_lik.shape[0])
    ctx.dtypes = (log_lik.dtype, log_q.dtype, log_p.dtype, kl.dtype)
    # The IWAE's second derivative is recomputed from its (K, *batch) log-weights; the elbo modes
    # are linear in their inputs (second derivative 0).
    ctx.save_for_backward(output[1], *((log_lik, log_q, log_p) if mode == 2 else ()))


def estimate_backward(ctx, grad, _):
    weights, *log_weights = ctx.saved_tensors
    if grad is None:
        return None, None, None, None, None, None
    mode, beta, k = ctx.options
    ll_dtype, lq_dtype, lp_dtype, kl_dtype = ctx.dtypes
    if mode == 2:
        if differentiating():
            return (*iwae_reference_grads(grad, *log_weights, ctx.needs_input_grad[:3]), None, None, None)
        per_sample = grad.unsqueeze(0) * weights
        return per_sample.to(ll_dtype), (-per_sample).to(lq_dtype), per_sample.to(lp_dtype), None, None, None
    shape = (k, *grad.shape)
    mean_grad = (grad / k).unsqueeze(0).expand(shape)
    if mode == 1:
        return mean_grad.to(ll_dtype), None, None, (-beta * grad).to(kl_dtype), None, None
    return (mean_grad.to(ll_dtype), (-beta * mean_grad).to(lq_dtype), (beta * mean_grad).to(lp_dtype),
            None, None, None)


def iwae_reference_grads(grad, log_lik, log_q, log_p, needs):
    """The IWAE combine's gradients (log_lik, log_q, log_p), recomputed by the reference under
    autograd (differentiable; None where not `needs`)."""
    return reference_vjp(lambda *t: (reference_estimators.iwae(*t),), (log_lik, log_q, log_p), tuple(needs[:3]),
                         (grad,))
