"""What the fused "linear + likelihood" ops share: a decoder's last nn.Linear and the likelihood of
its output, computed in blocks of output columns so that the (rows, Dx) logits never exist in full.

For input h (rows, H), weight W (Dx, H), bias b (Dx,) and each block of columns [c0, c1):

    logits = h W[c0:c1]^T + b[c0:c1]                     one GEMM (addmm)
    out   += sum over the block of log p(x | logits)     the likelihood kernel, one pass, which
    G      = d out / d logits                            also writes G (a buffer of the block)
    dh    += G W[c0:c1],   dW[c0:c1] = G^T h,   db[c0:c1] = sum over rows of G

The likelihood is a sum over the Dx columns, so the blocks are independent: each block of dW and
db is written once (no accumulation over blocks), only dh (rows x H, small) is accumulated. A
block's logits and G stay in cache between the GEMM that writes them and the ones that read them.

Reductions. With reduction "sum" or "mean" the gradient reaching the op is one number, so the
forward computes the gradients (three GEMMs, as the unfused step does in forward + backward) and
the backward multiplies them by that number (`keep_buffers` says when in place, and how a second
backward of a retained graph gets the same gradients bit for bit). With reduction "none" the
backward gets one number per row: it recomputes each block's logits and scales G by the row's
gradient (four GEMMs in all, one more than the unfused step, for the same memory saving).

Second order (create_graph=True): the backward differentiates the reference (F.linear and the
likelihood's reference) under autograd; exact, at the unfused cost.
"""
from __future__ import annotations

import torch

from .. import _validate as V
from .._dtypes import compute_dtype
from ._autograd import differentiating, needs_grad, reference_vjp
from ._owned_buffers import keep_buffers, owning_function, scaled, taken_buffers, use_owning_path  # noqa: F401

REDUCTIONS = ("none", "sum", "mean")
# Elements of logits per block when chunk_size is not given: about 1 MiB of float32, the block
# then stays in a core's L2 cache between the GEMM and the likelihood kernel (see the README's
# measurement of the block size), and at least 64 columns so the GEMMs stay efficient.
BLOCK_ELEMENTS = 1 << 18
MIN_COLUMNS = 64

LIBRARY = torch.library.Library("fastelbo", "FRAGMENT")


