"""64-bit indexing, proven two ways.

Unit tests of the offset arithmetic, on sizes, strides and rows past 2^31 and 2^32 without
allocating anything that large:
  * csrc/core/layout.h (row_offset), csrc/binding/plan.h (plan_rows, on meta tensors) and the noise
    counter of csrc/core/philox.h and csrc/cpu/noise.h, through a test-only extension
    (tests/cpp/offsets.cpp), against Python's exact integers, the element's true address and
    fastelbo/rng.py's counter map (row split into its lo/hi 32-bit words);
  * the CUDA kernels' host-callable helpers (csrc/cuda/kernels/common.cuh: launch geometry, and
    csrc/core/ as nvcc compiles it) in a host program built with nvcc (tests/cpp/cuda_geometry.cu);
  * the Triton noise counter of rows past 2^32 (the Triton row_offset is pinned in
    tests/test_triton_backend.py).

Real kernels past 2^31 elements (marked `large`: deselect with -m "not large"), on the "cpu"
backend when the machine has the memory (MemAvailable), on "cuda" and "triton" when a GPU is
present, and on the CUDA kernels in the simulator (FASTELBO_CUDA_SIM=1) on the blocks of the rows
checked only: every big tensor repeats a small pattern, so each row of the result is checked against
the same backend on the pattern (and that against the reference) -- a wrapped or truncated offset
reads or writes the wrong row and fails. Likelihood forward and gradient buffers, the full
likelihood backward, the latent's K samples and its backward (eps regenerated at rows past 2^31).
"""
from __future__ import annotations

import contextlib
import gc
import importlib
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import fastelbo as fe
from fastelbo import rng
from helpers import SIMULATED_CUDA, generator, needs_triton

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
CPP_TESTS = Path(__file__).resolve().parent / "cpp"
MASK32 = 0xFFFFFFFF
GiB = 2**30
TWO_31 = 2**31

# Rows and strides past 2^31 and 2^32, e.g. 3 * 2^31 + 5 rows and row strides near 2^40.
BIG_ROWS = [0, 1, 2**31 - 1, 2**31, 2**31 + 5, 2**32 - 1, 2**32, 2**32 + 1, 3 * 2**31 + 5, 3 * 2**32 + 7,
            2**40 + 123, 2**47 - 1]


# ---- the test-only extension over csrc/ ----

@pytest.fixture(scope="module")
def offsets():
    """tests/cpp/offsets.cpp, built just in time (cached under TORCH_EXTENSIONS_DIR like the backend)."""
    from fastelbo.cpp_backend import _build

    if _build.cpu_library() is not None:
        pytest.skip(f"the C++ library is unavailable: {_build.cpu_library()}")
    from torch.utils.cpp_extension import load

    # The backend's instruction-set flags, so that noise.h takes the path the backend's kernels take.
    flags = _build._CPU_FLAGS.get(_build.cpu_capability(), [])
    return load(name="fastelbo_test_offsets", sources=[str(CPP_TESTS / "offsets.cpp")],
                extra_include_paths=[str(CSRC)], extra_cflags=["-O1", *flags],
                verbose=os.environ.get("FASTELBO_BUILD_VERBOSE") == "1")


