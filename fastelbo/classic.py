"""Drop-in replacements for the two helpers of the classic VAE example code."""
from __future__ import annotations

import math

import torch

from . import _validate as V
from ._dtypes import compute_dtype
from .functional import gaussian_kl, gaussian_latent
from .ops._event_dims import batch_shape
from .ops.bernoulli_log_prob import log_prob_for_loss
from .module import REDUCTIONS, expected_row_grad, reduce


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, *, generator=None, eps=None) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) drawn from `generator` (default: the
    device's default generator), or the explicit noise `eps` of mu's shape."""
    return gaussian_latent(mu, logvar, generator=generator, eps=eps).z


def vae_loss(recon_logits, x, mu, logvar, *, beta=1.0, reduction="sum", dim=-1) -> torch.Tensor:
    """recon_logits are logits, not probabilities: drop the decoder's final sigmoid (and apply it
    where you sample or show images). Returns -(log p(x|z) - beta KL(q || N(0, I))) with a
    Bernoulli likelihood on those logits.

    Probabilities in [0, 1] passed as logits cannot be told from small logits, so nothing checks
    for them: the loss would silently be wrong. recon_logits: mu's batch dims, then the event dims
    summed over; x broadcasts against it. reduction "sum" (the classic code's), "mean" (per data
    point) or "none". dim: the latent's event dims (default the last; (1, 2, 3) for NCHW latents),
    mu's batch dims being the others.
    """
    V.tensor("mu", mu, min_dim=1)
    V.tensor("recon_logits", recon_logits)
    batch = mu.shape[:-1] if type(dim) is int and dim == -1 else batch_shape(mu, dim)
    event_dims = recon_logits.dim() - len(batch)
    if event_dims < 0 or recon_logits.shape[: len(batch)] != batch:
        raise ValueError(
            f"recon_logits must start with mu's batch dims {tuple(batch)}; got {tuple(recon_logits.shape)}"
        )
    beta = V.real("beta", beta, minimum=0.0)
    V.choice("reduction", reduction, REDUCTIONS)
    # The loss's gradient reaches each row's log-likelihood as expected_row_grad: the Bernoulli's
    # buffer is scaled by it in the forward pass and handed over in the backward (no pass there).
    expected_grad = expected_row_grad(math.prod(batch), 1, reduction, compute_dtype(recon_logits))
    log_lik = log_prob_for_loss(recon_logits, x, event_dims, None, expected_grad)
    kl = gaussian_kl(mu, logvar, dim=dim)
    return -reduce(log_lik - beta * kl, reduction)
