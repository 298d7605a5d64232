"""Bad input: clear errors naming the argument, before any kernel runs; value checks in
validation mode; NaN in gives NaN out; inputs never modified."""
import math

import pytest
import torch

import fastelbo as fe
from helpers import generator, rand, randn

mu, s = torch.zeros(3, 4), torch.zeros(3, 4)
logits, x = torch.zeros(3, 5), torch.zeros(3, 5)


@pytest.mark.parametrize("call,error,pattern", [
    (lambda: fe.gaussian_latent([0.0], s), TypeError, "mu must be a torch.Tensor"),
    (lambda: fe.gaussian_latent(mu.long(), s), TypeError, "mu must have dtype"),
    (lambda: fe.gaussian_latent(mu, s[:, :3]), ValueError, "scale must have mu's shape"),
    (lambda: fe.gaussian_latent(torch.zeros(()), torch.zeros(())), ValueError, "mu must have at least 1 dim"),
    (lambda: fe.gaussian_latent(mu, s.to("meta")), ValueError, "scale must be on the same device"),
    (lambda: fe.gaussian_latent(mu, s, param="std"), ValueError, "param must be one of"),
    (lambda: fe.gaussian_latent(mu, s, n_samples=0), ValueError, "n_samples must be >= 1"),
    (lambda: fe.gaussian_latent(mu, s, n_samples=2.0), TypeError, "n_samples must be an int"),
    (lambda: fe.gaussian_latent(mu, s, stl=1), TypeError, "stl must be a bool"),
    (lambda: fe.gaussian_latent(mu, s, prior=torch.zeros(4)), TypeError, "prior must be None or a pair"),
    (lambda: fe.gaussian_latent(mu, s, prior=(torch.zeros(5), torch.zeros(4))), ValueError, r"prior \(prior_mu\)"),
    (lambda: fe.gaussian_latent(mu, s, prior=(torch.zeros(4), torch.zeros(2, 3, 4))), ValueError, r"prior \(prior_scale\)"),
    (lambda: fe.gaussian_latent(mu, s, eps=torch.zeros(2, 3, 4)), ValueError, "eps must have z's shape"),
    (lambda: fe.gaussian_latent(mu, s, n_samples=2, eps=torch.zeros(3, 4)), ValueError, "eps must have z's shape"),
    (lambda: fe.gaussian_latent(mu, s, eps=torch.zeros(3, 4), generator=torch.Generator()), ValueError, "either eps"),
    (lambda: fe.gaussian_latent(mu.to("meta"), s.to("meta"), generator=torch.Generator()), ValueError, "generator must be on mu's device"),
    (lambda: fe.gaussian_latent(mu, s, generator=0), TypeError, "generator must be a torch.Generator"),
    (lambda: fe.gaussian_latent(mu, s, backend="gpu"), ValueError, "backend must be one of"),
    (lambda: fe.gaussian_kl(mu, s, per_dim="yes"), TypeError, "per_dim must be a bool"),
    (lambda: fe.bernoulli_log_prob(logits, x.int()), TypeError, "x must have dtype"),
    (lambda: fe.bernoulli_log_prob(logits, torch.zeros(2, 3, 5)), ValueError, "x of shape"),
    (lambda: fe.bernoulli_log_prob(logits, x, event_dims=3), ValueError, "event_dims=3"),
    (lambda: fe.bernoulli_log_prob(logits, x, event_dims=-1), ValueError, "event_dims must be >= 0"),
    (lambda: fe.continuous_bernoulli_log_prob(logits.half(), x.to("meta")), ValueError, "x must be on the same device"),
    (lambda: fe.gaussian_log_prob(logits, x, logvar="0"), TypeError, "logvar must be a real number"),
    (lambda: fe.gaussian_log_prob(logits, x, logvar=torch.zeros(6)), ValueError, "logvar of shape"),
    (lambda: fe.gaussian_log_prob(logits, x, logvar=math.inf), ValueError, "logvar must be finite"),
    (lambda: fe.categorical_log_prob(logits, x), TypeError, "target must have dtype"),
    (lambda: fe.categorical_log_prob(logits, torch.zeros(4, dtype=torch.long)), ValueError, "target of shape"),
    (lambda: fe.categorical_log_prob(torch.zeros(3, 0), torch.zeros(3, dtype=torch.long)), ValueError, "one class"),
])
def test_argument_errors(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def _latent_and_ll(n_samples=2):
    lat = fe.gaussian_latent(mu, s, n_samples=n_samples)
    return lat, torch.zeros(lat.z.shape[:-1])


@pytest.mark.parametrize("kwargs,error,pattern", [
    ({"kl": "exact"}, ValueError, "kl must be one of"),
    ({"estimator": "vimco"}, ValueError, "estimator must be one of"),
    ({"beta": -1.0}, ValueError, "beta must be >= 0"),
    ({"beta": torch.tensor(1.0)}, TypeError, "beta must be a real number"),
    ({"estimator": "iwae", "beta": 0.5}, ValueError, "beta must be 1"),
    ({"estimator": "dreg", "kl": "analytic"}, ValueError, "kl must be 'mc'"),
])
def test_elbo_option_errors(kwargs, error, pattern):
    lat, ll = _latent_and_ll()
    with pytest.raises(error, match=pattern):
        fe.elbo(ll, lat, **kwargs)


def test_elbo_argument_errors():
    lat, ll = _latent_and_ll()
    with pytest.raises(TypeError, match="latent must be a fastelbo Latent"):
        fe.elbo(ll, (lat.z, lat.log_q, lat.log_p, lat.kl))
    with pytest.raises(ValueError, match="log_lik must have z's shape without the event dims"):
        fe.elbo(torch.zeros(3), lat)


@pytest.mark.parametrize("kwargs,pattern", [
    ({"likelihood": "poisson"}, "likelihood must be one of"),
    ({"reduction": "avg"}, "reduction must be one of"),
    ({"free_bits": 0.1, "kl": "mc"}, "free_bits needs"),
    ({"free_bits": 0.1, "reduction": "none"}, "free_bits is a batch objective"),
    ({"estimator": "iwae"}, "kl must be 'mc'"),
    ({"n_samples": 0}, "n_samples must be >= 1"),
    ({"backend": "tpu"}, "backend must be one of"),
])
def test_module_option_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        fe.ELBO(**kwargs)


def test_module_forward_errors():
    loss = fe.ELBO()
    with pytest.raises(TypeError, match="decoder must be callable"):
        loss(x, mu, s, None)
    with pytest.raises(TypeError, match="decoder must return a logits tensor"):
        loss(x, mu, s, lambda z: (z, z))
    with pytest.raises(ValueError, match="x must start with mu's batch dims"):
        fe.ELBO()(torch.zeros(5), torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), lambda z: z)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "categorical"])
