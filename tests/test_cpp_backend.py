"""What the C++ backends promise beyond matching the reference (tests/test_backends_vs_reference.py)
and the promises of every fused backend (tests/test_fused_backends.py): opcheck of every operator,
their autograd in C++ (a first-order backward runs no Python),
the noise of the torch-free core equal to fastelbo.rng (words bit for bit, normals to rounding) and
to the Triton kernels', results independent of the thread count, bitwise reproducible, and a
clear fallback when the library cannot be built. Runs against "cpu" (and "cuda" where a GPU is)."""
import os
import sys
import types

import pytest
import torch

import fastelbo as fe
from fastelbo import rng
from helpers import DEVICE, HAS_TRITON, generator, rand, randn

CPP = "cuda" if DEVICE == "cuda" else "cpu"
pytestmark = pytest.mark.skipif(fe.backends()[CPP] != "available", reason=f"backend {CPP!r} is unavailable here")


def _ops():
    import fastelbo.cpp_backend.library  # noqa: F401 -- loads the library, registers the fakes

    return torch.ops.fastelbo


def _leaf(t):
    return t.detach().requires_grad_(True)


def _python_files_called(fn) -> set:
    """The files of the Python functions that fn() calls (sys.setprofile "call" events)."""
    files = set()

    def profile(frame, event, arg):
        if event == "call":
            files.add(os.path.normpath(frame.f_code.co_filename))

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return files


def _every_op(seed):
    """(leaves, step): step() runs every differentiable op, every input asking for its gradient, and
    backward through them."""
    ops = _ops()
    g = generator(seed)
    f32 = dict(dtype=torch.float32)
    mu, s = _leaf(randn(g, 3, 5, **f32)), _leaf(rand(g, 3, 5, low=-1, high=1, **f32))
    pm, ps = _leaf(randn(g, 5, **f32)), _leaf(rand(g, 3, 5, low=-1, high=1, **f32))
    logits, x = _leaf(randn(g, 3, 7, **f32)), _leaf(rand(g, 3, 7, **f32))
    mean, logvar = _leaf(randn(g, 2, 3, 7, **f32)), _leaf(rand(g, 7, low=-1, high=1, **f32))
    cat_logits, target = _leaf(randn(g, 3, 7, **f32)), torch.randint(0, 7, (3,), generator=g, device=g.device)
    seed_t = rng.draw_seed(mu.device, g)
    leaves = [mu, s, pm, ps, logits, x, mean, logvar, cat_logits]

    def step():
        z, log_q, log_p, kl, _ = ops.gaussian_latent(mu, s, pm, ps, None, seed_t, 0, 2, False)
        per_dim = ops.gaussian_kl(mu, s, None, None, 2, True)
        ll, _ = ops.bernoulli_log_prob(z.mean(-1, keepdim=True) + logits, x, 1, True)
        cb, _ = ops.continuous_bernoulli_log_prob(logits, x, 1, True)
        gl, _ = ops.gaussian_log_prob(mean, x, logvar, 0.0, 1, True)
        cl, _ = ops.categorical_log_prob(cat_logits, target, 0, True)
        # (An input given no gradient by one op and a gradient by another, as the analytic elbo's log_q,
        # breaks compiled autograd's sum of the two: a PyTorch limitation, with Python autograd too.)
        terms = [ops.elbo(ll + gl, log_q, log_p, kl.detach(), mode, 0.5)[0] for mode in (0, 2)]
        terms.append(ops.elbo(ll + gl, log_q.detach(), log_p.detach(), kl, 1, 0.5)[0])
        (sum(t.sum() for t in terms) + per_dim.sum() + cb.sum() + cl.sum()).backward()

    return leaves, step


def test_first_order_autograd_runs_no_python(seed):
    """The ops' autograd is C++ at the Autograd key (csrc/binding/autograd.cpp): forward and backward
    through every differentiable op call no Python of fastelbo nor of torch.library's Python
    autograd; and every gradient arrives."""
    leaves, step = _every_op(seed)
    step()  # warm-up: first calls may import or look things up
    for t in leaves:
        t.grad = None
    called = _python_files_called(step)
    assert all(t.grad is not None for t in leaves)
    package = os.path.dirname(os.path.abspath(fe.__file__)) + os.sep
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
    python_autograd = [os.path.join(torch_dir, "_library"), os.path.join(torch_dir, "autograd", "function.py")]
    assert not [f for f in called if f.startswith(package) or any(f.startswith(p) for p in python_autograd)]


