"""Reference estimators: per-data-point ELBO, IWAE and DReG from log-likelihoods and a Latent."""
from __future__ import annotations

import math

import torch


def _per_sample(t: torch.Tensor, has_samples: bool) -> torch.Tensor:
    return t if has_samples else t.unsqueeze(0)


def elbo(log_lik, latent, kl, estimator, beta):
    """With K samples and log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x):

    elbo, mc:       mean_k [log p(x|z_k) + beta (log p(z_k) - log q(z_k|x))]
    elbo, analytic: mean_k log p(x|z_k) - beta KL
    iwae:           logsumexp_k log w_k - log K
    (dreg has the IWAE value and a gradient of its own: see dreg.)
    """
    has_samples = latent.z.dim() == latent.kl.dim() + 2
    dtype = torch.promote_types(log_lik.dtype, latent.log_q.dtype)
    log_lik = _per_sample(log_lik.to(dtype), has_samples)
    if estimator == "elbo" and kl == "analytic":
        return log_lik.mean(0) - beta * latent.kl
    log_q = _per_sample(latent.log_q, has_samples)
    log_p = _per_sample(latent.log_p, has_samples)
    if estimator == "elbo":
        return (log_lik + beta * (log_p - log_q)).mean(0)
    return iwae(log_lik, log_q, log_p)


def iwae(log_lik, log_q, log_p):
    """logsumexp_k log w_k - log K over the leading sample dim, log w = log_lik + log_p - log_q
    (in their promoted dtype)."""
    dtype = torch.promote_types(log_lik.dtype, log_q.dtype)
    log_w = log_lik.to(dtype) + log_p.to(dtype) - log_q.to(dtype)
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def dreg(log_lik, latent, terms):
    """Doubly reparameterized IWAE (Tucker et al. 2018). Value: the IWAE bound. Gradient:

    decoder and prior parameters:  sum_k w~_k  d log w_k          (the IWAE gradient)
    encoder, through z_k only:     sum_k w~_k^2 (d log w_k / d z_k) dz_k/dphi, log q's params stopped

    with w~ = softmax_k(log w). log q is rebuilt with its parameters stopped (its gradient to z is
    -eps/sigma) and log p is re-evaluated at the returned z, so that every gradient bound for the
    encoder passes through latent.z; a hook on latent.z multiplies it by w~_k once more.
    `terms` (fastelbo._types.DregTerms) gives d log q / d z and log p at z for the latent.
    """
    has_samples = latent.z.dim() == latent.kl.dim() + 2
    dtype = torch.promote_types(log_lik.dtype, latent.log_q.dtype)
    log_lik = _per_sample(log_lik.to(dtype), has_samples)
    z = latent.z
    z_live = z.to(dtype)
    moved = z_live - z_live.detach()  # zero, but carries the gradient into z
    log_q_stl = latent.log_q.detach() + (moved * terms.log_q_grad_z).sum(-1)
    log_p_live = terms.log_p_at(z_live)
    log_p = latent.log_p.detach() + (log_p_live - log_p_live.detach())
    log_w = log_lik + _per_sample(log_p - log_q_stl, has_samples)

    log_w_value = log_w.detach()
    weights = torch.softmax(log_w_value, dim=0)
    value = torch.logsumexp(log_w_value, dim=0) - math.log(log_w.shape[0])
    if z.requires_grad and torch.is_grad_enabled():
        z_weights = (weights if has_samples else weights[0]).unsqueeze(-1)
        z.register_hook(lambda grad: grad * z_weights.to(grad.dtype))
    return value + (weights * (log_w - log_w_value)).sum(0)
