"""The public functional API: check arguments, pick a backend, call it.

Every check here runs before any kernel; the backend modules receive normalized arguments:
    latent(mu, scale, param, n_samples | None, prior | None, stl, eps | None, seed | None)
        -> (z, log_q, log_p, kl)
    noise(seed, n_samples, n_rows, dim, dtype) -> the latent's eps (n_samples, n_rows, dim)
    kl(mu, scale, param, prior | None, per_dim)
    bernoulli / continuous_bernoulli(logits, x, event_dims)
    gaussian(mean, x, logvar: float | Tensor, event_dims)
    categorical(logits, target, event_dims)
    elbo(log_lik, latent, kl, estimator, beta)          (estimator "elbo" or "iwae")

The checks are written for the per-call cost of small batches: value checks (which sync the
device) only run in validation mode, and the common path makes few Python calls.
"""
from __future__ import annotations

import torch

from . import _validate as V
from . import _backend
from ._backend import check_backend_name, resolve
from ._types import DregTerms, Latent, TracedLatent
from .reference_backend import estimators as reference_estimators
from .reference_backend.latent import log_prior, log_q_grad_z
from .rng import draw_seed

PARAMS = ("logvar", "log_std", "softplus")
KL_MODES = ("mc", "analytic")
ESTIMATORS = ("elbo", "iwae", "dreg")


def _check_posterior(mu, scale, param):
    V.tensor("mu", mu, min_dim=1)
    V.tensor("scale", scale, min_dim=1)
    if scale.shape != mu.shape:
        raise ValueError(f"scale must have mu's shape {tuple(mu.shape)}, got {tuple(scale.shape)}")
    if scale.device != mu.device:
        V.same_device("scale", scale, "mu", mu)
    if param not in PARAMS or type(param) is not str:
        V.choice("param", param, PARAMS)
    if V.active:
        V.finite("mu", mu)
        V.finite("scale", scale)


def _check_prior(prior, mu):
    if not isinstance(prior, (tuple, list)) or len(prior) != 2:
        raise TypeError("prior must be None or a pair (prior_mu, prior_scale)")
    for name, t in zip(("prior_mu", "prior_scale"), prior):
        V.tensor(f"prior ({name})", t)
        V.same_device(f"prior ({name})", t, "mu", mu)
        V.broadcasts_to(f"prior ({name})", t, mu.shape, "mu")
        V.finite(f"prior ({name})", t)
    return tuple(prior)


def _check_noise(eps, generator, mu, n_samples):
    """eps (explicit noise of z's shape, a constant) or generator (on mu's device), not both."""
    if eps is not None:
        if generator is not None:
            raise ValueError("pass either eps (explicit noise) or generator, not both")
        V.tensor("eps", eps)
        if eps.requires_grad and torch.is_grad_enabled():
            raise ValueError("eps must not require grad: it is noise, z is differentiable in mu and scale "
                             "(and the prior) only; pass eps.detach()")
        z_shape = mu.shape if n_samples is None else torch.Size((n_samples, *mu.shape))
        if eps.shape != z_shape:
            raise ValueError(f"eps must have z's shape {tuple(z_shape)}, got {tuple(eps.shape)}")
        V.same_device("eps", eps, "mu", mu)
        V.finite("eps", eps)
    elif generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != mu.device.type or (
            generator.device.index is not None and mu.device.index is not None
            and generator.device.index != mu.device.index
        ):
            raise ValueError(f"generator must be on mu's device ({mu.device}), got {generator.device}")


