"""What the "triton" backend promises beyond matching the reference (tests/test_backends_vs_reference.py):
its torch.library registration (opcheck, torch.compile fullgraph), its noise (forward eps ==
backward eps, independent of block size, reproducible), broadcast x without copies, strided and
batched layouts, 64-bit offsets, and clear errors. On CPU these run in Triton's interpreter."""
import math

import pytest
import torch

import fastelbo as fe
from helpers import DEVICE, generator, needs_triton, rand, randn

pytestmark = [
    needs_triton,
    pytest.mark.skipif(fe.backends()["triton"] != "available", reason="backend 'triton' is unavailable here"),
]


def _leaf(t):
    return t.detach().requires_grad_(True)


def _ref_and_triton(fn, *inputs):
    """fn(backend, *leaves) -> tensor; the values and gradients on both backends (float64)."""
    results = []
    for backend in ("reference", "triton"):
        leaves = [_leaf(t) if t.is_floating_point() else t for t in inputs]
        out = fn(backend, *leaves)
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


# ---- torch.library registration ----

def _opcheck_cases(seed):
    from fastelbo.triton_backend import estimators, latent, likelihoods

    g = generator(seed)
    mu, s = randn(g, 3, 5, dtype=torch.float32), rand(g, 3, 5, dtype=torch.float32, low=-1, high=1)
    pm, ps = randn(g, 5, dtype=torch.float32), rand(g, 5, dtype=torch.float32, low=-1, high=1)
    seed_t = fe.rng.draw_seed(mu.device, g)
    eps = randn(g, 2, 3, 5, dtype=torch.float32)
    logits, x = randn(g, 2, 3, 7, dtype=torch.float32), (rand(g, 3, 7) < 0.5).float()
    ll, lq, lp, kl = (randn(g, 4, 3, dtype=torch.float32) for _ in range(4))
    rg = lambda t: _leaf(t)  # noqa: E731
    return [
        (latent.latent_op, (rg(mu), rg(s), None, None, None, seed_t, 0, 2, False)),
        (latent.latent_op, (rg(mu), rg(s), rg(pm), rg(ps), None, seed_t, 2, 1, True)),
        (latent.latent_op, (rg(mu), rg(s), rg(pm), rg(ps), eps, None, 1, 2, False)),
        (latent.kl_op, (rg(mu), rg(s), rg(pm), rg(ps), 0, True)),
        (latent.kl_op, (rg(mu), rg(s), None, None, 2, False)),
        (likelihoods.binary_op, (rg(logits), x, 1, False, True)),
        (likelihoods.binary_op, (rg(logits), x, 2, True, True)),
        (likelihoods.gaussian_op, (rg(logits), x, rg(pm[:1].expand(7).clone()), 0.0, 1, True)),
        (likelihoods.gaussian_op, (rg(logits), x, None, -0.3, 1, True)),
        (likelihoods.categorical_op, (rg(logits), torch.randint(0, 7, (3,), generator=g, device=g.device), 1, True)),
        (estimators.estimate_op, (rg(ll), rg(lq), rg(lp), rg(kl[0]), 0, 0.7)),
        (estimators.estimate_op, (rg(ll), lq, lp, rg(kl[0]), 1, 1.0)),
        (estimators.estimate_op, (rg(ll), rg(lq), rg(lp), kl[0], 2, 1.0)),
    ]


@pytest.mark.parametrize("index", range(13))
def test_opcheck(index, seed):
    op, args = _opcheck_cases(seed)[index]
    torch.library.opcheck(op, args)


def _vae_step(x, mu, scale, weight, prior_mu, backend, estimator):
    lat = fe.gaussian_latent(mu, scale, n_samples=3, prior=(prior_mu, torch.zeros_like(prior_mu)), backend=backend)
    log_lik = fe.bernoulli_log_prob(lat.z @ weight, x, backend=backend)
    with fe.use_backend(backend):
        return fe.elbo(log_lik, lat, kl="mc", estimator=estimator).mean()


