"""The demo's data: scikit-learn's bundled 8x8 handwritten digits (1797 images, no download).

Each pixel is an intensity level v in 0..16. What the model sees depends on the likelihood:

    bernoulli              x = [v >= 8]          binarized at half intensity (float 0/1)
    continuous_bernoulli   x = v / 16            intensities in [0, 1]
    gaussian               x = v / 16            intensities in [0, 1]
    categorical            x = v                 one of 17 classes per pixel (int64)
    dmol                   x = 2 k / 7 - 1       k = floor(7 v / 16 + d), d uniform in [0, 1) drawn once
                                                 per image, pixel and channel (a fixed dither): 8 levels
                                                 (3 bits) in [-1, 1], (N, 8, 8, 3), three channels one
                                                 level apart at most. The discretized logistic mixture
                                                 models RGB pixels (its means couple the colour
                                                 channels), so the digits are given as dithered grey RGB
                                                 images. Not the grey level copied to three channels:
                                                 channels 1 and 2 are then exact linear functions of
                                                 channel 0, training drives their scales to the e^-7
                                                 clamp, and there the run is chaotic (a 1e-7 change of
                                                 one weight moves the reference run's ELBO by 0.4 nats
                                                 within 5 epochs), so no two implementations' curves
                                                 could agree

The split is fixed: a permutation of the images from `seed` puts `test_size` in the test set.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

N_PIXELS = 64
N_LEVELS = 17  # intensities 0..16
IMAGE_SIDE = 8
DMOL_BITS = 3  # the dmol view's levels: 2^3
DITHER_SEED = 3  # the dmol view's fixed dither (one per image, pixel and channel)


@dataclass(frozen=True)
class Digits:
    """Train and test images as the likelihood's targets, (N, 64) ((N, 8, 8, 3) for dmol)."""

    train: torch.Tensor
    test: torch.Tensor

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """Float pixels in [0, 1] for the encoder, (N, 64), whatever the target encoding."""
        if x.dim() == 4:  # dmol: grey RGB in [-1, 1]
            return (x[..., 0].flatten(-2) + 1.0) / 2.0
        return x.float() / (N_LEVELS - 1) if x.dtype == torch.int64 else x


def load_sklearn_digits() -> torch.Tensor:
    """The 1797 raw images as int64 levels 0..16, (1797, 64)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # the [demo] extra brings it
        raise SystemExit("fastelbo demo needs scikit-learn for its data: pip install 'fastelbo[demo]'") from error
    return torch.from_numpy(load_digits().data).to(torch.int64)


def targets(levels: torch.Tensor, likelihood: str) -> torch.Tensor:
    """The likelihood's view of the intensity levels (see the module docstring)."""
    if likelihood == "bernoulli":
        return (levels >= (N_LEVELS - 1) // 2).float()
    if likelihood in ("continuous_bernoulli", "gaussian"):
        return levels.float() / (N_LEVELS - 1)
    if likelihood == "categorical":
        return levels.clone()
    if likelihood == "dmol":
        top = 2 ** DMOL_BITS - 1
        generator = torch.Generator().manual_seed(DITHER_SEED)
        dither = torch.rand(levels.shape + (3,), generator=generator, dtype=torch.float64)
        k = torch.floor(levels.double().unsqueeze(-1) * top / (N_LEVELS - 1) + dither).clamp(0, top)
        return (k * (2.0 / top) - 1.0).float().view(-1, IMAGE_SIDE, IMAGE_SIDE, 3)
    raise ValueError("likelihood must be one of bernoulli, continuous_bernoulli, gaussian, categorical, dmol; "
                     f"got {likelihood!r}")


def load(likelihood: str, *, device, seed: int = 0, test_size: int = 297) -> Digits:
    levels = load_sklearn_digits()
    order = torch.randperm(levels.shape[0], generator=torch.Generator().manual_seed(seed))
    x = targets(levels[order], likelihood).to(device)
    return Digits(train=x[test_size:], test=x[:test_size])
