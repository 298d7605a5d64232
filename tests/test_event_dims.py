"""The latent's event dims (`dim=`) beyond the op cases of fastelbo.testing (which hold NCHW and
channels-last latents, priors and DReG to the reference on every backend and dtype): no copy of
the copy-free layouts, the noise of an element independent of the layout, the argument errors,
fe.ELBO / fe.vae_loss, torch.compile."""
import pytest
import torch

import fastelbo as fe
from fastelbo.ops._event_dims import layout_for
from fastelbo.testing import TOLERANCES
from helpers import DEVICE, FUSED_BACKENDS, HAS_TRITON, generator, rand, randn

COPIES = ("aten::copy_", "aten::clone", "aten::contiguous", "aten::_reshape_copy")
COPY_FREE = {"nchw(1,2,3)": ((1, 2, 3), False), "nchw(2,3)": ((2, 3), False), "nchw(1,)": (1, False),
             "channels_last(1,2,3)": ((1, 2, 3), True), "channels_last(2,3)": ((2, 3), True),
             "channels_last(1,)": (1, True)}


def _posterior(g, channels_last=False, dtype=torch.float32):
    mu, scale = randn(g, 2, 3, 4, 5, dtype=dtype), rand(g, 2, 3, 4, 5, dtype=dtype, low=-1, high=1)
    if channels_last:
        mu, scale = (t.contiguous(memory_format=torch.channels_last) for t in (mu, scale))
    return mu.requires_grad_(), scale.requires_grad_()


def _copies(fn) -> list:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sorted({e.name for e in prof.events() if e.name in COPIES})


@pytest.mark.skipif("cpu" not in FUSED_BACKENDS, reason="the cpu backend (the profiler sees its C++ copies)")
@pytest.mark.parametrize("layout", list(COPY_FREE))
def test_the_cpu_kernels_read_nchw_and_channels_last_without_a_copy(layout, seed):
    dim, channels_last = COPY_FREE[layout]
    g = generator(seed)
    mu, scale = _posterior(g, channels_last)
    prior = tuple(t.detach().clone(memory_format=torch.preserve_format).requires_grad_() for t in (mu, scale))

    def step():  # (autograd.grad: .backward() would copy a gradient whose strides differ from its leaf's)
        for source in (g, None):  # (None: the default generator, the op given trailing event dims as they are)
            lat = fe.gaussian_latent(mu, scale, dim=dim, n_samples=2, prior=prior, generator=source, backend="cpu")
            kl = fe.gaussian_kl(mu, scale, dim=dim, per_dim=True, backend="cpu")
            loss = lat.z.sum() + lat.log_q.sum() + lat.log_p.sum() + lat.kl.sum() + kl.sum()
            torch.autograd.grad(loss, (mu, scale, *prior))

    assert _copies(step) == []
    # The check sees copies: a channels-last mu with an NCHW prior of its shape copies the prior,
    # and a layout the kernels' row planner cannot address is copied.
    cl_mu, cl_scale = _posterior(g, channels_last=True)
    nchw_prior = (cl_mu.detach().contiguous(), cl_scale.detach().contiguous())
    assert _copies(lambda: fe.gaussian_latent(cl_mu, cl_scale, dim=(1, 2, 3), prior=nchw_prior, backend="cpu")) != []
    odd = randn(g, 2, 3, 4, 5, 6).permute(3, 1, 0, 2, 4)
    assert _copies(lambda: fe.gaussian_latent(odd, odd, backend="cpu")) != []


def _layouts(g):
    """Latents whose strides test the choice of flattening: NCHW, channels-last, empty batch, size-1
    dims, slices along each dim, a broadcast (stride-0) batch, channels-last 3-D (NCDHW)."""
    cl = randn(g, 4, 3, 5, 6).contiguous(memory_format=torch.channels_last)
    return {"nchw": randn(g, 2, 3, 4, 5), "channels_last": cl, "empty batch": cl[:0], "C=1": cl[:, :1],
            "H=1": cl[:, :, :1], "W=1": cl[:, :, :, :1], "batch slice": cl[::2], "channel slice": cl[:, 1:],
            "height slice": cl[:, :, 1:4], "width slice": cl[:, :, :, ::2],
            "broadcast batch": cl[:1].expand(3, -1, -1, -1),
            "channels_last_3d": randn(g, 2, 3, 2, 4, 5).contiguous(memory_format=torch.channels_last_3d)}


