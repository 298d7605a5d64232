"""Reference likelihoods log p(x|z), summed over the trailing `event_dims` dims.

x (or target) broadcasts against the parameters; the output has the parameters' batch shape.
"""
from __future__ import annotations

import math

import torch

from .._dtypes import compute_dtype
from ._math import bernoulli_log_density, cb_log_normalizer, sum_event_dims

LOG_2PI = math.log(2.0 * math.pi)


def bernoulli(logits, x, event_dims):
    """x l - softplus(l)."""
    dtype = compute_dtype(logits)
    l = logits.to(dtype)
    return sum_event_dims(bernoulli_log_density(l, x.to(dtype)), event_dims)


def gaussian(mean, x, logvar, event_dims):
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


def continuous_bernoulli(logits, x, event_dims):
    """x l - softplus(l) + log C(l), C the continuous Bernoulli normalizer."""
    dtype = compute_dtype(logits)
    l = logits.to(dtype)
    return sum_event_dims(bernoulli_log_density(l, x.to(dtype)) + cb_log_normalizer(l), event_dims)


def categorical(logits, target, event_dims):
    """log softmax(l)[target]; a target outside [0, C) gives NaN (never a wrong number)."""
    dtype = compute_dtype(logits)
    log_probs = torch.log_softmax(logits.to(dtype), dim=-1)
    n_classes = logits.shape[-1]
    target = target.expand(logits.shape[:-1])
    valid = (target >= 0) & (target < n_classes)
    index = torch.where(valid, target, 0).long().unsqueeze(-1)
    picked = log_probs.gather(-1, index).squeeze(-1)
    return sum_event_dims(torch.where(valid, picked, math.nan), event_dims)