def block_columns(rows: int, dx: int, chunk_size: int) -> int:
    """Columns of W per block: chunk_size when given (> 0), else about BLOCK_ELEMENTS logits, a
    multiple of 16."""
    if chunk_size > 0:
        return chunk_size
    columns = max(MIN_COLUMNS, (BLOCK_ELEMENTS // max(rows, 1)) // 16 * 16)
    return min(columns, max(dx, 1))


def columns(t, c0: int, c1: int):
    """t's block of columns [c0, c1) along its last dim, or t itself where it broadcasts there."""
    if t is None or t.dim() == 0 or t.shape[-1] == 1:
        return t
    return t[..., c0:c1]


def check_arguments(input, weight, bias, x, reduction, chunk_size, data_dtypes):
    """The public checks (names the argument); returns (reduction code, chunk_size or 0)."""
    V.tensor("input", input, min_dim=1)
    V.tensor("weight", weight, min_dim=2)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features) as nn.Linear's, got {weight.dim()}-D")
    if weight.shape[1] != input.shape[-1]:
        raise ValueError(f"weight has in_features {weight.shape[1]} but input's last dim is {input.shape[-1]}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        V.tensor(name, t)
        V.same_device(name, t, "input", input)
        if t.dtype != input.dtype:
            raise TypeError(f"{name} must have input's dtype {input.dtype}, got {t.dtype}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},) (weight's out_features), got {tuple(bias.shape)}")
    V.tensor("x", x, data_dtypes)
    V.same_device("x", x, "input", input)
    V.broadcasts_to("x", x, input.shape[:-1] + weight.shape[:1], "the logits (input's batch shape, out_features)")
    if x.requires_grad and torch.is_grad_enabled():  # (under no_grad nothing is differentiated)
        raise ValueError("x must not require grad: the fused linear likelihoods differentiate the input, weight, "
                         "bias (and logvar), not the data (use F.linear and the likelihood op for d/dx)")
    code = REDUCTIONS.index(V.choice("reduction", reduction, REDUCTIONS))
    if chunk_size is not None:
        chunk_size = V.integer("chunk_size", chunk_size, 1)
    if V.active:
        V.finite("input", input)
        V.finite("weight", weight)
        if bias is not None:
            V.finite("bias", bias)
    return code, chunk_size or 0


def linear_needs(input, weight, bias) -> list[bool]:
    return [needs_grad(input), needs_grad(weight), needs_grad(bias)]


def reduce(out: torch.Tensor, reduction: int) -> torch.Tensor:
    """The per-row values reduced: 0 none, 1 sum, 2 mean."""
    if reduction == 0:
        return out
    return out.sum() if reduction == 1 else out.mean()


def run_blocks(block_likelihood, input, weight, bias, chunk_size, row_grad, needs, dtype=None):
    """The block loop. block_likelihood(logits, c0, c1, row_grad) -> (out block, G or None, extra
    gradient block or None) with G = d out/d logits already scaled by row_grad (None: no gradient
    wanted; 1.0: unscaled; a tensor of the batch shape: one factor per row).

    Returns (out, grad_input, grad_weight, grad_bias, extra blocks), each gradient None unless
    needed, in the compute dtype (`dtype`, by default the input's): for half inputs the gradient GEMMs run in float32 on the
    float32 buffer G, so a gradient is rounded to half once, after the incoming gradient's scale
    (with reduction "sum" / "mean" that scale comes in the backward: rounding G or dW to half in
    the forward would round the result two or three times)."""
    lead, hidden, dx = input.shape[:-1], input.shape[-1], weight.shape[0]
    h = input.reshape(-1, hidden)
    rows = h.shape[0]
    dtype = dtype or compute_dtype(input)  # (the Gaussian's: its logvar's dtype counts too)
    out = torch.zeros(lead, dtype=dtype, device=input.device)
    want = row_grad is not None and any(needs)
    grad_h = torch.zeros(rows, hidden, dtype=dtype, device=input.device) if want and needs[0] else None
    grad_w = torch.empty(weight.shape, dtype=dtype, device=input.device) if want and needs[1] else None
    grad_b = torch.empty(dx, dtype=dtype, device=input.device) if want and needs[2] else None
    h_compute = h.to(dtype) if grad_w is not None else None
    extras = []
    step = block_columns(rows, dx, chunk_size)
    for c0 in range(0, dx, step):
        c1 = min(c0 + step, dx)
        w = weight[c0:c1]
        logits = torch.mm(h, w.t()) if bias is None else torch.addmm(bias[c0:c1], h, w.t())
        out_block, grad, extra = block_likelihood(logits.view(*lead, c1 - c0), c0, c1, row_grad if want else None)
        out.add_(out_block)
        extras.append(extra)
        if grad is None:
            continue
        grad = grad.view(rows, c1 - c0)
        if grad_h is not None:
            grad_h.addmm_(grad, w.to(dtype))
        if grad_w is not None:
            torch.mm(grad.t(), h_compute, out=grad_w[c0:c1])
        if grad_b is not None:
            torch.sum(grad, 0, out=grad_b[c0:c1])
    if grad_h is not None:
        grad_h = grad_h.view(input.shape)
    return out, grad_h, grad_w, grad_b, extras


def empty_or(t, like):
    """A gradient output of the ops' schemas: the tensor, or an empty placeholder on like's device."""
    return t if t is not None else like.new_empty(0)


def reference_backward(reference_forward, inputs, needs, grad_out):
    """The second order: the reference's vjp, differentiable (create_graph=True)."""
    return reference_vjp(lambda *args: (reference_forward(*args),), inputs, needs, (grad_out,))


def define(name: str, schema: str, kernel, fake) -> None:
    """Define fastelbo::<name> with its Python kernel (CPU and CUDA: the GEMMs are torch's, the
    likelihood kernel the overload named in its `kernel` argument) and its fake."""
    LIBRARY.define(f"{name}{schema}")
    for key in ("CPU", "CUDA"):
        LIBRARY.impl(name, kernel, key)
    torch.library.register_fake(f"fastelbo::{name}", fake, lib=LIBRARY)


__all__ = ["REDUCTIONS", "block_columns", "columns", "check_arguments", "linear_needs", "reduce", "run_blocks",
           "empty_or", "keep_buffers", "owning_function", "taken_buffers", "scaled", "use_owning_path", "reference_backward",
           "define", "differentiating"]
