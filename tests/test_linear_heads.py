"""The fused "linear + likelihood" ops beyond the op cases of fastelbo.testing (which hold them to
the reference on every backend and dtype): the logits are never materialized in full, the saved
gradients survive retain_graph and accumulation, the second order, torch.compile, opcheck, errors,
and the comparison fails when a block is wrong."""
import pytest
import torch
import torch.nn.functional as F

import fastelbo as fe
from fastelbo.ops import _linear_head as head
from fastelbo.testing import CASES, compare
from helpers import DEVICE, FUSED_BACKENDS, generator, rand, randn

HEADS = {"bernoulli": fe.linear_bernoulli_log_prob, "gaussian": fe.linear_gaussian_log_prob}
needs_fused = pytest.mark.skipif(not FUSED_BACKENDS, reason="no fused backend here")


def _problem(g, likelihood, rows=5, hidden=4, dx=9, dtype=torch.float64, batch=()):
    h = randn(g, *batch, rows, hidden, dtype=dtype).requires_grad_()
    w = randn(g, dx, hidden, dtype=dtype, scale=0.5).requires_grad_()
    b = randn(g, dx, dtype=dtype).requires_grad_()
    if likelihood == "bernoulli":
        return h, w, b, (rand(g, rows, dx) < 0.5).to(dtype), {}
    logvar = rand(g, dx, dtype=dtype, low=-1, high=1).requires_grad_()
    return h, w, b, randn(g, rows, dx, dtype=dtype), {"logvar": logvar}


def _leaves(h, w, b, options):
    return [h, w, b] + [v for v in options.values() if isinstance(v, torch.Tensor) and v.requires_grad]


@needs_fused
@pytest.mark.parametrize("likelihood", list(HEADS))
@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_the_logits_are_never_materialized(likelihood, reduction, seed):
    """No op inside the fused call allocates as much as the (rows, Dx) logits: the largest
    allocation is a block (chunk_size columns) or a gradient of the linear layer's size."""
    if DEVICE != "cpu":
        pytest.skip("the CPU profiler's memory records")
    g = generator(seed)
    rows, hidden, dx, chunk = 64, 8, 4096, 256
    h, w, b, x, options = _problem(g, likelihood, rows=rows, hidden=hidden, dx=dx, dtype=torch.float32)
    fn = HEADS[likelihood]
    full_logits = rows * dx * 4
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn(h, w, b, x, reduction=reduction, chunk_size=chunk, backend=FUSED_BACKENDS[0], **options)
        torch.autograd.grad(out.sum(), _leaves(h, w, b, options))
    largest = max(e.self_cpu_memory_usage for e in prof.events())
    assert 0 < largest <= max(rows * chunk * 4, dx * hidden * 4) < full_logits / 2
    # The same profile of the unfused step sees the logits (the check can fail).
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn(h, w, b, x, reduction=reduction, backend="reference", **options)
        torch.autograd.grad(out.sum(), _leaves(h, w, b, options))
    assert max(e.self_cpu_memory_usage for e in prof.events()) >= full_logits


@needs_fused
@pytest.mark.parametrize("likelihood", list(HEADS))
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_retain_graph_twice_and_accumulation(likelihood, reduction, seed):
    """Two backward passes of one graph accumulate exactly twice the gradient: the first backward
    hands autograd the gradients it scaled in place, the second recomputes them bit for bit, and
    the gradients handed out are never modified afterwards (also with an incoming gradient other
    than 1, and through autograd.grad)."""
    g = generator(seed)
    h, w, b, x, options = _problem(g, likelihood)
    out = HEADS[likelihood](h, w, b, x, reduction=reduction, chunk_size=4, backend=FUSED_BACKENDS[0], **options)
    loss = -out.sum() / 3.0
    leaves = _leaves(h, w, b, options)
    handed = torch.autograd.grad(loss, leaves, retain_graph=True)
    kept = [t.clone() for t in handed]
    loss.backward(retain_graph=True)
    first = [t.grad.clone() for t in leaves]
    loss.backward(retain_graph=True)
    for t, once, grad, copy in zip(leaves, first, handed, kept):
        assert torch.equal(once, copy) and torch.equal(grad, copy)
        assert torch.equal(t.grad, 2 * once)
    reference = HEADS[likelihood](h, w, b, x, reduction=reduction, backend="reference", **options)
    for mine, once in zip(first, torch.autograd.grad(-reference.sum() / 3.0, leaves)):
        torch.testing.assert_close(mine, once)


@needs_fused
@pytest.mark.parametrize("likelihood", list(HEADS))
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_second_order(likelihood, reduction, seed):
    g = generator(seed)
    h, w, b, x, options = _problem(g, likelihood, rows=3, hidden=3, dx=5)
    fn = HEADS[likelihood]
    leaves = _leaves(h, w, b, options)

    def run(*args):
        opts = dict(options)
        if "logvar" in opts:
            opts["logvar"] = args[3]
        return fn(args[0], args[1], args[2], x, reduction=reduction, chunk_size=2, backend=FUSED_BACKENDS[0], **opts)

    assert torch.autograd.gradgradcheck(run, leaves)


