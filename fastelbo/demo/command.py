"""`fastelbo demo`: train the digits VAE from the same seed with the fused ELBO, with fastelbo's
reference path and with plain PyTorch loss code (torch.randn_like, BCE with logits, the closed-form
KL: plain.py), one epoch of each in turn; print the curves, time the fused run against the plain
one (and say which is faster), check that the fused and reference curves agree (they draw the same
noise) and write the PNGs (see plots.py)."""
from __future__ import annotations

import argparse
import builtins
import os
import statistics

import torch
import torch.distributed as dist

from .. import _backend
from ..module import LIKELIHOODS
from . import data as digits
from .plain import PlainELBO
from .train import DemoConfig, test_elbo, train_three

# The curves agree when at every epoch |fused - reference| <= AGREEMENT_RTOL * max(1, |reference|).
# Both runs do the same float32 arithmetic up to rounding (measured: about 1e-7 nats apart per epoch
# for the Bernoulli, Gaussian, continuous Bernoulli and categorical likelihoods over 30 epochs; dmol
# ends 0.03 nats apart at 30 epochs, as far as the reference run from itself with one weight changed
# by 1e-7: its training amplifies rounding, see data.py); a wrong gradient moves them apart by whole nats.
AGREEMENT_RTOL = 1e-3

DATA_VIEW = {
    "bernoulli": "binarized at half intensity",
    "continuous_bernoulli": "intensities in [0, 1]",
    "gaussian": "intensities in [0, 1], learned per-pixel variance",
    "categorical": "17 intensity levels as classes",
    "dmol": "8 levels (3 bits) in [-1, 1], dithered grey RGB; a mixture of 2 discretized logistics",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=["mlp", "hierarchical"], default="mlp",
                        help="mlp: the VAE with one latent vector (all the options below); hierarchical: a "
                             "two-layer top-down VAE with image-shaped latents (Bernoulli, analytic KLs; "
                             "hierarchical.py) trained fused and reference (default: %(default)s)")
    parser.add_argument("--likelihood", choices=LIKELIHOODS, default="bernoulli", help="default: %(default)s")
    parser.add_argument("--estimator", choices=["elbo", "iwae", "dreg"], default="elbo",
                        help="elbo uses the analytic KL, iwae and dreg MC log-weights (default: %(default)s)")
    parser.add_argument("--n-samples", type=int, default=None,
                        help="samples of z per image (default: 1 for elbo, 8 for iwae and dreg)")
    parser.add_argument("--epochs", type=int, default=30, help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, default=64, help="default: %(default)s")
    parser.add_argument("--latent-dim", type=int, default=8, help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="default: %(default)s")
    parser.add_argument("--backend", choices=["auto", "cpu", "triton", "cuda"], default="auto",
                        help="the fused backend to compare with the reference (default: %(default)s)")
    parser.add_argument("--nproc", type=int, default=1,
                        help="processes under torch.distributed: DistributedDataParallel with gloo on CPU, "
                             "nccl on GPUs (one GPU each); default: %(default)s")
    parser.add_argument("--out", default="fastelbo-demo", help="folder for the PNGs (default: ./%(default)s)")
    parser.add_argument("--no-plot", action="store_true", help="write no PNGs")