def test_module_checks_x_before_the_decoder_runs(likelihood):
    """A batch mismatch of x is found before the decoder runs, and the message names x."""
    calls = []

    def decoder(z):
        calls.append(z)
        return z

    bad_x = torch.zeros(3, 5, dtype=torch.long if likelihood == "categorical" else torch.float32)
    with pytest.raises(ValueError, match=r"^x must start with mu's batch dims \(4,\); got shape \(3, 5\)"):
        fe.ELBO(likelihood)(bad_x, torch.zeros(4, 2), torch.zeros(4, 2), decoder)
    with pytest.raises(TypeError, match="^x must be"):
        fe.ELBO(likelihood)(bad_x.tolist(), torch.zeros(4, 2), torch.zeros(4, 2), decoder)
    assert calls == []
    with pytest.raises(ValueError, match="recon_logits must start with mu's batch dims"):
        fe.vae_loss(torch.zeros(4, 5), torch.zeros(4, 5), mu, s)


def test_value_checks_only_in_validation_mode():
    bad_x = torch.full((3, 5), 1.5)
    bad_target = torch.full((3,), 5)
    nan_mu = mu.clone()
    nan_mu[0, 0] = math.nan
    assert not fe.validation_enabled()
    fe.bernoulli_log_prob(logits, bad_x)  # no check, no sync
    try:
        fe.set_validation(True)
        with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
            fe.bernoulli_log_prob(logits, bad_x)
        with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
            fe.continuous_bernoulli_log_prob(logits, torch.full((3, 5), math.nan))
        with pytest.raises(ValueError, match=r"target must lie in \[0, 5\)"):
            fe.categorical_log_prob(logits, bad_target)
        with pytest.raises(ValueError, match="mu has non-finite values"):
            fe.gaussian_latent(nan_mu, s)
        with pytest.raises(ValueError, match="log_lik has non-finite values"):
            lat = fe.gaussian_latent(mu, s)
            fe.elbo(torch.full((3,), math.inf), lat)
        fe.bernoulli_log_prob(logits, x.bool())  # bool data is always in support
    finally:
        fe.set_validation(False)
    with pytest.raises(TypeError, match="enabled must be a bool"):
        fe.set_validation(1)


