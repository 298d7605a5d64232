"""CUDA code run on the CPU, in fastelbo's simulator of the CUDA execution model (csrc/cuda_sim/:
blocks in order, each block's threads as cooperatively scheduled fibers, real barriers and warp
shuffles).

Under FASTELBO_CUDA_SIM=1 (tests/conftest.py sets it without a GPU) the "cuda" backend runs the
real bindings and kernels of csrc/cuda/ on CPU tensors, so the whole suite (every op case in every
dtype, gradcheck, the layouts, compile, the hostile inputs) runs over them; this file adds what is
particular to the CUDA code: its Philox words and noise against docs/RNG.md, the same eps as the
other backends from one generator state, and the simulator's own checks.

The simulator must be able to fail: deliberately broken copies of a kernel (a removed
__syncthreads(), a wrong shuffle offset, an off-by-one in a row bound; a shuffle only half its
mask reaches, a shuffle naming an exited lane) run in a torch-free driver (tests/cpp/cuda_sim/run_dmol.cpp,
which launches the discretized logistic mixture's kernels as csrc/cuda/dmol.cu does for contiguous
channels-last tensors) and fail the comparison with the reference, or stop with the simulator's
error, where the unbroken kernels pass.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fastelbo as fe
from fastelbo import rng
from helpers import SIMULATED_CUDA, generator
from test_dmol import levels, params_for, value_and_grad

ROOT = Path(__file__).resolve().parents[1]
SIM = ROOT / "csrc" / "cuda_sim"
DRIVER = ROOT / "tests" / "cpp" / "cuda_sim" / "run_dmol.cpp"
GXX = shutil.which("g++")

pytestmark = pytest.mark.skipif(GXX is None, reason="g++ is not on PATH")


def build(csrc: Path, out: Path, source: Path = DRIVER) -> Path:
    """A torch-free driver (default run_dmol) compiled on the simulator against the kernels under
    csrc (csrc/cuda/kernels, csrc/core)."""
    cmd = [GXX, "-std=c++17", "-O1", "-include", str(SIM / "cuda_sim.h"), "-I", str(SIM / "include"),
           "-I", str(csrc / "cuda"), str(source), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def run_dmol(tmp_path_factory) -> Path:
    return build(ROOT / "csrc", tmp_path_factory.mktemp("cuda_sim") / "run_dmol")


TYPES = {torch.float64: "f64", torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


def simulate(binary: Path, params: torch.Tensor, x: torch.Tensor, n_mix: int, bits: int, tmp: Path, errors=None):
    """(out, gradient buffer) of the CUDA kernels in the simulator, or None if the run failed
    (a deadlock or a shuffle the simulator refuses: its message appended to `errors`)."""
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
        if errors is not None:
            errors.append(proc.stderr)
        return None
    np_dtype = np.float64 if dtype == torch.float64 else np.float32  # the compute type
    out = torch.from_numpy(np.fromfile(names[2], dtype=np_dtype))
    grad = torch.from_numpy(np.fromfile(names[3], dtype=np_dtype)).view(params.shape)
    return out, grad


def agrees(binary, shape, n_mix, bits, dtype, seed, tmp, errors=None) -> bool:
    """The simulated kernels' value and gradient against the float64 reference on the same
    (rounded) inputs (float64: 1e-10; float32 and the half types, which compute in float32: the
    table's float32 tolerances; the gradient buffer is float32 for them, before any rounding to
    the parameters' dtype)."""
    g = generator(seed)
    x = levels(g, shape + (3,), bits)
    params = params_for(g, x, n_mix).to(dtype)
    result = simulate(binary, params, x, n_mix, bits, tmp, errors)
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

# Mistakes a device would hang or fault on: the simulator stops the launch with its error.
HANGS = {
    # group_sum's shuffles called by half of each warp with the full mask: those lanes wait for the
    # other half, which waits for the block at row_sum's __syncthreads() (a hang on the device)
    "divergent shuffle": ("cuda/kernels/common.cuh",
                          "for (int offset = lanes >> 1; offset > 0; offset >>= 1) v += __shfl_xor_sync(",
                          "for (int offset = lanes >> 1; offset > 0; offset >>= 1)\n"
                          "    if ((threadIdx.x & 31) < 16) v += __shfl_xor_sync(",
                          "deadlock"),
    # one lane of every other warp leaves row_sum before its warp sum and goes on to exit: the
    # full mask of its warp's shuffle names a lane that has exited
    "shuffle with exited lanes": ("cuda/kernels/common.cuh",
                                  "  if (tpr <= 32) return group_sum(v, tpr);\n",
                                  "  if (tpr <= 32) return group_sum(v, tpr);\n  if (threadIdx.x % 64 == 63) return v;\n",
                                  "exited"),
}


def broken_copy(tmp_path: Path, path: str, old: str, new: str) -> Path:
    """run_dmol built against a copy of csrc's kernels with `old` replaced by `new` in `path`."""
    csrc = tmp_path / "csrc"
    for folder in ("cuda/kernels", "core"):
        shutil.copytree(ROOT / "csrc" / folder, csrc / folder)
    source = (csrc / path).read_text()
    assert source.count(old) == 1, f"the mutation's text is not in {path} once: update the test"
    (csrc / path).write_text(source.replace(old, new))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return build(csrc, tmp_path / "run_dmol_broken")


def test_the_simulators_own_rules(tmp_path):
    """tests/cpp/cuda_sim/sim_unit.cpp on tiny kernels: the two thread orders (over the blocks of a
    launch and over launches), a missing barrier caught whether the reader reads a later thread's
    slot (the forward order catches it) or an earlier one's (only the reverse order does), shuffles
    under partial masks, a hang and a shuffle naming exited lanes reported (in both orders: lanes
    exiting before the shuffle's lanes wait, and after), a launch after a failure running again."""
    binary = build(ROOT / "csrc", tmp_path / "sim_unit", DRIVER.parent / "sim_unit.cpp")
    env = {k: v for k, v in os.environ.items() if k != "FASTELBO_CUDA_SIM_ORDER"}
    proc = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300, env=env)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(lines) == 12 and all(line.startswith("ok ") for line in lines), proc.stdout
    # Forcing one order (FASTELBO_CUDA_SIM_ORDER, for replaying a failure) loses one of the two readers.
    for order, missed in (("forward", "previous"), ("reverse", "next")):
        proc = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300,
                              env=dict(env, FASTELBO_CUDA_SIM_ORDER=order))
        assert f"FAIL without the barrier, reading the {missed} thread's slot goes wrong" in proc.stdout, proc.stdout


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_the_simulator_catches_broken_kernels(mutation, tmp_path):
    """A copy of the kernels with one mistake: the comparison that passes above fails (or the run
    stops), on the case that reaches the mistake (rows of 323 pixels: a whole block per row, so
    row_sum goes through shared memory)."""
    binary = broken_copy(tmp_path, *MUTATIONS[mutation])
    assert not agrees(binary, (2, 17, 19), 3, 5, torch.float64, 11, tmp_path / "run")


