"""Second derivatives on every backend: `create_graph=True` and torch.func.

A gradient penalty (WGAN-GP, R1, input-gradient regularizers), meta-learning or a Hessian-vector
product differentiates a gradient. Every op on every backend gives the exact second derivatives:
float64 gradgradcheck of each op, and the double backward of STL, DReG and the whole fe.ELBO loss
equal to the reference's. Under torch.func transforms, "auto" runs the reference and an explicit
fused backend is a ValueError that says so (the fused ops are torch.library custom ops, which
torch.func cannot transform).
"""
import pytest
import torch
from torch.autograd import gradgradcheck

import fastelbo as fe
from helpers import BACKENDS, DEVICE, FUSED_BACKENDS, PARAMS, generator, rand, randn

# PyTorch warns (and computes wrong second derivatives) when a backward calls an op without an
# autograd kernel: no such warning may appear here.
pytestmark = pytest.mark.filterwarnings("error::UserWarning")


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def _leaf(t):
    return t.detach().requires_grad_(True)


# ---- gradgradcheck of every op ----

@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("with_prior", [False, True])
@pytest.mark.parametrize("n_samples", [None, 3])
def test_latent(backend, param, with_prior, n_samples, seed):
    g = generator(seed)
    inputs = [_leaf(randn(g, 2, 4)), _leaf(rand(g, 2, 4, low=-1, high=1))]
    if with_prior:
        inputs += [_leaf(randn(g, 4)), _leaf(rand(g, 2, 4, low=-1, high=1))]
    eps = randn(g, *((n_samples,) if n_samples else ()), 2, 4)

    def latent(mu, s, *prior):
        return tuple(fe.gaussian_latent(mu, s, param=param, n_samples=n_samples, prior=prior or None, eps=eps,
                                        backend=backend))

    assert gradgradcheck(latent, inputs)


def test_latent_with_drawn_noise(backend, seed):
    """The backward regenerates the noise from the seed; its recorded form (the reference's noise
    from the same seed) differentiates to the same values."""
    g = generator(seed)
    mu, s = _leaf(randn(g, 3, 4)), _leaf(rand(g, 3, 4, low=-1, high=1))

    def z_and_log_p(mu, s):
        lat = fe.gaussian_latent(mu, s, n_samples=2, generator=torch.Generator(DEVICE).manual_seed(seed),
                                 backend=backend)
        return lat.z, lat.log_p

    assert gradgradcheck(z_and_log_p, [mu, s])


@pytest.mark.parametrize("prior", [False, True])
def test_latent_whose_kernel_draws_the_seed(backend, prior, seed):
    """The common call, whose CPU kernel draws its own seed (the default generator, reset before each
    evaluation so gradgradcheck sees one function); with a per-sample prior it takes the tiled rows."""
    if backend != "cpu":
        pytest.skip("only the CPU kernel draws its own seed")
    g = generator(seed)
    inputs = [_leaf(randn(g, 3, 6)), _leaf(rand(g, 3, 6, low=-1, high=1))]
    if prior:
        inputs += [_leaf(randn(g, 3, 6)), _leaf(rand(g, 3, 6, low=-1, high=1))]

    def latent(mu, s, *prior_args):
        torch.manual_seed(seed)
        lat = fe.gaussian_latent(mu, s, prior=tuple(prior_args) or None, backend=backend)
        return lat.z, lat.log_q, lat.log_p, lat.kl

    assert gradgradcheck(latent, inputs)


@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("per_dim", [False, True])
def test_kl(backend, param, per_dim, seed):
    g = generator(seed)
    inputs = [_leaf(randn(g, 3, 4)), _leaf(rand(g, 3, 4, low=-1, high=1)), _leaf(randn(g, 4)),
              _leaf(rand(g, 4, low=-1, high=1))]
    assert gradgradcheck(lambda mu, s, pm, ps: fe.gaussian_kl(mu, s, param=param, prior=(pm, ps), per_dim=per_dim,
                                                              backend=backend), inputs)
    assert gradgradcheck(lambda mu, s: fe.gaussian_kl(mu, s, param=param, backend=backend), inputs[:2])


