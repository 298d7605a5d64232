"""Building and loading the C++ backends from csrc/, just in time, with ninja.

The "cpu" library (the operator schemas plus their CPU kernels) is built on every machine, for the
instruction set ATen itself uses there (torch.backends.cpu.get_cpu_capability(): AVX512, AVX2 or
the portable DEFAULT); the "cuda" library (the CUDA kernels of the same operators) only where torch
has CUDA and a GPU is present.

Where a build lives. Each library is built by torch.utils.cpp_extension in a directory of its own
under $TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions/py<XY>_<cpu|cuXYZ>), named
``fastelbo_<cpu_avx2|cuda>_<hash>``: the hash covers the content of every file in the csrc/
folders the library compiles (headers included), the source list, the compiler and linker flags,
the torch and Python versions and this file's build scheme. Two checkouts or versions on one
machine therefore never rebuild, nor load, each other's library, unless their sources are the same.

How a build runs (``_obtain``):

- A complete build is marked by a file (``fastelbo-build-complete.json``, written atomically after
  the library was built and loaded). Where it exists the library is loaded directly with
  torch.ops.load_library: no ninja, no lock, no write, so a read-only cache works and a process
  start costs a hash of the sources and a dlopen.
- Otherwise the build runs under an fcntl.flock on ``fastelbo.lock`` in the build directory. The
  OS drops that lock when its owner dies, even on kill -9, so a killed build never blocks the next
  one. While we hold it, whatever an earlier build left in the directory is from a build that
  ended or died, and is removed: torch's FileBaton ``lock`` (torch's load() would wait for it
  forever) and staging folders. ninja runs in a fresh staging folder (``build-XXXX``) of this
  build's own, so the compilers of a killed build (ninja and its children outlive a python killed
  with -9) never write into the next build's folder; the library is then moved into the build
  directory and the marker written. A live build by another process is waited for (one line on
  stderr) up to $FASTELBO_BUILD_TIMEOUT seconds (default 900); after that the backend is
  unavailable, with why.
- Before compiling, the C++ compiler (torch's choice: $CXX, else c++; we also try g++) and ninja
  are looked for, so a missing compiler is reported as such.
- FASTELBO_NO_BUILD=1 never compiles: a complete build is loaded, else the backend is unavailable
  and the reason names `fastelbo build`, the explicit build (which ignores FASTELBO_NO_BUILD).

cpu_library() and cuda_library() are thread-safe and run once per process (two threads asking at
once build once, and the "building" line is printed once). A failed build never breaks
`import fastelbo`: the backend reports why in fastelbo.backends(), and "auto" falls back to the next
backend (in the end, the reference).
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import threading
import time

import torch

try:
    import fcntl
except ImportError:  # not POSIX: builds run unlocked, as torch's own do
    fcntl = None

# Capability -> (compiler flags, the ATen CPU_CAPABILITY macros its Vectorized headers select on).
_CPU_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
}

# Part of every build's hash: bump it when this file changes what a build produces.
_SCHEME = "2"
MARKER = "fastelbo-build-complete.json"
LOCK = "fastelbo.lock"
TORCH_LOCK = "lock"  # torch.utils.cpp_extension's FileBaton in its build directory
STAGING_PREFIX = "build-"  # the folders ninja builds in, one per build (see _obtain)
DEFAULT_TIMEOUT_S = 900.0


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


def extensions_root() -> str:
    """Where torch.utils.cpp_extension keeps its builds: $TORCH_EXTENSIONS_DIR, else its default
    (computed here as torch does, without importing cpp_extension, which is slow to import)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is not None:
        return root
    try:
        from torch import _appdirs

        base = os.path.realpath(_appdirs.user_cache_dir(appname="torch_extensions"))
    except Exception:  # noqa: BLE001 -- torch moved it: ask cpp_extension
        from torch.utils.cpp_extension import get_default_build_root

        base = get_default_build_root()
    if torch.version.hip is not None:
        accelerator = f"rocm{torch.version.hip.replace('.', '')}"
    elif torch.version.cuda is not None:
        accelerator = f"cu{torch.version.cuda.replace('.', '')}"
    else:
        accelerator = "cpu"
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return os.path.join(base, f"{python}_{accelerator}")


