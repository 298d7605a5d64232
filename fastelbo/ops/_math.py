"""Elementwise math of the README's "The math" in plain PyTorch, written for accuracy at the edges.

Every function works in the dtype of its input (the reference computes in float32 for
float16/bfloat16/float32 inputs and in float64 for float64 inputs).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

# Above this, softplus(l) = l to within the dtype's precision (e^-20 < 2^-24 / 20, e^-40 < 2^-53 / 40).
_SOFTPLUS_THRESHOLD = {torch.float32: 20.0, torch.float64: 40.0}

# expm1(x) - x = x^2 (1/2! + x/3! + ... + x^8/10!) for |x| < 0.1: truncation below 1e-16 relative.
_EXPM1_MINUS_X_CUTOFF = 0.1
_EXPM1_MINUS_X_COEFFS = [1.0 / math.factorial(n) for n in range(2, 11)]

# log(u coth u) = sum_n a_n u^(2n) (a_1 = 1/3, a_2 = -7/90, ...), used for the continuous Bernoulli
# normalizer at |l| < 1/2 (u = l/2): nine terms keep the truncation below 1e-17.
_CB_CUTOFF = 0.5
_CB_SERIES = [
    1.0 / 3.0,
    -7.0 / 90.0,
    62.0 / 2835.0,
    -127.0 / 18900.0,
    146.0 / 66825.0,
    -1414477.0 / 1915538625.0,
    32764.0 / 127702575.0,
    -16931177.0 / 186080895000.0,
    11499383114.0 / 350813659321125.0,
]


def _horner(x: torch.Tensor, coeffs: list[float]) -> torch.Tensor:
    """coeffs[0] + coeffs[1] x + ... evaluated by Horner's rule."""
    acc = torch.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = acc * x + c
    return acc


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x), exact to the dtype's precision for any finite x."""
    return F.softplus(x, threshold=_SOFTPLUS_THRESHOLD[x.dtype])


def bernoulli_log_density(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x l - softplus(l), evaluated without cancellation: for l > 0 it equals
    (x - 1) l - softplus(-l), so both branches read softplus(-|l|) and x = 1, l = 30 gives
    -e^-30 rather than 0. The gradient x - sigmoid(l) is exact at l = 0 too."""
    positive = logits > 0
    linear = torch.where(positive, (x - 1.0) * logits, x * logits)
    return linear - softplus(torch.where(positive, -logits, logits))


def log_softplus(x: torch.Tensor) -> torch.Tensor:
    """log(softplus(x)); below x = -20, softplus(x) = e^x (1 - e^x/2 + ...) so the log is
    x - e^x / 2 to within e^(2x), where log(softplus(x)) itself would underflow."""
    tail = x < -20.0
    body = torch.log(softplus(torch.where(tail, -20.0, x)))
    return torch.where(tail, x - 0.5 * torch.exp(torch.where(tail, x, -20.0)), body)


def sigma_and_log_sigma(s: torch.Tensor, param: str) -> tuple[torch.Tensor, torch.Tensor]:
    """sigma and log sigma from the encoder's scale output s, by `param`:
    logvar: sigma = exp(s/2); log_std: sigma = exp(s); softplus: sigma = softplus(s);
    soft_log_std: log sigma = 5 tanh(s/5) (NVAE's soft clamp)."""
    if param == "logvar":
        log_sigma = 0.5 * s
        return torch.exp(log_sigma), log_sigma
    if param == "log_std":
        return torch.exp(s), s
    if param == "soft_log_std":
        log_sigma = 5.0 * saturating_tanh(s / 5.0)
        return torch.exp(log_sigma), log_sigma
    return softplus(s), log_softplus(s)


def saturating_tanh(y: torch.Tensor) -> torch.Tensor:
    """tanh(y) whose autograd derivatives stay accurate where it saturates: torch.tanh's backward,
    1 - tanh^2, cancels to 0 there; 1 - 2 sigmoid(-2y) (y >= 1/2) and 2 sigmoid(2y) - 1 (y <= -1/2)
    differentiate to 4 sigmoid(-2|y|)(1 - sigmoid(-2|y|)) without cancellation, and torch.tanh
    keeps its accuracy for small |y| (where 1 - 2 sigmoid(-2y) would cancel)."""
    small = y.abs() < 0.5
    big = torch.where(y >= 0, 1.0 - 2.0 * torch.sigmoid(-2.0 * y), 2.0 * torch.sigmoid(2.0 * y) - 1.0)
    return torch.where(small, torch.tanh(torch.where(small, y, 0.0)), big)


def expm1_minus_x(x: torch.Tensor) -> torch.Tensor:
    """e^x - 1 - x without the cancellation of expm1(x) - x near 0."""
    small = x.abs() < _EXPM1_MINUS_X_CUTOFF
    xs = torch.where(small, x, 0.0)
    series = xs * xs * _horner(xs, _EXPM1_MINUS_X_COEFFS)
    return torch.where(small, series, torch.expm1(torch.where(small, 1.0, x)) - x)


def gaussian_kl_per_dim(mu, log_sigma, prior_mu, prior_sigma, prior_log_sigma) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(mu_p, sigma_p^2)) per dim, with r = log sigma - log sigma_p:

        KL = log sigma_p - log sigma + (sigma^2 + (mu - mu_p)^2) / (2 sigma_p^2) - 1/2
           = (e^(2r) - 1 - 2r) / 2 + ((mu - mu_p) / sigma_p)^2 / 2

    The first term is expm1_minus_x(2r) / 2: accurate when sigma is close to sigma_p.
    """
    if prior_mu is None:
        return 0.5 * expm1_minus_x(2.0 * log_sigma) + 0.5 * mu * mu
    delta = (mu - prior_mu) / prior_sigma
    return 0.5 * expm1_minus_x(2.0 * (log_sigma - prior_log_sigma)) + 0.5 * delta * delta


def cb_log_normalizer(logits: torch.Tensor) -> torch.Tensor:
    """log C(lambda) of the continuous Bernoulli with lambda = sigmoid(l).

    C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda) = l / tanh(l/2), so with u = l/2,
    log C = log 2 + log(u coth u). For |l| >= 1/2: log(l / tanh(l/2)) directly; below, the even
    power series of log(u coth u), which stays accurate (value and gradient) at l = 0.
    """
    small = logits.abs() < _CB_CUTOFF
    u = 0.5 * torch.where(small, logits, 0.0)
    u2 = u * u
    series = math.log(2.0) + u2 * _horner(u2, _CB_SERIES)
    big = torch.where(small, 1.0, logits)
    direct = torch.log(big / torch.tanh(0.5 * big))
    return torch.where(small, series, direct)


def sum_event_dims(t: torch.Tensor, event_dims: int) -> torch.Tensor:
    """Sum the trailing `event_dims` dims of t."""
    return t.sum(dim=tuple(range(-event_dims, 0))) if event_dims else t
