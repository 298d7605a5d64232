"""`fastelbo demo --model hierarchical`: a small top-down VAE (VDVAE / NVAE in miniature) on the
digits, trained with the fused ops and with the reference path from one seed, side by side.

Two latent layers, image-shaped, log-std parameters, the lower layer's prior conditioned on the
upper layer's sample (per sample), each sampled with its KL in one fused call:

    encoder   h1 = tanh(conv(x))          (B, H, 4, 4)     h2 = tanh(conv(h1))        (B, H, 2, 2)
    top       q(z2|x)    = N(conv(h2))                                      z2: (B, C, 2, 2)
              p(z2)      = N(0, I)
    down      d = tanh(up-conv(z2))       (B, H, 4, 4)
    bottom    q(z1|x,z2) = N(conv([h1, d]))                                 z1: (B, C, 4, 4)
              p(z1|z2)   = N(conv(d))                        (per sample: the prior network's output)
    decoder   logits = up-conv(tanh(conv([d, z1])))          (B, 1, 8, 8), Bernoulli pixels

    each layer: fe.gaussian_latent(mu, log_std, param="log_std", dim=(1, 2, 3), prior=...) -> z, KL
    ELBO = log p(x | z1, z2) - KL(z2) - KL(z1)   (per image, analytic KLs)

Each epoch prints the two runs' ELBO and their per-layer KLs; the curves must agree as the main
demo's do (the runs draw the same noise), and hierarchical.png shows the ELBO and the per-layer
KL per epoch.
"""
from __future__ import annotations

import os
import time

import torch

import fastelbo as fe

from . import data as digits
from .data import IMAGE_SIDE

LAYERS = ("top (z2: C x 2 x 2)", "bottom (z1: C x 4 x 4)")


