"""The benchmark workloads: the ELBO pieces around a stand-in decoder, fwd and fwd+bwd (and W6,
a VDVAE-like stack of 40 latent layers, whose steps and bytes formula are in hierarchical.py, and
W7, the discretized mixture of logistics at vdvae's CIFAR-10 shape, in dmol.py).

Each workload draws mu, scale (B, D) (scale is the log-variance), the decoder's base output `base`
((K, B, Dx), or (B, Dx) when K = 1), the data x (B, Dx) and, for the Gaussian, its learned
log-variance (Dx,). The stand-in decoder, the same in every implementation, is

    logits = base + z.mean(-1, keepdim=True)                               # decoder(base, z)

so that z's gradient flows back through a real op (the decoder's matmuls themselves are left
out). The leaves that get gradients in fwd+bwd: mu, scale, base (and logvar).

The implementations time one step, loss = <step>(inputs) (fwd), then loss.backward() (fwd+bwd):

"plain": the step as VAE code writes it in plain PyTorch (pytorch/examples' VAE: torch.randn_like
noise, BCE with logits, the closed-form KL), `plain_loss` below:

    std = torch.exp(0.5 * logvar)
    eps = torch.randn_like(std)            # K > 1: torch.randn(K, B, D)
    z = mu + eps * std
    out = base + z.mean(-1, keepdim=True)
    # kl="analytic", estimator="elbo" (S1, S2, W1, W4): pytorch/examples' loss_function, per data point
    rec = F.binary_cross_entropy_with_logits(out, x, reduction="sum")                       # Bernoulli
    rec = 0.5 * ((x - out) ** 2 * torch.exp(-x_logvar) + x_logvar + log(2 pi)).sum()          # Gaussian
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    loss = (rec / K + kld) / B
    # kl="mc" (W2; W3 with estimator="iwae"): MC log-weights, torch.distributions' Normal formulas
    log_lik = -F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="none").sum(-1)
    log_q = (-(z - mu) ** 2 / (2 * std ** 2) - 0.5 * logvar - 0.5 log(2 pi)).sum(-1)    # Normal(mu, std).log_prob(z)
    log_p = (-0.5 * z ** 2 - 0.5 log(2 pi)).sum(-1)                                     # Normal(0, 1).log_prob(z)
    log_w = log_lik + log_p - log_q
    loss = -log_w.mean()                                          # elbo (K = 1)
    loss = -(torch.logsumexp(log_w, 0) - log(K)).mean()           # iwae

"compile(plain)": torch.compile(plain_loss, fullgraph=True), compiled afresh for each workload
and mode (the backward is AOTAutograd's compiled backward).

A fused backend ("cpu", "triton", "cuda") and "reference" (fastelbo's reference path, pure
PyTorch: shown for context, never a baseline; its noise is Philox in int64 tensor ops, slow in
eager mode) run `fused_loss`, the same step through fastelbo's public API:

    lat = fe.gaussian_latent(mu, logvar, n_samples=K or None, backend=backend)
    out = base + lat.z.mean(-1, keepdim=True)
    log_lik = fe.bernoulli_log_prob(out, x, backend=backend)        # or fe.gaussian_log_prob(out, x, logvar=x_logvar)
    loss = -fe.elbo(log_lik, lat, kl=kl, estimator=estimator, backend=backend).mean()

"<backend>+compile": torch.compile(fused_loss, fullgraph=True) on that backend: the fused ops
inside a compiled step, which is what a user compiling a model gets.

Given the same noise, plain_loss and fused_loss are the same function of the inputs (value and
gradients; tests/test_bench.py checks it on every workload, shrunk).

Minimal bytes moved by the ELBO pieces (each input read once, each output written once; s =
bytes per element). The stand-in decoder's output stands for the decoder's; the stand-in's own
traffic (base read and the logits written in fwd; the logits' gradient summed per row for z in
bwd) is the decoder's, not counted:
    fwd     = s (2 B D          [mu, scale]
                 + K B D        [z]
                 + K B Dx       [decoder output]
                 + B Dx         [x]
                 + 2 Dx         [logvar, Gaussian only])
    fwd+bwd = fwd + s (K B D    [grad of z in, from the decoder]
                 + 2 B D        [grad mu, grad scale out]
                 + K B Dx       [grad of the decoder output]
                 + Dx           [grad logvar, Gaussian only])
The per-row scalars (log q, log p, KL, the ELBO: O(K B)) are left out: they are < 1% of the bytes
(at S1 and S2, D = 8: about 3%).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import fastelbo as fe  # by its public name: the step reads as user code does

from . import dmol, hierarchical

LOG_2PI = math.log(2 * math.pi)


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

    def describe(self) -> str:
        """e.g. "B=256 D=64 Dx=784 K=16, Bernoulli, MC KL, IWAE"."""
        shape = f"B={self.batch} D={self.latent_dim} Dx={self.data_dim}"
        if self.n_samples > 1:
            shape += f" K={self.n_samples}"
        likelihood = "Bernoulli" if self.likelihood == "bernoulli" else "Gaussian (learned logvar (Dx,))"
        kl = "analytic KL" if self.kl == "analytic" else "MC KL"
        return f"{shape}, {likelihood}, {kl}, {self.estimator.upper()}"


WORKLOADS = {
    "S1": Workload("S1", 256, 8, 64, 1, "bernoulli", "analytic", "elbo"),  # the demo's digits VAE
    "S2": Workload("S2", 4096, 8, 64, 1, "bernoulli", "analytic", "elbo"),
    "W1": Workload("W1", 128, 32, 784, 1, "bernoulli", "analytic", "elbo"),
    "W2": Workload("W2", 1024, 64, 784, 1, "bernoulli", "mc", "elbo"),
    "W3": Workload("W3", 256, 64, 784, 16, "bernoulli", "mc", "iwae"),
    "W4": Workload("W4", 512, 128, 12288, 1, "gaussian", "analytic", "elbo"),
    "W5": Workload("W5", 4096, 256, 12288, 1, "bernoulli", "mc", "elbo", gpu_only=True),
    "W6": hierarchical.W6,  # VDVAE-like: 40 latent layers; its steps and bytes in hierarchical.py
    "W7": dmol.W7,  # the discretized mixture of logistics (vdvae CIFAR-10); its steps and bytes in dmol.py
}

GRAD_LEAVES = ("mu", "scale", "base", "logvar")


def make_inputs(w: Workload, device, dtype=torch.float32, seed: int = 0) -> dict:
    """Fresh inputs for one workload (the decoder's base output has the sample dim when K > 1;
    W6: a list of layers, hierarchical.py)."""
    if isinstance(w, hierarchical.Hierarchical):
        return hierarchical.make_inputs(w, device, dtype, seed)
    if isinstance(w, dmol.Dmol):
        return dmol.make_inputs(w, device, dtype, seed)
    g = torch.Generator(device).manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * scale).to(dtype)

    k_dims = (w.n_samples,) if w.n_samples > 1 else ()
    inputs = {
        "mu": randn(w.batch, w.latent_dim),
        "scale": randn(w.batch, w.latent_dim, scale=0.3),
        "base": randn(*k_dims, w.batch, w.data_dim, scale=2.0),
    }
    if w.likelihood == "bernoulli":
        inputs["x"] = (torch.rand(w.batch, w.data_dim, generator=g, device=device) < 0.5).to(dtype)
    else:
        inputs["x"] = randn(w.batch, w.data_dim)
        inputs["logvar"] = randn(w.data_dim, scale=0.1)
    return inputs


def decoder(base: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The stand-in decoder of every implementation: z's gradient flows back through a real op."""
    return base + z.mean(-1, keepdim=True)


