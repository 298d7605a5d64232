"""Building the C++ CPU library (fastelbo/cpp_backend/_build.py) reliably: a killed build or a stale
lock never blocks the next process, concurrent first uses build once, a complete build is loaded
without building or writing (a read-only cache works), a missing compiler and FASTELBO_NO_BUILD=1
are reported as such, `fastelbo build` builds or shows the compiler's error, and the build's name
follows its sources.

The end-to-end tests run fresh processes, each with a private TORCH_EXTENSIONS_DIR. Real builds
take about a minute on two cores, so there are two: the module fixture (two processes building
at once in an empty cache, the result copied for the tests that need a complete build) and the
killed-build test (a build killed with SIGKILL, then `fastelbo build`). The other tests reach the
build path with a compiler that fails at once, or stop before it.
"""
import fcntl
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from fastelbo.cpp_backend import _build

BUILDING = "fastelbo: building the C++ CPU backend with ninja"
WAITING = "fastelbo: waiting for another process's build of the C++ CPU backend in"
REPORT = "import fastelbo; print('CPU STATUS:', fastelbo.backends()['cpu'])"
BROKEN = "fake-cxx: error: this compiler is broken on purpose"


def _env(ext_dir, **extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTELBO_NO_BUILD", "FASTELBO_BUILD_VERBOSE", "FASTELBO_BUILD_TIMEOUT", "TRITON_INTERPRET")}
    env["TORCH_EXTENSIONS_DIR"] = str(ext_dir)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _start(args, ext_dir, cwd, **extra):
    return subprocess.Popen([sys.executable] + args, env=_env(ext_dir, **extra), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _run(args, ext_dir, cwd, timeout=300, **extra):
    return subprocess.run([sys.executable] + args, env=_env(ext_dir, **extra), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _status(proc) -> str:
    found = re.findall(r"^CPU STATUS: (.*)$", proc.stdout, re.M)
    assert found, proc.stdout + proc.stderr
    return found[-1]


def _build_dir(ext_dir) -> str:
    return os.path.join(str(ext_dir), _build.library_spec("cpu").name)


def _copy(ext_dir, destination):
    shutil.copytree(str(ext_dir), str(destination), symlinks=True)
    return destination


def _broken_compiler(folder) -> str:
    """A C++ compiler that answers torch's version checks as g++ does, and fails every compile."""
    path = os.path.join(str(folder), "broken-cxx")
    real = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\ncase \"$1\" in -v|--version|-dumpversion|-dumpfullversion) exec {real} \"$@\";; esac\n"
                f"echo '{BROKEN}' >&2\nexit 1\n")
    os.chmod(path, 0o755)
    return path


def _snapshot(folder):
    return {os.path.relpath(os.path.join(top, name), str(folder)): (os.stat(os.path.join(top, name)).st_mtime_ns,
                                                                    os.stat(os.path.join(top, name)).st_size)
            for top, dirs, files in os.walk(str(folder)) for name in dirs + files}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two processes asking for the CPU library at once in an empty cache (each fe.backends()):
    (the extensions dir, both completed processes)."""
    work = tmp_path_factory.mktemp("shared")
    ext = work / "ext"
    procs = [_start(["-c", REPORT], ext, work) for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=400) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return ext, [subprocess.CompletedProcess(p.args, p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


def test_two_concurrent_first_builds_build_once(built):
    """Both processes end with the library available; one built it (one "building" line), the
    other waited for it (one "waiting" line) and loaded it; nothing is left over but the library,
    its marker and the lock file."""
    ext, procs = built
    for p in procs:
        assert p.returncode == 0 and _status(p) == "available", p.stdout + p.stderr
    errs = [p.stderr for p in procs]
    assert sum(e.count(BUILDING) for e in errs) == 1, errs
    assert sum(e.count(WAITING) for e in errs) == 1, errs
    directory = _build_dir(ext)
    assert sorted(os.listdir(directory)) == sorted([_build.MARKER, _build.LOCK, os.path.basename(directory) + ".so"])
    with open(os.path.join(directory, _build.MARKER)) as f:
        assert json.load(f)["library"] == os.path.basename(directory) + ".so"


def test_a_killed_build_does_not_block_the_next(tmp_path):
    """A build killed with SIGKILL while ninja compiles (its ninja and compilers live on,
    orphaned) leaves its locks behind; `fastelbo build` then builds within a bounded time, even
    with FASTELBO_NO_BUILD=1 set (the explicit build ignores it), prints where, and the build is
    complete: a FASTELBO_NO_BUILD=1 process loads it."""
    ext = tmp_path / "ext"
    victim = _start(["-c", REPORT], ext, tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not glob.glob(os.path.join(str(ext), "*", _build.STAGING_PREFIX + "*", "build.ninja")):
            assert victim.poll() is None, victim.communicate()
            assert time.monotonic() < deadline, "the build never started"
            time.sleep(0.2)
        time.sleep(3)  # ninja and the compilers are running
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        directory = _build_dir(ext)
        assert os.path.exists(os.path.join(directory, _build.LOCK))
        assert glob.glob(os.path.join(directory, _build.STAGING_PREFIX + "*", _build.TORCH_LOCK))  # torch's, stale
        assert not os.path.exists(os.path.join(directory, _build.MARKER))

        rerun = _run(["-m", "fastelbo", "build"], ext, tmp_path, timeout=300, FASTELBO_NO_BUILD=1)
        out = rerun.stdout + rerun.stderr
        assert rerun.returncode == 0, out
        library = os.path.join(directory, os.path.basename(directory) + ".so")
        assert f"directory {directory}" in rerun.stdout and f"library   {library}" in rerun.stdout, out
        assert rerun.stderr.count(BUILDING) == 1 and WAITING not in rerun.stderr, out
        assert os.path.isfile(library)
        assert not glob.glob(os.path.join(directory, _build.STAGING_PREFIX + "*"))

        again = _run(["-c", REPORT], ext, tmp_path, timeout=120, FASTELBO_NO_BUILD=1)
        assert _status(again) == "available", again.stdout + again.stderr
    finally:
        try:  # the orphans of the killed build (its ninja and compilers, in its process group) too
            os.killpg(victim.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if victim.poll() is None:
            victim.wait()


def test_stale_locks_do_not_block_a_build(tmp_path):
    """Locks of a dead build (torch's FileBaton in the build directory and in a staging folder, our
    lock file with no process holding it) do not stop the next build: it goes straight to the
    compiler (here one that fails at once), removes the leftovers, and reports the failure."""
    ext = tmp_path / "ext"
    directory = _build_dir(ext)
    os.makedirs(os.path.join(directory, _build.STAGING_PREFIX + "dead"))
    for path in (_build.TORCH_LOCK, _build.LOCK, os.path.join(_build.STAGING_PREFIX + "dead", _build.TORCH_LOCK)):
        with open(os.path.join(directory, path), "w") as f:
            f.write("12345\n")
    start = time.monotonic()
    proc = _run(["-c", REPORT], ext, tmp_path, timeout=120, CXX=_broken_compiler(tmp_path))
    assert time.monotonic() - start < 120
    status = _status(proc)
    assert status.startswith("build failed") and "broken on purpose" in status, proc.stdout + proc.stderr
    assert proc.stderr.count(BUILDING) == 1 and WAITING not in proc.stderr
    assert sorted(os.listdir(directory)) == [_build.LOCK]


def test_stale_locks_do_not_block_loading_a_complete_build(built, tmp_path):
    ext = _copy(built[0], tmp_path / "ext")
    directory = _build_dir(ext)
    for path in (_build.TORCH_LOCK, _build.LOCK):
        with open(os.path.join(directory, path), "w") as f:
            f.write("12345\n")
    proc = _run(["-c", REPORT], ext, tmp_path, timeout=120)
    assert _status(proc) == "available" and BUILDING not in proc.stderr and WAITING not in proc.stderr


def test_a_live_build_is_waited_for_a_bounded_time(tmp_path):
    """While another process holds the build lock, a process that needs the build says it waits,
    and after FASTELBO_BUILD_TIMEOUT seconds gives up: the backend is unavailable, with why."""
    ext = tmp_path / "ext"
    directory = _build_dir(ext)
    os.makedirs(directory)
    lock = os.path.join(directory, _build.LOCK)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\n"
                               f"f = open({lock!r}, 'a'); fcntl.flock(f, fcntl.LOCK_EX)\n"
                               "print('held', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        proc = _run(["-c", REPORT], ext, tmp_path, timeout=100, FASTELBO_BUILD_TIMEOUT=3)
        waited = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait()
    status = _status(proc)
    assert "another process has been building it" in status and "FASTELBO_BUILD_TIMEOUT=3" in status, status
    assert proc.stderr.count(WAITING) == 1 and BUILDING not in proc.stderr
    assert 3 <= waited < 100
    assert os.listdir(directory) == [_build.LOCK]


def test_a_read_only_complete_cache_is_loaded_without_a_write(built, tmp_path):
    """A complete build is loaded without building or writing anything: no file or folder of the
    cache changes (mtime, size, names). The cache is made unwritable first: with `chattr +i`
    (immutable: no write succeeds, not even root's) where the file system allows it, as on the
    2-core CI machine; else with chmod a-w, which stops a non-root user only. Where neither holds
    (root without chattr), the test proves no write happened, not that none was attempted."""
    ext = _copy(built[0], tmp_path / "ext")
    before = _snapshot(ext)
    immutable = shutil.which("chattr") is not None and subprocess.run(
        ["chattr", "-R", "+i", str(ext)], capture_output=True).returncode == 0
    if not immutable:
        subprocess.run(["chmod", "-R", "a-w", str(ext)], check=True)
    try:
        if immutable:  # the cache really is read-only
            with pytest.raises(OSError):
                open(os.path.join(_build_dir(ext), "probe"), "w").close()
        proc = _run(["-c", REPORT], ext, tmp_path, timeout=120)
    finally:
        subprocess.run(["chattr", "-R", "-i", str(ext)] if immutable else ["chmod", "-R", "u+w", str(ext)], check=True)
    assert _status(proc) == "available", proc.stdout + proc.stderr
    assert BUILDING not in proc.stderr and WAITING not in proc.stderr
    assert _snapshot(ext) == before


def test_no_build_uses_a_complete_build_and_never_compiles(built, tmp_path):
    """FASTELBO_NO_BUILD=1: with an empty cache the backend is unavailable, the reason names
    `fastelbo build`, and nothing is written; with a complete cache the library is available."""
    empty = tmp_path / "empty"
    proc = _run(["-c", REPORT], empty, tmp_path, timeout=120, FASTELBO_NO_BUILD=1)
    status = _status(proc)
    assert "FASTELBO_NO_BUILD=1" in status and "`fastelbo build`" in status, status
    assert BUILDING not in proc.stderr and not empty.exists()

    ext = _copy(built[0], tmp_path / "ext")
    proc = _run(["-c", REPORT], ext, tmp_path, timeout=120, FASTELBO_NO_BUILD=1)
    assert _status(proc) == "available" and BUILDING not in proc.stderr


def test_without_a_compiler_the_reason_says_so(tmp_path):
    """PATH holds ninja only (python is run by its full path): no c++, no g++; then $CXX names a
    compiler that does not exist."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(shutil.which("ninja"), bin_dir / "ninja")
    ext = tmp_path / "ext"
    proc = _run(["-c", REPORT], ext, tmp_path, timeout=120, PATH=bin_dir)
    assert "no C++ compiler found (tried c++, g++)" in _status(proc), proc.stdout + proc.stderr
    proc = _run(["-c", REPORT], ext, tmp_path, timeout=120, PATH=bin_dir, CXX="no-such-cxx")
    assert "no C++ compiler found (tried $CXX='no-such-cxx'" in _status(proc), proc.stdout + proc.stderr
    assert BUILDING not in proc.stderr
    assert not glob.glob(os.path.join(str(ext), "**", "*.so"), recursive=True)


def test_fastelbo_build_shows_the_compiler_error(tmp_path):
    """With a compiler that fails, `fastelbo build` exits non-zero and prints the compiler's own
    error output, and the backend reports it in one line."""
    proc = _run(["-m", "fastelbo", "build"], tmp_path / "ext", tmp_path, timeout=120,
                CXX=_broken_compiler(tmp_path))
    assert proc.returncode != 0
    assert "cpu   FAILED: build failed" in proc.stdout, proc.stdout + proc.stderr
    assert BROKEN in proc.stderr  # the compiler's output, in full
    assert "ninja: build stopped" in proc.stderr  # ninja's, not torch's check of the compiler


def test_a_compiler_failing_its_version_check_is_reported(tmp_path):
    """torch runs the compiler for its version before ninja; that failure shows the compiler's
    output too."""
    script = tmp_path / "cxx-fails-everything"
    script.write_text(f"#!/bin/sh\necho '{BROKEN}' >&2\nexit 1\n")
    script.chmod(0o755)
    proc = _run(["-m", "fastelbo", "build"], tmp_path / "ext", tmp_path, timeout=120, CXX=script)
    assert proc.returncode != 0 and BROKEN in proc.stdout + proc.stderr, proc.stdout + proc.stderr


# ---- in-process: names, hashes, the lock, threads (nothing compiled) ----

def test_a_changed_source_gives_another_build_directory(tmp_path):
    """The build's name (and so its directory) follows the content of every file of the folders it
    compiles, headers included, and its flags, but not where the checkout is: a copy of csrc/
    gets the same name, an edited copy another; an edit in csrc/cuda/ leaves the CPU name alone."""
    copy = tmp_path / "csrc"
    shutil.copytree(_build.csrc_dir(), copy)
    here = {kind: _build.library_spec(kind) for kind in ("cpu", "cuda")}
    assert _build.library_spec("cpu", root=str(copy)).name == here["cpu"].name
    for spec in here.values():
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", spec.name) and spec.name.startswith("fastelbo_")

    with open(copy / "core" / "math.h", "a") as f:  # a header only
        f.write("\n// another version\n")
    edited = {kind: _build.library_spec(kind, root=str(copy)) for kind in ("cpu", "cuda")}
    for kind in ("cpu", "cuda"):
        assert edited[kind].name != here[kind].name and edited[kind].directory != here[kind].directory

    shutil.rmtree(copy)
    shutil.copytree(_build.csrc_dir(), copy)
    with open(copy / "cuda" / "ops.h", "a") as f:
        f.write("\n// another version\n")
    assert _build.library_spec("cpu", root=str(copy)).name == here["cpu"].name
    assert _build.library_spec("cuda", root=str(copy)).name != here["cuda"].name


REFERENCE_ONLY = """
import torch, fastelbo as fe, fastelbo.reference as ref
mu, s, x = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4), torch.rand(3, 5).round()
w = torch.randn(4, 5)
lat = fe.gaussian_latent(mu, s, n_samples=2, backend="reference")
ll = fe.bernoulli_log_prob(lat.z @ w, x, backend="reference")
fe.elbo(ll, lat, estimator="iwae").sum().backward()
fe.gaussian_kl(mu, s, backend="reference")
fe.ELBO(backend="reference")(x, mu, s, lambda z: z @ w).loss.backward()
with fe.use_backend("reference"):
    fe.vae_loss(torch.randn(3, 5), x, mu, s).backward()
    fe.reparameterize(mu, s)
ref.ELBO("gaussian")(x, mu, s, lambda z: z @ w)
import fastelbo.cpp_backend._build as b
print("LIBRARIES ASKED FOR:", sorted(b._results))
"""


def test_importing_and_reference_calls_never_build(tmp_path):
    """import fastelbo and every public function on backend "reference" (fe.elbo follows the
    latent's backend) leave the extension cache untouched: nothing built, nothing even created."""
    ext_dir = tmp_path / "ext"
    proc = _run(["-c", REFERENCE_ONLY], ext_dir, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert BUILDING not in proc.stderr
    assert "LIBRARIES ASKED FOR: []" in proc.stdout
    assert not ext_dir.exists() or not any(ext_dir.iterdir())


def test_the_flags_enter_the_name(monkeypatch):
    name = _build.library_spec("cpu").name
    monkeypatch.setitem(_build._CPU_FLAGS, _build.cpu_capability(), ["-DSOMETHING_ELSE"])
    other = _build.library_spec("cpu").name
    assert other != name and other.rsplit("_", 1)[0] == name.rsplit("_", 1)[0]


def test_the_build_directory_is_under_torch_extensions_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    spec = _build.library_spec("cpu")
    assert spec.directory == os.path.join(str(tmp_path), spec.name)
    assert not os.path.exists(spec.directory)  # computing it writes nothing


def _spec_in(tmp_path, name="fastelbo_cpu_test_0123456789abcdef"):
    spec = _build.LibrarySpec("cpu", "C++ CPU backend", name, str(tmp_path / name), (), ())
    os.makedirs(spec.directory, exist_ok=True)
    return spec


def test_the_lock_waits_a_bounded_time_for_a_live_holder(tmp_path, capfd):
    spec = _spec_in(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\n"
                               f"f = open({spec.lock!r}, 'a'); fcntl.flock(f, fcntl.LOCK_EX)\n"
                               "print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        with pytest.raises(_build.Unavailable, match="another process has been building it"):
            with _build.build_lock(spec, timeout=0.5):
                pass
        assert 0.5 <= time.monotonic() - start < 10
        assert capfd.readouterr().err.count(WAITING) == 1
    finally:
        holder.kill()
        holder.wait()
    with _build.build_lock(spec, timeout=0):  # its holder is gone: taken at once
        pass


def test_a_lock_file_without_a_holder_is_taken_at_once(tmp_path, capfd):
    spec = _spec_in(tmp_path)
    with open(spec.lock, "w") as f:
        f.write("99999999\n")
    with _build.build_lock(spec, timeout=0):
        with open(spec.lock) as f:
            assert f.read().strip() == str(os.getpid())
        with open(spec.lock) as other:  # and it is held: another open file description is refused
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert WAITING not in capfd.readouterr().err


def test_the_marker_names_a_library_in_the_directory(tmp_path):
    spec = _spec_in(tmp_path)
    assert _build.complete_library(spec) is None
    library = os.path.join(spec.directory, spec.name + ".so")
    open(library, "w").close()
    assert _build.complete_library(spec) is None  # a library without a marker is not complete
    _build._write_marker(spec, library)
    assert _build.complete_library(spec) == library
    assert sorted(os.listdir(spec.directory)) == sorted([_build.MARKER, spec.name + ".so"])  # no temporary left
    with open(spec.marker, "w") as f:
        json.dump({"library": "../elsewhere.so"}, f)
    assert _build.complete_library(spec) is None
    with open(spec.marker, "w") as f:
        f.write("{trunc")
    assert _build.complete_library(spec) is None


def test_threads_asking_at_once_build_once(tmp_path, monkeypatch, capfd):
    """Eight threads call cpu_library() at once in a process where it has not run: torch's load()
    (faked: it writes a file) runs once, the "building" line is printed once, every thread gets
    the same answer; the build is marked complete, and a fresh process (a new result cache) loads
    the marked library without building."""
    spec = _spec_in(tmp_path)
    loads, loaded = [], []

    def fake_load(name, sources, build_directory, **options):
        loads.append(name)
        time.sleep(0.5)
        path = os.path.join(build_directory, name + ".so")
        open(path, "w").close()
        return path

    import torch.utils.cpp_extension

    monkeypatch.setattr(torch.utils.cpp_extension, "load", fake_load)
    monkeypatch.setattr(_build, "library_spec", lambda kind, root=None: spec)
    monkeypatch.setattr(_build, "_load_complete", loaded.append)
    monkeypatch.setattr(_build, "_results", {})
    monkeypatch.delenv("FASTELBO_NO_BUILD", raising=False)
    barrier = threading.Barrier(8)
    answers = []

    def ask():
        barrier.wait()
        answers.append(_build.cpu_library())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [None] * 8 and loads == [spec.name] and loaded == []
    assert capfd.readouterr().err.count(BUILDING) == 1
    library = os.path.join(spec.directory, spec.name + ".so")
    assert _build.complete_library(spec) == library
    assert not glob.glob(os.path.join(spec.directory, _build.STAGING_PREFIX + "*"))

    monkeypatch.setattr(_build, "_results", {})
    assert _build.cpu_library() is None and loads == [spec.name] and loaded == [library]
    assert BUILDING not in capfd.readouterr().err
