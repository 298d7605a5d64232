"""Estimators against independent computations written here: IWAE by direct log-mean-exp,
STL and DReG by two-pass surrogates, free bits by hand."""
import math

import pytest
import torch

import fastelbo as fe
from fastelbo.testing import TOLERANCES
from helpers import BACKENDS, DEVICE, generator, rand, randn


class TinyVAE(torch.nn.Module):
    """Linear encoder and decoder; float64 so the surrogates compare tightly."""

    def __init__(self, g, dx=6, d=3):
        super().__init__()
        self.enc = torch.nn.Parameter(randn(g, dx, 2 * d, scale=0.5))
        self.dec = torch.nn.Parameter(randn(g, d, dx, scale=0.5))
        self.prior_mu = torch.nn.Parameter(randn(g, d, scale=0.3))
        self.prior_logvar = torch.nn.Parameter(rand(g, d, low=-0.5, high=0.5))
        self.d = d

    def encode(self, x):
        h = x @ self.enc
        return h[..., : self.d], h[..., self.d :]


def _setup(seed, batch=4, k=5):
    g = generator(seed, "cpu")
    model = TinyVAE(g)
    x = (rand(g, batch, 6) < 0.5).double()
    eps = randn(g, k, batch, model.d)
    return model, x, eps


def test_iwae_is_log_mean_exp(seed):
    model, x, eps = _setup(seed)
    mu, lv = model.encode(x)
    lat = fe.gaussian_latent(mu, lv, n_samples=eps.shape[0], eps=eps)
    ll = fe.bernoulli_log_prob(lat.z @ model.dec, x)
    log_w = (ll + lat.log_p - lat.log_q).detach()
    direct = torch.log(torch.exp(log_w).mean(0))
    torch.testing.assert_close(fe.elbo(ll, lat, estimator="iwae"), direct, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fe.elbo(ll, lat, estimator="dreg"), direct, rtol=1e-12, atol=1e-12)


def test_iwae_stable_for_very_negative_log_weights():
    z = torch.zeros(3, 2, 1)
    lat = fe.Latent(z, torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(2))
    log_lik = torch.tensor([[-1e6, -1e6 - 1.0], [-1e6 + 0.5, -1e6], [-1e6 - 2.0, -1e6]])
    out = fe.elbo(log_lik, lat, estimator="iwae")
    shifted = log_lik.double() + 1e6
    want = torch.log(torch.exp(shifted).mean(0)) - 1e6
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), want, rtol=1e-7, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("level", [-7000.0, -1e6])
def test_iwae_gradient_weights_are_normalized_at_large_log_weights(backend, level, seed):
    """The IWAE gradient's weights w~_k = softmax_k log w in float32 where the log-weights are large
    (a CIFAR image's log-likelihood is about -7000 nats): exp(log w - logsumexp) inherits the rounding
    of logsumexp (ulp(7000) = 4.9e-4; at -1e6, 0.0625), so the weights would be off by that relative
    error and not sum to 1; exp(log w - max) / sum_k exp(log w_k - max) is exact to a few ulp. Both
    the reference (the oracle) and the kernels."""
    g = generator(seed, DEVICE)
    k, rows = 4, 16
    log_lik = (level + randn(g, k, rows, scale=3.0)).float().requires_grad_()
    zeros = torch.zeros(k, rows, device=DEVICE)
    lat = fe.Latent(torch.zeros(k, rows, 1, device=DEVICE), zeros, zeros, torch.zeros(rows, device=DEVICE))
    grad, = torch.autograd.grad(fe.elbo(log_lik, lat, estimator="iwae", backend=backend).sum(), log_lik)
    truth = torch.softmax(log_lik.detach().double(), 0)
    tol = TOLERANCES[torch.float32]["bwd"]
    torch.testing.assert_close(grad.double(), truth, rtol=tol.rtol, atol=tol.atol)
    # the weights of each data point sum to 1 within float32 rounding of K terms
    torch.testing.assert_close(grad.double().sum(0), torch.ones(rows, dtype=torch.float64), rtol=0, atol=k * 2.0**-23)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("estimator", ["iwae", "dreg"])
