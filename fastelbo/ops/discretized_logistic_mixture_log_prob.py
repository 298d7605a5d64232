"""fastelbo.discretized_logistic_mixture_log_prob: the discretized mixture of logistics (PixelCNN++,
openai/vdvae, NVlabs/NVAE), the log-likelihood of 3-channel images on a grid of 2^bits levels
rescaled to [-1, 1], summed over the event dims (the README's "The pixel likelihood of image VAEs").

Per pixel, 10 M parameters along the channel dim: M mixture logits pi_m, then per colour channel
c = 0, 1, 2 a block of 3 M: means mu_c,m, log-scales s_c,m (clamped below at -7), raw coefficients
a_c,m (t = tanh a). Means are coupled: m_0 = mu_0, m_1 = mu_1 + t_0 x_0, m_2 = mu_2 + t_1 x_0 + t_2 x_1.
With h = 1 / (2^bits - 1), inv = e^-s, plus = inv (x - m + h), minus = inv (x - m - h):

    x < -0.999:  log P = plus - softplus(plus)
    x >  0.999:  log P = -softplus(minus)
    otherwise:   log P = log(sigmoid(plus) - sigmoid(minus))       if that mass is above 1e-5
                                                                   (computed stably, see csrc/core/dmol.h)
                 log P = mid - s - 2 softplus(mid) - log((2^bits - 1) / 2), mid = inv (x - m), else
    log p(pixel) = logsumexp_m [ log_softmax(pi)_m + sum_c log P_c,m ]

The fused kernels compute the value and d out / d params (10 M per pixel: the responsibilities
w_m = softmax_m of the bracket times each component's derivatives, w_m - softmax(pi)_m for the
logits) in one pass; the backward scales that buffer by the incoming gradient per image. The
public function, the schemas of `fastelbo::discretized_logistic_mixture_log_prob`, the fake, the
reference and the gradient rules, as for every op (see fastelbo/ops/__init__.py).

Kernels see the channel dim last (`params` (..., 10 M), x (..., 3): the public function moves
`channel_dim` there with a view) and read every other dim through its strides, so NCHW and
channels-last tensors are never copied.
"""
from __future__ import annotations

import math

import torch

from .. import _validate as V
from .._backend import OVERLOAD, resolve
from .._dtypes import compute_dtype
from ._autograd import differentiating, needs_grad, reference_vjp, scale_buffer
from ._owned_buffers import keep_buffers, owning_function, scaled, taken_buffers, use_owning_path
from ._math import saturating_tanh, softplus, sum_event_dims

NAME = "discretized_logistic_mixture_log_prob"
SCHEMAS = {NAME: "(Tensor params, Tensor x, int n_mix, int bits, int event_dims, bool need_grad) -> (Tensor, Tensor)"}

MIN_LOG_SCALE = -7.0
EDGE = 0.999
LOG_MASS_FLOOR = math.log(1e-5)
MAX_BITS = 10  # above it the +-0.999 edges no longer isolate the lowest and highest levels


def discretized_logistic_mixture_log_prob(params, x, *, n_mix, bits=8, channel_dim=-1, event_dims=2,
                                          backend=None) -> torch.Tensor:
    """sum over the event dims of log p(x_pixel), the discretized mixture of `n_mix` logistics.

    params: (..., 10 n_mix) with channel_dim=-1 (channels-last, as openai/vdvae holds them) or
    (B, 10 n_mix, H, W) with channel_dim=1 (NCHW, as NVAE's decoder outputs them); x: the image
    with 3 channels along the same dim, on the grid of 2^bits levels in [-1, 1], broadcasting to
    the parameters' pixels. event_dims: the pixel dims summed (2: height and width). Returns the
    parameters' batch shape (float32; float64 for float64 params), in nats.
    """
    params, x, event_dims = check_arguments(params, x, n_mix, bits, channel_dim, event_dims)
    name = resolve(backend, params.device)
    if name == "reference":
        return reference(params, x, n_mix, bits, event_dims)
    if needs_grad(params) and use_owning_path():
        return EAGER.apply(params, x, n_mix, bits, event_dims, OVERLOAD[name])[0]
    op = getattr(torch.ops.fastelbo.discretized_logistic_mixture_log_prob, OVERLOAD[name])
    return op(params, x, n_mix, bits, event_dims, needs_grad(params))[0]