@pytest.mark.parametrize("mutation", list(HANGS))
def test_the_simulator_stops_hangs_and_bad_shuffles(mutation, tmp_path):
    """A shuffle some lanes of its mask never reach, a shuffle whose mask names exited lanes: a hang
    or undefined on the device, an error here (the launch check raises it in the bindings)."""
    path, old, new, message = HANGS[mutation]
    binary = broken_copy(tmp_path, path, old, new)
    errors = []
    assert not agrees(binary, (2, 17, 19), 3, 5, torch.float64, 11, tmp_path / "run", errors)
    assert errors and "cuda_sim: " in errors[0] and message in errors[0], errors


# ---- the "cuda" backend in the simulator (FASTELBO_CUDA_SIM=1) ----

needs_sim = pytest.mark.skipif(not SIMULATED_CUDA,
                               reason="the CUDA simulator runs under FASTELBO_CUDA_SIM=1 (tests/conftest.py sets it "
                                      "without a GPU)")


@needs_sim
def test_philox_words_match_bit_for_bit(seed):
    """csrc/core/philox.h as the simulated CUDA kernel runs it: fastelbo/rng.py's words, the known
    answer included."""
    g = generator(seed, "cpu")
    counter = torch.randint(0, 2**32, (4, 300), generator=g, dtype=torch.int64)
    key = torch.randint(0, 2**32, (2, 300), generator=g, dtype=torch.int64)
    counter[:, 0], key[:, 0] = 0, 0  # the Random123 known-answer vector
    counter[:, 1], key[:, 1] = 0xFFFFFFFF, 0xFFFFFFFF
    got = torch.ops.fastelbo.philox_words.cuda_sim(counter, key)
    assert torch.equal(got, torch.stack(rng.philox4x32_10(tuple(counter), tuple(key))))
    assert [hex(int(w)) for w in got[:, 0]] == ["0x6627e8d5", "0xe169c58d", "0xbc57ac4c", "0x9b00dbd8"]


