"""The demo's two PNGs (matplotlib, Agg backend):

    reconstructions.png  rows: test images; their reconstructions by the fused run and by the
                         reference run (the likelihood's mean at z = mu); samples from the prior
                         decoded by each run (the same z for both)
    curves.png           the training ELBO per epoch of the fused, reference and plain runs, the
                         fused and reference curves' absolute difference, and the seconds per
                         epoch of each run
"""
from __future__ import annotations

import torch

from .data import IMAGE_SIDE


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def run_label(run) -> str:
    """How a run is named in the plots: "reference", "plain PyTorch", or "fused (backend 'cpu')"."""
    if run.backend == "plain":
        return "plain PyTorch"
    return run.name if run.name == run.backend else f"{run.name} (backend {run.backend!r})"


@torch.no_grad()
def image_rows(fused, reference, data, *, n_images: int = 10, seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    """(label, (n_images, 8, 8) intensities in [0, 1]) for each row of reconstructions.png."""
    x = data.test[:n_images]
    shown = data.encoder_input(x)
    z_prior = torch.randn(n_images, fused.model.latent_dim, generator=torch.Generator().manual_seed(seed))
    rows = [("test images", shown)]
    for run in (fused, reference):
        run.model.eval()
        mu, _ = run.model.encode(shown)
        rows.append((f"{run_label(run)}: reconstruction", run.model.mean_image(mu)))
    for run in (fused, reference):
        rows.append((f"{run_label(run)}: sample from the prior", run.model.mean_image(z_prior.to(x.device))))
    return [(title, images.float().cpu().reshape(-1, IMAGE_SIDE, IMAGE_SIDE)) for title, images in rows]


def strip(images: torch.Tensor, gap: int = 1) -> torch.Tensor:
    """(n, 8, 8) images side by side with `gap` blank columns between them: (8, n * (8 + gap) - gap)."""
    n, side, _ = images.shape
    out = torch.zeros(side, n * (side + gap) - gap)
    for i in range(n):
        out[:, i * (side + gap):i * (side + gap) + side] = images[i]
    return out


def save_reconstructions(path: str, fused, reference, data) -> None:
    plt = _pyplot()
    rows = image_rows(fused, reference, data)
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 1.25 * len(rows)))
    for ax, (title, images) in zip(axes, rows):
        ax.imshow(strip(images).numpy(), cmap="gray_r", vmin=0.0, vmax=1.0)
        ax.set_axis_off()
        ax.set_title(title, loc="left", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_curves(path: str, fused, reference, title: str, plain=None) -> None:
    plt = _pyplot()
    epochs = list(range(1, len(fused.train_elbo) + 1))
    fig, (elbo_ax, diff_ax, time_ax) = plt.subplots(1, 3, figsize=(14, 4))
    styles = [(fused, dict(lw=2.5, alpha=0.6)), (reference, dict(ls="--", lw=1.2, color="k"))]
    if plain is not None:
        styles.append((plain, dict(ls=":", lw=1.8, color="C3")))
    for run, style in styles:
        elbo_ax.plot(epochs, run.train_elbo, label=run_label(run), **style)
        time_ax.plot(epochs, run.seconds, marker="o", ms=3, label=run_label(run), **style)
    elbo_ax.set(xlabel="epoch", ylabel="training ELBO (nats per image)", title="ELBO per epoch")
    difference = [max(abs(f - r), 1e-12) for f, r in zip(fused.train_elbo, reference.train_elbo)]
    diff_ax.semilogy(epochs, difference, marker="o", ms=3)
    diff_ax.set(xlabel="epoch", ylabel="|fused - reference| (nats)", title="difference of the curves")
    time_ax.set(xlabel="epoch", ylabel="seconds", title="time per epoch")
    time_ax.set_ylim(bottom=0)
    for ax in (elbo_ax, time_ax):
        ax.legend()
    for ax in (elbo_ax, diff_ax, time_ax):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
