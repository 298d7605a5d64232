"""One name and one contract per op on every backend: each op module's SCHEMAS are exactly the C++
library's schemas and the Triton overloads', each module's public function is fe.<its name>,
every fused op the backends register belongs to an op module, and torch.library.opcheck passes on
every op of every overload (the C++ kernels' default, Triton's `.triton`, the CUDA simulator's
`.cuda_sim`) on the same cases."""
import pytest
import torch

import fastelbo as fe
from fastelbo import ops, rng
from helpers import HAS_TRITON, SIMULATED_CUDA, generator, rand, randn

SCHEMAS = {name: schema for op in ops.MODULES for name, schema in op.SCHEMAS.items()}


def _parsed(name: str, schema: str) -> str:
    return str(torch._C.parse_schema(f"fastelbo::{name}{schema}"))


def test_each_module_is_its_op():
    for op in ops.MODULES + ops.LINEAR_HEADS:
        assert op.__name__ == f"fastelbo.ops.{op.NAME}"
        assert getattr(fe, op.NAME) is getattr(op, op.NAME)
        assert getattr(fe.reference, op.NAME).__wrapped__ is getattr(op, op.NAME)
        assert op.NAME in op.SCHEMAS
    for op in ops.MODULES:
        assert op.__name__ == f"fastelbo.ops.{op.NAME}"
        assert getattr(fe, op.NAME) is getattr(op, op.NAME)
        assert getattr(fe.reference, op.NAME).__wrapped__ is getattr(op, op.NAME)
        assert set(op.FAKES) == set(op.SCHEMAS)
        assert set(op.AUTOGRAD) <= set(op.SCHEMAS)
        assert all(name.endswith("_backward_differentiable") for name in op.SECOND_ORDER)


@pytest.mark.skipif(fe.backends()["cpu"] != "available", reason="the C++ library is unavailable here")
def test_the_cpp_schemas_are_the_op_modules():
    import fastelbo.cpp_backend.library  # noqa: F401

    for name, schema in SCHEMAS.items():
        assert str(getattr(torch.ops.fastelbo, name).default._schema) == _parsed(name, schema), name
    second_order = {name for op in ops.MODULES for name in op.SECOND_ORDER}
    # Every C++ op is an op module's (or its second-order composite, or the test-only philox_words);
    # the linear heads are composite ops defined in Python (their modules hold their schemas).
    cpp_ops = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names()
               if name.startswith("fastelbo::") and "." not in name}
    heads = {name for op in ops.LINEAR_HEADS for name in op.SCHEMAS}
    assert cpp_ops - {"philox_words"} - second_order - heads == set(SCHEMAS)
    philox = str(torch.ops.fastelbo.philox_words.default._schema)
    assert philox == _parsed("philox_words", rng.PHILOX_WORDS_SCHEMA)
    for op in ops.LINEAR_HEADS:
        for name, schema in op.SCHEMAS.items():
            assert str(getattr(torch.ops.fastelbo, name).default._schema) == _parsed(name, schema), name


@pytest.mark.parametrize("overload,module", [("triton", "fastelbo.triton_backend.register"),
                                             ("cuda_sim", "fastelbo.cpp_backend.cuda_sim")])
def test_the_python_registered_overloads_have_the_same_schemas(overload, module):
    if overload == "triton" and not HAS_TRITON:
        pytest.skip("triton is unavailable here")
    if overload == "cuda_sim" and not SIMULATED_CUDA:
        pytest.skip("the CUDA simulator runs only under FASTELBO_CUDA_SIM=1")
    __import__(module)
    for name, schema in SCHEMAS.items():
        got = str(getattr(getattr(torch.ops.fastelbo, name), overload)._schema)
        assert got == _parsed(name, schema).replace(f"fastelbo::{name}(", f"fastelbo::{name}.{overload}("), name


# ---- opcheck: schemas, fakes, autograd registration, on both overloads ----

# The overload -> the backend that registers it (`.cuda_sim`: "cuda" under FASTELBO_CUDA_SIM=1).
OVERLOADS = {"default": "cpu", "triton": "triton", "cuda_sim": "cuda"}


def _leaf(t):
    return t.detach().requires_grad_(True)