def gaussian_latent(mu, scale, *, param="logvar", n_samples=None, prior=None, stl=False,
                    generator=None, eps=None, backend=None) -> Latent:
    """Sample z = mu + sigma * eps from q(z|x) = N(mu, sigma^2) and return Latent(z, log_q, log_p, kl).

    mu, scale: (..., D), scale encoding sigma by `param` ("logvar": exp(s/2), "log_std": exp(s),
    "softplus": softplus(s)). n_samples=K adds a leading sample dim to z, log_q and log_p. prior:
    None for N(0, I) or (prior_mu, prior_scale) broadcastable to mu, same `param` encoding,
    differentiable. stl: "sticking the landing" gradient for log q. eps: explicit noise of z's shape
    (a constant: it must not require grad); otherwise it is drawn in-kernel from `generator`
    (default: the device's default generator).
    """
    _check_posterior(mu, scale, param)
    if n_samples is not None:
        n_samples = V.integer("n_samples", n_samples, 1)
    if prior is not None:
        prior = _check_prior(prior, mu)
    if stl is not False and stl is not True:
        V.flag("stl", stl)
    if eps is not None or generator is not None:
        _check_noise(eps, generator, mu, n_samples)
    name = resolve(backend, mu.device)
    seed = None if eps is not None else draw_seed(mu.device, generator)
    latent = TracedLatent(*getattr(_backend.LOADED, name).latent(mu, scale, param, n_samples, prior, stl, eps, seed))
    latent.backend = name
    latent.inputs = (mu, scale, param, n_samples, prior, eps, seed)
    return latent


def gaussian_kl(mu, scale, *, param="logvar", prior=None, per_dim=False, backend=None) -> torch.Tensor:
    """Analytic KL(N(mu, sigma^2) || prior): mu's shape without D, or mu's shape with per_dim."""
    _check_posterior(mu, scale, param)
    if prior is not None:
        prior = _check_prior(prior, mu)
    if per_dim is not False and per_dim is not True:
        V.flag("per_dim", per_dim)
    return getattr(_backend.LOADED, resolve(backend, mu.device)).kl(mu, scale, param, prior, per_dim)


def _check_data(name, x, params_name, params, shape, dtypes=V.DATA_DTYPES):
    """x (or target): a tensor of `dtypes` on the parameters' device, broadcasting to `shape`."""
    V.tensor(name, x, dtypes)
    if x.device != params.device:
        V.same_device(name, x, params_name, params)
    V.broadcasts_to(name, x, shape, params_name)


def _event_dims(value, limit: int, params_name: str) -> int:
    if type(value) is int and 0 <= value <= limit:
        return value
    return V.event_dims(value, limit, params_name)


def _check_logits_and_unit_data(logits, x, event_dims) -> int:
    """Checks of the Bernoulli-type likelihoods: float logits, x in [0, 1] broadcasting to them."""
    V.tensor("logits", logits)
    _check_data("x", x, "logits", logits, logits.shape)
    if V.active:
        V.finite("logits", logits)
        V.unit_interval("x", x)
    return _event_dims(event_dims, logits.dim(), "logits")


def bernoulli_log_prob(logits, x, *, event_dims=1, backend=None) -> torch.Tensor:
    """sum over event dims of x l - softplus(l); x in [0, 1] (float, bool or uint8)."""
    event_dims = _check_logits_and_unit_data(logits, x, event_dims)
    return getattr(_backend.LOADED, resolve(backend, logits.device)).bernoulli(logits, x, event_dims)


def continuous_bernoulli_log_prob(logits, x, *, event_dims=1, backend=None) -> torch.Tensor:
    """sum over event dims of x l - softplus(l) + log C(l); x in [0, 1]."""
    event_dims = _check_logits_and_unit_data(logits, x, event_dims)
    return getattr(_backend.LOADED, resolve(backend, logits.device)).continuous_bernoulli(logits, x, event_dims)


def gaussian_log_prob(mean, x, *, logvar=0.0, event_dims=1, backend=None) -> torch.Tensor:
    """sum over event dims of -((x - m)^2 exp(-v) + v + log(2 pi)) / 2, v = logvar (a number or a
    tensor broadcastable to mean, differentiable)."""
    V.tensor("mean", mean)
    _check_data("x", x, "mean", mean, mean.shape)
    if isinstance(logvar, torch.Tensor):
        V.tensor("logvar", logvar)
        V.same_device("logvar", logvar, "mean", mean)
        V.broadcasts_to("logvar", logvar, mean.shape, "mean")
        V.finite("logvar", logvar)
    else:
        logvar = V.real("logvar", logvar)
    if V.active:
        V.finite("mean", mean)
        V.finite("x", x)
    event_dims = _event_dims(event_dims, mean.dim(), "mean")
    return getattr(_backend.LOADED, resolve(backend, mean.device)).gaussian(mean, x, logvar, event_dims)