@needs_fused
@pytest.mark.parametrize("likelihood", list(HEADS))
def test_inside_torch_compile(likelihood, seed):
    if DEVICE == "cpu" and FUSED_BACKENDS[0] == "triton":
        pytest.skip("the interpreter")
    g = generator(seed)
    h, w, b, x, options = _problem(g, likelihood, dtype=torch.float32, batch=(2,))
    fn = HEADS[likelihood]

    def step(h, w, b):
        return -fn(torch.tanh(h), w, b, x, reduction="mean", chunk_size=4, **options)

    eager = step(h, w, b)
    eager_grads = torch.autograd.grad(eager, [h, w, b])
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)(h, w, b)
    torch.testing.assert_close(compiled, eager)
    for a, e in zip(torch.autograd.grad(compiled, [h, w, b]), eager_grads):
        torch.testing.assert_close(a, e)


def _opcheck_args(g, likelihood):
    h, w, b, x, options = _problem(g, likelihood, dtype=torch.float32)
    kernel = "default" if "cpu" in FUSED_BACKENDS or "cuda" in FUSED_BACKENDS else "triton"
    if likelihood == "bernoulli":
        return [("linear_bernoulli_log_prob", (h, w, b, x, reduction, 4, kernel, [True, True, True]))
                for reduction in (0, 1, 2)] + [
            ("linear_bernoulli_log_prob", (h, w, None, x, 1, 0, kernel, [True, True, False])),
            ("linear_bernoulli_log_prob_backward", (randn(g, 5, dtype=torch.float32), h.detach(), w.detach(),
                                                    b.detach(), x, 4, kernel, [True, True, True]))]
    v = options["logvar"].float()
    return [("linear_gaussian_log_prob", (h, w, b, x, v, 0.0, reduction, 4, kernel, [True, True, True, True]))
            for reduction in (0, 1, 2)] + [
        ("linear_gaussian_log_prob", (h, w.detach(), b, x, None, -0.3, 2, 0, kernel, [True, False, True, False])),
        ("linear_gaussian_log_prob_backward", (randn(g, 5, dtype=torch.float32), h.detach(), w.detach(), b.detach(),
                                               x, v.detach(), 0.0, 4, kernel, [True, True, True, True]))]


@needs_fused
@pytest.mark.parametrize("likelihood", list(HEADS))
def test_opcheck(likelihood, seed):
    backend = FUSED_BACKENDS[0]
    __import__(fe._backend._MODULES[backend])
    for name, args in _opcheck_args(generator(seed), likelihood):
        torch.library.opcheck(getattr(torch.ops.fastelbo, name).default, args)


@pytest.mark.parametrize("likelihood", list(HEADS))
def test_bad_arguments_name_themselves(likelihood, seed):
    g = generator(seed)
    h, w, b, x, options = _problem(g, likelihood)
    fn = HEADS[likelihood]
    cases = [
        ((h, w.t(), b, x), {}, ValueError, "in_features"),
        ((h, w[0], b, x), {}, ValueError, "weight must have at least 2 dim"),
        ((h, w[None], b, x), {}, ValueError, "weight must be 2-D"),
        ((h, w, b[:3], x), {}, ValueError, "bias must have shape"),
        ((h, w, b.float(), x), {}, TypeError, "bias must have input's dtype"),
        ((h, w, b, x[:, :4]), {}, ValueError, "x of shape"),
        ((h, w, b, x.detach().requires_grad_()), {}, ValueError, "x must not require grad"),
        ((h, w, b, x), {"reduction": "max"}, ValueError, "reduction"),
        ((h, w, b, x), {"chunk_size": 0}, ValueError, "chunk_size"),
        (("h", w, b, x), {}, TypeError, "input"),
    ]
    for args, kwargs, error, words in cases:
        with pytest.raises(error, match=words):
            fn(*args, **{**options, **kwargs})
    with torch.no_grad():  # nothing is differentiated: x may require grad
        fn(h, w, b, x.detach().requires_grad_(), **options)


@needs_fused
def test_the_comparison_fails_when_a_block_is_wrong(monkeypatch, seed):
    """A driver that pairs each block of logits with the wrong block of x must fail the op case."""
    shifted = head.columns

    def wrong_columns(t, c0, c1):
        if t is None or t.dim() == 0 or t.shape[-1] == 1:
            return t
        c0, c1 = (c0 + 1, c1 + 1) if c1 < t.shape[-1] else (c0, c1)
        return shifted(t, c0, c1)

    monkeypatch.setattr(head, "columns", wrong_columns)
    case = next(c for c in CASES if c.name.startswith("linear_bernoulli_log_prob[none"))
    assert not compare(case, FUSED_BACKENDS[0], torch.float32, device=DEVICE, seed=seed).passed


