"""Drop-in replacements for the latent classes of other codebases, computed by fastelbo's ops.

DiagonalGaussianDistribution: the posterior of Stable Diffusion's AutoencoderKL
(`diffusers.models.autoencoders.vae.DiagonalGaussianDistribution`, and latent-diffusion's
`ldm.modules.distributions.distributions`), with its semantics:

    mean, logvar = parameters.chunk(2, dim=1)          (views: (B, 2C, H, W) -> two (B, C, H, W))
    logvar       = clamp(logvar, -30, 20)
    std = exp(logvar / 2), var = exp(logvar)           (zeros when deterministic)
    sample()     = mean + std * eps                    fe.gaussian_latent (eps from fastelbo's Philox)
    kl()         = 1/2 sum_{1,2,3} [mean^2 + var - 1 - logvar]      fe.gaussian_kl(dim=(1, 2, 3))
    kl(other)    = 1/2 sum_{1,2,3} [(mean - m_o)^2 / var_o + var / var_o - 1 - logvar + logvar_o]
    nll(x, dims) = 1/2 sum_dims [log 2 pi + logvar + (x - mean)^2 / var]  -fe.gaussian_log_prob
    mode()       = mean

Differences, by design: the KL and the NLL are float32 for half parameters (fastelbo's
log-densities; diffusers returns them in the parameters' dtype), sample() draws fastelbo's
counter-based noise (docs/RNG.md) instead of torch.randn's, and std / var are computed when first
read (the fused ops never need them).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import _validate as V
from .ops.gaussian_kl import gaussian_kl
from .ops.gaussian_latent import gaussian_latent
from .ops.gaussian_log_prob import gaussian_log_prob

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
IMAGE_DIMS = (1, 2, 3)


class DiagonalGaussianDistribution:
    """diffusers' DiagonalGaussianDistribution(parameters, deterministic=False), fused underneath:
    parameters (B, 2C, ...) hold the mean and the log-variance along dim 1."""

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        V.tensor("parameters", parameters, min_dim=2)
        if parameters.shape[1] % 2:
            raise ValueError(f"parameters must have an even size along dim 1 (mean and logvar), got "
                             f"{tuple(parameters.shape)}")
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, LOGVAR_MIN, LOGVAR_MAX)
        self.deterministic = V.flag("deterministic", deterministic)
        self._std = self._var = None

    @property
    def std(self) -> torch.Tensor:
        if self._std is None:
            self._std = torch.zeros_like(self.mean) if self.deterministic else torch.exp(0.5 * self.logvar)
        return self._std

    @property
    def var(self) -> torch.Tensor:
        if self._var is None:
            self._var = torch.zeros_like(self.mean) if self.deterministic else torch.exp(self.logvar)
        return self._var

    def _event_dims(self) -> tuple[int, ...]:
        return tuple(range(1, self.mean.dim()))

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """mean + std * eps, in the parameters' dtype (the mean itself when deterministic)."""
        if self.deterministic:
            return self.mean.clone()
        return gaussian_latent(self.mean, self.logvar, dim=self._event_dims(), generator=generator).z

    def kl(self, other: Optional["DiagonalGaussianDistribution"] = None) -> torch.Tensor:
        """KL(self || N(0, I)), or KL(self || other), summed over dims 1, 2, 3: (B,)."""
        if self.deterministic:
            return torch.Tensor([0.0])
        prior = None
        if other is not None:
            if not isinstance(other, DiagonalGaussianDistribution):
                raise TypeError(f"other must be a DiagonalGaussianDistribution, got {type(other).__name__}")
            prior = (other.mean, other.logvar)
        return gaussian_kl(self.mean, self.logvar, dim=self._event_dims(), prior=prior)

    def nll(self, sample: torch.Tensor, dims: Sequence[int] = IMAGE_DIMS) -> torch.Tensor:
        """-log N(sample | mean, var) summed over `dims`."""
        if self.deterministic:
            return torch.Tensor([0.0])
        V.tensor("sample", sample)
        ndim = self.mean.dim()
        dims = sorted({d % ndim for d in ((dims,) if isinstance(dims, int) else dims)})
        trailing = list(range(ndim - len(dims), ndim))
        mean, x, logvar = (t.movedim(dims, trailing) for t in (self.mean, sample, self.logvar))
        return -gaussian_log_prob(mean, x, logvar=logvar, event_dims=len(dims))

    def mode(self) -> torch.Tensor:
        return self.mean


__all__ = ["DiagonalGaussianDistribution"]
