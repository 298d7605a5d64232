"""The benchmark workloads: the ELBO pieces only (no encoder/decoder matmuls), fwd and fwd+bwd.

Each workload draws mu, scale (B, D), the decoder's output (K, B, Dx) or (B, Dx), the data x
(B, Dx), and, for the backward pass, the gradient the decoder would send back to z. One step is

    lat = gaussian_latent(mu, scale, n_samples=K)            # z, log q, log p, KL
    ll  = <likelihood>_log_prob(decoder_out, x)              # K samples of log p(x|z)
    loss = -elbo(ll, lat, kl=..., estimator=...).mean()
    backward: loss.backward() together with z.backward(grad_z)   (the decoder's share)

Minimal bytes moved (each input read once, each output written once; s = bytes per element):
    fwd     = s (2 B D          [mu, scale]
                 + K B D        [z]
                 + K B Dx       [decoder output]
                 + B Dx         [x]
                 + 2 Dx         [logvar, Gaussian only])
    fwd+bwd = fwd + s (K B D    [grad_z in]
                 + 2 B D        [grad mu, grad scale out]
                 + K B Dx       [grad of the decoder output]
                 + Dx           [grad logvar, Gaussian only])
The per-row scalars (log q, log p, KL, the ELBO: O(K B)) are left out: they are < 1% of the bytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import fastelbo as fe  # by its public name: the step reads as user code does


@dataclass(frozen=True)
class Workload:
    name: str
    batch: int
    latent_dim: int
    data_dim: int
    n_samples: int
    likelihood: str  # "bernoulli" | "gaussian"
    kl: str  # "mc" | "analytic"
    estimator: str  # "elbo" | "iwae"
    gpu_only: bool = False

    def bytes_moved(self, backward: bool, elem_size: int = 4) -> int:
        b, d, dx, k = self.batch, self.latent_dim, self.data_dim, self.n_samples
        gaussian = self.likelihood == "gaussian"
        fwd = 2 * b * d + k * b * d + k * b * dx + b * dx + (2 * dx if gaussian else 0)
        bwd = k * b * d + 2 * b * d + k * b * dx + (dx if gaussian else 0)
        return elem_size * (fwd + (bwd if backward else 0))


WORKLOADS = {
    "W1": Workload("W1", 128, 32, 784, 1, "bernoulli", "analytic", "elbo"),
    "W2": Workload("W2", 1024, 64, 784, 1, "bernoulli", "mc", "elbo"),
    "W3": Workload("W3", 256, 64, 784, 16, "bernoulli", "mc", "iwae"),
    "W4": Workload("W4", 512, 128, 12288, 1, "gaussian", "analytic", "elbo"),
    "W5": Workload("W5", 4096, 256, 12288, 1, "bernoulli", "mc", "elbo", gpu_only=True),
}


def make_inputs(w: Workload, device, dtype=torch.float32, seed: int = 0) -> dict:
    """Fresh leaves for one workload (the decoder output has the sample dim when K > 1)."""
    g = torch.Generator(device).manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * scale).to(dtype)

    k_dims = (w.n_samples,) if w.n_samples > 1 else ()
    inputs = {
        "mu": randn(w.batch, w.latent_dim),
        "scale": randn(w.batch, w.latent_dim, scale=0.3),
        "decoder_out": randn(*k_dims, w.batch, w.data_dim, scale=2.0),
        "grad_z": randn(*k_dims, w.batch, w.latent_dim, scale=0.1),
    }
    if w.likelihood == "bernoulli":
        inputs["x"] = (torch.rand(w.batch, w.data_dim, generator=g, device=device) < 0.5).to(dtype)
    else:
        inputs["x"] = randn(w.batch, w.data_dim)
        inputs["logvar"] = randn(w.data_dim, scale=0.1)
    return inputs


def step(w: Workload, inputs: dict, backend: str, backward: bool):
    """One ELBO step as users write it with fastelbo, on `backend`; returns the loss."""
    n_samples = w.n_samples if w.n_samples > 1 else None
    lat = fe.gaussian_latent(inputs["mu"], inputs["scale"], n_samples=n_samples, backend=backend)
    if w.likelihood == "bernoulli":
        log_lik = fe.bernoulli_log_prob(inputs["decoder_out"], inputs["x"], backend=backend)
    else:
        log_lik = fe.gaussian_log_prob(inputs["decoder_out"], inputs["x"], logvar=inputs["logvar"], backend=backend)
    with fe.use_backend(backend):
        loss = -fe.elbo(log_lik, lat, kl=w.kl, estimator=w.estimator).mean()
    if backward:
        torch.autograd.backward((loss, lat.z), (torch.ones_like(loss), inputs["grad_z"]))
    return loss


def plain_step(w: Workload, inputs: dict, backward: bool):
    """The same step as a VAE user writes it in plain PyTorch (torch.randn noise, BCE-with-logits):
    the "plain" baseline, shown beside the reference path, whose noise is Philox in int64 torch ops."""
    mu, s = inputs["mu"], inputs["scale"]
    k = w.n_samples
    std = torch.exp(0.5 * s)
    eps = torch.randn((k, *mu.shape) if k > 1 else mu.shape, device=mu.device, dtype=mu.dtype)
    z = mu + std * eps
    out, x = inputs["decoder_out"], inputs["x"]
    if w.likelihood == "bernoulli":
        log_lik = -F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="none").sum(-1)
    else:
        v = inputs["logvar"]
        log_lik = -0.5 * ((x - out) ** 2 * torch.exp(-v) + v + math.log(2 * math.pi)).sum(-1)
    c = 0.5 * math.log(2 * math.pi) * mu.shape[-1]
    if w.kl == "analytic":
        kl = 0.5 * (mu**2 + torch.exp(s) - 1 - s).sum(-1)
        objective = log_lik.mean(0) - kl if k > 1 else log_lik - kl
    else:
        log_q = (-0.5 * eps**2 - 0.5 * s).sum(-1) - c
        log_p = (-0.5 * z**2).sum(-1) - c
        log_w = log_lik + log_p - log_q
        if w.estimator == "iwae":
            objective = torch.logsumexp(log_w, 0) - math.log(k)
        else:
            objective = log_w.mean(0) if k > 1 else log_w
    loss = -objective.mean()
    if backward:
        torch.autograd.backward((loss, z), (torch.ones_like(loss), inputs["grad_z"]))
    return loss


def leaves(inputs: dict, backward: bool) -> dict:
    """The inputs, with the differentiable ones as fresh leaves when timing the backward pass."""
    out = {}
    for name, t in inputs.items():
        grad = backward and name in ("mu", "scale", "decoder_out", "logvar")
        out[name] = t.detach().requires_grad_(True) if grad else t
    return out
