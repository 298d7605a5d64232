"""Checking a backend against the reference: the tolerance table and the op cases.

`fastelbo check` and the test suite both use this module, so one table decides pass or fail.

How an op is judged, for a backend B and dtype T:
  * inputs are drawn fresh in float64, rounded to T; "truth" is the reference run on those
    rounded values in float64, the same generator state giving the same eps.
  * float32 / float64 (and the reference in every dtype): every element of every output and
    gradient must satisfy |actual - truth| <= atol + rtol |truth| (TOLERANCES[T]).
  * a fused backend in float16 / bfloat16 may err by at most HALF_FACTOR times the reference's own
    error in T (the reference run in T, against the same truth) plus HALF_FLOOR; an output the op
    returns in float32 for T inputs (the latent's log q, log p and KL, a likelihood's per-row
    log-prob) also within the float32 row of the table, which a float32 sum holds to where the
    reference's own error, when it happens to round well, would not (log p of a 1030-element row,
    about -2400: the reference 0.4 ulp off, the kernels 1.3 ulp, against an allowance of 1.2 ulp).
Gradients are taken with random output cotangents (never all ones).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import torch

from ._backend import use_backend
from ._dtypes import FLOAT_DTYPES

__all__ = ["Tolerance", "TOLERANCES", "HALF_FACTOR", "HALF_FLOOR", "DTYPES", "OpCase", "CASES",
           "CaseResult", "compare"]


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


DTYPES = FLOAT_DTYPES

# TOLERANCES[dtype][phase], phase "fwd" (values) or "bwd" (gradients).
TOLERANCES = {
    torch.float64: {"fwd": Tolerance(1e-10, 1e-10), "bwd": Tolerance(1e-9, 1e-9)},
    torch.float32: {"fwd": Tolerance(1e-5, 1e-5), "bwd": Tolerance(1e-4, 1e-4)},
    torch.float16: {"fwd": Tolerance(2e-3, 2e-3), "bwd": Tolerance(1e-2, 1e-2)},
    torch.bfloat16: {"fwd": Tolerance(2e-2, 2e-2), "bwd": Tolerance(8e-2, 8e-2)},
}
HALF_FACTOR = 2.0
HALF_FLOOR = {"fwd": 1e-4, "bwd": 1e-3}


def _violation(actual: torch.Tensor, truth: torch.Tensor, allowed) -> tuple[float, float]:
    """(max |actual - truth|, max of that error over the allowed error); NaN must match NaN."""
    actual = actual.detach().to(torch.float64)
    truth = truth.detach().to(torch.float64)
    if actual.shape != truth.shape:
        return math.inf, math.inf
    nan_a, nan_t = torch.isnan(actual), torch.isnan(truth)
    if not torch.equal(nan_a, nan_t):
        return math.inf, math.inf
    ok = ~nan_t
    if not bool(ok.any()):
        return 0.0, 0.0
    err = (actual - truth).abs()[ok]
    same_inf = (actual == truth)[ok]  # equal infinities count as exact
    err = torch.where(same_inf, 0.0, err)
    allowed = allowed[ok] if isinstance(allowed, torch.Tensor) else allowed
    return float(err.max()), float((err / allowed).max()) if err.numel() else 0.0


@dataclass(frozen=True)
class OpCase:
    """One public op in one configuration.

    make(generator) -> dict of float64 (or integer) input tensors on the generator's device;
    run(inputs, backend, generator) -> tuple of output tensors, calling the public API;
    grads: names of the inputs whose gradients are compared.
    """

    name: str
    make: Callable[[torch.Generator], dict]
    run: Callable[[dict, str, torch.Generator], tuple]
    grads: tuple[str, ...]


def _normal(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g, dtype=torch.float64, device=g.device) * scale


def _uniform(g, *shape, low=0.0, high=1.0):
    return low + (high - low) * torch.rand(*shape, generator=g, dtype=torch.float64, device=g.device)


def _grid(g, shape, steps, denominator):
    """Random multiples of 1/denominator in [-steps, steps] / denominator, as float64."""
    k = torch.randint(-steps, steps + 1, shape, generator=g, device=g.device)
    return k.to(torch.float64) / denominator


def _posterior(g, batch=(2, 3), dim=5, scale_range=(-1.5, 1.0)):
    low, high = scale_range
    return {"mu": _normal(g, *batch, dim), "scale": _uniform(g, *batch, dim, low=low, high=high)}


def _latent_case(name, param="logvar", n_samples=None, prior=False, stl=False, explicit_eps=False,
                 scale_range=(-1.5, 1.0), dim=5):
    """prior: False, True (prior_mu (3, D) and prior_scale (D,), broadcast over the batch) or "full"
    (a prior per sample, of mu's shape: the C++ kernels' flat rows for D <= 64, else their tiled
    rows when K = 1; with D > 512 the rows span several tiles)."""
    def make(g):
        inputs = _posterior(g, dim=dim, scale_range=scale_range)
        if prior == "full":
            inputs["prior_mu"] = _normal(g, 2, 3, dim, scale=0.5)
            inputs["prior_scale"] = _uniform(g, 2, 3, dim, low=-0.5, high=0.5)
        elif prior:
            inputs["prior_mu"] = _normal(g, 3, dim, scale=0.5)
            inputs["prior_scale"] = _uniform(g, dim, low=-0.5, high=0.5)
        if explicit_eps:
            shape = (n_samples, 2, 3, dim) if n_samples else (2, 3, dim)
            inputs["eps"] = _normal(g, *shape)
        return inputs

    def run(t, backend, g):
        import fastelbo as fe

        p = (t["prior_mu"], t["prior_scale"]) if prior else None
        eps = t.get("eps")
        return tuple(fe.gaussian_latent(t["mu"], t["scale"], param=param, n_samples=n_samples, prior=p,
                                        stl=stl, eps=eps, generator=None if explicit_eps else g,
                                        backend=backend))

    grads = ("mu", "scale") + (("prior_mu", "prior_scale") if prior else ())
    return OpCase(name, make, run, grads)


def _nchw_posterior(g, prior):
    """An NCHW posterior (2, 3, 2, 4) and its prior: "full" (per sample, mu's shape), "channel"
    ((3, 1, 1), broadcast over the batch and the pixels) or None."""
    inputs = {"mu": _normal(g, 2, 3, 2, 4), "scale": _uniform(g, 2, 3, 2, 4, low=-1.5, high=1.0)}
    shape = {"full": (2, 3, 2, 4), "channel": (3, 1, 1)}.get(prior)
    if shape is not None:
        inputs["prior_mu"] = _normal(g, *shape, scale=0.5)
        inputs["prior_scale"] = _uniform(g, *shape, low=-0.5, high=0.5)
    return inputs


def _in_layout(t, channels_last):
    return t.contiguous(memory_format=torch.channels_last) if channels_last and t.dim() == 4 else t


def _event_dims_latent_case(name, dim, prior=None, n_samples=None, channels_last=False, default_generator=False):
    """gaussian_latent with event dims other than the last (log-std, as vdvae holds them). With
    default_generator the call draws from the device's default generator (set to g's state): the
    common call, which on the C++ kernels passes trailing event dims to the op as they are."""
    def run(t, backend, g):
        import fastelbo as fe

        p = (_in_layout(t["prior_mu"], channels_last), _in_layout(t["prior_scale"], channels_last)) if prior else None
        mu, scale = _in_layout(t["mu"], channels_last), _in_layout(t["scale"], channels_last)
        if default_generator:
            with _default_generator(g):
                return tuple(fe.gaussian_latent(mu, scale, param="log_std", dim=dim, n_samples=n_samples, prior=p,
                                                backend=backend))
        return tuple(fe.gaussian_latent(mu, scale, param="log_std", dim=dim, n_samples=n_samples, prior=p, generator=g,
                                        backend=backend))

    grads = ("mu", "scale") + (("prior_mu", "prior_scale") if prior else ())
    return OpCase(name, lambda g: _nchw_posterior(g, prior), run, grads)


def _event_dims_kl_case(name, dim, prior, per_dim, channels_last=False):
    def run(t, backend, g):
        import fastelbo as fe

        p = (_in_layout(t["prior_mu"], channels_last), _in_layout(t["prior_scale"], channels_last)) if prior else None
        mu, scale = _in_layout(t["mu"], channels_last), _in_layout(t["scale"], channels_last)
        return (fe.gaussian_kl(mu, scale, dim=dim, prior=p, per_dim=per_dim, backend=backend),)

    grads = ("mu", "scale") + (("prior_mu", "prior_scale") if prior else ())
    return OpCase(name, lambda g: _nchw_posterior(g, prior), run, grads)


def _event_dims_elbo_case(name, estimator, n_samples, prior=None, default_generator=False):
    """The ELBO of an NCHW latent summed per image, decoded by a linear map of the flat latent (the
    latent's noise from g, or from the default generator set to g's state, as in
    _event_dims_latent_case)."""
    def make(g):
        inputs = _nchw_posterior(g, prior)
        inputs["weight"] = _normal(g, 24, 7, scale=0.3)
        inputs["x"] = (_uniform(g, 2, 7) < 0.5).to(torch.float64)
        return inputs

    def run(t, backend, g):
        import fastelbo as fe

        p = (t["prior_mu"], t["prior_scale"]) if prior else None
        with use_backend(backend), (_default_generator(g) if default_generator else contextlib.nullcontext()):
            latent = fe.gaussian_latent(t["mu"], t["scale"], dim=(1, 2, 3), n_samples=n_samples, prior=p,
                                        generator=None if default_generator else g)
            log_lik = fe.bernoulli_log_prob(latent.z.flatten(-3) @ t["weight"], t["x"])
            return (fe.elbo(log_lik, latent, kl="mc", estimator=estimator),)

    return OpCase(name, make, run, ("mu", "scale", "weight") + (("prior_mu", "prior_scale") if prior else ()))


def _kl_case(name, param, prior, per_dim, scale_range=(-1.5, 1.0)):
    """prior: False, True (prior_mu (D,) broadcast, prior_scale of mu's shape) or "full" (both of
    mu's shape: the C++ kernels' flat rows)."""
    def make(g):
        inputs = _posterior(g, scale_range=scale_range)
        if prior:
            inputs["prior_mu"] = _normal(g, *((2, 3, 5) if prior == "full" else (5,)), scale=0.5)
            # Some prior scales equal the posterior's: the expm1 form must stay accurate there.
            inputs["prior_scale"] = torch.where(_uniform(g, 2, 3, 5) < 0.3, inputs["scale"], _uniform(g, 2, 3, 5, low=-1, high=1))
        return inputs

    def run(t, backend, g):
        import fastelbo as fe

        p = (t["prior_mu"], t["prior_scale"]) if prior else None
        return (fe.gaussian_kl(t["mu"], t["scale"], param=param, prior=p, per_dim=per_dim, backend=backend),)

    return OpCase(name, make, run, ("mu", "scale") + (("prior_mu", "prior_scale") if prior else ()))


def _bernoulli_case():
    def make(g):
        return {"logits": _normal(g, 2, 3, 7, scale=3.0), "x": (_uniform(g, 3, 7) < 0.5).to(torch.float64)}

    def run(t, backend, g):
        import fastelbo as fe

        return (fe.bernoulli_log_prob(t["logits"], t["x"], backend=backend),)

    return OpCase("bernoulli_log_prob", make, run, ("logits",))


def _continuous_bernoulli_case():
    def make(g):
        wide = _normal(g, 2, 3, 9, scale=3.0)
        near_zero = _normal(g, 2, 3, 9, scale=0.05)  # the normalizer's delicate region
        logits = torch.where(_uniform(g, 2, 3, 9) < 0.5, wide, near_zero)
        return {"logits": logits, "x": _uniform(g, 3, 9)}

    def run(t, backend, g):
        import fastelbo as fe

        return (fe.continuous_bernoulli_log_prob(t["logits"], t["x"], backend=backend),)

    return OpCase("continuous_bernoulli_log_prob", make, run, ("logits",))


def _gaussian_case():
    def make(g):
        return {"mean": _normal(g, 2, 3, 7), "x": _normal(g, 3, 7), "logvar": _uniform(g, 7, low=-1, high=1)}

    def run(t, backend, g):
        import fastelbo as fe

        return (fe.gaussian_log_prob(t["mean"], t["x"], logvar=t["logvar"], backend=backend),)

    return OpCase("gaussian_log_prob", make, run, ("mean", "logvar"))


def _categorical_case():
    def make(g):
        target = torch.randint(0, 6, (3, 4), generator=g, device=g.device)
        return {"logits": _normal(g, 2, 3, 4, 6, scale=2.0), "target": target}

    def run(t, backend, g):
        import fastelbo as fe

        return (fe.categorical_log_prob(t["logits"], t["target"], backend=backend),)

    return OpCase("categorical_log_prob", make, run, ("logits",))


def _dmol_levels(g, shape, bits):
    """Random levels of 2^bits rescaled to [-1, 1], about one in six at each edge level."""
    levels = 2 ** bits - 1
    k = torch.randint(0, levels + 1, shape, generator=g, device=g.device)
    pick = _uniform(g, *shape)
    k = torch.where(pick < 1 / 6, 0, torch.where(pick > 5 / 6, levels, k))
    return k.to(torch.float64) * (2.0 / levels) - 1.0


def _dmol_params(g, x, n_mix):
    """Channels-last parameters (*pixels, 10 M) for data x (*pixels, 3): logits N(0, 2), log-scales
    in [-3.5, 2], raw coefficients N(0, 3), and means placed so that each channel's centred value
    (x - m) / scale is N(0, 4) (coupling included): bins in the body and both tails of each
    logistic, a few tens of nats at most.

    Why not smaller scales here: in float32, u = x - m carries the rounding of m (about |m| 2^-24,
    more through the coupling's tanh), and the gradient with respect to a mean changes by e^-2s per
    unit of u: at s = -5 that moves a gradient near the mode by about 1e-3, ten times the table's
    float32 tolerance, for any float32 implementation (the float32 reference misses it too, e.g.
    at seed 18 of the broadcast case when scales went down to -5). The "centred" case covers small
    scales and the -7 clamp with u = 0 exactly; tests/test_dmol.py checks the far tails at the
    clamp in float64."""
    pixels = x.shape[:-1]
    logits = _normal(g, *pixels, n_mix, scale=2.0)
    scales = _uniform(g, *pixels, 3, n_mix, low=-3.5, high=2.0)
    coeffs = _normal(g, *pixels, 3, n_mix, scale=3.0)  # saturating tanh too
    t = torch.tanh(coeffs)
    x0, x1 = x[..., 0:1], x[..., 1:2]
    coupling = torch.stack([torch.zeros_like(t[..., 0, :]), t[..., 0, :] * x0, t[..., 1, :] * x0 + t[..., 2, :] * x1],
                           dim=-2)
    offset = _normal(g, *pixels, 3, n_mix, scale=4.0) * torch.exp(scales.clamp(min=-7.0))
    means = x.unsqueeze(-1) - offset - coupling
    blocks = [torch.stack([means[..., c, :], scales[..., c, :], coeffs[..., c, :]], dim=-2).flatten(-2)
              for c in range(3)]
    return torch.cat([logits] + blocks, dim=-1)


def _dmol_switch_params(g, x, n_mix, bits):
    """Parameters whose interior bins have masses between 1e-6 and 1e-4, around the 1e-5 where the
    formula switches to the density at the bin centre: coefficients 0 (m = mu), log-scales in
    [-3, 0], and each mean placed by bisection so that the bin's mass is a chosen value."""
    h = 1.0 / (2 ** bits - 1)
    shape = x.shape[:-1] + (3, n_mix)
    s = _uniform(g, *shape, low=-3.0, high=0.0)
    target = _uniform(g, *shape, low=math.log(1e-6), high=math.log(1e-4))
    inv = torch.exp(-s)
    lo, hi = torch.zeros_like(s), torch.full_like(s, 60.0) / inv

    def log_mass(u):
        return (torch.log(torch.sigmoid(inv * (u + h)) - torch.sigmoid(inv * (u - h))))

    for _ in range(80):  # the mass decreases in |u|
        mid = 0.5 * (lo + hi)
        above = log_mass(mid) > target
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    sign = torch.where(_uniform(g, *shape) < 0.5, -1.0, 1.0)
    means = x.unsqueeze(-1) - sign * lo
    blocks = [torch.stack([means[..., c, :], s[..., c, :], torch.zeros_like(s[..., c, :])], dim=-2).flatten(-2)
              for c in range(3)]
    return torch.cat([_normal(g, *x.shape[:-1], n_mix)] + blocks, dim=-1)


def _dmol_case(name, n_mix, bits, batch, pixels, channel_dim=-1, event_dims=2, x_batch=None, kind="random"):
    """The discretized logistic mixture on channels-last params (*batch, *pixels, 10 M) (moved to
    `channel_dim` for the call) and x (*x_batch, *pixels, 3), x_batch broadcasting to batch.
    kind: "random", "switch" (masses around 1e-5), "centred" (coefficients 0 and every mean at x:
    u = 0, log-scales at and below the clamp)."""
    def make(g):
        x = _dmol_levels(g, tuple(x_batch if x_batch is not None else batch) + tuple(pixels) + (3,), bits)
        full_x = x.expand(tuple(batch) + tuple(pixels) + (3,))
        if kind == "switch":
            params = _dmol_switch_params(g, full_x, n_mix, bits)
        else:
            params = _dmol_params(g, full_x, n_mix)
        if kind == "centred":
            rest = params[..., n_mix:].unflatten(-1, (3, 3, n_mix)).clone()
            rest[..., 0, :] = full_x.unsqueeze(-1)
            rest[..., 1, :] = torch.where(_uniform(g, *rest.shape[:-2], n_mix) < 0.5, -7.0, -7.5)
            rest[..., 2, :] = 0.0
            params = torch.cat([params[..., :n_mix], rest.flatten(-3)], dim=-1)
        return {"params": params.movedim(-1, channel_dim).contiguous(), "x": x.movedim(-1, channel_dim).contiguous()}

    def run(t, backend, g):
        import fastelbo as fe

        return (fe.discretized_logistic_mixture_log_prob(t["params"], t["x"], n_mix=n_mix, bits=bits,
                                                         channel_dim=channel_dim, event_dims=event_dims,
                                                         backend=backend),)

    return OpCase(name, make, run, ("params",))


def _linear_head_case(likelihood, reduction, chunk_size, bias=True, tensor_logvar=False):
    """A decoder's last linear layer and its likelihood: input (2, 3, 6) (two samples of three rows),
    weight (7, 6), x (3, 7) broadcast over the samples; chunk_size 3 makes blocks of 3, 3 and 1.
    input, weight and bias are random points of a grid (multiples of 1/4, 1/8, 1/4) on which the
    logits are exact in every dtype: the float64 truth then has the same logits as a half-precision
    run, and the comparison judges the fused likelihood and gradients, not the rounding of torch's
    half GEMM (common to the op and the reference, and larger than either's own error)."""
    name = f"linear_{likelihood}_log_prob[{reduction},chunk={chunk_size}" + (",no bias" if not bias else "") + \
        (",logvar" if tensor_logvar else "") + "]"

    def make(g):
        inputs = {"input": _grid(g, (2, 3, 6), 4, 4), "weight": _grid(g, (7, 6), 4, 8)}
        if bias:
            inputs["bias"] = _grid(g, (7,), 4, 4)
        if likelihood == "bernoulli":
            inputs["x"] = (_uniform(g, 3, 7) < 0.5).to(torch.float64)
        else:
            inputs["x"] = _normal(g, 3, 7)
        if tensor_logvar:
            inputs["logvar"] = _uniform(g, 7, low=-1, high=1)
        return inputs

    def run(t, backend, g):
        import fastelbo as fe

        options = dict(reduction=reduction, chunk_size=chunk_size, backend=backend)
        if likelihood == "bernoulli":
            fn = fe.linear_bernoulli_log_prob
        else:
            fn = fe.linear_gaussian_log_prob
            options["logvar"] = t["logvar"] if tensor_logvar else -0.4
        return (fn(t["input"], t["weight"], t.get("bias"), t["x"], **options),)

    grads = ("input", "weight") + (("bias",) if bias else ()) + (("logvar",) if tensor_logvar else ())
    return OpCase(name, make, run, grads)


def _decoder_inputs(g, batch=3, dim=5, dx=7):
    inputs = _posterior(g, batch=(batch,), dim=dim)
    inputs["weight"] = _normal(g, dim, dx, scale=0.5)
    inputs["x"] = (_uniform(g, batch, dx) < 0.5).to(torch.float64)
    return inputs


def _elbo_case(name, kl, estimator, n_samples, beta=1.0):
    def run(t, backend, g):
        import fastelbo as fe

        with use_backend(backend):
            latent = fe.gaussian_latent(t["mu"], t["scale"], n_samples=n_samples, generator=g)
            log_lik = fe.bernoulli_log_prob(latent.z @ t["weight"], t["x"])
            return (fe.elbo(log_lik, latent, kl=kl, estimator=estimator, beta=beta),)

    return OpCase(name, _decoder_inputs, run, ("mu", "scale", "weight"))


def _module_case(name, likelihood="bernoulli", **options):
    def run(t, backend, g):
        import fastelbo as fe

        loss = fe.ELBO(likelihood, backend=backend, **options)
        with _default_generator(g):
            out = loss(t["x"], t["mu"], t["scale"], lambda z: z @ t["weight"])
        return (out.loss, out.elbo, out.log_lik, out.kl)

    return OpCase(name, _decoder_inputs, run, ("mu", "scale", "weight"))


def _vae_loss_case():
    def make(g):
        inputs = _posterior(g, batch=(4,), dim=3)
        inputs["recon_logits"] = _normal(g, 4, 6, scale=2.0)
        inputs["x"] = _uniform(g, 4, 6)
        return inputs

    def run(t, backend, g):
        import fastelbo as fe

        with use_backend(backend):
            return (fe.vae_loss(t["recon_logits"], t["x"], t["mu"], t["scale"], beta=0.7),)

    return OpCase("vae_loss", make, run, ("recon_logits", "mu", "scale"))


def _reparameterize_case():
    def run(t, backend, g):
        import fastelbo as fe

        with use_backend(backend), _default_generator(g):
            return (fe.reparameterize(t["mu"], t["scale"]),)

    return OpCase("reparameterize", lambda g: _posterior(g), run, ("mu", "scale"))


@contextlib.contextmanager
def _default_generator(g: torch.Generator):
    """Run a block that draws from the device's default generator as if it drew from g."""
    if g.device.type == "cpu":
        get_state, set_state = torch.get_rng_state, torch.set_rng_state
    else:
        get_state = lambda: torch.cuda.get_rng_state(g.device)  # noqa: E731
        set_state = lambda state: torch.cuda.set_rng_state(state, g.device)  # noqa: E731
    saved = get_state()
    set_state(g.get_state())
    try:
        yield
    finally:
        g.set_state(get_state())
        set_state(saved)


CASES: tuple[OpCase, ...] = (
    _latent_case("gaussian_latent[logvar]"),
    _latent_case("gaussian_latent[log_std,prior,K=3]", param="log_std", n_samples=3, prior=True),
    _latent_case("gaussian_latent[softplus,stl,K=2]", param="softplus", n_samples=2, stl=True),
    _latent_case("gaussian_latent[eps,prior,stl]", prior=True, stl=True, explicit_eps=True),
    _event_dims_latent_case("gaussian_latent[dim=(1,2,3),prior,K=2]", (1, 2, 3), prior="full", n_samples=2),
    _event_dims_latent_case("gaussian_latent[dim=1,channel prior,channels_last]", 1, prior="channel",
                            channels_last=True),
    _event_dims_latent_case("gaussian_latent[dim=(1,2,3),channels_last]", (1, 2, 3), channels_last=True),
    _event_dims_latent_case("gaussian_latent[dim=(1,2,3),channel prior,K=2,default generator]", (1, 2, 3),
                            prior="channel", n_samples=2, default_generator=True),
    _event_dims_latent_case("gaussian_latent[dim=(2,3),full prior,default generator]", (2, 3), prior="full",
                            default_generator=True),
    _event_dims_latent_case("gaussian_latent[dim=(1,2,3),full prior,K=2,channels_last,default generator]",
                            (1, 2, 3), prior="full", n_samples=2, channels_last=True, default_generator=True),
    _event_dims_latent_case("gaussian_latent[dim=(1,2,3),channel prior,channels_last]", (1, 2, 3), prior="channel",
                            channels_last=True),
    _kl_case("gaussian_kl[logvar]", "logvar", prior=False, per_dim=False),
    _event_dims_kl_case("gaussian_kl[dim=(2,3),channel prior,per_dim]", (2, 3), "channel", per_dim=True),
    _event_dims_kl_case("gaussian_kl[dim=(1,2,3),full prior]", (1, 2, 3), "full", per_dim=False),
    _event_dims_kl_case("gaussian_kl[dim=(1,2,3),full prior,per_dim,channels_last]", (1, 2, 3), "full",
                        per_dim=True, channels_last=True),
    _kl_case("gaussian_kl[softplus,prior,per_dim]", "softplus", prior=True, per_dim=True),
    _kl_case("gaussian_kl[log_std,per_dim]", "log_std", prior=False, per_dim=True),
    # NVAE's sigma map, 5 tanh(s/5), saturating below (scales from -15 to 2; large sigmas would make
    # the float32 KL ill-conditioned).
    _latent_case("gaussian_latent[soft_log_std,prior,stl]", param="soft_log_std", prior=True, stl=True,
                 scale_range=(-15.0, 2.0)),
    _latent_case("gaussian_latent[log_std,sample prior,D=1030]", param="log_std", prior="full", dim=1030),
    _latent_case("gaussian_latent[softplus,sample prior,eps,stl,D=517]", param="softplus", prior="full",
                 explicit_eps=True, stl=True, dim=517),
    _kl_case("gaussian_kl[soft_log_std,per_dim]", "soft_log_std", prior=False, per_dim=True,
             scale_range=(-15.0, 2.0)),
    # A per-sample prior on short rows (the C++ kernels' flat path with a prior).
    _latent_case("gaussian_latent[softplus,sample prior,K=3,stl]", param="softplus", prior="full", n_samples=3,
                 stl=True),
    _kl_case("gaussian_kl[soft_log_std,sample prior]", "soft_log_std", prior="full", per_dim=False),
    _latent_case("gaussian_latent[logvar,sample prior,eps]", prior="full", explicit_eps=True),
    _bernoulli_case(),
    _gaussian_case(),
    _continuous_bernoulli_case(),
    _categorical_case(),
    _dmol_case("dmol[M=3,8 bits]", 3, 8, (2,), (3, 4)),
    _dmol_case("dmol[M=1,5 bits,NCHW]", 1, 5, (2,), (3, 4), channel_dim=1),
    _dmol_case("dmol[M=2,broadcast x,event_dims=1]", 2, 8, (2, 2), (2, 3), event_dims=1, x_batch=(2,)),
    _dmol_case("dmol[M=10,switch]", 10, 8, (2,), (2, 3), kind="switch"),
    _dmol_case("dmol[M=2,5 bits,centred,clamp]", 2, 5, (2,), (2, 3), kind="centred"),
    _linear_head_case("bernoulli", "none", 3),
    _linear_head_case("bernoulli", "mean", None, bias=False),
    _linear_head_case("gaussian", "sum", 3, tensor_logvar=True),
    _linear_head_case("gaussian", "none", 2),
    _elbo_case("elbo[mc,beta=0.5,K=2]", "mc", "elbo", 2, beta=0.5),
    _elbo_case("elbo[analytic]", "analytic", "elbo", None),
    _elbo_case("elbo[iwae,K=4]", "mc", "iwae", 4),
    _elbo_case("elbo[dreg,K=4]", "mc", "dreg", 4),
    _event_dims_elbo_case("elbo[dreg,K=3,dim=(1,2,3)]", "dreg", 3),
    _event_dims_elbo_case("elbo[dreg,K=2,dim=(1,2,3),channel prior,default generator]", "dreg", 2, prior="channel",
                          default_generator=True),
    _module_case("ELBO[analytic,free_bits]", free_bits=0.3),
    _module_case("ELBO[analytic,mean]"),  # the loss-level fusion: buffers scaled by the loss's gradient
    _module_case("ELBO[continuous_bernoulli,mc,K=3,sum]", "continuous_bernoulli", n_samples=3, kl="mc",
                 reduction="sum"),
    _module_case("ELBO[gaussian,mc,K=2]", "gaussian", n_samples=2, kl="mc"),
    _module_case("ELBO[iwae,K=3,sum]", n_samples=3, kl="mc", estimator="iwae", reduction="sum"),
    _vae_loss_case(),
    _reparameterize_case(),
)


@dataclass
class CaseResult:
    case: str
    backend: str
    dtype: torch.dtype
    fwd_error: float
    bwd_error: float
    passed: bool
    detail: str = ""


def _evaluate(case: OpCase, inputs64: dict, backend: str, dtype: torch.dtype, seed: int, cotangent_seed: int):
    """Outputs and gradients of `case` on `backend` with the float inputs cast to `dtype`."""
    leaves = {}
    for name, value in inputs64.items():
        value = value.to(dtype) if value.is_floating_point() else value
        if name in case.grads:
            value = value.detach().requires_grad_(True)
        leaves[name] = value
    device = next(iter(inputs64.values())).device
    outputs = case.run(leaves, backend, torch.Generator(device).manual_seed(seed))
    g = torch.Generator(device).manual_seed(cotangent_seed)
    cotangents = [torch.randn(o.shape, generator=g, dtype=torch.float64, device=device).to(o.dtype) for o in outputs]
    pairs = [(o, c) for o, c in zip(outputs, cotangents) if o.requires_grad]
    wrt = [leaves[n] for n in case.grads]
    grads = torch.autograd.grad([o for o, _ in pairs], wrt, [c for _, c in pairs], allow_unused=True)
    grads = [torch.zeros_like(w) if gr is None else gr for w, gr in zip(wrt, grads)]
    return [o.detach() for o in outputs], grads


def _round_trip(inputs64: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype).to(torch.float64) if v.is_floating_point() else v for k, v in inputs64.items()}


