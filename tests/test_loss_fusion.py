"""The loss-level fusion of the binary likelihoods (fastelbo/ops/bernoulli_log_prob.py): fe.ELBO and
fe.vae_loss tell the likelihood kernel the gradient their loss gives every row (expected_grad), the
kernel writes its gradient buffer scaled by it, and the C++ backward hands that buffer over as the
logits' gradient when the incoming gradient is exactly it, instead of a product (no pass, no second
tensor of the logits' size). Checked here: the values it computes equal the reference's on every
backend; the handover happens exactly when it may (a graph freed after the backward, nobody else
holding the buffer, the gradient the expected one, CPU, the logits in the buffer's dtype); it stays
right under retain_graph, gradient accumulation and in-place edits of .grad; its second order."""
import pytest
import torch

import fastelbo as fe
from fastelbo.module import expected_row_grad
from fastelbo.testing import TOLERANCES
from helpers import DEVICE, FUSED_BACKENDS, generator, rand, randn

BINARY = ["bernoulli_log_prob", "continuous_bernoulli_log_prob"]
ON_CPU = pytest.mark.skipif(DEVICE != "cpu" or "cpu" not in FUSED_BACKENDS,
                            reason="the handover is the CPU backward's (reading the gradient there needs no sync)")


def _binary_inputs(g, dtype, shape=(4, 6)):
    logits = randn(g, *shape, scale=2.0).to(dtype).requires_grad_(True)
    x = (rand(g, *shape) < 0.5).to(dtype)
    return logits, x


def _op_call(name, logits, x, expected_grad):
    """(out, buffer address): the C++ op's outputs, the caller keeping none of the buffer."""
    out, buffer = getattr(torch.ops.fastelbo, name).default(logits, x, 1, True, expected_grad)
    return out, buffer.data_ptr()


@ON_CPU
@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_buffer_becomes_the_gradient_when_the_incoming_gradient_is_the_expected_one(name, dtype, seed):
    fe.bernoulli_log_prob(torch.zeros(1, 1), torch.zeros(1, 1))  # loads the C++ library
    logits, x = _binary_inputs(generator(seed), dtype)
    c = -0.37
    out, address = _op_call(name, logits, x, c)
    out.backward(torch.full_like(out, c))
    assert logits.grad.data_ptr() == address  # no product: the buffer itself
    exact = getattr(fe.reference, name)(logits, x)
    (truth,) = torch.autograd.grad(exact, logits, torch.full_like(exact, c))
    tol = TOLERANCES[dtype]["bwd"]
    torch.testing.assert_close(logits.grad, truth, atol=tol.atol, rtol=tol.rtol)


@ON_CPU
@pytest.mark.parametrize("case", ["retain_graph", "buffer held", "another gradient", "half logits"])
def test_the_buffer_stays_private_where_it_must(case, seed):
    """Each condition under which the backward makes a new gradient instead (and that gradient is
    still right): retain_graph (the buffer serves the next backward), a caller holding the buffer
    output, an incoming gradient that is not the expected one, logits of another dtype (a cast)."""
    fe.bernoulli_log_prob(torch.zeros(1, 1), torch.zeros(1, 1))
    dtype = torch.float16 if case == "half logits" else torch.float32
    logits, x = _binary_inputs(generator(seed), dtype)
    c = 0.5
    out, buffer = torch.ops.fastelbo.bernoulli_log_prob.default(logits, x, 1, True, c)
    address = buffer.data_ptr()
    kept = buffer.clone() if case == "buffer held" else None
    if case != "buffer held":
        buffer = None
    grad_out = torch.full_like(out, c) if case != "another gradient" else torch.linspace(-1, 2, out.numel())
    out.backward(grad_out, retain_graph=case == "retain_graph")
    assert logits.grad.data_ptr() != address
    leaf = logits.detach().double().requires_grad_(True)
    (truth,) = torch.autograd.grad(fe.reference.bernoulli_log_prob(leaf, x.double()), leaf, grad_out.double())
    tol = TOLERANCES[dtype]["bwd"]
    torch.testing.assert_close(logits.grad.double(), truth, atol=tol.atol, rtol=tol.rtol)
    if case == "buffer held":
        logits.grad.add_(1.0)  # the caller's buffer is its own
        assert torch.equal(buffer, kept)


def _module_step(backend, likelihood, reduction, n_samples, kl, g, dtype=torch.float32):
    """(loss, leaves, decoder base) of fe.ELBO on a stand-in decoder whose output reaches the leaf
    `base` through an add (so AccumulateGrad may take the handed-over buffer as base.grad)."""
    x = (rand(g, 8, 12) < 0.5).to(dtype)
    mu = randn(g, 8, 3).to(dtype).requires_grad_(True)
    scale = rand(g, 8, 3, low=-1, high=1).to(dtype).requires_grad_(True)
    base = randn(g, 8, 12, scale=2.0).to(dtype).requires_grad_(True)
    objective = fe.ELBO(likelihood, n_samples=n_samples, kl=kl, reduction=reduction, backend=backend)
    return objective, (x, mu, scale, base)