class TopDownVAE(torch.nn.Module):
    def __init__(self, channels: int = 4, hidden: int = 32):
        super().__init__()
        conv = torch.nn.Conv2d
        self.enc1, self.enc2 = conv(1, hidden, 3, 2, 1), conv(hidden, hidden, 3, 2, 1)
        self.q_top = conv(hidden, 2 * channels, 1)
        self.down = torch.nn.ConvTranspose2d(channels, hidden, 2, 2)
        self.q_bottom = conv(2 * hidden, 2 * channels, 3, 1, 1)
        self.p_bottom = conv(hidden, 2 * channels, 3, 1, 1)
        self.out1 = conv(hidden + channels, hidden, 3, 1, 1)
        self.out2 = torch.nn.ConvTranspose2d(hidden, 1, 2, 2)

    def forward(self, x: torch.Tensor, images: torch.Tensor, backend: str):
        """(loss, ELBO per image, [KL per image of each layer]) of Bernoulli targets x (B, 64)."""
        h1 = torch.tanh(self.enc1(images.view(-1, 1, IMAGE_SIDE, IMAGE_SIDE)))
        h2 = torch.tanh(self.enc2(h1))
        mu2, s2 = self.q_top(h2).chunk(2, dim=1)
        top = fe.gaussian_latent(mu2, s2, param="log_std", dim=(1, 2, 3), backend=backend)
        d = torch.tanh(self.down(top.z))
        mu1, s1 = self.q_bottom(torch.cat([h1, d], dim=1)).chunk(2, dim=1)
        prior = tuple(self.p_bottom(d).chunk(2, dim=1))
        bottom = fe.gaussian_latent(mu1, s1, param="log_std", dim=(1, 2, 3), prior=prior, backend=backend)
        logits = self.decode(d, bottom.z)
        log_lik = fe.bernoulli_log_prob(logits.flatten(1), x, backend=backend)
        elbo = log_lik - top.kl - bottom.kl
        return -elbo.mean(), elbo, [top.kl, bottom.kl]

    def decode(self, d: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        return self.out2(torch.tanh(self.out1(torch.cat([d, z1], dim=1))))


def train(backend: str, data, *, epochs: int, batch_size: int, lr: float, seed: int, device="cpu",
          on_epoch=None) -> dict:
    """One run; its record: ELBO and per-layer KL (mean per training image) and seconds per epoch."""
    torch.manual_seed(seed)  # the same weights and noise stream for every run
    model = TopDownVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(seed)
    record = {"elbo": [], "kl": [], "seconds": []}
    for _ in range(epochs):
        start = time.perf_counter()
        # The ELBO and each layer's KL, summed on the device (no host sync per batch).
        sums = torch.zeros(1 + len(LAYERS), dtype=torch.float64, device=device)
        for batch in torch.randperm(data.train.shape[0], generator=shuffle).to(device).split(batch_size):
            x = data.train[batch]
            loss, elbo, layer_kls = model(x, data.encoder_input(x), backend)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.stack([t.detach().sum() for t in (elbo, *layer_kls)]).double()
        total, *kls = (value / data.train.shape[0] for value in sums.tolist())  # the epoch's one host sync
        record["seconds"].append(time.perf_counter() - start)
        record["elbo"].append(total)
        record["kl"].append(kls)
        if on_epoch is not None:
            on_epoch(record)
    return record


def train_and_report(args, backend: str) -> int:
    """Both runs, one after the other from the same seed (each with its own RNG stream); the exit
    status is 1 when their curves disagree."""
    from .command import AGREEMENT_RTOL, relative_difference

    device = torch.device(args.device)
    data = digits.load("bernoulli", device=device, seed=args.seed)
    print(f"fastelbo demo --model hierarchical: a two-layer top-down VAE on the 8x8 digits "
          f"({data.train.shape[0]} training images, binarized); latents (B, 4, 2, 2) and (B, 4, 4, 4), "
          f"log-std, the lower prior conditioned per sample; fused backend {backend!r} and the reference path, "
          f"{args.epochs} epochs, seed {args.seed}")
    options = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=device)
    forked = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        reference = train("reference", data, **options)
    print(f"{'epoch':>5}  {'fused ELBO':>11}  {'reference ELBO':>14}  {'|difference|':>12}  "
          f"{'KL top':>7}  {'KL bottom':>9}  {'fused s':>8}  {'ref. s':>7}")

    def line(record):
        e = len(record["elbo"]) - 1
        f, r = record["elbo"][e], reference["elbo"][e]
        print(f"{e + 1:>5}  {f:>11.4f}  {r:>14.4f}  {abs(f - r):>12.2e}  {record['kl'][e][0]:>7.3f}  "
              f"{record['kl'][e][1]:>9.3f}  {record['seconds'][e]:>8.3f}  {reference['seconds'][e]:>7.3f}", flush=True)

    with torch.random.fork_rng(devices=forked):
        fused = train(backend, data, on_epoch=line, **options)
    worst = max(relative_difference(f, r) for f, r in zip(fused["elbo"], reference["elbo"]))
    worst_kl = max(relative_difference(f, r) for fe_, re_ in zip(fused["kl"], reference["kl"]) for f, r in zip(fe_, re_))
    agree = max(worst, worst_kl) <= AGREEMENT_RTOL
    print(f"curves {'agree' if agree else 'DISAGREE'}: largest relative difference {worst:.1e} (ELBO), "
          f"{worst_kl:.1e} (per-layer KL) over {args.epochs} epochs; the bound is {AGREEMENT_RTOL:g}")
    if not args.no_plot:
        save_plot(args.out, fused, reference, backend)
    return 0 if agree else 1


def save_plot(out: str, fused: dict, reference: dict, backend: str) -> None:
    try:
        from .plots import _pyplot

        plt = _pyplot()
    except ImportError:
        print("no PNG: matplotlib is missing (pip install 'fastelbo[demo]')")
        return
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "hierarchical.png")
    epochs = list(range(1, len(fused["elbo"]) + 1))
    fig, (elbo_ax, kl_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for record, name, style in ((fused, f"fused ({backend!r})", dict(lw=2.5, alpha=0.6)),
                                (reference, "reference", dict(ls="--", lw=1.2, color="k"))):
        elbo_ax.plot(epochs, record["elbo"], label=name, **style)
        for i, layer in enumerate(LAYERS):
            kl_ax.plot(epochs, [kl[i] for kl in record["kl"]], label=f"{name}: {layer}",
                       **{**style, "color": style.get("color", f"C{i}")})
    elbo_ax.set(xlabel="epoch", ylabel="training ELBO (nats per image)", title="ELBO per epoch")
    kl_ax.set(xlabel="epoch", ylabel="KL (nats per image)", title="KL of each latent layer")
    for ax in (elbo_ax, kl_ax):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


__all__ = ["TopDownVAE", "train", "train_and_report"]
