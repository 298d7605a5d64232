"""The `fastelbo` command line (also `python -m fastelbo`)."""
from __future__ import annotations

import argparse
import sys

import torch

from . import _backend

DTYPE_NAMES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _devices_present() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def _interpret_triton_on_cpu(devices: list[str]) -> bool:
    """Where the check runs on CPU tensors only, check the Triton kernels in Triton's interpreter:
    set TRITON_INTERPRET=1 before anything imports them (unless the user chose a value)."""
    import importlib.util
    import os

    if devices != ["cpu"] or "TRITON_INTERPRET" in os.environ or importlib.util.find_spec("triton") is None:
        return False
    os.environ["TRITON_INTERPRET"] = "1"
    return True


def check_targets(names: list[str], status: dict, devices: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """The (backend, device) pairs to check, and a line for each backend left out and why.

    Each available backend is checked on every device in `devices` whose tensors it takes, except
    that Triton runs on CPU tensors (in its interpreter) only where no CUDA device is checked."""
    targets, skipped = [], []
    for name in names:
        if status.get(name) != "available":
            skipped.append(f"  {name:<10} unavailable: {status.get(name, 'unknown backend')}")
            continue
        own = [d for d in devices if _backend.runs_on(name, d)]
        if name == "triton" and "cuda" in own:
            own = ["cuda"]
        if not own:
            wanted = "CPU" if _backend._DEVICE_TYPE.get(name) == "cpu" else "CUDA"
            skipped.append(f"  {name:<10} skipped: it takes {wanted} tensors, not {' or '.join(devices)} (see --device)")
        targets += [(name, d) for d in own]
    return targets, skipped


def cmd_check(args) -> int:
    """Every public op on every available backend against the float64 reference; exit 1 on a failure."""
    devices = [torch.device(args.device).type] if args.device else _devices_present()
    interpreted = _interpret_triton_on_cpu(devices)
    from . import backends
    from .testing import CASES, compare

    status = backends()
    targets, skipped = check_targets(args.backend or list(status), status, devices)
    print(f"fastelbo check on {' and '.join(devices)}, torch {torch.__version__}")
    if interpreted:
        print("  triton     runs in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1): slow, but the same kernels")
    if _backend.CUDA_SIM and ("cuda", "cpu") in targets:
        print("  cuda       runs in fastelbo's CUDA simulator on CPU tensors (FASTELBO_CUDA_SIM=1): slow, but the same "
              "bindings and kernels")
    for line in skipped:
        print(line)
    dtypes = [DTYPE_NAMES[d] for d in (args.dtype or DTYPE_NAMES)]
    header = f"{'op':<38} {'backend':<10} {'device':<7} {'dtype':<9} {'max err fwd':>12} {'max err bwd':>12}  result"
    print(header)
    print("-" * len(header))
    failures = 0
    for case in CASES:
        for name, device in targets:
            for dtype in dtypes:
                r = compare(case, name, dtype, device=device, seed=args.seed)
                failures += not r.passed
                verdict = "pass" if r.passed else f"FAIL {r.detail}"
                dname = str(dtype).replace("torch.", "")
                print(f"{r.case:<38} {name:<10} {device:<7} {dname:<9} {r.fwd_error:>12.3g} {r.bwd_error:>12.3g}  {verdict}")
    total = len(CASES) * len(targets) * len(dtypes)
    print(f"{total - failures} passed, {failures} failed")
    return 1 if failures else 0


def cmd_build(args) -> int:
    """Compile the C++ libraries into the cache (ignoring FASTELBO_NO_BUILD) and say where; exit 1
    with the compiler's output if a build fails."""
    from .cpp_backend import _build

    print(f"fastelbo build: torch {torch.__version__}, extensions cache {_build.extensions_root()}", flush=True)
    failures = 0
    for kind in ("cpu", "cuda"):
        result = _build.build(kind)
        if not result.applicable:
            print(f"  {kind:<5} skipped: {result.reason}")
            continue
        if result.reason is not None:
            failures += 1
            print(f"  {kind:<5} FAILED: {result.reason}")
            if result.directory:
                print(f"        directory {result.directory}")
            if result.detail:
                print(result.detail.rstrip(), file=sys.stderr)
            continue
        done = f"built in {result.seconds:.0f} s" if result.built else "already built"
        print(f"  {kind:<5} {done}: directory {result.directory}")
        print(f"        library   {result.library}")
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastelbo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check every op on every available backend against the reference")
    check.add_argument("--backend", action="append", choices=["reference", "cpu", "triton", "cuda"],
                       help="backend to check (repeatable; default: all)")
    check.add_argument("--dtype", action="append", choices=list(DTYPE_NAMES), help="dtype (repeatable; default: all)")
    check.add_argument("--device", default=None,
                       help="device of the test tensors (default: every device present, each backend on its own)")
    check.add_argument("--seed", type=int, default=None, help="seed of the random inputs (default: fresh)")
    check.set_defaults(func=cmd_check)

    build = sub.add_parser("build", help="compile the C++ backends into the cache now (even with FASTELBO_NO_BUILD=1)",
                           description=cmd_build.__doc__)
    build.set_defaults(func=cmd_build)

    from .demo import command as demo

    demo_parser = sub.add_parser("demo", help="train a small VAE on built-in digits, fused against plain PyTorch",
                                 description=demo.__doc__)
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(func=demo.run)

    from .benchmarks import run as bench_run

    bench = sub.add_parser("bench", help="time the workloads on every backend against plain PyTorch and torch.compile",
                           description=bench_run.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_run.add_arguments(bench)
    bench.set_defaults(func=bench_run.main_from_args)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
