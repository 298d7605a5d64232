"""The discretized mixture of logistics beyond its op cases (fastelbo.testing holds it to the
reference on every backend and dtype): the reference against vdvae's and NVAE's code, the far
tails at the -7 clamp in float64, no (B, H, W, 3, M) tensor and no copy on the fused path, the
buffer scaled in place surviving retain_graph and accumulation, second order, torch.compile,
opcheck, errors and validation, NaN, empty inputs, determinism."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastelbo as fe
from fastelbo.benchmarks.dmol import vdvae_log_prob
from fastelbo.ops import discretized_logistic_mixture_log_prob as op_module
from helpers import BACKENDS, DEVICE, FUSED_BACKENDS, generator, rand, randn

dmol = fe.discretized_logistic_mixture_log_prob
needs_fused = pytest.mark.skipif(not FUSED_BACKENDS, reason="no fused backend here")


def levels(g, shape, bits, dtype=torch.float64):
    top = 2 ** bits - 1
    k = torch.randint(0, top + 1, shape, generator=g, device=g.device)
    return (k.to(torch.float64) * (2.0 / top) - 1.0).to(dtype)


def params_for(g, x, n_mix, scale_range=(-3.0, 2.0), spread=4.0, dtype=torch.float64):
    """Channels-last (..., 10 M) parameters for x (..., 3): means `spread` scales from x on average."""
    pixels = x.shape[:-1]
    s = rand(g, *pixels, 3, n_mix, low=scale_range[0], high=scale_range[1])
    a = randn(g, *pixels, 3, n_mix, scale=2.0)
    means = x.unsqueeze(-1) + randn(g, *pixels, 3, n_mix, scale=spread) * torch.exp(s.clamp(min=-7))
    blocks = [torch.stack([means[..., c, :], s[..., c, :], a[..., c, :]], -2).flatten(-2) for c in range(3)]
    return torch.cat([randn(g, *pixels, n_mix, scale=2.0)] + blocks, -1).to(dtype)


def value_and_grad(params, x, backend, cotangent=None, **options):
    p = params.detach().requires_grad_()
    out = dmol(p, x, backend=backend, **options)
    cot = torch.ones_like(out) if cotangent is None else cotangent.to(out.dtype)
    (grad,) = torch.autograd.grad(out, p, cot)
    return out.detach(), grad


# ---- the reference is the codebases' likelihood ----

@pytest.fixture
def exact_softplus(monkeypatch):
    """F.softplus as float64 needs it in the codebases' code below: its default threshold makes it
    the identity above 20, an error of e^-20 per term (times the scale's inverse in a gradient,
    up to 1e-6 at the clamp) that the reference does not make; 40 keeps it exact in float64."""
    softplus = F.softplus
    monkeypatch.setattr(F, "softplus", lambda t, beta=1.0, threshold=20.0: softplus(t, beta, 40.0))


@pytest.mark.parametrize("bits,n_mix", [(8, 10), (5, 2), (8, 1)])
def test_reference_is_vdvae_loss(bits, n_mix, seed, exact_softplus):
    """openai/vdvae's discretized_mix_logistic_loss (benchmarks/dmol.py, its code as written, 8 bits
    generalized to 2^bits levels) in float64: the same value and gradient, with pixels in both edge
    bins and in the density-at-centre branch (means far from x)."""
    g = generator(seed)
    x = levels(g, (2, 5, 4, 3), bits)
    params = params_for(g, x, n_mix, scale_range=(-7.5, 2.0), spread=30.0)
    ours, our_grad = value_and_grad(params, x, "reference", n_mix=n_mix, bits=bits)
    p = params.detach().requires_grad_()
    theirs = vdvae_log_prob(x, p, bits)
    (their_grad,) = torch.autograd.grad(theirs.sum(), p)
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-8, atol=1e-9)


def nvae_log_prob(param, samples, num_mix, num_bits=8):
    """NVlabs/NVAE's DiscMixLogistic.log_prob (utils/distributions.py) as its code writes it: param
    (B, 10 M, H, W), samples (B, 3, H, W) in [0, 1]; per pixel (B, H, W)."""
    B, C, H, W = param.size()
    logit_probs = param[:, :num_mix, :, :]
    l = param[:, num_mix:, :, :].view(B, 3, 3 * num_mix, H, W)
    means = l[:, :, :num_mix, :, :]
    log_scales = torch.clamp(l[:, :, num_mix:2 * num_mix, :, :], min=-7.0)
    coeffs = torch.tanh(l[:, :, 2 * num_mix:3 * num_mix, :, :])
    max_val = 2. ** num_bits - 1
    samples = 2 * samples - 1.0
    samples = samples.unsqueeze(4).expand(-1, -1, -1, -1, num_mix).permute(0, 1, 4, 2, 3)
    mean1 = means[:, 0, :, :, :]
    mean2 = means[:, 1, :, :, :] + coeffs[:, 0, :, :, :] * samples[:, 0, :, :, :]
    mean3 = means[:, 2, :, :, :] + coeffs[:, 1, :, :, :] * samples[:, 0, :, :, :] + \
        coeffs[:, 2, :, :, :] * samples[:, 1, :, :, :]
    mean1, mean2, mean3 = mean1.unsqueeze(1), mean2.unsqueeze(1), mean3.unsqueeze(1)
    means = torch.cat([mean1, mean2, mean3], dim=1)
    centered = samples - means
    inv_stdv = torch.exp(- log_scales)
    plus_in = inv_stdv * (centered + 1. / max_val)
    cdf_plus = torch.sigmoid(plus_in)
    min_in = inv_stdv * (centered - 1. / max_val)
    cdf_min = torch.sigmoid(min_in)
    log_cdf_plus = plus_in - F.softplus(plus_in)
    log_one_minus_cdf_min = - F.softplus(min_in)
    cdf_delta = cdf_plus - cdf_min
    mid_in = inv_stdv * centered
    log_pdf_mid = mid_in - log_scales - 2. * F.softplus(mid_in)
    log_prob_mid_safe = torch.where(cdf_delta > 1e-5, torch.log(torch.clamp(cdf_delta, min=1e-10)),
                                    log_pdf_mid - np.log(max_val / 2))
    log_probs = torch.where(samples < -0.999, log_cdf_plus,
                            torch.where(samples > 0.99, log_one_minus_cdf_min, log_prob_mid_safe))
    log_probs = torch.sum(log_probs, 1) + F.log_softmax(logit_probs, dim=1)
    return torch.logsumexp(log_probs, dim=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nvae_layout_maps_with_a_view(backend, seed, exact_softplus):
    """NVAE's decoder output (B, 10 M, H, W) is the op's NCHW layout as it is (channel_dim=1, no
    copy); its data in [0, 1] maps to x = 2 x - 1. Per pixel (event_dims=0) the values agree with
    NVAE's log_prob, on data without the 8-bit level 254, which NVAE's 0.99 threshold puts in the top
    bin (the README says so)."""
    g = generator(seed)
    n_mix = 3
    x = levels(g, (2, 4, 5, 3), 8)
    x = torch.where((x + 1) * 127.5 == 254, torch.ones_like(x), x)
    params = params_for(g, x, n_mix).permute(0, 3, 1, 2).contiguous()  # NVAE's (B, 10 M, H, W)
    images = ((x + 1) / 2).permute(0, 3, 1, 2).contiguous()  # NVAE's samples (B, 3, H, W) in [0, 1]
    expected = nvae_log_prob(params, images, n_mix)
    ours = dmol(params, 2 * images - 1, n_mix=n_mix, channel_dim=1, event_dims=0, backend=backend)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)


# ---- the fused kernels in the far tails, float64 ----

@needs_fused
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_far_tails_at_the_clamp_in_float64(backend, seed):
    """Log-scales from -10 to 2 (the clamp holds a third of them), means up to 30 scales from x,
    saturated coefficients, 5 and 8 bits, a K=2 sample dim with x broadcast: float64 values and
    gradients as the reference's to 1e-9 (float32 carries |log p| ulps there: the op cases keep
    to where float32 meets the table)."""
    g = generator(seed)
    for bits, n_mix in ((8, 4), (5, 2)):
        x = levels(g, (2, 3, 4, 3), bits)
        params = params_for(g, x.expand(2, 2, 3, 4, 3), n_mix, scale_range=(-10.0, 2.0), spread=30.0)
        params[..., n_mix:].unflatten(-1, (3, 3, n_mix))[..., 2, :] *= 4.0  # coefficients up to |a| ~ 20
        cot = randn(g, 2, 2)
        expected = value_and_grad(params, x, "reference", cot, n_mix=n_mix, bits=bits)
        actual = value_and_grad(params, x, backend, cot, n_mix=n_mix, bits=bits)
        for a, e in zip(actual, expected):
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)


@needs_fused
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_float32_edge_bins_at_the_clamp(backend):
    """float32 at the clamp (scale e^-7), x in the lowest bin, the mean a multiple of 2^-14 below
    it (x - m exact in float32): the gradient with respect to the mean as accurate, relative, as the
    float32 reference's (a few 1e-6). A far tail value derived as 1 + expm1(-delta) cancelled there
    (1.5e-4 relative at 8 bits, the whole value at 5 bits)."""
    for bits in (8, 5):
        n = 2048
        x = torch.zeros(1, n, 1, 3, dtype=torch.float64)
        x[..., 0] = -1.0
        params = torch.zeros(1, n, 1, 10, dtype=torch.float64)
        params[..., 1] = -1.0 - (torch.arange(n, dtype=torch.float64) / 2**14).view(1, n, 1)  # mu_0
        params[..., 2] = -7.0  # its log-scale, at the clamp
        truth = value_and_grad(params, x, "reference", n_mix=1, bits=bits, event_dims=0)[1][..., 1]
        actual = value_and_grad(params.float(), x.float(), backend, n_mix=1, bits=bits, event_dims=0)[1][..., 1]
        normal = truth.abs() > 1e-30  # (where float32 holds the gradient as a normal number)
        relative = ((actual.double() - truth).abs() / truth.abs())[normal]
        assert normal.sum() > 100 and relative.max() < 2e-5, (bits, float(relative.max()))


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("layout", ["transposed pixels", "x broadcast over rows", "sliced params", "event_dims=3",
                                    "1 bit", "10 bits", "float16 x"])
def test_layouts_and_options_against_the_reference(backend, layout, seed):
    """float64 (x float16 in one case) against the reference: layouts the kernels cannot address as
    rows of pixels (H and W transposed, x broadcast along one of the summed pixel dims: the
    contiguous fallback, whose gradient is copied back into params' layout), sliced params, the
    batch dim summed too, the extreme bit depths."""
    g = generator(seed)
    n_mix, bits, event_dims = 2, 8, 2
    shape = (3, 4, 5)
    if layout == "1 bit":
        bits = 1
    if layout == "10 bits":
        bits = 10
    if layout == "event_dims=3":
        event_dims = 3
    x = levels(g, shape + (3,), bits)
    params = params_for(g, x, n_mix)
    if layout == "transposed pixels":
        params = params.transpose(1, 2).contiguous().transpose(1, 2)
    if layout == "x broadcast over rows":
        x = x[:1, :1]  # (1, 1, 5, 3): the same row of pixels everywhere
        params = params_for(g, x.expand(shape + (3,)), n_mix)
    if layout == "sliced params":
        params = params_for(g, levels(g, (3, 8, 5, 3), bits), n_mix)[:, ::2]
        x = levels(g, shape + (3,), bits)
    if layout == "float16 x":
        x = x.half()
    cot = randn(g, *shape[: 3 - event_dims]) if event_dims < 3 else torch.randn((), generator=g, dtype=torch.float64)
    expected = value_and_grad(params, x.double(), "reference", cot, n_mix=n_mix, bits=bits, event_dims=event_dims)
    actual = value_and_grad(params, x, backend, cot, n_mix=n_mix, bits=bits, event_dims=event_dims)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)
    assert actual[1].stride() == params.stride() or not params.is_contiguous()


@needs_fused
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_saved_tensor_hooks_see_the_gradient_buffer(backend, seed):
    """Under torch.autograd.graph.saved_tensors_hooks (save_on_cpu, checkpointing) the call saves
    its gradient buffer through the hooks (the eager path would keep it aside): the hooks pack a
    tensor of params' size, and the gradient is the same."""
    g = generator(seed)
    x = levels(g, (2, 3, 4, 3), 8, torch.float32)
    params = params_for(g, x, 2, dtype=torch.float32)
    expected = value_and_grad(params, x, backend, n_mix=2)
    packed = []

    def pack(t):
        packed.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        actual = value_and_grad(params, x, backend, n_mix=2)
    assert params.shape in packed and sum(shape == params.shape for shape in packed) >= 2  # params and the buffer
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


# ---- memory: no (B, H, W, 3, M) tensor, no copy, the buffer scaled in place ----

@needs_fused
@pytest.mark.parametrize("layout", ["channels_last", "nchw", "nchw broadcast x"])
def test_fused_step_allocates_the_gradient_once_and_copies_nothing(layout, seed):
    """The fused fwd+bwd allocates the gradient buffer (params' size, float32) and the per-image
    output, nothing of the mixture's (B, H, W, 3, M) size and no copy of params or x (NCHW read
    through its strides, x broadcast over a sample dim through stride 0). The reference step, the
    control, allocates many times params' size (the check can fail)."""
    if DEVICE != "cpu":
        pytest.skip("the CPU profiler's memory records")
    g = generator(seed)
    n_mix, shape = 10, (4, 16, 16)
    x = levels(g, shape + (3,), 8, torch.float32)
    params = params_for(g, x, n_mix, dtype=torch.float32)
    channel_dim = -1
    if layout != "channels_last":
        params, x, channel_dim = params.permute(0, 3, 1, 2).contiguous(), x.permute(0, 3, 1, 2).contiguous(), 1
    if layout == "nchw broadcast x":
        params = params.unsqueeze(0).expand(2, *params.shape).contiguous()  # (K, B, 10 M, H, W)
        channel_dim = 2
    nbytes = params.numel() * 4
    for backend, bound in ((FUSED_BACKENDS[0], 1.05), ("reference", None)):
        p = params.detach().requires_grad_()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            out = dmol(p, x, n_mix=n_mix, channel_dim=channel_dim, backend=backend)
            out.sum().backward()
        names = {e.name for e in prof.events()}
        allocated = sum(max(e.self_cpu_memory_usage, 0) for e in prof.events())
        if bound is None:
            assert allocated > 5 * nbytes  # the reference's (..., 3, M) tensors
        else:
            assert not names & {"aten::copy_", "aten::contiguous", "aten::clone"}, names
            assert nbytes <= allocated <= bound * nbytes, (allocated, nbytes)
            assert p.grad.stride() == p.stride()  # the gradient in params' own layout


@needs_fused
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_retain_graph_twice_accumulation_and_held_gradients(backend, seed):
    """The eager path scales its own buffer in place and hands it over as the gradient: a second
    backward of a retained graph recomputes it (the same bits), gradients accumulate exactly, and a
    gradient already returned is never modified afterwards."""
    g = generator(seed)
    x = levels(g, (2, 3, 4, 3), 8, torch.float32)
    p = params_for(g, x, 3, dtype=torch.float32).requires_grad_()
    out = dmol(p, x, n_mix=3, backend=backend)
    cot = randn(g, 2, dtype=torch.float32)
    (first,) = torch.autograd.grad(out, p, cot, retain_graph=True)
    held = first.clone()
    (second,) = torch.autograd.grad(out, p, cot, retain_graph=True)
    assert torch.equal(first, held) and torch.equal(second, first)
    (out * cot).sum().backward(retain_graph=True)
    (out * cot).sum().backward()
    assert torch.equal(p.grad, 2 * first)
    assert torch.equal(first, held)


# ---- second order, compile, opcheck ----

@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_and_gradgradcheck(backend, seed):
    """float64: gradcheck (every backend: the fused gradient buffer) and gradgradcheck (the recorded
    backward differentiates the reference), NCHW with x broadcast over a sample dim, an edge-bin and
    a clamped log-scale among the inputs."""
    g = generator(seed)
    x = levels(g, (1, 2, 2, 3), 5)
    x[0, 0, 0] = -1.0
    params = params_for(g, x.expand(2, 2, 2, 3), 2)
    params[0, 0, 0, 2 + 2] = -7.5  # a log-scale below the clamp
    p = params.movedim(-1, 1).contiguous().requires_grad_()  # (2, 20, 2, 2)
    xn = x.movedim(-1, 1)

    def fn(p):
        return dmol(p, xn, n_mix=2, bits=5, channel_dim=1, backend=backend)

    assert torch.autograd.gradcheck(fn, (p,))
    assert torch.autograd.gradgradcheck(fn, (p,))


@needs_fused
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_inside_torch_compile(backend, seed):
    g = generator(seed)
    x = levels(g, (2, 3, 4, 3), 8, torch.float32)
    params = params_for(g, x, 2, dtype=torch.float32)

    def step(p):
        return -dmol(p, x, n_mix=2, backend=backend).mean()

    eager = value_and_grad_of(step, params)
    torch._dynamo.reset()
    compiled = value_and_grad_of(torch.compile(step, fullgraph=True), params)
    for a, e in zip(compiled, eager):
        torch.testing.assert_close(a, e)


def value_and_grad_of(fn, params):
    p = params.detach().requires_grad_()
    loss = fn(p)
    return loss.detach(), torch.autograd.grad(loss, p)[0]


@needs_fused
def test_opcheck(seed):
    g = generator(seed)
    x = levels(g, (2, 3, 4, 3), 8, torch.float32)
    params = params_for(g, x, 2, dtype=torch.float32)
    nchw = params.permute(0, 3, 1, 2).contiguous().movedim(1, -1)  # channels last logically, NCHW strides
    for p, need_grad, event_dims in ((params, True, 2), (nchw, True, 1), (params, False, 0)):
        torch.library.opcheck(torch.ops.fastelbo.discretized_logistic_mixture_log_prob.default,
                              (p.requires_grad_(need_grad), x, 2, 8, event_dims, need_grad))


# ---- arguments, validation, NaN, empty, determinism ----

@pytest.mark.parametrize("backend", BACKENDS)
def test_errors_name_the_argument(backend):
    x = torch.zeros(2, 4, 4, 3)
    p = torch.zeros(2, 4, 4, 30)
    cases = [
        (dict(params=torch.zeros(2, 4, 4, 20)), ValueError, "10 \\* n_mix = 30"),
        (dict(x=torch.zeros(2, 4, 4, 1)), ValueError, "3 colour channels"),
        (dict(bits=11), ValueError, "bits must be in \\[1, 10\\]"),
        (dict(bits=0), ValueError, "bits must be >= 1"),
        (dict(n_mix=0), ValueError, "n_mix must be >= 1"),
        (dict(channel_dim=4), ValueError, "channel_dim=4 is out of range"),
        (dict(event_dims=4), ValueError, "event_dims=4"),
        (dict(x=torch.zeros(3, 4, 4, 3)), ValueError, "x \\(channels last\\) of shape"),
        (dict(x=torch.zeros(2, 4, 4, 3, dtype=torch.int64)), TypeError, "x must have dtype"),
        (dict(params="p"), TypeError, "params must be a torch.Tensor"),
        (dict(x=torch.zeros(2, 4, 4, 3, requires_grad=True)), ValueError, "x must not require grad"),
    ]
    for change, error, message in cases:
        args = dict(params=p, x=x, n_mix=3)
        args.update(change)
        params, data = args.pop("params"), args.pop("x")
        with pytest.raises(error, match=message):
            dmol(params, data, backend=backend, **args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_validation_and_nan(backend):
    x = torch.zeros(1, 2, 2, 3)
    p = torch.randn(1, 2, 2, 20)
    try:
        fe.set_validation(True)
        with pytest.raises(ValueError, match="grid of 2\\^bits = 256 levels"):
            dmol(p, x + 0.001, n_mix=2, backend=backend)
        with pytest.raises(ValueError, match="grid"):
            dmol(p, x - 2.0, n_mix=2, backend=backend)
        bad = p.clone()
        bad[0, 1, 1, 5] = float("nan")
        with pytest.raises(ValueError, match="params has non-finite values"):
            dmol(bad, x, n_mix=2, backend=backend)
        dmol(p, torch.full_like(x, 2 / 7 - 1), n_mix=2, bits=3, backend=backend)  # on the 3-bit grid
    finally:
        fe.set_validation(False)
    out = dmol(bad, x, n_mix=2, event_dims=0, backend=backend)  # NaN in, NaN out (that pixel only)
    assert torch.isnan(out[0, 1, 1]) and torch.isfinite(out).sum() == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs_and_inputs_unmodified(backend):
    for shape in ((0, 4, 4), (2, 0, 4)):
        p = torch.zeros(*shape, 20, requires_grad=True)
        out = dmol(p, torch.zeros(*shape, 3), n_mix=2, backend=backend)
        assert out.shape == shape[:1] and torch.equal(out, torch.zeros(shape[:1]))
        out.sum().backward()
        assert p.grad.shape == p.shape
    g = generator(5)
    x = levels(g, (2, 3, 3, 3), 8, torch.float32)
    p = params_for(g, x, 2, dtype=torch.float32).requires_grad_()
    before = (p.detach().clone(), x.clone())
    dmol(p, x, n_mix=2, backend=backend).sum().backward()
    assert torch.equal(p.detach(), before[0]) and torch.equal(x, before[1])


@pytest.mark.skipif("cpu" not in FUSED_BACKENDS, reason="the cpu backend is unavailable")
@pytest.mark.parametrize("backend", ["cpu"])  # (the backend whose work is split over torch's threads)
def test_bitwise_deterministic_whatever_the_thread_count(backend, seed):
    g = generator(seed)
    x = levels(g, (3, 20, 30, 3), 8, torch.float32)
    params = params_for(g, x, 4, dtype=torch.float32)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (threads, 1, threads):
            torch.set_num_threads(n)
            results.append(value_and_grad(params, x, backend, n_mix=4))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(other, results[0]))


def test_elbo_module_dmol(seed):
    """fe.ELBO("dmol", n_mix=..., bits=..., channel_dim=...) is the latent and the op, NCHW too."""
    g = generator(seed)
    x = levels(g, (3, 4, 5, 3), 3, torch.float32)
    mu, scale = randn(g, 3, 2, dtype=torch.float32), randn(g, 3, 2, dtype=torch.float32)
    weight = randn(g, 2, 4 * 5 * 20, dtype=torch.float32, scale=0.1)

    def decoder(z):
        return (z @ weight).unflatten(-1, (4, 5, 20))

    torch.manual_seed(seed)
    out = fe.ELBO("dmol", n_mix=2, bits=3, backend="reference")(x, mu, scale, decoder)
    torch.manual_seed(seed)
    latent = fe.gaussian_latent(mu, scale, backend="reference")
    log_lik = dmol(decoder(latent.z), x, n_mix=2, bits=3, backend="reference")
    torch.testing.assert_close(out.log_lik, log_lik)
    torch.manual_seed(seed)
    nchw = fe.ELBO("dmol", n_mix=2, bits=3, channel_dim=1, backend="reference")(
        x.permute(0, 3, 1, 2), mu, scale, lambda z: decoder(z).movedim(-1, -3))
    torch.testing.assert_close(nchw.loss, out.loss)
    with pytest.raises(TypeError, match="needs the keyword argument n_mix"):
        fe.ELBO("dmol")
    with pytest.raises(TypeError, match="unexpected keyword argument 'n_mix'"):
        fe.ELBO("bernoulli", n_mix=2)
    with pytest.raises(ValueError, match="n_mix must be >= 1"):
        fe.ELBO("dmol", n_mix=0)
    with pytest.raises(ValueError, match="channel_dim=0 must name one of x's event dims"):
        fe.ELBO("dmol", n_mix=2, bits=3, channel_dim=0, backend="reference")(x, mu, scale, decoder)


def test_op_module_constants_match_the_kernels():
    """The reference's constants are the C++ kernels' (csrc/core/dmol.h)."""
    import math
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    header = (root / "csrc" / "core" / "dmol.h").read_text()
    triton_source = (root / "triton_kernels" / "dmol.py").read_text()
    assert "kDmolMinLogScale = -7.0" in header and op_module.MIN_LOG_SCALE == -7.0
    assert "kDmolEdge = 0.999" in header and op_module.EDGE == 0.999
    assert f"{math.log(1e-5):.15f}"[:15] in header and op_module.LOG_MASS_FLOOR == math.log(1e-5)
    assert "MIN_LOG_SCALE: tl.constexpr = -7.0" in triton_source and "EDGE: tl.constexpr = 0.999" in triton_source
    assert f"LOG_MASS_FLOOR: tl.constexpr = {math.log(1e-5)!r}" in triton_source


def test_readme_example_runs():
    """The README's DMOL snippet, on vdvae-shaped and NVAE-shaped inputs: vdvae's loss and NVAE's
    layout give the same per-image log-likelihood for the same images and parameters."""
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    code = re.search(r"<!-- dmol example -->\s*```python\n(.*?)```", readme, re.S).group(1)
    g = generator(3)
    x = levels(g, (2, 4, 5, 3), 8, torch.float32)
    out = params_for(g, x, 10, dtype=torch.float32)
    namespace = {"fe": fe, "torch": torch, "out": out, "x": x, "H": 4, "W": 5,
                 "logits": out.permute(0, 3, 1, 2), "x01": ((x + 1) / 2).permute(0, 3, 1, 2)}
    first = {}
    exec(compile(code.split("# NVlabs/NVAE")[0], "README dmol example", "exec"), namespace)
    first["vdvae"] = namespace["log_px"]
    exec(compile(code, "README dmol example", "exec"), namespace)
    torch.testing.assert_close(namespace["log_px"], first["vdvae"])
    assert namespace["loss"].shape == () and isinstance(namespace["loss_fn"], fe.ELBO)