@pytest.mark.parametrize("estimator", ["elbo", "iwae", "dreg"])
def test_compile_fullgraph_forward_and_backward(estimator, seed):
    """The whole ELBO step compiles without a graph break; values and gradients match eager."""
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
        value = fn(x, *params, "triton", estimator)
        results.append((value.detach(), torch.autograd.grad(value, params)))
    (v_eager, g_eager), (v_comp, g_comp) = results
    torch.testing.assert_close(v_comp, v_eager)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b)


# ---- noise ----

def test_forward_eps_equals_backward_eps(seed):
    """z = mu + sigma eps forward; d(c . z)/d logvar = c eps sigma / 2 backward, with eps regenerated."""
    g = generator(seed)
    mu, s = _leaf(randn(g, 6, 11)), _leaf(rand(g, 6, 11, low=-1, high=1))
    lat = fe.gaussian_latent(mu, s, n_samples=3, generator=g, backend="triton")
    sigma = torch.exp(s.detach() / 2)
    eps_forward = (lat.z.detach() - mu.detach()) / sigma
    c = randn(g, 3, 6, 11)
    (grad_s,) = torch.autograd.grad((lat.z * c).sum(), s)
    eps_backward = grad_s / (sigma / 2)
    torch.testing.assert_close(eps_backward, (c * eps_forward).sum(0), atol=1e-12, rtol=1e-12)
    (grad_s_one,) = torch.autograd.grad(fe.gaussian_latent(mu, s, generator=generator(seed + 1), backend="triton").z.sum(), s)
    z_one = fe.gaussian_latent(mu, s, generator=generator(seed + 1), backend="triton").z.detach()
    torch.testing.assert_close(grad_s_one / (sigma / 2), (z_one - mu.detach()) / sigma, atol=1e-12, rtol=1e-12)


def test_same_seed_same_z_and_the_reference_eps(seed):
    mu, s = torch.zeros(5, 9, dtype=torch.float64, device=DEVICE), torch.zeros(5, 9, dtype=torch.float64, device=DEVICE)
    a = fe.gaussian_latent(mu, s, n_samples=2, generator=generator(seed), backend="triton").z
    b = fe.gaussian_latent(mu, s, n_samples=2, generator=generator(seed), backend="triton").z
    ref = fe.gaussian_latent(mu, s, n_samples=2, generator=generator(seed), backend="reference").z
    assert torch.equal(a, b)
    torch.testing.assert_close(a, ref, atol=1e-13, rtol=1e-13)  # float64 noise: same to rounding
    torch.manual_seed(seed)
    c = fe.gaussian_latent(mu.float(), s.float(), backend="triton").z
    torch.manual_seed(seed)
    d = fe.gaussian_latent(mu.float(), s.float(), backend="triton").z
    assert torch.equal(c, d)


def test_z_independent_of_block_size(seed, monkeypatch):
    from fastelbo.triton_backend import _common

    g = generator(seed)
    mu, s = randn(g, 37, 13, dtype=torch.float32), rand(g, 37, 13, dtype=torch.float32, low=-1, high=1)
    seed_t = fe.rng.draw_seed(mu.device, g)
    from fastelbo.triton_backend.latent import latent_op

    results = []
    for tile in (16, 64, 4096):  # 1, 4 and 64 rows per program
        monkeypatch.setattr(_common, "TILE_ELEMENTS", tile)
        results.append(latent_op(mu, s, None, None, None, seed_t, 0, 2, False))
    for other in results[1:]:
        assert torch.equal(other[0], results[0][0])
        torch.testing.assert_close(other[1], results[0][1], atol=1e-5, rtol=0)


def test_noise_moments_and_ks_from_the_latent_kernel():
    """eps = z for mu = 0, sigma = 1: the kernel's noise is standard normal (p = 1e-4 thresholds)."""
    zeros = torch.zeros(512, 16, device=DEVICE)
    eps = fe.gaussian_latent(zeros, zeros, n_samples=2, generator=generator(20261123), backend="triton").z
    eps = eps.double().flatten()
    n = eps.numel()
    assert abs(eps.mean()) < 3.9 / math.sqrt(n)
    assert abs(eps.var() - 1) < 3.9 * math.sqrt(2 / n)
    sorted_eps, _ = torch.sort(eps.cpu())
    cdf = 0.5 * (1 + torch.erf(sorted_eps / math.sqrt(2)))
    i = torch.arange(1, n + 1, dtype=torch.float64)
    assert torch.maximum(i / n - cdf, cdf - (i - 1) / n).max() < 2.23 / math.sqrt(n)


