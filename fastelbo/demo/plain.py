"""The demo's plain-PyTorch objective: the loss code a VAE user writes without fastelbo (as in
pytorch/examples' VAE), the baseline the fused run is timed against.

PlainELBO(x, mu, logvar, decoder) is called as fe.ELBO is and returns an fe.ELBOOutput, so the
same model trains with either; reduction "mean", beta 1, the posterior's scale is its
log-variance:

    std = torch.exp(0.5 * logvar)
    eps = torch.randn_like(std)                     # K > 1: torch.randn(K, *std.shape)
    z = mu + eps * std
    log_lik = -F.binary_cross_entropy_with_logits(decoder(z), x, reduction="none").sum(-1)   # bernoulli
    elbo:        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), -1)
                 value = log_lik (mean over K) - kld
    iwae, dreg:  log_w = log_lik + log p(z) - log q(z)   (torch.distributions' Normal formulas)
                 value = torch.logsumexp(log_w, 0) - log(K)
    loss = -value.mean()

The other likelihoods: continuous_bernoulli through torch.distributions.ContinuousBernoulli, the
Gaussian's log-density written out, categorical through F.cross_entropy, dmol as openai/vdvae's
discretized_mix_logistic_loss (fastelbo/benchmarks/dmol.py: vdvae_log_prob). DReG (Tucker et al.
2018), as it is written by hand: log q with its parameters detached, the IWAE surrogate weighted
by the detached normalized weights, and a hook on z that weighs its gradient once more.

Given the same noise, its value and every parameter's gradient are fe.ELBO's (up to rounding;
tests/test_demo.py checks it in float64 for every likelihood and estimator).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import fastelbo as fe

from .data import DMOL_BITS

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class PlainELBO(torch.nn.Module):
    def __init__(self, likelihood: str = "bernoulli", *, n_samples: int = 1, estimator: str = "elbo"):
        super().__init__()
        self.likelihood, self.n_samples, self.estimator = likelihood, n_samples, estimator

    def describe(self) -> str:
        """The plain code in a few words, e.g. "torch.randn_like, BCE with logits, closed-form KL"."""
        likelihood = {"bernoulli": "BCE with logits", "continuous_bernoulli": "torch.distributions.ContinuousBernoulli",
                      "gaussian": "the Gaussian log-density", "categorical": "cross-entropy",
                      "dmol": "vdvae's discretized_mix_logistic_loss"}[self.likelihood]
        estimator = {"elbo": "closed-form KL", "iwae": "logsumexp of MC log-weights",
                     "dreg": "DReG by hand (detached log q, weights, a hook on z)"}[self.estimator]
        return f"torch.randn_like, {likelihood}, {estimator}"

    def forward(self, x, mu, logvar, decoder, *, eps=None) -> fe.ELBOOutput:
        """eps: explicit noise of z's shape (for tests); else drawn with torch.randn_like."""
        k = self.n_samples
        std = torch.exp(0.5 * logvar)
        if eps is None:
            eps = torch.randn_like(std) if k == 1 else torch.randn((k, *std.shape), dtype=std.dtype, device=std.device)
        z = mu + eps * std
        log_lik = self.log_lik(decoder(z), x)
        if self.estimator == "elbo":
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), -1)
            value = (log_lik.mean(0) if k > 1 else log_lik) - kl
            return fe.ELBOOutput(-value.mean(), value, log_lik, kl, z)
        q_mu, q_std = (mu.detach(), std.detach()) if self.estimator == "dreg" else (mu, std)
        # (DReG: log q's parameters stopped, so its gradient reaches the encoder through z only)
        log_q = (-((z - q_mu) ** 2) / (2 * q_std**2) - torch.log(q_std) - HALF_LOG_2PI).sum(-1)
        log_p = (-0.5 * z**2 - HALF_LOG_2PI).sum(-1)
        log_w = log_lik + log_p - log_q
        log_w_k = log_w if k > 1 else log_w.unsqueeze(0)  # samples first
        kl = (log_q - log_p).mean(0) if k > 1 else log_q - log_p
        if self.estimator == "iwae":
            value = torch.logsumexp(log_w_k, 0) - math.log(k)
            return fe.ELBOOutput(-value.mean(), value, log_lik, kl, z)
        weights = torch.softmax(log_w_k.detach(), 0)
        if z.requires_grad and torch.is_grad_enabled():
            z_weights = (weights if k > 1 else weights[0]).unsqueeze(-1)
            z.register_hook(lambda grad: grad * z_weights)
        value = torch.logsumexp(log_w_k.detach(), 0) - math.log(k)
        surrogate = value + (weights * (log_w_k - log_w_k.detach())).sum(0)  # the IWAE value, DReG's gradient
        return fe.ELBOOutput(-surrogate.mean(), surrogate, log_lik, kl, z)

    def log_lik(self, params, x):
        """log p(x | z) per sample: params' shape without the event dims."""
        if self.likelihood == "gaussian":
            mean, x_logvar = params
            return -0.5 * ((x - mean) ** 2 * torch.exp(-x_logvar) + x_logvar + 2 * HALF_LOG_2PI).sum(-1)
        if self.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(params, x.expand_as(params), reduction="none").sum(-1)
        if self.likelihood == "continuous_bernoulli":
            dist = torch.distributions.ContinuousBernoulli(logits=params, validate_args=False)
            return dist.log_prob(x.expand_as(params)).sum(-1)
        if self.likelihood == "dmol":  # params (..., 8, 8, 10 M), x (B, 8, 8, 3): vdvae's loss takes 4-D tensors
            from ..benchmarks.dmol import vdvae_log_prob

            pixels = params.shape[-3:-1]
            images = x.expand(params.shape[:-1] + (3,)).reshape(-1, *pixels, 3)
            flat = params.reshape(-1, *pixels, params.shape[-1])
            return vdvae_log_prob(images, flat, DMOL_BITS).view(params.shape[:-3])
        classes = params.shape[-1]  # categorical: logits (..., pixels, classes), x (B, pixels) class indices
        target = x.expand(params.shape[:-1])
        nll = F.cross_entropy(params.reshape(-1, classes), target.reshape(-1), reduction="none")
        return -nll.view(target.shape).sum(-1)
