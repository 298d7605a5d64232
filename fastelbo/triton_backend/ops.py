"""The "triton" backend: the implementation functions of fastelbo/reference_backend/ops.py on fused
Triton kernels, registered as torch.library custom ops (so torch.compile sees no graph break).

Arguments arrive checked and normalized by fastelbo.functional (which also checked that the
tensors are on CUDA, or on the CPU under TRITON_INTERPRET=1).
"""
from __future__ import annotations

import torch

from .estimators import MODES, estimate_op
from .latent import kl_op, latent_op
from .likelihoods import binary_op, categorical_op, gaussian_op
from .rng import normal_noise_op

__all__ = ["latent", "noise", "kl", "bernoulli", "gaussian", "continuous_bernoulli", "categorical", "elbo"]

PARAM_CODES = {"logvar": 0, "log_std": 1, "softplus": 2}


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def latent(mu, scale, param, n_samples, prior, stl, eps, seed):
    """(z, log q, log p, analytic KL) in one kernel (triton_kernels/latent.py)."""
    prior_mu, prior_scale = prior if prior is not None else (None, None)
    if eps is not None and n_samples is None:
        eps = eps.unsqueeze(0)
    z, log_q, log_p, kl_value = latent_op(mu, scale, prior_mu, prior_scale, eps, seed, PARAM_CODES[param],
                                          1 if n_samples is None else n_samples, stl)
    if n_samples is None:
        return z[0], log_q[0], log_p[0], kl_value
    return z, log_q, log_p, kl_value


def noise(seed, n_samples, n_rows, dim, dtype):
    """The latent's eps (n_samples, n_rows, dim) in `dtype` (float32 or float64), as the kernels draw it."""
    return normal_noise_op(seed, n_samples, n_rows, dim, dtype == torch.float64)


def kl(mu, scale, param, prior, per_dim):
    prior_mu, prior_scale = prior if prior is not None else (None, None)
    return kl_op(mu, scale, prior_mu, prior_scale, PARAM_CODES[param], per_dim)


def bernoulli(logits, x, event_dims):
    return binary_op(logits, x, event_dims, False, _needs_grad(logits))[0]


def continuous_bernoulli(logits, x, event_dims):
    return binary_op(logits, x, event_dims, True, _needs_grad(logits))[0]


def gaussian(mean, x, logvar, event_dims):
    tensor_logvar = logvar if isinstance(logvar, torch.Tensor) else None
    value = 0.0 if tensor_logvar is not None else float(logvar)
    return gaussian_op(mean, x, tensor_logvar, value, event_dims, _needs_grad(mean, x, tensor_logvar))[0]


def categorical(logits, target, event_dims):
    return categorical_op(logits, target, event_dims, _needs_grad(logits))[0]


def elbo(log_lik, latent, kl, estimator, beta):
    """elbo and iwae in one kernel (dreg is fastelbo.functional's, around the fused pieces)."""
    has_samples = latent.z.dim() == latent.kl.dim() + 2
    per_sample = (lambda t: t) if has_samples else (lambda t: t.unsqueeze(0))
    value, _ = estimate_op(per_sample(log_lik), per_sample(latent.log_q), per_sample(latent.log_p), latent.kl,
                           MODES[(estimator, kl)], float(beta))
    return value