def test_bernoulli_and_continuous_bernoulli(backend, seed):
    g = generator(seed)
    logits, x = _leaf(randn(g, 2, 3, 5, scale=2.0)), _leaf(rand(g, 3, 5))
    assert gradgradcheck(lambda l, x: fe.bernoulli_log_prob(l, x, backend=backend), [logits, x])
    assert gradgradcheck(lambda l: fe.bernoulli_log_prob(l, x.detach().round(), event_dims=2, backend=backend),
                         [logits])
    # Both sides of the continuous Bernoulli's series switch at |l| = 1/2.
    cb_logits = _leaf(torch.tensor([[-0.6, -0.3, 0.0, 1e-3, 0.45], [0.55, 2.0, -4.0, 0.2, -0.49]],
                                   dtype=torch.float64, device=DEVICE))
    assert gradgradcheck(lambda l, x: fe.continuous_bernoulli_log_prob(l, x, backend=backend), [cb_logits, x[0]])


def test_gaussian(backend, seed):
    g = generator(seed)
    mean, x = _leaf(randn(g, 2, 3, 5)), _leaf(randn(g, 3, 5))
    shared_logvar, full_logvar = _leaf(rand(g, 5, low=-1, high=1)), _leaf(rand(g, 2, 3, 5, low=-1, high=1))
    assert gradgradcheck(lambda m, x, v: fe.gaussian_log_prob(m, x, logvar=v, backend=backend), [mean, x, shared_logvar])
    assert gradgradcheck(lambda m, v: fe.gaussian_log_prob(m, x.detach(), logvar=v, backend=backend),
                         [mean, full_logvar])
    assert gradgradcheck(lambda m, x: fe.gaussian_log_prob(m, x, logvar=0.3, event_dims=2, backend=backend), [mean, x])


def test_categorical(backend, seed):
    g = generator(seed)
    logits = _leaf(randn(g, 2, 3, 4, scale=2.0))
    target = torch.randint(0, 4, (3,), generator=g, device=DEVICE)
    assert gradgradcheck(lambda l: fe.categorical_log_prob(l, target, backend=backend), [logits])


@pytest.mark.parametrize("kl,estimator,beta", [("mc", "elbo", 0.5), ("analytic", "elbo", 2.0), ("mc", "iwae", 1.0)])
def test_elbo(backend, kl, estimator, beta, seed):
    g = generator(seed)
    mu, s, w = _leaf(randn(g, 3, 2)), _leaf(rand(g, 3, 2, low=-1, high=1)), _leaf(randn(g, 2, 5))
    x = (rand(g, 3, 5) < 0.5).double()
    eps = randn(g, 4, 3, 2)

    def objective(mu, s, w):
        lat = fe.gaussian_latent(mu, s, n_samples=4, eps=eps, backend=backend)
        log_lik = fe.bernoulli_log_prob(lat.z @ w, x, backend=backend)
        return fe.elbo(log_lik, lat, kl=kl, estimator=estimator, beta=beta, backend=backend)

    assert gradgradcheck(objective, [mu, s, w])


# ---- double backward of whole objectives, against the reference ----

def _penalty_grads(backend, fn, params):
    """Gradients of |d fn / d params|^2 (a gradient penalty) on `backend`."""
    params = [_leaf(p) for p in params]
    with fe.use_backend(backend):
        first = torch.autograd.grad(fn(*params), params, create_graph=True)
        penalty = sum((g * g).sum() for g in first)
        return torch.autograd.grad(penalty, params, allow_unused=True)


def _assert_same_penalty_grads(backend, fn, params):
    want = _penalty_grads("reference", fn, params)
    got = _penalty_grads(backend, fn, params)
    for w, a in zip(want, got):
        assert (w is None) == (a is None)
        if w is not None:
            torch.testing.assert_close(a, w, atol=1e-10, rtol=1e-10)


