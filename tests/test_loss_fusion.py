"""The loss-level fusion of the likelihoods (fastelbo/ops/bernoulli_log_prob.py): fe.ELBO and
fe.vae_loss tell the likelihood kernel the gradient their loss gives every row (expected_grad), the
kernel writes its gradient buffer scaled by it, and the C++ backward hands that buffer over as the
logits' (the mean's) gradient when the incoming gradient is exactly it, instead of a product (no
pass, no second tensor of the logits' size). Checked here: the values it computes equal the
reference's on every backend; the handover happens exactly when it may (a graph freed after the
backward, nobody else holding the buffer, the gradient the expected one, CPU, the parameters in
the buffer's dtype); it stays right under retain_graph, gradient accumulation and in-place edits of
.grad; its second order; the expected gradient is the one the backward delivers."""
import pytest
import torch

import fastelbo as fe
from fastelbo.module import expected_row_grad
from fastelbo.testing import TOLERANCES
from helpers import DEVICE, FUSED_BACKENDS, generator, rand, randn

LIKELIHOODS = ["bernoulli_log_prob", "continuous_bernoulli_log_prob", "gaussian_log_prob"]
# The continuous Bernoulli's buffer is not an output of its op (its second order is recomputed from
# the logits): its backward cannot tell its own holders from a caller's, and never hands it over.
HANDED_OVER = {"bernoulli_log_prob": True, "continuous_bernoulli_log_prob": False, "gaussian_log_prob": True}
# Where the backward owns the buffer but the incoming gradient is another one, the Bernoulli's
# scales it in place into the gradient (the Gaussian's backward kernel writes a new one).
SCALED_IN_PLACE = {"bernoulli_log_prob": True, "continuous_bernoulli_log_prob": False, "gaussian_log_prob": False}
ON_CPU = pytest.mark.skipif(DEVICE != "cpu" or "cpu" not in FUSED_BACKENDS,
                            reason="the handover is the CPU backward's (reading the gradient there needs no sync)")


def _inputs(name, g, dtype, shape=(4, 6)):
    """(params, x, logvar or None): leaves requiring grad where the op has a gradient for them."""
    params = randn(g, *shape, scale=2.0).to(dtype).requires_grad_(True)
    if name == "gaussian_log_prob":
        return params, randn(g, *shape).to(dtype), rand(g, shape[-1], low=-1, high=1).to(dtype).requires_grad_(True)
    return params, (rand(g, *shape) < 0.5).to(dtype), None


def _op(name, overload="default"):
    return getattr(getattr(torch.ops.fastelbo, name), overload)


def _call(name, params, x, logvar, expected_grad, overload="default"):
    """The op's (out, buffer) with a buffer scaled by expected_grad."""
    if name == "gaussian_log_prob":
        return _op(name, overload)(params, x, logvar, 0.0, 1, True, expected_grad)
    return _op(name, overload)(params, x, 1, True, expected_grad)


def _reference_grads(name, params, x, logvar, grad_out):
    """The reference's gradients (params, logvar) in float64 for the incoming gradient grad_out."""
    leaves = [params.detach().double().requires_grad_(True)]
    if logvar is not None:
        leaves.append(logvar.detach().double().requires_grad_(True))
        out = fe.reference.gaussian_log_prob(leaves[0], x.double(), logvar=leaves[1])
    else:
        out = getattr(fe.reference, name)(leaves[0], x.double())
    return torch.autograd.grad(out, leaves, grad_out.double())


def _load_library():
    fe.bernoulli_log_prob(torch.zeros(1, 1), torch.zeros(1, 1))


