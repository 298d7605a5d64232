"""The C++ kernels ("cpu" and "cuda" backends): loads the library (csrc/; built on first use by
_build.py) and registers, on its ops, what each op's module (fastelbo/ops/) says in Python: the
fakes that torch.compile traces, and the CompositeImplicitAutograd implementations of the
`*_backward_differentiable` ops that the C++ autograd (csrc/binding/autograd.cpp) calls for the
second order. The dispatcher routes each op to the CPU or the CUDA kernel by the tensors' device.

Importing this module builds (if needed) and loads the CPU library; it raises ImportError with the
reason when the library is unavailable.
"""
from __future__ import annotations

import warnings

import torch

from .. import ops, rng
from ..ops import _cpp_calls
from . import _build

_reason = _build.cpu_library()
if _reason is not None:
    raise ImportError(f"fastelbo's C++ library is unavailable: {_reason}")


for _op in ops.MODULES:
    for _name, _fake in _op.FAKES.items():
        torch.library.register_fake(f"fastelbo::{_name}", _fake)
    for _name, _impl in _op.SECOND_ORDER.items():
        torch.library.impl(f"fastelbo::{_name}", "CompositeImplicitAutograd")(_impl)
torch.library.register_fake("fastelbo::philox_words", rng.philox_words_fake)

# The typed Python bindings of the forward ops (csrc/binding/python.cpp), which the public
# functions call in eager mode instead of torch.ops' boxed path (fastelbo/ops/_cpp_calls.py).
# Without them the ops still run, through torch.ops.
try:
    _cpp_calls.install(_build.cpu_bindings())
except ImportError as _error:
    warnings.warn(f"fastelbo: the C++ library's Python bindings could not be imported ({_error}); its ops run "
                  "through torch.ops (about 1.5 us more per call)", stacklevel=2)
