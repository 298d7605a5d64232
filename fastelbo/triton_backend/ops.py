"""The "triton" backend: the implementation functions of fastelbo/reference/ops.py on fused
Triton kernels, registered as torch.library custom ops (so torch.compile sees no graph break).

Arguments arrive checked and normalized by fastelbo.functional.
"""
from __future__ import annotations

import functools

import torch

from .._types import DregTerms, traced_latent
from ..reference import estimators as reference_estimators
from ..reference.latent import log_prior, log_q_grad_z
from ._common import check_device
from .estimators import MODES, estimate_op
from .latent import kl_op, latent_op
from .likelihoods import binary_op, categorical_op, gaussian_op
from .rng import normal_noise_op

NAME = "triton"

__all__ = ["latent", "kl", "bernoulli", "gaussian", "continuous_bernoulli", "categorical", "elbo"]

PARAM_CODES = {"logvar": 0, "log_std": 1, "softplus": 2}


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def latent(mu, scale, param, n_samples, prior, stl, eps, seed):
    """z, log q, log p and the analytic KL in one kernel (triton_kernels/latent.py)."""
    prior_mu, prior_scale = prior if prior is not None else (None, None)
    check_device(mu, scale, *(t for t in (prior_mu, prior_scale, eps, seed) if t is not None))
    k = 1 if n_samples is None else n_samples
    if eps is not None and n_samples is None:
        eps = eps.unsqueeze(0)
    z, log_q, log_p, kl_value = latent_op(mu, scale, prior_mu, prior_scale, eps, seed, PARAM_CODES[param], k, stl)
    if n_samples is None:
        z, log_q, log_p = z[0], log_q[0], log_p[0]
    terms = DregTerms(
        log_q_grad_z=functools.partial(log_q_grad_z, mu, scale, prior, param, n_samples, eps,
                                       functools.partial(normal_noise_op, seed)),
        log_p_at=functools.partial(log_prior, prior=prior, param=param),
    )
    return traced_latent(z, log_q, log_p, kl_value, terms)


def kl(mu, scale, param, prior, per_dim):
    prior_mu, prior_scale = prior if prior is not None else (None, None)
    check_device(mu, scale, *(t for t in (prior_mu, prior_scale) if t is not None))
    return kl_op(mu, scale, prior_mu, prior_scale, PARAM_CODES[param], per_dim)


def _binary(logits, x, event_dims, continuous):
    check_device(logits, x)
    out, _ = binary_op(logits, x, event_dims, continuous, _needs_grad(logits))
    return out


def bernoulli(logits, x, event_dims):
    return _binary(logits, x, event_dims, False)


def continuous_bernoulli(logits, x, event_dims):
    return _binary(logits, x, event_dims, True)


def gaussian(mean, x, logvar, event_dims):
    tensor_logvar = logvar if isinstance(logvar, torch.Tensor) else None
    check_device(mean, x, *(() if tensor_logvar is None else (tensor_logvar,)))
    value = 0.0 if tensor_logvar is not None else float(logvar)
    needs = _needs_grad(mean, x, tensor_logvar)
    out, _, _ = gaussian_op(mean, x, tensor_logvar, value, event_dims, needs)
    return out


def categorical(logits, target, event_dims):
    check_device(logits, target)
    out, _ = categorical_op(logits, target, event_dims, _needs_grad(logits))
    return out


def elbo(log_lik, latent, kl, estimator, beta):
    """elbo and iwae in one kernel; dreg as the reference's surrogate around the fused pieces."""
    if estimator == "dreg":
        return reference_estimators.elbo(log_lik, latent, kl, estimator, beta)
    check_device(log_lik)
    has_samples = latent.z.dim() == latent.kl.dim() + 2
    per_sample = (lambda t: t) if has_samples else (lambda t: t.unsqueeze(0))
    value, _ = estimate_op(per_sample(log_lik), per_sample(latent.log_q), per_sample(latent.log_p), latent.kl,
                           MODES[(estimator, kl)], float(beta))
    return value
