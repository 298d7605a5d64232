"""fastelbo.elbo: the estimator's value per data point from per-sample log-likelihoods and a Latent.

With K samples and log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x):
    elbo, kl="mc":        mean_k [log p(x|z_k) + beta (log p(z_k) - log q(z_k|x))]     (mode 0)
    elbo, kl="analytic":  mean_k log p(x|z_k) - beta KL                               (mode 1)
    iwae:                 logsumexp_k log w_k - log K                                 (mode 2)
    dreg:                 the IWAE value with the doubly reparameterized gradient (Tucker et al. 2018)
Backward (g the incoming gradient per data point):
    mode 0: d/dlog_lik = g/K, d/dlog_p = beta g/K, d/dlog_q = -beta g/K
    mode 1: d/dlog_lik = g/K, d/dkl = -beta g
    mode 2: d/dlog_lik = d/dlog_p = g w~, d/dlog_q = -g w~   (w~ = softmax_k log w, the op's weights)

The kernel `fastelbo::elbo(log_lik, log_q, log_p, kl, mode, beta) -> (value, weights)` combines the
modes 0-2 in one pass; log_lik, log_q and log_p are (K, *batch), or (*batch) for one sample without
a sample dim (modes 0 and 1: what fe.gaussian_latent returns by default; mode 2 takes the sample
dim); DReG is written around the fused pieces here (`dreg`). Mode 1 with one sample and no sample
dim, log p(x|z) - beta KL, is not a kernel call: `elbo` computes it as one native op,
torch.sub(log_lik, kl, alpha=beta), on every backend. The public function,
the schema, the fake, the reference and the gradient rules, as for every op
(see fastelbo/ops/__init__.py).
"""
from __future__ import annotations

import math

import torch
import torch.autograd.forward_ad as _forward_ad

from .. import _validate as V
from .._backend import OVERLOAD, check_backend_name, resolve
from .._types import DregTerms, Latent, TracedLatent
from ._autograd import differentiating, no_grad_buffers, reference_vjp
from ._cpp_calls import kernel
from .gaussian_latent import log_prior, log_q_grad_z

NAME = "elbo"
SCHEMAS = {"elbo": "(Tensor log_lik, Tensor log_q, Tensor log_p, Tensor kl, int mode, float beta) -> (Tensor, Tensor)"}
KL_MODES = ("mc", "analytic")
ESTIMATORS = ("elbo", "iwae", "dreg")
MODES = {("elbo", "mc"): 0, ("elbo", "analytic"): 1, ("iwae", "mc"): 2}
_INF = float("inf")


# ---- the public function ----

def _check(log_lik, latent, kl, estimator, beta) -> float:
    if not isinstance(latent, Latent):
        raise TypeError(f"latent must be a fastelbo Latent (from gaussian_latent), got {type(latent).__name__}")
    if not isinstance(log_lik, torch.Tensor) or log_lik.dtype not in V.FLOAT_DTYPES:
        V.tensor("log_lik", log_lik)
    if log_lik.shape != latent.log_q.shape:
        raise ValueError(f"log_lik must have z's shape without the event dims (log_q's), {tuple(latent.log_q.shape)}; "
                         f"got {tuple(log_lik.shape)}")
    if log_lik.device != latent.z.device:
        V.same_device("log_lik", log_lik, "latent.z", latent.z)
    if kl not in KL_MODES or type(kl) is not str:
        V.choice("kl", kl, KL_MODES)
    if estimator not in ESTIMATORS or type(estimator) is not str:
        V.choice("estimator", estimator, ESTIMATORS)
    if type(beta) is not float or not 0.0 <= beta < float("inf"):
        beta = V.real("beta", beta, minimum=0.0)
    if estimator != "elbo":
        if beta != 1.0:
            raise ValueError(f"beta must be 1 with estimator={estimator!r} (got {beta})")
        if kl != "mc":
            raise ValueError(f"kl must be 'mc' with estimator={estimator!r}: the bound uses log p - log q per sample")
        if latent.log_q.dim() == latent.kl.dim() + 1 and log_lik.shape[0] == 0:
            raise ValueError(f"log_lik: estimator={estimator!r} needs at least one sample; log_lik's sample dim "
                             f"(its first, K) is 0")
    if V.active:
        V.finite("log_lik", log_lik)
    return beta