def test_compiled_autograd_gives_the_same_gradients(seed):
    """torch._dynamo.compiled_autograd traces the C++ autograd nodes (none marks an output
    non-differentiable: compiled autograd asserts on that for C++ Functions)."""
    from torch._dynamo import compiled_autograd

    leaves, step = _every_op(seed)
    step()
    eager = [t.grad for t in leaves]
    for t in leaves:
        t.grad = None
    torch._dynamo.reset()
    with compiled_autograd._enable(torch.compile(backend="eager")):
        step()
    for a, t in zip(eager, leaves):
        torch.testing.assert_close(t.grad, a)


def _one_op(name, seed):
    """(leaf, call) for op `name`: call(leaf) runs the op on the C++ library, the leaf asking for its
    gradient, and returns the op's first output."""
    ops = _ops()
    g = generator(seed)
    x, target = rand(g, 3, 7), torch.randint(0, 7, (3,), generator=g, device=g.device)
    s, seed_t = rand(g, 3, 7, low=-1, high=1), rng.draw_seed(DEVICE, g)
    calls = {
        "gaussian_latent": lambda t: ops.gaussian_latent(t, s, None, None, None, seed_t, 0, 0, False)[1],
        "gaussian_kl": lambda t: ops.gaussian_kl(t, s, None, None, 0, False),
        "bernoulli_log_prob": lambda t: ops.bernoulli_log_prob(t, x, 1, True)[0],
        "continuous_bernoulli_log_prob": lambda t: ops.continuous_bernoulli_log_prob(t, x, 1, True)[0],
        "gaussian_log_prob": lambda t: ops.gaussian_log_prob(t, x, None, 0.5, 1, True)[0],
        "categorical_log_prob": lambda t: ops.categorical_log_prob(t, target, 0, True)[0],
        "elbo": lambda t: ops.elbo(t, t * 0.5, t * 0.25, t[0], 2, 1.0)[0],  # IWAE, K = 3
        "discretized_logistic_mixture_log_prob": lambda t: ops.discretized_logistic_mixture_log_prob(
            t, pixels, 1, 8, 0, True)[0],  # one component: params (3, 10), x (3, 3) in [-1, 1]
    }
    pixels = torch.randint(0, 256, (3, 3), generator=g, device=g.device).to(torch.float32) / 127.5 - 1
    leaf = randn(g, 3, 10) if name == "discretized_logistic_mixture_log_prob" else randn(g, 3, 7)
    return _leaf(leaf), calls[name]


NODE_OPS = ["gaussian_latent", "gaussian_kl", "bernoulli_log_prob", "continuous_bernoulli_log_prob",
            "gaussian_log_prob", "categorical_log_prob", "elbo", "discretized_logistic_mixture_log_prob"]


@pytest.mark.parametrize("name", NODE_OPS)
def test_the_autograd_nodes_keep_autograd_s_guarantees(name, seed):
    """The ops' graph nodes are written as PyTorch's generated ones (csrc/binding/node.h), so they
    must keep what a torch::autograd::Function gave for free: a second backward through a freed graph
    is an error, an input modified in place after the forward is an error, forward-mode AD is a clear
    error, and torch.func transforms refuse the op rather than differentiate it wrongly."""
    leaf, call = _one_op(name, seed)
    out = call(leaf)
    assert out.grad_fn is not None and out.grad_fn.name().endswith("Backward")
    out.sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    with pytest.raises(RuntimeError, match="second time"):
        out.sum().backward()
    out = call(leaf)
    with torch.no_grad():
        leaf.add_(0.0)  # (a new version of a saved input)
    saves_leaf = name in ("gaussian_latent", "gaussian_kl", "continuous_bernoulli_log_prob", "elbo",
                          "discretized_logistic_mixture_log_prob")
    if saves_leaf:
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.sum().backward()
    else:  # (an op that saved only its own buffer: the edit does not concern it)
        first, leaf.grad = leaf.grad, None
        out.sum().backward()
        torch.testing.assert_close(leaf.grad, first, rtol=0, atol=0)
    import torch.autograd.forward_ad as fwad

    with fwad.dual_level(), pytest.raises(RuntimeError, match=f"fastelbo::{name} has no forward-mode derivative"):
        call(fwad.make_dual(leaf.detach(), torch.ones_like(leaf)))
    with pytest.raises(RuntimeError, match="functorch"):
        torch.func.grad(lambda t: call(t).sum())(leaf.detach())


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_the_elbo_op_checks_the_shapes_of_the_terms_it_reads(mode, seed):
    """Called directly (torch.ops), the ELBO combine refuses terms of other shapes than log_lik's
    (mode 0 and 2 read log_q and log_p, mode 1 kl) instead of reading past them."""
    ops, g = _ops(), generator(seed)
    ll, lq, kl = randn(g, 4, 3), randn(g, 4, 3), randn(g, 3)
    ops.elbo(ll, lq, lq, kl, mode, 1.0)  # (K, *batch) terms, (*batch) kl: accepted
    wrong = (ll, lq[:, :2], lq, kl) if mode != 1 else (ll, lq, lq, kl[:2].clone())
    expected = "log_q and log_p must have log_lik's shape" if mode != 1 else "kl must have log_lik's batch shape"
    with pytest.raises(ValueError, match=expected):
        ops.elbo(*wrong, mode, 1.0)
    with pytest.raises(ValueError, match="mode must be"):
        ops.elbo(ll, lq, lq, kl, 3, 1.0)


