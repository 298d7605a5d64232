"""The public functions call the C++ ops through the library's typed bindings in eager mode
(fastelbo/ops/_cpp_calls.py, csrc/binding/python.cpp), and through torch.ops wherever torch.ops
does more: a torch function mode, a tensor subclass with __torch_function__, torch.compile. The
bindings enter the same dispatcher op, so values and gradients are the same either way."""
import pytest
import torch

import fastelbo as fe
from fastelbo.ops import _cpp_calls
from helpers import BACKENDS, fresh_seed, generator, rand, randn

pytestmark = pytest.mark.skipif("cpu" not in BACKENDS, reason="the cpu backend is unavailable")

BOUND = ("gaussian_latent", "gaussian_kl", "bernoulli_log_prob", "continuous_bernoulli_log_prob",
         "gaussian_log_prob", "categorical_log_prob", "elbo")


class Recorder:
    """Stands in for the bindings module: records the names the public functions take from it."""

    def __init__(self, bindings):
        self.bindings, self.taken = bindings, []

    def __getattr__(self, name):
        self.taken.append(name)
        return getattr(self.bindings, name)


@pytest.fixture
def recorder(monkeypatch):
    fe.bernoulli_log_prob(torch.zeros(1, 1), torch.zeros(1, 1), backend="cpu")  # loads the library
    assert _cpp_calls.BINDINGS is not None, "the C++ library loaded without its bindings"
    recording = Recorder(_cpp_calls.BINDINGS)
    monkeypatch.setattr(_cpp_calls, "BINDINGS", recording)
    return recording


def _inputs(requires_grad=True):
    g = generator(fresh_seed())
    t = {"mu": randn(g, 6, 5), "scale": randn(g, 6, 5, scale=0.5), "logits": randn(g, 6, 7), "x": rand(g, 6, 7),
         "cat": randn(g, 6, 3, 4), "target": torch.randint(0, 4, (6, 3), generator=g)}
    for name in ("mu", "scale", "logits", "cat"):
        t[name].requires_grad_(requires_grad)
    return t


def _step(t):
    """Every bound op through the public API; the sum of their outputs."""
    lat = fe.gaussian_latent(t["mu"], t["scale"], generator=None, backend="cpu")
    terms = [
        fe.elbo(fe.bernoulli_log_prob(t["logits"], t["x"], backend="cpu"), lat, kl="mc"),
        fe.elbo(fe.continuous_bernoulli_log_prob(t["logits"], t["x"], backend="cpu"), lat, kl="analytic"),
        fe.gaussian_log_prob(t["logits"], t["x"], logvar=0.3, backend="cpu"),
        fe.categorical_log_prob(t["cat"], t["target"], backend="cpu"),
        fe.gaussian_kl(t["mu"], t["scale"], backend="cpu"),
        lat.z.sum(-1),
    ]
    return torch.stack(terms).sum()


def test_eager_calls_take_the_bindings(recorder):
    _step(_inputs())
    assert set(recorder.taken) == set(BOUND)


def test_the_bindings_and_torch_ops_give_the_same_values_and_gradients(recorder, monkeypatch):
    t = _inputs()
    torch.manual_seed(7)
    bound = _step(t)
    bound.backward()
    grads = {k: t[k].grad for k in ("mu", "scale", "logits", "cat")}
    assert set(recorder.taken) == set(BOUND)
    monkeypatch.setattr(_cpp_calls, "BINDINGS", None)  # torch.ops.fastelbo.<op>.default for every call
    for k in grads:
        t[k].grad = None
    torch.manual_seed(7)
    boxed = _step(t)
    boxed.backward()
    assert torch.equal(bound, boxed)
    for k, g in grads.items():
        assert torch.equal(g, t[k].grad), k


class _Logged(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.funcs = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.funcs.append(func)
        return func(*args, **(kwargs or {}))


def test_a_torch_function_mode_sees_the_ops_through_torch_ops(recorder):
    t = _inputs(requires_grad=False)
    with _Logged() as mode:
        _step(t)
    assert recorder.taken == []
    seen = {f.name() for f in mode.funcs if isinstance(f, torch._ops.OpOverload)}
    assert {f"fastelbo::{name}" for name in BOUND} <= seen


class _Subclass(torch.Tensor):
    calls = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.calls.append(func)
        return super().__torch_function__(func, types, args, kwargs)


def test_a_tensor_subclass_with_torch_function_goes_through_torch_ops(recorder):
    g = generator(fresh_seed())
    logits, x = randn(g, 4, 3).as_subclass(_Subclass), rand(g, 4, 3)
    _Subclass.calls.clear()
    out = fe.bernoulli_log_prob(logits, x, backend="cpu")
    assert recorder.taken == []
    assert torch.ops.fastelbo.bernoulli_log_prob.default in _Subclass.calls
    expected = fe.bernoulli_log_prob(logits.as_subclass(torch.Tensor), x, backend="cpu")
    assert torch.equal(out.as_subclass(torch.Tensor), expected)
