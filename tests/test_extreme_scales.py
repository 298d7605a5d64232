"""The posterior's scale swept over its whole float range, on every backend, against float64.

The latent and the KL are evaluated at every scale value on a fine grid (logvar from -120 to 90
in steps of 0.05; log_std and softplus over the ranges where 2 log sigma spans the same values),
in float32 and float64, against the reference in float64 on the same rounded inputs. The truth is
rounded to the tested dtype first, so that a float64 value beyond float32's range must come out
as the same infinity. Values and gradients are held to the tolerance table, with one allowance at
the top of the range: where sigma^2 (sigma eps)^2 comes within a factor 4 of the dtype's largest
number (float32: 2 log sigma above about 87.3), a value or gradient may be an infinity of the
truth's sign even where the truth still fits: every backend, the reference included, forms
e^(2r) or z sigma eps first and scales it by 1/2 (or a cotangent) after. Cotangents are drawn in
[-1, 1] so that they do not move that edge.

These grids found Kahan's expm1 breaking down in the Triton kernels where e^x is subnormal
(logvar -100 to -104: a 6e-3 relative error in the KL's gradient).
"""
import math

import pytest
import torch

import fastelbo as fe
from fastelbo.testing import TOLERANCES
from helpers import BACKENDS, DEVICE, generator

# Sweep per parametrization: (low, high) of the scale output s, step 0.05.
SWEEPS = {"logvar": (-120.0, 90.0), "log_std": (-60.0, 45.0), "softplus": (-120.0, 90.0),
          "soft_log_std": (-120.0, 90.0)}  # (log sigma = 5 tanh(s/5): saturated at both ends)
STEP = 0.05


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def _grid(param, dtype):
    low, high = SWEEPS[param]
    n = int(round((high - low) / STEP)) + 1
    return torch.linspace(low, high, n, dtype=torch.float64, device=DEVICE).to(dtype).view(-1, 1)


def _near_overflow(param, s, eps, dtype):
    """Where sigma^2 max(1, eps^2) is within a factor 4 of the dtype's largest number."""
    s = s.double()
    log_sigma = {"logvar": 0.5 * s, "log_std": s, "softplus": torch.log(torch.nn.functional.softplus(s)),
                 "soft_log_std": 5.0 * torch.tanh(s / 5.0)}[param]
    log_size = 2.0 * log_sigma + 2.0 * torch.log(eps.double().abs().clamp(min=1.0))
    return log_size > math.log(torch.finfo(dtype).max / 4)


def _close(actual, truth, dtype, phase, what, may_overflow):
    truth = truth.detach().to(dtype).to(torch.float64)  # overflow to the dtype's infinity
    actual = actual.detach().to(torch.float64)
    may_overflow = may_overflow.expand(truth.shape) if truth.dim() else may_overflow.any()
    allowed_inf = may_overflow & actual.isinf() & (actual.sign() == truth.sign())
    actual = torch.where(allowed_inf, truth, actual)
    tol = TOLERANCES[dtype][phase]
    torch.testing.assert_close(actual, truth, atol=tol.atol, rtol=tol.rtol, equal_nan=False, msg=lambda m: f"{what}: {m}")


def _values_and_grads(fn, leaves, backend, cotangents):
    """fn's outputs, and for each output alone the gradients to the leaves (cotangent given)."""
    leaves = [t.detach().requires_grad_(True) for t in leaves]
    outputs = fn(backend, *leaves)
    grads = []
    for out, cot in zip(outputs, cotangents):
        grads.append(torch.autograd.grad(out, leaves, cot.to(out.dtype), retain_graph=True, allow_unused=True))
    return outputs, grads


def _compare(fn, leaves, backend, dtype, seed, names, may_overflow):
    g = generator(seed)
    reference_out = fn("reference", *(t.double() for t in leaves))
    cotangents = [torch.rand(o.shape, generator=g, dtype=torch.float64, device=DEVICE) * 2 - 1 for o in reference_out]
    truth, truth_grads = _values_and_grads(fn, [t.double() for t in leaves], "reference", cotangents)
    out, grads = _values_and_grads(fn, leaves, backend, cotangents)
    for name, a, t in zip(names, out, truth):
        _close(a, t, dtype, "fwd", f"{backend} {dtype} {name}", may_overflow.view(-1)[: t.numel()].view(t.shape))
    for name, a_grads, t_grads in zip(names, grads, truth_grads):
        for leaf, a, t in zip(("mu", "scale"), a_grads, t_grads):
            if t is not None:
                _close(a, t, dtype, "bwd", f"{backend} {dtype} d {name} / d {leaf}", may_overflow)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("param", list(SWEEPS))