@pytest.mark.skipif("cpu" not in FUSED_BACKENDS, reason="the cpu backend")
def test_the_python_and_cpp_flattenings_agree(seed):
    """The fakes and the Triton launcher flatten the event as csrc/binding/event_dims.h does
    (ops/_event_dims.py: stored_channels, OpEventDims): the strides of the fake z and gradients are
    the C++ op's, on every layout of _layouts."""
    from fastelbo.ops import gaussian_latent as module

    fe.gaussian_latent(torch.zeros(1, 1), torch.zeros(1, 1), backend="cpu")  # loads the C++ library
    for name, mu in _layouts(generator(seed)).items():
        n = mu.dim() - 1
        for k in (0, 2):
            args = (mu, mu, mu, mu, None, torch.tensor(7), 1, k, False, n)
            z = torch.ops.fastelbo.gaussian_latent.default(*args)[0]
            fake_z = module.fake(*args)[0]
            assert (z.shape, z.stride()) == (fake_z.shape, fake_z.stride()), (name, k)
        grads = torch.ops.fastelbo.gaussian_latent_backward.default(torch.ones_like(mu), None, None, None, *args[:6], 1,
                                                                  0, False, n)
        fakes = module.backward_fake(None, None, None, None, *args[:6], 1, 0, False, n)
        assert [(t.shape, t.stride()) for t in grads] == [(t.shape, t.stride()) for t in fakes], name


@pytest.mark.skipif("cpu" not in FUSED_BACKENDS, reason="the cpu backend")
@pytest.mark.parametrize("dim", [(1, 2, 3), (2, 3)])
def test_trailing_event_dims_go_to_the_op_without_view_nodes(dim, seed):
    """A hierarchical VAE calls the latent once per layer: with the event dims mu's last (NCHW with
    dim=(1, 2, 3) or (2, 3)) the op flattens them itself, below autograd (its event_dims argument),
    so z's node is the op's and its inputs' edges go straight to the leaves (no view nodes forward
    or backward). Other event dims (dim=1) take flat views in Python."""
    g = generator(seed)
    mu, scale = _posterior(g, channels_last=False)
    pm, ps = (randn(g, 3, 1, 1).requires_grad_() for _ in range(2))
    lat = fe.gaussian_latent(mu, scale, dim=dim, param="log_std", prior=(pm, ps), backend="cpu")
    node = lat.z.grad_fn
    assert "View" not in type(node).__name__ and "Unflatten" not in type(node).__name__
    assert all(type(fn).__name__ == "AccumulateGrad" for fn, _ in node.next_functions if fn is not None)
    assert lat.kl.grad_fn is node
    flat = fe.gaussian_latent(mu, scale, dim=1, backend="cpu").z.grad_fn  # event dim in the middle: views
    assert type(flat).__name__ != type(node).__name__


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("layout", list(COPY_FREE))
def test_the_triton_launchers_plan_nchw_and_channels_last_without_a_copy(layout, seed):
    """The Triton launchers address the flat views through their strides: the row planner hands
    back the same tensors (under the interpreter the profiler sees the interpreter's own copies).
    Trailing event dims are flattened by the op (OpEventDims: channels-last in storage order)."""
    from fastelbo.ops._event_dims import OpEventDims
    from fastelbo.triton_backend._layout import plan

    dim, channels_last = COPY_FREE[layout]
    mu, scale = _posterior(generator(seed), channels_last)
    event = layout_for(mu, dim)
    if event.trailing:
        event = OpEventDims(mu, len(event.dims))
        assert event.channels == (3 if channels_last and dim == (1, 2, 3) else 1)
    flat = [event.flat(mu), event.flat(scale), event.flat_prior(randn(generator(seed), 3, 1, 1))
            .expand(event.flat(mu).shape)]
    assert all(t._base is not None for t in flat[:2])  # views of mu and scale
    planned, _ = plan(flat, 1)
    assert all(p is t for p, t in zip(planned, flat))


