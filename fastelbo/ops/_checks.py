"""Argument checks more than one op makes (each op's own checks are in its module; the generic
checks and validation mode are fastelbo/_validate.py). Written for the per-call cost of small
batches: the common path makes few Python calls, and value checks run only in validation mode."""
from __future__ import annotations

import torch

from .. import _validate as V
from ._autograd import PARAM_NAMES


def posterior(mu, scale, param) -> None:
    """mu, scale: float tensors of one shape (at least 1 dim, D last) on one device; param a name."""
    if not isinstance(mu, torch.Tensor) or mu.dtype not in V.FLOAT_DTYPES or mu.dim() < 1:
        V.tensor("mu", mu, min_dim=1)
    if not isinstance(scale, torch.Tensor) or scale.dtype not in V.FLOAT_DTYPES:
        V.tensor("scale", scale, min_dim=1)
    if scale.shape != mu.shape:
        raise ValueError(f"scale must have mu's shape {tuple(mu.shape)}, got {tuple(scale.shape)}")
    if scale.device != mu.device:
        V.same_device("scale", scale, "mu", mu)
    if param not in PARAM_NAMES or type(param) is not str:
        V.choice("param", param, PARAM_NAMES)
    if V.active:
        V.finite("mu", mu)
        V.finite("scale", scale)


def prior(value, mu) -> tuple:
    """None or a pair (prior_mu, prior_scale) of float tensors broadcasting to mu."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError("prior must be None or a pair (prior_mu, prior_scale)")
    for name, t in zip(("prior_mu", "prior_scale"), value):
        V.tensor(f"prior ({name})", t)
        V.same_device(f"prior ({name})", t, "mu", mu)
        V.broadcasts_to(f"prior ({name})", t, mu.shape, "mu")
        V.finite(f"prior ({name})", t)
    return tuple(value)


def data(name, x, params_name, params, shape, dtypes=V.DATA_DTYPES) -> None:
    """x (or target): a tensor of `dtypes` on the parameters' device, broadcasting to `shape`."""
    if not isinstance(x, torch.Tensor) or x.dtype not in dtypes:
        V.tensor(name, x, dtypes)
    if x.device != params.device:
        V.same_device(name, x, params_name, params)
    if x.shape != shape:
        V.broadcasts_to(name, x, shape, params_name)


def event_dims(value, limit: int, params_name: str) -> int:
    if type(value) is int and 0 <= value <= limit:
        return value
    return V.event_dims(value, limit, params_name)


def logits_and_unit_data(logits, x, event_dims_value) -> int:
    """The Bernoulli-type likelihoods: float logits, x in [0, 1] broadcasting to them."""
    if not isinstance(logits, torch.Tensor) or logits.dtype not in V.FLOAT_DTYPES:
        V.tensor("logits", logits)
    data("x", x, "logits", logits, logits.shape)
    if V.active:
        V.finite("logits", logits)
        V.unit_interval("x", x)
    return event_dims(event_dims_value, logits.dim(), "logits")


def expected_grad(value) -> float:
    """A likelihood op's expected_grad (the gradient its caller expects each row to receive; the
    buffer is scaled by it): finite, a normal float32 in magnitude, as the C++ kernels check."""
    tiny, huge = float(torch.finfo(torch.float32).tiny), float(torch.finfo(torch.float32).max)
    if not (isinstance(value, (int, float)) and tiny <= abs(value) <= huge):
        raise ValueError(f"expected_grad must be finite with a magnitude in [{tiny}, {huge}] (the gradient each "
                         f"row is expected to receive), got {value!r}")
    return float(value)