def _run(objective, tensors, generator_seed):
    x, mu, scale, base = tensors
    g = torch.Generator(mu.device).manual_seed(generator_seed)
    return objective(x, mu, scale, lambda z: base + z.mean(-1, keepdim=True), generator=g).loss


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli"])
@pytest.mark.parametrize("reduction,n_samples,kl", [("mean", 1, "analytic"), ("sum", 3, "mc"), ("mean", 2, "mc")])
def test_the_module_with_the_fused_loss_matches_the_reference(backend, likelihood, reduction, n_samples, kl, seed):
    """loss.backward() from 1 (the handover on CPU): the reference's loss and gradients."""
    grads = {}
    for name in (backend, "reference"):
        objective, tensors = _module_step(name, likelihood, reduction, n_samples, kl, generator(seed),
                                          torch.float64)
        loss = _run(objective, tensors, seed)
        loss.backward()
        grads[name] = (loss.detach(), *(t.grad for t in tensors[1:]))
    tol = TOLERANCES[torch.float64]["bwd"]
    for got, truth in zip(grads[backend], grads["reference"]):
        torch.testing.assert_close(got, truth, atol=tol.atol, rtol=tol.rtol)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_retain_graph_accumulation_and_in_place_edits_of_the_gradient(backend, seed):
    """A retained graph's backwards add up, a .grad edited in place between backwards changes
    nothing the graph holds, and accumulation onto an existing .grad is exact (each backward as
    a multiple of the one-backward gradient)."""
    objective, tensors = _module_step(backend, "bernoulli", "mean", 1, "analytic", generator(seed))
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
@pytest.mark.parametrize("api", ["ELBO", "vae_loss"])
def test_the_backward_makes_no_tensor_of_the_logits_size(api, seed):
    """The point of the fusion: with loss.backward() the logits' gradient is the forward's buffer,
    so the backward allocates nothing of the logits' size (the unfused backward allocates the
    product g b)."""
    from torch.profiler import ProfilerActivity, profile

    g = generator(seed)
    batch, dx = 16, 256
    mu, scale = randn(g, batch, 4).float().requires_grad_(True), rand(g, batch, 4, low=-1, high=1).float()
    base = randn(g, batch, dx).float().requires_grad_(True)
    x = (rand(g, batch, dx) < 0.5).float()
    if api == "ELBO":
        loss = fe.ELBO(backend="cpu")(x, mu, scale, lambda z: base + z.mean(-1, keepdim=True)).loss
    else:
        loss = fe.vae_loss(base + mu.sum(-1, keepdim=True), x, mu, scale)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss.backward()
    sizes = [e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.nbytes() > 0]
    assert max(sizes, default=0) < batch * dx * 4
    assert base.grad is not None and base.grad.shape == (batch, dx)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("name", BINARY)
def test_second_order_of_a_scaled_buffer(backend, name, seed):
    """gradcheck and gradgradcheck of the op with expected_grad != 1 (its buffer output included)."""
    g = generator(seed)
    logits, x = _binary_inputs(g, torch.float64, (3, 4))
    overload = fe._backend.OVERLOAD[backend]
    __import__(fe._backend._MODULES[backend])
    op = getattr(getattr(torch.ops.fastelbo, name), overload)

    def f(logits):
        out, buffer = op(logits, x, 1, True, -0.3)
        return out, buffer

    assert torch.autograd.gradcheck(f, (logits,))
    assert torch.autograd.gradgradcheck(f, (logits,))


def test_expected_row_grad_is_what_the_backward_delivers():
    """The emulation of expected_row_grad equals what autograd gives each log-likelihood value of
    -reduce(value), for awkward counts (no power of two) and both float dtypes."""
    for dtype in (torch.float32, torch.float64):
        for n_points, n_samples, reduction in [(100, 1, "mean"), (7, 3, "mean"), (33, 5, "sum"), (1000, 1, "sum")]:
            log_lik = torch.zeros(n_samples, n_points, dtype=dtype, requires_grad=True)
            latent = fe.Latent(torch.zeros(n_samples, n_points, 1, dtype=dtype), torch.zeros(n_samples, n_points,
                               dtype=dtype), torch.zeros(n_samples, n_points, dtype=dtype),
                               torch.zeros(n_points, dtype=dtype))
            if n_samples == 1:
                log_lik_in = log_lik[0]
                latent = fe.Latent(latent.z[0], latent.log_q[0], latent.log_p[0], latent.kl)
            else:
                log_lik_in = log_lik
            value = fe.elbo(log_lik_in, latent, kl="mc", backend="cpu" if "cpu" in FUSED_BACKENDS else None)
            loss = -(value.mean() if reduction == "mean" else value.sum())
            loss.backward()
            expected = expected_row_grad(n_points, n_samples, reduction, dtype)
            assert torch.all(log_lik.grad == expected), (dtype, n_points, n_samples, reduction)