def config_from_args(args) -> DemoConfig:
    for name in ("epochs", "batch_size", "latent_dim"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    n_samples = args.n_samples if args.n_samples is not None else (1 if args.estimator == "elbo" else 8)
    if n_samples < 1:
        raise SystemExit(f"--n-samples must be at least 1, got {n_samples}")
    return DemoConfig(likelihood=args.likelihood, estimator=args.estimator, n_samples=n_samples,
                      epochs=args.epochs, batch_size=args.batch_size, latent_dim=args.latent_dim,
                      lr=args.lr, seed=args.seed, device=args.device)


def fused_backend_for(choice: str, device: torch.device) -> str:
    """The concrete fused backend (building the C++ one now, before anything is timed)."""
    name = _backend.resolve_name(choice, device)
    if name == "reference":
        reasons = "; ".join(f"{n}: {why}" for n, why in _backend.backends().items() if why != "available")
        raise SystemExit(f"no fused backend runs on {device.type} tensors here ({reasons})")
    if not _backend.runs_on(name, device.type):
        raise SystemExit(f"backend {name!r} does not take {device.type} tensors (see --device)")
    return name


def relative_difference(fused: float, reference: float) -> float:
    return abs(fused - reference) / max(1.0, abs(reference))


def decoder_outputs(config: DemoConfig) -> str:
    from .model import DMOL_MIX

    per_pixel = {"categorical": 17, "dmol": 10 * DMOL_MIX}.get(config.likelihood)
    return "64" if per_pixel is None else f"64x{per_pixel}"


def describe(config: DemoConfig, data, backend: str) -> str:
    device = torch.device(config.device)
    threads = torch.get_num_threads()
    where = f"{threads} thread{'s' if threads > 1 else ''}" if device.type == "cpu" else torch.cuda.get_device_name(device)
    kl = "analytic KL" if config.kl == "analytic" else "MC log-weights"
    plain = PlainELBO(config.likelihood, n_samples=config.n_samples, estimator=config.estimator).describe()
    return "\n".join([
        f"fastelbo demo: a VAE on scikit-learn's 8x8 digits ({data.train.shape[0]} training, "
        f"{data.test.shape[0]} test images)",
        f"  likelihood {config.likelihood} ({DATA_VIEW[config.likelihood]}); estimator {config.estimator} "
        f"({kl}), {config.n_samples} sample{'s' if config.n_samples > 1 else ''} of z per image",
        f"  encoder 64-256-{2 * config.latent_dim}, decoder {config.latent_dim}-256-{decoder_outputs(config)}; "
        f"Adam (lr {config.lr}), "
        f"batch {config.batch_size}, {config.epochs} epochs, seed {config.seed}",
        f"  device {device.type} ({where}); fused backend {backend!r}, one epoch of each run in turn:",
        f"  timed against plain PyTorch loss code ({plain}),",
        "  checked against fastelbo's reference path (the same noise)",
    ])


HEADER = f"{'epoch':>5}  {'fused ELBO':>11}  {'reference ELBO':>14}  {'|difference|':>12}  {'plain ELBO':>11}  " \
         f"{'fused s':>8}  {'plain s':>8}  {'vs plain':>8}"


def epoch_line(epoch: int, fused, reference, plain) -> str:
    """One epoch's row: the three training ELBOs, fused and reference's difference, the fused and
    plain runs' seconds and the fused run's speedup over plain (above 1: the fused run is faster)."""
    f, r, p = fused.train_elbo[-1], reference.train_elbo[-1], plain.train_elbo[-1]
    fs, ps = fused.seconds[-1], plain.seconds[-1]
    return (f"{epoch:>5}  {f:>11.4f}  {r:>14.4f}  {abs(f - r):>12.2e}  {p:>11.4f}  {fs:>8.3f}  {ps:>8.3f}  "
            f"{ps / fs:>7.2f}x")


def speed_line(fused, reference, plain) -> str:
    """The fused run's time against the plain run's, saying which is faster (the reference run's
    time is given for the record: it is the agreement check, not a baseline)."""
    fused_median, plain_median = statistics.median(fused.seconds), statistics.median(plain.seconds)
    if fused_median <= plain_median:
        verdict = f"the fused run is {plain_median / fused_median:.2f}x faster than plain PyTorch"
    else:
        verdict = f"plain PyTorch is {fused_median / plain_median:.2f}x faster than the fused run"
    return (f"time: fused {sum(fused.seconds):.2f} s, plain PyTorch {sum(plain.seconds):.2f} s in all (reference "
            f"path {sum(reference.seconds):.2f} s, for the agreement check); median epoch {fused_median:.3f} s "
            f"against {plain_median:.3f} s: {verdict} (whole training step: encoder, decoder, ELBO, Adam)")


def run(args) -> int:
    """The demo in this process, or in args.nproc processes under torch.distributed."""
    config_from_args(args)  # bad options fail here, before any process starts
    if args.nproc < 1:
        raise SystemExit(f"--nproc must be at least 1, got {args.nproc}")
    if getattr(args, "model", "mlp") == "hierarchical":
        if args.nproc != 1:
            raise SystemExit("--model hierarchical runs in one process (--nproc 1)")
        from . import hierarchical

        return hierarchical.train_and_report(args, fused_backend_for(args.backend, torch.device(args.device)))
    from . import distributed

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun
        return distributed.run_under_torchrun(train_and_report, args)
    if args.nproc == 1:
        return train_and_report(args)
    return distributed.launch(train_and_report, args)


def train_and_report(args, rank: int = 0, world: int = 1) -> int:
    """Train both runs, print the comparison and write the PNGs (rank 0 prints and writes); the exit status."""
    config = config_from_args(args)
    device = torch.device(config.device)
    backend = fused_backend_for(args.backend, device)
    data = digits.load(config.likelihood, device=device, seed=config.seed)
    print = builtins.print if rank == 0 else (lambda *a, **k: None)
    print(describe(config, data, backend))
    if world > 1:
        per_rank = config.batch_size // world
        print(f"  torch.distributed: {world} processes, DistributedDataParallel ({dist.get_backend()}), "
              f"each training on {per_rank}{'+' if config.batch_size % world else ''} of every batch of {config.batch_size}")
    print()
    print(HEADER, flush=True)
    fused, reference, plain = train_three(config, data, backend,
                                          on_epoch=lambda e, f, r, p: print(epoch_line(e, f, r, p), flush=True))
    print()
    worst = max(relative_difference(f, r) for f, r in zip(fused.train_elbo, reference.train_elbo))
    largest = max(abs(f - r) for f, r in zip(fused.train_elbo, reference.train_elbo))
    fused_test, reference_test = test_elbo(fused, data, config), test_elbo(reference, data, config)
    print(f"test ELBO ({data.test.shape[0]} images): fused {fused_test:.4f}, reference {reference_test:.4f} "
          f"(same noise), plain {test_elbo(plain, data, config):.4f} nats per image")
    print(speed_line(fused, reference, plain))
    agree = worst <= AGREEMENT_RTOL and relative_difference(fused_test, reference_test) <= AGREEMENT_RTOL
    verdict = "agree" if agree else "DISAGREE"
    print(f"curves {verdict}: largest difference {largest:.2e} nats over {config.epochs} epochs "
          f"(relative {worst:.1e}; the bound is {AGREEMENT_RTOL:g})")
    if not args.no_plot and rank == 0:
        write_plots(args.out, config, fused, reference, data, backend, plain)
    return 0 if agree else 1


def write_plots(out: str, config: DemoConfig, fused, reference, data, backend: str, plain=None) -> None:
    from . import plots

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("no PNGs: matplotlib is missing (pip install 'fastelbo[demo]')")
        return
    os.makedirs(out, exist_ok=True)
    images, curves = os.path.join(out, "reconstructions.png"), os.path.join(out, "curves.png")
    plots.save_reconstructions(images, fused, reference, data)
    title = (f"fastelbo demo: {config.likelihood}, {config.estimator}, K={config.n_samples}; "
             f"fused backend {backend!r}, reference and plain PyTorch on {config.device}")
    plots.save_curves(curves, fused, reference, title, plain)
    print(f"wrote {images} and {curves}")