def test_the_reported_gradient_penalty(backend):
    """The issue's reproducer: W.grad was None and |h.grad| 22.36 on cpu; the reference gives
    |W.grad| 30.92 and |h.grad| 33.47."""
    torch.manual_seed(0)
    d = torch.float64
    W = torch.randn(5, 5, dtype=d).to(DEVICE).requires_grad_()
    h = torch.randn(3, 5, dtype=d).to(DEVICE).requires_grad_()
    x = torch.rand(3, 5, dtype=d).round().to(DEVICE)
    ll = fe.bernoulli_log_prob(h @ W, x, backend=backend).sum()
    (g,) = torch.autograd.grad(ll, W, create_graph=True)
    (g ** 2).sum().backward()
    assert W.grad is not None
    assert W.grad.norm().item() == pytest.approx(30.9201, abs=1e-4)
    assert h.grad.norm().item() == pytest.approx(33.4744, abs=1e-4)


@pytest.mark.parametrize("estimator,stl", [("elbo", True), ("dreg", False), ("dreg", True)])
def test_stl_and_dreg(backend, estimator, stl, seed):
    """STL and DReG gradients are not derivatives of their values (no gradgradcheck): their double
    backward equals the reference's."""
    g = generator(seed)
    x = (rand(g, 3, 5) < 0.5).double()
    eps = randn(g, 4, 3, 2)

    def objective(mu, s, w):
        lat = fe.gaussian_latent(mu, s, n_samples=4, eps=eps, stl=stl)
        return fe.elbo(fe.bernoulli_log_prob(lat.z @ w, x), lat, estimator=estimator).sum()

    _assert_same_penalty_grads(backend, objective, [randn(g, 3, 2), rand(g, 3, 2, low=-1, high=1), randn(g, 2, 5)])


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "continuous_bernoulli", "categorical"])
def test_input_gradient_penalty_through_the_elbo_module(backend, likelihood, seed):
    """An input-gradient penalty on a small VAE through fe.ELBO: every parameter gets the
    reference's gradient (the issue measured [0.126, None, None, None] on cpu)."""
    g = generator(seed)
    n_classes = 3
    out_features = 5 * n_classes if likelihood == "categorical" else 5
    if likelihood == "categorical":
        x = torch.randint(0, n_classes, (4, 5), generator=g, device=DEVICE)
    else:
        x = rand(g, 4, 5)
    enc_w, dec_w = randn(g, 5, 4, scale=0.5), randn(g, 2, out_features, scale=0.5)
    inputs = x.double() if likelihood == "categorical" else x
    objective = fe.ELBO(likelihood, n_samples=2, kl="analytic")
    state = torch.get_rng_state()

    def loss(x_in, enc_w, dec_w):
        torch.set_rng_state(state)  # the same noise on both backends
        h = x_in @ enc_w
        decode = (lambda z: (z @ dec_w).unflatten(-1, (5, n_classes))) if likelihood == "categorical" else (
            lambda z: z @ dec_w)
        return objective(x, h[:, :2], h[:, 2:], decode).loss

    # |d loss / d x_in|^2 as the penalty, differentiated to the encoder and decoder weights.
    _assert_same_penalty_grads(backend, loss, [inputs, enc_w, dec_w])


# ---- torch.func ----

def _bernoulli_sum(backend, x):
    return lambda logits: fe.bernoulli_log_prob(logits, x, backend=backend).sum()


def test_torch_func_on_auto_runs_the_reference(seed):
    g = generator(seed)
    logits, x = randn(g, 3, 5), (rand(g, 3, 5) < 0.5).double()
    with fe.use_backend("auto"):
        f = _bernoulli_sum(None, x)
        grad = torch.func.grad(f)(logits)
        hessian_diag = torch.func.grad(lambda l: torch.func.grad(f)(l).sum())(logits)
        per_sample = torch.func.vmap(torch.func.grad(f))(logits.unsqueeze(0).expand(2, 3, 5))
    sigmoid = torch.sigmoid(logits)
    torch.testing.assert_close(grad, x - sigmoid)
    torch.testing.assert_close(hessian_diag, -sigmoid * (1 - sigmoid))
    torch.testing.assert_close(per_sample, (x - sigmoid).expand(2, 3, 5))


