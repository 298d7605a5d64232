"""The C++ front door (csrc/binding/front_door.cpp): fe.gaussian_latent's, fe.bernoulli_log_prob's
and fe.gaussian_log_prob's common calls, whole, in C++. It must give exactly what the Python path
gives (values, gradients, the latent's fields and what DReG reads), and must leave every other
call to the Python path, which resolves the backend, checks the arguments and names what is
wrong."""
import contextlib
import threading

import pytest
import torch
from torch.autograd import forward_ad

import fastelbo as fe
from fastelbo import _backend, _validate
from fastelbo.ops import _cpp_calls
from helpers import BACKENDS, PARAMS, fresh_seed, generator, rand, randn

pytestmark = pytest.mark.skipif("cpu" not in BACKENDS, reason="the cpu backend is unavailable")


@pytest.fixture
def door():
    """The front door module, after the backend choices the tests use have resolved once."""
    fe.gaussian_latent(torch.zeros(1, 1), torch.zeros(1, 1), backend="cpu")
    fe.gaussian_latent(torch.zeros(1, 1), torch.zeros(1, 1))
    assert _cpp_calls.FRONT_DOOR is not None, "the C++ library loaded without its front door"
    return _cpp_calls.FRONT_DOOR


def _latent_args(mu, scale, param="logvar", dim=-1, n_samples=None, prior=None, stl=False, backend="cpu"):
    return mu, scale, param, dim, n_samples, prior, stl, backend


# ---- the same results as the Python path ----

def _cases(g):
    mu, scale = randn(g, 5, 4, dtype=torch.float32), randn(g, 5, 4, dtype=torch.float32, scale=0.5)
    nchw = randn(g, 2, 3, 4, 5, dtype=torch.float32)
    nchw_scale = randn(g, 2, 3, 4, 5, dtype=torch.float32, scale=0.5)
    prior = (randn(g, 5, 4, dtype=torch.float32), randn(g, 5, 4, dtype=torch.float32, scale=0.5))
    return {
        "default": (mu, scale, {}),
        "log_std, K=3, stl": (mu, scale, {"param": "log_std", "n_samples": 3, "stl": True}),
        "prior tuple": (mu, scale, {"prior": prior}),
        "prior list, softplus": (mu, scale, {"prior": list(prior), "param": "softplus"}),
        "broadcast prior": (mu, scale, {"prior": (prior[0][:1], prior[1][:1]), "param": "soft_log_std"}),
        "dim=1 of 2-D": (mu, scale, {"dim": 1}),
        "dim=(1, 2, 3)": (nchw, nchw_scale, {"dim": (1, 2, 3), "prior": (nchw * 0.5, nchw_scale * 0.5)}),
        "dim=[-1, -2], K=2": (nchw, nchw_scale, {"dim": [-1, -2], "n_samples": 2}),
        "channels-last": (nchw.to(memory_format=torch.channels_last),
                          nchw_scale.to(memory_format=torch.channels_last), {"dim": (1, 2, 3)}),
        "parameters": (torch.nn.Parameter(mu.clone()), torch.nn.Parameter(scale.clone()), {}),
    }


def _run_latent(mu, scale, kwargs, through_door: bool, monkeypatch):
    """(latent, gradients of mu and scale) of one call with the RNG at a fixed state."""
    leaf = torch.nn.Parameter if isinstance(mu, torch.nn.Parameter) else (lambda t: t.requires_grad_(True))
    mu, scale = leaf(mu.detach().clone()), leaf(scale.detach().clone())
    with monkeypatch.context() as m:
        if not through_door:
            m.setattr(_cpp_calls, "FRONT_DOOR", None)
        torch.manual_seed(11)
        latent = fe.gaussian_latent(mu, scale, backend="cpu", **kwargs)
    loss = latent.z.sum() + latent.log_q.sum() * 0.5 + latent.log_p.sum() * 0.25 + latent.kl.sum() * 2
    mu_grad, scale_grad = torch.autograd.grad(loss, (mu, scale))
    return latent, mu_grad, scale_grad


