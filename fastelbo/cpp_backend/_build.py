"""Building and loading the C++ backends from csrc/, just in time, with ninja.

The "cpu" library (the operator schemas plus their CPU kernels) is built on every machine, for the
instruction set ATen itself uses there (torch.backends.cpu.get_cpu_capability(): AVX512, AVX2 or
the portable DEFAULT); the "cuda" library (the CUDA kernels of the same operators) only where torch
has CUDA and a GPU is present. torch.utils.cpp_extension caches each build (in
$TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions) and rebuilds when a source changes.

A failed build never breaks `import fastelbo`: the backend reports why in fastelbo.backends(),
and "auto" falls back to the next backend (in the end, the reference).
"""
from __future__ import annotations

import functools
import glob
import os
import sys

import torch

# Capability -> (compiler flags, the ATen CPU_CAPABILITY macros its Vectorized headers select on).
_CPU_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
}


def csrc_dir() -> str:
    """The C++ sources: csrc/ of a source checkout (editable install), else the installed copy."""
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "..", "..", "csrc"), os.path.join(here, "..", "csrc")):
        if os.path.isdir(os.path.join(candidate, "core")):
            return os.path.normpath(candidate)
    raise FileNotFoundError("fastelbo's C++ sources (csrc/) are not installed next to the package")


def cpu_capability() -> str:
    capability = torch.backends.cpu.get_cpu_capability()
    return capability if capability in _CPU_FLAGS else "DEFAULT"


def _announce_if_building(name: str, folders: tuple[str, ...], what: str) -> None:
    """One line on stderr when this call will compile (no build in the cache newer than every file
    of the library's csrc/ folders, headers included)."""
    from torch.utils.cpp_extension import _get_build_directory

    # torch names rebuilds name_v1.so, name_v2.so, ...: the newest library counts.
    libraries = glob.glob(os.path.join(_get_build_directory(name, verbose=False), f"{name}*.so"))
    files = [f for folder in folders for f in glob.glob(os.path.join(csrc_dir(), folder, "**", "*"), recursive=True)]
    newest = max(os.path.getmtime(f) for f in files)
    if not libraries or max(os.path.getmtime(f) for f in libraries) < newest:
        print(f"fastelbo: building the {what} with ninja (first use, about a minute)...", file=sys.stderr, flush=True)


def _load(name: str, sources: list[str], folders: tuple[str, ...], what: str, **options) -> None:
    from torch.utils.cpp_extension import load

    _announce_if_building(name, folders, what)
    load(name=name, sources=sources, is_python_module=False, verbose=os.environ.get("FASTELBO_BUILD_VERBOSE") == "1",
         **options)


def _reason(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    detail = lines[-1] if lines else type(error).__name__
    return f"build failed ({type(error).__name__}: {detail[:300]}); FASTELBO_BUILD_VERBOSE=1 shows the compiler output"


@functools.lru_cache(maxsize=None)
def cpu_library() -> str | None:
    """Build (if needed) and load the CPU library; None on success, else why it is unavailable."""
    try:
        root = csrc_dir()
        sources = [os.path.join(root, "binding", "schema.cpp")] + sorted(glob.glob(os.path.join(root, "cpu", "*.cpp")))
        capability = cpu_capability()
        flags = ["-O3", "-fopenmp"] + _CPU_FLAGS.get(capability, ["-DCPU_CAPABILITY=DEFAULT"])
        _load(f"fastelbo_cpu_{capability.lower()}", sources, ("core", "binding", "cpu"), "C++ CPU backend",
              extra_cflags=flags,
              extra_ldflags=["-fopenmp"])
    except Exception as error:  # noqa: BLE001 -- any failure makes the backend unavailable, with the reason
        return _reason(error)
    return None


@functools.lru_cache(maxsize=None)
def cuda_library() -> str | None:
    """Build (if needed) and load the CUDA library (after the CPU one, which defines the operators);
    None on success, else why it is unavailable."""
    if torch.version.cuda is None:
        return "torch is a CPU-only build (no CUDA)"
    if not torch.cuda.is_available():
        return "no CUDA device"
    reason = cpu_library()
    if reason is not None:
        return f"needs the CPU library, which is unavailable: {reason}"
    try:
        root = csrc_dir()
        sources = sorted(glob.glob(os.path.join(root, "cuda", "*.cu")))
        sources = [s for s in sources if os.path.basename(s) != "compile_check.cu"]
        _load("fastelbo_cuda", sources, ("core", "binding", "cuda"), "CUDA backend", extra_cflags=["-O3"],
              extra_cuda_cflags=["-O3"])
    except Exception as error:  # noqa: BLE001
        return _reason(error)
    return None
