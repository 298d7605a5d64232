import os

import torch

# Without a GPU, Triton kernels run on CPU tensors in Triton's interpreter, and the CUDA kernels in
# fastelbo's CPU simulator (backend "cuda" on CPU tensors). Triton reads its variable when a kernel
# module is imported, fastelbo its own when it is imported: both are set here, before any test
# module imports either.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("FASTELBO_CUDA_SIM", "1")

import pytest

from helpers import fresh_seed


@pytest.fixture
def seed(request):
    """A fresh seed per test, shown in the report so a failure can be replayed with
    FASTELBO_TEST_SEED=<seed>."""
    value = fresh_seed()
    request.node.user_properties.append(("seed", value))
    print(f"seed={value}")
    return value