def test_kl_over_the_whole_scale_range(backend, param, dtype, seed):
    s = _grid(param, dtype)
    mu = torch.randn(s.shape, generator=generator(seed), dtype=torch.float64, device=DEVICE).to(dtype)

    def kl(backend, mu, s):
        return (fe.gaussian_kl(mu, s, param=param, backend=backend),)

    _compare(kl, [mu, s], backend, dtype, seed, ["kl"], _near_overflow(param, s, torch.ones_like(s), dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("param", list(SWEEPS))
def test_latent_over_the_whole_scale_range(backend, param, dtype, seed):
    s = _grid(param, dtype)
    g = generator(seed)
    mu = torch.randn(s.shape, generator=g, dtype=torch.float64, device=DEVICE).to(dtype)
    eps = torch.randn(s.shape, generator=g, dtype=torch.float64, device=DEVICE).to(dtype)

    def latent(backend, mu, s):
        return tuple(fe.gaussian_latent(mu, s, param=param, eps=eps.to(mu.dtype), backend=backend))

    _compare(latent, [mu, s], backend, dtype, seed, ["z", "log_q", "log_p", "kl"],
             _near_overflow(param, s, eps, dtype))


def test_the_reported_subnormal_kl(backend):
    """The issue's reproducer: triton gave 51.44699 and gradient -0.503007 (float64: 51.45, -0.5)."""
    scale = torch.full((1, 1), -103.9, device=DEVICE, requires_grad=True)
    kl = fe.gaussian_kl(torch.zeros(1, 1, device=DEVICE), scale, backend=backend)
    kl.sum().backward()
    assert kl.item() == pytest.approx(51.45, rel=1e-6)
    assert scale.grad.item() == pytest.approx(-0.5, rel=1e-6)


@pytest.mark.parametrize("n_samples, stl", [(None, False), (3, False), (3, True)], ids=["K1", "K3", "K3_stl"])
@pytest.mark.parametrize("with_prior", [False, True], ids=["standard_prior", "per_sample_prior"])
@pytest.mark.parametrize("param", list(SWEEPS))
def test_an_infinite_scale_passes_the_gradient_through_z(backend, param, with_prior, n_samples, stl):
    """scale = +inf in one element (sigma = inf, z = +-inf): the gradient through z and log p reaches
    that scale as the reference's autograd gives it. softplus' d log sigma/ds is 0 there, so a
    backward that formed dL/dlog sigma first and multiplied by it gave NaN where autograd gives
    -inf (found by tests/test_hostile_inputs.py); the other elements stay finite and close. K = 3
    and stl take the CPU kernels' other row paths (and stl's d log q / dz)."""
    g = generator(3)
    mu = torch.randn(2, 5, generator=g, dtype=torch.float64, device=DEVICE)
    s = torch.randn(2, 5, generator=g, dtype=torch.float64, device=DEVICE)
    s[1, 2] = math.inf
    eps = torch.randn((n_samples, 2, 5) if n_samples else (2, 5), generator=g, dtype=torch.float64, device=DEVICE)
    prior = tuple(torch.randn(2, 5, generator=g, dtype=torch.float64, device=DEVICE) for _ in "ms") if with_prior else None
    grads = {}
    for who in ("reference", backend):
        leaves = [mu.clone().requires_grad_(True), s.clone().requires_grad_(True)]
        z, log_q, log_p, _ = fe.gaussian_latent(*leaves, param=param, eps=eps, prior=prior, n_samples=n_samples,
                                                  stl=stl, backend=who)
        loss = (0.3 * z).sum() + (log_p - log_q).sum()  # the Monte Carlo ELBO's latent terms
        grads[who] = torch.autograd.grad(loss, leaves)
    for truth, actual, leaf in zip(grads["reference"], grads[backend], ("mu", "scale")):
        torch.testing.assert_close(actual, truth, equal_nan=True, msg=lambda m: f"{backend} d/d{leaf}: {m}")
    if param == "softplus":
        assert grads["reference"][1][1, 2] == -math.inf  # what the case is about: not NaN
