"""Compile checks of the "cuda" backend's sources with nvcc, on machines without a GPU.

(a) tests/cpp/cuda_kernels_compile_check.cu includes every csrc/cuda/kernels/*.cuh (torch-free device code)
    and explicitly instantiates every kernel template for every storage / compute type the
    bindings dispatch to: `nvcc -std=c++17 -arch=sm_90 -c` must succeed (no torch needed).
(b) Every ATen binding csrc/cuda/*.cu compiles with nvcc against torch's
    headers and the flags torch.utils.cpp_extension passes for CUDA sources, in parallel processes.

Nothing is linked or run. Skipped where nvcc is not on PATH. A CPU-only torch wheel lacks the
CMake-generated c10/cuda/impl/cuda_cmake_macros.h (it only defines Windows export macros), so the
check then defines C10_CUDA_NO_CMAKE_CONFIGURE_FILE, c10's own switch to do without it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
KERNELS_CHECK = ROOT / "tests" / "cpp" / "cuda_kernels_compile_check.cu"
NVCC = shutil.which("nvcc")
ARCH = "-arch=sm_90"

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")


def _run(cmd: list[str]) -> tuple[int, str]:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    return proc.returncode, proc.stdout


def _binding_sources() -> list[Path]:
    files = sorted(CUDA_DIR.glob("*.cu"))
    # The largest translation unit first, so the parallel compiles finish together.
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def test_compile_check_lists_every_kernel_header():
    text = KERNELS_CHECK.read_text()
    headers = sorted(p.name for p in (CUDA_DIR / "kernels").glob("*.cuh"))
    assert headers, "no kernel headers"
    missing = [h for h in headers if f'#include "kernels/{h}"' not in text]
    assert not missing, f"{KERNELS_CHECK.name} does not include {missing}"


def test_kernels_compile_with_nvcc():
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [NVCC, "-std=c++17", ARCH, "-I", str(CUDA_DIR), "-c", str(KERNELS_CHECK), "-o", os.path.join(tmp, "k.o")]
        rc, out = _run(cmd)
        assert rc == 0, f"{' '.join(cmd)}\n{out[-8000:]}"


def _torch_flags() -> list[str] | None:
    """nvcc flags of a torch CUDA extension, or None if torch (or its C++ headers) is missing."""
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        return None
    includes = cpp_extension.include_paths()
    if not any((Path(p) / "ATen" / "ATen.h").exists() for p in includes):
        return None
    flags = [f"-I{p}" for p in includes] + [f"-I{ROOT}"]
    flags += [
        "-DTORCH_EXTENSION_NAME=fastelbo_cuda_compile_check",
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        "-std=c++20",  # what torch.utils.cpp_extension passes nvcc for fastelbo/cpp_backend/_build.py
        "-Xcompiler", "-fPIC",
        ARCH,
    ]
    flags += list(getattr(cpp_extension, "COMMON_NVCC_FLAGS", []))
    if not any((Path(p) / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists() for p in includes):
        flags.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")  # CPU-only wheel (see the module docstring)
    return flags


def test_bindings_compile_with_nvcc():
    flags = _torch_flags()
    if flags is None:
        pytest.skip("torch's C++ headers are not available")
    sources = _binding_sources()
    assert sources, "no csrc/cuda/*.cu bindings"
    with tempfile.TemporaryDirectory() as tmp:
        cmds = [[NVCC, *flags, "-c", str(src), "-o", os.path.join(tmp, src.stem + ".o")] for src in sources]
        with ThreadPoolExecutor(max_workers=max(1, min(len(cmds), os.cpu_count() or 1))) as pool:
            results = list(pool.map(_run, cmds))
    failures = [f"{src.name}: {' '.join(cmd)}\n{out[-6000:]}"
                for src, cmd, (rc, out) in zip(sources, cmds, results) if rc != 0]
    assert not failures, "\n\n".join(failures)
