"""fastelbo.gaussian_log_prob: log N(x | mean, e^v) summed over the event dims, v = logvar a number
or a tensor broadcastable to mean (e.g. one learned value per pixel).

    out = sum_n -((x - m)^2 e^-v + v + log 2 pi)/2
    b = d out/d m = (x - m) e^-v,   d out/d x = -b,   d out/d v = ((b e^(v/2))^2 - 1)/2

The forward writes the per-row value and the buffer c b, c (`expected_grad`) the gradient the
caller expects each row to receive, as the Bernoulli's (fe.ELBO's `log_prob_for_loss`: the C++
backward hands the buffer over as the mean's gradient where the incoming gradient is exactly c);
the backward kernel (`fastelbo::gaussian_log_prob_backward`) derives both gradients from it in one
pass and sums the logvar gradient down to logvar's shape, so no per-element logvar buffer is ever
written. The public function, the schemas, the fakes, the reference and the gradient rules, as for
every op (see fastelbo/ops/__init__.py).
"""
from __future__ import annotations

import math

import torch

from .. import _validate as V
from .._backend import OVERLOAD, resolve
from .._dtypes import compute_dtype, kernel_scalar
from . import _checks
from ._autograd import add, batch_shape, differentiating, expand_events, needs_grad
from . import _cpp_calls
from ._cpp_calls import kernel
from ._math import sum_event_dims

NAME = "gaussian_log_prob"
SCHEMAS = {
    "gaussian_log_prob": "(Tensor mean, Tensor x, Tensor? logvar, float logvar_value, int event_dims, "
                         "bool need_grad, float expected_grad=1.0) -> (Tensor, Tensor)",
    "gaussian_log_prob_backward": "(Tensor grad_out, Tensor grad_mean_buffer, Tensor? logvar, float logvar_value, "
                                  "int event_dims, bool need_logvar, float expected_grad=1.0, bool need_mean=True) "
                                  "-> (Tensor, Tensor)",
}
LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(mean, x, *, logvar=0.0, event_dims=1, backend=None) -> torch.Tensor:
    """sum over event dims of -((x - m)^2 exp(-v) + v + log(2 pi)) / 2, v = logvar (a number or a
    tensor broadcastable to mean, differentiable)."""
    return log_prob_for_loss(mean, x, logvar, event_dims, backend, 1.0)


def log_prob_for_loss(mean, x, logvar, event_dims, backend, expected_grad: float) -> torch.Tensor:
    """gaussian_log_prob for a loss whose backward gives every row the gradient `expected_grad` (as
    the Bernoulli's log_prob_for_loss)."""
    # The common call, whole, in C++ (csrc/binding/front_door.cpp; None for any other call), outside
    # dynamo's tracing. When the kernel refuses it, the Python checks name the argument.
    front_door = None if torch.compiler.is_dynamo_compiling() else _cpp_calls.FRONT_DOOR
    if front_door is not None:
        refused = None
        try:
            out = front_door.front_gaussian_log_prob(mean, x, logvar, event_dims, backend, expected_grad)
        except Exception as error:
            refused = error
        if refused is not None:
            _check(mean, x, logvar, event_dims)
            raise refused
        if out is not None:
            return out
    logvar, event_dims = _check(mean, x, logvar, event_dims)
    tensor_logvar = isinstance(logvar, torch.Tensor)
    name = resolve(backend, mean.device)
    if name == "reference":
        return reference(mean, x, logvar, event_dims)
    op = kernel(NAME, OVERLOAD[name], (mean, x, logvar))
    if tensor_logvar:
        return op(mean, x, logvar, 0.0, event_dims, needs_grad(mean, x, logvar), expected_grad)[0]
    return op(mean, x, None, logvar, event_dims, needs_grad(mean, x), expected_grad)[0]


def _check(mean, x, logvar, event_dims):
    """Every check of the arguments (TypeError / ValueError naming the argument); (logvar as a float
    where it is a number, event_dims)."""
    V.tensor("mean", mean)
    _checks.data("x", x, "mean", mean, mean.shape)
    if isinstance(logvar, torch.Tensor):
        V.tensor("logvar", logvar)
        V.same_device("logvar", logvar, "mean", mean)
        V.broadcasts_to("logvar", logvar, mean.shape, "mean")
        V.finite("logvar", logvar)
    else:
        logvar = V.real("logvar", logvar)
    if V.active:
        V.finite("mean", mean)
        V.finite("x", x)
    return logvar, _checks.event_dims(event_dims, mean.dim(), "mean")


def reference(mean, x, logvar, event_dims):
    """-((x - m)^2 e^(-v) + v + log(2 pi)) / 2, v = logvar (a number or a tensor)."""
    if isinstance(logvar, torch.Tensor):
        dtype = compute_dtype(mean, logvar)
        v = logvar.to(dtype)
        inv_var = torch.exp(-v)
    else:
        dtype = compute_dtype(mean)
        v = float(logvar)
        inv_var = math.exp(-v)
    diff = x.to(dtype) - mean.to(dtype)
    return sum_event_dims(-0.5 * (diff * diff * inv_var + v + LOG_2PI), event_dims)


