"""Test helpers in one place: the backend list, dtypes, fresh seeds (the tolerance table is
fastelbo.testing's, shared with `fastelbo check`).

A new backend joins the whole suite by becoming available in fastelbo.backends() for the device:
BACKENDS is built from it (the backends that run on the suite's DEVICE).
"""
from __future__ import annotations

import os
import random

import pytest
import torch

import fastelbo as fe
from fastelbo._backend import runs_on
from fastelbo.testing import DTYPES

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [name for name, status in fe.backends().items() if status == "available" and runs_on(name, DEVICE)]
FUSED_BACKENDS = [name for name in BACKENDS if name != "reference"]
# Backend "cuda" is the CUDA simulator on CPU tensors here (FASTELBO_CUDA_SIM=1, which
# tests/conftest.py sets without a GPU) and available.
SIMULATED_CUDA = fe._backend.CUDA_SIM and "cuda" in BACKENDS
FLOAT_DTYPES = list(DTYPES)
PARAMS = ["logvar", "log_std", "softplus", "soft_log_std"]

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


def fresh_seed() -> int:
    """A new seed each run (inputs are fresh), or FASTELBO_TEST_SEED to replay a failure."""
    env = os.environ.get("FASTELBO_TEST_SEED")
    return int(env) if env else random.SystemRandom().randrange(2**31)


def generator(seed: int, device=DEVICE) -> torch.Generator:
    return torch.Generator(device).manual_seed(seed)


def randn(g, *shape, dtype=torch.float64, scale=1.0):
    return torch.randn(*shape, generator=g, dtype=dtype, device=g.device) * scale


def rand(g, *shape, dtype=torch.float64, low=0.0, high=1.0):
    return low + (high - low) * torch.rand(*shape, generator=g, dtype=dtype, device=g.device)
