"""The public functions call the C++ ops through the library's typed bindings in eager mode
(fastelbo/ops/_cpp_calls.py, csrc/binding/python.cpp; fe.gaussian_latent, fe.bernoulli_log_prob and
fe.gaussian_log_prob through its front door, csrc/binding/front_door.cpp, tested in
test_front_door.py), and through
torch.ops wherever torch.ops does more: a torch function mode, a tensor subclass with
__torch_function__, torch.compile. The bindings enter the same dispatcher op, so values and
gradients are the same either way."""
import pytest
import torch

import fastelbo as fe
from fastelbo.ops import _cpp_calls
from helpers import BACKENDS, fresh_seed, generator, rand, randn

pytestmark = pytest.mark.skipif("cpu" not in BACKENDS, reason="the cpu backend is unavailable")

BOUND = ("front_gaussian_latent", "gaussian_kl", "front_bernoulli_log_prob", "continuous_bernoulli_log_prob",
         "front_gaussian_log_prob", "categorical_log_prob", "elbo")
OPS = tuple(name.removeprefix("front_") for name in BOUND)


class Recorder:
    """Stands in for the bindings module: records the names the public functions take from it (a
    front door's only where it took the call: it returns None for the calls it leaves to Python)."""

    def __init__(self, bindings):
        self.bindings, self.taken = bindings, []

    def __getattr__(self, name):
        function = getattr(self.bindings, name)
        if not name.startswith("front_"):
            self.taken.append(name)
            return function

        def front_door(*args):
            out = function(*args)
            if out is not None:
                self.taken.append(name)
            return out

        return front_door


@pytest.fixture
def recorder(monkeypatch):
    fe.bernoulli_log_prob(torch.zeros(1, 1), torch.zeros(1, 1), backend="cpu")  # loads the library
    assert _cpp_calls.BINDINGS is not None, "the C++ library loaded without its bindings"
    assert _cpp_calls.FRONT_DOOR is _cpp_calls.BINDINGS, "the bindings' front door is not configured"
    recording = Recorder(_cpp_calls.BINDINGS)
    monkeypatch.setattr(_cpp_calls, "BINDINGS", recording)
    monkeypatch.setattr(_cpp_calls, "FRONT_DOOR", recording)
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
    monkeypatch.setattr(_cpp_calls, "FRONT_DOOR", None)
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
    assert {f"fastelbo::{name}" for name in OPS} <= seen


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


def test_traced_graphs_draw_the_seed_in_sight(recorder):
    """make_fx and torch.jit.trace record the latent's seed as a torch.randint and the op through
    torch.ops (gaussian_latent._seed_for_kernel), never the CPU kernel's own draw, which the graph
    would not show and a graph pass could merge."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def sample(mu, scale):
        return fe.gaussian_latent(mu, scale, backend="cpu").z

    mu, scale = torch.randn(4, 3), torch.randn(4, 3)
    graph = make_fx(sample)(mu, scale)
    targets = {str(node.target) for node in graph.graph.nodes if node.op == "call_function"}
    assert any(t.startswith("aten.randint") for t in targets) and "fastelbo.gaussian_latent.default" in targets
    traced = torch.jit.trace(sample, (mu, scale), check_trace=False)
    kinds = {node.kind() for node in traced.graph.nodes()}
    assert {"aten::randint", "fastelbo::gaussian_latent"} <= kinds
    assert recorder.taken == []
    assert not torch.equal(traced(mu, scale), traced(mu, scale))  # a fresh seed each run


def test_without_the_bindings_the_ops_run_through_torch_ops():
    """A library whose Python module cannot be imported still serves the cpu backend, through
    torch.ops, and says so once (a fresh process: the library loads once per process)."""
    import subprocess
    import sys

    script = (
        "import warnings, torch\n"
        "from fastelbo.cpp_backend import _build\n"
        "def refuse():\n"
        "    raise ImportError('no PyInit here')\n"
        "_build.cpu_bindings = refuse\n"
        "import fastelbo as fe\n"
        "from fastelbo.ops import _cpp_calls\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    out = fe.bernoulli_log_prob(torch.zeros(2, 3), torch.ones(2, 3), backend='cpu')\n"
        "assert _cpp_calls.BINDINGS is None\n"
        "assert any('no PyInit here' in str(w.message) for w in caught), [str(w.message) for w in caught]\n"
        "assert torch.allclose(out, torch.full((2,), -3 * torch.log(torch.tensor(2.0)).item()))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
