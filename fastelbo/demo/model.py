"""The demo's VAE: two-layer MLPs around a diagonal Gaussian latent.

    encoder  x (B, 64) -> tanh(W1 x) -> (mu, logvar), each (B, D)
    decoder  z (..., D) -> tanh(W3 z) -> the likelihood's parameters of the 64 pixels:
             bernoulli, continuous_bernoulli: logits (..., 64)
             gaussian: (mean (..., 64), logvar (64,))  with a learned per-pixel log-variance
             categorical: logits (..., 64, 17)
             dmol: the discretized logistic mixture's 10 M parameters per pixel, (..., 8, 8, 10 M),
                   M = DMOL_MIX components
"""
from __future__ import annotations

import torch

from .data import DMOL_BITS, IMAGE_SIDE, N_LEVELS, N_PIXELS

# Two components: with five, the ones the model barely uses get gradients of rounding size, which
# Adam turns into steps of the learning rate's size, and training becomes chaotic (the reference run
# against itself with one weight changed by 1e-7: test ELBOs 7e-4 apart relative after 30 epochs
# with five components, 6e-6 with two, 2e-8 with one; measured).
DMOL_MIX = 2


def likelihood_options(likelihood: str) -> dict:
    """fe.ELBO's likelihood options for the demo's data."""
    return {"n_mix": DMOL_MIX, "bits": DMOL_BITS} if likelihood == "dmol" else {}


class DigitsVAE(torch.nn.Module):
    def __init__(self, likelihood: str, *, latent_dim: int = 8, hidden: int = 256):
        super().__init__()
        self.likelihood = likelihood
        self.latent_dim = latent_dim
        outputs_per_pixel = {"categorical": N_LEVELS, "dmol": 10 * DMOL_MIX}.get(likelihood, 1)
        self.encoder = torch.nn.Sequential(torch.nn.Linear(N_PIXELS, hidden), torch.nn.Tanh(),
                                           torch.nn.Linear(hidden, 2 * latent_dim))
        self.decoder = torch.nn.Sequential(torch.nn.Linear(latent_dim, hidden), torch.nn.Tanh(),
                                           torch.nn.Linear(hidden, N_PIXELS * outputs_per_pixel))
        self.pixel_logvar = torch.nn.Parameter(torch.full((N_PIXELS,), -2.0)) if likelihood == "gaussian" else None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    def forward(self, x: torch.Tensor, encoder_input: torch.Tensor, objective):
        """The objective's output (fe.ELBOOutput) on targets x: what DistributedDataParallel wraps."""
        mu, logvar = self.encode(encoder_input)
        return objective(x, mu, logvar, self.decode)

    def decode(self, z: torch.Tensor):
        out = self.decoder(z)
        if self.likelihood == "categorical":
            return out.unflatten(-1, (N_PIXELS, N_LEVELS))
        if self.likelihood == "dmol":
            return out.unflatten(-1, (IMAGE_SIDE, IMAGE_SIDE, 10 * DMOL_MIX))
        if self.likelihood == "gaussian":
            return out, self.pixel_logvar
        return out

    def mean_image(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean of each pixel, in [0, 1] intensity units, (..., 64)."""
        params = self.decode(z)
        if self.likelihood == "bernoulli":
            return torch.sigmoid(params)
        if self.likelihood == "continuous_bernoulli":
            return torch.distributions.ContinuousBernoulli(logits=params).mean
        if self.likelihood == "gaussian":
            return params[0].clamp(0, 1)
        if self.likelihood == "dmol":  # channel 0's mixture mean: sum_m softmax(pi)_m mu_0,m
            weights, means = params[..., :DMOL_MIX].softmax(-1), params[..., DMOL_MIX:2 * DMOL_MIX]
            return (((weights * means).sum(-1).clamp(-1, 1) + 1) / 2).flatten(-2)
        levels = torch.arange(N_LEVELS, dtype=params.dtype, device=params.device)
        return (params.softmax(-1) * levels).sum(-1) / (N_LEVELS - 1)
