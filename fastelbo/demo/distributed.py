"""`fastelbo demo --nproc N`: the demo in N processes under torch.distributed.

torch.multiprocessing starts N workers; each joins one process group (gloo for CPU tensors, nccl
for CUDA ones, rank r on GPU r) through a rendezvous file in a temporary folder, runs the demo's
training as rank r of N (train.py: DistributedDataParallel, 1/N of every batch per rank) and writes
its exit status where the launcher reads it. Under torchrun (`torchrun --nproc-per-node N -m
fastelbo demo`), each process torchrun starts joins through torchrun's environment instead.
"""
from __future__ import annotations

import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def launch(train_and_report, args) -> int:
    """Run train_and_report(args, rank, world) in args.nproc processes; the worst exit status."""
    world = args.nproc
    device = torch.device(args.device)
    if device.type == "cuda" and torch.cuda.device_count() < world:
        raise SystemExit(f"--nproc {world} on CUDA needs {world} GPUs; this machine has {torch.cuda.device_count()}")
    if device.type == "cpu" and not dist.is_gloo_available():
        raise SystemExit("--nproc on CPU needs torch.distributed with gloo, which this torch build lacks")
    with tempfile.TemporaryDirectory(prefix="fastelbo-demo-") as folder:
        mp.spawn(_worker, args=(world, folder, train_and_report, args), nprocs=world, join=True)
        statuses = [int(open(os.path.join(folder, f"status{rank}")).read()) for rank in range(world)]
    return max(statuses)


def run_under_torchrun(train_and_report, args) -> int:
    """`torchrun --nproc-per-node N -m fastelbo demo ...`: this process is rank $RANK of $WORLD_SIZE."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    _join(args, rank, world, int(os.environ.get("LOCAL_RANK", rank)), "env://")
    try:
        return train_and_report(args, rank, world)
    finally:
        dist.destroy_process_group()


def _worker(rank: int, world: int, folder: str, train_and_report, args) -> None:
    _join(args, rank, world, rank, f"file://{os.path.join(folder, 'rendezvous')}")
    try:
        status = train_and_report(args, rank, world)
    finally:
        dist.destroy_process_group()
    with open(os.path.join(folder, f"status{rank}"), "w") as f:
        f.write(str(status))
    exit_without_teardown()


def exit_without_teardown() -> None:
    """End a worker process now, its work done and written: with torch 2.13's CPU build, a process
    that used gloo aborts now and then in its static destructors at exit ("terminate called without
    an active exception"; plain torch DDP, two processes, one step: 6 of 40 runs), which
    torch.multiprocessing reports as a failed worker. os._exit skips those destructors."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _join(args, rank: int, world: int, local_rank: int, init_method: str) -> None:
    """Join the process group: on CUDA, GPU `local_rank` and nccl; on CPU, gloo and a share of the cores."""
    cuda = torch.device(args.device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
        args.device = f"cuda:{local_rank}"
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("nccl" if cuda else "gloo", init_method=init_method, rank=rank, world_size=world)
