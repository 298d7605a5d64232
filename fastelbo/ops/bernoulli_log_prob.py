"""fastelbo.bernoulli_log_prob: log p(x | logits) of Bernoulli data, summed over the event dims.

    out = sum_n x l - softplus(l),   b = d out/d l = x - sigmoid(l),   d out/d x = l

One pass writes each row's value and, when a gradient is needed, the buffer c b, which the backward
scales by the row's incoming gradient g over c. c (`expected_grad`, 1 for the public function) is
the gradient the caller expects every row to receive: fe.ELBO and fe.vae_loss know their loss's
(`log_prob_for_loss`), and where g == c exactly the C++ backward hands the buffer over as the
logits' gradient instead of making a product (the loss-level fusion: no pass, no second tensor of
the logits' size; csrc/binding/autograd.cpp says when). The public function, the schema of
`fastelbo::bernoulli_log_prob`, the fake, the reference and the gradient rules (shared with the
continuous Bernoulli, `binary_*` below), as for every op (see fastelbo/ops/__init__.py).
"""
from __future__ import annotations

import torch

from .. import _validate as V
from .._backend import OVERLOAD, resolve
from .._dtypes import compute_dtype, kernel_scalar
from . import _checks
from ._autograd import add, batch_shape, differentiating, needs_grad, reference_vjp, scale_buffer
from . import _cpp_calls
from ._cpp_calls import kernel
from ._math import bernoulli_log_density, cb_log_normalizer, sum_event_dims

NAME = "bernoulli_log_prob"
BINARY_SCHEMA = ("(Tensor logits, Tensor x, int event_dims, bool need_grad, float expected_grad=1.0) "
                 "-> (Tensor, Tensor)")
SCHEMAS = {"bernoulli_log_prob": BINARY_SCHEMA}


def bernoulli_log_prob(logits, x, *, event_dims=1, backend=None) -> torch.Tensor:
    """sum over event dims of x l - softplus(l); x in [0, 1] (float, bool or uint8)."""
    return log_prob_for_loss(logits, x, event_dims, backend, 1.0)


def log_prob_for_loss(logits, x, event_dims, backend, expected_grad: float) -> torch.Tensor:
    """bernoulli_log_prob for a loss whose backward gives every row the gradient `expected_grad`
    (a float of the log-probs' dtype: see fastelbo.module.expected_row_grad): the fused kernels
    write their buffer scaled by it, so that the C++ backward can hand it over as the logits'
    gradient (any other incoming gradient stays exact: the backward scales by g / expected_grad)."""
    # The common call, whole, in C++ (csrc/binding/front_door.cpp; None for any other call), outside
    # dynamo's tracing. When the kernel refuses it, the Python check names the argument, as below.
    front_door = None if torch.compiler.is_dynamo_compiling() else _cpp_calls.FRONT_DOOR
    if front_door is not None:
        refused = None
        try:
            out = front_door.front_bernoulli_log_prob(logits, x, event_dims, backend, expected_grad)
        except Exception as error:
            refused = error
        if refused is not None:
            _checks.logits_and_unit_data(logits, x, event_dims)
            raise refused
        if out is not None:
            return out
    if type(event_dims) is int and not V.active:
        # The C++ kernels check their arguments (csrc/binding/checks.h); only when they refuse does
        # the Python check run, for the message that names the argument (outside the except block:
        # not chained to the kernel's error).
        refused = None
        try:
            if OVERLOAD.get(resolve(backend, logits.device)) == "default":
                return kernel(NAME, "default", (logits, x))(logits, x, event_dims, needs_grad(logits),
                                                            expected_grad)[0]
        except Exception as error:
            refused = error
        if refused is not None:
            _checks.logits_and_unit_data(logits, x, event_dims)
            raise refused
    event_dims = _checks.logits_and_unit_data(logits, x, event_dims)
    name = resolve(backend, logits.device)
    if name == "reference":
        return reference(logits, x, event_dims)
    return kernel(NAME, OVERLOAD[name], (logits, x))(logits, x, event_dims, needs_grad(logits), expected_grad)[0]


def reference(logits, x, event_dims):
    """x l - softplus(l)."""
    dtype = compute_dtype(logits)
    return sum_event_dims(bernoulli_log_density(logits.to(dtype), x.to(dtype)), event_dims)


def continuous_reference(logits, x, event_dims):
    """x l - softplus(l) + log C(l), C the continuous Bernoulli normalizer."""
    dtype = compute_dtype(logits)
    l = logits.to(dtype)
    return sum_event_dims(bernoulli_log_density(l, x.to(dtype)) + cb_log_normalizer(l), event_dims)


