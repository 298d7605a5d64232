"""What every fused backend promises beyond matching the reference op cases
(tests/test_backends_vs_reference.py), run on each fused backend available here: torch.compile
fullgraph forward and backward, its noise (forward eps == backward eps, reproducible, standard
normal, equal to the reference's), strided, batched and broadcast layouts, long rows, empty batches.

A fused backend joins by becoming available (tests/helpers.py FUSED_BACKENDS). The Triton kernels
run in Triton's interpreter on CPU (small shapes); backend-specific promises are in
tests/test_triton_backend.py and tests/test_cpp_backend.py."""
import math

import pytest
import torch

import fastelbo as fe
from helpers import DEVICE, FUSED_BACKENDS, generator, rand, randn


@pytest.fixture(params=FUSED_BACKENDS)
def backend(request):
    return request.param


def _leaf(t):
    return t.detach().requires_grad_(True)


def _ref_and(backend, fn, *inputs):
    """fn(backend, *leaves) -> tensor; the values and gradients on the reference and `backend`."""
    results = []
    for name in ("reference", backend):
        leaves = [_leaf(t) if t.is_floating_point() else t for t in inputs]
        out = fn(name, *leaves)
        cot = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype, device=out.device).view(out.shape)
        wrt = [t for t in leaves if t.requires_grad]
        grads = torch.autograd.grad(out, wrt, cot, allow_unused=True)
        results.append((out.detach(), [torch.zeros_like(w) if g is None else g for w, g in zip(wrt, grads)]))
    return results


def _assert_same(results, atol=1e-11):
    (ref_out, ref_grads), (out, grads) = results
    torch.testing.assert_close(out, ref_out, atol=atol, rtol=atol, equal_nan=True)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=atol, rtol=atol)


# ---- torch.compile ----

def _vae_step(x, mu, scale, weight, prior_mu, backend, estimator):
    lat = fe.gaussian_latent(mu, scale, n_samples=3, prior=(prior_mu, torch.zeros_like(prior_mu)), backend=backend)
    log_lik = fe.bernoulli_log_prob(lat.z @ weight, x, backend=backend)
    with fe.use_backend(backend):
        return fe.elbo(log_lik, lat, kl="mc", estimator=estimator).mean()


@pytest.mark.parametrize("estimator", ["elbo", "iwae", "dreg"])
def test_compile_fullgraph_forward_and_backward(backend, estimator, seed):
    """The whole ELBO step compiles without a graph break; values and gradients match eager."""
    torch._dynamo.reset()  # a fresh compile per case: the cases share one code object and its recompile limit
    g = generator(seed)
    x = (rand(g, 4, 6, dtype=torch.float32) < 0.5).float()
    leaves = [randn(g, 4, 3, dtype=torch.float32), rand(g, 4, 3, dtype=torch.float32, low=-1, high=1),
              randn(g, 3, 6, dtype=torch.float32), randn(g, 3, dtype=torch.float32)]
    compiled = torch.compile(_vae_step, fullgraph=True, backend="aot_eager" if DEVICE == "cpu" else "inductor")
    results = []
    for fn in (_vae_step, compiled):
        params = [_leaf(t) for t in leaves]
        torch.manual_seed(seed)
        if DEVICE == "cuda":
            torch.cuda.manual_seed(seed)
        value = fn(x, *params, backend, estimator)
        results.append((value.detach(), torch.autograd.grad(value, params)))
    (v_eager, g_eager), (v_comp, g_comp) = results
    torch.testing.assert_close(v_comp, v_eager)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b)


def test_compile_loads_two_backends_inside_one_trace(backend, seed, monkeypatch):
    """A compiled region whose calls load their backends for the first time (a reference latent,
    a fused likelihood and estimator) traces without a break: each backend is imported when first
    asked for, and the trace sees it."""
    import types

    from fastelbo import _backend

    monkeypatch.setattr(_backend, "_RESOLVED", {})
    torch._dynamo.reset()
    g = generator(seed)
    x = (rand(g, 4, 6, dtype=torch.float32) < 0.5).float()
    mu, s, eps = randn(g, 4, 3, dtype=torch.float32), randn(g, 4, 3, dtype=torch.float32), randn(g, 4, 3,
                                                                                                    dtype=torch.float32)

    def step(mu, s, w):
        lat = fe.gaussian_latent(mu, s, eps=eps, backend="reference")
        log_lik = fe.bernoulli_log_prob(lat.z @ w, x, backend=backend)
        return fe.elbo(log_lik, lat, backend=backend).sum()

    w = randn(g, 3, 6, dtype=torch.float32)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager" if DEVICE == "cpu" else "inductor")
    torch.testing.assert_close(compiled(mu, s, w), step(mu, s, w))
    assert {"reference", backend} <= set(_backend._RESOLVED.values())


