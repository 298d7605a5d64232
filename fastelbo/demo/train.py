"""Training runs of the demo VAE from the same seed, one epoch of each in turn: one with the fused
ELBO ops, one with the reference path (the agreement check) and one with plain PyTorch loss code
(plain.py: the speed baseline).

The runs start from the same weights, see the same batches in the same order and draw their
noise from the same generator states (each run owns a copy of torch's RNG state, swapped in for
its epochs), so the fused and reference curves differ only by floating-point rounding. The plain
run draws its noise with torch.randn_like, so its curve is the same model's on other noise.
Interleaving the epochs exposes every run to the same machine load, which keeps their time ratio
honest on a shared machine.

Under torch.distributed (`fastelbo demo --nproc N`) each process wraps the model in
DistributedDataParallel and trains on its 1/N of every batch (rank r takes the r-th of N nearly
equal slices); DDP averages the gradients, so each step is the step of the whole batch. The ranks
draw different noise (rank r > 0 reseeds its stream), the weights start equal (DDP broadcasts
rank 0's) and the epoch's ELBO is summed over the ranks.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

import fastelbo as fe

from .data import Digits
from .model import DigitsVAE, likelihood_options
from .plain import PlainELBO

PLAIN = "plain"  # the backend name of the plain-PyTorch run (no fastelbo op in its loss)


@dataclass(frozen=True)
class DemoConfig:
    likelihood: str = "bernoulli"
    estimator: str = "elbo"
    n_samples: int = 1
    epochs: int = 30
    batch_size: int = 64
    latent_dim: int = 8
    hidden: int = 256
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"

    @property
    def kl(self) -> str:
        """The analytic KL where the estimator allows it (elbo); IWAE and DReG need MC log-weights."""
        return "analytic" if self.estimator == "elbo" else "mc"


@dataclass
class Run:
    """One training run: its model, optimizer, objective, RNG state and per-epoch record."""

    name: str
    backend: str  # a fastelbo backend, or PLAIN
    model: DigitsVAE
    trained: torch.nn.Module  # what the training steps call: the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    objective: torch.nn.Module  # fe.ELBO, or PlainELBO for the plain run
    rng_state: torch.Tensor
    shuffle: torch.Generator
    train_elbo: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def make_run(name: str, backend: str, config: DemoConfig) -> Run:
    device = torch.device(config.device)
    torch.manual_seed(config.seed)  # the same initial weights and noise stream for every run
    model = DigitsVAE(config.likelihood, latent_dim=config.latent_dim, hidden=config.hidden).to(device)
    if backend == PLAIN:
        objective = PlainELBO(config.likelihood, n_samples=config.n_samples, estimator=config.estimator)
    else:
        objective = fe.ELBO(config.likelihood, n_samples=config.n_samples, kl=config.kl,
                            estimator=config.estimator, backend=backend, **likelihood_options(config.likelihood))
    trained = model
    if _distributed():
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        if dist.get_rank() > 0:
            torch.manual_seed(config.seed + 7919 * dist.get_rank())  # this rank's own noise
    return Run(name, backend, model, trained, torch.optim.Adam(model.parameters(), lr=config.lr), objective,
               _rng_state(device), torch.Generator().manual_seed(config.seed))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _my_rows(batch: torch.Tensor) -> torch.Tensor:
    """This process's slice of a batch of indices (all of it outside torch.distributed)."""
    if not _distributed():
        return batch
    return batch.tensor_split(dist.get_world_size())[dist.get_rank()]


def _rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


@contextlib.contextmanager
def own_rng(run: Run, device: torch.device):
    """Run the block on `run`'s copy of the device's RNG state, restoring the caller's after."""
    outer = _rng_state(device)
    _set_rng_state(device, run.rng_state)
    try:
        yield
    finally:
        run.rng_state = _rng_state(device)
        _set_rng_state(device, outer)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def objective_value(run: Run, data: Digits, x: torch.Tensor, module=None) -> fe.ELBOOutput:
    return (module or run.trained)(x, data.encoder_input(x), run.objective)


def train_epoch(run: Run, data: Digits, config: DemoConfig) -> None:
    """One pass over the training images; appends the epoch's mean ELBO and its wall time."""
    device = torch.device(config.device)
    order = torch.randperm(data.train.shape[0], generator=run.shuffle).to(device)
    run.model.train()
    total = torch.zeros((), dtype=torch.float64, device=device)
    with own_rng(run, device):
        _synchronize(device)
        start = time.perf_counter()
        for batch in order.split(config.batch_size):
            out = objective_value(run, data, data.train[_my_rows(batch)])
            run.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            run.optimizer.step()
            total += out.elbo.detach().sum()
        _synchronize(device)
        run.seconds.append(time.perf_counter() - start)
    if _distributed():
        dist.all_reduce(total)
    run.train_elbo.append(total.item() / data.train.shape[0])


@torch.no_grad()
def test_elbo(run: Run, data: Digits, config: DemoConfig) -> float:
    """The mean objective on the test images, with noise from a fixed seed (the same for every run)."""
    run.model.eval()
    with torch.random.fork_rng(devices=[config.device] if config.device.startswith("cuda") else []):
        torch.manual_seed(config.seed + 1)
        return objective_value(run, data, data.test, module=run.model).elbo.double().mean().item()


def train_runs(config: DemoConfig, data: Digits, runs: list, on_epoch=None) -> list:
    """Train `runs` side by side, one epoch of each in turn; `on_epoch(epoch, *runs)` after each epoch."""
    for epoch in range(1, config.epochs + 1):
        for run in runs:
            train_epoch(run, data, config)
        if on_epoch is not None:
            on_epoch(epoch, *runs)
    return runs


def train_pair(config: DemoConfig, data: Digits, fused_backend: str, on_epoch=None) -> tuple[Run, Run]:
    """Train a fused and a reference run side by side; `on_epoch(epoch, fused, reference)` after each epoch."""
    fused, reference = train_runs(config, data, [make_run("fused", fused_backend, config),
                                                 make_run("reference", "reference", config)], on_epoch)
    return fused, reference


def train_three(config: DemoConfig, data: Digits, fused_backend: str, on_epoch=None) -> tuple[Run, Run, Run]:
    """The demo's runs side by side: fused, reference (for the agreement check) and plain (for the
    speed comparison); `on_epoch(epoch, fused, reference, plain)` after each epoch."""
    fused, reference, plain = train_runs(config, data, [make_run("fused", fused_backend, config),
                                                        make_run("reference", "reference", config),
                                                        make_run(PLAIN, PLAIN, config)], on_epoch)
    return fused, reference, plain
