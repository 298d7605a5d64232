"""CUDA device code run on the CPU: the kernels of csrc/cuda/kernels/ compiled unchanged as host
C++ against the simulator of the CUDA execution model in tests/cpp/cuda_sim/ (cuda_sim.h: blocks
in order, each block's threads as cooperatively scheduled fibers, real barriers and warp
shuffles), held to the reference; and deliberately broken copies of a kernel (a removed
__syncthreads(), a wrong shuffle offset, an off-by-one in a row bound) failing the same
comparison, so a green run means something.

So far the simulator runs the discretized logistic mixture's kernels from a small driver
(tests/cpp/cuda_sim/run_dmol.cpp, which launches them as csrc/cuda/dmol.cu does for contiguous
channels-last tensors); the other kernels, and the ATen bindings themselves, are not run yet.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import generator
from test_dmol import levels, params_for, value_and_grad

ROOT = Path(__file__).resolve().parents[1]
SIM = ROOT / "tests" / "cpp" / "cuda_sim"
GXX = shutil.which("g++")

pytestmark = pytest.mark.skipif(GXX is None, reason="g++ is not on PATH")


def build(csrc: Path, out: Path) -> Path:
    """run_dmol compiled against the kernels under csrc (csrc/cuda/kernels, csrc/core)."""
    cmd = [GXX, "-std=c++17", "-O1", "-include", str(SIM / "cuda_sim.h"), "-I", str(SIM / "include"),
           "-I", str(csrc / "cuda"), str(SIM / "run_dmol.cpp"), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def run_dmol(tmp_path_factory) -> Path:
    return build(ROOT / "csrc", tmp_path_factory.mktemp("cuda_sim") / "run_dmol")


TYPES = {torch.float64: "f64", torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


def simulate(binary: Path, params: torch.Tensor, x: torch.Tensor, n_mix: int, bits: int, tmp: Path):
    """(out, gradient buffer) of the CUDA kernels in the simulator, or None if the run failed
    (a deadlock or a shuffle the simulator refuses)."""
    batch, height, width = x.shape[:3]
    dtype = params.dtype
    names = [tmp / n for n in ("params.bin", "x.bin", "out.bin", "grad.bin")]
    for t, name in ((params, names[0]), (x.to(dtype), names[1])):
        t = t.contiguous()
        (t.view(torch.int16) if dtype in (torch.float16, torch.bfloat16) else t).numpy().tofile(name)
    precision = TYPES[dtype]
    proc = subprocess.run([str(binary), precision, str(batch), str(height * width), str(n_mix), str(bits),
                           *map(str, names)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return None
    np_dtype = np.float64 if dtype == torch.float64 else np.float32  # the compute type
    out = torch.from_numpy(np.fromfile(names[2], dtype=np_dtype))
    grad = torch.from_numpy(np.fromfile(names[3], dtype=np_dtype)).view(params.shape)
    return out, grad


def agrees(binary, shape, n_mix, bits, dtype, seed, tmp) -> bool:
    """The simulated kernels' value and gradient against the float64 reference on the same
    (rounded) inputs (float64: 1e-10; float32 and the half types, which compute in float32: the
    table's float32 tolerances; the gradient buffer is float32 for them, before any rounding to
    the parameters' dtype)."""
    g = generator(seed)
    x = levels(g, shape + (3,), bits)
    params = params_for(g, x, n_mix).to(dtype)
    result = simulate(binary, params, x, n_mix, bits, tmp)
    if result is None:
        return False
    truth = value_and_grad(params.double(), x.to(dtype).double(), "reference", n_mix=n_mix, bits=bits)
    tolerance = (1e-10, 1e-10) if dtype == torch.float64 else (1e-4, 1e-4)
    return all(torch.allclose(a.double(), t, rtol=tolerance[0], atol=tolerance[1]) for a, t in zip(result, truth))


# (images, height, width), n_mix, bits, dtype: rows of a few pixels (a row per group of threads of
# a warp), rows of 323 pixels (a whole block per row, two chunks: the partial-sum kernel), one pixel.
CASES = [((3, 4, 5), 2, 8, torch.float64), ((2, 17, 19), 3, 5, torch.float64), ((2, 4, 5), 10, 8, torch.float32),
         ((1, 1, 1), 1, 8, torch.float64), ((3, 2, 3), 2, 1, torch.float32), ((2, 3, 5), 2, 8, torch.float16),
         ((2, 3, 5), 2, 5, torch.bfloat16)]


@pytest.mark.parametrize("shape,n_mix,bits,dtype", CASES)
def test_dmol_kernels_in_the_simulator(run_dmol, shape, n_mix, bits, dtype, seed, tmp_path):
    assert agrees(run_dmol, shape, n_mix, bits, dtype, seed, tmp_path)


MUTATIONS = {
    # row_sum: the barrier between the warp leaders' writes to shared memory and every thread's reads
    "removed __syncthreads": ("cuda/kernels/common.cuh",
                              "  if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = v;\n  __syncthreads();\n",
                              "  if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = v;\n"),
    # group_sum: the butterfly starting at a quarter of the lanes (half the partners never added)
    "wrong shuffle offset": ("cuda/kernels/common.cuh", "for (int offset = lanes >> 1; offset > 0; offset >>= 1) v +=",
                             "for (int offset = lanes >> 2; offset > 0; offset >>= 1) v +="),
    # the dmol kernel's loop over a row's pixels stopping one short
    "off-by-one row bound": ("cuda/kernels/dmol.cuh", "for (int64_t c = c0 + lane; c < c1; c += tpr)",
                             "for (int64_t c = c0 + lane; c < c1 - 1; c += tpr)"),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_the_simulator_catches_broken_kernels(mutation, tmp_path):
    """A copy of the kernels with one mistake: the comparison that passes above fails (or the run
    stops), on the case that reaches the mistake (rows of 323 pixels: a whole block per row, so
    row_sum goes through shared memory)."""
    path, old, new = MUTATIONS[mutation]
    csrc = tmp_path / "csrc"
    for folder in ("cuda/kernels", "core"):
        shutil.copytree(ROOT / "csrc" / folder, csrc / folder)
    source = (csrc / path).read_text()
    assert source.count(old) == 1, f"the mutation's text is not in {path} once: update the test"
    (csrc / path).write_text(source.replace(old, new))
    binary = build(csrc, tmp_path / "run_dmol_broken")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert not agrees(binary, (2, 17, 19), 3, 5, torch.float64, 11, run_dir)
