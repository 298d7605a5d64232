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
"""
from __future__ import annotations

import torch

from ._validate import compute_dtype


def batch_shape(params: torch.Tensor, event_dims: int):
    return params.shape[: params.dim() - event_dims]


def scale_buffer(buffer: torch.Tensor, grad_out: torch.Tensor, event_dims: int) -> torch.Tensor:
    """buffer * grad_out broadcast over the event dims (the backward of a likelihood)."""
    return buffer * grad_out.reshape(grad_out.shape + (1,) * event_dims)


def _like_or_empty(t, fallback):
    return t.new_empty(t.shape) if t is not None else fallback.new_empty(0)


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
        grads = backward_op(grad_z, grad_log_q, grad_log_p, grad_kl, mu, scale, prior_mu, prior_scale, eps, seed,
                            *ctx.options)
        has_prior = prior_mu is not None
        return (grads[0], grads[1], grads[2] if has_prior else None, grads[3] if has_prior else None,
                None, None, None, None, None)

    return backward, setup_context


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
        grads = backward_op(grad, mu, scale, prior_mu, prior_scale, *ctx.options)
        has_prior = prior_mu is not None
        return grads[0], grads[1], grads[2] if has_prior else None, grads[3] if has_prior else None, None, None

    return backward, setup_context


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


def binary_setup_context(ctx, inputs, output):
    logits, x, event_dims, continuous, need_grad = inputs
    no_grad_buffers(ctx, output[1])
    ctx.event_dims = event_dims
    ctx.logits_dtype = logits.dtype
    ctx.x_shape_dtype = (x.shape, x.dtype)
    # d/dx of x l is l: keep the logits only when a float x asks for its gradient.
    ctx.save_for_backward(output[1], logits if x.requires_grad else None)


def binary_backward(ctx, grad_out, _):
    buffer, logits = ctx.saved_tensors
    grad_logits = grad_x = None
    if grad_out is None:
        return None, None, None, None, None
    if ctx.needs_input_grad[0]:
        grad_logits = scale_buffer(buffer, grad_out, ctx.event_dims).to(ctx.logits_dtype)
    if ctx.needs_input_grad[1] and logits is not None:
        x_shape, x_dtype = ctx.x_shape_dtype
        grad_x = scale_buffer(logits, grad_out, ctx.event_dims).sum_to_size(x_shape).to(x_dtype)
    return grad_logits, grad_x, None, None, None


# ---- categorical ----

def categorical_fake(logits, target, event_dims, need_grad):
    dtype = compute_dtype(logits)
    out_shape = logits.shape[: logits.dim() - 1 - event_dims]
    return logits.new_empty(out_shape, dtype=dtype), logits.new_empty(logits.shape if need_grad else (0,), dtype=dtype)


def categorical_setup_context(ctx, inputs, output):
    no_grad_buffers(ctx, output[1])
    ctx.event_dims = inputs[2] + 1  # the class dim too
    ctx.logits_dtype = inputs[0].dtype
    ctx.save_for_backward(output[1])


def categorical_backward(ctx, grad_out, _):
    (buffer,) = ctx.saved_tensors
    if grad_out is None:
        return None, None, None, None
    return scale_buffer(buffer, grad_out, ctx.event_dims).to(ctx.logits_dtype), None, None, None


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
    ctx.save_for_backward(output[1])


def estimate_backward(ctx, grad, _):
    (weights,) = ctx.saved_tensors
    if grad is None:
        return None, None, None, None, None, None
    mode, beta, k = ctx.options
    ll_dtype, lq_dtype, lp_dtype, kl_dtype = ctx.dtypes
    if mode == 2:
        per_sample = grad.unsqueeze(0) * weights
        return per_sample.to(ll_dtype), (-per_sample).to(lq_dtype), per_sample.to(lp_dtype), None, None, None
    shape = (k, *grad.shape)
    mean_grad = (grad / k).unsqueeze(0).expand(shape)
    if mode == 1:
        return mean_grad.to(ll_dtype), None, None, (-beta * grad).to(kl_dtype), None, None
    return (mean_grad.to(ll_dtype), (-beta * mean_grad).to(lq_dtype), (beta * mean_grad).to(lp_dtype),
            None, None, None)
