"""Launchers of the Triton noise kernels (triton_kernels/rng.py)."""
from __future__ import annotations

import torch
import triton

from ..triton_kernels.rng import normal_noise_kernel, philox_words_kernel
from ._common import TL_DTYPES


def philox_words(counter: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Philox4x32-10 words (4, n) int64 for counters (4, n) and keys (2, n), int64 holding uint32."""
    n = counter.shape[1]
    out = torch.empty(4, n, dtype=torch.int64, device=counter.device)
    block = 128
    philox_words_kernel[(triton.cdiv(n, block),)](counter.contiguous(), key.contiguous(), out, n, BLOCK=block)
    return out


def normal_noise(seed: torch.Tensor, n_samples: int, n_rows: int, dim: int,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """eps (n_samples, n_rows, dim) in dtype (float32 or float64) by the scheme of docs/RNG.md,
    computed in Triton."""
    out = torch.empty(n_samples, n_rows, dim, dtype=dtype, device=seed.device)
    if out.numel() == 0:
        return out
    block_rows, block_groups = 16, min(64, triton.next_power_of_2(triton.cdiv(dim, 4)))
    grid = (triton.cdiv(n_rows, block_rows), n_samples)
    normal_noise_kernel[grid](seed.reshape(1), out, n_rows, dim, DTYPE=TL_DTYPES[dtype], BLOCK_ROWS=block_rows,
                              BLOCK_GROUPS=block_groups)
    return out


def normal_noise_op(seed: torch.Tensor, n_samples: int, n_rows: int, dim: int, float64: bool) -> torch.Tensor:
    """The kernel of fastelbo::normal_noise.triton (the op's schema: fastelbo/ops/gaussian_latent.py)."""
    return normal_noise(seed, n_samples, n_rows, dim, torch.float64 if float64 else torch.float32)