def elbo(log_lik, latent, *, kl="mc", estimator="elbo", beta=1.0, backend=None) -> torch.Tensor:
    """The estimator's value per data point (mu's shape without the event dims); see the README's math
    section.

    kl: "mc" (log p(z) - log q(z|x) per sample) or "analytic" (latent.kl). estimator: "elbo",
    "iwae" (beta must be 1) or "dreg" (IWAE value, doubly reparameterized gradient: call it once
    per latent, and let latent.z reach the loss only through the decoder). backend: the call's
    backend; by default the backend that made the latent (fe.gaussian_latent's), else the current
    choice.
    """
    if (type(kl) is str and kl == "analytic" and type(estimator) is str and estimator == "elbo"
            and type(latent) is TracedLatent and type(beta) is float and 0.0 <= beta < _INF and not V.active):
        # The common call: one sample without a sample dim, log p(x|z) - beta KL, a single native op
        # on every backend (a kernel call would cost more than the subtraction). The checks that
        # guard it are the shape, dtype and device comparisons and, for an explicit backend,
        # resolve (unknown, unavailable or on the wrong device: an error, as on the other paths);
        # _check names what is wrong otherwise, outside the except block (no chained traceback).
        refused = None
        try:
            kl_value = latent.kl
            if (log_lik.shape == kl_value.shape and log_lik.dtype in V.FLOAT_DTYPES
                    and log_lik.device == kl_value.device and latent.log_q.dim() == kl_value.dim()):
                # (the latent's own backend is resolved already, unless torch.func or forward AD, under
                # which resolve() refuses fused backends, began since)
                if backend is not None and (backend != latent.backend or _forward_ad._current_level >= 0
                                            or torch._C._are_functorch_transforms_active()):
                    resolve(backend, log_lik.device)
                return torch.sub(log_lik, kl_value, alpha=beta)
        except Exception as error:
            refused = error
        if refused is not None:
            _check(log_lik, latent, kl, estimator, beta)
            raise refused
    beta = _check(log_lik, latent, kl, estimator, beta)
    if backend is not None:
        check_backend_name(backend)
    elif isinstance(latent, TracedLatent):
        backend = latent.backend
    if estimator == "dreg":
        return _dreg(log_lik, latent)
    name = resolve(backend, log_lik.device)
    if kl == "analytic" and estimator == "elbo" and log_lik.dim() == latent.kl.dim():
        return torch.sub(log_lik, latent.kl, alpha=beta)  # one sample without a sample dim, as above
    if name == "reference":
        return reference(log_lik, latent, kl, estimator, beta)
    op = kernel(NAME, OVERLOAD[name], (log_lik, latent.log_q, latent.log_p, latent.kl))
    if estimator == "iwae" and latent.log_q.dim() == latent.kl.dim():  # one sample: its weight is 1
        return op(log_lik.unsqueeze(0), latent.log_q.unsqueeze(0), latent.log_p.unsqueeze(0), latent.kl, 2, beta)[0]
    return op(log_lik, latent.log_q, latent.log_p, latent.kl, MODES[(estimator, kl)], beta)[0]


def _dreg(log_lik, latent):
    """DReG around the latent's pieces (`dreg` below): d log q / d z is rebuilt from the latent's
    arguments, its noise regenerated by the backend that drew it."""
    if not isinstance(latent, TracedLatent) or latent.inputs is None:
        raise ValueError("latent must come straight from fe.gaussian_latent for estimator='dreg'")
    hooks_z = latent.z.requires_grad and torch.is_grad_enabled()
    if hooks_z and latent.__dict__.get("dreg_applied", False):
        raise ValueError("estimator='dreg' was already applied to this latent; draw a new one")
    mu, scale, param, n_samples, prior, eps, seed = latent.flat_inputs()
    terms = DregTerms(log_q_grad_z(latent.backend, mu, scale, param, n_samples, prior, eps, seed),
                      lambda z: log_prior(z, prior, param))
    out = dreg(log_lik, latent, terms, latent.layout)
    if hooks_z:
        latent.dreg_applied = True
    return out