def check_arguments(params, x, n_mix, bits, channel_dim, event_dims):
    """The public checks (each names its argument); returns (params, x) with the channel dim moved
    last (views) and event_dims."""
    V.tensor("params", params, min_dim=1)
    V.tensor("x", x, min_dim=1)
    n_mix = V.integer("n_mix", n_mix, 1)
    bits = V.integer("bits", bits, 1)
    if bits > MAX_BITS:
        raise ValueError(f"bits must be in [1, {MAX_BITS}] (above, the lowest and highest bins are no longer "
                         f"the only levels beyond +-{EDGE}), got {bits}")
    if type(channel_dim) is not int:
        V.integer("channel_dim", channel_dim, -params.dim())
    if not -params.dim() <= channel_dim < params.dim():
        raise ValueError(f"channel_dim={channel_dim} is out of range for params with {params.dim()} dims")
    from_end = channel_dim - params.dim() if channel_dim >= 0 else channel_dim  # x's channel dim: the same from the end
    if x.dim() < -from_end:
        raise ValueError(f"x of shape {tuple(x.shape)} has no dim {from_end} (params' channel_dim={channel_dim}, "
                         "counted from the end)")
    if params.shape[from_end] != 10 * n_mix:
        raise ValueError(f"params must have 10 * n_mix = {10 * n_mix} entries along channel_dim={channel_dim}, got "
                         f"{params.shape[from_end]} (shape {tuple(params.shape)})")
    if x.shape[from_end] != 3:
        raise ValueError(f"x must have 3 colour channels along dim {from_end}, got {x.shape[from_end]} "
                         f"(shape {tuple(x.shape)})")
    V.same_device("x", x, "params", params)
    params, x = params.movedim(from_end, -1), x.movedim(from_end, -1)
    V.broadcasts_to("x (channels last)", x, params.shape[:-1] + (3,), "the parameters' pixels (channels last, 3)")
    if x.requires_grad and torch.is_grad_enabled():
        raise ValueError("x must not require grad: the discretized likelihood is differentiated with respect to "
                         "params only (x is discrete data)")
    event_dims = V.event_dims(event_dims, params.dim() - 1, "params (without the channel dim)")
    if V.active:
        V.finite("params", params)
        on_grid("x", x, bits)
    return params, x, event_dims


def on_grid(name, x, bits) -> None:
    """x on the grid of 2^bits levels in [-1, 1] (to x's dtype's precision: in bfloat16, whose
    8-bit mantissa cannot hold every 8-bit level, the check only bounds x to [-1, 1])."""
    levels = 2 ** bits - 1
    k = (x.double() + 1.0) * (levels / 2.0)
    tolerance = 1e-3 + torch.finfo(x.dtype).eps * levels
    if bool(((k - k.round()).abs() > tolerance).any() | (k < -tolerance).any() | (k > levels + tolerance).any()
            | ~torch.isfinite(k).all()):
        raise ValueError(f"{name} must lie on the grid of 2^bits = {levels + 1} levels in [-1, 1], "
                         f"x = 2 k / {levels} - 1 for integer k in [0, {levels}]")


def split(params, n_mix):
    """(logits (..., M), means, raw log-scales, raw coefficients (..., 3, M)) of channels-last params."""
    rest = params[..., n_mix:].unflatten(-1, (3, 3, n_mix))
    return (params[..., :n_mix], *rest.unbind(-2))


def reference(params, x, n_mix, bits, event_dims):
    """The formulas above in torch ops, channels last: params (..., 10 M), x (..., 3)."""
    dtype = compute_dtype(params)
    logits, means, raw_scales, raw_coeffs = split(params.to(dtype), n_mix)
    x = x.to(dtype).unsqueeze(-1)  # (..., 3, 1)
    t = saturating_tanh(raw_coeffs)
    x0, x1 = x[..., 0, :], x[..., 1, :]
    mean = torch.stack([means[..., 0, :], means[..., 1, :] + t[..., 0, :] * x0,
                        means[..., 2, :] + t[..., 1, :] * x0 + t[..., 2, :] * x1], dim=-2)
    log_p = channel_log_prob(x, x - mean, raw_scales.clamp(min=MIN_LOG_SCALE), bits)  # (..., 3, M)
    per_pixel = torch.logsumexp(log_p.sum(-2) + torch.log_softmax(logits, -1), -1)
    return sum_event_dims(per_pixel, event_dims)