def fake(mean, x, logvar, logvar_value, event_dims, need_grad, expected_grad=1.0):
    V.same_device("x", x, "mean", mean)  # as the C++ kernels check (meta tensors reach only this)
    V.broadcasts_to("x", x, mean.shape, "mean")
    if logvar is not None:
        V.same_device("logvar", logvar, "mean", mean)
        V.broadcasts_to("logvar", logvar, mean.shape, "mean")
    _checks.expected_grad(expected_grad)
    dtype = compute_dtype(mean, logvar)
    return (mean.new_empty(batch_shape(mean, event_dims), dtype=dtype),
            mean.new_empty(mean.shape if need_grad else (0,), dtype=dtype))


def backward_fake(grad_out, buffer, logvar, logvar_value, event_dims, need_logvar, expected_grad=1.0, need_mean=True):
    _checks.expected_grad(expected_grad)
    with_v = need_logvar and logvar is not None
    return (buffer.new_empty(buffer.shape if need_mean else (0,)),
            logvar.new_empty(logvar.shape) if with_v else buffer.new_empty(0))


FAKES = {"gaussian_log_prob": fake, "gaussian_log_prob_backward": backward_fake}


def backward_differentiable(grad_out, grad_buffer, buffer, logvar, logvar_value, event_dims, mean_dtype, x_shape,
                            x_dtype, expected_grad, needs):
    """The gradients (mean, x, logvar) in torch ops on the buffer c b (c = expected_grad), so that a
    recorded backward differentiates through b (d b/d m = -e^-v, d b/d x = e^-v, d b/d v = -b): the
    second order."""
    if expected_grad != 1.0:  # b is the buffer over c, and the buffer's gradient u reaches b as c u
        buffer = buffer / expected_grad
        grad_buffer = None if grad_buffer is None else grad_buffer * expected_grad
    v = logvar.to(buffer.dtype) if logvar is not None else logvar_value
    inv_var = torch.exp(-v) if logvar is not None else math.exp(-v)
    g = None if grad_out is None else expand_events(grad_out, event_dims)
    grad_mean = grad_x = grad_logvar = None
    if needs[0] or needs[1]:
        d_mean = add(None if g is None else g * buffer, None if grad_buffer is None else -inv_var * grad_buffer)
        if needs[0] and d_mean is not None:
            grad_mean = d_mean.to(mean_dtype)
        if needs[1] and d_mean is not None:
            grad_x = (-d_mean).sum_to_size(x_shape).to(x_dtype)
    if needs[2] and logvar is not None:
        half_sigma = torch.exp(0.5 * v)
        d_v = add(None if g is None else g * (0.5 * (buffer * half_sigma) ** 2 - 0.5),
                  None if grad_buffer is None else -buffer * grad_buffer)
        if d_v is not None:
            grad_logvar = d_v.sum_to_size(logvar.shape).to(logvar.dtype)
    return grad_mean, grad_x, grad_logvar


def setup_context(ctx, inputs, output):
    mean, x, logvar, logvar_value, event_dims, need_grad, expected_grad = inputs
    ctx.set_materialize_grads(False)
    if not need_grad:
        ctx.mark_non_differentiable(output[1])  # an empty placeholder
    ctx.options = (logvar_value, event_dims, kernel_scalar(expected_grad, ctx.overload))
    ctx.meta = (mean.dtype, x.shape, x.dtype)
    ctx.save_for_backward(output[1], logvar)


def backward(ctx, grad_out, grad_buffer):
    """The `.triton` and `.cuda_sim` overloads' autograd (the C++ op's: csrc/binding/autograd.cpp)."""
    buffer, logvar = ctx.saved_tensors
    logvar_value, event_dims, expected_grad = ctx.options
    mean_dtype, x_shape, x_dtype = ctx.meta
    needs = ctx.needs_input_grad[:3]
    if grad_buffer is not None or differentiating():
        grads = backward_differentiable(grad_out, grad_buffer, buffer, logvar, logvar_value, event_dims, mean_dtype,
                                        x_shape, x_dtype, expected_grad, needs)
        return (*grads, None, None, None, None)
    if grad_out is None:
        return None, None, None, None, None, None, None
    need_logvar = needs[2] and logvar is not None
    scaled, grad_logvar = getattr(torch.ops.fastelbo.gaussian_log_prob_backward, ctx.overload)(
        grad_out, buffer, logvar, logvar_value, event_dims, need_logvar, expected_grad, needs[0] or needs[1])
    grad_mean = scaled.to(mean_dtype) if needs[0] else None
    grad_x = (-scaled).sum_to_size(x_shape).to(x_dtype) if needs[1] else None  # d/dx = -d/dm
    return grad_mean, grad_x, grad_logvar if need_logvar else None, None, None, None, None


AUTOGRAD = {"gaussian_log_prob": (backward, setup_context)}
SECOND_ORDER = {"gaussian_log_prob_backward_differentiable": backward_differentiable}