# ---- the reference implementation ----

def _per_sample(t: torch.Tensor, has_samples: bool) -> torch.Tensor:
    return t if has_samples else t.unsqueeze(0)


def reference(log_lik, latent, kl, estimator, beta):
    """Modes 0-2 (the module docstring) in torch ops."""
    has_samples = latent.log_q.dim() == latent.kl.dim() + 1
    dtype = torch.promote_types(log_lik.dtype, latent.log_q.dtype)
    log_lik = _per_sample(log_lik.to(dtype), has_samples)
    if estimator == "elbo" and kl == "analytic":
        return log_lik.mean(0) - beta * latent.kl
    log_q = _per_sample(latent.log_q, has_samples)
    log_p = _per_sample(latent.log_p, has_samples)
    if estimator == "elbo":
        return (log_lik + beta * (log_p - log_q)).mean(0)
    return iwae(log_lik, log_q, log_p)


def iwae(log_lik, log_q, log_p):
    """logsumexp_k log w_k - log K over the leading sample dim, log w = log_lik + log_p - log_q
    (in their promoted dtype), written out as m + log sum_k exp(log w_k - m) with the max m a
    constant, so that autograd's gradient is exp(log w_k - m) / sum_j exp(log w_j - m): the
    normalized weights, exact to a few ulp. torch.logsumexp's own backward, exp(log w_k - lse),
    inherits the rounding of lse, which at the log-weights of images (about -7000 nats: ulp 4.9e-4
    in float32) puts the weights off by that relative error and their sum off 1. Rows whose max is
    infinite or NaN take torch.logsumexp (its values there: -inf, inf, NaN, and their gradients),
    as the kernels do."""
    dtype = torch.promote_types(log_lik.dtype, log_q.dtype)
    log_w = log_lik.to(dtype) + log_p.to(dtype) - log_q.to(dtype)
    m = log_w.detach().amax(0)  # (K >= 1: fe.elbo refuses K = 0)
    finite = torch.isfinite(m)
    # (the other rows' shifted log-weights zeroed: their exp must not make the unused branch's gradient NaN)
    shifted = torch.where(finite, log_w - torch.where(finite, m, 0.0), 0.0)
    lse = torch.where(finite, m + torch.log(torch.exp(shifted).sum(0)), torch.logsumexp(log_w, dim=0))
    return lse - math.log(log_w.shape[0])


def dreg(log_lik, latent, terms, layout=None):
    """Doubly reparameterized IWAE (Tucker et al. 2018). Value: the IWAE bound. Gradient:

    decoder and prior parameters:  sum_k w~_k  d log w_k          (the IWAE gradient)
    encoder, through z_k only:     sum_k w~_k^2 (d log w_k / d z_k) dz_k/dphi, log q's params stopped

    with w~ = softmax_k(log w). log q is rebuilt with its parameters stopped (its gradient to z is
    -eps/sigma) and log p is re-evaluated at the returned z, so that every gradient bound for the
    encoder passes through latent.z; a hook on latent.z multiplies it by w~_k once more.
    `terms` (fastelbo._types.DregTerms) gives d log q / d z and log p at z for the latent, over
    flat views (batch..., D) of z when the latent's event dims are not its last (`layout`,
    fastelbo/ops/_event_dims.py).
    """
    has_samples = latent.log_q.dim() == latent.kl.dim() + 1
    dtype = torch.promote_types(log_lik.dtype, latent.log_q.dtype)
    log_lik = _per_sample(log_lik.to(dtype), has_samples)
    z = latent.z
    z_live = z.to(dtype) if layout is None else layout.flat(z.to(dtype), int(has_samples))
    moved = z_live - z_live.detach()  # zero, but carries the gradient into z
    log_q_stl = latent.log_q.detach() + (moved * terms.log_q_grad_z).sum(-1)
    log_p_live = terms.log_p_at(z_live)
    log_p = latent.log_p.detach() + (log_p_live - log_p_live.detach())
    log_w = log_lik + _per_sample(log_p - log_q_stl, has_samples)

    log_w_value = log_w.detach()
    weights = torch.softmax(log_w_value, dim=0)
    value = torch.logsumexp(log_w_value, dim=0) - math.log(log_w.shape[0])
    if z.requires_grad and torch.is_grad_enabled():
        z_weights = weights if has_samples else weights[0]
        z_weights = z_weights.unsqueeze(-1) if layout is None else layout.expand_rows(z_weights, int(has_samples))
        z.register_hook(lambda grad: grad * z_weights.to(grad.dtype))
    return value + (weights * (log_w - log_w_value)).sum(0)