def categorical_log_prob(logits, target, *, event_dims=1, backend=None) -> torch.Tensor:
    """sum over event dims of log softmax(logits)[target]; logits (..., C), integer target in [0, C)
    broadcastable to logits.shape[:-1]."""
    V.tensor("logits", logits, min_dim=1)
    if logits.shape[-1] < 1:
        raise ValueError("logits must have at least one class in its last dim")
    _check_data("target", target, "logits (without the class dim)", logits, logits.shape[:-1], V.INDEX_DTYPES)
    if V.active:
        V.finite("logits", logits)
        V.index_range("target", target, logits.shape[-1])
    event_dims = _event_dims(event_dims, logits.dim() - 1, "logits (without the class dim)")
    return getattr(_backend.LOADED, resolve(backend, logits.device)).categorical(logits, target, event_dims)


def _check_estimator(log_lik, latent, kl, estimator, beta) -> float:
    if not isinstance(latent, Latent):
        raise TypeError(f"latent must be a fastelbo Latent (from gaussian_latent), got {type(latent).__name__}")
    V.tensor("log_lik", log_lik)
    if log_lik.shape != latent.z.shape[:-1]:
        raise ValueError(
            f"log_lik must have z's shape without D, {tuple(latent.z.shape[:-1])}; got {tuple(log_lik.shape)}"
        )
    if log_lik.device != latent.z.device:
        V.same_device("log_lik", log_lik, "latent.z", latent.z)
    if kl not in KL_MODES or type(kl) is not str:
        V.choice("kl", kl, KL_MODES)
    if estimator not in ESTIMATORS or type(estimator) is not str:
        V.choice("estimator", estimator, ESTIMATORS)
    if type(beta) is not float or not 0.0 <= beta < float("inf"):
        beta = V.real("beta", beta, minimum=0.0)
    if estimator != "elbo":
        if beta != 1.0:
            raise ValueError(f"beta must be 1 with estimator={estimator!r} (got {beta})")
        if kl != "mc":
            raise ValueError(f"kl must be 'mc' with estimator={estimator!r}: the bound uses log p - log q per sample")
    if V.active:
        V.finite("log_lik", log_lik)
    return beta


def elbo(log_lik, latent, *, kl="mc", estimator="elbo", beta=1.0, backend=None) -> torch.Tensor:
    """The estimator's value per data point (mu's shape without D); see the README's math section.

    kl: "mc" (log p(z) - log q(z|x) per sample) or "analytic" (latent.kl). estimator: "elbo",
    "iwae" (beta must be 1) or "dreg" (IWAE value, doubly reparameterized gradient: call it once
    per latent, and let latent.z reach the loss only through the decoder). backend: the call's
    backend; by default the backend that made the latent (fe.gaussian_latent's), else the current
    choice.
    """
    beta = _check_estimator(log_lik, latent, kl, estimator, beta)
    if backend is not None:
        check_backend_name(backend)
    elif isinstance(latent, TracedLatent):
        backend = latent.backend
    if estimator == "dreg":
        return _dreg(log_lik, latent)
    return getattr(_backend.LOADED, resolve(backend, log_lik.device)).elbo(log_lik, latent, kl, estimator, beta)


def _dreg(log_lik, latent):
    """DReG around the latent's pieces (fastelbo.reference_backend.estimators.dreg): d log q / d z is
    rebuilt from the latent's arguments, its noise regenerated by the backend that drew it."""
    if not isinstance(latent, TracedLatent) or latent.inputs is None:
        raise ValueError("latent must come straight from fe.gaussian_latent for estimator='dreg'")
    hooks_z = latent.z.requires_grad and torch.is_grad_enabled()
    if hooks_z and latent.__dict__.get("dreg_applied", False):
        raise ValueError("estimator='dreg' was already applied to this latent; draw a new one")
    mu, scale, param, n_samples, prior, eps, seed = latent.inputs
    noise = getattr(_backend.LOADED, latent.backend).noise
    terms = DregTerms(log_q_grad_z(mu, scale, param, n_samples, prior, eps, seed, noise),
                      lambda z: log_prior(z, prior, param))
    out = reference_estimators.dreg(log_lik, latent, terms)
    if hooks_z:
        latent.dreg_applied = True
    return out