@needs_fused
def test_an_mlp_decoder_step_matches_the_unfused_one(seed):
    """The README's use: the decoder's last nn.Linear replaced by the fused op, one training step."""
    g = generator(seed)
    torch.manual_seed(seed)
    hidden = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU()).double().to(DEVICE)
    last = torch.nn.Linear(16, 30).double().to(DEVICE)
    z, x = randn(g, 8, 4), (rand(g, 8, 30) < 0.5).double()
    params = list(hidden.parameters()) + list(last.parameters())
    fused = -fe.linear_bernoulli_log_prob(hidden(z), last.weight, last.bias, x, reduction="sum").div(8)
    fused_grads = torch.autograd.grad(fused, params)
    plain = F.binary_cross_entropy_with_logits(last(hidden(z)), x, reduction="sum") / 8
    for a, e in zip(fused_grads, torch.autograd.grad(plain, params)):
        torch.testing.assert_close(a, e)
    torch.testing.assert_close(fused, plain)


@needs_fused
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradcheck_with_reductions(reduction, seed):
    """gradcheck also runs the backward twice on one graph and asks for bitwise equal results."""
    g = generator(seed)
    h, w, b, x, options = _problem(g, "gaussian", rows=3, hidden=3, dx=5)
    fn = lambda h, w, b, v: fe.linear_gaussian_log_prob(h, w, b, x, logvar=v, reduction=reduction, chunk_size=2,
                                                        backend=FUSED_BACKENDS[0])
    assert torch.autograd.gradcheck(fn, (h, w, b, options["logvar"]))


@needs_fused
@pytest.mark.parametrize("likelihood", list(HEADS))
def test_an_empty_batch(likelihood, seed):
    """No rows: the values are the reference's (0, or NaN for the mean) and the gradients 0."""
    g = generator(seed)
    h, w, b, x, options = _problem(g, likelihood, rows=0)
    for reduction in ("none", "sum", "mean"):
        got = HEADS[likelihood](h, w, b, x, reduction=reduction, backend=FUSED_BACKENDS[0], **options)
        want = HEADS[likelihood](h, w, b, x, reduction=reduction, backend="reference", **options)
        torch.testing.assert_close(got, want, equal_nan=True)
        for a, e in zip(torch.autograd.grad(got.sum(), _leaves(h, w, b, options)),
                        torch.autograd.grad(want.sum(), _leaves(h, w, b, options))):
            torch.testing.assert_close(a, e)


@needs_fused
@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_a_float64_logvar_computes_in_float64(reduction, seed):
    """A float64 logvar with a float32 layer: float64 values, as the reference (and the unfused
    fe.gaussian_log_prob) computes them."""
    g = generator(seed)
    h, w, b, x, options = _problem(g, "gaussian", dtype=torch.float32)
    v = options["logvar"].detach().double().requires_grad_()
    got = fe.linear_gaussian_log_prob(h, w, b, x, logvar=v, reduction=reduction, chunk_size=4,
                                      backend=FUSED_BACKENDS[0])
    want = fe.linear_gaussian_log_prob(h, w, b, x, logvar=v, reduction=reduction, backend="reference")
    assert got.dtype == want.dtype == torch.float64
    torch.testing.assert_close(got, want)
    for a, e in zip(torch.autograd.grad(got.sum(), (h, w, b, v)), torch.autograd.grad(want.sum(), (h, w, b, v))):
        assert a.dtype == e.dtype
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


@needs_fused
@pytest.mark.parametrize("likelihood", list(HEADS))
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_forward_mode_ad(likelihood, reduction, seed):
    """Inside forward_ad.dual_level() "auto" runs the reference (the fused op has no jvp): the
    tangent is the reference's, never silently dropped; an explicit fused backend is an error."""
    import torch.autograd.forward_ad as fwad

    g = generator(seed)
    h, w, b, x, options = _problem(g, likelihood)
    tangent = randn(g, *h.shape)
    with fwad.dual_level(), pytest.raises(ValueError, match="forward_ad"):
        HEADS[likelihood](fwad.make_dual(h.detach(), tangent), w.detach(), b.detach(), x, backend=FUSED_BACKENDS[0],
                          **{k: v.detach() for k, v in options.items()})
    outs = []
    for backend in ("auto", "reference"):
        with fwad.dual_level():
            out = HEADS[likelihood](fwad.make_dual(h.detach(), tangent), w.detach(), b.detach(), x,
                                    reduction=reduction, backend=backend,
                                    **{k: v.detach() for k, v in options.items()})
            outs.append(fwad.unpack_dual(out).tangent)
    assert outs[0] is not None
    torch.testing.assert_close(outs[0], outs[1])


@needs_fused
@pytest.mark.parametrize("likelihood", list(HEADS))
def test_saved_tensor_hooks_see_the_gradient_buffers(likelihood, seed):
    """Under saved-tensor hooks (save_on_cpu, checkpointing) a reduced call saves its gradients
    through the hooks (the eager owning path would keep them aside): the hooks pack the weight's
    gradient, and the gradients are the same."""
    g = generator(seed)
    h, w, b, x, options = _problem(g, likelihood)
    fn = HEADS[likelihood]

    def grads():
        return torch.autograd.grad(fn(h, w, b, x, reduction="sum", backend=FUSED_BACKENDS[0], **options),
                                   _leaves(h, w, b, options))

    expected = grads()
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t.shape) or t, lambda t: t):
        actual = grads()
    assert sum(shape == w.shape for shape in packed) >= 2  # the weight and its gradient
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)