@pytest.mark.parametrize("case", list(_cases(generator(0))))
def test_the_front_door_gives_what_the_python_path_gives(door, case, monkeypatch):
    taken = []
    real = door.front_gaussian_latent

    class Recording:
        def __getattr__(self, name):
            return getattr(door, name)

        def front_gaussian_latent(self, *args):
            out = real(*args)
            taken.append(out is not None)
            return out

    mu, scale, kwargs = _cases(generator(fresh_seed()))[case]
    monkeypatch.setattr(_cpp_calls, "FRONT_DOOR", Recording())
    fast, mu_grad, scale_grad = _run_latent(mu, scale, kwargs, True, monkeypatch)
    assert taken == [True], "the front door did not take the call"
    slow, mu_grad_py, scale_grad_py = _run_latent(mu, scale, kwargs, False, monkeypatch)
    assert taken == [True]
    assert type(fast) is type(slow)
    for name in fast._fields:
        a, b = getattr(fast, name), getattr(slow, name)
        assert torch.equal(a, b) and a.stride() == b.stride(), name
    assert torch.equal(mu_grad, mu_grad_py) and torch.equal(scale_grad, scale_grad_py)
    assert fast.backend == slow.backend == "cpu"
    assert fast.inputs_flat == slow.inputs_flat
    assert (fast.layout is None) == (slow.layout is None)
    if fast.layout is not None:
        assert fast.layout.dims == slow.layout.dims and fast.layout.shape == slow.layout.shape
    # The arguments DReG rebuilds log q from: the same, the seed the op drew included.
    for a, b in zip(fast.inputs, slow.inputs):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
        elif isinstance(a, tuple):
            assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == len(b) == 2
        else:
            assert a == b
    for a, b in zip(fast.flat_inputs(), slow.flat_inputs()):
        assert (torch.equal(a, b) if isinstance(a, torch.Tensor) else type(a) is type(b))


def test_dreg_reads_a_front_door_latent_as_a_python_one(door, monkeypatch):
    g = generator(fresh_seed())
    mu = randn(g, 3, 2, 4, 4, dtype=torch.float32)
    scale = randn(g, 3, 2, 4, 4, dtype=torch.float32, scale=0.3)
    logits = randn(g, 4, 3, 6, dtype=torch.float32)
    x = rand(g, 3, 6, dtype=torch.float32).round()
    grads = []
    for through_door in (True, False):
        m, s = mu.clone().requires_grad_(True), scale.clone().requires_grad_(True)
        with monkeypatch.context() as patch:
            if not through_door:
                patch.setattr(_cpp_calls, "FRONT_DOOR", None)
            torch.manual_seed(5)
            lat = fe.gaussian_latent(m, s, dim=(1, 2, 3), n_samples=4, backend="cpu")
            log_lik = fe.bernoulli_log_prob(logits + lat.z.mean((2, 3, 4)).unsqueeze(-1), x, backend="cpu")
            value = fe.elbo(log_lik, lat, kl="mc", estimator="dreg")
        grads.append((value, *torch.autograd.grad(value.sum(), (m, s))))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_the_bernoulli_front_door_gives_what_the_python_path_gives(door, monkeypatch):
    g = generator(fresh_seed())
    logits, x = randn(g, 6, 3, 5, dtype=torch.float32), rand(g, 6, 3, 5, dtype=torch.float32)
    assert door.front_bernoulli_log_prob(logits, x, 2, "cpu", 1.0) is not None
    results = []
    for through_door in (True, False):
        leaf = logits.clone().requires_grad_(True)
        with monkeypatch.context() as patch:
            if not through_door:
                patch.setattr(_cpp_calls, "FRONT_DOOR", None)
            out = fe.bernoulli_log_prob(leaf, x, event_dims=2, backend="cpu")
        results.append((out, torch.autograd.grad((out * torch.arange(6.0)).sum(), leaf)[0]))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("logvar", ["per pixel", "per element", "float", "int", "none"])
