"""The reference's densities and KL against torch.distributions and high-precision math."""
import math

import mpmath
import pytest
import torch
import torch.distributions as D
import torch.nn.functional as F

import fastelbo as fe
import fastelbo.reference as ref
from fastelbo.ops import _math
from helpers import PARAMS, generator, rand, randn


def sigma_of(s, param):
    return {"logvar": torch.exp(0.5 * s), "log_std": torch.exp(s), "softplus": F.softplus(s),
            "soft_log_std": torch.exp(5 * torch.tanh(s / 5))}[param]


@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("with_prior", [False, True])
def test_latent_densities_and_kl(param, with_prior, seed):
    g = generator(seed, "cpu")
    mu, s = randn(g, 4, 3, 6), rand(g, 4, 3, 6, low=-2, high=1.5)
    prior = (randn(g, 3, 6), rand(g, 6, low=-1, high=1)) if with_prior else None
    lat = ref.gaussian_latent(mu, s, param=param, n_samples=5, prior=prior, generator=g)
    q = D.Normal(mu, sigma_of(s, param))
    p = D.Normal(prior[0], sigma_of(prior[1], param)) if with_prior else D.Normal(0.0, 1.0)
    torch.testing.assert_close(lat.log_q, q.log_prob(lat.z).sum(-1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lat.log_p, p.log_prob(lat.z).sum(-1), rtol=1e-10, atol=1e-10)
    kl = D.kl_divergence(q, D.Normal(*torch.broadcast_tensors(p.loc, p.scale, mu)[:2])).sum(-1)
    torch.testing.assert_close(lat.kl, kl, rtol=1e-10, atol=1e-10)
    per_dim = ref.gaussian_kl(mu, s, param=param, prior=prior, per_dim=True)
    torch.testing.assert_close(per_dim.sum(-1), kl, rtol=1e-10, atol=1e-10)


def test_kl_accurate_when_sigma_equals_prior_sigma():
    """KL of q to a prior with the same sigma and mu close by: exactly (mu - mu_p)^2 / (2 sigma^2)."""
    s = torch.tensor([0.3, -2.0, 1e-9, 5.0], dtype=torch.float32)
    mu = torch.tensor([1e-4, -3e-3, 0.0, 2e-2], dtype=torch.float32)
    prior_mu = torch.zeros(4)
    kl = fe.gaussian_kl(mu, s, prior=(prior_mu, s), per_dim=True)
    exact = mu.double() ** 2 / (2 * torch.exp(s.double()))
    torch.testing.assert_close(kl.double(), exact, rtol=1e-6, atol=0)
    # And tiny sigma ratios: KL = (e^{2r} - 1 - 2r)/2 ~ r^2 for r = 1e-4.
    kl_small = fe.gaussian_kl(torch.zeros(1), torch.tensor([2e-4]), per_dim=True)
    r = mpmath.mpf(1e-4)
    exact_small = float((mpmath.exp(2 * r) - 1 - 2 * r) / 2)
    assert abs(kl_small.item() - exact_small) <= 1e-6 * exact_small


def test_bernoulli_matches_torch(seed):
    g = generator(seed, "cpu")
    logits = randn(g, 2, 5, 9, scale=4.0)
    x = (rand(g, 5, 9) < 0.4).double()
    want = D.Bernoulli(logits=logits).log_prob(x.expand(2, 5, 9)).sum(-1)
    torch.testing.assert_close(ref.bernoulli_log_prob(logits, x), want, rtol=1e-12, atol=1e-12)
    for dtype in (torch.bool, torch.uint8):
        torch.testing.assert_close(ref.bernoulli_log_prob(logits, x.to(dtype)), want, rtol=1e-12, atol=1e-12)
    want2 = D.Bernoulli(logits=logits).log_prob(x.expand(2, 5, 9)).sum((-1, -2))
    torch.testing.assert_close(ref.bernoulli_log_prob(logits, x, event_dims=2), want2, rtol=1e-12, atol=1e-12)


def test_bernoulli_extreme_logits():
    logits = torch.tensor([-1e4, 1e4, -1e4, 1e4, 0.0, 30.0, -30.0])
    x = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    out = ref.bernoulli_log_prob(logits, x, event_dims=0)
    want = torch.tensor([0.0, 0.0, -1e4, -1e4, -math.log(2), -math.exp(-30.0), -math.exp(-30.0)])
    torch.testing.assert_close(out, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("learned", [False, True])
def test_gaussian_matches_torch(learned, seed):
    g = generator(seed, "cpu")
    mean, x = randn(g, 3, 4, 7), randn(g, 4, 7)
    logvar = rand(g, 7, low=-3, high=3) if learned else -0.7
    v = logvar if learned else torch.tensor(logvar, dtype=torch.float64)
    want = D.Normal(mean, torch.exp(0.5 * v)).log_prob(x).sum(-1)
    torch.testing.assert_close(ref.gaussian_log_prob(mean, x, logvar=logvar), want, rtol=1e-12, atol=1e-12)
    unit = D.Normal(mean, 1.0).log_prob(x).sum(-1)
    torch.testing.assert_close(ref.gaussian_log_prob(mean, x), unit, rtol=1e-12, atol=1e-12)


def test_continuous_bernoulli_matches_torch(seed):
    g = generator(seed, "cpu")
    logits = randn(g, 2, 3, 8, scale=3.0)
    logits = torch.where(logits.abs() < 0.1, logits + 0.3, logits)  # torch's own Taylor window is coarser
    x = rand(g, 3, 8)
    want = D.ContinuousBernoulli(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(ref.continuous_bernoulli_log_prob(logits, x), want, rtol=1e-9, atol=1e-9)


def _mp_log_norm(l):
    l = mpmath.mpf(l)
    return mpmath.log(2) if l == 0 else mpmath.log(l / mpmath.tanh(l / 2))


def _mp_log_norm_grad(l):
    l = mpmath.mpf(l)
    return mpmath.diff(_mp_log_norm, l) if l != 0 else mpmath.mpf(0)


# The derivative 1/l - 1/sinh(l) of the direct branch cancels about 25-fold at |l| = 1/2, so its
# error is bounded absolutely: a few ulps of the O(1) gradient x - sigmoid(l) it is added to.
@pytest.mark.parametrize("dtype,rtol,grad_atol", [(torch.float64, 1e-14, 1e-14), (torch.float32, 2e-6, 1e-6)])
def test_continuous_bernoulli_normalizer_to_high_precision(dtype, rtol, grad_atol):
    """log C(l) and its derivative across the series/direct switch at |l| = 1/2 and at l = 0."""
    mpmath.mp.dps = 40
    points = [0.0, 1e-30, 1e-8, -1e-4, 1e-2, -0.1, 0.3, 0.4999, -0.5, 0.5001, 0.7, -1.0, 3.0, -20.0, 80.0, 1e4]
    l = torch.tensor(points, dtype=dtype, requires_grad=True)
    value = _math.cb_log_normalizer(l)
    (grad,) = torch.autograd.grad(value.sum(), l)
    value = value.detach()
    for i, p in enumerate(points):
        pv = float(l[i].detach())  # the point as the dtype holds it
        want = float(_mp_log_norm(pv))
        want_grad = float(_mp_log_norm_grad(pv))
        assert abs(float(value[i]) - want) <= rtol * abs(want), (p, float(value[i]), want)
        assert abs(float(grad[i]) - want_grad) <= grad_atol, (p, float(grad[i]), want_grad)


def test_expm1_minus_x_to_high_precision():
    mpmath.mp.dps = 40
    points = [1e-8, -1e-5, 0.05, -0.0999, 0.1, 0.2, -3.0, 20.0]
    x = torch.tensor(points, dtype=torch.float64)
    got = _math.expm1_minus_x(x)
    for i, p in enumerate(points):
        want = mpmath.expm1(mpmath.mpf(p)) - mpmath.mpf(p)
        assert abs(float(got[i]) - float(want)) <= 1e-14 * abs(float(want)), p


def test_log_softplus_tail():
    s = torch.tensor([-100.0, -30.0, -20.0, -19.99, 0.0, 25.0], dtype=torch.float64)
    got = _math.log_softplus(s)
    for i in range(len(s)):
        want = mpmath.log(mpmath.log1p(mpmath.exp(mpmath.mpf(float(s[i])))))
        assert abs(float(got[i]) - float(want)) <= 1e-14 * abs(float(want))


def test_categorical_matches_torch(seed):
    g = generator(seed, "cpu")
    logits = randn(g, 2, 3, 4, 6, scale=3.0)
    target = torch.randint(0, 6, (3, 4), generator=g)
    want = D.Categorical(logits=logits).log_prob(target.expand(2, 3, 4)).sum(-1)
    torch.testing.assert_close(ref.categorical_log_prob(logits, target), want, rtol=1e-12, atol=1e-12)
    for dtype in (torch.uint8, torch.int32):
        torch.testing.assert_close(ref.categorical_log_prob(logits, target.to(dtype)), want, rtol=1e-12, atol=1e-12)
    want0 = D.Categorical(logits=logits).log_prob(target.expand(2, 3, 4))
    torch.testing.assert_close(ref.categorical_log_prob(logits, target, event_dims=0), want0)
