"""The Triton kernels of fastelbo::gaussian_latent and fastelbo::gaussian_kl (and their backward
kernels), launched on the rows of mu: registered as the `.triton` overloads of those ops by
fastelbo/triton_backend/register.py, with the schemas, fakes and autograd of fastelbo/ops/.

param is 0 (logvar), 1 (log_std) or 2 (softplus). The seed is the int64 device tensor of
fastelbo.rng.draw_seed; backward regenerates eps from it. Absent prior gradients are empty tensors.
event_dims > 1 flattens mu's last dims as csrc/binding/event_dims.h does (ops/_event_dims.py:
OpEventDims; a channels-last event in storage order, the kernels told its channel count).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
from torch import Tensor

from ..triton_kernels.latent import gaussian_kl_backward_kernel, gaussian_kl_forward_kernel, gaussian_latent_backward_kernel, gaussian_latent_forward_kernel
from ._common import block_rows, compute, split_scalar
from ..ops._event_dims import OpEventDims, check_event_dims
from ._layout import plan

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class _Rows:
    """mu, scale (and the prior, broadcast to mu) as R rows of D, with block sizes and grid."""

    def __init__(self, mu, scale, prior_mu, prior_scale):
        self.dim = mu.shape[-1]
        self.has_prior = prior_mu is not None
        self.single_row = [True] * 4  # each input's own shape is one row (no batch dim above 1): see shared()
        if self.has_prior:
            self.single_row[2:] = [all(n == 1 for n in t.shape[:-1]) for t in (prior_mu, prior_scale)]
        tensors = [mu, scale]
        if self.has_prior:
            tensors += [prior_mu.expand(mu.shape), prior_scale.expand(mu.shape)]
        tensors, self.layout = plan(tensors, 1)
        self.tensors = tensors if self.has_prior else tensors + [tensors[0], tensors[0]]
        strides = list(self.layout.strides)
        if not self.has_prior:
            strides += [(0, 0, 0, 0)] * 2
        self.strides = strides
        self.rows = self.layout.rows
        self.block_d = max(4, triton.next_power_of_2(self.dim))
        self.block_r = block_rows(self.block_d, self.rows)
        self.grid = (triton.cdiv(self.rows, self.block_r),)
        self.num_warps = 4 if self.block_r * self.block_d <= 2048 else 8

    def shared(self, i: int) -> bool:
        """True when tensor i is one row read by every row: its row strides are all 0 and its own
        shape has no batch dim above 1 (an expanded view can have rows of its own, each with its
        own gradient)."""
        return self.single_row[i] and self.strides[i][:3] == (0, 0, 0)

    def stride_args(self) -> list[int]:
        return [s for st in self.strides for s in st]

    def contiguous_row_strides(self) -> tuple[int, int, int, int]:
        """The (s0, s1, s2, sd) of a contiguous (R, D) tensor in this row decomposition."""
        n1, n2, d = self.layout.n1, self.layout.n2, self.dim
        return (n1 * n2 * d, n2 * d, d, 1)

    def prior_grad_buffer(self, i: int, dtype) -> Tensor:
        rows = self.grid[0] if self.shared(i) else self.rows
        return torch.empty(rows, self.dim, dtype=dtype, device=self.tensors[0].device)

    def reduce_prior_grad(self, i: int, buffer: Tensor, prior: Tensor, batch_shape) -> Tensor:
        """Sum the kernel's prior-gradient rows down to the prior's own shape."""
        if self.shared(i):
            full = buffer.sum(0).view((1,) * len(batch_shape) + (self.dim,))
        else:
            full = buffer.view(*batch_shape, self.dim)
        return full.sum_to_size(prior.shape).to(prior.dtype)


# ---- event dims ----

def _events(mu: Tensor, event_dims: int, op: str) -> Optional[OpEventDims]:
    """mu's last event_dims dims as one (checked; None for 1: the kernels' own), as
    csrc/binding/event_dims.h takes them: channels-last ones as a view, with `channels`."""
    check_event_dims(mu.dim(), event_dims, op)
    return OpEventDims(mu, event_dims) if event_dims > 1 else None


# ---- forward ----

def gaussian_latent(mu: Tensor, scale: Tensor, prior_mu: Optional[Tensor], prior_scale: Optional[Tensor],
              eps: Optional[Tensor], seed: Optional[Tensor], param: int, n_samples: int,
              stl: bool, event_dims: int = 1) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    events = _events(mu, event_dims, "fastelbo.gaussian_latent")
    if events is not None:  # the last event_dims dims as one (as csrc/binding/event_dims.h)
        z, *rest = _forward(events.flat(mu), events.flat(scale), events.flat_prior(prior_mu),
                            events.flat_prior(prior_scale), events.flat(eps), seed, param, n_samples, events.channels)
        return (events.unflat(z, (*((n_samples,) if n_samples else ()), *mu.shape)), *rest)
    return _forward(mu, scale, prior_mu, prior_scale, eps, seed, param, n_samples, 1)


def _forward(mu: Tensor, scale: Tensor, prior_mu: Optional[Tensor], prior_scale: Optional[Tensor],
             eps: Optional[Tensor], seed: Optional[Tensor], param: int, n_samples: int,
             channels: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The forward over one event dim, its columns stored channels-last when channels > 1."""
    if eps is None and seed is None:
        raise ValueError(f"fastelbo.gaussian_latent: needs eps or a seed on {mu.device} "
                         "(only the CPU kernels draw their own seed)")
    dtype, tl_dtype = compute(mu, scale, prior_mu, prior_scale)
    batch = mu.shape[:-1]
    k = max(n_samples, 1)  # 0: one sample without a sample dim
    samples = (n_samples,) if n_samples else ()
    z = torch.empty((*samples, *mu.shape), dtype=mu.dtype, device=mu.device)
    log_q = torch.empty((*samples, *batch), dtype=dtype, device=mu.device)
    log_p = torch.empty_like(log_q)
    kl = torch.empty(batch, dtype=dtype, device=mu.device)
    no_seed = torch.empty(0, dtype=torch.int64, device=mu.device)  # the caller draws the seed (or passes eps)
    if log_q.numel() == 0:
        return z, log_q, log_p, kl, no_seed
    rows = _Rows(mu, scale, prior_mu, prior_scale)
    eps_args = _eps_args(eps, rows, mu)
    const_hi, const_lo = split_scalar(rows.dim * HALF_LOG_2PI)
    gaussian_latent_forward_kernel[rows.grid](
        *rows.tensors, eps_args[0], seed if seed is not None else mu,
        z, log_q, log_p, kl,
        rows.rows, rows.dim, k, rows.layout.n1, rows.layout.n2,
        *rows.stride_args(), *eps_args[1:],
        const_hi, const_lo, channels,
        PARAM=param, HAS_PRIOR=rows.has_prior, HAS_EPS=eps is not None, CHANNELS_LAST=channels > 1, DTYPE=tl_dtype,
        BLOCK_R=rows.block_r, BLOCK_D=rows.block_d, num_warps=rows.num_warps,
    )
    return z, log_q, log_p, kl, no_seed