def _opcheck_cases(seed):
    """(op name, arguments) covering each op's optional inputs, modes and gradient buffers."""
    g = generator(seed)
    f32 = dict(dtype=torch.float32)
    mu, s = randn(g, 3, 5, **f32), rand(g, 3, 5, low=-1, high=1, **f32)
    pm, ps = randn(g, 5, **f32), rand(g, 5, low=-1, high=1, **f32)
    seed_t = rng.draw_seed(mu.device, g)
    eps = randn(g, 2, 3, 5, **f32)
    logits, x = randn(g, 2, 3, 7, **f32), (rand(g, 3, 7) < 0.5).float()
    ll, lq, lp, kl = (randn(g, 4, 3, **f32) for _ in range(4))
    logvar = rand(g, 7, low=-1, high=1, **f32)
    buffer = randn(g, 2, 3, 7, **f32)
    target = torch.randint(0, 7, (3,), generator=g, device=g.device)
    # NCHW latents whose last event_dims dims are the event (the op flattens them itself)
    mu4, s4 = randn(g, 2, 3, 2, 2, **f32), rand(g, 2, 3, 2, 2, low=-1, high=1, **f32)
    pm4, ps4 = randn(g, 3, 1, 1, **f32), rand(g, 2, 3, 2, 2, low=-1, high=1, **f32)
    eps4 = randn(g, 2, 2, 3, 2, 2, **f32)
    rg = _leaf
    return [
        ("gaussian_latent", (rg(mu), rg(s), None, None, None, seed_t, 0, 2, False)),
        ("gaussian_latent", (rg(mu), rg(s), rg(pm), rg(ps), None, seed_t, 2, 1, True)),
        ("gaussian_latent", (rg(mu), rg(s), rg(pm), rg(ps), eps, None, 1, 2, False)),
        ("gaussian_latent", (rg(mu), rg(s), None, None, None, seed_t, 0, 0, True)),  # no sample dim
        ("gaussian_latent", (rg(mu), rg(s), rg(pm), rg(ps), eps[0], None, 2, 0, False)),
        ("gaussian_latent", (rg(mu4), rg(s4), rg(pm4), rg(ps4), None, seed_t, 1, 2, False, 3)),  # dim=(1, 2, 3)
        ("gaussian_latent", (rg(mu4), rg(s4), None, None, eps4[0], None, 0, 0, True, 2)),  # dim=(2, 3)
        # channels-last, dim=(1, 2, 3): flattened in storage order, z and the gradients channels-last
        ("gaussian_latent", (rg(_cl(mu4)), rg(_cl(s4)), rg(pm4), rg(_cl(ps4)), None, seed_t, 1, 2, False, 3)),
        ("gaussian_latent", (rg(_cl(mu4)), rg(_cl(s4)), None, None, _cl(eps4[0]), None, 2, 0, True, 3)),
        ("gaussian_kl", (rg(mu), rg(s), rg(pm), rg(ps), 0, True)),
        ("gaussian_kl", (rg(mu), rg(s), None, None, 2, False)),
        ("bernoulli_log_prob", (rg(logits), x, 1, True)),
        ("continuous_bernoulli_log_prob", (rg(logits), x.bool(), 2, True)),
        ("bernoulli_log_prob", (logits, rg(x), 1, False)),  # only x's gradient: no buffer
        ("bernoulli_log_prob", (rg(logits), x, 1, True, -0.3)),  # the buffer scaled for a loss
        ("continuous_bernoulli_log_prob", (rg(logits), rg(x), 1, True, 0.125)),
        ("gaussian_log_prob", (rg(logits), x, rg(logvar), 0.0, 1, True)),
        ("gaussian_log_prob", (rg(logits), rg(x), None, -0.3, 1, True)),
        ("gaussian_log_prob_backward", (randn(g, 2, 3, **f32), buffer, logvar, 0.0, 1, True)),
        ("gaussian_log_prob", (rg(logits), x, rg(logvar), 0.0, 1, True, -0.25)),  # the buffer scaled for a loss
        ("gaussian_log_prob_backward", (randn(g, 2, 3, **f32), buffer, logvar, 0.0, 1, True, 0.5, False)),
        ("categorical_log_prob", (rg(logits), target, 1, True)),
        ("elbo", (rg(ll), rg(lq), rg(lp), rg(kl[0]), 0, 0.7)),
        ("elbo", (rg(ll), lq, lp, rg(kl[0]), 1, 1.0)),
        ("elbo", (rg(ll), rg(lq), rg(lp), kl[0], 2, 1.0)),
        ("elbo", (ll, rg(lq), lp, rg(kl[0]), 1, 0.5)),
        ("elbo", (rg(ll[0]), rg(lq[0]), rg(lp[0]), kl[1], 0, 0.5)),  # one sample without a sample dim
        ("elbo", (rg(ll[0]), lq[0], lp[0], rg(kl[1]), 1, 1.0)),
        ("normal_noise", (seed_t, 2, 3, 5, False)),
    ]


@pytest.mark.parametrize("overload", list(OVERLOADS))
@pytest.mark.parametrize("index", range(29))
def test_opcheck(overload, index, seed):
    assert len(_opcheck_cases(seed)) == 29  # the parametrization covers every case
    backend = OVERLOADS[overload]
    if fe.backends()[backend] != "available" or fe._backend.OVERLOAD[backend] != overload:
        pytest.skip(f"backend {backend!r} is unavailable here, or has no overload {overload!r}")
    __import__(fe._backend._MODULES[backend])  # registers the backend's kernels
    name, args = _opcheck_cases(seed)[index]
    torch.library.opcheck(getattr(getattr(torch.ops.fastelbo, name), overload), args)


