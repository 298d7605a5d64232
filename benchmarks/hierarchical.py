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

import torch

import fastelbo as fe

from .measure import interleaved_medians, script_setup

BATCH, CHANNELS, LAYERS, RESOLUTIONS = 16, 16, 40, (1, 4, 8, 16, 32)
NAMES = ("qm", "qv", "pm", "pv")


def shapes() -> list[tuple[int, int, int, int]]:
    return [(BATCH, CHANNELS, r, r) for r in (RESOLUTIONS[i % len(RESOLUTIONS)] for i in range(LAYERS))]


def make_inputs(device, seed: int = 0) -> list[dict]:
    g = torch.Generator(device).manual_seed(seed)
    layers = []
    for shape in shapes():
        t = {name: torch.randn(shape, generator=g, device=device) * (0.3 if name in ("qv", "pv") else 1.0)
             for name in NAMES}
        layers.append(t)
    return layers


def elements() -> int:
    return sum(b * c * h * w for b, c, h, w in shapes())


def bytes_moved(backward: bool, s: int = 4) -> int:
    n = elements()
    return s * (5 * n + (5 * n if backward else 0))


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


def _leaves(layers, backward):
    return [{k: v.detach().requires_grad_(backward) for k, v in t.items()} for t in layers]


def measure(device, reps: int, backward: bool) -> dict:
    backend = "cpu" if device.type == "cpu" else "cuda"
    layers = make_inputs(device)
    torch._dynamo.reset()
    steps = {"plain": plain_loss, "compile(plain)": torch.compile(plain_loss, fullgraph=True),
             backend: lambda t: fused_loss(t, backend),
             f"{backend}+compile": torch.compile(lambda t: fused_loss(t, backend), fullgraph=True)}
    calls = {}
    for name, fn in steps.items():
        state = {}

        def before(state=state):
            state["t"] = _leaves(layers, backward)

        def call(fn=fn, state=state):
            loss = fn(state["t"])
            if backward:
                loss.backward()

        calls[name] = (call, before)
    return {name: seconds for name, (seconds, _) in interleaved_medians(calls, device, reps, warmup=3).items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=21)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device, _, malloc = script_setup(args.device)
    print(f"W6: {LAYERS} layers of (B={BATCH}, C={CHANNELS}, r, r), r in {RESOLUTIONS}, per-sample priors, log-std; "
          f"{elements()} elements; fp32 on {device.type}; malloc: {malloc}")
    for backward in (False, True):
        times = measure(device, args.reps, backward)
        mode = "fwd+bwd" if backward else "fwd"
        gbytes = bytes_moved(backward) / 1e9
        print(f"\n{mode}: minimal bytes {bytes_moved(backward) / 2**20:.1f} MiB")
        print(f"  {'implementation':16s} {'median ms':>10s} {'vs plain':>9s} {'vs compile':>10s} {'GB/s':>7s}")
        for name, seconds in times.items():
            print(f"  {name:16s} {seconds * 1e3:10.3f} {times['plain'] / seconds:8.2f}x "
                  f"{times['compile(plain)'] / seconds:9.2f}x {gbytes / seconds:7.2f}")


if __name__ == "__main__":
    main()