@ON_CPU
@pytest.mark.parametrize("name", LIKELIHOODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_buffer_becomes_the_gradient_when_the_incoming_gradient_is_the_expected_one(name, dtype, seed):
    _load_library()
    params, x, logvar = _inputs(name, generator(seed), dtype)
    c = -0.37
    out, buffer = _call(name, params, x, logvar, c)
    address, buffer = buffer.data_ptr(), None  # the caller keeps nothing of it
    grad_out = torch.full_like(out, c)
    out.backward(grad_out)
    assert (params.grad.data_ptr() == address) == HANDED_OVER[name]  # no product: the buffer itself
    tol = TOLERANCES[dtype]["bwd"]
    got = (params.grad,) if logvar is None else (params.grad, logvar.grad)  # (the Gaussian's logvar gradient
    for a, b in zip(got, _reference_grads(name, params, x, logvar, grad_out)):  # from the kernel, no grad_mean)
        torch.testing.assert_close(a.double(), b, atol=tol.atol, rtol=tol.rtol)


@ON_CPU
@pytest.mark.parametrize("name", LIKELIHOODS)
@pytest.mark.parametrize("case", ["retain_graph", "buffer held", "another gradient", "half parameters"])
def test_the_buffer_stays_private_where_it_must(name, case, seed):
    """Each condition under which the backward makes a new gradient instead (and that gradient is
    still right): retain_graph (the buffer serves the next backward), a caller holding the buffer
    output, parameters of another dtype (a cast); and an incoming gradient that is not the expected
    one, where the Bernoulli's backward, owning the buffer, scales it in place instead."""
    _load_library()
    dtype = torch.float16 if case == "half parameters" else torch.float32
    params, x, logvar = _inputs(name, generator(seed), dtype)
    c = 0.5
    out, buffer = _call(name, params, x, logvar, c)
    address = buffer.data_ptr()
    kept = buffer.clone() if case == "buffer held" else None
    if case != "buffer held":
        buffer = None
    grad_out = torch.full_like(out, c) if case != "another gradient" else torch.linspace(-1, 2, out.numel())
    out.backward(grad_out, retain_graph=case == "retain_graph")
    if case == "buffer held":
        torch.testing.assert_close(buffer, kept, rtol=0, atol=0)  # the caller's buffer was not scaled
    assert (params.grad.data_ptr() == address) == (case == "another gradient" and SCALED_IN_PLACE[name])
    tol = TOLERANCES[dtype]["bwd"]
    got = (params.grad,) if logvar is None else (params.grad, logvar.grad)
    for a, b in zip(got, _reference_grads(name, params, x, logvar, grad_out)):
        torch.testing.assert_close(a.double(), b, atol=tol.atol, rtol=tol.rtol)
    if case == "buffer held":
        params.grad.add_(1.0)  # the caller's buffer is its own
        assert torch.equal(buffer, kept)


def _module_step(backend, likelihood, reduction, n_samples, kl, g, dtype=torch.float32):
    """(objective, (x, mu, scale, base, logvar or None)) of fe.ELBO on a stand-in decoder whose output
    reaches the leaf `base` through an add (so AccumulateGrad may take a handed-over buffer as
    base.grad); the Gaussian's decoder also returns a learned per-column logvar."""
    gaussian = likelihood == "gaussian"
    x = randn(g, 8, 12).to(dtype) if gaussian else (rand(g, 8, 12) < 0.5).to(dtype)
    mu = randn(g, 8, 3).to(dtype).requires_grad_(True)
    scale = rand(g, 8, 3, low=-1, high=1).to(dtype).requires_grad_(True)
    base = randn(g, 8, 12, scale=2.0).to(dtype).requires_grad_(True)
    logvar = rand(g, 12, low=-1, high=1).to(dtype).requires_grad_(True) if gaussian else None
    objective = fe.ELBO(likelihood, n_samples=n_samples, kl=kl, reduction=reduction, backend=backend)
    return objective, (x, mu, scale, base, logvar)


def _run(objective, tensors, generator_seed):
    x, mu, scale, base, logvar = tensors
    g = torch.Generator(mu.device).manual_seed(generator_seed)

    def decoder(z):
        mean = base + z.mean(-1, keepdim=True)
        return mean if logvar is None else (mean, logvar)

    return objective(x, mu, scale, decoder, generator=g).loss


def _grads(tensors):
    return tuple(t.grad for t in tensors[1:] if t is not None)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "gaussian"])