@pytest.mark.parametrize("overload", list(OVERLOADS))
@pytest.mark.parametrize("prior", [None, "full", "channel", "shared"])
@pytest.mark.parametrize("n_samples,noise", [(0, "seed"), (2, "seed"), (2, "eps")])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_latent_op_takes_trailing_event_dims_as_their_flattening(overload, prior, n_samples, noise,
                                                                     channels_last, seed):
    """gaussian_latent(..., event_dims=3) on (B, C, H, W) is the op on the caller's flat views
    (B, C*H*W) with event_dims=1: z, log q, log p, KL and every gradient (the prior's summed back to
    its shape: per sample, (C, 1, 1) or (C, H, W)), on each overload (csrc/binding/event_dims.h,
    the Triton launcher's wrapper). Channels-last tensors (mu, scale, a per-sample prior, eps, z's
    gradient) too: the kernels take them in storage order and draw each element's noise at its
    logical index, and z and mu's gradients come back channels-last."""
    backend = OVERLOADS[overload]
    if fe.backends()[backend] != "available" or fe._backend.OVERLOAD[backend] != overload:
        pytest.skip(f"backend {backend!r} is unavailable here, or has no overload {overload!r}")
    __import__(fe._backend._MODULES[backend])
    op = getattr(torch.ops.fastelbo.gaussian_latent, overload)
    g = generator(seed)
    f64 = dict(dtype=torch.float64)
    mu, s = randn(g, 2, 3, 2, 4, **f64), rand(g, 2, 3, 2, 4, low=-1, high=1, **f64)
    shape = {"full": (2, 3, 2, 4), "channel": (3, 1, 1), "shared": (3, 2, 4)}.get(prior)
    pm = None if shape is None else randn(g, *shape, **f64)
    ps = None if shape is None else rand(g, *shape, low=-0.5, high=0.5, **f64)
    seed_t = rng.draw_seed(mu.device, g)
    eps = randn(g, *((n_samples,) if n_samples else ()), 2, 3, 2, 4, **f64) if noise == "eps" else None
    grads_out = [randn(g, *((n_samples,) if n_samples else ()), 2, 3, 2, 4, **f64)] + [
        randn(g, *((n_samples,) if n_samples else ()), 2, **f64) for _ in range(2)] + [randn(g, 2, **f64)]
    if channels_last:
        mu, s, eps, grads_out[0] = (None if t is None else _cl(t) for t in (mu, s, eps, grads_out[0]))
        pm, ps = (_cl(t) if t is not None and t.shape == mu.shape else t for t in (pm, ps))
    leaves = [t.detach().requires_grad_() for t in (mu, s) + ((pm, ps) if pm is not None else ())]

    def run(flat):
        m, sc, *p = leaves
        if flat:
            full = [t.expand(mu.shape) if t.shape != mu.shape else t for t in p]
            m, sc, *p = (t.flatten(1) for t in (m, sc, *full))
        args = (m, sc, *(p or (None, None)), None if eps is None else (eps.flatten(-3) if flat else eps),
                None if eps is not None else seed_t, 1, n_samples, False)
        out = op(*args) if flat else op(*args, 3)
        z = out[0].view(grads_out[0].shape)
        return [z, *out[1:4]], torch.autograd.grad([z, *out[1:4]], leaves, grads_out)

    (values, grads), (flat_values, flat_grads) = run(False), run(True)
    if channels_last:
        assert all(t.movedim(-3, -1).is_contiguous() for t in (values[0], grads[0], grads[1]))
    for a, b in zip(values + list(grads), flat_values + list(flat_grads)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _cl(t):
    """t (B, C, H, W), or with samples leading, stored channels-last: (C, H, W) as (H, W, C)."""
    return t.movedim(-3, -1).contiguous().movedim(-1, -3)


def test_opcheck_of_the_latent_that_draws_its_seed(seed):
    """The CPU kernel with neither seed nor eps draws its seed (a fifth output): schema, fake and
    autograd registration. (Its outputs are random by design, so AOT dispatch's comparison of two
    runs does not apply; fastelbo passes the seed explicitly under torch.compile.)"""
    if fe.backends()["cpu"] != "available":
        pytest.skip("the cpu backend is unavailable here")
    __import__(fe._backend._MODULES["cpu"])
    g = generator(seed)
    mu, s = randn(g, 3, 5, dtype=torch.float32), rand(g, 3, 5, low=-1, high=1, dtype=torch.float32)
    for n_samples in (0, 2):
        torch.library.opcheck(torch.ops.fastelbo.gaussian_latent.default,
                              (_leaf(mu), _leaf(s), None, None, None, None, 0, n_samples, False),
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