@pytest.mark.parametrize("backend", ["reference"] + FUSED_BACKENDS)
def test_an_element_draws_the_same_noise_in_every_layout(backend, seed):
    """The noise of an element is that of its batch index and its index in the event dims taken in
    mu's order: the same for NCHW and channels-last, and dim=(1, 2, 3) is the flat latent's."""
    mu, scale = _posterior(generator(seed), dtype=torch.float64)
    cl_mu, cl_scale = (t.detach().contiguous(memory_format=torch.channels_last) for t in (mu, scale))
    for dim in ((1, 2, 3), 1, (2, 3)):
        z = fe.gaussian_latent(mu, scale, dim=dim, generator=generator(seed), backend=backend).z
        cl_z = fe.gaussian_latent(cl_mu, cl_scale, dim=dim, generator=generator(seed), backend=backend).z
        # (to rounding: a strided layout takes another code path, e.g. a scalar exp for sigma)
        torch.testing.assert_close(z, cl_z, rtol=1e-13, atol=1e-13, msg=f"dim={dim}")
    flat = fe.gaussian_latent(mu.flatten(1), scale.flatten(1), generator=generator(seed), backend=backend)
    nchw = fe.gaussian_latent(mu, scale, dim=(1, 2, 3), generator=generator(seed), backend=backend)
    assert torch.equal(nchw.z.flatten(1), flat.z)
    torch.testing.assert_close(nchw.log_q, flat.log_q)
    torch.testing.assert_close(nchw.kl, flat.kl)
    for last in (-1, 3, (3,), (-1,)):
        same = fe.gaussian_latent(mu, scale, dim=last, generator=generator(seed), backend=backend)
        assert torch.equal(same.z, fe.gaussian_latent(mu, scale, generator=generator(seed), backend=backend).z)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("n_samples", [None, 2])
@pytest.mark.parametrize("prior", [True, False])
@pytest.mark.parametrize("shape, dtype", [((3, 8, 9, 19), torch.float64), ((2, 16, 6, 10), torch.float32)])
def test_a_long_channels_last_row_draws_the_noise_of_its_nchw_copy(backend, n_samples, prior, shape, dtype, seed):
    """Channels-last with dim=(1, 2, 3) and D > 512 (the CPU kernels' tile of a long row): z, log q
    and every gradient as the NCHW call's, with a per-sample prior in the same layout or none (the
    CPU's flat path). C = 8 and S = 171 (not a multiple of 4): the CPU scatters the row's noise;
    C = 16 and S = 60 in float32: the AVX-512 noise is drawn straight in storage order
    (NoiseBlock::fill_channels_last)."""
    g = generator(seed)
    mu, scale, pm, ps = (randn(g, *shape, dtype=dtype, scale=s) for s in (1.0, 0.3, 1.0, 0.3))
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        leaves = [t.contiguous(memory_format=layout).requires_grad_() for t in (mu, scale, pm, ps)[:4 if prior else 2]]
        lat = fe.gaussian_latent(leaves[0], leaves[1], param="log_std", dim=(1, 2, 3), n_samples=n_samples,
                                 prior=tuple(leaves[2:]) or None, generator=generator(seed), backend=backend)
        loss = (lat.z * lat.z).sum() + lat.log_q.sum() + 2 * lat.log_p.sum() + lat.kl.sum()
        results.append([lat.z, lat.log_q, lat.log_p, lat.kl, *torch.autograd.grad(loss, leaves)])
    tol = TOLERANCES[dtype]["bwd"]
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=tol.rtol, atol=tol.atol)


@pytest.mark.parametrize("dim, error, words", [
    ((1, 1), ValueError, "repeated"), (4, ValueError, "out of range"), ((-5,), ValueError, "out of range"),
    ((), TypeError, "dim must be"), (1.0, TypeError, "dim must be"), (True, TypeError, "dim must be"),
    ([1, "2"], TypeError, "dim must be"),
])
def test_bad_dims_name_the_argument(dim, error, words, seed):
    mu, scale = _posterior(generator(seed))
    for call in (lambda: fe.gaussian_latent(mu, scale, dim=dim), lambda: fe.gaussian_kl(mu, scale, dim=dim),
                 lambda: fe.vae_loss(mu.flatten(1), torch.rand(2, 60), mu, scale, dim=dim)):
        with pytest.raises(error, match=words):
            call()
    with pytest.raises(error, match=words):
        fe.ELBO(dim=dim)(torch.rand(2, 60), mu, scale, lambda z: z.flatten(1))


def test_a_prior_that_does_not_broadcast_is_named(seed):
    mu, scale = _posterior(generator(seed))
    with pytest.raises(ValueError, match="prior"):
        fe.gaussian_latent(mu, scale, dim=(1, 2, 3), prior=(torch.zeros(4, 1, 1), torch.zeros(3, 1, 1)))


