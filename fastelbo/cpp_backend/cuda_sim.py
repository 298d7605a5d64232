"""The "cuda" backend in the CPU simulator (FASTELBO_CUDA_SIM=1): the CUDA bindings and kernels of
csrc/cuda/, compiled as host C++ against csrc/cuda_sim/ (a CPU model of blocks, barriers, warp
shuffles and shared memory; the CUDA sources are not edited for it), run on CPU tensors.

They are the `.cuda_sim` overload of each fastelbo op: the op modules' schemas, fakes and Python
autograd (fastelbo/ops/_overloads.py, as Triton's `.triton` overload), whose kernels the C++
library registers for the CPU key (csrc/cuda/register.cu built with FASTELBO_CUDA_SIM). So a call
on backend "cuda" goes through the real binding's launch logic (grid and block sizes, row plans,
dtype dispatch, the seed read on the "device") into the real kernels, one simulated thread at a time.

Importing this module builds (if needed) and loads the simulator library; it raises ImportError
with the reason when the library is unavailable.
"""
from __future__ import annotations

import contextlib
import ctypes

import torch

from .. import rng
from ..ops._overloads import define as define_overload
from . import _build

LIBRARY = define_overload("cuda_sim")
# The Philox words of docs/RNG.md (tests compare them bit for bit with the reference's).
LIBRARY.define(f"philox_words.cuda_sim{rng.PHILOX_WORDS_SCHEMA}")
torch.library.register_fake("fastelbo::philox_words.cuda_sim", rng.philox_words_fake, lib=LIBRARY)

_reason = _build.cuda_sim_library()
if _reason is not None:
    raise ImportError(f"fastelbo's CUDA simulator library is unavailable: {_reason}")


@contextlib.contextmanager
def only_blocks(ranges):
    """Inside the block, the simulated kernels launched by this thread run only the blocks whose
    linear index (blockIdx.y * gridDim.x + blockIdx.x) lies in one of `ranges`, [begin, end) pairs;
    the others leave their outputs unwritten. A test hook: it lets the tests run the blocks past
    2^31 elements of a huge tensor (64-bit index arithmetic) without the million blocks before them."""
    library = ctypes.CDLL(_build._results["cuda_sim"].library)
    flat = [int(v) for begin_end in ranges for v in begin_end]
    values = (ctypes.c_int64 * max(1, len(flat)))(*flat)
    library.fastelbo_cuda_sim_set_block_ranges(values, ctypes.c_int64(len(flat) // 2))
    try:
        yield
    finally:
        library.fastelbo_cuda_sim_set_block_ranges(values, ctypes.c_int64(0))
