"""float64 gradcheck of every op, on every available backend (each module-level test runs once per
backend, inside use_backend).

STL and DReG are left out on purpose: their gradients are not the derivatives of their values
(tests/test_estimators.py checks them against two-pass surrogates instead).
"""
import pytest
import torch
from torch.autograd import gradcheck

import fastelbo as fe
from helpers import BACKENDS, PARAMS, generator, rand, randn


@pytest.fixture(params=BACKENDS, autouse=True)
def backend(request):
    with fe.use_backend(request.param):
        yield request.param


def _leaf(t):
    return t.detach().requires_grad_(True)


@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("with_prior", [False, True])
@pytest.mark.parametrize("n_samples", [None, 3])
def test_latent(param, with_prior, n_samples, seed):
    g = generator(seed)
    mu, s = _leaf(randn(g, 2, 4)), _leaf(rand(g, 2, 4, low=-1, high=1))
    eps = randn(g, *((n_samples,) if n_samples else ()), 2, 4)
    inputs = [mu, s]
    if with_prior:
        inputs += [_leaf(randn(g, 4)), _leaf(rand(g, 2, 4, low=-1, high=1))]

    def f(mu, s, *prior):
        lat = fe.gaussian_latent(mu, s, param=param, n_samples=n_samples, prior=prior or None, eps=eps)
        return tuple(lat)

    assert gradcheck(f, inputs)


@pytest.mark.parametrize("param", PARAMS)
def test_kl(param, seed):
    g = generator(seed)
    mu, s = _leaf(randn(g, 3, 4)), _leaf(rand(g, 3, 4, low=-1, high=1))
    pm, ps = _leaf(randn(g, 4)), _leaf(rand(g, 4, low=-1, high=1))
    assert gradcheck(lambda *a: fe.gaussian_kl(a[0], a[1], param=param, prior=(a[2], a[3]), per_dim=True), [mu, s, pm, ps])
    assert gradcheck(lambda a, b: fe.gaussian_kl(a, b, param=param), [mu, s])


def test_likelihoods(seed):
    g = generator(seed)
    logits = _leaf(randn(g, 2, 3, 5, scale=2.0))
    x = rand(g, 3, 5)
    assert gradcheck(lambda l: fe.bernoulli_log_prob(l, x), [logits])
    # Near zero the continuous Bernoulli switches to its series: probe both sides.
    cb_logits = _leaf(torch.tensor([[-0.6, -0.3, 0.0, 1e-3, 0.45], [0.55, 2.0, -4.0, 0.2, -0.49]], dtype=torch.float64))
    assert gradcheck(lambda l: fe.continuous_bernoulli_log_prob(l, x[0]), [cb_logits])
    mean, logvar = _leaf(randn(g, 2, 3, 5)), _leaf(rand(g, 5, low=-1, high=1))
    xg = randn(g, 3, 5)
    assert gradcheck(lambda m, v: fe.gaussian_log_prob(m, xg, logvar=v), [mean, logvar])
    assert gradcheck(lambda m, xx: fe.gaussian_log_prob(m, xx, logvar=0.3), [mean, _leaf(xg)])
    cat = _leaf(randn(g, 2, 3, 4))
    target = torch.randint(0, 4, (3,), generator=g)
    assert gradcheck(lambda l: fe.categorical_log_prob(l, target), [cat])


@pytest.mark.parametrize("kl,estimator,beta", [("mc", "elbo", 0.5), ("analytic", "elbo", 2.0), ("mc", "iwae", 1.0)])
def test_elbo(kl, estimator, beta, seed):
    g = generator(seed)
    mu, s = _leaf(randn(g, 3, 2)), _leaf(rand(g, 3, 2, low=-1, high=1))
    w = _leaf(randn(g, 2, 5))
    x = (rand(g, 3, 5) < 0.5).double()
    eps = randn(g, 4, 3, 2)

    def f(mu, s, w):
        lat = fe.gaussian_latent(mu, s, n_samples=4, eps=eps)
        return fe.elbo(fe.bernoulli_log_prob(lat.z @ w, x), lat, kl=kl, estimator=estimator, beta=beta)

    assert gradcheck(f, [mu, s, w])


def test_elbo_module_and_classic(seed):
    g = generator(seed)
    mu, s = _leaf(randn(g, 3, 2)), _leaf(rand(g, 3, 2, low=-1, high=1))
    w = _leaf(randn(g, 2, 5))
    x = (rand(g, 3, 5) < 0.5).double()
    state = torch.get_rng_state()

    def module_loss(mu, s, w):
        torch.set_rng_state(state)  # the same eps at every evaluation
        return fe.ELBO(free_bits=0.05, reduction="sum")(x, mu, s, lambda z: z @ w).loss

    assert gradcheck(module_loss, [mu, s, w])
    assert gradcheck(lambda r, m, v: fe.vae_loss(r, x, m, v), [_leaf(randn(g, 3, 5)), mu, s])
