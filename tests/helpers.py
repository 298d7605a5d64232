"""Test helpers in one place: the backend list, dtypes, the tolerance table, fresh seeds.

A new backend joins the whole suite by becoming available in fastelbo.backends() for the device:
BACKENDS is built from it.
"""
from __future__ import annotations

import os
import random

import pytest
import torch

import fastelbo as fe
from fastelbo.testing import DTYPES, TOLERANCES, assert_close  # noqa: F401  (re-exported)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [name for name, status in fe.backends().items() if status == "available"]
FUSED_BACKENDS = [name for name in BACKENDS if name != "reference"]
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
PARAMS = ["logvar", "log_std", "softplus"]

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


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