# ---------------------------------------------------------------------------------------------
# What a library is: its sources, flags, and the hashed name and directory they give.

@dataclasses.dataclass(frozen=True)
class LibrarySpec:
    kind: str  # "cpu", "cuda" or "cuda_sim"
    what: str  # for messages: "C++ CPU backend"
    name: str  # fastelbo_cpu_avx2_<hash>: a C identifier (torch passes it as TORCH_EXTENSION_NAME)
    directory: str
    sources: tuple
    options: tuple  # ((keyword of torch's load(), (flags...)), ...)
    include_dirs: tuple = ()  # extra -I folders (absolute; the hash covers their files, not where they are)

    @property
    def marker(self) -> str:
        return os.path.join(self.directory, MARKER)

    @property
    def lock(self) -> str:
        return os.path.join(self.directory, LOCK)


def _folder_files(root: str, folder: str) -> list[str]:
    """Every regular file under root/folder (recursively; hidden files and directories skipped),
    as paths relative to root with '/' separators, sorted."""
    found = []
    for top, dirs, files in os.walk(os.path.join(root, folder)):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        for name in files:
            if not name.startswith("."):
                found.append(os.path.relpath(os.path.join(top, name), root).replace(os.sep, "/"))
    return sorted(found)


def source_hash(root: str, folders, sources, options) -> str:
    """16 hex digits of a SHA-256 over the content of every file in root's `folders`, the source
    list (relative to root), the flags, the torch and Python versions and the build scheme. The
    location of root does not enter it: two checkouts with the same sources share their builds."""
    digest = hashlib.sha256()

    def feed(tag: str, data: bytes) -> None:
        digest.update(tag.encode() + b"\0" + len(data).to_bytes(8, "little") + data)

    feed("scheme", _SCHEME.encode())
    feed("torch", json.dumps([torch.__version__, getattr(torch.version, "git_version", None),
                              torch.version.cuda, torch.version.hip]).encode())
    feed("python", f"{sys.version_info.major}.{sys.version_info.minor}{getattr(sys, 'abiflags', '')}".encode())
    for folder in folders:
        for rel in _folder_files(root, folder):
            with open(os.path.join(root, rel), "rb") as f:
                feed("file:" + rel, f.read())
    feed("sources", json.dumps([os.path.relpath(s, root).replace(os.sep, "/") for s in sources]).encode())
    feed("options", json.dumps([[k, list(v)] for k, v in options]).encode())
    return digest.hexdigest()[:16]


def library_spec(kind: str, root: str | None = None) -> LibrarySpec:
    """The sources, flags, name and build directory of library `kind` ("cpu", "cuda" or "cuda_sim"),
    built from the sources in `root` (default: csrc_dir()). Pure: nothing is built or written."""
    root = csrc_dir() if root is None else root
    if kind == "cpu":
        capability = cpu_capability()
        bindings = ("schema.cpp", "autograd.cpp", "python.cpp", "front_door.cpp")
        sources = ([os.path.join(root, "binding", name) for name in bindings]
                   + sorted(glob.glob(os.path.join(root, "cpu", "*.cpp"))))
        flags = ["-O3", "-fopenmp"] + _CPU_FLAGS.get(capability, ["-DCPU_CAPABILITY=DEFAULT"])
        options = (("extra_cflags", tuple(flags)), ("extra_ldflags", ("-fopenmp",)))
        folders, prefix, what = ("core", "binding", "cpu"), f"fastelbo_cpu_{capability.lower()}", "C++ CPU backend"
    elif kind == "cuda":
        sources = sorted(glob.glob(os.path.join(root, "cuda", "*.cu")))
        options = (("extra_cflags", ("-O3",)), ("extra_cuda_cflags", ("-O3",)))
        folders, prefix, what = ("core", "binding", "cuda"), "fastelbo_cuda", "CUDA backend"
    elif kind == "cuda_sim":
        # The CUDA bindings and kernels as host C++ on the simulator (csrc/cuda_sim/cuda_sim.h), whose
        # include/ stands in for the CUDA headers: the "cuda" backend on CPU tensors (FASTELBO_CUDA_SIM=1).
        # FASTELBO_CUDA_SIM_ASAN=1: built with AddressSanitizer, which then reports the kernels' reads
        # and writes outside every live allocation (the process must preload the ASan runtime:
        # LD_PRELOAD=$(gcc -print-file-name=libasan.so); tests/test_cuda_sim.py does).
        sources = sorted(glob.glob(os.path.join(root, "cuda_sim", "*.cpp")))
        prefix = "fastelbo_cuda_sim"
        options = (("extra_cflags", ("-O2", "-DFASTELBO_CUDA_SIM")),)
        if os.environ.get("FASTELBO_CUDA_SIM_ASAN", "").strip() == "1":
            prefix += "_asan"
            options = (("extra_cflags", ("-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address",
                                         "-DFASTELBO_CUDA_SIM")),
                       ("extra_ldflags", ("-fsanitize=address",)))
        include_dirs = (os.path.join(root, "cuda_sim", "include"),)
        folders, what = ("core", "binding", "cuda", "cuda_sim"), "CUDA simulator backend"
    else:
        raise ValueError(f"unknown library {kind!r}")
    name = f"{prefix}_{source_hash(root, folders, sources, options)}"
    return LibrarySpec(kind, what, name, os.path.join(extensions_root(), name), tuple(sources), options,
                       include_dirs if kind == "cuda_sim" else ())


