"""W7: the discretized mixture of logistics at openai/vdvae's CIFAR-10 shape (fp32, fwd and fwd+bwd).

B=16 images of 32x32x3, M=10 components, 8 bits; the parameters channels-last (B, 32, 32, 10 M),
as vdvae's decoder outputs them, and the loss vdvae trains with: minus the log-likelihood per
image divided by H W 3, averaged over the batch.

    plain (vdvae's discretized_mix_logistic_loss, eager; its (B, H, W, 3, M) tensors):
        means, log_scales = l[..., :M], clamp(l[..., M:2M], min=-7); coeffs = tanh(l[..., 2M:3M])
        m2 = means[:, :, :, 1] + coeffs[:, :, :, 0] x0;  m3 = means[:, :, :, 2] + coeffs[.., 1] x0 + coeffs[.., 2] x1
        centered = x - means; plus_in, min_in = inv_stdv (centered +- 1/255)
        cdf_delta = sigmoid(plus_in) - sigmoid(min_in)
        log_probs = where(x < -0.999, plus_in - softplus(plus_in), where(x > 0.999, -softplus(min_in),
                          where(cdf_delta > 1e-5, log(clamp(cdf_delta, 1e-12)), log_pdf_mid - log 127.5)))
        loss = -logsumexp(log_probs.sum(3) + log_softmax(logits), -1).sum((1, 2)) / (H W 3), mean over B
    compile(plain):  torch.compile(plain, fullgraph=True)
    fused:           -fe.discretized_logistic_mixture_log_prob(params, x, n_mix=M) / (H W 3), mean over B
    fused+compile:   torch.compile(fused, fullgraph=True)

Minimal bytes (s bytes per element, P = B H W pixels): the parameters and x read once, the
gradient of the parameters written once (the per-image values: O(B)):
    fwd     = s (10 M P [params] + 3 P [x])
    fwd+bwd = fwd + s 10 M P [grad of params]

    python -m fastelbo.benchmarks.dmol [--reps 21] [--device cpu]
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import fastelbo as fe

from .measure import interleaved_medians, peak_bytes, script_setup, step_call


@dataclass(frozen=True)
class Dmol:
    """W7's shape. A workload of `fastelbo bench` as workloads.Workload is (bytes_moved, describe,
    gpu_only)."""

    name: str = "W7"
    batch: int = 16
    size: int = 32
    n_mix: int = 10
    bits: int = 8
    gpu_only: bool = False

    def pixels(self) -> int:
        return self.batch * self.size * self.size

    def bytes_moved(self, backward: bool, elem_size: int = 4) -> int:
        p, params = self.pixels(), 10 * self.n_mix * self.pixels()
        return elem_size * (params + 3 * p + (params if backward else 0))

    def describe(self) -> str:
        return (f"DMOL B={self.batch} {self.size}x{self.size}x3 M={self.n_mix} {self.bits} bits, channels-last "
                "(vdvae CIFAR-10)")


W7 = Dmol()


def make_inputs(w: Dmol, device, dtype=torch.float32, seed: int = 0) -> dict:
    """Parameters as an untrained decoder gives them (N(0, 1): log-scales around 0) and random images."""
    g = torch.Generator(device).manual_seed(seed)
    levels = 2 ** w.bits - 1
    k = torch.randint(0, levels + 1, (w.batch, w.size, w.size, 3), generator=g, device=device)
    params = torch.randn(w.batch, w.size, w.size, 10 * w.n_mix, generator=g, device=device)
    return {"params": params.to(dtype), "x": (k.to(torch.float32) * (2.0 / levels) - 1.0).to(dtype)}


def _log_prob_from_logits(x):
    m = x.max(dim=-1, keepdim=True)[0]
    return x - m - torch.log(torch.exp(x - m).sum(dim=-1, keepdim=True))


def vdvae_log_prob(x: torch.Tensor, l: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """openai/vdvae's discretized_mix_logistic_loss as its code writes it, returning the per-image
    log-likelihood (nats, summed over pixels and channels) instead of its normalized loss, for
    2^bits levels (vdvae: 8 bits), and with torch.clamp for its const_max(log_scales, -7.) (the
    same values; at a log-scale of exactly -7 clamp passes the whole gradient, torch.max half, and
    fastelbo's op follows clamp)."""
    xs, nr_mix = list(x.shape), l.shape[-1] // 10
    half_levels = (2 ** bits - 1) / 2.0
    logit_probs = l[:, :, :, :nr_mix]
    l = torch.reshape(l[:, :, :, nr_mix:], xs + [nr_mix * 3])
    means = l[:, :, :, :, :nr_mix]
    log_scales = torch.clamp(l[:, :, :, :, nr_mix:2 * nr_mix], min=-7.)
    coeffs = torch.tanh(l[:, :, :, :, 2 * nr_mix:3 * nr_mix])
    x = torch.reshape(x, xs + [1]) + torch.zeros(xs + [nr_mix], device=x.device, dtype=x.dtype)
    m2 = torch.reshape(means[:, :, :, 1, :] + coeffs[:, :, :, 0, :] * x[:, :, :, 0, :],
                       [xs[0], xs[1], xs[2], 1, nr_mix])
    m3 = torch.reshape(means[:, :, :, 2, :] + coeffs[:, :, :, 1, :] * x[:, :, :, 0, :]
                       + coeffs[:, :, :, 2, :] * x[:, :, :, 1, :], [xs[0], xs[1], xs[2], 1, nr_mix])
    means = torch.cat([torch.reshape(means[:, :, :, 0, :], [xs[0], xs[1], xs[2], 1, nr_mix]), m2, m3], dim=3)
    centered_x = x - means
    inv_stdv = torch.exp(-log_scales)
    plus_in = inv_stdv * (centered_x + 1. / (2 * half_levels))
    cdf_plus = torch.sigmoid(plus_in)
    min_in = inv_stdv * (centered_x - 1. / (2 * half_levels))
    cdf_min = torch.sigmoid(min_in)
    log_cdf_plus = plus_in - F.softplus(plus_in)
    log_one_minus_cdf_min = -F.softplus(min_in)
    cdf_delta = cdf_plus - cdf_min
    mid_in = inv_stdv * centered_x
    log_pdf_mid = mid_in - log_scales - 2. * F.softplus(mid_in)
    log_probs = torch.where(x < -0.999, log_cdf_plus,
                            torch.where(x > 0.999, log_one_minus_cdf_min,
                                        torch.where(cdf_delta > 1e-5, torch.log(torch.clamp(cdf_delta, min=1e-12)),
                                                    log_pdf_mid - np.log(half_levels))))
    log_probs = torch.sum(log_probs, dim=3) + _log_prob_from_logits(logit_probs)
    return torch.logsumexp(log_probs, -1).sum(dim=[1, 2])


def plain_loss(t: dict, bits: int = 8) -> torch.Tensor:
    """vdvae's loss: -log p(x) / (H W 3) per image, averaged over the batch."""
    x = t["x"]
    return (-vdvae_log_prob(x, t["params"], bits) / (x[0].numel())).mean()


def fused_loss(t: dict, n_mix: int, bits: int = 8, backend=None) -> torch.Tensor:
    x = t["x"]
    log_p = fe.discretized_logistic_mixture_log_prob(t["params"], x, n_mix=n_mix, bits=bits, backend=backend)
    return (-log_p / x[0].numel()).mean()


def leaves(inputs: dict, backward: bool) -> dict:
    return {"params": inputs["params"].detach().requires_grad_(backward), "x": inputs["x"]}


def steps(w: Dmol, backend: str) -> dict:
    """{implementation name: loss function of the inputs}, compiled ones fresh."""
    torch._dynamo.reset()
    fused = lambda t: fused_loss(t, w.n_mix, w.bits, backend)  # noqa: E731
    return {"plain": lambda t: plain_loss(t, w.bits), "compile(plain)": torch.compile(
        lambda t: plain_loss(t, w.bits), fullgraph=True),
            backend: fused, f"{backend}+compile": torch.compile(fused, fullgraph=True)}


def measure(w: Dmol, device, reps: int, backward: bool) -> dict:
    """{name: (median seconds, peak bytes)} of each implementation."""
    backend = "cpu" if device.type == "cpu" else "cuda"
    inputs = make_inputs(w, device)
    fns = steps(w, backend)
    calls = {name: step_call(fn, lambda: leaves(inputs, backward), backward) for name, fn in fns.items()}
    times = interleaved_medians(calls, device, reps, warmup=3)
    result = {}
    for name, (call, before) in calls.items():
        before()
        result[name] = (times[name][0], peak_bytes(call, device))
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=21)
    parser.add_argument("--batch", type=int, default=W7.batch)
    parser.add_argument("--size", type=int, default=W7.size, help="image height and width")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device, backend, malloc = script_setup(args.device)
    w = Dmol(batch=args.batch, size=args.size)
    inputs = make_inputs(w, device)
    agree = (fused_loss(inputs, w.n_mix, w.bits, backend) - plain_loss(inputs, w.bits)).abs().item()
    print(f"{w.name}: {w.describe()}; fp32 on {device.type}; malloc: {malloc}; |fused - plain| loss {agree:.2e}")
    for backward in (False, True):
        results = measure(w, device, args.reps, backward)
        mode = "fwd+bwd" if backward else "fwd"
        gbytes = w.bytes_moved(backward) / 1e9
        plain_t, compile_t = results["plain"][0], results["compile(plain)"][0]
        print(f"\n{mode}: minimal bytes {w.bytes_moved(backward) / 2**20:.1f} MiB")
        print(f"  {'implementation':16s} {'median ms':>10s} {'vs plain':>9s} {'vs compile':>10s} {'GB/s':>7s} "
              f"{'peak MiB':>9s}")
        for name, (seconds, peak) in results.items():
            print(f"  {name:16s} {seconds * 1e3:10.3f} {plain_t / seconds:8.2f}x {compile_t / seconds:9.2f}x "
                  f"{gbytes / seconds:7.2f} {peak / 2**20:9.1f}")


if __name__ == "__main__":
    main()
