"""The `fastelbo` command line (also `python -m fastelbo`)."""
from __future__ import annotations

import argparse
import sys

import torch

DTYPE_NAMES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _interpret_triton_on_cpu(device: str) -> bool:
    """On CPU tensors, check the Triton kernels in Triton's interpreter: set TRITON_INTERPRET=1
    before anything imports them (unless the user chose a value)."""
    import importlib.util
    import os

    if device != "cpu" or "TRITON_INTERPRET" in os.environ or importlib.util.find_spec("triton") is None:
        return False
    os.environ["TRITON_INTERPRET"] = "1"
    return True


def cmd_check(args) -> int:
    """Every public op on every available backend against the float64 reference; exit 1 on a failure."""
    interpreted = _interpret_triton_on_cpu(args.device)
    from . import backends
    from .testing import CASES, compare

    status = backends()
    names = args.backend or list(status)
    print(f"fastelbo check on {args.device}, torch {torch.__version__}")
    if interpreted:
        print("  triton     runs in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1): slow, but the same kernels")
    from ._backend import runs_on

    device_type = torch.device(args.device).type
    for name in names:
        if status.get(name) != "available":
            print(f"  {name:<10} unavailable: {status.get(name, 'unknown backend')}")
        elif not runs_on(name, device_type):
            print(f"  {name:<10} skipped: it takes {'CPU' if name == 'cpu' else 'CUDA'} tensors, not {device_type} (see --device)")
    runnable = [n for n in names if status.get(n) == "available" and runs_on(n, device_type)]
    dtypes = [DTYPE_NAMES[d] for d in (args.dtype or DTYPE_NAMES)]
    header = f"{'op':<38} {'backend':<10} {'dtype':<9} {'max err fwd':>12} {'max err bwd':>12}  result"
    print(header)
    print("-" * len(header))
    failures = 0
    for case in CASES:
        for name in runnable:
            for dtype in dtypes:
                r = compare(case, name, dtype, device=args.device, seed=args.seed)
                failures += not r.passed
                verdict = "pass" if r.passed else f"FAIL {r.detail}"
                dname = str(dtype).replace("torch.", "")
                print(f"{r.case:<38} {name:<10} {dname:<9} {r.fwd_error:>12.3g} {r.bwd_error:>12.3g}  {verdict}")
    total = len(CASES) * len(runnable) * len(dtypes)
    print(f"{total - failures} passed, {failures} failed")
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastelbo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check every op on every available backend against the reference")
    check.add_argument("--backend", action="append", choices=["reference", "cpu", "triton", "cuda"],
                       help="backend to check (repeatable; default: all)")
    check.add_argument("--dtype", action="append", choices=list(DTYPE_NAMES), help="dtype (repeatable; default: all)")
    check.add_argument("--device", default=_default_device(), help="device of the test tensors (default: %(default)s)")
    check.add_argument("--seed", type=int, default=None, help="seed of the random inputs (default: fresh)")
    check.set_defaults(func=cmd_check)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