# ---------------------------------------------------------------------------------------------
# The marker of a complete build.

def complete_library(spec: LibrarySpec) -> str | None:
    """The library file of a complete build in spec.directory (its marker names it), or None."""
    try:
        with open(spec.marker) as f:
            library = json.load(f)["library"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(library, str) or os.path.basename(library) != library:
        return None
    path = os.path.join(spec.directory, library)
    return path if os.path.isfile(path) else None


def _write_marker(spec: LibrarySpec, library: str) -> None:
    """Atomically (a temporary file renamed over it): readers see no marker or a whole one."""
    content = json.dumps({"library": os.path.basename(library), "name": spec.name, "torch": torch.__version__,
                          "sources": [os.path.basename(s) for s in spec.sources],
                          "options": {k: list(v) for k, v in spec.options}}, indent=1)
    temporary = os.path.join(spec.directory, f".{MARKER}.{os.getpid()}.tmp")
    with open(temporary, "w") as f:
        f.write(content + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, spec.marker)


# ---------------------------------------------------------------------------------------------
# The build lock.

class Unavailable(Exception):
    """Why a library is unavailable, in words meant for fastelbo.backends() as they are."""


def build_timeout() -> float:
    """$FASTELBO_BUILD_TIMEOUT: how many seconds to wait for another process's build."""
    try:
        return max(0.0, float(os.environ.get("FASTELBO_BUILD_TIMEOUT", DEFAULT_TIMEOUT_S)))
    except ValueError:
        return DEFAULT_TIMEOUT_S


@contextlib.contextmanager
def build_lock(spec: LibrarySpec, timeout: float | None = None, poll_s: float = 0.2):
    """Hold an exclusive flock on spec.lock for the block, waiting up to `timeout` seconds
    (default build_timeout()) for another process that holds it; raise Unavailable after that.
    The OS releases the lock when its holder dies, however it dies."""
    timeout = build_timeout() if timeout is None else timeout
    fd = os.open(spec.lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            deadline, announced = time.monotonic() + timeout, False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    pass
                except OSError:  # a file system without flock: build unlocked, as torch alone would
                    break
                if not announced:
                    print(f"fastelbo: waiting for another process's build of the {spec.what} in {spec.directory}...",
                          file=sys.stderr, flush=True)
                    announced = True
                if time.monotonic() >= deadline:
                    raise Unavailable(
                        f"another process has been building it in {spec.directory} for over {timeout:g} s "
                        f"(FASTELBO_BUILD_TIMEOUT={timeout:g}); not waiting any longer")
                time.sleep(poll_s)
        with contextlib.suppress(OSError):  # who holds it, for a curious human
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the flock


def _remove_leftovers(spec: LibrarySpec) -> None:
    """Under our lock, whatever an earlier build left in the directory is from a build that ended
    or died (every build here takes the lock first): its staging folders (a killed build's
    compilers may still be writing into one; none of ours is), and a FileBaton of torch's."""
    for entry in glob.glob(os.path.join(spec.directory, STAGING_PREFIX + "*")):
        shutil.rmtree(entry, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(spec.directory, TORCH_LOCK))


# ---------------------------------------------------------------------------------------------
# The tools a build needs.

def _compiler() -> tuple[str | None, str | None]:
    """(the compiler to set $CXX to for the build, or None to leave $CXX alone; a reason there is
    none). torch compiles with $CXX, else c++; where c++ is missing we try g++."""
    chosen = os.environ.get("CXX")
    if chosen is not None:
        try:
            words = shlex.split(chosen)
        except ValueError:  # unbalanced quotes
            words = chosen.split()
        if words and shutil.which(words[0]):
            return None, None
        return None, (f"no C++ compiler found (tried $CXX={chosen!r}; set CXX to a C++ compiler, "
                      "or unset it for c++ or g++)")
    for candidate in ("c++", "g++"):
        if shutil.which(candidate):
            return (None if candidate == "c++" else candidate), None
    return None, "no C++ compiler found (tried c++, g++); install one (e.g. g++) or set CXX"


@contextlib.contextmanager
def _environment(**values):
    """os.environ with `values` set (None: left alone) for the block."""
    saved = {k: os.environ.get(k) for k, v in values.items() if v is not None}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _toolchain(spec: LibrarySpec) -> str | None:
    """$CXX to build with (None: as it is); raises Unavailable when a tool is missing."""
    cxx, problem = _compiler()
    if problem is not None:
        raise Unavailable(problem)
    if shutil.which("ninja") is None:
        raise Unavailable("ninja not found on PATH (pip install ninja)")
    if spec.kind == "cuda":
        from torch.utils.cpp_extension import CUDA_HOME

        if CUDA_HOME is None:
            raise Unavailable("no CUDA toolkit found (nvcc; set CUDA_HOME)")
    return cxx


# ---------------------------------------------------------------------------------------------
# Building and loading.

@dataclasses.dataclass
class Result:
    """What became of one library in this process."""
    reason: str | None  # None: loaded; else why it is unavailable
    directory: str | None = None
    library: str | None = None  # the .so loaded
    built: bool = False  # this process compiled it
    seconds: float = 0.0
    detail: str | None = None  # a failed build's full output (the compiler's errors)
    applicable: bool = True  # False: nothing to build here (CUDA without CUDA or a GPU)


def no_build() -> bool:
    return os.environ.get("FASTELBO_NO_BUILD", "").strip().lower() in ("1", "true", "yes", "on")


def _load_complete(library: str) -> None:
    try:
        torch.ops.load_library(library)
    except Exception as error:  # noqa: BLE001
        raise Unavailable(f"loading the complete build {library} failed ({type(error).__name__}: "
                          f"{str(error).strip()[:300]}); delete {os.path.dirname(library)} to rebuild it") from error


def _obtain(spec: LibrarySpec, may_build: bool) -> Result:
    """Load spec's library: directly where a complete build exists, else build it (if allowed)."""
    library = complete_library(spec)
    if library is not None:
        _load_complete(library)
        return Result(None, spec.directory, library)
    if not may_build:
        raise Unavailable(f"not built yet, and FASTELBO_NO_BUILD=1 forbids compiling it here: run `fastelbo build` "
                          f"(it builds into {spec.directory})")
    cxx = _toolchain(spec)
    try:
        os.makedirs(spec.directory, exist_ok=True)
    except OSError as error:
        raise Unavailable(f"not built, and its build directory cannot be created ({error})") from error
    start = time.monotonic()
    with build_lock(spec):
        library = complete_library(spec)  # built by the process we waited for
        if library is not None:
            _load_complete(library)
            return Result(None, spec.directory, library)
        _remove_leftovers(spec)
        print(f"fastelbo: building the {spec.what} with ninja (first use, about a minute)...", file=sys.stderr,
              flush=True)
        from torch.utils.cpp_extension import load

        # ninja runs in a staging folder of this build's own: the compilers of a killed build (ninja
        # and its children outlive a python killed with -9) can only write into theirs.
        staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=spec.directory)
        try:
            with _environment(CXX=cxx):
                built = load(name=spec.name, sources=list(spec.sources), build_directory=staging,
                             extra_include_paths=list(spec.include_dirs), is_python_module=False,
                             verbose=os.environ.get("FASTELBO_BUILD_VERBOSE") == "1",
                             **{k: list(v) for k, v in spec.options})
            library = os.path.join(spec.directory, os.path.basename(built))
            os.replace(built, library)
            _write_marker(spec, library)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return Result(None, spec.directory, library, built=True, seconds=time.monotonic() - start)


def _error_text(error: BaseException) -> str:
    """The error's message, with the output of a failed command (torch runs the compiler for its
    version before ninja) where it has one."""
    text = str(error)
    for output in (getattr(error, "output", None), getattr(error, "stderr", None)):
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        if isinstance(output, str) and output.strip() and output.strip() not in text:
            text += "\n" + output.strip()
    return text


def _reason(error: BaseException) -> str:
    """One line: the compiler's first error where the output has one, else the last line."""
    lines = [line.strip() for line in _error_text(error).strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"\berror\b", line, re.IGNORECASE)
              and not line.startswith("Error building extension")]
    detail = errors[0] if errors else (lines[-1] if lines else type(error).__name__)
    return (f"build failed ({type(error).__name__}: {detail[:300]}); FASTELBO_BUILD_VERBOSE=1 or `fastelbo build` "
            f"shows the compiler output")


