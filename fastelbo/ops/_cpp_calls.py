"""How the public functions call a fused backend's kernels: `kernel(name, overload, tensors)`.

The C++ kernels are the default overload of torch.ops.fastelbo.<name>. torch.ops calls an op
through its generic path: each argument converted to an IValue, a look for __torch_function__
overrides, a boxed call; about 1.5 us of a small call. The C++ library's Python module
(csrc/binding/python.cpp, installed here by fastelbo/cpp_backend/library.py) calls the same
dispatcher ops unboxed, as ATen's generated bindings call the native ops. A call takes it where
torch.ops would do nothing more: outside dynamo's tracing (torch.compile traces torch.ops, not
the module) and on tensors without __torch_function__ (no subclass overriding it, no torch
function mode: make_fx holds one, so its traces go through torch.ops). Everything below the
dispatcher's entry (autograd, Python dispatch such as FakeTensorMode and __torch_dispatch__
subclasses, the CPU or CUDA kernel) is the same either way. (torch.func transforms never reach
either: the public functions refuse the fused backends inside them, fastelbo/_backend.py.)

The same module has a front door (csrc/binding/front_door.cpp): fe.gaussian_latent's,
fe.bernoulli_log_prob's and fe.gaussian_log_prob's common calls whole in C++, from the Python
arguments to the returned object, which the public functions try first outside dynamo's tracing
(FRONT_DOOR). It reads the Python state a call depends on from the modules that own it (install()
gives it them) and returns None for every call it does not take, which then runs the Python path.
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad
from torch.overrides import has_torch_function

from .. import _backend, _validate
from .._types import TracedLatent
from ._autograd import PARAM_NAMES

BINDINGS = None  # the C++ library's Python module, once loaded
FRONT_DOOR = None  # the same module once its front door is configured: front_gaussian_latent, ...


def install(bindings) -> None:
    """Called by fastelbo/cpp_backend/library.py when the library is loaded. The front door
    (csrc/binding/front_door.cpp) is given the Python state it reads at each call."""
    global BINDINGS, FRONT_DOOR
    BINDINGS = bindings
    if hasattr(bindings, "front_configure"):
        bindings.front_configure(TracedLatent, _backend, _validate, torch.autograd.forward_ad, torch.compiler,
                                 torch._C._are_functorch_transforms_active, PARAM_NAMES)
        FRONT_DOOR = bindings


def runs_eagerly(tensors: tuple) -> bool:
    """Whether a call on `tensors` (None where absent) runs as itself: not traced into a graph
    (torch.compile, torch.export, torch.jit.trace) and without __torch_function__ (no tensor
    subclass overriding it, no torch function mode). The latent's CPU kernel draws its own seed
    only then (gaussian_latent._seed_for_kernel)."""
    return not torch.compiler.is_compiling() and not torch.jit.is_tracing() and not has_torch_function(tensors)


def kernel(name: str, overload: str, tensors: tuple = (), eager: bool | None = None):
    """The callable that runs op `name`'s `overload` on these arguments (`tensors`: the call's
    tensor arguments, None where absent; eager: runs_eagerly(tensors), where the caller knows it,
    else checked here for what matters to the choice: dynamo's tracing and __torch_function__)."""
    if overload == "default" and BINDINGS is not None:
        if eager is None:
            eager = not torch.compiler.is_dynamo_compiling() and not has_torch_function(tensors)
        if eager:
            return getattr(BINDINGS, name)
    return getattr(getattr(torch.ops.fastelbo, name), overload)
