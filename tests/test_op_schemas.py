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
    rg = _leaf
    return [
        ("gaussian_latent", (rg(mu), rg(s), None, None, None, seed_t, 0, 2, False)),
        ("gaussian_latent", (rg(mu), rg(s), rg(pm), rg(ps), None, seed_t, 2, 1, True)),
        ("gaussian_latent", (rg(mu), rg(s), rg(pm), rg(ps), eps, None, 1, 2, False)),
        ("gaussian_latent", (rg(mu), rg(s), None, None, None, seed_t, 0, 0, True)),  # no sample dim
        ("gaussian_latent", (rg(mu), rg(s), rg(pm), rg(ps), eps[0], None, 2, 0, False)),
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
@pytest.mark.parametrize("index", range(25))
def test_opcheck(overload, index, seed):
    assert len(_opcheck_cases(seed)) == 25  # the parametrization covers every case
    backend = OVERLOADS[overload]
    if fe.backends()[backend] != "available" or fe._backend.OVERLOAD[backend] != overload:
        pytest.skip(f"backend {backend!r} is unavailable here, or has no overload {overload!r}")
    __import__(fe._backend._MODULES[backend])  # registers the backend's kernels
    name, args = _opcheck_cases(seed)[index]
    torch.library.opcheck(getattr(getattr(torch.ops.fastelbo, name), overload), args)


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