def test_the_gaussian_front_door_gives_what_the_python_path_gives(door, logvar, monkeypatch):
    g = generator(fresh_seed())
    mean, x = randn(g, 6, 3, 5, dtype=torch.float32), randn(g, 6, 3, 5, dtype=torch.float32)
    v = {"per pixel": randn(g, 5, dtype=torch.float32, scale=0.3), "per element": randn(g, 6, 3, 5, scale=0.3),
         "float": -0.7, "int": 2, "none": 0.0}[logvar]
    assert door.front_gaussian_log_prob(mean, x, v, 2, "cpu", 1.0) is not None
    results = []
    for through_door in (True, False):
        leaves = [t.clone().requires_grad_(True) for t in (mean, x)]
        v_leaf = v.clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v
        with monkeypatch.context() as patch:
            if not through_door:
                patch.setattr(_cpp_calls, "FRONT_DOOR", None)
            kwargs = {} if logvar == "none" else {"logvar": v_leaf}
            out = fe.gaussian_log_prob(*leaves, event_dims=2, backend="cpu", **kwargs)
        wrt = leaves + ([v_leaf] if isinstance(v, torch.Tensor) else [])
        results.append((out, *torch.autograd.grad((out * torch.arange(6.0)).sum(), wrt)))
    for a, b in zip(*results):
        assert torch.equal(a, b) and a.dtype == b.dtype


# ---- every other call goes to the Python path ----