@pytest.mark.parametrize("name", ["gaussian_latent_backward", "gaussian_kl_backward", "gaussian_log_prob_backward"])
def test_backward_kernels_are_an_error_to_differentiate(name, seed):
    """The backward kernels have an Autograd kernel (so PyTorch's fallback never warns): they run
    below autograd, and recording a graph through them is a clear error."""
    ops = _ops()
    g = generator(seed)
    mu, s, eps = randn(g, 3, 5), rand(g, 3, 5, low=-1, high=1), randn(g, 1, 3, 5)
    call = {
        "gaussian_latent_backward": lambda mu: ops.gaussian_latent_backward(None, None, None, torch.ones_like(mu[:, 0]), mu, s, None,
                                                          None, eps, None, 0, 1, False),
        "gaussian_kl_backward": lambda mu: ops.gaussian_kl_backward(torch.ones_like(mu[:, 0]), mu, s, None, None, 0, False),
        "gaussian_log_prob_backward": lambda mu: ops.gaussian_log_prob_backward(
            torch.ones_like(mu[:, 0]), mu, s, 0.0, 1, True),
    }[name]
    first = call(mu)  # nothing asks for a gradient: the kernel
    with torch.no_grad():
        second = call(_leaf(mu))
    for a, b in zip(first, second):
        assert torch.equal(a, b) and not b.requires_grad
    with pytest.raises(RuntimeError, match=f"fastelbo::{name} has no derivative"):
        call(_leaf(mu))


def test_philox_words_match_bit_for_bit(seed):
    g = generator(seed)
    counter = torch.randint(0, 2**32, (4, 300), generator=g, device=DEVICE, dtype=torch.int64)
    key = torch.randint(0, 2**32, (2, 300), generator=g, device=DEVICE, dtype=torch.int64)
    counter[:, 0], key[:, 0] = 0, 0  # the Random123 known-answer vector
    counter[:, 1], key[:, 1] = 0xFFFFFFFF, 0xFFFFFFFF
    got = _ops().philox_words(counter, key)
    assert torch.equal(got, torch.stack(rng.philox4x32_10(tuple(counter), tuple(key))))
    assert [hex(int(w)) for w in got[:, 0]] == ["0x6627e8d5", "0xe169c58d", "0xbc57ac4c", "0x9b00dbd8"]