# ---- fake and gradient rules ----

def fake(log_lik, log_q, log_p, kl, mode, beta):
    dtype = torch.promote_types(log_lik.dtype, log_q.dtype)
    sample_dim = log_lik.dim() == kl.dim() + 1  # else one sample without a sample dim
    return (log_lik.new_empty(log_lik.shape[1:] if sample_dim else log_lik.shape, dtype=dtype),
            log_lik.new_empty(log_lik.shape if mode == 2 else (0,), dtype=dtype))


FAKES = {"elbo": fake}


def backward_differentiable(grad, log_lik, log_q, log_p, needs):
    """The IWAE combine's gradients (log_lik, log_q, log_p), recomputed by the reference under
    autograd (differentiable; None where not `needs`): the second order of mode 2 (the elbo modes
    are linear in their inputs)."""
    return tuple(reference_vjp(lambda *t: (iwae(*t),), (log_lik, log_q, log_p), tuple(needs[:3]), (grad,)))


def setup_context(ctx, inputs, output):
    log_lik, log_q, log_p, kl, mode, beta = inputs
    no_grad_buffers(ctx, output[1])
    sample_dim = log_lik.dim() == kl.dim() + 1
    ctx.options = (mode, beta, log_lik.shape[0] if sample_dim else None)
    ctx.dtypes = (log_lik.dtype, log_q.dtype, log_p.dtype, kl.dtype)
    ctx.save_for_backward(output[1], *((log_lik, log_q, log_p) if mode == 2 else ()))


def backward(ctx, grad, _):
    """The `.triton` and `.cuda_sim` overloads' autograd (the C++ op's: csrc/binding/autograd.cpp)."""
    weights, *log_weights = ctx.saved_tensors
    if grad is None:
        return None, None, None, None, None, None
    mode, beta, k = ctx.options
    ll_dtype, lq_dtype, lp_dtype, kl_dtype = ctx.dtypes
    if mode == 2:
        if differentiating():
            return (*backward_differentiable(grad, *log_weights, ctx.needs_input_grad[:3]), None, None, None)
        per_sample = (grad if k is None else grad.unsqueeze(0)) * weights
        return per_sample.to(ll_dtype), (-per_sample).to(lq_dtype), per_sample.to(lp_dtype), None, None, None
    # k None: one sample without a sample dim, the mean over samples is that sample
    mean_grad = grad if k is None else (grad / k).unsqueeze(0).expand((k, *grad.shape))
    if mode == 1:
        return mean_grad.to(ll_dtype), None, None, (-beta * grad).to(kl_dtype), None, None
    return (mean_grad.to(ll_dtype), (-beta * mean_grad).to(lq_dtype), (beta * mean_grad).to(lp_dtype),
            None, None, None)


AUTOGRAD = {"elbo": (backward, setup_context)}
SECOND_ORDER = {"elbo_backward_differentiable": backward_differentiable}
