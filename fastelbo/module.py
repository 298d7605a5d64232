"""fe.ELBO: the whole VAE objective as a loss module."""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from . import _validate as V
from ._backend import CHOICES as BACKEND_CHOICES
from ._dtypes import compute_dtype
from ._types import ELBOOutput
from .ops._event_dims import batch_shape, dim_list, layout_for
from .ops.bernoulli_log_prob import log_prob_for_loss as bernoulli_for_loss
from .ops.continuous_bernoulli_log_prob import log_prob_for_loss as continuous_bernoulli_for_loss
from .ops.gaussian_log_prob import log_prob_for_loss as gaussian_for_loss
from .functional import (
    ESTIMATORS,
    KL_MODES,
    PARAMS,
    categorical_log_prob,
    discretized_logistic_mixture_log_prob,
    elbo,
    gaussian_kl,
    gaussian_latent,
)

LIKELIHOODS = ("bernoulli", "gaussian", "continuous_bernoulli", "categorical", "dmol")
# The options each likelihood takes (keyword arguments of fe.ELBO passed to its op), with defaults;
# None: required.
LIKELIHOOD_OPTIONS = {"dmol": {"n_mix": None, "bits": 8, "channel_dim": -1}}
REDUCTIONS = ("mean", "sum", "none")
# The likelihoods whose kernels scale their gradient buffer by the gradient the loss will give them
# (expected_row_grad), by name: their log-prob function for a loss.
_BINARY_FOR_LOSS = {"bernoulli": bernoulli_for_loss, "continuous_bernoulli": continuous_bernoulli_for_loss}
_FUSED_LOSS_LIKELIHOODS = ("gaussian", *_BINARY_FOR_LOSS)


def reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def expected_row_grad(n_points: int, n_samples: int, reduction: str, dtype: torch.dtype) -> float:
    """The gradient loss.backward() gives each log-likelihood value when loss = -reduce(value), value
    the ELBO per data point (fe.ELBO with estimator "elbo", fe.vae_loss): the float of the
    log-likelihood's dtype that the backward's own ops make (the negation, the mean's division by
    the number of data points, the ELBO op's mean over the K samples), so that the likelihoods'
    backward recognizes it exactly and hands its buffer over as the logits' gradient (the
    loss-level fusion: fastelbo/ops/bernoulli_log_prob.py). 1.0 (no scaling) for reduction "none",
    no data points, or a step torch.compile traces (its backward is a traced graph, which never
    hands a buffer over)."""
    if reduction not in ("mean", "sum") or n_points == 0 or torch.compiler.is_compiling():
        return 1.0
    return _row_grad(n_points, n_samples, reduction == "mean", dtype)


@functools.lru_cache(maxsize=256)
def _row_grad(n_points: int, n_samples: int, mean: bool, dtype: torch.dtype) -> float:
    # In numpy's IEEE arithmetic of the dtype (a float32 tensor divided by an int divides in
    # float32, by the int as a float32), not in torch ops: those would run under whatever mode is
    # active (FakeTensorMode, make_fx, a meta default device) and could not give a number there.
    real = np.float64 if dtype == torch.float64 else np.float32
    g = real(-1.0)
    if mean:
        g = g / real(n_points)
    if n_samples > 1:
        g = g / real(n_samples)
    return float(g)


