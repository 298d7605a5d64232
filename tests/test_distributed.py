"""torch.distributed: fastelbo ops inside DistributedDataParallel (gloo, 2 processes on CPU) give the
gradients of one process on the same global batch."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastelbo as fe
from fastelbo.demo.distributed import exit_without_teardown

from helpers import BACKENDS

CPU_BACKENDS = [b for b in BACKENDS if b in ("reference", "cpu")]  # those taking CPU tensors natively
CONFIGS = [(backend, estimator) for backend in CPU_BACKENDS for estimator in ("elbo", "dreg")]
WORLD = 2
BATCH, DX, D, K = 8, 10, 3, 3


class VAE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Linear(DX, 2 * D)
        self.dec = torch.nn.Linear(D, DX)

    def forward(self, x, eps, backend, estimator):
        mu, logvar = self.enc(x).chunk(2, dim=-1)
        lat = fe.gaussian_latent(mu, logvar, n_samples=K, eps=eps, backend=backend)
        log_lik = fe.bernoulli_log_prob(self.dec(lat.z), x, backend=backend)
        with fe.use_backend(backend):
            value = fe.elbo(log_lik, lat, kl="analytic" if estimator == "elbo" else "mc", estimator=estimator)
        return -value.mean()


def problem(seed):
    """The model (the same weights in every process), the global batch and its noise."""
    torch.manual_seed(seed)
    model = VAE()
    g = torch.Generator().manual_seed(seed + 1)
    x = (torch.rand(BATCH, DX, generator=g) < 0.5).float()
    eps = torch.randn(K, BATCH, D, generator=g)
    return model, x, eps


def gradients(model, loss):
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def worker(rank, init_file, out_dir, seed):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    results = {}
    rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    for backend, estimator in CONFIGS:
        model, x, eps = problem(seed)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        results[backend, estimator] = gradients(model, ddp(x[rows], eps[:, rows], backend, estimator))
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()
    exit_without_teardown()  # (gloo's teardown at exit aborts now and then: see its docstring)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo")
@pytest.mark.skipif(not CPU_BACKENDS, reason="no backend for CPU tensors")
def test_ddp_gradients_equal_single_process(tmp_path, seed):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path), seed), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for backend, estimator in CONFIGS:
        model, x, eps = problem(seed)
        want = gradients(model, model(x, eps, backend, estimator))
        for rank in ranks:
            for got, expected in zip(rank[backend, estimator], want):
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