_guard = threading.RLock()  # one build at a time in this process; re-entrant: cuda asks for cpu
_results: dict[str, Result] = {}


def _compute(kind: str, explicit: bool) -> Result:
    if kind == "cuda":
        if torch.version.cuda is None:
            return Result("torch is a CPU-only build (no CUDA)", applicable=False)
        if not torch.cuda.is_available():
            return Result("no CUDA device", applicable=False)
        cpu = _library("cpu", explicit)
        if cpu.reason is not None:
            return Result(f"needs the CPU library, which is unavailable: {cpu.reason}")
    spec = None
    try:
        spec = library_spec(kind)
        return _obtain(spec, may_build=explicit or not no_build())
    except Unavailable as error:
        return Result(str(error), spec.directory if spec else None)
    except Exception as error:  # noqa: BLE001 -- any failure makes the backend unavailable, with the reason
        return Result(_reason(error), spec.directory if spec else None, detail=_error_text(error))


def _library(kind: str, explicit: bool) -> Result:
    with _guard:
        result = _results.get(kind)
        if result is None or (explicit and result.reason is not None and result.applicable):
            result = _results[kind] = _compute(kind, explicit)
        return result


def build(kind: str) -> Result:
    """`fastelbo build`: load library `kind`, compiling it if no complete build exists, even where
    FASTELBO_NO_BUILD is set."""
    return _library(kind, explicit=True)