@pytest.mark.parametrize("backend", ["reference"] + FUSED_BACKENDS)
def test_vae_loss_and_the_elbo_module_take_dim(backend, seed):
    """On NCHW latents summed per image, the same values and gradients as the flat latent."""
    mu, scale = _posterior(generator(seed), dtype=torch.float64)
    x = (rand(generator(seed + 1), 2, 60) < 0.5).double()
    w = randn(generator(seed + 2), 60, 60, scale=0.2)
    with fe.use_backend(backend):
        nchw = fe.vae_loss(mu.flatten(1) @ w, x, mu, scale, dim=(1, 2, 3))
        flat = fe.vae_loss(mu.flatten(1) @ w, x, mu.flatten(1), scale.flatten(1))
        torch.testing.assert_close(nchw, flat)
        for options in ({}, {"free_bits": 0.05}, {"n_samples": 3, "kl": "mc", "estimator": "iwae"}):
            outs = []
            for m, s, dim, decode in ((mu, scale, (1, 2, 3), lambda z: z.flatten(-3) @ w),
                                      (mu.flatten(1), scale.flatten(1), -1, lambda z: z @ w)):
                out = fe.ELBO("bernoulli", dim=dim, **options)(x, m, s, decode, generator=generator(seed))
                outs.append((out.loss, *torch.autograd.grad(out.loss, (mu, scale))))
            for a, b in zip(*outs):
                torch.testing.assert_close(a, b)


@pytest.mark.skipif(DEVICE != "cpu" or "cpu" not in FUSED_BACKENDS, reason="compiles for the cpu backend")
def test_dim_inside_torch_compile(seed):
    mu, scale = _posterior(generator(seed))

    def step(mu, scale):
        lat = fe.gaussian_latent(mu, scale, dim=(1, 2, 3), n_samples=2, backend="cpu")
        return lat.z.square().mean() + lat.kl.sum() - lat.log_q.sum()

    torch.manual_seed(seed)
    eager = step(mu, scale)
    grads = torch.autograd.grad(eager, (mu, scale))
    torch._dynamo.reset()
    torch.manual_seed(seed)
    compiled = torch.compile(step, fullgraph=True)(mu, scale)
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(torch.autograd.grad(compiled, (mu, scale)), grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_second_derivatives_through_the_flat_views(backend, seed):
    """gradgradcheck of the latent (a per-sample prior, K=2) and the KL with event dims in the middle."""
    g = generator(seed)
    mu, scale = randn(g, 2, 3, 2, 2).requires_grad_(), rand(g, 2, 3, 2, 2, low=-1, high=1).requires_grad_()
    pm, ps = randn(g, 3, 1, 2).requires_grad_(), rand(g, 3, 1, 2, low=-1, high=1).requires_grad_()

    def latent(mu, scale, pm, ps):
        lat = fe.gaussian_latent(mu, scale, dim=(1, 3), n_samples=2, prior=(pm, ps), param="soft_log_std",
                                 generator=generator(seed), backend=backend)
        return lat.z, lat.log_q, lat.log_p, lat.kl

    def kl(mu, scale, pm, ps):
        return fe.gaussian_kl(mu, scale, dim=(1, 3), prior=(pm, ps), per_dim=True, backend=backend)

    for fn in (latent, kl):
        assert torch.autograd.gradgradcheck(fn, (mu, scale, pm, ps))


@pytest.mark.skipif("cpu" not in FUSED_BACKENDS, reason="the cpu backend")
def test_second_derivatives_with_trailing_event_dims_in_the_op(seed):
    """gradgradcheck of the latent whose op takes the trailing event dims itself (no generator:
    the default one, reseeded on each call so that every evaluation draws the same noise), with a
    per-channel prior mean and a per-sample prior scale, K=2. (Not with stl, whose gradient of
    log q is by design not the derivative of its value.)"""
    g = generator(seed)
    mu, scale = randn(g, 2, 3, 2, 2).requires_grad_(), rand(g, 2, 3, 2, 2, low=-1, high=1).requires_grad_()
    pm, ps = randn(g, 3, 1, 1).requires_grad_(), rand(g, 2, 3, 2, 2, low=-1, high=1).requires_grad_()

    def latent(mu, scale, pm, ps):
        torch.manual_seed(seed)
        lat = fe.gaussian_latent(mu, scale, dim=(1, 2, 3), n_samples=2, prior=(pm, ps), param="log_std", backend="cpu")
        assert lat.z.grad_fn is lat.kl.grad_fn  # the op's own node: the trailing dims went to the op
        return lat.z, lat.log_q, lat.log_p, lat.kl

    assert torch.autograd.gradgradcheck(latent, (mu, scale, pm, ps))