class _Mode(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class _Subclass(torch.Tensor):
    pass


def _declined_latent_calls(g):
    """(why, args of front_gaussian_latent) that it must leave to the Python path."""
    mu, scale = randn(g, 4, 3, dtype=torch.float32), randn(g, 4, 3, dtype=torch.float32)
    mu3 = randn(g, 2, 4, 3, dtype=torch.float32)
    return {
        "backend reference": _latent_args(mu, scale, backend="reference"),
        "backend not a str": _latent_args(mu, scale, backend=3),
        "backend unknown": _latent_args(mu, scale, backend="fast"),
        "param unknown": _latent_args(mu, scale, param="std"),
        "param not a str": _latent_args(mu, scale, param=0),
        "n_samples 0": _latent_args(mu, scale, n_samples=0),
        "n_samples True": _latent_args(mu, scale, n_samples=True),
        "n_samples float": _latent_args(mu, scale, n_samples=2.0),
        "stl 1": _latent_args(mu, scale, stl=1),
        "prior of 3": _latent_args(mu, scale, prior=(mu, scale, mu)),
        "prior not tensors": _latent_args(mu, scale, prior=(0.0, 1.0)),
        "prior a generator": _latent_args(mu, scale, prior=(t for t in (mu, scale))),
        "dim not trailing": _latent_args(mu3, mu3, dim=1),
        "dims not trailing": _latent_args(mu3, mu3, dim=(0, 2)),
        "dims repeated": _latent_args(mu3, mu3, dim=(2, 2)),
        "dim out of range": _latent_args(mu3, mu3, dim=3),
        "dim a bool": _latent_args(mu3, mu3, dim=True),
        "dims with a bool": _latent_args(mu3, mu3, dim=(1, True)),
        "dims empty": _latent_args(mu3, mu3, dim=()),
        "dim a float": _latent_args(mu3, mu3, dim=-1.0),
        "a 0-dim mu": _latent_args(torch.tensor(0.5), torch.tensor(0.5)),
        "a subclass": _latent_args(mu.as_subclass(_Subclass), scale),
        "a subclass prior": _latent_args(mu, scale, prior=(mu.as_subclass(_Subclass), scale)),
        "a subclass prior_scale": _latent_args(mu, scale, prior=[mu, scale.as_subclass(_Subclass)]),
        "a subclass scale": _latent_args(mu, scale.as_subclass(_Subclass)),
        "not a tensor": _latent_args(mu.tolist(), scale),
    }


def _declined_likelihood_calls():
    """(why, front door, args) of the likelihoods' front doors that they must leave to Python."""
    logits, x = torch.zeros(4, 3), torch.ones(4, 3)
    return {
        "bernoulli event_dims a bool": ("front_bernoulli_log_prob", (logits, x, True, "cpu", 1.0)),
        "bernoulli expected_grad an int": ("front_bernoulli_log_prob", (logits, x, 1, "cpu", 1)),
        "bernoulli backend reference": ("front_bernoulli_log_prob", (logits, x, 1, "reference", 1.0)),
        "bernoulli a subclass": ("front_bernoulli_log_prob", (logits.as_subclass(_Subclass), x, 1, "cpu", 1.0)),
        "bernoulli x not a tensor": ("front_bernoulli_log_prob", (logits, 1.0, 1, "cpu", 1.0)),
        "bernoulli x a subclass": ("front_bernoulli_log_prob", (logits, x.as_subclass(_Subclass), 1, "cpu", 1.0)),
        "bernoulli event_dims a float": ("front_bernoulli_log_prob", (logits, x, 1.0, "cpu", 1.0)),
        "gaussian x a subclass": ("front_gaussian_log_prob", (logits, x.as_subclass(_Subclass), 0.0, 1, "cpu", 1.0)),
        "gaussian mean a subclass": ("front_gaussian_log_prob", (logits.as_subclass(_Subclass), x, 0.0, 1, "cpu",
                                                                 1.0)),
        "gaussian logvar a bool": ("front_gaussian_log_prob", (logits, x, True, 1, "cpu", 1.0)),
        "gaussian logvar inf": ("front_gaussian_log_prob", (logits, x, float("inf"), 1, "cpu", 1.0)),
        "gaussian logvar nan": ("front_gaussian_log_prob", (logits, x, float("nan"), 1, "cpu", 1.0)),
        "gaussian logvar a str": ("front_gaussian_log_prob", (logits, x, "0", 1, "cpu", 1.0)),
        "gaussian logvar a subclass": ("front_gaussian_log_prob", (logits, x, x.as_subclass(_Subclass), 1, "cpu",
                                                                   1.0)),
        "gaussian logvar a huge int": ("front_gaussian_log_prob", (logits, x, 2**70, 1, "cpu", 1.0)),
        "gaussian backend reference": ("front_gaussian_log_prob", (logits, x, 0.0, 1, "reference", 1.0)),
    }


@pytest.mark.parametrize("why", list(_declined_likelihood_calls()))
def test_the_front_door_leaves_other_likelihood_calls_to_python(door, why):
    logits, x = torch.zeros(4, 3), torch.ones(4, 3)
    assert door.front_bernoulli_log_prob(logits, x, 1, "cpu", 1.0) is not None
    assert door.front_gaussian_log_prob(logits, x, 0.0, 1, "cpu", 1.0) is not None
    name, args = _declined_likelihood_calls()[why]
    assert getattr(door, name)(*args) is None


@pytest.mark.parametrize("why", list(_declined_latent_calls(generator(0))))
def test_the_front_door_leaves_other_latent_calls_to_python(door, why):
    args = _declined_latent_calls(generator(fresh_seed()))[why]
    assert door.front_gaussian_latent(*_latent_args(torch.zeros(2, 3), torch.zeros(2, 3))) is not None
    assert door.front_gaussian_latent(*args) is None


@contextlib.contextmanager
def _block_open_in_another_thread(inside_block=lambda: None):
    """A use_backend("reference") block that another thread holds open meanwhile (inside_block runs
    in it first)."""
    inside, leave = threading.Event(), threading.Event()

    def hold():
        with fe.use_backend("reference"):
            inside_block()
            inside.set()
            leave.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    inside.wait(30)
    try:
        yield
    finally:
        leave.set()
        thread.join()


def _take_both(door, mu, scale, logits, x, backend="cpu"):
    """(the latent's front door took it, the likelihoods' took it: the Bernoulli's and the Gaussian's
    agree)."""
    latent = door.front_gaussian_latent(*_latent_args(mu, scale, backend=backend))
    bernoulli = door.front_bernoulli_log_prob(logits, x, 1, backend, 1.0) is not None
    gaussian = door.front_gaussian_log_prob(logits, x, 0.5, 1, backend, 1.0) is not None
    assert bernoulli == gaussian
    return latent is not None, bernoulli


@contextlib.contextmanager
def _process_backend(name):
    fe.set_backend(name)
    try:
        yield
    finally:
        fe.set_backend("auto")


@contextlib.contextmanager
def _nested(outer, inner):
    with fe.use_backend(outer), fe.use_backend(inner):
        yield


@contextlib.contextmanager
def _validation():
    fe.set_validation(True)
    try:
        yield
    finally:
        fe.set_validation(False)


@contextlib.contextmanager
def _compiling_flag():
    import torch.compiler as compiler

    saved, compiler._is_compiling_flag = compiler._is_compiling_flag, True
    try:
        yield
    finally:
        compiler._is_compiling_flag = saved


def _inside(context):
    """Runs a call inside a context manager's block."""
    def run(call):
        with context():
            return call()
    return run


def _in_vmap(call):
    result = []
    torch.func.vmap(lambda t: result.append(call()) or t)(torch.zeros(2))
    return result[0]


def _in_jit_trace(call):
    result = []
    torch.jit.trace(lambda t: result.append(call()) or t * 2, (torch.zeros(2),), check_trace=False)
    return result[0]


# The states in which resolve() or the tracing checks do more than a lookup, and some in which they
# do not: state -> (how the call runs, its backend= argument, (latent taken, likelihoods taken)).
STATES = {
    "plain": (_inside(contextlib.nullcontext), "cpu", (True, True)),
    "backend=None, auto": (_inside(contextlib.nullcontext), None, (True, True)),
    "use_backend here, backend given": (_inside(lambda: fe.use_backend("cpu")), "cpu", (True, True)),
    "set_backend cpu": (_inside(lambda: _process_backend("cpu")), None, (True, True)),
    "use_backend cpu here, backend=None": (_inside(lambda: fe.use_backend("cpu")), None, (True, True)),
    "use_backend reference here, backend=None": (_inside(lambda: fe.use_backend("reference")), None, (False, False)),
    "use_backend cpu, then reference": (_inside(lambda: _nested("cpu", "reference")), None, (False, False)),
    "use_backend reference, then cpu": (_inside(lambda: _nested("reference", "cpu")), None, (True, True)),
    "set_backend reference": (_inside(lambda: _process_backend("reference")), None, (False, False)),
    "use_backend in another thread": (_inside(_block_open_in_another_thread), None, (True, True)),
    "validation": (_inside(_validation), "cpu", (False, False)),
    "forward AD": (_inside(forward_ad.dual_level), "cpu", (False, False)),
    "torch.func": (_in_vmap, "cpu", (False, False)),
    "torch function mode": (_inside(_Mode), "cpu", (False, False)),
    "compiling flag": (_inside(_compiling_flag), "cpu", (False, False)),
    "jit tracing": (_in_jit_trace, "cpu", (False, False)),
}


@pytest.mark.parametrize("state", list(STATES))
def test_the_front_door_takes_calls_only_where_resolve_is_a_lookup(door, state):
    g = generator(fresh_seed())
    tensors = (randn(g, 4, 3, dtype=torch.float32), randn(g, 4, 3, dtype=torch.float32),
               randn(g, 4, 5, dtype=torch.float32), rand(g, 4, 5, dtype=torch.float32))
    assert _backend.current_backend() == "auto" and not _validate.active
    run, backend, expected = STATES[state]
    assert run(lambda: _take_both(door, *tensors, backend=backend)) == expected


def test_a_use_backend_block_in_another_thread_is_honoured_by_this_one(door):
    """The thread with the block gets its backend; this one keeps the process-wide choice (the front
    door reads the calling thread's blocks, as resolve() does)."""
    mu, scale = torch.zeros(3, 2), torch.zeros(3, 2)
    seen = {}
    with _block_open_in_another_thread(lambda: seen.update(there=fe.gaussian_latent(mu, scale).backend)):
        seen["here"] = fe.gaussian_latent(mu, scale).backend
    assert seen == {"there": "reference", "here": "cpu"}


@pytest.mark.parametrize("call,match", [
    (lambda: fe.gaussian_latent(torch.zeros(4, 3), torch.zeros(4, 2), backend="cpu"), "scale"),
    (lambda: fe.gaussian_latent(torch.zeros(4, 3), torch.zeros(4, 3), prior=(torch.zeros(5, 3), torch.zeros(4, 3)),
                                backend="cpu"), "prior"),
    (lambda: fe.gaussian_latent(torch.zeros(4, 3, dtype=torch.int64), torch.zeros(4, 3), backend="cpu"), "mu"),
    (lambda: fe.bernoulli_log_prob(torch.zeros(4, 3), torch.zeros(4, 2), backend="cpu"), "x"),
    (lambda: fe.bernoulli_log_prob(torch.zeros(4, 3), torch.zeros(4, 3), event_dims=3, backend="cpu"), "event_dims"),
    (lambda: fe.gaussian_log_prob(torch.zeros(4, 3), torch.zeros(4, 3), logvar=torch.zeros(2), backend="cpu"),
     "logvar"),
    (lambda: fe.gaussian_log_prob(torch.zeros(4, 3), torch.zeros(5, 3), backend="cpu"), "x"),
    (lambda: fe.gaussian_log_prob(torch.zeros(4, 3, dtype=torch.int32), torch.zeros(4, 3), backend="cpu"), "mean"),
    (lambda: fe.gaussian_log_prob(torch.zeros(4, 3), torch.zeros(4, 3), logvar=torch.zeros(3, dtype=torch.int64),
                                  backend="cpu"), "logvar"),
    (lambda: fe.gaussian_log_prob(torch.zeros(4, 3), torch.zeros(4, 3), event_dims=-1, backend="cpu"), "event_dims"),
])
def test_a_call_the_kernel_refuses_is_an_error_naming_the_argument(door, call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@pytest.mark.parametrize("param", PARAMS)
def test_every_param_name_is_the_kernels_code(door, param):
    assert door.front_gaussian_latent(*_latent_args(torch.zeros(2, 3), torch.zeros(2, 3), param=param)) is not None


def test_the_gaussian_front_door_differentiates_x_alone(door):
    g = generator(fresh_seed())
    mean, x = randn(g, 4, 5, dtype=torch.float32), randn(g, 4, 5, dtype=torch.float32).requires_grad_(True)
    assert door.front_gaussian_log_prob(mean, x, 0.3, 1, "cpu", 1.0) is not None
    grad = torch.autograd.grad(fe.gaussian_log_prob(mean, x, logvar=0.3, backend="cpu").sum(), x)[0]
    torch.testing.assert_close(grad, -(x - mean).detach() * torch.exp(torch.tensor(-0.3)))


def _allocated_bytes(fn) -> int:
    """The bytes torch's CPU allocator hands out during fn (the profiler's memory events)."""
    from torch.profiler import DeviceType, ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(e.nbytes() for e in prof.profiler.kineto_results.events()
               if e.name() == "[memory]" and e.device_type() == DeviceType.CPU and e.nbytes() > 0)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_without_grad_mode_the_likelihoods_write_no_gradient_buffer(door, likelihood):
    logits, x = torch.randn(256, 64, requires_grad=True), torch.rand(256, 64).round()
    call = {"bernoulli": lambda: door.front_bernoulli_log_prob(logits, x, 1, "cpu", 1.0),
            "gaussian": lambda: door.front_gaussian_log_prob(logits, x, 0.0, 1, "cpu", 1.0)}[likelihood]
    buffer = logits.numel() * logits.element_size()
    assert _allocated_bytes(call) >= buffer  # grad mode on: the buffer of the logits' gradient
    with torch.no_grad():
        assert _allocated_bytes(call) < buffer


class _OpLog(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_a_parameter_s_latent_is_drawn_the_same_way_on_both_paths(door, monkeypatch):
    """The kernel draws the seed itself for Parameters too, on the Python path as through the front
    door: a dispatch mode sees the same ops, and the noise is the same."""
    mu, scale = torch.nn.Parameter(torch.zeros(4, 3)), torch.nn.Parameter(torch.zeros(4, 3))
    seen = []
    for through_door in (True, False):
        with monkeypatch.context() as patch:
            if not through_door:
                patch.setattr(_cpp_calls, "FRONT_DOOR", None)
            torch.manual_seed(3)
            with _OpLog() as log:
                z = fe.gaussian_latent(mu, scale, backend="cpu").z
        seen.append((log.ops, z))
    assert seen[0][0] == seen[1][0] and not any("randint" in op for op in seen[0][0])
    assert torch.equal(seen[0][1], seen[1][1])


@pytest.mark.parametrize("state", ["forward AD", "torch.func"])
def test_elbo_s_shortcut_keeps_refusing_fused_backends_where_resolve_does(door, state):
    mu = torch.zeros(4, 3)
    latent = fe.gaussian_latent(mu, mu, backend="cpu")
    log_lik = torch.zeros(4)
    call = lambda lik: fe.elbo(lik, latent, kl="analytic", backend="cpu")  # noqa: E731
    with pytest.raises(ValueError, match="backend='cpu' cannot run inside"):
        if state == "forward AD":
            with forward_ad.dual_level():
                call(log_lik)
        else:
            torch.func.vmap(call)(log_lik.unsqueeze(0))
