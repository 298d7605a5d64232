"""The implementation functions of fastelbo/reference/ops.py on the C++ operators, for one device
type: the "cpu" backend (fastelbo/cpp_backend/cpu.py) and the "cuda" backend (cuda.py) are this
class bound to "cpu" and "cuda". Arguments arrive checked and normalized by fastelbo.functional.
"""
from __future__ import annotations

import functools

import torch

from .. import _op_rules as rules
from .._types import DregTerms, traced_latent
from ..reference import estimators as reference_estimators
from ..reference.latent import log_prior, log_q_grad_z
from .ops import ops

PARAM_CODES = {"logvar": 0, "log_std": 1, "softplus": 2}


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class Backend:
    def __init__(self, device_type: str):
        self.device_type = device_type

    def _check_device(self, *tensors) -> None:
        for t in tensors:
            if t is not None and t.device.type != self.device_type:
                raise ValueError(f"backend {self.device_type!r} runs on {self.device_type} tensors; got a tensor on {t.device}")

    def latent(self, mu, scale, param, n_samples, prior, stl, eps, seed):
        """z, log q, log p and the analytic KL in one kernel (csrc/cpu/latent.cpp, csrc/cuda/)."""
        prior_mu, prior_scale = prior if prior is not None else (None, None)
        self._check_device(mu, scale, prior_mu, prior_scale, eps, seed)
        k = 1 if n_samples is None else n_samples
        if eps is not None and n_samples is None:
            eps = eps.unsqueeze(0)
        z, log_q, log_p, kl_value = ops.latent(mu, scale, prior_mu, prior_scale, eps, seed, PARAM_CODES[param], k, stl)
        if n_samples is None:
            z, log_q, log_p = z[0], log_q[0], log_p[0]
        terms = DregTerms(
            log_q_grad_z=functools.partial(log_q_grad_z, mu, scale, prior, param, n_samples, eps,
                                           functools.partial(ops.normal_noise, seed)),
            log_p_at=functools.partial(log_prior, prior=prior, param=param),
        )
        return traced_latent(z, log_q, log_p, kl_value, terms)

    def kl(self, mu, scale, param, prior, per_dim):
        prior_mu, prior_scale = prior if prior is not None else (None, None)
        self._check_device(mu, scale, prior_mu, prior_scale)
        return ops.kl(mu, scale, prior_mu, prior_scale, PARAM_CODES[param], per_dim)

    def _binary(self, logits, x, event_dims, continuous):
        self._check_device(logits, x)
        out, _ = ops.binary_log_prob(logits, x, event_dims, continuous, _needs_grad(logits))
        return out

    def bernoulli(self, logits, x, event_dims):
        return self._binary(logits, x, event_dims, False)

    def continuous_bernoulli(self, logits, x, event_dims):
        return self._binary(logits, x, event_dims, True)

    def gaussian(self, mean, x, logvar, event_dims):
        tensor_logvar = logvar if isinstance(logvar, torch.Tensor) else None
        self._check_device(mean, x, tensor_logvar)
        value = 0.0 if tensor_logvar is not None else float(logvar)
        out, _ = ops.gaussian_log_prob(mean, x, tensor_logvar, value, event_dims, _needs_grad(mean, x, tensor_logvar))
        return out

    def categorical(self, logits, target, event_dims):
        self._check_device(logits, target)
        out, _ = ops.categorical_log_prob(logits, target, event_dims, _needs_grad(logits))
        return out

    def elbo(self, log_lik, latent, kl, estimator, beta):
        """elbo and iwae in one kernel; dreg as the reference's surrogate around the fused pieces."""
        if estimator == "dreg":
            return reference_estimators.elbo(log_lik, latent, kl, estimator, beta)
        self._check_device(log_lik)
        has_samples = latent.z.dim() == latent.kl.dim() + 2
        per_sample = (lambda t: t) if has_samples else (lambda t: t.unsqueeze(0))
        value, _ = ops.estimate(per_sample(log_lik), per_sample(latent.log_q), per_sample(latent.log_p), latent.kl,
                                rules.ESTIMATOR_MODES[(estimator, kl)], float(beta))
        return value


def bind(backend: Backend, namespace: dict) -> None:
    """Put the backend's implementation functions into a module's namespace."""
    for name in ("latent", "kl", "bernoulli", "gaussian", "continuous_bernoulli", "categorical", "elbo"):
        namespace[name] = getattr(backend, name)
