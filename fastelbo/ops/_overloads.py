"""A fused backend's kernels as an overload of the fastelbo ops: `fastelbo::<name>.<overload>`, with
the op modules' schemas (SCHEMAS), fakes (FAKES) and Python autograd (AUTOGRAD), as Triton's
(`.triton`, fastelbo/triton_backend/register.py) and the CUDA simulator's (`.cuda_sim`,
fastelbo/cpp_backend/cuda_sim.py) are. An AUTOGRAD backward calls the backward kernel of the
overload it was registered for: `getattr(torch.ops.fastelbo.<op>_backward, ctx.overload)`.
"""
from __future__ import annotations

import torch

from . import MODULES


def _with_overload(setup_context, overload: str):
    def setup(ctx, inputs, output):
        ctx.overload = overload
        setup_context(ctx, inputs, output)

    return setup


def define(overload: str, kernels: dict | None = None, keys: tuple = ()) -> torch.library.Library:
    """Define `<name>.<overload>` for every op schema, with kernels[name] as its kernel for each
    dispatch key in `keys` (kernels None: the kernels are registered elsewhere, e.g. by a C++
    library), and its fake and autograd. Returns the Library that holds them (keep it alive)."""
    library = torch.library.Library("fastelbo", "FRAGMENT")
    for op in MODULES:
        for name, schema in op.SCHEMAS.items():
            library.define(f"{name}.{overload}{schema}")
            for key in keys if kernels is not None else ():
                library.impl(f"{name}.{overload}", kernels[name], key)
            torch.library.register_fake(f"fastelbo::{name}.{overload}", op.FAKES[name], lib=library)
        for name, (backward, setup_context) in op.AUTOGRAD.items():
            torch.library.register_autograd(f"fastelbo::{name}.{overload}", backward,
                                            setup_context=_with_overload(setup_context, overload), lib=library)
    return library
