"""What every Triton launcher shares: the compute dtype, run-time float scalars, block sizes."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dtypes import compute_dtype, split_scalar  # noqa: F401 (the launchers' helper)

TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}

# Elements one program keeps in registers per tile; small grids under the interpreter.
TILE_ELEMENTS = 4096


def compute(*tensors: torch.Tensor | None) -> tuple[torch.dtype, tl.dtype]:
    """(torch, triton) compute dtype: float64 for float64 inputs, float32 otherwise."""
    dtype = compute_dtype(*tensors)
    return dtype, TL_DTYPES[dtype]


def block_rows(cols_per_row: int, rows: int) -> int:
    """Rows per program so that a tile holds about TILE_ELEMENTS elements."""
    return max(1, min(triton.next_power_of_2(max(rows, 1)), TILE_ELEMENTS // cols_per_row))