def _eps_args(eps, rows: _Rows, mu) -> tuple:
    """(eps tensor, sample stride, s0, s1, s2, sd): explicit noise made contiguous (K, R, D)."""
    if eps is None:
        return (mu, 0, 0, 0, 0, 0)
    eps = eps.contiguous()
    return (eps, rows.rows * rows.dim, *rows.contiguous_row_strides())


# ---- backward ----

def _view(t: Optional[Tensor], *shape) -> Optional[Tensor]:
    if t is None:
        return None
    try:
        return t.view(*shape)
    except RuntimeError:
        return t.contiguous().view(*shape)


def gaussian_latent_backward(grad_z: Optional[Tensor], grad_log_q: Optional[Tensor], grad_log_p: Optional[Tensor],
                       grad_kl: Optional[Tensor], mu: Tensor, scale: Tensor, prior_mu: Optional[Tensor],
                       prior_scale: Optional[Tensor], eps: Optional[Tensor], seed: Optional[Tensor],
                       param: int, n_samples: int, stl: bool,
                       event_dims: int = 1) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    events = _events(mu, event_dims, "fastelbo.gaussian_latent_backward")
    if events is not None:  # the last event_dims dims as one (as csrc/binding/event_dims.h)
        grads = _backward(events.flat(grad_z), grad_log_q, grad_log_p, grad_kl, events.flat(mu), events.flat(scale),
                          events.flat_prior(prior_mu), events.flat_prior(prior_scale), events.flat(eps), seed, param,
                          n_samples, stl, events.channels)
        return (events.unflat(grads[0], mu.shape), events.unflat(grads[1], scale.shape),
                events.prior_grad(grads[2], prior_mu), events.prior_grad(grads[3], prior_scale))
    return _backward(grad_z, grad_log_q, grad_log_p, grad_kl, mu, scale, prior_mu, prior_scale, eps, seed, param,
                     n_samples, stl, 1)