# ---- what the Bernoulli and the continuous Bernoulli share: fake and gradient rules ----

def binary_fake(logits, x, event_dims, need_grad, expected_grad=1.0):
    V.same_device("x", x, "logits", logits)  # as the C++ kernels check (meta tensors reach only this)
    _checks.expected_grad(expected_grad)
    V.broadcasts_to("x", x, logits.shape, "logits")
    dtype = compute_dtype(logits)
    return (logits.new_empty(batch_shape(logits, event_dims), dtype=dtype),
            logits.new_empty(logits.shape if need_grad else (0,), dtype=dtype))


def buffer_vjp(buffer, x, u):
    """(d b / d l) u for b = x - sigmoid(l): -s (1 - s) u with s = x - b."""
    s = x.to(buffer.dtype) - buffer
    return -s * (1.0 - s) * u


def binary_grads(grad_out, grad_buffer, buffer, logits, x, event_dims, continuous, logits_dtype, expected_grad,
                 needs):
    """(grad_logits, grad_x) from the gradients of the op's (out, buffer), the buffer being
    expected_grad b; `logits` is needed for grad_x and for the continuous Bernoulli's recorded
    backward (see _autograd's docstring)."""
    needs_logits, needs_x = needs[:2]
    if continuous and differentiating():
        def forward(logits, x):
            return (continuous_reference(logits, x, event_dims),)

        return tuple(reference_vjp(forward, (logits, x), (needs_logits, needs_x), (grad_out,)))
    if grad_buffer is not None and expected_grad != 1.0:
        # The output is c b: its gradient u reaches b as c u (and b is the output over c).
        grad_buffer = grad_buffer * expected_grad
    grad_logits = grad_x = None
    if needs_logits:
        if grad_out is not None:
            grad_logits = scale_buffer(buffer, grad_out if expected_grad == 1.0 else grad_out / expected_grad,
                                       event_dims)
        if grad_buffer is not None:  # only when the backward itself is differentiated
            unscaled = buffer if expected_grad == 1.0 else buffer / expected_grad
            grad_logits = add(grad_logits, buffer_vjp(unscaled, x, grad_buffer))
        grad_logits = None if grad_logits is None else grad_logits.to(logits_dtype)
    if needs_x:  # d out/dx = l, d b/dx = 1
        if grad_out is not None:
            grad_x = scale_buffer(logits, grad_out, event_dims)
        grad_x = add(grad_x, grad_buffer)
        grad_x = None if grad_x is None else grad_x.sum_to_size(x.shape).to(x.dtype)
    return grad_logits, grad_x


def binary_autograd(continuous: bool):
    """(backward, setup_context) of the Triton overload of a binary likelihood."""

    def setup_context(ctx, inputs, output):
        logits, x, event_dims, need_grad, expected_grad = inputs
        ctx.set_materialize_grads(False)
        ctx.event_dims = event_dims
        ctx.expected_grad = kernel_scalar(expected_grad, ctx.overload)
        ctx.logits_dtype = logits.dtype
        if continuous or not need_grad:  # (an empty placeholder without need_grad; the continuous
            ctx.mark_non_differentiable(output[1])  # Bernoulli's second derivative is recomputed from its logits)
        # d/dx of x l is l: keep the logits when a float x asks for its gradient (or for the above).
        ctx.save_for_backward(output[1], logits if x.requires_grad or continuous else None, x)

    def backward(ctx, grad_out, grad_buffer):
        buffer, logits, x = ctx.saved_tensors
        grads = binary_grads(grad_out, grad_buffer, buffer, logits, x, ctx.event_dims, continuous, ctx.logits_dtype,
                             ctx.expected_grad, ctx.needs_input_grad[:2])
        return (*grads, None, None, None)

    return backward, setup_context


def binary_second_order(continuous: bool):
    """The C++ op's `*_backward_differentiable` composite (its schema: csrc/binding/schema.cpp)."""
    def backward_differentiable(grad_out, grad_buffer, buffer, logits, x, event_dims, logits_dtype, expected_grad,
                                needs):
        return binary_grads(grad_out, grad_buffer, buffer, logits, x, event_dims, continuous, logits_dtype,
                            expected_grad, needs)

    return backward_differentiable


FAKES = {"bernoulli_log_prob": binary_fake}
AUTOGRAD = {"bernoulli_log_prob": binary_autograd(False)}
SECOND_ORDER = {"bernoulli_log_prob_backward_differentiable": binary_second_order(False)}
