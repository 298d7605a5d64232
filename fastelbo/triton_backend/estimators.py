"""The Triton kernel of fastelbo::elbo (the estimator combine), registered as its `.triton` overload
by fastelbo/triton_backend/register.py; the modes and the gradients are in fastelbo/ops/elbo.py.

elbo(log_lik, log_q, log_p, kl, mode, beta) -> (value, weights)
    log_lik, log_q, log_p: (K, *batch); kl: (*batch); mode 0 elbo/MC KL, 1 elbo/analytic KL,
    2 iwae. weights (K, *batch) are the normalized importance weights w~ (mode 2; else empty).
"""
from __future__ import annotations

import math

import torch
import triton
from torch import Tensor

from ..triton_kernels.estimators import elbo_kernel
from ._common import TL_DTYPES, split_scalar

BLOCK_R = 128


def _dtype(log_lik: Tensor, log_q: Tensor) -> torch.dtype:
    return torch.promote_types(log_lik.dtype, log_q.dtype)


def elbo(log_lik: Tensor, log_q: Tensor, log_p: Tensor, kl: Tensor, mode: int, beta: float) -> tuple[Tensor, Tensor]:
    dtype = _dtype(log_lik, log_q)
    sample_dim = log_lik.dim() == kl.dim() + 1  # else one sample without a sample dim
    if not sample_dim and mode == 2:
        raise ValueError("fastelbo::elbo: mode 2 (iwae) takes log_lik, log_q, log_p with their sample dim (K, *batch)")
    k = log_lik.shape[0] if sample_dim else 1
    out = torch.empty(log_lik.shape[1:] if sample_dim else log_lik.shape, dtype=dtype, device=log_lik.device)
    weights = torch.empty(log_lik.shape if mode == 2 else (0,), dtype=dtype, device=log_lik.device)
    rows = out.numel()
    if rows == 0:
        return out, weights
    beta_hi, beta_lo = split_scalar(beta)
    logk_hi, logk_lo = split_scalar(math.log(k))
    elbo_kernel[(triton.cdiv(rows, BLOCK_R),)](
        log_lik.contiguous(), log_q.contiguous(), log_p.contiguous(), kl.contiguous(), out,
        weights if mode == 2 else out,
        rows, k, beta_hi, beta_lo, logk_hi, logk_lo,
        MODE=mode, DTYPE=TL_DTYPES[torch.promote_types(dtype, torch.float32)], BLOCK_R=BLOCK_R,
    )
    return out, weights

