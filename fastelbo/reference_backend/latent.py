"""Reference Gaussian latent: reparameterized sample, log q, log p and analytic KL."""
from __future__ import annotations

import torch

from .._dtypes import compute_dtype
from ..rng import normal_noise
from ._math import HALF_LOG_2PI, gaussian_kl_per_dim, sigma_and_log_sigma


def _prior_terms(prior, param: str, dtype: torch.dtype):
    """(mu_p, sigma_p, log sigma_p) in the compute dtype, or (None, None, None) for N(0, I)."""
    if prior is None:
        return None, None, None
    prior_mu, prior_scale = prior
    prior_sigma, prior_log_sigma = sigma_and_log_sigma(prior_scale.to(dtype), param)
    return prior_mu.to(dtype), prior_sigma, prior_log_sigma


def log_prior(z: torch.Tensor, prior, param: str) -> torch.Tensor:
    """log p(z) = sum_d [ -((z - mu_p) / sigma_p)^2 / 2 - log sigma_p - log(2 pi) / 2 ]."""
    prior_mu, prior_sigma, prior_log_sigma = _prior_terms(prior, param, z.dtype)
    if prior_mu is None:
        return (-0.5 * z * z).sum(-1) - z.shape[-1] * HALF_LOG_2PI
    u = (z - prior_mu) / prior_sigma
    return (-0.5 * u * u - prior_log_sigma).sum(-1) - z.shape[-1] * HALF_LOG_2PI


def log_q_grad_z(mu, scale, param, n_samples, prior, eps, seed, noise):
    """d log q / d z = -eps / sigma (detached, z's shape), for DReG, from the latent's arguments:
    eps is the explicit noise (z's shape), or None to regenerate it from `seed` with the latent
    backend's noise(seed, n_samples, rows, dim, dtype) -> (K, R, D), in the latent's compute dtype
    (the prior's dtype counts, as in the forward)."""
    dtype = compute_dtype(mu, scale, *(prior or ()))
    with torch.no_grad():
        if eps is None:
            rows = mu.numel() // mu.shape[-1] if mu.shape[-1] else 0
            k = 1 if n_samples is None else n_samples
            eps = noise(seed, k, rows, mu.shape[-1], dtype).view(k, *mu.shape)
            if n_samples is None:
                eps = eps[0]
        sigma, _ = sigma_and_log_sigma(scale.to(dtype), param)
        return -eps.to(dtype) / sigma


def latent(mu, scale, param, n_samples, prior, stl, eps, seed):
    """z = mu + sigma eps;  log q = sum_d [-eps^2/2 - log sigma - log(2 pi)/2]  (exact at that z);
    log p = log_prior(z);  kl = sum_d KL_d.  With stl, log q keeps its value but its gradient
    flows only through z: d log q / d z = -eps / sigma (the variational parameters stopped)."""
    dtype = compute_dtype(mu, scale, *(prior or ()))
    # One cast of the prior: its log p and KL gradients then add up in the compute dtype (two casts
    # of a half prior would each round their gradient to half before autograd adds them).
    prior = None if prior is None else tuple(t.to(dtype) for t in prior)
    k = 1 if n_samples is None else n_samples
    mu_c = mu.to(dtype)
    sigma, log_sigma = sigma_and_log_sigma(scale.to(dtype), param)
    if eps is None:
        rows = mu.numel() // mu.shape[-1] if mu.shape[-1] else 0
        eps = normal_noise(seed, k, rows, mu.shape[-1], dtype).reshape(k, *mu.shape)
    elif n_samples is None:
        eps = eps.unsqueeze(0)
    eps = eps.to(dtype)

    z = mu_c + sigma * eps
    d = mu.shape[-1]
    log_q = (-0.5 * eps * eps - log_sigma).sum(-1) - d * HALF_LOG_2PI
    if stl:
        log_q_grad_z = (-eps / sigma).detach()
        log_q = log_q.detach() + ((z - z.detach()) * log_q_grad_z).sum(-1)
    log_p = log_prior(z, prior, param)
    prior_mu, prior_sigma, prior_log_sigma = _prior_terms(prior, param, dtype)
    kl = gaussian_kl_per_dim(mu_c, log_sigma, prior_mu, prior_sigma, prior_log_sigma).sum(-1)

    if n_samples is None:
        z, log_q, log_p = z[0], log_q[0], log_p[0]
    return z.to(mu.dtype), log_q, log_p, kl


def kl(mu, scale, param, prior, per_dim):
    """Analytic KL(N(mu, sigma^2) || prior), per dim or summed over the last dim."""
    dtype = compute_dtype(mu, scale, *(prior or ()))
    _, log_sigma = sigma_and_log_sigma(scale.to(dtype), param)
    prior_mu, prior_sigma, prior_log_sigma = _prior_terms(prior, param, dtype)
    per = gaussian_kl_per_dim(mu.to(dtype), log_sigma, prior_mu, prior_sigma, prior_log_sigma)
    return per if per_dim else per.sum(-1)
