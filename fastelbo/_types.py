"""The NamedTuples the public API returns."""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch


class Latent(NamedTuple):
    """A reparameterized sample of q(z|x) = N(mu, sigma^2) and its densities.

    z:     mu's shape, or (K, *mu.shape) with n_samples=K; mu's dtype.
    log_q: log q(z|x), z's shape without the event dims (D, or those of `dim=`).
    log_p: log p(z), same shape.
    kl:    analytic KL(q || p), mu's shape without the event dims (no sample dim).
    log_q and log_p are float32 (float64 for float64 inputs).
    """

    z: torch.Tensor
    log_q: torch.Tensor
    log_p: torch.Tensor
    kl: torch.Tensor


class DregTerms(NamedTuple):
    """What estimator="dreg" needs beyond a Latent's public fields (built by fe.elbo from the
    latent's arguments, only for dreg).

    log_q_grad_z: d log q / d z = -(z - mu) / sigma^2 = -eps / sigma, detached, z's shape.
    log_p_at(z):  log p at z, differentiable in z and the prior's parameters.
    """

    log_q_grad_z: torch.Tensor
    log_p_at: Callable[[torch.Tensor], torch.Tensor]


class TracedLatent(Latent):
    """The Latent that gaussian_latent returns: a plain Latent to its users (same fields, same
    unpacking), remembering the backend that made it (fe.elbo runs there unless told otherwise)
    and its arguments (mu, scale, param, n_samples, prior, eps, seed), from which
    fe.elbo(estimator="dreg") rebuilds what it needs."""

    backend: Optional[str] = None
    inputs: Optional[tuple] = None
    inputs_flat: bool = True  # inputs over the flat rows; False: in mu's shape (the op flattened them)
    # The caller's `dim` where the C++ front door took several trailing event dims: the layout is
    # made from it and mu when read (DReG only), not on every call.
    event_dim: Optional[object] = None
    _layout: Optional[object] = None

    @property
    def layout(self) -> Optional[object]:
        """The event dims' EventLayout when they are not mu's last dim (fastelbo/ops/_event_dims.py)."""
        if self._layout is None and self.event_dim is not None:
            from .ops._event_dims import layout_for  # (the ops import this module)

            self._layout = layout_for(self.inputs[0], self.event_dim)
        return self._layout

    @layout.setter
    def layout(self, value) -> None:
        self._layout, self.event_dim = value, None

    def flat_inputs(self) -> Optional[tuple]:
        """inputs over the flat rows (batch..., D) the kernels summed over (what DReG rebuilds log q
        from): as recorded, or flattened here when the op took mu's trailing event dims itself."""
        if self.inputs_flat or self.layout is None or self.inputs is None:
            return self.inputs
        mu, scale, param, n_samples, prior, eps, seed = self.inputs
        flat_prior = None if prior is None else tuple(self.layout.flat_prior(t) for t in prior)
        flat_eps = None if eps is None else self.layout.flat(eps, 0 if n_samples is None else 1)
        return self.layout.flat(mu), self.layout.flat(scale), param, n_samples, flat_prior, flat_eps, seed

    def __repr__(self) -> str:
        return Latent.__repr__(self).replace(type(self).__name__, "Latent", 1)


class ELBOOutput(NamedTuple):
    """What fe.ELBO returns.

    loss:    -(reduced objective), what to call .backward() on.
    elbo:    the estimator's value per data point (ELBO or IWAE bound), mu's shape without the
             event dims.
    log_lik: log p(x|z) per sample, z's shape without the event dims.
    kl:      KL(q || p) per data point: analytic, or the Monte Carlo mean of log q - log p.
    z:       the sample the decoder saw.
    """

    loss: torch.Tensor
    elbo: torch.Tensor
    log_lik: torch.Tensor
    kl: torch.Tensor
    z: torch.Tensor