def fused_loss(w: Workload, t: dict, backend: str, eps=None, decode=decoder) -> torch.Tensor:
    """One step's loss through fastelbo's public API on `backend` (eps: explicit noise, for tests;
    decode: the stand-in decoder, replaced by decoder_share.py)."""
    if isinstance(w, hierarchical.Hierarchical):
        return hierarchical.fused_loss(t, backend)
    if isinstance(w, dmol.Dmol):
        return dmol.fused_loss(t, w.n_mix, w.bits, backend)
    n_samples = w.n_samples if w.n_samples > 1 else None
    lat = fe.gaussian_latent(t["mu"], t["scale"], n_samples=n_samples, eps=eps, backend=backend)
    out = decode(t["base"], lat.z)
    if w.likelihood == "bernoulli":
        log_lik = fe.bernoulli_log_prob(out, t["x"], backend=backend)
    else:
        log_lik = fe.gaussian_log_prob(out, t["x"], logvar=t["logvar"], backend=backend)
    return -fe.elbo(log_lik, lat, kl=w.kl, estimator=w.estimator, backend=backend).mean()


def plain_loss(w: Workload, t: dict, eps=None, decode=decoder) -> torch.Tensor:
    """The same step as VAE code writes it in plain PyTorch (the module docstring shows it; eps:
    explicit noise, for tests; decode as in fused_loss)."""
    if isinstance(w, hierarchical.Hierarchical):
        return hierarchical.plain_loss(t)
    if isinstance(w, dmol.Dmol):
        return dmol.plain_loss(t, w.bits)
    mu, logvar, x = t["mu"], t["scale"], t["x"]
    k = w.n_samples
    std = torch.exp(0.5 * logvar)
    if eps is None:
        eps = torch.randn_like(std) if k == 1 else torch.randn((k, *std.shape), dtype=std.dtype, device=std.device)
    z = mu + eps * std
    out = decode(t["base"], z)
    if w.kl == "analytic" and w.estimator == "elbo":  # pytorch/examples' loss_function, per data point
        if w.likelihood == "bernoulli":
            rec = F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="sum")
        else:
            x_logvar = t["logvar"]
            rec = 0.5 * ((x - out) ** 2 * torch.exp(-x_logvar) + x_logvar + LOG_2PI).sum()
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return (rec / k + kld) / mu.shape[0]
    if w.likelihood == "bernoulli":
        log_lik = -F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="none").sum(-1)
    else:
        x_logvar = t["logvar"]
        log_lik = -0.5 * ((x - out) ** 2 * torch.exp(-x_logvar) + x_logvar + LOG_2PI).sum(-1)
    log_q = (-((z - mu) ** 2) / (2 * std**2) - 0.5 * logvar - 0.5 * LOG_2PI).sum(-1)
    log_p = (-0.5 * z**2 - 0.5 * LOG_2PI).sum(-1)
    log_w = log_lik + log_p - log_q
    if w.estimator == "iwae":
        return -(torch.logsumexp(log_w, 0) - math.log(k)).mean()
    return -log_w.mean()


def leaves(inputs: dict, backward: bool) -> dict:
    """The inputs, with the differentiable ones as fresh leaves when timing the backward pass."""
    if isinstance(inputs, list):  # W6's layers
        return hierarchical.leaves(inputs, backward)
    if "params" in inputs:  # W7
        return dmol.leaves(inputs, backward)
    out = {}
    for name, t in inputs.items():
        grad = backward and name in GRAD_LEAVES
        out[name] = t.detach().requires_grad_(True) if grad else t
    return out