def channel_log_prob(x, u, s, bits):
    """log P of x's bin under a logistic of mean x - u and log-scale s (see the module docstring)."""
    h = 1.0 / (2 ** bits - 1)
    inv = torch.exp(-s)
    plus, minus, mid = inv * (u + h), inv * (u - h), inv * u
    low, high = -softplus(-plus), -softplus(minus)
    delta = inv * (2.0 * h)
    with torch.no_grad():  # the branch: where the bin's mass exceeds 1e-5
        use_mass = (low + high + torch.log(-torch.expm1(-delta))) > LOG_MASS_FLOOR
    # delta = 0 (a vanishing inv) only where the mass is not used: keep its log's gradient finite.
    log_mass = low + high + torch.log(-torch.expm1(-torch.where(use_mass, delta, 1.0)))
    centre = mid - s - 2.0 * softplus(mid) - math.log((2 ** bits - 1) / 2.0)
    interior = torch.where(use_mass, log_mass, centre)
    return torch.where(x < -EDGE, low, torch.where(x > EDGE, high, interior))


def fake(params, x, n_mix, bits, event_dims, need_grad):
    V.same_device("x", x, "params", params)
    dtype = compute_dtype(params)
    out = params.new_empty(params.shape[: params.dim() - 1 - event_dims], dtype=dtype)
    # The buffer has params' layout (empty_like keeps a dense tensor's strides: NCHW stays NCHW).
    buffer = torch.empty_like(params, dtype=dtype) if need_grad else params.new_empty((0,), dtype=dtype)
    return out, buffer


FAKES = {NAME: fake}


def grad_params(grad_out, buffer, params, x, n_mix, bits, event_dims, params_dtype):
    """d out / d params from the incoming gradient (one per image): g b, or, when the backward is
    recorded (create_graph=True), the reference's vjp (exact second order)."""
    if grad_out is None:
        return None
    if differentiating():
        return backward_differentiable(grad_out, params, x, n_mix, bits, event_dims)
    return scale_buffer(buffer, grad_out, event_dims + 1).to(params_dtype)  # the channel dim too


def setup_context(ctx, inputs, output):
    params, x, n_mix, bits, event_dims, need_grad = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.options = (n_mix, bits, event_dims, params.dtype)
    ctx.save_for_backward(output[1], params, x)


def backward(ctx, grad_out, grad_buffer):
    """The `.triton` and `.cuda_sim` overloads' autograd (the C++ op's: csrc/binding/autograd.cpp)."""
    buffer, params, x = ctx.saved_tensors
    return (grad_params(grad_out, buffer, params, x, *ctx.options), None, None, None, None, None)


def backward_differentiable(grad_out, params, x, n_mix, bits, event_dims):
    """The C++ op's recorded backward (create_graph=True): the reference's vjp."""
    return reference_vjp(lambda p: (reference(p, x, n_mix, bits, event_dims),), (params,), (True,), (grad_out,))[0]


AUTOGRAD = {NAME: (backward, setup_context)}
SECOND_ORDER = {f"{NAME}_backward_differentiable": backward_differentiable}


# The public function's eager path with a gradient (fastelbo/ops/_owned_buffers.py): the kernel's
# buffer b is private to the call, so the backward scales it in place and hands it to autograd as
# the gradient (b and g b, the size of params each in float32, never exist together). A second
# backward of a retained graph recomputes it with the forward kernel (the same bits); a recorded
# backward (create_graph=True) differentiates the reference.

def eager_kernel(params, x, n_mix, bits, event_dims, overload):
    return getattr(torch.ops.fastelbo.discretized_logistic_mixture_log_prob, overload)(params, x, n_mix, bits,
                                                                                        event_dims, True)


def eager_setup_context(ctx, inputs, output):
    params, x, n_mix, bits, event_dims, overload = inputs
    ctx.options = (n_mix, bits, event_dims, overload)
    ctx.save_for_backward(params, x, *keep_buffers(ctx, output))


def eager_backward(ctx, grad_out, grad_buffer):
    none = (None,) * 5
    if grad_out is None:
        return (None, *none)
    params, x, *saved = ctx.saved_tensors
    n_mix, bits, event_dims, overload = ctx.options
    if differentiating():
        return (backward_differentiable(grad_out, params, x, n_mix, bits, event_dims), *none)
    buffers, owned = taken_buffers(ctx, saved)
    if buffers is None:  # a retained graph's second backward: the forward's buffer again
        with torch.no_grad():
            buffers, owned = [eager_kernel(params, x, n_mix, bits, event_dims, overload)[1]], True
    factor = grad_out.reshape(grad_out.shape + (1,) * (event_dims + 1))
    return (scaled(buffers[0], factor, params.dtype, owned), *none)


EAGER = owning_function(eager_kernel, eager_setup_context, eager_backward)