def test_nan_in_nan_out_without_validation():
    nan_mu = mu.clone()
    nan_mu[1, 2] = math.nan
    lat = fe.gaussian_latent(nan_mu, s)
    assert torch.isnan(lat.z[1, 2]) and torch.isnan(lat.log_p[1]) and torch.isnan(lat.kl[1])
    assert torch.isfinite(lat.kl[0]) and torch.isfinite(lat.kl[2])
    out = fe.categorical_log_prob(torch.zeros(2, 4), torch.tensor([1, 7]), event_dims=0)
    assert torch.isfinite(out[0]) and torch.isnan(out[1])  # out of range: NaN, never a wrong number
    bad = fe.bernoulli_log_prob(logits, torch.full((3, 5), math.nan))
    assert torch.isnan(bad).all()


def test_extreme_values_stay_finite():
    """The README's promise: logvar in [-30, 30], |mu| up to 1e4, logits in [-1e4, 1e4]."""
    big_mu = torch.tensor([[1e4, -1e4, 0.0, 3.0]], requires_grad=True)
    lv = torch.tensor([[-30.0, 30.0, -30.0, 30.0]], requires_grad=True)
    for param in ("logvar", "log_std", "softplus"):
        s_param = lv if param != "log_std" else (lv / 2).detach().requires_grad_(True)
        lat = fe.gaussian_latent(big_mu, s_param, param=param, n_samples=3)
        total = sum(t.sum() for t in lat)
        grads = torch.autograd.grad(total, [big_mu, s_param])
        assert all(torch.isfinite(t).all() for t in lat), param
        assert all(torch.isfinite(gr).all() for gr in grads), param
    ext = torch.tensor([[-1e4, 1e4, -1e4, 1e4, 0.0]], requires_grad=True)
    xx = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.5]])
    for fn in (fe.bernoulli_log_prob, fe.continuous_bernoulli_log_prob):
        out = fn(ext, xx)
        (gr,) = torch.autograd.grad(out.sum(), [ext])
        assert torch.isfinite(out).all() and torch.isfinite(gr).all()
    cat = torch.tensor([[[-1e4, 1e4, 0.0]]], requires_grad=True)
    out = fe.categorical_log_prob(cat, torch.tensor([[0]]))
    (gr,) = torch.autograd.grad(out.sum(), [cat])
    assert torch.isfinite(out).all() and torch.isfinite(gr).all()


def test_inputs_are_never_modified(seed):
    g = generator(seed, "cpu")
    tensors = {
        "mu": randn(g, 2, 3, 4).requires_grad_(True), "s": rand(g, 2, 3, 4, low=-1, high=1).requires_grad_(True),
        "pm": randn(g, 4).requires_grad_(True), "ps": randn(g, 4).requires_grad_(True),
        "w": randn(g, 4, 5).requires_grad_(True), "x": (rand(g, 3, 5) < 0.5).double(),
        "mean_x": randn(g, 3, 5), "lv": randn(g, 5).requires_grad_(True),
        "cat": randn(g, 2, 3, 5, 4).requires_grad_(True), "target": torch.randint(0, 4, (3, 5), generator=g),
    }
    before = {k: v.detach().clone() for k, v in tensors.items()}
    t = tensors
    for estimator in ("elbo", "iwae", "dreg"):
        lat = fe.gaussian_latent(t["mu"], t["s"], n_samples=2, prior=(t["pm"], t["ps"]), stl=True)
        ll = fe.bernoulli_log_prob(lat.z @ t["w"], t["x"]) + fe.gaussian_log_prob(lat.z @ t["w"], t["mean_x"], logvar=t["lv"])
        ll = ll + fe.continuous_bernoulli_log_prob(lat.z @ t["w"], t["x"]) + fe.categorical_log_prob(t["cat"], t["target"])
        fe.elbo(ll, lat, estimator=estimator).sum().backward()
    fe.ELBO(free_bits=0.1)(t["x"], t["mu"][0], t["s"][0], lambda z: z @ t["w"]).loss.backward()
    fe.vae_loss(t["mu"][0] @ t["w"], t["x"], t["mu"][0], t["s"][0]).backward()
    for k, v in tensors.items():
        assert torch.equal(v.detach(), before[k]), k


def test_validation_env_variable():
    import subprocess
    import sys

    code = "import fastelbo; print(fastelbo.validation_enabled())"
    for value, want in (("1", "True"), ("0", "False")):
        env = {**__import__("os").environ, "FASTELBO_VALIDATE": value}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == want
