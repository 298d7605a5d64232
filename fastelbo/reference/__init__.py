"""The pure-PyTorch reference path: the public API with every call pinned to backend "reference".

It never calls a fused kernel, works on any device, and is the oracle every backend is tested
against. Same functions, same signatures as the top-level package.
"""
from __future__ import annotations

import functools

from .. import classic as _classic
from .. import functional as _functional
from .. import module as _module


def _pinned(fn):
    @functools.wraps(fn)
    def call_reference(*args, backend=None, **kwargs):
        if backend not in (None, "reference"):
            raise ValueError(f"fastelbo.reference.{fn.__name__} always runs backend 'reference'; got backend={backend!r}")
        return fn(*args, backend="reference", **kwargs)

    return call_reference


def _in_reference(fn):
    """For functions without a backend argument: run them inside use_backend("reference")."""
    from .._backend import use_backend

    @functools.wraps(fn)
    def call_reference(*args, **kwargs):
        with use_backend("reference"):
            return fn(*args, **kwargs)

    return call_reference


gaussian_latent = _pinned(_functional.gaussian_latent)
gaussian_kl = _pinned(_functional.gaussian_kl)
bernoulli_log_prob = _pinned(_functional.bernoulli_log_prob)
gaussian_log_prob = _pinned(_functional.gaussian_log_prob)
continuous_bernoulli_log_prob = _pinned(_functional.continuous_bernoulli_log_prob)
categorical_log_prob = _pinned(_functional.categorical_log_prob)
discretized_logistic_mixture_log_prob = _pinned(_functional.discretized_logistic_mixture_log_prob)
elbo = _pinned(_functional.elbo)
linear_bernoulli_log_prob = _pinned(_functional.linear_bernoulli_log_prob)
linear_gaussian_log_prob = _pinned(_functional.linear_gaussian_log_prob)
reparameterize = _in_reference(_classic.reparameterize)
vae_loss = _in_reference(_classic.vae_loss)


class ELBO(_module.ELBO):
    """fastelbo.ELBO pinned to the reference backend."""

    def __init__(self, likelihood="bernoulli", *, backend=None, **kwargs):
        if backend not in (None, "reference"):
            raise ValueError(f"fastelbo.reference.ELBO always runs backend 'reference'; got backend={backend!r}")
        super().__init__(likelihood, backend="reference", **kwargs)


__all__ = [
    "gaussian_latent", "gaussian_kl", "bernoulli_log_prob", "gaussian_log_prob",
    "continuous_bernoulli_log_prob", "categorical_log_prob", "discretized_logistic_mixture_log_prob", "elbo",
    "linear_bernoulli_log_prob",
    "linear_gaussian_log_prob", "ELBO",
    "reparameterize", "vae_loss",
]