# ---- layouts ----

def test_broadcast_x_is_read_in_place():
    from fastelbo.triton_backend._layout import plan

    logits = torch.zeros(4, 3, 7)
    x = torch.zeros(3, 7)
    (_, x_planned), layout = plan([logits, x.expand(logits.shape)], 1)
    assert x_planned.data_ptr() == x.data_ptr() and x_planned.stride() == (0, 7, 1)
    assert (layout.rows, layout.cols) == (12, 7)
    assert layout.strides[1] == (0, 0, 7, 1)


def _offsets_by_formula(layout, i):
    s0, s1, s2, sc = layout.strides[i]
    out = []
    for r in range(layout.rows):
        i2, rest = r % layout.n2, r // layout.n2
        base = (rest // layout.n1) * s0 + (rest % layout.n1) * s1 + i2 * s2
        out += [base + c * sc for c in range(layout.cols)]
    return out


@pytest.mark.parametrize("make,event_dims", [
    (lambda: torch.zeros(2, 3, 4, 5).transpose(0, 2), 1),
    (lambda: torch.zeros(6, 10)[:, ::2], 1),
    (lambda: torch.zeros(5).expand(2, 3, 5), 1),
    (lambda: torch.zeros(3, 1, 5).expand(3, 4, 5), 2),
    (lambda: torch.zeros(2, 3, 4, 5, 6)[:, :, ::2, :, ::3], 1),
    (lambda: torch.zeros(4, 5, 6).permute(2, 0, 1), 2),
    (lambda: torch.zeros(2, 3, 4, 5, 6).permute(3, 1, 0, 2, 4), 1),  # four row strides: copied
])
def test_layout_offsets_address_every_element(make, event_dims):
    """The offsets the kernels compute (row_offset + col * stride) are the tensor's own offsets."""
    from fastelbo.triton_backend._layout import plan

    t = make()
    (planned,), layout = plan([t], event_dims)
    want = torch.as_strided(torch.arange(planned.storage_offset() + 10**4), planned.shape, planned.stride(),
                            planned.storage_offset()).flatten().tolist()
    got = [planned.storage_offset() + o for o in _offsets_by_formula(layout, 0)]
    assert got == want


try:
    import triton
    import triton.language as tl

    from fastelbo.triton_kernels.math import row_offset

    @triton.jit
    def _row_offset_kernel(rows_ptr, out_ptr, n1, n2, s0, s1, s2):
        rows = tl.load(rows_ptr + tl.arange(0, 4))
        tl.store(out_ptr + tl.arange(0, 4), row_offset(rows, n1, n2, s0, s1, s2))
except ImportError:  # the module is skipped without triton
    pass


def test_row_offset_is_64_bit():
    """Rows and strides past 2^31: the jit helper's arithmetic stays exact (no int32 wrap)."""
    rows = torch.tensor([0, 2**31 + 5, 3 * 2**32 + 7, 2**40 + 123], dtype=torch.int64, device=DEVICE)
    out = torch.empty_like(rows)
    n1, n2, s0, s1, s2 = 3, 2**20 + 1, 2**33 + 17, 2**22 + 3, 5
    _row_offset_kernel[(1,)](rows, out, n1, n2, s0, s1, s2)
    want = []
    for r in rows.tolist():
        i2, rest = r % n2, r // n2
        want.append((rest // n1) * s0 + (rest % n1) * s1 + i2 * s2)
    assert out.tolist() == want


@pytest.mark.parametrize("param", ["logvar", "softplus"])
def test_latent_on_strided_batched_inputs(param, seed):
    g = generator(seed)
    mu = randn(g, 5, 2, 3, 6).transpose(0, 2)  # (3, 2, 5, 6), non-contiguous
    s = rand(g, 3, 2, 5, 12, low=-1, high=1)[..., ::2]  # strided last dim
    pm, ps = randn(g, 2, 1, 6), rand(g, 6, low=-0.5, high=0.5)
    eps = randn(g, 2, 3, 2, 5, 6)

    def fn(backend, mu, s, pm, ps):
        lat = fe.gaussian_latent(mu, s, param=param, n_samples=2, prior=(pm, ps), eps=eps, backend=backend)
        return torch.cat([lat.z.flatten(), lat.log_q.flatten(), lat.log_p.flatten(), lat.kl.flatten()])

    _assert_same(_ref_and_triton(fn, mu, s, pm, ps))


def test_kl_on_strided_inputs_with_broadcast_prior(seed):
    g = generator(seed)
    mu, s = randn(g, 4, 3, 9)[:, 1], rand(g, 9, 4, low=-1, high=1).T
    pm, ps = randn(g, 1), rand(g, 4, 1, low=-1, high=1)

    def fn(backend, mu, s, pm, ps):
        return fe.gaussian_kl(mu, s, param="log_std", prior=(pm, ps), per_dim=True, backend=backend)

    _assert_same(_ref_and_triton(fn, mu, s, pm, ps))


@pytest.mark.parametrize("x_dtype", [torch.bool, torch.uint8, torch.float64])
@pytest.mark.parametrize("continuous", [False, True])
def test_binary_likelihoods_broadcast_x_of_every_dtype(x_dtype, continuous, seed):
    g = generator(seed)
    logits = randn(g, 7, 3, 2, 4, scale=4.0).transpose(1, 2)  # (7, 2, 3, 4), strided
    x = (rand(g, 3, 4) < 0.5).to(x_dtype)
    op = fe.continuous_bernoulli_log_prob if continuous else fe.bernoulli_log_prob

    def fn(backend, logits, x):
        return op(logits, x, event_dims=2, backend=backend)

    _assert_same(_ref_and_triton(fn, logits, x))


def test_gradients_reach_a_float_x_and_a_broadcast_logvar(seed):
    g = generator(seed)
    mean, x, logvar = randn(g, 3, 4, 5), randn(g, 4, 5), rand(g, 5, low=-1, high=1)
    _assert_same(_ref_and_triton(lambda b, m, x, v: fe.gaussian_log_prob(m, x, logvar=v, backend=b), mean, x, logvar))
    logits, xb = randn(g, 3, 4, 5), rand(g, 4, 5)
    _assert_same(_ref_and_triton(lambda b, l, x: fe.bernoulli_log_prob(l, x, backend=b), logits, xb))


def test_long_rows_and_many_classes_loop_over_blocks(seed):
    """Rows longer than one block (likelihoods loop over N) and C > one block (online logsumexp)."""
    g = generator(seed)
    logits, x = randn(g, 2, 5000, scale=3.0), rand(g, 5000)
    _assert_same(_ref_and_triton(lambda b, l, x: fe.continuous_bernoulli_log_prob(l, x, backend=b), logits, x))
    logits_c = randn(g, 2, 3000, scale=3.0)
    target = torch.tensor([5, 2999], device=DEVICE)
    _assert_same(_ref_and_triton(lambda b, l, t: fe.categorical_log_prob(l, t, event_dims=0, backend=b), logits_c, target))


def test_empty_batches(seed):
    mu = torch.zeros(0, 4, device=DEVICE, requires_grad=True)
    lat = fe.gaussian_latent(mu, mu, n_samples=2, backend="triton")
    assert lat.z.shape == (2, 0, 4) and lat.kl.shape == (0,)
    lat.log_q.sum().backward()
    assert fe.bernoulli_log_prob(torch.zeros(0, 3, device=DEVICE), torch.zeros(3, device=DEVICE), backend="triton").shape == (0,)


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    from fastelbo.triton_backend._common import check_device

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="runs on CUDA tensors"):
        check_device(torch.zeros(2))
    if not torch.cuda.is_available():
        assert "needs a CUDA GPU" in fe.backends()["triton"]
        with pytest.raises(RuntimeError, match="'triton' is unavailable: needs a CUDA GPU"):
            fe.bernoulli_log_prob(torch.zeros(2, 3), torch.zeros(2, 3), backend="triton")