def _backward(grad_z: Optional[Tensor], grad_log_q: Optional[Tensor], grad_log_p: Optional[Tensor],
              grad_kl: Optional[Tensor], mu: Tensor, scale: Tensor, prior_mu: Optional[Tensor],
              prior_scale: Optional[Tensor], eps: Optional[Tensor], seed: Optional[Tensor], param: int,
              n_samples: int, stl: bool, channels: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The backward over one event dim, its columns stored channels-last when channels > 1."""
    dtype, tl_dtype = compute(mu, scale, prior_mu, prior_scale)
    grad_mu = mu.new_empty(mu.shape)
    grad_scale = scale.new_empty(scale.shape)
    grad_pmu = torch.zeros_like(prior_mu) if prior_mu is not None else mu.new_empty(0)
    grad_pscale = torch.zeros_like(prior_scale) if prior_scale is not None else mu.new_empty(0)
    if mu.numel() == 0:
        return grad_mu.zero_(), grad_scale.zero_(), grad_pmu, grad_pscale
    rows = _Rows(mu, scale, prior_mu, prior_scale)
    k, r, d = max(n_samples, 1), rows.rows, rows.dim
    gz, gq, gp, gk = _view(grad_z, k, r, d), _view(grad_log_q, k, r), _view(grad_log_p, k, r), _view(grad_kl, r)
    pmu_buffer = rows.prior_grad_buffer(2, dtype) if rows.has_prior else mu
    pscale_buffer = rows.prior_grad_buffer(3, dtype) if rows.has_prior else mu
    eps_args = _eps_args(eps, rows, mu)
    gaussian_latent_backward_kernel[rows.grid](
        *rows.tensors, eps_args[0], seed if seed is not None else mu,
        _or(gz, mu), _or(gq, mu), _or(gp, mu), _or(gk, mu),
        grad_mu, grad_scale, pmu_buffer, pscale_buffer,
        r, d, k, rows.layout.n1, rows.layout.n2,
        *rows.stride_args(), *eps_args[1:],
        *_strides(gz, 3), *_strides(gq, 2), *_strides(gp, 2), *_strides(gk, 1), channels,
        PARAM=param, HAS_PRIOR=rows.has_prior, HAS_EPS=eps is not None, STL=stl, CHANNELS_LAST=channels > 1,
        HAS_GZ=gz is not None, HAS_GQ=gq is not None, HAS_GP=gp is not None, HAS_GK=gk is not None,
        PM_SHARED=rows.shared(2), PS_SHARED=rows.shared(3), DTYPE=tl_dtype,
        BLOCK_R=rows.block_r, BLOCK_D=rows.block_d, num_warps=rows.num_warps,
    )
    if rows.has_prior:
        grad_pmu = rows.reduce_prior_grad(2, pmu_buffer, prior_mu, mu.shape[:-1])
        grad_pscale = rows.reduce_prior_grad(3, pscale_buffer, prior_scale, mu.shape[:-1])
    return grad_mu, grad_scale, grad_pmu, grad_pscale


def _or(t: Optional[Tensor], fallback: Tensor) -> Tensor:
    return fallback if t is None else t


def _strides(t: Optional[Tensor], n: int) -> tuple[int, ...]:
    return (0,) * n if t is None else tuple(t.stride())




# ---- analytic KL alone ----

def gaussian_kl(mu: Tensor, scale: Tensor, prior_mu: Optional[Tensor], prior_scale: Optional[Tensor],
          param: int, per_dim: bool) -> Tensor:
    dtype, tl_dtype = compute(mu, scale, prior_mu, prior_scale)
    out = torch.empty(mu.shape if per_dim else mu.shape[:-1], dtype=dtype, device=mu.device)
    if mu.numel() == 0:
        return out.zero_()
    rows = _Rows(mu, scale, prior_mu, prior_scale)
    gaussian_kl_forward_kernel[rows.grid](
        *rows.tensors, out, rows.rows, rows.dim, rows.layout.n1, rows.layout.n2, *rows.stride_args(),
        PARAM=param, HAS_PRIOR=rows.has_prior, PER_DIM=per_dim, DTYPE=tl_dtype,
        BLOCK_R=rows.block_r, BLOCK_D=rows.block_d, num_warps=rows.num_warps,
    )
    return out


def gaussian_kl_backward(grad: Tensor, mu: Tensor, scale: Tensor, prior_mu: Optional[Tensor],
                   prior_scale: Optional[Tensor], param: int, per_dim: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dtype, tl_dtype = compute(mu, scale, prior_mu, prior_scale)
    grad_mu = mu.new_empty(mu.shape)
    grad_scale = scale.new_empty(scale.shape)
    grad_pmu = torch.zeros_like(prior_mu) if prior_mu is not None else mu.new_empty(0)
    grad_pscale = torch.zeros_like(prior_scale) if prior_scale is not None else mu.new_empty(0)
    if mu.numel() == 0:
        return grad_mu.zero_(), grad_scale.zero_(), grad_pmu, grad_pscale
    rows = _Rows(mu, scale, prior_mu, prior_scale)
    g = _view(grad, rows.rows, rows.dim) if per_dim else _view(grad, rows.rows)
    g_strides = tuple(g.stride()) if per_dim else (g.stride(0), 0)
    pmu_buffer = rows.prior_grad_buffer(2, dtype) if rows.has_prior else mu
    pscale_buffer = rows.prior_grad_buffer(3, dtype) if rows.has_prior else mu
    gaussian_kl_backward_kernel[rows.grid](
        *rows.tensors, g, grad_mu, grad_scale, pmu_buffer, pscale_buffer,
        rows.rows, rows.dim, rows.layout.n1, rows.layout.n2, *rows.stride_args(), *g_strides,
        PARAM=param, HAS_PRIOR=rows.has_prior, PER_DIM=per_dim,
        PM_SHARED=rows.shared(2), PS_SHARED=rows.shared(3), DTYPE=tl_dtype,
        BLOCK_R=rows.block_r, BLOCK_D=rows.block_d, num_warps=rows.num_warps,
    )
    if rows.has_prior:
        grad_pmu = rows.reduce_prior_grad(2, pmu_buffer, prior_mu, mu.shape[:-1])
        grad_pscale = rows.reduce_prior_grad(3, pscale_buffer, prior_scale, mu.shape[:-1])
    return grad_mu, grad_scale, grad_pmu, grad_pscale