def test_iwae_without_samples_is_an_error_naming_log_lik(backend, estimator):
    """K = 0 samples (a hand-built Latent): a ValueError naming log_lik on every backend (it was
    math.log(0)'s "math domain error" on some and NaN on others)."""
    empty = torch.zeros(0, 3, device=DEVICE)
    lat = fe.Latent(torch.zeros(0, 3, 2, device=DEVICE), empty, empty, torch.zeros(3, device=DEVICE))
    with pytest.raises(ValueError, match="log_lik.*at least one sample"):
        fe.elbo(empty, lat, estimator=estimator, backend=backend)


def test_elbo_formulas_by_hand(seed):
    model, x, eps = _setup(seed)
    mu, lv = model.encode(x)
    lat = fe.gaussian_latent(mu, lv, n_samples=eps.shape[0], eps=eps)
    ll = fe.bernoulli_log_prob(lat.z @ model.dec, x)
    beta = 0.3
    mc = (ll + beta * (lat.log_p - lat.log_q)).mean(0)
    torch.testing.assert_close(fe.elbo(ll, lat, kl="mc", beta=beta), mc)
    torch.testing.assert_close(fe.elbo(ll, lat, kl="analytic", beta=beta), ll.mean(0) - beta * lat.kl)
    single = fe.gaussian_latent(mu, lv, eps=eps[0])
    ll1 = fe.bernoulli_log_prob(single.z @ model.dec, x)
    torch.testing.assert_close(fe.elbo(ll1, single, estimator="iwae"), ll1 + single.log_p - single.log_q)


def test_stl_gradient_matches_two_pass_surrogate(seed):
    """STL: log q evaluated at the live z with mu and sigma detached."""
    model, x, eps = _setup(seed)
    weights = randn(generator(seed + 1, "cpu"), eps.shape[0], x.shape[0])

    mu, lv = model.encode(x)
    lat = fe.gaussian_latent(mu, lv, n_samples=eps.shape[0], eps=eps, stl=True)
    got = torch.autograd.grad((weights * lat.log_q).sum(), [model.enc])[0]

    mu, lv = model.encode(x)
    sigma = torch.exp(0.5 * lv)
    z = mu + sigma * eps
    q_stopped = torch.distributions.Normal(mu.detach(), sigma.detach())
    want = torch.autograd.grad((weights * q_stopped.log_prob(z).sum(-1)).sum(), [model.enc])[0]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # And the value is still the exact log q.
    torch.testing.assert_close(lat.log_q, q_stopped.log_prob(z).sum(-1))


@pytest.mark.parametrize("stl", [False, True])
def test_dreg_gradients_match_two_pass_surrogate(stl, seed):
    """Decoder (and prior) gradients: sum_k w~_k grad log w_k. Encoder gradients:
    sum_k w~_k^2 d log w_k / d z_k dz_k/dphi with q's parameters stopped -- whatever stl is."""
    model, x, eps = _setup(seed)
    mu, lv = model.encode(x)
    lat = fe.gaussian_latent(mu, lv, n_samples=eps.shape[0], eps=eps, stl=stl,
                             prior=(model.prior_mu, model.prior_logvar))
    ll = fe.bernoulli_log_prob(lat.z @ model.dec, x)
    upstream = randn(generator(seed + 1, "cpu"), x.shape[0])
    (fe.elbo(ll, lat, estimator="dreg") * upstream).sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}

    def log_weights(model):
        mu, lv = model.encode(x)
        sigma = torch.exp(0.5 * lv)
        z = mu + sigma * eps
        log_q = torch.distributions.Normal(mu.detach(), sigma.detach()).log_prob(z).sum(-1)
        prior = torch.distributions.Normal(model.prior_mu, torch.exp(0.5 * model.prior_logvar))
        log_p = prior.log_prob(z).sum(-1)
        ll = torch.distributions.Bernoulli(logits=z @ model.dec).log_prob(x).sum(-1)
        return ll + log_p - log_q

    # Pass 1, model side: the IWAE gradient for the decoder and the prior.
    log_w = log_weights(model)
    w = torch.softmax(log_w.detach(), 0)
    model_params = [model.dec, model.prior_mu, model.prior_logvar]
    want_model = torch.autograd.grad((upstream * (w * log_w).sum(0)).sum(), model_params)
    # Pass 2, encoder side: squared weights, gradient through z only (q's params stopped above).
    log_w = log_weights(model)
    want_enc = torch.autograd.grad((upstream * (w**2 * log_w).sum(0)).sum(), [model.enc])[0]

    for name, want in zip(["dec", "prior_mu", "prior_logvar"], want_model):
        torch.testing.assert_close(got[name], want, rtol=1e-10, atol=1e-12, msg=name)
    torch.testing.assert_close(got["enc"], want_enc, rtol=1e-10, atol=1e-12)