@pytest.mark.parametrize("n_samples,n_rows,dim", [(1, 5, 1), (3, 7, 13), (2, 33, 4), (1, 3, 260)])
def test_noise_matches_the_reference_scheme(n_samples, n_rows, dim, seed):
    s = rng.draw_seed(torch.device(DEVICE), generator(seed))
    torch.testing.assert_close(_ops().normal_noise(s, n_samples, n_rows, dim, False),
                               rng.normal_noise(s, n_samples, n_rows, dim), rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(_ops().normal_noise(s, n_samples, n_rows, dim, True),
                               rng.normal_noise(s, n_samples, n_rows, dim, torch.float64), rtol=1e-14, atol=1e-14)


@pytest.mark.skipif(not HAS_TRITON or fe.backends()["triton"] != "available", reason="backend 'triton' is unavailable")
def test_same_generator_state_same_eps_as_triton(seed):
    """The cross-backend promise of docs/RNG.md: one generator state, one eps, on cpu and triton."""
    from fastelbo.triton_backend.rng import philox_words, normal_noise

    g = generator(seed)
    counter = torch.randint(0, 2**32, (4, 64), generator=g, device=DEVICE, dtype=torch.int64)
    key = torch.randint(0, 2**32, (2, 64), generator=g, device=DEVICE, dtype=torch.int64)
    assert torch.equal(_ops().philox_words(counter, key), philox_words(counter, key))
    s = rng.draw_seed(torch.device(DEVICE), g)
    torch.testing.assert_close(_ops().normal_noise(s, 2, 6, 9, False), normal_noise(s, 2, 6, 9), rtol=2e-6, atol=2e-6)
    mu = torch.zeros(6, 9, device=DEVICE)
    z = {b: fe.gaussian_latent(mu, mu, n_samples=2, generator=generator(seed), backend=b).z for b in (CPP, "triton")}
    torch.testing.assert_close(z[CPP], z["triton"], rtol=2e-6, atol=2e-6)


def _latent_step(seed, prior_shape):
    """Values and every gradient of one latent + KL call with a learnable prior."""
    g = generator(seed)
    mu, s = _leaf(randn(g, 300, 37, dtype=torch.float32)), _leaf(rand(g, 300, 37, low=-1, high=1, dtype=torch.float32))
    prior = None if prior_shape is None else (_leaf(randn(g, *prior_shape, dtype=torch.float32)),
                                              _leaf(rand(g, *prior_shape, dtype=torch.float32)))
    lat = fe.gaussian_latent(mu, s, n_samples=3, prior=prior, generator=generator(seed + 1), backend=CPP)
    kl = fe.gaussian_kl(mu, s, prior=prior, per_dim=True, backend=CPP)
    out = [lat.z, lat.log_q, lat.log_p, lat.kl, kl]
    cots = [randn(generator(seed + 2 + i), *o.shape, dtype=o.dtype) for i, o in enumerate(out)]
    grads = torch.autograd.grad(out, [mu, s, *(prior or ())], cots)
    return [o.detach() for o in out] + list(grads)


@pytest.mark.parametrize("prior_shape", [(37,), (300, 37), None])
def test_bitwise_reproducible_and_independent_of_the_thread_count(prior_shape, seed):
    """Same inputs and seed: the same bits, with 1 thread or several (rows are split in fixed blocks;
    a shared prior's gradient is summed per block, then over blocks, in a fixed order). D = 37 puts
    partial vectors inside the short-row path's blocks, whose starts must not follow the threads'."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _latent_step(seed, prior_shape)
        torch.set_num_threads(max(2, threads))
        many = _latent_step(seed, prior_shape)
        again = _latent_step(seed, prior_shape)
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(one, many, again):
        assert torch.equal(a, b) and torch.equal(b, c)


@pytest.mark.parametrize("reduce_z", ["sum", "row mean"])
@pytest.mark.parametrize("n_samples", [None, 3])
@pytest.mark.parametrize("with_prior", [False, True])
def test_a_broadcast_gradient_of_z_on_short_rows(reduce_z, n_samples, with_prior, seed):
    """z.sum()'s gradient (every stride 0) and z.mean(-1)'s (one value per row) on short rows: the
    C++ backward reads them through their strides (no copy); the gradients equal the reference's."""
    g = generator(seed)
    leaves = [_leaf(randn(g, 70, 37, dtype=torch.float64)) for _ in range(4 if with_prior else 2)]
    grads = {}
    for backend in (CPP, "reference"):
        lat = fe.gaussian_latent(leaves[0], leaves[1], n_samples=n_samples,
                                 prior=tuple(leaves[2:]) if with_prior else None,
                                 generator=generator(seed + 1), backend=backend)
        z_term = lat.z.sum() if reduce_z == "sum" else (lat.z.mean(-1) * torch.arange(70.0, dtype=torch.float64)).sum()
        grads[backend] = torch.autograd.grad(3.0 * z_term + lat.kl.sum(), leaves)
    for a, b in zip(grads[CPP], grads["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gaussian_logvar_gradient_shared_and_per_element(seed):
    """The logvar gradient summed in the backward kernel (shared logvar) or kept per element."""
    g = generator(seed)
    mean, x = randn(g, 4, 3, 50), randn(g, 3, 50)
    for shape in [(50,), (1, 1, 50), (3, 1), (4, 3, 50), (4, 1, 1)]:
        logvar = rand(g, *shape, low=-2, high=2)
        results = []
        for backend in ("reference", CPP):
            m, v = _leaf(mean), _leaf(logvar)
            out = fe.gaussian_log_prob(m, x, logvar=v, backend=backend)
            results.append(torch.autograd.grad(out, [m, v], torch.linspace(-1, 2, out.numel(), dtype=out.dtype, device=DEVICE).view(out.shape)))
        for a, b in zip(*results):
            torch.testing.assert_close(b, a, atol=1e-11, rtol=1e-11)


def test_mixed_input_dtypes_compute_like_the_reference(seed):
    """float16 logits with a float32 x, float32 mu with a float64 prior: the reference's dtypes and values."""
    g = generator(seed)
    logits, x = randn(g, 3, 8, dtype=torch.float16), rand(g, 8, dtype=torch.float32)
    for backend_out in (fe.bernoulli_log_prob(logits, x, backend=CPP), fe.continuous_bernoulli_log_prob(logits, x, backend=CPP)):
        assert backend_out.dtype == torch.float32
    torch.testing.assert_close(fe.bernoulli_log_prob(logits, x, backend=CPP), fe.bernoulli_log_prob(logits, x, backend="reference"))
    mu, s = randn(g, 4, 6, dtype=torch.float32), rand(g, 4, 6, dtype=torch.float32)
    prior = (randn(g, 6), rand(g, 6))
    for backend in ("reference", CPP):
        lat = fe.gaussian_latent(mu, s, prior=prior, eps=torch.ones_like(mu), backend=backend)
        assert lat.z.dtype == torch.float32 and lat.log_p.dtype == torch.float64
    ref = fe.gaussian_latent(mu, s, prior=prior, eps=torch.ones_like(mu), backend="reference")
    cpp = fe.gaussian_latent(mu, s, prior=prior, eps=torch.ones_like(mu), backend=CPP)
    for a, b in zip(cpp, ref):
        torch.testing.assert_close(a, b)


def test_inputs_are_never_modified(seed):
    g = generator(seed)
    mu, s, logits, x = randn(g, 5, 4), rand(g, 5, 4), randn(g, 2, 5, 9), rand(g, 5, 9)
    saved = [t.clone() for t in (mu, s, logits, x)]
    lat = fe.gaussian_latent(_leaf(mu), _leaf(s), n_samples=2, backend=CPP)
    ll = fe.bernoulli_log_prob(_leaf(logits), x, backend=CPP)
    (lat.log_q.sum() + ll.sum() + lat.z.sum()).backward()
    for a, b in zip(saved, (mu, s, logits, x)):
        assert torch.equal(a, b)


def test_a_failed_build_falls_back_to_the_reference(monkeypatch):
    """fastelbo.backends() says why; "auto" on CPU tensors then uses the reference."""
    from fastelbo import _backend

    reason = "build failed (RuntimeError: no compiler)"
    monkeypatch.setattr(_backend, "_cpp_reason", lambda name: reason)
    monkeypatch.setattr(_backend, "_RESOLVED", {})
    assert fe.backends()["cpu"] == reason
    assert _backend._resolve_choice("auto", "cpu") == "reference"
    with pytest.raises(RuntimeError, match="'cpu' is unavailable: build failed"):
        fe.bernoulli_log_prob(torch.zeros(2, 3), torch.zeros(2, 3), backend="cpu")


def test_auto_uses_the_cpp_backend_for_its_device():
    from fastelbo import _backend

    assert _backend._resolve_choice("auto", DEVICE) == CPP


def test_inductor_compiles_a_vae_step_fullgraph(seed):
    """torch.compile's default backend (inductor, which generates C++ on CPU) around the C++ ops:
    no graph break, and the values and gradients of eager (tests/test_fused_backends.py runs every
    estimator under aot_eager)."""

    def step(x, mu, s, w):
        lat = fe.gaussian_latent(mu, s, n_samples=3, backend=CPP)
        log_lik = fe.bernoulli_log_prob(lat.z @ w, x, backend=CPP)
        with fe.use_backend(CPP):
            return fe.elbo(log_lik, lat, kl="mc", estimator="iwae").mean()

    g = generator(seed)
    x = (rand(g, 8, 10, dtype=torch.float32) < 0.5).float()
    leaves = [randn(g, 8, 4, dtype=torch.float32), rand(g, 8, 4, dtype=torch.float32), randn(g, 4, 10, dtype=torch.float32)]
    results = []
    for fn in (step, torch.compile(step, fullgraph=True)):
        params = [_leaf(t) for t in leaves]
        torch.manual_seed(seed)
        if DEVICE == "cuda":
            torch.cuda.manual_seed(seed)
        value = fn(x, *params)
        results.append((value.detach(), torch.autograd.grad(value, params)))
    (v_eager, g_eager), (v_comp, g_comp) = results
    torch.testing.assert_close(v_comp, v_eager)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b)


def _ulps(actual, exact):
    """|actual - exact| in units of the float32 spacing at exact (subnormal spacing below)."""
    spacing = torch.where(exact.abs() >= 2.0**-126, exact.abs().float().double() * 2.0**-23,
                          torch.full_like(exact, 2.0**-149))
    return (actual.double() - exact).abs() / spacing


def test_float32_exp_to_an_ulp_over_its_whole_range():
    """The CPU's inline float32 exp (sigma = e^s with param="log_std": z = e^s for mu = 0,
    eps = 1) against float64, from subnormal results to overflow, and at inf, -inf, NaN."""
    s = torch.linspace(-110, 100, 400_001, dtype=torch.float32, device=DEVICE)
    s = torch.cat([s, torch.tensor([float("inf"), float("-inf"), float("nan"), 88.72, 88.73, -103.2],
                                   device=DEVICE)])
    z = fe.gaussian_latent(torch.zeros(s.numel(), 1, device=DEVICE), s.view(-1, 1), param="log_std",
                           eps=torch.ones(s.numel(), 1, device=DEVICE), backend=CPP).z.view(-1)
    exact = torch.exp(s.double())
    rounded = exact.float()
    finite = torch.isfinite(rounded) & (rounded != 0)
    assert _ulps(z[finite], exact[finite]).max() <= 2.0
    special = ~finite
    assert torch.equal(torch.isnan(z[special]), torch.isnan(rounded[special]))
    same = ~torch.isnan(rounded[special])
    torch.testing.assert_close(z[special][same], rounded[special][same], atol=2.0**-149, rtol=0)


@pytest.mark.parametrize("x", [0.0, 0.3, 1.0])
def test_float32_bernoulli_to_a_few_ulps_at_every_logit(x):
    """x l - softplus(l) in float32 (exp and the series log1p of csrc/core/math.h) against the
    float64 reference on the same float32 logits, across [-40, 40]."""
    logits = torch.linspace(-40, 40, 200_001, dtype=torch.float32, device=DEVICE).view(-1, 1)
    xs = torch.full_like(logits, x)
    got = fe.bernoulli_log_prob(logits, xs, backend=CPP)
    exact = fe.bernoulli_log_prob(logits.double(), xs.double(), backend="reference")
    assert _ulps(got, exact).max() <= 4.0


def _bad_kernel_calls(ops, device):
    """Op-level calls that the C++ kernels must refuse before they run (csrc/binding/checks.h): the
    public functions skip their Python checks on the way to these kernels."""
    mu = torch.zeros(3, 4, device=device)
    seed = torch.zeros((), dtype=torch.int64, device=device)
    logits = torch.zeros(3, 5, device=device)
    latent, binary = ops.gaussian_latent.default, ops.bernoulli_log_prob.default
    return [
        (lambda: latent(mu.long(), mu, None, None, None, seed, 0, 0, False), TypeError, "mu must be a floating"),
        (lambda: latent(mu, mu[:, :3], None, None, None, seed, 0, 0, False), ValueError, "scale must have mu's shape"),
        (lambda: latent(mu[0, 0], mu[0, 0], None, None, None, seed, 0, 0, False), ValueError, "at least 1 dim"),
        (lambda: latent(mu, mu, None, None, None, seed, 5, 0, False), ValueError, "param code 5"),
        (lambda: latent(mu, mu, None, None, None, seed, 0, -1, False), ValueError, "n_samples must be >= 0"),
        (lambda: latent(mu, mu, None, None, None, seed.float(), 0, 0, False), TypeError, "seed must be a 0-dim int64"),
        (lambda: latent(mu, mu, None, None, mu[:2], None, 0, 0, False), ValueError, "eps must have z's shape"),
        (lambda: latent(mu, mu, None, None, mu, None, 0, 2, False), ValueError, "eps must have z's shape"),
        (lambda: latent(mu, mu, mu[:, :2], mu[:, :2], None, seed, 0, 0, False), ValueError, "prior_mu of shape"),
        (lambda: latent(mu, mu, mu, None, None, seed, 0, 0, False), ValueError, "needs both prior_mu and prior_scale"),
        (lambda: binary(logits.long(), logits, 1, False), TypeError, "logits must be a floating"),
        (lambda: binary(logits, logits.long(), 1, False), TypeError, "x must be a floating-point, bool or uint8"),
        (lambda: binary(logits, logits[:, :2], 1, False), ValueError, "x of shape"),
        (lambda: binary(logits, logits, 3, False), ValueError, "event_dims=3"),
        (lambda: binary(logits, logits, -1, False), ValueError, "event_dims=-1"),
    ]


@pytest.mark.parametrize("index", range(15))
def test_kernels_check_their_arguments(index):
    call, error, pattern = _bad_kernel_calls(_ops(), DEVICE)[index]
    with pytest.raises(error, match=pattern):
        call()


def test_public_functions_name_the_argument_the_kernel_refused():
    """The public functions call the C++ kernels unchecked, and on a refusal re-check in Python, so
    the error is the public one (the argument's name, its type), raised on its own (not chained to
    the kernel's)."""
    mu = torch.zeros(3, 4, device=DEVICE)
    with pytest.raises(ValueError, match=r"scale must have mu's shape \(3, 4\)") as info:
        fe.gaussian_latent(mu, mu[:, :3], backend=CPP)
    assert info.value.__context__ is None and info.value.__cause__ is None
    with pytest.raises(TypeError, match="mu must be a torch.Tensor"):
        fe.gaussian_latent([0.0], mu, backend=CPP)
    with pytest.raises(ValueError, match="x of shape"):
        fe.bernoulli_log_prob(mu, mu[:, :3], backend=CPP)
    with pytest.raises(ValueError, match="event_dims=3 is more than") as info:
        fe.bernoulli_log_prob(mu, mu, event_dims=3, backend=CPP)
    assert info.value.__context__ is None


def test_latent_calls_with_a_prior_or_dim_go_to_the_kernels_checked_by_name():
    """Calls with a prior, n_samples or dim= take the C++-checks-first path too (no Python checks
    unless the kernel refuses); a refusal still names the public argument, and the result is the
    checked path's (validation mode forces the Python checks) bit for bit, DReG's inputs included."""
    g = torch.Generator(DEVICE).manual_seed(5)
    mu, s = (torch.randn(2, 3, 4, 5, generator=g, device=DEVICE) for _ in range(2))
    pm, ps = (torch.randn(2, 3, 4, 5, generator=g, device=DEVICE) for _ in range(2))
    cases = [dict(prior=(pm, ps)), dict(prior=[pm[0], ps[:, :, :1]], n_samples=2), dict(dim=(1, 2, 3), prior=(pm, ps)),
             dict(dim=1, n_samples=3), dict(dim=(2, 3), prior=(pm[:1], ps[:1]), param="log_std")]
    for kwargs in cases:
        torch.manual_seed(0)
        fast = fe.gaussian_latent(mu, s, backend=CPP, **kwargs)
        torch.manual_seed(0)
        was = fe.validation_enabled()
        fe.set_validation(True)
        try:
            checked = fe.gaussian_latent(mu, s, backend=CPP, **kwargs)
        finally:
            fe.set_validation(was)
        for a, b in zip(fast, checked):
            assert torch.equal(a, b), kwargs
        assert fast.inputs[-1].item() == checked.inputs[-1].item(), kwargs  # the seed DReG reads
    with pytest.raises(TypeError, match="prior must be None or a pair"):
        fe.gaussian_latent(mu, s, prior=torch.stack((pm, ps)), backend=CPP)  # unpacks, but is no pair
    with pytest.raises(ValueError, match=r"prior \(prior_mu\)"):
        fe.gaussian_latent(mu, s, prior=(pm[..., :2], ps), backend=CPP)
    with pytest.raises(ValueError, match=r"prior \(prior_scale\)"):
        fe.gaussian_latent(mu, s, dim=(1, 2, 3), prior=(pm, ps[:, :2, :, :2]), backend=CPP)
    with pytest.raises(ValueError, match="n_samples"):
        fe.gaussian_latent(mu, s, n_samples=0, backend=CPP)
    with pytest.raises(ValueError, match="param"):
        fe.gaussian_latent(mu, s, dim=(1, 2), param="std", backend=CPP)
    with pytest.raises(ValueError, match="dim"):
        fe.gaussian_latent(mu, s, dim=(1, 1), prior=(pm, ps), backend=CPP)


def test_the_analytic_elbo_shortcut_still_resolves_an_explicit_backend(monkeypatch):
    """fe.elbo(kl="analytic") with one sample is a native subtraction, but an explicit backend that
    is unknown, unavailable or on another device is still the error it is on the other paths."""
    import fastelbo._backend as registry

    # "cuda" on CUDA tensors only, as without FASTELBO_CUDA_SIM (whose "cuda" takes CPU tensors).
    monkeypatch.setitem(registry._DEVICE_TYPE, "cuda", "cuda")
    monkeypatch.setattr(registry, "_RESOLVED", {})
    mu = torch.zeros(3, 4, device=DEVICE)
    lat = fe.gaussian_latent(mu, mu, backend=CPP)
    log_lik = torch.zeros(3, device=DEVICE)
    torch.testing.assert_close(fe.elbo(log_lik, lat, kl="analytic", backend=CPP), -lat.kl)
    with pytest.raises(ValueError, match="backend must be one of"):
        fe.elbo(log_lik, lat, kl="analytic", backend="gpu")
    other = "cuda" if DEVICE == "cpu" else "cpu"  # a backend for the other device type
    with pytest.raises((RuntimeError, ValueError), match=other):
        fe.elbo(log_lik, lat, kl="analytic", backend=other)
    with pytest.raises((RuntimeError, ValueError), match=other):
        fe.elbo(log_lik, fe.Latent(*lat), kl="analytic", beta=1, backend=other)
    with pytest.raises(ValueError, match="kl must be one of"):
        fe.elbo(log_lik, lat, kl=__import__("numpy").array(["analytic"]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("classes", [16, 33, 64])
def test_gradient_buffers_of_whole_vectors(dtype, classes):
    """The likelihood kernels' gradient buffers over rows of whole vectors and a partial one, in
    every dtype, against their float64 formulas (a bfloat16 categorical once lost lanes 1-15 of
    every whole vector to a miscompiled inline exp while its value stayed right)."""
    ops = _ops()
    g = generator(7, DEVICE)
    logits = randn(g, 3, classes, scale=3.0).to(dtype)
    x = rand(g, 3, classes).to(dtype)
    target = torch.randint(0, classes, (3,), generator=g, device=DEVICE)
    logvar = randn(g, classes).to(dtype).expand(3, classes)
    l, xd = logits.double(), x.double()
    want = {
        "categorical": torch.nn.functional.one_hot(target, classes).double() - torch.softmax(l, -1),
        "bernoulli": xd - torch.sigmoid(l),
        "gaussian": (xd - l) * torch.exp(-logvar.double()),
    }
    got = {
        "categorical": ops.categorical_log_prob.default(logits, target, 0, True)[1],
        "bernoulli": ops.bernoulli_log_prob.default(logits, x, 1, True)[1],
        "gaussian": ops.gaussian_log_prob.default(logits, x, logvar, 0.0, 1, True)[1],
    }
    for name in want:
        torch.testing.assert_close(got[name].double(), want[name], rtol=1e-5, atol=1e-5, msg=name)


def _wide_latent_case(dim: int, prior: bool):
    """The latent and the KL over rows of `dim` (whole vectors and a partial one in every dtype; the
    op-case suite's latents have D = 5), with no prior or one prior row shared by every row."""
    from fastelbo import testing

    def make(g):
        inputs = {"mu": testing._normal(g, 5, dim), "scale": testing._uniform(g, 5, dim, low=-1.5, high=1.0)}
        if prior:
            inputs["prior_mu"] = testing._normal(g, dim, scale=0.5)
            inputs["prior_scale"] = testing._uniform(g, dim, low=-0.5, high=0.5)
        return inputs

    def run(t, backend, g):
        p = (t["prior_mu"], t["prior_scale"]) if prior else None
        lat = fe.gaussian_latent(t["mu"], t["scale"], prior=p, generator=g, backend=backend)
        return tuple(lat) + (fe.gaussian_kl(t["mu"], t["scale"], prior=p, backend=backend),)

    return testing.OpCase(f"latent_d{dim}", make, run, ("mu", "scale") + (("prior_mu", "prior_scale") if prior else ()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [16, 33, 64])
@pytest.mark.parametrize("prior", [False, True])
def test_latent_rows_of_whole_vectors(dtype, dim, prior, seed):
    from fastelbo.testing import compare

    result = compare(_wide_latent_case(dim, prior), CPP, dtype, device=DEVICE, seed=seed)
    assert result.passed, result


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [3, 8, 24])
@pytest.mark.parametrize("n_samples,param", [(0, 0), (3, 2)])
def test_an_expanded_gradient_of_z_on_short_rows_gives_the_gradients_of_its_copy(dtype, dim, n_samples, param, seed):
    """z.sum()'s gradient reaches the latent's backward expanded (stride 0): on short rows (D below
    four vectors: 64 floats, 32 doubles with AVX-512) the kernel copies it and takes the flat
    path, so the gradients are bit for bit those of a contiguous gradient (the per-row path sums
    in another order: up to an ulp apart with a log p or KL gradient as well)."""
    g = generator(seed)
    rows, k = 16, max(n_samples, 1)
    mu, scale = randn(g, rows, dim, dtype=dtype), randn(g, rows, dim, dtype=dtype, scale=0.5)
    batch = (k, rows) if n_samples else (rows,)
    expanded = torch.tensor(0.7, dtype=dtype).expand(*batch, dim)
    grad_log_p, grad_kl = randn(g, *batch, dtype=dtype), randn(g, rows, dtype=dtype)
    drawn = torch.tensor(seed, dtype=torch.int64)
    backward = torch.ops.fastelbo.gaussian_latent_backward.default
    with torch.no_grad():
        got, want = (backward(gz, None, grad_log_p, grad_kl, mu, scale, None, None, None, drawn, param, n_samples,
                              False, 1) for gz in (expanded, expanded.contiguous()))
    for a, b in zip(got[:2], want[:2]):
        assert torch.equal(a, b)