def compare(case: OpCase, backend: str, dtype: torch.dtype, device="cpu", seed: int | None = None) -> CaseResult:
    """Run `case` on `backend` in `dtype` and judge it against the float64 reference."""
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    g = torch.Generator(device).manual_seed(seed)
    inputs64 = _round_trip(case.make(g), dtype)
    run_seed, cot_seed = seed + 1, seed + 2
    truth_out, truth_grads = _evaluate(case, inputs64, "reference", torch.float64, run_seed, cot_seed)
    out, grads = _evaluate(case, inputs64, backend, dtype, run_seed, cot_seed)
    half_rule = dtype in (torch.float16, torch.bfloat16) and backend != "reference"
    if half_rule:
        ref_out, ref_grads = _evaluate(case, inputs64, "reference", dtype, run_seed, cot_seed)
    errors, ratios = {"fwd": 0.0, "bwd": 0.0}, {"fwd": 0.0, "bwd": 0.0}
    for phase, actual, truth, ref in (("fwd", out, truth_out, ref_out if half_rule else None),
                                      ("bwd", grads, truth_grads, ref_grads if half_rule else None)):
        for i, (a, t) in enumerate(zip(actual, truth)):
            t64 = t.to(torch.float64)
            if half_rule:
                ref_err = (ref[i].to(torch.float64) - t64).abs().nan_to_num(0.0).max() if t.numel() else 0.0
                allowed = HALF_FACTOR * float(ref_err) + HALF_FLOOR[phase]
                if a.dtype == torch.float32:  # an output in float32 for half inputs
                    tol = TOLERANCES[torch.float32][phase]
                    allowed = torch.clamp(tol.atol + tol.rtol * t64.abs(), min=allowed)
            else:
                tol = TOLERANCES[dtype][phase]
                allowed = tol.atol + tol.rtol * t64.abs()
            err, ratio = _violation(a, t64, allowed)
            errors[phase] = max(errors[phase], err)
            ratios[phase] = max(ratios[phase], ratio)
    passed = ratios["fwd"] <= 1.0 and ratios["bwd"] <= 1.0
    detail = "" if passed else f"seed={seed}: error/allowed fwd {ratios['fwd']:.3g}, bwd {ratios['bwd']:.3g}"
    return CaseResult(case.name, backend, dtype, errors["fwd"], errors["bwd"], passed, detail)