def test_dreg_differs_from_iwae_on_the_encoder_only(seed):
    """Guards the test above: the DReG and IWAE encoder gradients really differ."""
    grads = {}
    for estimator in ("iwae", "dreg"):
        model, x, eps = _setup(seed)
        mu, lv = model.encode(x)
        lat = fe.gaussian_latent(mu, lv, n_samples=eps.shape[0], eps=eps)
        fe.elbo(fe.bernoulli_log_prob(lat.z @ model.dec, x), lat, estimator=estimator).sum().backward()
        grads[estimator] = (model.enc.grad.clone(), model.dec.grad.clone())
    torch.testing.assert_close(grads["iwae"][1], grads["dreg"][1])
    assert not torch.allclose(grads["iwae"][0], grads["dreg"][0], rtol=1e-3, atol=1e-6)


def test_dreg_twice_on_one_latent_is_an_error(seed):
    model, x, eps = _setup(seed)
    mu, lv = model.encode(x)
    lat = fe.gaussian_latent(mu, lv, n_samples=eps.shape[0], eps=eps)
    ll = fe.bernoulli_log_prob(lat.z @ model.dec, x)
    fe.elbo(ll, lat, estimator="dreg")
    with pytest.raises(ValueError, match="already applied"):
        fe.elbo(ll, lat, estimator="dreg")
    with pytest.raises(ValueError, match="latent must come straight"):
        fe.elbo(ll, fe.Latent(*lat), estimator="dreg")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_free_bits_by_hand(reduction, seed):
    g = generator(seed, "cpu")
    batch, d, dx = 5, 4, 6
    # Dims 0-1 sit far below lambda (clamped, no gradient), dims 2-3 far above it.
    mu = randn(g, batch, d, scale=0.02) + torch.tensor([0.0, 0.0, 1.5, -1.5], dtype=torch.float64)
    mu = mu.requires_grad_(True)
    lv = rand(g, batch, d, low=-0.1, high=0.1).requires_grad_(True)
    x = (rand(g, batch, dx) < 0.5).double()
    dec = randn(g, d, dx)
    lam, beta = 0.05, 0.8
    torch.manual_seed(seed)
    out = fe.ELBO(free_bits=lam, beta=beta, reduction=reduction)(x, mu, lv, lambda z: z @ dec)
    torch.manual_seed(seed)
    z = fe.reparameterize(mu, lv)  # the same eps: same generator state, same scheme
    ll = torch.distributions.Bernoulli(logits=z @ dec).log_prob(x).sum(-1)
    kl_d = 0.5 * (mu**2 + lv.exp() - 1 - lv)  # per data point and dim
    kl_term = torch.maximum(kl_d.mean(0), torch.tensor(lam, dtype=torch.float64)).sum()
    n = 1 if reduction == "mean" else batch
    want = -((ll.mean() if reduction == "mean" else ll.sum()) - beta * n * kl_term)
    torch.testing.assert_close(out.loss, want)
    assert (kl_d.mean(0)[:2] < lam).all() and (kl_d.mean(0)[2:] > lam).all()
    (g_mu,) = torch.autograd.grad(out.loss, [mu])
    (w_mu,) = torch.autograd.grad(want, [mu])
    torch.testing.assert_close(g_mu, w_mu)
    torch.testing.assert_close(out.elbo, ll - beta * kl_d.sum(-1))
