"""The NamedTuples the public API returns."""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch


class Latent(NamedTuple):
    """A reparameterized sample of q(z|x) = N(mu, sigma^2) and its densities.

    z:     mu's shape, or (K, *mu.shape) with n_samples=K; mu's dtype.
    log_q: log q(z|x), z's shape without D.     log_p: log p(z), same shape.
    kl:    analytic KL(q || p), mu's shape without D (no sample dim).
    log_q and log_p are float32 (float64 for float64 inputs).
    """

    z: torch.Tensor
    log_q: torch.Tensor
    log_p: torch.Tensor
    kl: torch.Tensor


class DregTerms(NamedTuple):
    """What estimator="dreg" needs beyond a Latent's public fields.

    log_q_grad_z(): d log q / d z = -(z - mu) / sigma^2 = -eps / sigma, detached, z's shape.
    log_p_at(z):    log p at z, differentiable in z and the prior's parameters.
    """

    log_q_grad_z: Callable[[], torch.Tensor]
    log_p_at: Callable[[torch.Tensor], torch.Tensor]


class TracedLatent(Latent):
    """The Latent that gaussian_latent returns: a plain Latent to its users (same fields, same
    unpacking), carrying the DregTerms that fe.elbo(estimator="dreg") reads from `dreg_terms` and
    the name of the backend that made it (fe.elbo runs there unless told otherwise)."""

    dreg_terms: Optional[DregTerms]
    backend: Optional[str] = None

    def __repr__(self) -> str:
        return Latent.__repr__(self).replace(type(self).__name__, "Latent", 1)


def traced_latent(z, log_q, log_p, kl, dreg_terms: DregTerms) -> TracedLatent:
    latent = TracedLatent(z, log_q, log_p, kl)
    latent.dreg_terms = dreg_terms
    return latent


class ELBOOutput(NamedTuple):
    """What fe.ELBO returns.

    loss:    -(reduced objective), what to call .backward() on.
    elbo:    the estimator's value per data point (ELBO or IWAE bound), mu's shape without D.
    log_lik: log p(x|z) per sample, z's shape without D.
    kl:      KL(q || p) per data point: analytic, or the Monte Carlo mean of log q - log p.
    z:       the sample the decoder saw.
    """

    loss: torch.Tensor
    elbo: torch.Tensor
    log_lik: torch.Tensor
    kl: torch.Tensor
    z: torch.Tensor
