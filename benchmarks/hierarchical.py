"""W6: a VDVAE-like hierarchical step, the latent op called once per layer (fp32, fwd and fwd+bwd).

40 latent layers of shape (B=16, C=16, r, r), r cycling through 1, 4, 8, 16, 32; each with a
posterior (qm, qv) and a per-sample prior (pm, pv) in the log-std parametrization, as openai/vdvae's
decoder blocks hold them. A step draws every layer's sample and sums its KL per image over all
layers; the sample reaches the loss through a stand-in (its mean), so gradients flow through it:

    plain (vdvae's helpers, eager):
        z  = torch.empty_like(qm).normal_(0., 1.) * torch.exp(qv) + qm     # draw_gaussian_diag_samples
        kl = -0.5 + pv - qv + 0.5 * (torch.exp(qv) ** 2 + (qm - pm) ** 2) / torch.exp(pv) ** 2
        loss += kl.sum(dim=(1, 2, 3)) (per image, summed over layers) ... + z.mean()
    compile(plain):  torch.compile(plain, fullgraph=True)
    fused:           lat = fe.gaussian_latent(qm, qv, param="log_std", dim=(1, 2, 3), prior=(pm, pv))
                     loss += lat.kl ... + lat.z.mean()
    fused+compile:   torch.compile(fused, fullgraph=True)

Minimal bytes (s bytes per element, N = the elements of all layers, 16 * 16 * sum r^2):
    fwd     = s (4 N [qm, qv, pm, pv] + N [z])          (the KL per image: O(B) per layer)
    fwd+bwd = fwd + s (N [grad of z] + 4 N [four gradients])

    python -m fastelbo.benchmarks.hierarchical [--reps 21] [--device cpu]
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

import fastelbo as fe

from .measure import interleaved_medians, script_setup, step_call

NAMES = ("qm", "qv", "pm", "pv")


@dataclass(frozen=True)
class Hierarchical:
    """W6's shape: `layers` latent layers (batch, channels, r, r), r cycling through `resolutions`.
    A workload of `fastelbo bench` as workloads.Workload is (bytes_moved, describe, gpu_only)."""

    name: str = "W6"
    batch: int = 16
    channels: int = 16
    layers: int = 40
    resolutions: tuple = (1, 4, 8, 16, 32)
    gpu_only: bool = False

    def shapes(self) -> list[tuple[int, int, int, int]]:
        cycle = self.resolutions
        return [(self.batch, self.channels, cycle[i % len(cycle)], cycle[i % len(cycle)]) for i in range(self.layers)]

    def elements(self) -> int:
        return sum(b * c * h * w for b, c, h, w in self.shapes())

    def bytes_moved(self, backward: bool, elem_size: int = 4) -> int:
        n = self.elements()
        return elem_size * (5 * n + (5 * n if backward else 0))

    def describe(self) -> str:
        return (f"{self.layers} layers (B={self.batch}, C={self.channels}, r, r), r in "
                f"{', '.join(map(str, self.resolutions))}; per-sample priors, log-std, analytic KL")


W6 = Hierarchical()


def make_inputs(w: Hierarchical, device, dtype=torch.float32, seed: int = 0) -> list[dict]:
    g = torch.Generator(device).manual_seed(seed)
    return [{name: (torch.randn(shape, generator=g, device=device) * (0.3 if name in ("qv", "pv") else 1.0)).to(dtype)
             for name in NAMES} for shape in w.shapes()]


def plain_loss(layers: list[dict]) -> torch.Tensor:
    """vdvae's draw_gaussian_diag_samples and gaussian_analytical_kl, written out."""
    kl_total, use = 0.0, 0.0
    for t in layers:
        qm, qv, pm, pv = (t[name] for name in NAMES)
        z = torch.empty_like(qm).normal_(0.0, 1.0) * torch.exp(qv) + qm
        kl = -0.5 + pv - qv + 0.5 * (torch.exp(qv) ** 2 + (qm - pm) ** 2) / torch.exp(pv) ** 2
        kl_total = kl_total + kl.sum(dim=(1, 2, 3))
        use = use + z.mean()
    return kl_total.mean() + use


def fused_loss(layers: list[dict], backend=None) -> torch.Tensor:
    kl_total, use = 0.0, 0.0
    for t in layers:
        lat = fe.gaussian_latent(t["qm"], t["qv"], param="log_std", dim=(1, 2, 3), prior=(t["pm"], t["pv"]),
                                 backend=backend)
        kl_total = kl_total + lat.kl
        use = use + lat.z.mean()
    return kl_total.mean() + use


def leaves(layers: list[dict], backward: bool) -> list[dict]:
    """Fresh leaves of every layer's tensors (requiring grad when timing the backward pass)."""
    return [{k: v.detach().requires_grad_(backward) for k, v in t.items()} for t in layers]


def measure(w: Hierarchical, device, reps: int, backward: bool) -> dict:
    backend = "cpu" if device.type == "cpu" else "cuda"
    layers = make_inputs(w, device)
    torch._dynamo.reset()
    steps = {"plain": plain_loss, "compile(plain)": torch.compile(plain_loss, fullgraph=True),
             backend: lambda t: fused_loss(t, backend),
             f"{backend}+compile": torch.compile(lambda t: fused_loss(t, backend), fullgraph=True)}
    calls = {name: step_call(fn, lambda: leaves(layers, backward), backward) for name, fn in steps.items()}
    return {name: seconds for name, (seconds, _) in interleaved_medians(calls, device, reps, warmup=3).items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=21)
    parser.add_argument("--layers", type=int, default=W6.layers)
    parser.add_argument("--resolutions", type=int, nargs="+", default=list(W6.resolutions))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device, _, malloc = script_setup(args.device)
    w = Hierarchical(layers=args.layers, resolutions=tuple(args.resolutions))
    print(f"W6: {w.describe()}; {w.elements()} elements; fp32 on {device.type}; malloc: {malloc}")
    for backward in (False, True):
        times = measure(w, device, args.reps, backward)
        mode = "fwd+bwd" if backward else "fwd"
        gbytes = w.bytes_moved(backward) / 1e9
        print(f"\n{mode}: minimal bytes {w.bytes_moved(backward) / 2**20:.1f} MiB")
        print(f"  {'implementation':16s} {'median ms':>10s} {'vs plain':>9s} {'vs compile':>10s} {'GB/s':>7s}")
        for name, seconds in times.items():
            print(f"  {name:16s} {seconds * 1e3:10.3f} {times['plain'] / seconds:8.2f}x "
                  f"{times['compile(plain)'] / seconds:9.2f}x {gbytes / seconds:7.2f}")


if __name__ == "__main__":
    main()