@needs_sim
@pytest.mark.parametrize("n_samples,n_rows,dim", [(1, 5, 1), (3, 7, 13), (2, 33, 4), (1, 3, 260)])
def test_noise_matches_the_reference_scheme(n_samples, n_rows, dim, seed):
    s = rng.draw_seed(torch.device("cpu"), generator(seed, "cpu"))
    op = torch.ops.fastelbo.normal_noise.cuda_sim
    torch.testing.assert_close(op(s, n_samples, n_rows, dim, False), rng.normal_noise(s, n_samples, n_rows, dim),
                               rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(op(s, n_samples, n_rows, dim, True),
                               rng.normal_noise(s, n_samples, n_rows, dim, torch.float64), rtol=1e-14, atol=1e-14)


@needs_sim
def test_same_generator_state_same_z_on_every_backend(seed):
    """docs/RNG.md's promise across backends: one generator state, one eps (to float rounding)."""
    mu = torch.zeros(6, 9)
    others = [b for b in ("reference", "cpu", "triton") if fe.backends()[b] == "available"]
    z = {b: fe.gaussian_latent(mu, mu, n_samples=2, generator=generator(seed, "cpu"), backend=b).z
         for b in ["cuda"] + others}
    for b in others:
        torch.testing.assert_close(z["cuda"], z[b], rtol=2e-6, atol=2e-6, msg=b)


@needs_sim
def test_the_bindings_checks_run_in_the_simulator():
    """The call goes through the real binding: its own argument checks (csrc/binding/checks.h)."""
    with pytest.raises(ValueError, match="x of shape"):
        torch.ops.fastelbo.bernoulli_log_prob.cuda_sim(torch.zeros(2, 3), torch.zeros(2, 4), 1, False)


def _asan_runtime() -> str | None:
    """The AddressSanitizer runtime of the compiler the library is built with (as
    fastelbo/cpp_backend/_build.py picks it: $CXX, else c++, else g++), or None."""
    compiler = shutil.which((os.environ.get("CXX") or "c++").split()[0]) or GXX
    if compiler is None:
        return None
    proc = subprocess.run([compiler, "-print-file-name=libasan.so"], capture_output=True, text=True)
    path = proc.stdout.strip()
    return os.path.realpath(path) if os.path.isabs(path) and os.path.exists(path) else None


@needs_sim
@pytest.mark.skipif(_asan_runtime() is None, reason="gcc's AddressSanitizer runtime (libasan) is not installed")
def test_the_cuda_kernels_stay_in_bounds_under_addresssanitizer():
    """Every op case in every dtype and the fused-backend tests on the "cuda" backend, with the
    simulator library built with AddressSanitizer (FASTELBO_CUDA_SIM_ASAN=1): a read or write of a
    kernel outside every live allocation (into ASan's redzones around each tensor's memory, or
    freed memory), which on the CPU might only read a neighbour's bytes, stops the run with ASan's
    report. The library it loads must be the instrumented one."""
    probe = ("from fastelbo.cpp_backend import _build; assert _build.cuda_sim_library() is None; "
             "print(_build._results['cuda_sim'].library)")
    env = dict(os.environ, FASTELBO_CUDA_SIM="1", FASTELBO_CUDA_SIM_ASAN="1", LD_PRELOAD=_asan_runtime(),
               ASAN_OPTIONS="detect_leaks=0:detect_stack_use_after_return=0:halt_on_error=1")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    library = proc.stdout.strip().splitlines()[-1]
    assert "_asan_" in os.path.basename(library) and b"__asan_report_load" in Path(library).read_bytes()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda",
                           "tests/test_backends_vs_reference.py", "tests/test_fused_backends.py"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "ERROR: AddressSanitizer" not in output, output[-4000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


@needs_sim
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channel_dim", [-1, 1])
def test_dmol_rows_of_several_chunks_through_the_binding(dtype, channel_dim, seed):
    """Images of 323 pixels: a whole block per row, split into two chunks whose partial sums the
    second kernel adds (dmol_sum_partials_kernel), on the "cuda" backend against the reference,
    value and gradient (the op cases' images are too small to reach it)."""
    g = generator(seed, "cpu")
    x = levels(g, (2, 17, 19, 3), 8)
    params = params_for(g, x, 3).to(dtype)
    if channel_dim == 1:
        params, x = params.permute(0, 3, 1, 2), x.permute(0, 3, 1, 2)  # NCHW views, no copy
    got = value_and_grad(params, x.to(dtype), "cuda", n_mix=3, bits=8, channel_dim=channel_dim)
    want = value_and_grad(params.double(), x.double(), "reference", n_mix=3, bits=8, channel_dim=channel_dim)
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=tolerance, atol=tolerance)
