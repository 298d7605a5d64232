"""Gradient buffers a forward pass computed, owned by the backward that consumes them.

An op whose forward computes its gradient (a likelihood's d out / d params, the fused heads'
weight gradients) hands it to autograd in the backward scaled by the incoming gradient. Called
eagerly through `owning_function`, the buffer is private to the call: the backward scales it in
place and returns it, so the buffer and the scaled gradient never exist together. Where the
buffer must be saved with save_for_backward instead (through the torch op: torch.compile or a
direct torch.ops call, whose outputs the caller may hold; and under saved-tensor hooks, which
must see it), `use_owning_path` says so and the op's own autograd scales it into a new tensor.
"""
from __future__ import annotations

import torch


def use_owning_path() -> bool:
    """Whether a call may take the owning eager path: not while compiling, and not under
    saved-tensor hooks (torch.autograd.graph.saved_tensors_hooks, save_on_cpu, non-reentrant
    checkpointing), which must see every tensor kept for backward."""
    return not torch.compiler.is_compiling() and torch._C._autograd._top_saved_tensors_default_hooks(False) is None


def keep_buffers(ctx, output) -> tuple:
    """Keep the gradients a reduced forward computed (output[1:]) for the backward; returns what to
    save_for_backward besides the inputs. They are not differentiable outputs.

    Called eagerly through `owning_function` (the public functions' eager path), the gradients are
    private to the call: they are kept on ctx and the backward takes them over, scales them in
    place and hands them to autograd as the gradients, so the buffer and the scaled gradient (the
    size of W each) never exist together (in float16 / bfloat16 the float32 buffer and its half cast
    do) and no pass copies them. A second backward of a retained graph finds them taken and
    recomputes them with the forward kernel (the same computation: the same gradients bit for bit),
    and no one else holds a tensor autograd accumulates into. Through the torch op (torch.compile,
    or a direct torch.ops call, whose outputs the caller may hold) they are saved and never
    modified: the backward scales them into new tensors (and a compiled backward reuses their
    memory itself)."""
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)
    if getattr(ctx, "owns_buffers", False):
        ctx.buffers = list(output[1:])
        return ()
    ctx.buffers = None
    return tuple(output[1:])


def owning_function(forward_kernel, setup_context, backward):
    """The op's kernel and autograd as a torch.autograd.Function whose backward owns the op's
    gradient outputs (see keep_buffers): the public functions' eager path for reductions."""

    def forward(ctx, *inputs):  # ctx in forward: apply then binds no signature per call (40 us)
        output = forward_kernel(*inputs)
        ctx.owns_buffers = True
        setup_context(ctx, inputs, output)
        return output

    return type("OwningFunction", (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "backward": staticmethod(backward),
    })


def taken_buffers(ctx, saved):
    """(buffers, owned): the kept gradients and whether the backward owns them (may scale them in
    place), or (None, False) when an earlier backward of a retained graph took them."""
    if ctx.buffers is not None:
        buffers, ctx.buffers = ctx.buffers, None
        return buffers, True
    return (list(saved), False) if saved else (None, False)


def scaled(buffer, factor, dtype, owned: bool):
    """factor * buffer in `dtype`: in place when the backward owns the buffer, else a new tensor."""
    return (buffer.mul_(factor) if owned else buffer * factor).to(dtype)