@pytest.mark.parametrize("reduction,n_samples,kl", [("mean", 1, "analytic"), ("sum", 3, "mc"), ("mean", 2, "mc")])
def test_the_module_with_the_fused_loss_matches_the_reference(backend, likelihood, reduction, n_samples, kl, seed):
    """loss.backward() from 1 (the handover on CPU): the reference's loss and gradients."""
    results = {}
    for name in (backend, "reference"):
        objective, tensors = _module_step(name, likelihood, reduction, n_samples, kl, generator(seed), torch.float64)
        loss = _run(objective, tensors, seed)
        loss.backward()
        results[name] = (loss.detach(), *_grads(tensors))
    tol = TOLERANCES[torch.float64]["bwd"]
    for got, truth in zip(results[backend], results["reference"]):
        torch.testing.assert_close(got, truth, atol=tol.atol, rtol=tol.rtol)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_retain_graph_accumulation_and_in_place_edits_of_the_gradient(backend, likelihood, seed):
    """A retained graph's backwards add up, a .grad edited in place between backwards changes
    nothing the graph holds, and accumulation onto an existing .grad is exact (each backward as
    a multiple of the one-backward gradient)."""
    objective, tensors = _module_step(backend, likelihood, "mean", 1, "analytic", generator(seed))
    base = tensors[3]
    _run(objective, tensors, seed).backward()
    once = base.grad.clone()
    base.grad.mul_(7.0)  # an in-place edit of a handed-over gradient: nothing else holds it
    base.grad = None
    loss = _run(objective, tensors, seed)
    loss.backward(retain_graph=True)
    loss.backward(retain_graph=True)
    torch.testing.assert_close(base.grad, 2 * once)
    base.grad.zero_()  # in place: must not reach the buffer the graph keeps
    loss.backward(retain_graph=True)
    torch.testing.assert_close(base.grad, once)
    loss.backward()  # the last one frees the graph: the buffer may be handed over, onto .grad
    torch.testing.assert_close(base.grad, 2 * once)
    _run(objective, tensors, seed).backward()  # accumulation from a fresh graph
    torch.testing.assert_close(base.grad, 3 * once)


@ON_CPU
@pytest.mark.parametrize("api", ["ELBO", "ELBO gaussian", "vae_loss"])
def test_the_backward_makes_no_tensor_of_the_logits_size(api, seed):
    """The point of the fusion: with loss.backward() the logits' (mean's) gradient is the forward's
    buffer, so the backward allocates nothing of their size (the unfused backward allocates the
    product g b)."""
    from torch.profiler import ProfilerActivity, profile

    g = generator(seed)
    batch, dx = 16, 256
    mu, scale = randn(g, batch, 4).float().requires_grad_(True), rand(g, batch, 4, low=-1, high=1).float()
    base = randn(g, batch, dx).float().requires_grad_(True)
    logvar = rand(g, dx, low=-1, high=1).float().requires_grad_(True)
    x = (rand(g, batch, dx) < 0.5).float()
    if api == "ELBO":
        loss = fe.ELBO(backend="cpu")(x, mu, scale, lambda z: base + z.mean(-1, keepdim=True)).loss
    elif api == "ELBO gaussian":
        loss = fe.ELBO("gaussian", backend="cpu")(x, mu, scale, lambda z: (base + z.mean(-1, keepdim=True), logvar))
        loss = loss.loss
    else:
        loss = fe.vae_loss(base + mu.sum(-1, keepdim=True), x, mu, scale)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss.backward()
    sizes = [e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.nbytes() > 0]
    assert max(sizes, default=0) < batch * dx * 4
    assert base.grad is not None and base.grad.shape == (batch, dx)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("name", LIKELIHOODS)