def cpu_library() -> str | None:
    """Build (if needed) and load the CPU library; None on success, else why it is unavailable."""
    return _library("cpu", explicit=False).reason


def cpu_bindings():
    """The CPU library's Python module (csrc/binding/python.cpp: typed calls of the forward ops,
    without torch.ops' boxed path), from the file cpu_library() loaded; raises ImportError when the
    library is unavailable or the module cannot be imported from it."""
    result = _library("cpu", explicit=False)
    if result.reason is not None:
        raise ImportError(f"fastelbo's C++ library is unavailable: {result.reason}")
    name = os.path.splitext(os.path.basename(result.library))[0]  # the PyInit_ name torch's build gave it
    loader = importlib.machinery.ExtensionFileLoader(name, result.library)
    spec = importlib.util.spec_from_file_location(name, result.library, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def cuda_sim_library() -> str | None:
    """Build (if needed) and load the CUDA simulator library (the CUDA bindings on CPU tensors, as the
    `.cuda_sim` overload; fastelbo/cpp_backend/cuda_sim.py); None on success, else why it is
    unavailable."""
    return _library("cuda_sim", explicit=False).reason


def cuda_library() -> str | None:
    """Build (if needed) and load the CUDA library (after the CPU one, which defines the operators);
    None on success, else why it is unavailable."""
    return _library("cuda", explicit=False).reason
