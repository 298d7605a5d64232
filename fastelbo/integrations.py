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
log-densities; diffusers returns them in the parameters' dtype, and a float64 sample with float32
parameters gives a float32 NLL), sample() draws fastelbo's counter-based noise (docs/RNG.md)
instead of torch.randn's (one generator, not a list of them; none when deterministic), and std /
var are computed when first read (the fused ops never need them). As in diffusers, kl() sums dims
1, 2, 3 whatever the parameters' rank (a video VAE's (B, C, T, H, W) keeps W), and kl(other)
with a deterministic `other` (var 0) is diffusers' formula, inf.
"""
from __future__ import annotations

import operator
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
        self.deterministic = bool(deterministic)
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

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """mean + std * eps, in the parameters' dtype (the mean itself when deterministic)."""
        if self.deterministic:
            return self.mean.clone()
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator (one for the batch), got {type(generator).__name__}")
        return gaussian_latent(self.mean, self.logvar, dim=tuple(range(1, self.mean.dim())), generator=generator).z

    def kl(self, other=None) -> torch.Tensor:
        """KL(self || N(0, I)), or KL(self || other), summed over dims 1, 2, 3. `other`: any
        distribution with diffusers' attributes (mean, logvar, var, deterministic)."""
        if self.deterministic:
            return torch.Tensor([0.0])
        if other is None:
            return gaussian_kl(self.mean, self.logvar, dim=IMAGE_DIMS)
        if not hasattr(other, "mean") or not hasattr(other, "logvar"):
            raise TypeError(f"other must be a DiagonalGaussianDistribution (mean, logvar), got {type(other).__name__}")
        if getattr(other, "deterministic", False):  # var 0: diffusers' formula (inf), not a kernel's
            return 0.5 * torch.sum((self.mean - other.mean) ** 2 / other.var + self.var / other.var - 1.0
                                   - self.logvar + other.logvar, dim=list(IMAGE_DIMS))
        return gaussian_kl(self.mean, self.logvar, dim=IMAGE_DIMS, prior=(other.mean, other.logvar))

    def nll(self, sample: torch.Tensor, dims: Sequence[int] = IMAGE_DIMS) -> torch.Tensor:
        """-log N(sample | mean, var) summed over `dims` of the broadcast of sample and mean (all
        dims when empty, as torch.sum)."""
        if self.deterministic:
            return torch.Tensor([0.0])
        V.tensor("sample", sample)
        shape = torch.broadcast_shapes(sample.shape, self.mean.shape)
        mean, x, logvar = (t.expand(shape) for t in (self.mean, sample, self.logvar))  # views
        dims = _reduced_dims(dims, len(shape))
        trailing = list(range(len(shape) - len(dims), len(shape)))
        mean, x, logvar = (t.movedim(dims, trailing) for t in (mean, x, logvar))
        return -gaussian_log_prob(mean, x, logvar=logvar, event_dims=len(dims))

    def mode(self) -> torch.Tensor:
        return self.mean


def _reduced_dims(dims, ndim: int) -> list[int]:
    """`dims` (an int or a sequence of ints, as torch.sum takes them) as sorted non-negative dims;
    an error naming `dims` for one out of range or repeated; all dims when empty."""
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not dims:
        return list(range(ndim))
    out = []
    for d in dims:
        d = operator.index(d)
        if not -ndim <= d < ndim:
            raise IndexError(f"dims: dim {d} is out of range for a tensor of {ndim} dims")
        out.append(d % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"dims: a dim appears more than once in {dims}")
    return sorted(out)


__all__ = ["DiagonalGaussianDistribution"]