def test_compile_first_in_a_fresh_process():
    """`import fastelbo` does not import torch._dynamo (about a second, with triton), and a process
    whose first fastelbo call is inside torch.compile(fullgraph=True) still traces it: the backend
    resolution becomes a constant of the graph, marked with torch.compiler.assume_constant_result
    as soon as torch._dynamo is imported (fastelbo/_backend.py), whatever asked for its spec
    before. Without the mark dynamo stops at the resolution's first import."""
    import subprocess
    import sys

    code = (
        "import importlib.util, sys, torch\n"
        "import fastelbo as fe\n"
        "assert 'torch._dynamo' not in sys.modules, 'import fastelbo imported torch._dynamo'\n"
        "assert importlib.util.find_spec('torch._dynamo') is not None  # a probe, not an import: changes nothing\n"
        "mu, s, eps = torch.randn(4, 3), torch.randn(4, 3), torch.zeros(4, 3)\n"
        "step = torch.compile(lambda mu, s: fe.gaussian_latent(mu, s, eps=eps).kl, fullgraph=True,\n"
        "                     backend='aot_eager')\n"
        "torch.testing.assert_close(step(mu, s), fe.gaussian_kl(mu, s))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]


# ---- noise ----

def test_forward_eps_equals_backward_eps(backend, seed):
    """z = mu + sigma eps forward; d(c . z)/d logvar = c eps sigma / 2 backward, with eps regenerated."""
    g = generator(seed)
    mu, s = _leaf(randn(g, 6, 11)), _leaf(rand(g, 6, 11, low=-1, high=1))
    lat = fe.gaussian_latent(mu, s, n_samples=3, generator=g, backend=backend)
    sigma = torch.exp(s.detach() / 2)
    eps_forward = (lat.z.detach() - mu.detach()) / sigma
    c = randn(g, 3, 6, 11)
    (grad_s,) = torch.autograd.grad((lat.z * c).sum(), s)
    eps_backward = grad_s / (sigma / 2)
    torch.testing.assert_close(eps_backward, (c * eps_forward).sum(0), atol=1e-12, rtol=1e-12)
    (grad_s_one,) = torch.autograd.grad(fe.gaussian_latent(mu, s, generator=generator(seed + 1), backend=backend).z.sum(), s)
    z_one = fe.gaussian_latent(mu, s, generator=generator(seed + 1), backend=backend).z.detach()
    torch.testing.assert_close(grad_s_one / (sigma / 2), (z_one - mu.detach()) / sigma, atol=1e-12, rtol=1e-12)


def test_same_seed_same_z_and_the_reference_eps(backend, seed):
    mu, s = torch.zeros(5, 9, dtype=torch.float64, device=DEVICE), torch.zeros(5, 9, dtype=torch.float64, device=DEVICE)
    a = fe.gaussian_latent(mu, s, n_samples=2, generator=generator(seed), backend=backend).z
    b = fe.gaussian_latent(mu, s, n_samples=2, generator=generator(seed), backend=backend).z
    ref = fe.gaussian_latent(mu, s, n_samples=2, generator=generator(seed), backend="reference").z
    assert torch.equal(a, b)
    torch.testing.assert_close(a, ref, atol=1e-13, rtol=1e-13)  # float64 noise: same to rounding
    torch.manual_seed(seed)
    c = fe.gaussian_latent(mu.float(), s.float(), backend=backend).z
    torch.manual_seed(seed)
    d = fe.gaussian_latent(mu.float(), s.float(), backend=backend).z
    assert torch.equal(c, d)


def test_noise_moments_and_ks_from_the_latent_kernel(backend):
    """eps = z for mu = 0, sigma = 1: the kernel's noise is standard normal (p = 1e-4 thresholds)."""
    zeros = torch.zeros(512, 16, device=DEVICE)
    eps = fe.gaussian_latent(zeros, zeros, n_samples=2, generator=generator(20261123), backend=backend).z
    eps = eps.double().flatten()
    n = eps.numel()
    assert abs(eps.mean()) < 3.9 / math.sqrt(n)
    assert abs(eps.var() - 1) < 3.9 * math.sqrt(2 / n)
    sorted_eps, _ = torch.sort(eps.cpu())
    cdf = 0.5 * (1 + torch.erf(sorted_eps / math.sqrt(2)))
    i = torch.arange(1, n + 1, dtype=torch.float64)
    assert torch.maximum(i / n - cdf, cdf - (i - 1) / n).max() < 2.23 / math.sqrt(n)


# ---- layouts ----

@pytest.mark.parametrize("param", ["logvar", "softplus"])
def test_latent_on_strided_batched_inputs(backend, param, seed):
    g = generator(seed)
    mu = randn(g, 5, 2, 3, 6).transpose(0, 2)  # (3, 2, 5, 6), non-contiguous
    s = rand(g, 3, 2, 5, 12, low=-1, high=1)[..., ::2]  # strided last dim
    pm, ps = randn(g, 2, 1, 6), rand(g, 6, low=-0.5, high=0.5)
    eps = randn(g, 2, 3, 2, 5, 6)

    def fn(backend, mu, s, pm, ps):
        lat = fe.gaussian_latent(mu, s, param=param, n_samples=2, prior=(pm, ps), eps=eps, backend=backend)
        return torch.cat([lat.z.flatten(), lat.log_q.flatten(), lat.log_p.flatten(), lat.kl.flatten()])

    _assert_same(_ref_and(backend, fn, mu, s, pm, ps))


def test_kl_on_strided_inputs_with_broadcast_prior(backend, seed):
    g = generator(seed)
    mu, s = randn(g, 4, 3, 9)[:, 1], rand(g, 9, 4, low=-1, high=1).T
    pm, ps = randn(g, 1), rand(g, 4, 1, low=-1, high=1)

    def fn(backend, mu, s, pm, ps):
        return fe.gaussian_kl(mu, s, param="log_std", prior=(pm, ps), per_dim=True, backend=backend)

    _assert_same(_ref_and(backend, fn, mu, s, pm, ps))


@pytest.mark.parametrize("x_dtype", [torch.bool, torch.uint8, torch.float64])
@pytest.mark.parametrize("continuous", [False, True])
def test_binary_likelihoods_broadcast_x_of_every_dtype(backend, x_dtype, continuous, seed):
    g = generator(seed)
    logits = randn(g, 7, 3, 2, 4, scale=4.0).transpose(1, 2)  # (7, 2, 3, 4), strided
    x = (rand(g, 3, 4) < 0.5).to(x_dtype)
    op = fe.continuous_bernoulli_log_prob if continuous else fe.bernoulli_log_prob

    def fn(backend, logits, x):
        return op(logits, x, event_dims=2, backend=backend)

    _assert_same(_ref_and(backend, fn, logits, x))


def test_gradients_reach_a_float_x_and_a_broadcast_logvar(backend, seed):
    g = generator(seed)
    mean, x, logvar = randn(g, 3, 4, 5), randn(g, 4, 5), rand(g, 5, low=-1, high=1)
    _assert_same(_ref_and(backend, lambda b, m, x, v: fe.gaussian_log_prob(m, x, logvar=v, backend=b), mean, x, logvar))
    logits, xb = randn(g, 3, 4, 5), rand(g, 4, 5)
    _assert_same(_ref_and(backend, lambda b, l, x: fe.bernoulli_log_prob(l, x, backend=b), logits, xb))


def test_long_rows_and_many_classes_loop_over_blocks(backend, seed):
    """Rows longer than one block (likelihoods loop over N) and C > one block (online logsumexp)."""
    g = generator(seed)
    logits, x = randn(g, 2, 5000, scale=3.0), rand(g, 5000)
    _assert_same(_ref_and(backend, lambda b, l, x: fe.continuous_bernoulli_log_prob(l, x, backend=b), logits, x))
    logits_c = randn(g, 2, 3000, scale=3.0)
    target = torch.tensor([5, 2999], device=DEVICE)
    _assert_same(_ref_and(backend, lambda b, l, t: fe.categorical_log_prob(l, t, event_dims=0, backend=b), logits_c, target))


def test_empty_batches(backend, seed):
    mu = torch.zeros(0, 4, device=DEVICE, requires_grad=True)
    lat = fe.gaussian_latent(mu, mu, n_samples=2, backend=backend)
    assert lat.z.shape == (2, 0, 4) and lat.kl.shape == (0,)
    lat.log_q.sum().backward()
    assert fe.bernoulli_log_prob(torch.zeros(0, 3, device=DEVICE), torch.zeros(3, device=DEVICE), backend=backend).shape == (0,)


def test_empty_batches_with_learnable_shared_parameters(backend):
    """A learnable shared logvar and DReG's regenerated noise on an empty batch."""
    logvar = torch.zeros(3, device=DEVICE, requires_grad=True)
    mean = torch.zeros(0, 3, device=DEVICE, requires_grad=True)
    fe.gaussian_log_prob(mean, torch.zeros(0, 3, device=DEVICE), logvar=logvar, backend=backend).sum().backward()
    assert torch.equal(logvar.grad, torch.zeros(3, device=DEVICE))
    mu = torch.zeros(0, 4, device=DEVICE, requires_grad=True)
    with fe.use_backend(backend):
        lat = fe.gaussian_latent(mu, torch.zeros(0, 4, device=DEVICE), n_samples=2)
        fe.elbo(lat.z.sum(-1) * 0, lat, estimator="dreg").sum().backward()
    assert mu.grad.shape == (0, 4)


def test_latent_with_explicit_noise_and_no_latent_dims(backend):
    """D = 0 with an explicit (empty) eps and a prior: nothing to draw, nothing to read; sums over
    nothing (the CUDA kernels once read the seed through a null pointer here)."""
    mu = torch.zeros(3, 1, 5, 0, dtype=torch.float64, device=DEVICE, requires_grad=True)
    prior = (torch.zeros(1, 5, 1, dtype=torch.float64, device=DEVICE), torch.zeros((), dtype=torch.float64, device=DEVICE))
    for kwargs in ({}, {"prior": prior}, {"prior": prior, "n_samples": 2}):
        eps = torch.zeros((2,) * ("n_samples" in kwargs) + tuple(mu.shape), dtype=torch.float64, device=DEVICE)
        lat = fe.gaussian_latent(mu, mu, stl=True, eps=eps, backend=backend, **kwargs)
        want = fe.gaussian_latent(mu, mu, stl=True, eps=eps, backend="reference", **kwargs)
        for a, b in zip(lat, want):
            assert a.shape == b.shape and torch.equal(a, b)
        lat.log_q.sum().backward()
        assert torch.equal(mu.grad, torch.zeros_like(mu))


@pytest.mark.parametrize("classes", [2, 4, 5, 8, 40])
def test_categorical_with_an_infinite_logit(backend, classes):
    """A +inf logit makes the logsumexp inf - inf: NaN, as the reference, on every column and for
    every row length (the CUDA kernel's online logsumexp once gave -inf for a short row)."""
    for column in (0, 1, classes - 1):
        logits = torch.zeros(2, classes, dtype=torch.float64, device=DEVICE)
        logits[0, column] = float("inf")
        target = torch.tensor([0, 1], device=DEVICE)
        value = fe.categorical_log_prob(logits, target, event_dims=0, backend=backend)
        want = fe.categorical_log_prob(logits, target, event_dims=0, backend="reference")
        assert torch.isnan(want[0]) and torch.isnan(value[0]), (column, value)
        torch.testing.assert_close(value, want, equal_nan=True)


@pytest.mark.parametrize("estimator", ["elbo", "iwae"])
def test_nan_in_nan_out_of_the_estimators(backend, estimator):
    """A NaN log-likelihood gives a NaN value even when every other log-weight is -inf."""
    log_lik = torch.tensor([[float("nan"), 0.0], [float("-inf"), float("-inf")]], device=DEVICE)
    mu = torch.zeros(2, 3, device=DEVICE)
    lat = fe.gaussian_latent(mu, mu, n_samples=2, eps=torch.zeros(2, 2, 3, device=DEVICE), backend=backend)
    with fe.use_backend(backend):
        value = fe.elbo(log_lik, lat, kl="mc", estimator=estimator)
    with fe.use_backend("reference"):
        want = fe.elbo(log_lik, lat, kl="mc", estimator=estimator)
    assert torch.isnan(value[0]) and torch.isnan(want[0])
    torch.testing.assert_close(value, want, equal_nan=True)


def test_gaussian_logvar_gradient_at_infinite_logvar(backend):
    """d/dv of -((x - m)^2 e^-v + v + log 2 pi)/2 at v = +inf is -1/2 (the reference's), not the NaN
    of 0 * inf in ((b e^(v/2))^2 - 1)/2 with b = (x - m) e^-v = 0; at v = -inf it is inf (and NaN
    where x = m, as the reference)."""
    mean = torch.tensor([[0.5, -1.0, 2.0, 0.0]], device=DEVICE, requires_grad=True)
    x = torch.tensor([[1.0, 1.0, 1.0, 0.0]], device=DEVICE)
    grads = []
    for name in ("reference", backend):
        logvar = torch.tensor([[math.inf, 0.3, -math.inf, -math.inf]], device=DEVICE, requires_grad=True)
        out = fe.gaussian_log_prob(mean, x, logvar=logvar, backend=name)
        grads.append(torch.autograd.grad(out.sum(), logvar)[0])
    want, got = grads
    assert want[0, 0] == -0.5 and got[0, 0] == -0.5
    torch.testing.assert_close(got, want, equal_nan=True)
