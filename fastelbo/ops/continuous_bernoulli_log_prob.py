"""fastelbo.continuous_bernoulli_log_prob: log p(x | logits) of the continuous Bernoulli
(Loaiza-Ganem & Cunningham 2019), summed over the event dims.

    out = sum_n x l - softplus(l) + log C(l),   b = d out/d l = x - sigmoid(l) + d log C/d l
    C(l) = 2 atanh(1 - 2 sigmoid(l)) / (1 - 2 sigmoid(l))  (2 at l = 0; a Taylor series near it)

Its buffer is expected_grad b, as the Bernoulli's (`log_prob_for_loss` there).

The Bernoulli's kernel with the normalizer added (`fastelbo::continuous_bernoulli_log_prob`); its
fake and first-order rules are the Bernoulli's (fastelbo/ops/bernoulli_log_prob.py), its second
order is recomputed from its logits by the reference under autograd.
"""
from __future__ import annotations

import torch

from .._backend import OVERLOAD, resolve
from . import _checks
from ._autograd import needs_grad
from ._cpp_calls import kernel
from .bernoulli_log_prob import BINARY_SCHEMA, binary_autograd, binary_fake, binary_second_order
from .bernoulli_log_prob import continuous_reference as reference

NAME = "continuous_bernoulli_log_prob"
SCHEMAS = {"continuous_bernoulli_log_prob": BINARY_SCHEMA}


def continuous_bernoulli_log_prob(logits, x, *, event_dims=1, backend=None) -> torch.Tensor:
    """sum over event dims of x l - softplus(l) + log C(l); x in [0, 1]."""
    return log_prob_for_loss(logits, x, event_dims, backend, 1.0)


def log_prob_for_loss(logits, x, event_dims, backend, expected_grad: float) -> torch.Tensor:
    """continuous_bernoulli_log_prob for a loss whose backward gives every row the gradient
    `expected_grad` (as the Bernoulli's log_prob_for_loss)."""
    event_dims = _checks.logits_and_unit_data(logits, x, event_dims)
    name = resolve(backend, logits.device)
    if name == "reference":
        return reference(logits, x, event_dims)
    return kernel(NAME, OVERLOAD[name], (logits, x))(logits, x, event_dims, needs_grad(logits), expected_grad)[0]


FAKES = {"continuous_bernoulli_log_prob": binary_fake}
AUTOGRAD = {"continuous_bernoulli_log_prob": binary_autograd(True)}
SECOND_ORDER = {"continuous_bernoulli_log_prob_backward_differentiable": binary_second_order(True)}
