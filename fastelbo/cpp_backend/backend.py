"""The "cpu" and "cuda" backends: the implementation functions of fastelbo/reference_backend/ops.py on the
C++ operators (csrc/), which the dispatcher routes to the CPU or the CUDA kernels by the tensors'
device. Arguments arrive checked and normalized by fastelbo.functional.
"""
from __future__ import annotations

import torch

from .. import _op_rules as rules
from .ops import ops

PARAM_CODES = {"logvar": 0, "log_std": 1, "softplus": 2}


def latent(mu, scale, param, n_samples, prior, stl, eps, seed):
    """(z, log q, log p, analytic KL) in one kernel (csrc/cpu/latent.cpp, csrc/cuda/latent.cu)."""
    prior_mu, prior_scale = prior if prior is not None else (None, None)
    if eps is not None and n_samples is None:
        eps = eps.unsqueeze(0)
    z, log_q, log_p, kl_value = ops.latent(mu, scale, prior_mu, prior_scale, eps, seed, PARAM_CODES[param],
                                           1 if n_samples is None else n_samples, stl)
    if n_samples is None:
        return z[0], log_q[0], log_p[0], kl_value
    return z, log_q, log_p, kl_value


def noise(seed, n_samples, n_rows, dim, dtype):
    """The latent's eps (n_samples, n_rows, dim) in `dtype` (float32 or float64), as the kernels draw it."""
    return ops.normal_noise(seed, n_samples, n_rows, dim, dtype == torch.float64)


def kl(mu, scale, param, prior, per_dim):
    prior_mu, prior_scale = prior if prior is not None else (None, None)
    return ops.kl(mu, scale, prior_mu, prior_scale, PARAM_CODES[param], per_dim)


def bernoulli(logits, x, event_dims):
    return ops.binary_log_prob(logits, x, event_dims, False, logits.requires_grad and torch.is_grad_enabled())[0]


def continuous_bernoulli(logits, x, event_dims):
    return ops.binary_log_prob(logits, x, event_dims, True, logits.requires_grad and torch.is_grad_enabled())[0]


def gaussian(mean, x, logvar, event_dims):
    if isinstance(logvar, torch.Tensor):
        needs = (mean.requires_grad or x.requires_grad or logvar.requires_grad) and torch.is_grad_enabled()
        return ops.gaussian_log_prob(mean, x, logvar, 0.0, event_dims, needs)[0]
    needs = (mean.requires_grad or x.requires_grad) and torch.is_grad_enabled()
    return ops.gaussian_log_prob(mean, x, None, float(logvar), event_dims, needs)[0]


def categorical(logits, target, event_dims):
    return ops.categorical_log_prob(logits, target, event_dims, logits.requires_grad and torch.is_grad_enabled())[0]


def elbo(log_lik, latent, kl, estimator, beta):
    """elbo and iwae in one kernel (dreg is fastelbo.functional's, around the fused pieces)."""
    if latent.z.dim() == latent.kl.dim() + 2:
        return ops.estimate(log_lik, latent.log_q, latent.log_p, latent.kl, rules.ESTIMATOR_MODES[(estimator, kl)],
                            beta)[0]
    return ops.estimate(log_lik.unsqueeze(0), latent.log_q.unsqueeze(0), latent.log_p.unsqueeze(0), latent.kl,
                        rules.ESTIMATOR_MODES[(estimator, kl)], beta)[0]