def test_torch_func_over_a_whole_reference_objective(seed):
    """torch.func.grad of latent + likelihood + fe.elbo (which follows the latent's backend)."""
    g = generator(seed)
    mu, s, w = randn(g, 3, 2), rand(g, 3, 2, low=-1, high=1), randn(g, 2, 5)
    x = (rand(g, 3, 5) < 0.5).double()
    eps = randn(g, 4, 3, 2)

    def objective(mu, s, w):
        lat = fe.gaussian_latent(mu, s, n_samples=4, eps=eps, backend="reference")
        return fe.elbo(fe.bernoulli_log_prob(lat.z @ w, x, backend="reference"), lat, estimator="iwae").sum()

    got = torch.func.grad(objective, argnums=(0, 1, 2))(mu, s, w)
    leaves = [_leaf(t) for t in (mu, s, w)]
    want = torch.autograd.grad(objective(*leaves), leaves)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("fused", FUSED_BACKENDS)
def test_torch_func_on_a_fused_backend_is_a_clear_error(fused, seed):
    g = generator(seed)
    logits, x = randn(g, 3, 5), (rand(g, 3, 5) < 0.5).double()
    for transform in (torch.func.grad, lambda f: torch.func.vmap(torch.func.grad(f))):
        with pytest.raises(ValueError, match=f"backend='{fused}' cannot run inside torch.func"):
            transform(_bernoulli_sum(fused, x))(logits if transform is torch.func.grad else logits[None])


class _TinyVAE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = torch.nn.Linear(5, 4), torch.nn.Linear(2, 5)
        self.objective = fe.ELBO(n_samples=2)

    def forward(self, x, noise_seed):
        h = self.encoder(x)
        torch.manual_seed(noise_seed)  # the same noise on every backend and device
        return self.objective(x, h[:, :2], h[:, 2:], self.decoder).loss


def test_functional_call_on_every_backend_and_under_grad(backend, seed):
    """torch.func.functional_call swaps a module's parameters (no transform): it works on every
    backend; torch.func.grad of it works on "auto" (the reference inside the transform)."""
    torch.manual_seed(seed)
    model = _TinyVAE().double().to(DEVICE)
    x = torch.rand(3, 5, dtype=torch.float64, device=DEVICE).round()
    state = seed + 1
    params = {name: p.detach() + 0.01 for name, p in model.named_parameters()}
    with fe.use_backend(backend):
        loss = torch.func.functional_call(model, params, (x, state))
    with fe.use_backend("reference"):
        want = torch.func.functional_call(model, params, (x, state))
    torch.testing.assert_close(loss, want)
    with fe.use_backend("auto"):
        grads = torch.func.grad(lambda p: torch.func.functional_call(model, p, (x, state)))(params)
    leaves = {name: p.clone().requires_grad_(True) for name, p in params.items()}
    with fe.use_backend("reference"):
        want_grads = torch.autograd.grad(torch.func.functional_call(model, leaves, (x, state)), list(leaves.values()))
    for name, g in zip(leaves, want_grads):
        torch.testing.assert_close(grads[name], g)


@pytest.mark.skipif(not FUSED_BACKENDS, reason="no fused backend here")
def test_forward_mode_ad_never_drops_a_tangent(seed):
    """Inside torch.autograd.forward_ad.dual_level() "auto" runs the reference, whose tangents are
    autograd's; an explicit fused backend (no forward-mode derivative) is an error, not a tangent
    silently dropped."""
    import torch.autograd.forward_ad as fwad

    g = generator(seed)
    logits, x = randn(g, 3, 7), (rand(g, 3, 7) < 0.5).double()
    mu, scale = randn(g, 3, 5), rand(g, 3, 5, low=-1, high=1)
    calls = [lambda t, b: fe.bernoulli_log_prob(t, x, backend=b), lambda t, b: fe.gaussian_kl(t, scale, backend=b),
             lambda t, b: fe.gaussian_latent(t, scale, generator=generator(seed), backend=b).z]
    for call, primal in zip(calls, (logits, mu, mu)):
        tangent = randn(g, *primal.shape)
        with fwad.dual_level():
            auto = fwad.unpack_dual(call(fwad.make_dual(primal, tangent), None)).tangent
            reference = fwad.unpack_dual(call(fwad.make_dual(primal, tangent), "reference")).tangent
            with pytest.raises(ValueError, match="forward_ad"):
                call(fwad.make_dual(primal, tangent), FUSED_BACKENDS[0])
        assert auto is not None
        torch.testing.assert_close(auto, reference)
