"""How the kernels address strided tensors: R rows of N columns, without copies.

Tensors that share a logical shape (after broadcasting, so a broadcast x has stride 0 along the
dims it lacks) are addressed as rows x columns: the trailing `event_dims` dims collapse to one
column dim with a single stride per tensor, the leading dims to at most three row dims
(n0, n1, n2) shared by all tensors, each tensor with its own three row strides. The kernels
compute a row's offset with `row_offset` (triton_kernels/math.py) in 64-bit arithmetic.

Only layouts that cannot be described that way are copied (made contiguous) first: for example,
a tensor transposed inside its event dims, or batch dims that need more than three strides.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MAX_ROW_DIMS = 3


@dataclass(frozen=True)
class Layout:
    """rows = n0 * n1 * n2 rows of `cols` columns; strides[i] = (s0, s1, s2, col stride) of tensor i."""

    rows: int
    cols: int
    n1: int
    n2: int
    strides: tuple[tuple[int, int, int, int], ...]

    def args(self, i: int) -> tuple[int, int, int, int]:
        return self.strides[i]


def _col_stride(shape, strides, event_dims) -> int | None:
    """The single stride of the collapsed event dims, or None if they do not collapse."""
    dims = [(n, s) for n, s in zip(shape[len(shape) - event_dims:], strides[len(shape) - event_dims:]) if n != 1]
    if not dims:
        return 1
    for (n_outer, s_outer), (n_inner, s_inner) in zip(dims, dims[1:]):
        if s_outer != s_inner * n_inner:
            return None
    return dims[-1][1]


def _row_dims(shape, all_strides, event_dims):
    """Merge adjacent batch dims where every tensor allows it: [(size, [stride per tensor])]."""
    batch = [(shape[i], [st[i] for st in all_strides]) for i in range(len(shape) - event_dims) if shape[i] != 1]
    merged = []
    for size, strides in batch:
        if merged:
            prev_size, prev_strides = merged[-1]
            if all(p == s * size for p, s in zip(prev_strides, strides)):
                merged[-1] = (prev_size * size, strides)
                continue
        merged.append((size, strides))
    return merged


def plan(tensors: list[torch.Tensor], event_dims: int) -> tuple[list[torch.Tensor], Layout]:
    """Address `tensors` (all of one shape) as rows x columns; returns the tensors (copied only
    where their layout cannot be addressed) and the Layout."""
    shape = tuple(tensors[0].shape)
    for t in tensors:
        assert tuple(t.shape) == shape, (tuple(t.shape), shape)
    tensors = [t if _col_stride(shape, t.stride(), event_dims) is not None else t.contiguous() for t in tensors]
    dims = _row_dims(shape, [t.stride() for t in tensors], event_dims)
    if len(dims) > MAX_ROW_DIMS:
        tensors = [t.contiguous() for t in tensors]
        dims = _row_dims(shape, [t.stride() for t in tensors], event_dims)  # contiguous: one row dim
    dims = [(1, [0] * len(tensors))] * (MAX_ROW_DIMS - len(dims)) + dims
    (_, st0), (n1, st1), (n2, st2) = dims
    strides = tuple(
        (st0[i], st1[i], st2[i], _col_stride(shape, t.stride(), event_dims)) for i, t in enumerate(tensors)
    )
    rows = math.prod(shape[: len(shape) - event_dims])
    cols = math.prod(shape[len(shape) - event_dims:])
    return tensors, Layout(rows, cols, n1, n2, strides)