class ELBO(torch.nn.Module):
    """loss = -(reduced objective) of a VAE with a diagonal Gaussian posterior.

    forward(x, mu, scale, decoder): mu, scale (*batch, D) from the encoder; decoder(z) returns the
    likelihood's parameters for z of shape (*batch, D), or (K, *batch, D) when n_samples=K > 1:
    logits for "bernoulli", "continuous_bernoulli" and "categorical" (with a trailing class dim),
    for "gaussian" the mean or a pair (mean, logvar), and for "dmol" (the discretized mixture of
    logistics) its 10 n_mix parameters per pixel along x's channel dim. x has mu's batch dims
    followed by the event dims (for "categorical", integer class targets; for "dmol", 3-channel
    images on the grid of 2^bits levels in [-1, 1]).

    Likelihood options (keyword arguments, passed to the likelihood's op): "dmol" takes n_mix
    (required), bits=8 and channel_dim=-1 (x's colour channel dim: -1 channels-last (B, H, W, 3),
    1 NCHW (B, 3, H, W); counted on x, which has no sample dim).

    dim: the latent's event dims (default the last; e.g. (1, 2, 3) for NCHW latents summed per
    image, as in fe.gaussian_latent): mu's batch dims are the others, and decoder(z) gets z of
    mu's shape.

    free_bits=lambda > 0 (with kl="analytic", estimator="elbo", reduction "mean" or "sum")
    replaces the batch objective's KL term by sum_d max(lambda, mean over the batch of KL_d).
    """

    def __init__(self, likelihood="bernoulli", *, n_samples=1, kl="analytic", estimator="elbo",
                 beta=1.0, free_bits=0.0, param="logvar", stl=False, reduction="mean", backend=None, dim=-1,
                 **likelihood_options):
        super().__init__()
        self.likelihood = V.choice("likelihood", likelihood, LIKELIHOODS)
        self.likelihood_options = self._options(likelihood_options)
        self.n_samples = V.integer("n_samples", n_samples, 1)
        self.kl = V.choice("kl", kl, KL_MODES)
        self.estimator = V.choice("estimator", estimator, ESTIMATORS)
        self.beta = V.real("beta", beta, minimum=0.0)
        self.free_bits = V.real("free_bits", free_bits, minimum=0.0)
        self.param = V.choice("param", param, PARAMS)
        self.stl = V.flag("stl", stl)
        self.reduction = V.choice("reduction", reduction, REDUCTIONS)
        self.backend = None if backend is None else V.choice("backend", backend, BACKEND_CHOICES)
        dim_list(dim)  # its type and repeats; its range against mu's dims in forward
        self.dim = dim
        if estimator != "elbo" and kl != "mc":
            raise ValueError(f"kl must be 'mc' with estimator={estimator!r}; got kl={kl!r}")
        if estimator != "elbo" and self.beta != 1.0:
            raise ValueError(f"beta must be 1 with estimator={estimator!r}; got {self.beta}")
        if self.free_bits > 0:
            if kl != "analytic" or estimator != "elbo":
                raise ValueError("free_bits needs kl='analytic' and estimator='elbo'")
            if reduction == "none":
                raise ValueError("free_bits is a batch objective: reduction must be 'mean' or 'sum'")

    def _options(self, given: dict) -> dict:
        allowed = LIKELIHOOD_OPTIONS.get(self.likelihood, {})
        for name in given:
            if name not in allowed:
                raise TypeError(f"ELBO got an unexpected keyword argument {name!r}"
                                + (f" (likelihood {self.likelihood!r} takes {', '.join(allowed)})" if allowed else ""))
        options = {**allowed, **given}
        for name, value in options.items():
            if value is None:
                raise TypeError(f"likelihood {self.likelihood!r} needs the keyword argument {name}")
            V.integer(name, value, 1 if name in ("n_mix", "bits") else -(2**31))
        return options

    def extra_repr(self) -> str:
        return (f"likelihood={self.likelihood!r}, n_samples={self.n_samples}, kl={self.kl!r}, "
                f"estimator={self.estimator!r}, beta={self.beta}, free_bits={self.free_bits}, "
                f"param={self.param!r}, stl={self.stl}, reduction={self.reduction!r}"
                + ("" if self.dim == -1 else f", dim={self.dim!r}")
                + "".join(f", {k}={v!r}" for k, v in self.likelihood_options.items()))

    def forward(self, x, mu, scale, decoder, *, generator=None) -> ELBOOutput:
        """x, mu, scale and decoder as in the class docstring; generator: the torch.Generator the
        noise is drawn from (default: the device's default generator)."""
        if not callable(decoder):
            raise TypeError(f"decoder must be callable (z -> likelihood parameters), got {type(decoder).__name__}")
        V.tensor("mu", mu, min_dim=1)
        event_dims = self._check_x(x, mu)
        return self._forward(x, mu, scale, decoder, generator, event_dims)

    def _check_x(self, x, mu) -> int:
        """x's event dims, after checking that x starts with mu's batch dims (before the decoder runs)."""
        dtypes = V.INDEX_DTYPES if self.likelihood == "categorical" else V.DATA_DTYPES
        V.tensor("x", x, dtypes)
        batch = batch_shape(mu, self.dim)
        if x.dim() < len(batch) or x.shape[: len(batch)] != batch:
            raise ValueError(f"x must start with mu's batch dims {tuple(batch)}; got shape {tuple(x.shape)}")
        return x.dim() - len(batch)

    def _forward(self, x, mu, scale, decoder, generator, event_dims) -> ELBOOutput:
        latent = gaussian_latent(mu, scale, param=self.param, dim=self.dim, stl=self.stl, generator=generator,
                                 n_samples=self.n_samples if self.n_samples > 1 else None, backend=self.backend)
        params = decoder(latent.z)
        expected_grad = 1.0
        if self.likelihood in _FUSED_LOSS_LIKELIHOODS and self.estimator == "elbo" and self.free_bits == 0:
            tensors = params if isinstance(params, (tuple, list)) else (params,)
            log_prob_dtype = compute_dtype(*(t for t in tensors if isinstance(t, torch.Tensor)))
            expected_grad = expected_row_grad(math.prod(batch_shape(mu, self.dim)), self.n_samples, self.reduction,
                                              log_prob_dtype)
        log_lik = self._log_lik(params, x, event_dims, expected_grad)
        value = elbo(log_lik, latent, kl=self.kl, estimator=self.estimator, beta=self.beta)  # on the latent's backend
        samples = latent.z.dim() - mu.dim()
        if self.kl == "analytic":
            kl = latent.kl
        else:
            kl = (latent.log_q - latent.log_p).mean(0) if samples else latent.log_q - latent.log_p
        if self.free_bits > 0:
            mean_log_lik = log_lik.mean(0) if samples else log_lik
            kl_per_dim = gaussian_kl(mu, scale, param=self.param, dim=self.dim, per_dim=True, backend=self.backend)
            layout = layout_for(mu, self.dim)
            if layout is not None:
                kl_per_dim = layout.flat(kl_per_dim)
            kl_term = kl_per_dim.reshape(-1, kl_per_dim.shape[-1]).mean(0).clamp(min=self.free_bits).sum()
            total = mean_log_lik.mean() if self.reduction == "mean" else mean_log_lik.sum()
            n_points = 1 if self.reduction == "mean" else mean_log_lik.numel()
            loss = -(total - self.beta * n_points * kl_term)
        else:
            loss = -reduce(value, self.reduction)
        return ELBOOutput(loss, value, log_lik, kl, latent.z)

    def _log_lik(self, params, x, event_dims, expected_grad):
        if self.likelihood == "gaussian":
            mean, logvar = params if isinstance(params, (tuple, list)) else (params, 0.0)
            return gaussian_for_loss(mean, x, logvar, event_dims, self.backend, expected_grad)
        if isinstance(params, (tuple, list)):
            raise TypeError(f"decoder must return a logits tensor for likelihood={self.likelihood!r}")
        if self.likelihood in _BINARY_FOR_LOSS:
            return _BINARY_FOR_LOSS[self.likelihood](params, x, event_dims, self.backend, expected_grad)
        if self.likelihood == "dmol":
            options = self.likelihood_options
            channel_dim = options["channel_dim"]  # on x (no sample dim): counted from the end for params
            if not -event_dims <= channel_dim - (x.dim() if channel_dim >= 0 else 0) < 0:
                raise ValueError(f"channel_dim={channel_dim} must name one of x's event dims (the last "
                                 f"{event_dims} of x's {x.dim()} dims: x has mu's batch dims first)")
            return discretized_logistic_mixture_log_prob(
                params, x, n_mix=options["n_mix"], bits=options["bits"],
                channel_dim=channel_dim - x.dim() if channel_dim >= 0 else channel_dim, event_dims=event_dims - 1,
                backend=self.backend)
        return categorical_log_prob(params, x, event_dims=event_dims, backend=self.backend)
