"""The estimator combine as a torch.library custom op on the Triton kernel.

fastelbo::triton_estimate(log_lik, log_q, log_p, kl, mode, beta) -> (value, weights)
    log_lik, log_q, log_p: (K, *batch); kl: (*batch); mode 0 elbo/MC KL, 1 elbo/analytic KL,
    2 iwae. weights (K, *batch) are the normalized importance weights w~ (mode 2; else empty).

Backward (g the incoming gradient per data point):
    mode 0: d/dlog_lik = g/K, d/dlog_p = beta g/K, d/dlog_q = -beta g/K
    mode 1: d/dlog_lik = g/K, d/dkl = -beta g
    mode 2: d/dlog_lik = d/dlog_p = g w~, d/dlog_q = -g w~
"""
from __future__ import annotations

import math

import torch
import triton
from torch import Tensor

from .. import _op_rules as rules
from ..triton_kernels.estimators import estimate_kernel
from ._common import TL_DTYPES, split_scalar

MODES = rules.ESTIMATOR_MODES
BLOCK_R = 128


def _dtype(log_lik: Tensor, log_q: Tensor) -> torch.dtype:
    return torch.promote_types(log_lik.dtype, log_q.dtype)


@torch.library.custom_op("fastelbo::triton_estimate", mutates_args=())
def estimate_op(log_lik: Tensor, log_q: Tensor, log_p: Tensor, kl: Tensor, mode: int, beta: float) -> tuple[Tensor, Tensor]:
    dtype = _dtype(log_lik, log_q)
    k = log_lik.shape[0]
    out = torch.empty(log_lik.shape[1:], dtype=dtype, device=log_lik.device)
    weights = torch.empty(log_lik.shape if mode == 2 else (0,), dtype=dtype, device=log_lik.device)
    rows = out.numel()
    if rows == 0:
        return out, weights
    beta_hi, beta_lo = split_scalar(beta)
    logk_hi, logk_lo = split_scalar(math.log(k))
    estimate_kernel[(triton.cdiv(rows, BLOCK_R),)](
        log_lik.contiguous(), log_q.contiguous(), log_p.contiguous(), kl.contiguous(), out,
        weights if mode == 2 else out,
        rows, k, beta_hi, beta_lo, logk_hi, logk_lo,
        MODE=mode, DTYPE=TL_DTYPES[torch.promote_types(dtype, torch.float32)], BLOCK_R=BLOCK_R,
    )
    return out, weights


estimate_op.register_fake(rules.estimate_fake)
estimate_op.register_autograd(rules.estimate_backward, setup_context=rules.estimate_setup_context)