def _row_offset(r, n1, n2, s0, s1, s2):
    """The formula of layout.h in Python integers."""
    i2, rest = r % n2, r // n2
    return (rest // n1) * s0 + (rest % n1) * s1 + i2 * s2


def test_row_offset_is_exact_past_2_32(offsets):
    cases = [  # (rows, cols, n1, n2), (s0, s1, s2, sc)
        ((3 * 2**31 + 6, 4099, 1, 1), (4099, 0, 0, 1)),                      # contiguous, odd row length
        ((3 * 2**31 + 6, 4099, 1, 1), (0, 0, 0, 1)),                         # broadcast (stride 0)
        ((2**40 + 124, 7, 1, 1), (2**20 + 7, 0, 0, 3)),                      # rows past 2^40
        ((5 * (2**20 + 1) * 2**21, 9, 2**20 + 1, 2**21), (2**40 + 3, 2**13 + 1, 9, 1)),  # three row dims
        ((3 * 2**31 + 6, 3, 3, 2**31 + 2), (2**33 + 17, 2**22 + 3, 5, 7)),
    ]
    for (rows, cols, n1, n2), strides in cases:
        sample = [r for r in BIG_ROWS if r < rows] + [rows - 1, rows - n2, rows // 2 + 1]
        got = offsets.row_offsets(sample, (rows, cols, n1, n2), strides)
        want = [_row_offset(r, n1, n2, *strides[:3]) for r in sample]
        assert max(want) < 2**63
        assert got == want, ((rows, cols, n1, n2), strides)


def _meta(shape, strides):
    return torch.empty_strided(shape, strides, device="meta")


def _layouts():
    """(name, tensors, event_dims): logical layouts whose elements lie past 2^31 and 2^32, as meta
    tensors (sizes and strides, no storage)."""
    contiguous = _meta((2**31 + 11, 4099), (4099, 1))
    permuted = _meta((5, 2**31 + 3, 7), ((2**31 + 3) * 7, 7, 1)).permute(1, 0, 2)  # batch dims not mergeable
    sliced = _meta((2**33, 8), (8, 1))[::3, ::2]                                       # row and column steps
    three = _meta((3, 2**20 + 1, 2**11 + 3, 9), (2**40 + 3, 2**13 + 1, 9 * 2**11 + 31, 1))
    four = _meta((3, 5, 2**20 + 1, 2**11 + 3, 9), (2**41, 2**40 + 3, 2**13 + 1, 9 * 2**11 + 31, 1))
    events = _meta((2**31 + 1, 3, 5), (15, 5, 1))
    x_row = _meta((1, 4099), (4099, 1)).expand(2**31 + 11, 4099)                         # broadcast data
    x_cols = _meta((2**31 + 3, 1, 7), (7, 7, 1)).expand(2**31 + 3, 5, 7)
    return [
        ("contiguous + broadcast x", [contiguous, x_row], 1),
        ("permuted + broadcast x", [permuted, x_cols], 1),
        ("row and column steps", [sliced], 1),
        ("three row dims", [three], 1),
        ("four row dims (copied)", [four], 1),
        ("two event dims", [events], 2),
    ]


def _unravel(index, shape):
    out = []
    for n in reversed(shape):
        out.append(index % n)
        index //= n
    return list(reversed(out))


@pytest.mark.parametrize("case", range(len(_layouts())), ids=[c[0] for c in _layouts()])
def test_plan_addresses_every_element_exactly(offsets, case):
    """plan_rows (plan.h) on tensors past 2^31 elements: the same plan as the Triton planner, and for
    rows and columns near every boundary, row_offset + col * sc is the element's true address
    sum_i index_i * stride_i of the tensor the kernel reads."""
    from fastelbo.triton_backend._layout import plan as python_plan

    _, tensors, event_dims = _layouts()[case]
    rows, cols, n1, n2, strides, copied = offsets.plan(tensors, event_dims)
    planned, layout = python_plan(list(tensors), event_dims)
    assert (rows, cols, n1, n2) == (layout.rows, layout.cols, layout.n1, layout.n2)
    assert [tuple(s) for s in strides] == list(layout.strides)
    assert copied == [p is not t for p, t in zip(planned, tensors)]
    shape = tuple(tensors[0].shape)
    batch, event = shape[: len(shape) - event_dims], shape[len(shape) - event_dims:]
    assert rows == math.prod(batch) and cols == math.prod(event) and rows * cols > 2**31
    sample_rows = sorted({r for r in BIG_ROWS + [rows - 1, rows - 2, rows // 2, n2, n1 * n2 - 1] if 0 <= r < rows})
    sample_cols = sorted({0, 1, cols // 2, cols - 1} & set(range(cols)))
    for t, p, (s0, s1, s2, sc) in zip(tensors, planned, strides):
        got_rows = offsets.row_offsets(sample_rows, (rows, cols, n1, n2), (s0, s1, s2, sc))
        for r, row_base in zip(sample_rows, got_rows):
            for c in sample_cols:
                index = _unravel(r, batch) + _unravel(c, event)
                assert row_base + c * sc == sum(i * s for i, s in zip(index, p.stride())), (r, c)


def _counter(seed, k, r, d):
    """fastelbo/rng.py's counter map (docs/RNG.md §2) and key, in Python integers."""
    return [d // 4, r & MASK32, r >> 32, k, seed & MASK32, seed >> 32]


def _eps(seed: int, k: int, rows, dim: int, device="cpu") -> torch.Tensor:
    """eps of rows `rows` (int64 tensor of any values, past 2^32 too) of sample k, (len(rows), dim)
    in float64, by fastelbo/rng.py's philox4x32_10 and box_muller: without building the whole z."""
    rows = torch.as_tensor(rows, dtype=torch.int64, device=device).view(-1, 1)
    groups = (dim + 3) // 4
    g = torch.arange(groups, dtype=torch.int64, device=device).view(1, -1).expand(rows.shape[0], groups)
    r = rows.expand_as(g)
    counter = (g, r & MASK32, r >> 32, torch.full_like(g, k))
    key = (torch.tensor(seed & MASK32, device=device), torch.tensor(seed >> 32, device=device))
    w0, w1, w2, w3 = rng.philox4x32_10(counter, key)
    n0, n1 = rng.box_muller(w0, w1, torch.float64)
    n2, n3 = rng.box_muller(w2, w3, torch.float64)
    return torch.stack((n0, n1, n2, n3), dim=-1).reshape(rows.shape[0], 4 * groups)[:, :dim]


def test_noise_counter_of_rows_past_2_32(offsets):
    """core::noise_counter and seed_key give rng.py's counter of element (k, r, d) (row split into
    its lo and hi words), and core::philox4x32_10 the same words."""
    seeds = [0, 1, 2**32 - 1, 2**32, 2**62 + 2**40 + 12345, 2**63 - 2]
    elements = [(k, r, d) for k in (0, 1, 2**20 + 3, 2**31 - 1, 2**32 - 1) for r in BIG_ROWS for d in (0, 3, 4, 4099)]
    for seed in seeds:
        for k, r, d in elements:
            assert offsets.counter(seed, k, r, d) == _counter(seed, k, r, d), (seed, k, r, d)
    seed = seeds[4]
    c = torch.tensor([_counter(seed, k, r, d) for k, r, d in elements], dtype=torch.int64).T
    want = torch.stack(rng.philox4x32_10(tuple(c[:4]), (c[4], c[5]))).T.tolist()
    assert [offsets.words(seed, k, r, d) for k, r, d in elements] == want


def test_cpu_noise_of_rows_past_2_32(offsets, seed):
    """The CPU kernels' eps of one (row, sample) (EpsSource::row, csrc/cpu/noise.h) equals
    rng.py's at rows past 2^32, and the row's hi word matters: row r and row r + 2^32 differ."""
    seed_t = rng.draw_seed(torch.device("cpu"), generator(seed, "cpu"))
    s, dim = int(seed_t), 4099
    for r, k in [(2**31 + 5, 0), (2**32 + 1, 7), (3 * 2**32 + 7, 2**31 - 1), (2**40 + 123, 3)]:
        got = offsets.noise_row(seed_t, r + 1, dim, r, k, r)
        torch.testing.assert_close(got.double(), _eps(s, k, [r], dim)[0], rtol=2e-6, atol=2e-6)
    assert not torch.allclose(offsets.noise_row(seed_t, 2**33, dim, 2**32 + 1, 0, 2**32 + 1),
                              offsets.noise_row(seed_t, 2**33, dim, 1, 0, 1))
    # Short rows: one block of noise (32 rows of 6) holds rows on both sides of 2^32 and of 2^33
    # (the low word wraps inside the block, the high word carries).
    for boundary in (2**32, 2**33):
        first = boundary - 5
        for r in (boundary - 5, boundary - 1, boundary, boundary + 20):
            got = offsets.noise_row(seed_t, boundary + 64, 6, r, 1, first)
            torch.testing.assert_close(got.double(), _eps(s, 1, [r], 6)[0], rtol=2e-6, atol=2e-6)


# ---- the CUDA kernels' host-callable helpers, built with nvcc ----

NVCC = shutil.which("nvcc")


@pytest.fixture(scope="module")
def cuda_geometry(tmp_path_factory):
    if NVCC is None:
        pytest.skip("nvcc is not on PATH")
    exe = tmp_path_factory.mktemp("cuda_geometry") / "cuda_geometry"
    proc = subprocess.run([NVCC, "-std=c++17", f"-I{CSRC}", "-o", str(exe), str(CPP_TESTS / "cuda_geometry.cu")],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, proc.stdout

    def query(lines: list[str]) -> list[list[int]]:
        out = subprocess.run([str(exe)], input="\n".join(lines) + "\n", stdout=subprocess.PIPE, text=True, check=True)
        return [[int(v) for v in line.split()] for line in out.stdout.splitlines()]

    return query


def test_cuda_launch_geometry_covers_rows_past_2_31(cuda_geometry):
    """The grids of the CUDA kernels (common.cuh: latent_blocks, likelihood_blocks, column_grid,
    flat_blocks) cover every row of tensors past 2^31 elements and rows, and stay within CUDA's
    limits (grid x < 2^31 for any tensor of at most 2^40 elements, grid y <= 65535); the kernels
    (csrc/cuda/kernels/*.cuh) index with row = int64(blockIdx.x) * rows_per_block + threadIdx.x /
    threads, as the last thread's row below."""
    block, int32_max = 256, 2**31 - 1
    shapes = [(rows, cols) for rows in (1, 7, 2**31 - 1, 2**31 + 5, 3 * 2**31 + 5, 2**33 + 1)
              for cols in (1, 4, 5, 127, 513, 1001, 4099, 2**20 + 3)]
    answers = cuda_geometry([f"geometry {r} {c}" for r, c in shapes])
    for (rows, cols), (lanes, l_blocks, tpr, lk_blocks, col_threads, col_tiles, chunks, per_chunk, flat) in zip(
            shapes, answers):
        fits = rows * cols <= 2**40  # any tensor a GPU can hold
        for threads, blocks in ((lanes, l_blocks), (tpr, lk_blocks)):
            assert threads & (threads - 1) == 0 and 1 <= threads <= block
            rows_per_block = block // threads
            last_row = (blocks - 1) * rows_per_block + (block - 1) // threads  # the last thread's row
            assert last_row >= rows - 1 and (blocks - 1) * rows_per_block < rows, (rows, cols)
            assert blocks <= int32_max or not fits, (rows, cols)
        assert lanes <= 32 and math.ceil(math.ceil(cols / 4) / lanes) * lanes * 4 >= cols
        assert col_tiles * col_threads >= cols and col_tiles <= int32_max
        assert chunks <= 65535 and chunks * per_chunk >= rows and (chunks - 1) * per_chunk < rows
        assert flat == min(math.ceil(rows / block), 2**22)


def test_cuda_core_index_functions_under_nvcc(cuda_geometry):
    """csrc/core/ as nvcc compiles it (__host__ __device__): row_offset and noise_counter exact."""
    rows, cols, n1, n2, st = 3 * 2**31 + 6, 3, 3, 2**31 + 2, (2**33 + 17, 2**22 + 3, 5, 7)
    sample = [r for r in BIG_ROWS if r < rows] + [rows - 1]
    got = cuda_geometry([f"offset {r} {rows} {cols} {n1} {n2} {' '.join(map(str, st))}" for r in sample])
    assert [g[0] for g in got] == [_row_offset(r, n1, n2, *st[:3]) for r in sample]
    elements = [(k, r, d) for k in (0, 5, 2**32 - 1) for r in BIG_ROWS for d in (0, 7, 4099)]
    got = cuda_geometry([f"counter {d // 4} {r} {k}" for k, r, d in elements])
    assert got == [_counter(0, k, r, d)[:4] for k, r, d in elements]


# ---- the Triton noise counter past 2^32 ----

try:
    import triton
    import triton.language as tl

    from fastelbo.triton_kernels.rng import normal_lanes, seed_key

    @triton.jit
    def _lanes_kernel(seed_ptr, rows_ptr, groups_ptr, out_ptr, sample, N: tl.constexpr):
        k0, k1 = seed_key(seed_ptr)
        i = tl.arange(0, N)
        n0, n1, n2, n3 = normal_lanes(k0, k1, tl.load(groups_ptr + i), tl.load(rows_ptr + i), sample, tl.float32)
        tl.store(out_ptr + i, n0)
        tl.store(out_ptr + N + i, n1)
        tl.store(out_ptr + 2 * N + i, n2)
        tl.store(out_ptr + 3 * N + i, n3)
except ImportError:  # the test is skipped without triton
    pass


@needs_triton
@pytest.mark.skipif(fe.backends()["triton"] != "available", reason="backend 'triton' is unavailable here")
def test_triton_noise_of_rows_past_2_32(seed):
    """triton_kernels/rng.py's normal_lanes at rows past 2^32 (lo and hi words) and sample 2^31 - 1
    gives rng.py's eps of those elements (Triton's interpreter on CPU tensors without a GPU)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    seed_t = rng.draw_seed(torch.device(device), generator(seed, device))
    rows = [2**31 + 5, 2**32 - 1, 2**32, 2**32 + 1, 3 * 2**32 + 7, 2**40 + 123, 2**47 - 1, 5]
    groups = [0, 1, 1024, 3, 7, 2, 1024, 0]
    out = torch.empty(4, len(rows), dtype=torch.float32, device=device)
    for k in (0, 2**31 - 1):
        _lanes_kernel[(1,)](seed_t, torch.tensor(rows, device=device), torch.tensor(groups, device=device), out, k,
                            N=len(rows))
        want = torch.stack([_eps(int(seed_t), k, [r], 4 * g + 4)[0, 4 * g:] for r, g in zip(rows, groups)]).T
        torch.testing.assert_close(out.cpu().double(), want, rtol=2e-6, atol=2e-6)


# ---- real kernels past 2^31 elements ----

TARGETS = [("cpu", "cpu"), ("cuda", "cuda"), ("triton", "cuda")]  # (backend, device)
# The CUDA kernels in the simulator (FASTELBO_CUDA_SIM=1), on the blocks of the rows a test checks.
SIMULATED = [("cuda", "cpu")] if SIMULATED_CUDA else []
MARGIN = {"cpu": 3 * GiB, "cuda": 2 * GiB}


def _target(backend: str, device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"backend {backend!r} on CUDA tensors needs a GPU")
    if not fe._backend.runs_on(backend, device):
        pytest.skip(f"backend {backend!r} takes no {device} tensors here (FASTELBO_CUDA_SIM=1: the simulator's)")
    if fe.backends()[backend] != "available":
        pytest.skip(f"backend {backend!r} is unavailable here: {fe.backends()[backend]}")
    return torch.device(device)


def _mem_available(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _likelihood_rows_per_block(cols: int) -> int:
    """Rows per block of the CUDA row-reduction kernels (csrc/cuda/kernels/common.cuh)."""
    return 256 // min(256, _next_pow2(-(-cols // 4)))


def _latent_rows_per_block(dim: int) -> int:
    """Rows per block of the CUDA latent kernels (latent_lanes, csrc/cuda/kernels/common.cuh)."""
    return 256 // min(32, _next_pow2(-(-dim // 4)))


def _simulated_blocks(backend: str, device: torch.device, rows, rows_per_block: int):
    """For the CUDA kernels in the simulator, a context in which launches run only the blocks of
    `rows` (a few microseconds per simulated thread: every block would take hours); a no-op for
    every other backend."""
    if backend != "cuda" or device.type != "cpu":
        return contextlib.nullcontext()
    from fastelbo.cpp_backend.cuda_sim import only_blocks

    return only_blocks(sorted({(r // rows_per_block, r // rows_per_block + 1) for r in rows}))


def _require_memory(device: torch.device, nbytes: int, what: str) -> None:
    have, margin = _mem_available(device), MARGIN[device.type]
    if have < nbytes + margin:
        where = "GPU memory free" if device.type == "cuda" else "MemAvailable (/proc/meminfo)"
        pytest.skip(f"{what} needs {nbytes / GiB:.1f} GiB plus a {margin / GiB:.0f} GiB margin; "
                    f"{where} is {have / GiB:.1f} GiB")


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _tile(pattern: torch.Tensor, m: int) -> torch.Tensor:
    """(m, *pattern.shape): m copies of pattern, written by doubling contiguous copies (no
    temporaries, no float32 round trip)."""
    out = torch.empty((m, *pattern.shape), dtype=pattern.dtype, device=pattern.device)
    flat, n = out.view(-1), pattern.numel()
    flat[:n].copy_(pattern.reshape(-1))
    done = n
    while done < flat.numel():
        step = min(done, flat.numel() - done)
        flat[done:done + step].copy_(flat[:step])
        done += step
    return out


def _op(backend: str, name: str):
    """The backend's kernel of op `name`: torch.ops.fastelbo.<name>.default, .triton or .cuda_sim."""
    importlib.import_module(fe._backend._MODULES[backend])  # registers the backend's kernels
    return getattr(getattr(torch.ops.fastelbo, name), fe._backend.OVERLOAD[backend])


def _rows_match(big: torch.Tensor, small: torch.Tensor, tol: tuple[float, float] | None) -> str | None:
    """None when every block big[m] equals small (bit for bit with tol None, else to rtol, atol:
    float32 rounding of another summation order), else where the first mismatch is. Compared in
    chunks of blocks, so no temporary is large."""
    chunk = max(1, 2**25 // max(1, small.numel()))
    for start in range(0, big.shape[0], chunk):
        block = big[start:start + chunk]
        if tol is None:
            bad = (block != small).flatten(1).any(1)
        else:
            bad = ((block - small).abs() > tol[0] * small.abs() + tol[1]).flatten(1).any(1)
        if bool(bad.any()):
            m = start + int(bad.nonzero()[0])
            return f"block {m} of {big.shape[0]} differs from the pattern"
    return None


# Likelihoods: logits (M, 7, Dx) in bfloat16, block m = the pattern, so element (m, i, j) is at
# (7 m + i) Dx + j; Dx odd, so row offsets are no powers of 2; the last ~1100 rows lie wholly past
# element 2^31. x, logvar and the targets are broadcast (1, 7, ...) patterns, never materialized.
DX, P, M = 4099, 7, 75_000
assert P * M * DX - TWO_31 > 1000 * DX


def _likelihood_inputs(seed, device):
    g = generator(seed, "cpu")
    logits = (torch.randn(P, DX, generator=g, dtype=torch.float64) * 3).to(torch.bfloat16)
    x = torch.rand(1, P, DX, generator=g, dtype=torch.float64).to(torch.bfloat16)
    logvar = (torch.rand(P, DX, generator=g, dtype=torch.float64) * 2 - 1).to(torch.bfloat16)
    target = torch.randint(0, DX, (P,), generator=g)
    return (t.to(device) for t in (logits, x, logvar, target))


@pytest.mark.large
@pytest.mark.parametrize("backend,device", TARGETS)
def test_likelihoods_past_2_31_elements(backend, device, seed):
    """Bernoulli, Gaussian (per-row logvar) and categorical log-probs of 2.15e9 bfloat16 logits:
    every row, the ~1100 past element 2^31 included, equals the same backend on the 7-row pattern
    (bit for bit on the CPU), which matches the reference."""
    device = _target(backend, device)
    _require_memory(device, P * M * DX * 2, "a (75000, 7, 4099) bfloat16 tensor")
    pattern, x, logvar, target = _likelihood_inputs(seed, device)
    logits = _tile(pattern, M)
    calls = {
        "bernoulli": lambda l, be: fe.bernoulli_log_prob(l, x, backend=be),
        "gaussian": lambda l, be: fe.gaussian_log_prob(l, x, logvar=logvar, backend=be),
        "categorical": lambda l, be: fe.categorical_log_prob(l, target, event_dims=0, backend=be),
    }
    mismatches, smalls = {}, {}
    for name, call in calls.items():
        big = call(logits, backend)
        assert big.shape == (M, P) and big.dtype == torch.float32
        small = call(pattern[None], backend)
        mismatches[name] = _rows_match(big, small, None if device.type == "cpu" else (1e-5, 1e-3))
        smalls[name] = (small, call(pattern[None], "reference"))
        del big
    del logits
    _release(device)
    assert mismatches == dict.fromkeys(calls), mismatches
    for name, (small, ref) in smalls.items():
        torch.testing.assert_close(small, ref, rtol=1e-5, atol=1e-2, msg=name)


def _grad_buffer(likelihood, backend, logits, x, logvar, target) -> torch.Tensor:
    """The gradient buffer a likelihood's forward kernel writes (contiguous, float32, per element)."""
    if likelihood == "bernoulli":
        return _op(backend, "bernoulli_log_prob")(logits, x, 1, True)[1]
    if likelihood == "gaussian":
        return _op(backend, "gaussian_log_prob")(logits, x, logvar, 0.0, 1, True)[1]
    return _op(backend, "categorical_log_prob")(logits, target, 0, True)[1]


@pytest.mark.large
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "categorical"])
@pytest.mark.parametrize("backend,device", TARGETS)
def test_likelihood_gradient_buffer_past_2_31_elements(likelihood, backend, device, seed):
    """A likelihood kernel's float32 gradient buffer of (75000, 7, 4099) = 2.15e9 elements (8.6 GB;
    the inputs broadcast from the pattern): every element, the ones past 2^31 included, equals the
    same kernel's buffer of the pattern (bit for bit on the CPU), which matches x - sigmoid(l),
    (x - m) e^-v or onehot(t) - softmax(l)."""
    device = _target(backend, device)
    buffers = 2 if (backend, likelihood) == ("triton", "gaussian") else 1  # Triton's also writes d/dlogvar
    _require_memory(device, buffers * P * M * DX * 4, f"{buffers} (75000, 7, 4099) float32 gradient buffer(s)")
    pattern, x, logvar, target = _likelihood_inputs(seed, device)
    small = _grad_buffer(likelihood, backend, pattern[None], x, logvar[None], target[None])
    big = _grad_buffer(likelihood, backend, pattern.expand(M, P, DX), x, logvar.expand(M, P, DX), target.expand(M, P))
    assert big.shape == (M, P, DX) and big.dtype == torch.float32 and big.is_contiguous()
    mismatch = _rows_match(big, small, None if device.type == "cpu" else (1e-5, 1e-6))
    del big
    _release(device)
    assert mismatch is None, mismatch
    l, xd, v = pattern.cpu().double(), x.cpu().double()[0], logvar.cpu().double()
    want = {
        "bernoulli": lambda: xd - torch.sigmoid(l),
        "gaussian": lambda: (xd - l) * torch.exp(-v),
        "categorical": lambda: torch.nn.functional.one_hot(target.cpu(), DX).double() - torch.softmax(l, -1),
    }[likelihood]()
    torch.testing.assert_close(small[0].cpu().double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.large
@pytest.mark.parametrize("backend,device", TARGETS)
def test_likelihood_backward_past_2_31_elements(backend, device, seed):
    """The whole autograd path of a Bernoulli likelihood on 2.15e9 bfloat16 logits (logits, the
    float32 gradient buffer, the scaled buffer and the bfloat16 gradient: about 26 GB): logits.grad
    of every row is grad_out[row] times the pattern row's gradient."""
    device = _target(backend, device)
    n = P * M * DX
    _require_memory(device, n * (2 + 4 + 4 + 2), "the backward of a (75000, 7, 4099) bfloat16 likelihood")
    pattern, x, _, _ = _likelihood_inputs(seed, device)
    logits = _tile(pattern, M).requires_grad_(True)
    weights = torch.randn(M, P, generator=generator(seed + 1, "cpu")).to(device)
    fe.bernoulli_log_prob(logits, x, backend=backend).backward(weights)
    grad = logits.grad
    assert grad.dtype == torch.bfloat16 and grad.shape == (M, P, DX)
    picked = [0, TWO_31 // (P * DX), M - 2, M - 1]  # blocks before, across and past element 2^31
    got = grad[picked].cpu().double()
    del logits, grad
    _release(device)
    per_element = (x.cpu().double() - torch.sigmoid(pattern.cpu().double()))[0]  # d/dl of the pattern
    want = weights[picked].cpu().double()[:, :, None] * per_element  # weights make every row distinct
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-3)


@pytest.mark.large
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "categorical"])
@pytest.mark.parametrize("backend,device", SIMULATED)
def test_simulated_cuda_likelihood_past_2_31_elements(likelihood, backend, device, seed):
    """The CUDA likelihood kernels in the simulator on 2.15e9 bfloat16 logits (tiled from the
    pattern: real offsets past 2^31 into the input) with their float32 gradient buffer (8.6 GB),
    on the blocks of the first rows, the rows across and past element 2^31 and the last rows: each
    of those rows' value and gradient equals the same kernels' on the pattern, bit for bit."""
    device = _target(backend, device)
    _require_memory(device, P * M * DX * (2 + 4), "(75000, 7, 4099) bfloat16 logits and their float32 gradient")
    pattern, x, logvar, target = _likelihood_inputs(seed, device)
    call = {
        "bernoulli": lambda l: _op(backend, "bernoulli_log_prob")(l, x, 1, True),
        "gaussian": lambda l: _op(backend, "gaussian_log_prob")(l, x, logvar, 0.0, 1, True),
        "categorical": lambda l: _op(backend, "categorical_log_prob")(l, target, 0, True),
    }[likelihood]
    small_out, small_grad = call(pattern[None])
    logits = _tile(pattern, M)
    across = TWO_31 // DX  # the row holding element 2^31
    rows = [0, 1, 2, across - 1, across, across + 1, across + 2, M * P - 2, M * P - 1]
    with _simulated_blocks(backend, device, rows, _likelihood_rows_per_block(DX)):
        out, grad = call(logits)
    del logits
    assert out.shape == (M, P) and grad.shape == (M, P, DX)
    out, grad = out.view(M * P), grad.view(M * P, DX)
    for row in rows:
        assert torch.equal(out[row], small_out[0, row % P]), f"the value of row {row}"
        assert torch.equal(grad[row], small_grad[0, row % P]), f"the gradient of row {row}"
    del out, grad
    _release(device)


# The latent: z (K, B, D) in bfloat16 with K B D = 2.17e9; sample k starts at element k B D, so
# samples 2080 (across element 2^31) to 2099 lie past it.
K, B, D = 2100, 1031, 1001
assert (K - 20) * B * D < TWO_31 < (K - 19) * B * D


def _latent_reference(mu, scale, eps):
    """z, log q, log p in float64 (standard prior, param logvar) from bfloat16 mu, scale and eps."""
    mu, scale = mu.double(), scale.double()
    sigma = torch.exp(scale / 2)
    z = mu + sigma * eps
    half_log_2pi_d = mu.shape[-1] * 0.5 * math.log(2 * math.pi)
    log_q = (-0.5 * eps * eps - scale / 2).sum(-1) - half_log_2pi_d
    log_p = (-0.5 * z * z).sum(-1) - half_log_2pi_d
    return z, log_q, log_p


@pytest.mark.large
@pytest.mark.parametrize("backend,device", TARGETS)
def test_latent_samples_past_2_31_elements(backend, device, seed):
    """gaussian_latent with K = 2100 samples of (1031, 1001) bfloat16: z has 2.17e9 elements. The
    samples before, across and past element 2^31 equal z = mu + sigma eps with eps rebuilt by
    fastelbo/rng.py for just that sample index, under the seed the call drew from the generator."""
    device = _target(backend, device)
    _require_memory(device, K * B * D * 2, "a (2100, 1031, 1001) bfloat16 z")
    g = generator(seed, "cpu")
    mu = torch.randn(B, D, generator=g).to(torch.bfloat16).to(device)
    scale = (torch.rand(B, D, generator=g) * 2 - 1).to(torch.bfloat16).to(device)
    drawn = rng.draw_seed(device, generator(seed, device.type))  # the seed the call below draws
    lat = fe.gaussian_latent(mu, scale, n_samples=K, generator=generator(seed, device.type), backend=backend)
    assert lat.z.shape == (K, B, D) and lat.z.dtype == torch.bfloat16
    picked = [0, TWO_31 // (B * D), TWO_31 // (B * D) + 1, K - 1]
    got = [(lat.z[k].cpu().double(), lat.log_q[k].cpu().double(), lat.log_p[k].cpu().double()) for k in picked]
    del lat
    _release(device)
    for k, (z, log_q, log_p) in zip(picked, got):
        eps = _eps(int(drawn), k, torch.arange(B), D)
        z_ref, log_q_ref, log_p_ref = _latent_reference(mu.cpu(), scale.cpu(), eps)
        torch.testing.assert_close(z, z_ref, rtol=1e-2, atol=1e-2, msg=f"z of sample {k}")
        torch.testing.assert_close(log_q, log_q_ref, rtol=1e-5, atol=1e-2, msg=f"log q of sample {k}")
        torch.testing.assert_close(log_p, log_p_ref, rtol=1e-5, atol=1e-2, msg=f"log p of sample {k}")


# The latent backward: mu, scale (R, D) broadcast from a 7-row pattern, R = 7 * 310000 rows, so
# grad mu and grad scale (bfloat16, written by the kernel) have 2.17e9 elements each.
LB_M = 310_000
assert (P * LB_M - 20_000) * D > TWO_31


@pytest.mark.large
@pytest.mark.parametrize("backend,device", TARGETS + SIMULATED)
def test_latent_backward_past_2_31_elements(backend, device, seed):
    """The latent's backward kernel (eps regenerated from the seed) on 2.17e9 elements, with
    per-row grad log p and grad kl: rows before and past element 2^31 equal
    dL/dmu = -gp z + gk mu, dL/ds = (-gp z sigma eps + gk expm1(2 log sigma)) / 2."""
    device = _target(backend, device)
    rows = P * LB_M
    _require_memory(device, 2 * rows * D * 2, "two (2170000, 1001) bfloat16 gradients")
    g = generator(seed, "cpu")
    mu = torch.randn(1, P, D, generator=g).to(torch.bfloat16).to(device)
    scale = (torch.rand(1, P, D, generator=g) * 2 - 1).to(torch.bfloat16).to(device)
    grad_log_p = torch.randn(1, LB_M, P, generator=g).to(device)
    grad_kl = torch.randn(LB_M, P, generator=g).to(device)
    seed_t = rng.draw_seed(device, generator(seed, device.type))
    picked = [0, TWO_31 // (P * D), TWO_31 // (P * D) + 1, LB_M - 1]  # blocks of 7 rows
    rows = [P * m + i for m in picked for i in range(P)]
    with _simulated_blocks(backend, device, rows, _latent_rows_per_block(D)):
        grad_mu, grad_scale, _, _ = _op(backend, "gaussian_latent_backward")(
            None, None, grad_log_p, grad_kl, mu.expand(LB_M, P, D), scale.expand(LB_M, P, D), None, None, None,
            seed_t, 0, 1, False)
    assert grad_mu.shape == grad_scale.shape == (LB_M, P, D) and grad_mu.dtype == torch.bfloat16
    got = [(grad_mu[m].cpu().double(), grad_scale[m].cpu().double()) for m in picked]
    del grad_mu, grad_scale
    _release(device)
    mu, scale = mu[0].cpu().double(), scale[0].cpu().double()
    sigma = torch.exp(scale / 2)
    for m, (g_mu, g_scale) in zip(picked, got):
        eps = _eps(int(seed_t), 0, torch.arange(P * m, P * m + P), D)
        gp = grad_log_p[0, m].cpu().double()[:, None]
        gk = grad_kl[m].cpu().double()[:, None]
        z = mu + sigma * eps
        want_mu = -gp * z + gk * mu
        want_scale = (sigma * (-gp * z) * eps + gk * torch.expm1(scale)) / 2
        torch.testing.assert_close(g_mu, want_mu, rtol=2e-2, atol=2e-2, msg=f"grad mu of rows {P * m}..")
        torch.testing.assert_close(g_scale, want_scale, rtol=2e-2, atol=2e-2, msg=f"grad scale of rows {P * m}..")
