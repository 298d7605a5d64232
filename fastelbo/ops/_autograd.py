"""What the ops' gradient rules share (each op's own rules are in its module).

Second order. A backward that autograd records (`create_graph=True`: grad mode is on inside the
backward) must return gradients that are differentiable functions of the op's inputs. Two
mechanisms give exact second derivatives:

- The Bernoulli, Gaussian and categorical gradient buffers b = d out / d params are differentiable
  outputs of their ops, saved for backward. The first-order backward g * b is then recorded on b,
  and differentiating it calls the op's backward again with a gradient u for b, answered by the
  closed form of d b / d params applied to u, written in b itself (each likelihood's `buffer_vjp`):
      Bernoulli    b = x - s, s = sigmoid(l):       d b/d l = -s (1 - s),  d b/d x = 1
      Gaussian     b = (x - m) e^-v:                 d b/d m = -e^-v, d b/d x = e^-v, d b/d v = -b
      categorical  b = onehot(t) - s, s = softmax:   (d b/d l)^T u = -(s u - s sum_c s u)
  No input is kept alive for it (s is x - b, or onehot - b), and every order works the same way.
- The latent, the KL, the continuous Bernoulli and the IWAE combine recompute their gradient with
  the reference implementation under autograd (`reference_vjp`): their inputs are small (the
  posterior's parameters, per-sample log-weights) or, for the continuous Bernoulli, its logits
  are kept for this.
"""
from __future__ import annotations

import torch

# The `param` int of the kernels' schemas: how `scale` encodes sigma.
PARAM_NAMES = ("logvar", "log_std", "softplus", "soft_log_std")
PARAM_CODES = {name: code for code, name in enumerate(PARAM_NAMES)}


def batch_shape(params: torch.Tensor, event_dims: int):
    return params.shape[: params.dim() - event_dims]


def expand_events(t: torch.Tensor, event_dims: int) -> torch.Tensor:
    """t with `event_dims` trailing 1s: a per-row value broadcast over the event dims."""
    return t.reshape(t.shape + (1,) * event_dims)


def scale_buffer(buffer: torch.Tensor, grad_out: torch.Tensor, event_dims: int) -> torch.Tensor:
    """buffer * grad_out broadcast over the event dims (the backward of a likelihood)."""
    return buffer * expand_events(grad_out, event_dims)


def like_or_empty(t, fallback):
    return t.new_empty(t.shape) if t is not None else fallback.new_empty(0)


def add(a, b):
    """a + b where None is zero."""
    return b if a is None else a if b is None else a + b


def differentiating() -> bool:
    """True inside a backward that autograd records (create_graph=True): its gradients must be
    differentiable functions of the op's inputs."""
    return torch.is_grad_enabled()


def no_grad_buffers(ctx, *buffers) -> None:
    """Outputs autograd must not differentiate, nor fill with zeros for backward."""
    ctx.mark_non_differentiable(*buffers)
    ctx.set_materialize_grads(False)


def needs_grad(*tensors) -> bool:
    """Whether autograd will ask for a gradient of one of `tensors` (the kernels' need_grad)."""
    if torch.is_grad_enabled():
        for t in tensors:
            if t is not None and t.requires_grad:
                return True
    return False


def reference_vjp(forward, inputs, needs, grads) -> list:
    """d(sum_i <forward(*inputs)_i, grads_i>) / d inputs[j] for each j with needs[j], as a
    differentiable function of the inputs and grads (autograd over the reference implementation,
    create_graph=True); None for the others."""
    wanted = [j for j, (t, need) in enumerate(zip(inputs, needs)) if need and t is not None and t.requires_grad]
    result = [None] * len(inputs)
    with torch.enable_grad():
        outputs = forward(*inputs)
    pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
    if not wanted or not pairs:
        return result
    found = torch.autograd.grad([o for o, _ in pairs], [inputs[j] for j in wanted], [g for _, g in pairs],
                                create_graph=True, allow_unused=True)
    for j, grad in zip(wanted, found):
        result[j] = grad
    return result
