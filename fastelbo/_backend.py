"""The backend registry: which implementations exist, which one a call uses.

A call's backend is, in order: its ``backend=`` argument, the innermost ``use_backend`` block of
the calling thread, the process-wide ``set_backend`` choice, else "auto". "auto" picks the fastest
fused backend available for the tensors' device and falls back to "reference".

A backend supplies kernels, nothing else: "cpu" and "cuda" are the C++ library's kernels for the
ops (the default overload of torch.ops.fastelbo.<op>, which the dispatcher routes by device),
"triton" registers its kernels as the `.triton` overload of the same ops, and "reference" is each
op's pure-PyTorch implementation (fastelbo/ops/<op>.py: reference). A call resolves its backend
here, then its op module calls that backend's kernel.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.abc
import importlib.util
import os
import sys
import threading
import warnings

import torch
import torch.autograd.forward_ad as _forward_ad

NAMES = ("reference", "cpu", "triton", "cuda")
CHOICES = ("auto",) + NAMES

# FASTELBO_CUDA_SIM=1 (read when fastelbo is imported): backend "cuda" runs the CUDA bindings and
# kernels in the CPU simulator of csrc/cuda_sim/, on CPU tensors, as TRITON_INTERPRET=1 runs the
# Triton kernels: a test of the CUDA code on machines without a GPU (slow; never chosen by "auto").
CUDA_SIM = os.environ.get("FASTELBO_CUDA_SIM", "").strip() == "1"

# Backends bound to one device type ("reference" runs anywhere, "triton" on CUDA tensors or, in
# Triton's interpreter, on CPU tensors).
_DEVICE_TYPE = {"cpu": "cpu", "cuda": "cpu" if CUDA_SIM else "cuda"}


def runs_on(name: str, device_type: str) -> bool:
    """Whether backend `name` takes tensors of `device_type`."""
    return _DEVICE_TYPE.get(name, device_type) == device_type


if CUDA_SIM and torch.cuda.is_available():
    warnings.warn("fastelbo: FASTELBO_CUDA_SIM=1 makes backend 'cuda' the CUDA simulator, on CPU tensors; on this "
                  "machine's GPU the CUDA kernels are unused ('auto' on CUDA tensors tries 'triton'). Unset it to run "
                  "them on the GPU.", stacklevel=2)

# Tried in this order by "auto" for each device type; "reference" closes every list.
_AUTO_ORDER = {"cpu": ("cpu",), "cuda": ("triton",) if CUDA_SIM else ("cuda", "triton")}

# The module that registers a backend's kernels, imported when a call first resolves to it. One
# module serves "cpu" and "cuda": the same C++ operators, which the dispatcher routes by device.
_MODULES = {
    "reference": None,
    "cpu": "fastelbo.cpp_backend.library",
    "triton": "fastelbo.triton_backend.register",
    "cuda": "fastelbo.cpp_backend.cuda_sim" if CUDA_SIM else "fastelbo.cpp_backend.library",
}

# The overload of torch.ops.fastelbo.<op> that holds a fused backend's kernels. The C++ kernels
# (the default overload) check their own arguments before they run (csrc/binding/checks.h): the
# public functions call them without checking in Python first. The simulated CUDA kernels are the
# `.cuda_sim` overload (their Python checks run first, as Triton's).
OVERLOAD = {"cpu": "default", "cuda": "cuda_sim" if CUDA_SIM else "default", "triton": "triton"}


@functools.lru_cache(maxsize=None)
def _import_error(name: str) -> str | None:
    """Why the backend module cannot be imported (e.g. triton missing), or None."""
    try:
        if _MODULES[name] is not None:
            importlib.import_module(_MODULES[name])
    except ImportError as error:
        return f"cannot import it: {error}"
    return None


def _triton_reason() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return "needs a CUDA GPU (or TRITON_INTERPRET=1 to run its kernels on CPU tensors in Triton's interpreter)"
    return _import_error("triton")

_state = threading.local()
_global_choice = "auto"


def _check_name(name, argument: str) -> str:
    if not isinstance(name, str) or name not in CHOICES:
        raise ValueError(f"{argument} must be one of {', '.join(map(repr, CHOICES))}; got {name!r}")
    return name


def check_backend_name(name) -> str:
    """A `backend=` argument: one of CHOICES (a ValueError naming it otherwise)."""
    return _check_name(name, "backend")


def _cpp_reason(name: str) -> str | None:
    """Builds the C++ library on first use (ninja, about a minute); why it is unavailable, or None."""
    from .cpp_backend import _build

    if name == "cpu":
        reason = _build.cpu_library()
    elif CUDA_SIM:
        reason = _build.cuda_sim_library()
    else:
        reason = _build.cuda_library()
        if reason is not None and not torch.cuda.is_available():
            reason += " (FASTELBO_CUDA_SIM=1 runs its kernels on CPU tensors in fastelbo's CUDA simulator, to test them)"
    return reason if reason is not None else _import_error(name)


def _unavailable_reason(name: str) -> str | None:
    if name == "triton":
        return _triton_reason()
    if name in ("cpu", "cuda"):
        return _cpp_reason(name)
    return None


def backends() -> dict[str, str]:
    """{name: "available" | the reason it is not} for every backend of the design."""
    return {name: _unavailable_reason(name) or "available" for name in NAMES}


def _require_available(name: str) -> None:
    reason = _unavailable_reason(name)
    if reason is not None:
        raise RuntimeError(f"fastelbo backend {name!r} is unavailable: {reason}")


def set_backend(name: str) -> None:
    """Set the process-wide default backend ("auto", "reference", "cpu", "triton" or "cuda")."""
    global _global_choice
    _check_name(name, "backend")
    if name != "auto":
        _require_available(name)
    _global_choice = name


@contextlib.contextmanager
def use_backend(name: str):
    """Use backend ``name`` for fastelbo calls made by this thread inside the block."""
    _check_name(name, "backend")
    if name != "auto":
        _require_available(name)
    stack = _state.__dict__.setdefault("stack", [])
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def current_backend() -> str:
    """The backend name a call without ``backend=`` would ask for (possibly "auto")."""
    stack = _state.__dict__.get("stack")
    return stack[-1] if stack else _global_choice


# (choice, device type) -> concrete backend, filled on first use: availability does not change
# within a process (a C++ build is tried once), so a call resolves with one dict lookup.
_RESOLVED: dict[tuple[str, str], str] = {}
_WARNED: set[str] = set()


def resolve_name(backend: str | None, device: torch.device) -> str:
    """The concrete backend for a call on tensors of ``device``."""
    return _resolve_choice(current_backend() if backend is None else backend, device.type)


def _device_error(name: str, device_type: str) -> str | None:
    """Why backend `name` cannot take tensors of `device_type`, or None."""
    if name == "triton" and device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return ("backend 'triton' runs on CUDA tensors (or on CPU tensors under TRITON_INTERPRET=1); "
                "got tensors on cpu")
    if not runs_on(name, device_type):
        simulated = " in the CUDA simulator (FASTELBO_CUDA_SIM=1)" if name == "cuda" and CUDA_SIM else ""
        return f"backend {name!r} runs on {_DEVICE_TYPE[name]} tensors{simulated}; got tensors on {device_type}"
    return None


def _resolve_choice(name: str, device_type: str) -> str:
    name = _check_name(name, "backend")
    if name == "auto":
        reasons = []
        for candidate in _AUTO_ORDER.get(device_type, ()):
            reason = _unavailable_reason(candidate)
            if reason is None:
                return candidate
            reasons.append(f"{candidate}: {reason}")
        if reasons and device_type not in _WARNED:
            _WARNED.add(device_type)
            warnings.warn(f"fastelbo: backend 'auto' runs the reference path on {device_type} tensors, no fused "
                          f"backend being available ({'; '.join(reasons)})", stacklevel=4)
        return "reference"
    _require_available(name)
    error = _device_error(name, device_type)
    if error is not None:
        raise ValueError(error)
    return name


def _resolve(choice: str, device_type: str) -> str:
    """The concrete backend of `choice` ("auto" or a backend name) for `device_type`, its kernels
    registered on first use. Only that backend is made ready: a call on "reference" never builds
    the C++ library."""
    concrete = _RESOLVED.get((choice, device_type)) if isinstance(choice, str) else None
    if concrete is None:
        concrete = _resolve_choice(choice, device_type)
        if _MODULES[concrete] is not None:
            importlib.import_module(_MODULES[concrete])
        _RESOLVED[(choice, device_type)] = concrete
    return concrete


def _under_torch_func(choice) -> str:
    """The choice inside a torch.func transform (grad, vmap, jacrev, ...): the fused ops are
    torch.library custom ops, which PyTorch cannot transform, so "auto" means the reference there
    and an explicit fused backend is an error that says so."""
    if _check_name(choice, "backend") in ("auto", "reference"):
        return "reference"
    raise ValueError(
        f"backend={choice!r} cannot run inside torch.func transforms (grad, vmap, jacrev, ...): fastelbo's "
        "fused kernels are torch.library custom ops, which torch.func cannot transform. "
        "Use backend='reference' (or 'auto', which picks the reference inside torch.func); "
        "torch.autograd.grad(..., create_graph=True) works on every backend."
    )


def _under_forward_ad(choice) -> str:
    """The choice inside torch.autograd.forward_ad.dual_level(): the fused ops have no forward-mode
    derivative (a tangent would be dropped silently), so "auto" means the reference there, which
    autograd differentiates in forward mode, and an explicit fused backend is an error."""
    if _check_name(choice, "backend") in ("auto", "reference"):
        return "reference"
    raise ValueError(
        f"backend={choice!r} cannot run inside torch.autograd.forward_ad.dual_level(): fastelbo's fused kernels "
        "have no forward-mode derivative. Use backend='reference' (or 'auto', which picks the reference there)."
    )


def resolve(backend: str | None, device: torch.device) -> str:
    """The concrete backend for a call on tensors of ``device`` (its kernels registered).
    The choice (the thread's use_backend stack included) is read here, so that torch.compile
    traces it; _resolve runs once at trace time and its result is a constant of the graph."""
    if backend is None:
        stack = _state.__dict__.get("stack")
        backend = stack[-1] if stack else _global_choice
    if torch._C._are_functorch_transforms_active():
        backend = _under_torch_func(backend)
    elif _forward_ad._current_level >= 0:  # (an attribute read: no cost outside dual_level)
        backend = _under_forward_ad(backend)
    return _resolve(backend, device.type)


# Inside a compiled region, backend resolution and availability checks (imports, a first build,
# the environment) run once at trace time and become constants of the graph:
# torch.compiler.assume_constant_result. That function imports torch._dynamo (and with it triton:
# about a second), which `import fastelbo` should not cost a program that never compiles. So the
# two functions are marked as soon as torch._dynamo is imported: now if it already is, else when
# its module has run (an import hook), before anything can trace them (torch.compile imports
# torch._dynamo first).

def _mark_constant_for_compile() -> None:
    torch.compiler.assume_constant_result(_resolve)
    torch.compiler.assume_constant_result(_unavailable_reason)


class _MarkWhenDynamoLoads(importlib.abc.MetaPathFinder):
    """A meta-path finder that finds torch._dynamo with the other finders and gives its spec a
    loader that runs the module, then marks (_MarkingLoader). It stays in sys.meta_path until the
    mark is made: a spec asked for and not used (importlib.util.find_spec) changes nothing."""

    marks_dynamo = True  # (how an instance from before a reload of this module is known)

    def find_spec(self, fullname, path, target=None):
        if fullname != "torch._dynamo":
            return None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if getattr(finder, "marks_dynamo", False) or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _MarkingLoader(spec.loader, self)
                return spec
        return None


class _MarkingLoader(importlib.abc.Loader):
    """torch._dynamo's own loader (every attribute delegated to it), which marks once the module has
    run. A failed mark is a warning, never a failed import: compiled regions then trace the
    resolution (a graph break on its first import) instead of taking it as a constant."""

    def __init__(self, loader, finder):
        self._loader, self._finder = loader, finder

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec) if hasattr(self._loader, "create_module") else None

    def exec_module(self, module):
        self._loader.exec_module(module)
        if module.__name__ != "torch._dynamo" or self._finder not in sys.meta_path:
            return
        sys.meta_path.remove(self._finder)
        try:
            _mark_constant_for_compile()
        except Exception as error:  # (the import itself succeeded: never undo it)
            warnings.warn(f"fastelbo: could not mark its backend resolution for torch.compile ({error!r}); "
                          "compiled regions that call fastelbo first may break the graph", stacklevel=2)


sys.meta_path[:] = [finder for finder in sys.meta_path if not getattr(finder, "marks_dynamo", False)]
if "torch._dynamo" in sys.modules:
    _mark_constant_for_compile()
else:
    sys.meta_path.insert(0, _MarkWhenDynamoLoads())