def test_second_order_of_a_scaled_buffer(backend, name, seed):
    """gradcheck and gradgradcheck of the op with expected_grad != 1 (its buffer output included)."""
    params, x, logvar = _inputs(name, generator(seed), torch.float64, (3, 4))
    __import__(fe._backend._MODULES[backend])  # registers the backend's kernels
    overload = fe._backend.OVERLOAD[backend]
    inputs = (params,) if logvar is None else (params, logvar)

    def f(*inputs):
        return _call(name, inputs[0], x, inputs[1] if len(inputs) > 1 else None, -0.3, overload)

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_expected_row_grad_is_what_the_backward_delivers():
    """expected_row_grad equals what autograd gives each log-likelihood value of -reduce(value),
    for counts that are no powers of two and both float dtypes, through fe.elbo's two paths (one
    sample without a sample dim; K samples through the ELBO op's mean)."""
    backend = "cpu" if "cpu" in FUSED_BACKENDS else "reference"
    for dtype in (torch.float32, torch.float64):
        for n_points, n_samples, reduction in [(100, 1, "mean"), (7, 3, "mean"), (33, 5, "sum"), (1000, 1, "sum")]:
            samples = (n_samples,) if n_samples > 1 else ()
            zeros = lambda *shape: torch.zeros(*shape, dtype=dtype)  # noqa: E731
            log_lik = zeros(*samples, n_points).requires_grad_(True)
            latent = fe.Latent(zeros(*samples, n_points, 1), zeros(*samples, n_points), zeros(*samples, n_points),
                               zeros(n_points))
            value = fe.elbo(log_lik, latent, kl="mc", backend=backend)
            loss = -(value.mean() if reduction == "mean" else value.sum())
            loss.backward()
            expected = expected_row_grad(n_points, n_samples, reduction, dtype)
            assert torch.all(log_lik.grad == expected), (dtype, n_points, n_samples, reduction)


@ON_CPU
def test_no_handover_under_saved_tensor_hooks(seed):
    """A pack hook is given the buffer output itself and may keep it: a buffer saved under
    saved-tensor hooks is never handed over (here the hook keeps every packed tensor, and editing
    .grad must leave them as they were)."""
    g = generator(seed)
    x = (rand(g, 8, 12) < 0.5).float()
    mu, scale = randn(g, 8, 3).float().requires_grad_(True), rand(g, 8, 3, low=-1, high=1).float()
    base = randn(g, 8, 12).float().requires_grad_(True)
    kept = []

    def pack(t):
        kept.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fe.ELBO(backend="cpu")(x, mu, scale, lambda z: base + z.mean(-1, keepdim=True)).loss
    loss.backward()
    snapshots = [t.detach().clone() for t in kept]
    assert all(t.data_ptr() != base.grad.data_ptr() for t in kept)
    base.grad.mul_(0.0)
    assert all(torch.equal(t, s) for t, s in zip(kept, snapshots))


@pytest.mark.parametrize("mode", ["fake", "meta"])
def test_the_modules_trace_under_fake_and_meta_tensors(mode):
    """fe.ELBO and fe.vae_loss compute their expected gradient without torch ops, so they still run
    where tensors have no values (FakeTensorMode, a meta default device), on the reference path."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    context = FakeTensorMode() if mode == "fake" else torch.device("meta")
    with context:
        x = torch.rand(8, 12).round()
        mu, scale, base = torch.randn(8, 3), torch.randn(8, 3), torch.randn(8, 12)
        out = fe.ELBO(backend="reference")(x, mu, scale, lambda z: base + z.mean(-1, keepdim=True))
        loss = fe.reference.vae_loss(base, x, mu, scale, reduction="mean")
    assert out.loss.shape == () and loss.shape == ()


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("name", LIKELIHOODS)
@pytest.mark.parametrize("value", [0.0, float("inf"), float("nan"), 1e-40])
def test_an_unusable_expected_grad_is_refused(backend, name, value):
    """expected_grad divides in the backward and scales in float32: 0, inf, NaN and float32
    subnormals are refused by name before anything runs."""
    __import__(fe._backend._MODULES[backend])
    params, x, logvar = _inputs(name, generator(0), torch.float32)
    with pytest.raises(ValueError, match="expected_grad"):
        _call(name, params, x, logvar, value, fe._backend.OVERLOAD[backend])
