"""How much of the fused step's distance to torch.compile is the decoder's last op.

torch.compile fuses the stand-in decoder's elementwise op (`base + z.mean(-1, keepdim=True)`, the
last op of a real decoder) into the loss after it, and never writes the decoder's output in full;
a fused ELBO op receives that output materialized, and its gradient materialized in backward. This
times the fwd+bwd step of plain, compile(plain), cpu and cpu+compile twice in one run, with the
stand-in decoder and with the logits given (the decoder's op removed), interleaved as
`fastelbo bench` does, and prints what the one op costs each implementation.

    python -m fastelbo.benchmarks.decoder_share [--workloads W4 W1] [--reps 15] [--device cpu]
"""
from __future__ import annotations

import argparse

import torch

from .measure import interleaved_medians, script_setup, step_call
from .workloads import WORKLOADS, decoder, fused_loss, leaves, make_inputs, plain_loss


def _logits_given(base: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """No decoder op: the loss reads the decoder's output as given (z reaches it only through the KL)."""
    return base


def _calls(w, inputs: dict, decode, backend: str) -> dict:
    torch._dynamo.reset()
    steps = {
        "plain": lambda t: plain_loss(w, t, decode=decode),
        backend: lambda t: fused_loss(w, t, backend, decode=decode),
    }
    steps["compile(plain)"] = torch.compile(steps["plain"], fullgraph=True)
    steps[f"{backend}+compile"] = torch.compile(steps[backend], fullgraph=True)
    return {name: step_call(fn, lambda: leaves(inputs, True), backward=True) for name, fn in steps.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=["W4"],
                        choices=sorted(n for n, w in WORKLOADS.items() if hasattr(w, "data_dim")))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args(argv)
    device, backend, malloc = script_setup(args.device)
    print(f"malloc: {malloc}; fwd+bwd medians in ms")
    for name in args.workloads:
        w = WORKLOADS[name]
        inputs = make_inputs(w, device)
        times = {}
        for label, decode in (("with the decoder op", decoder), ("logits given", _logits_given)):
            medians = interleaved_medians(_calls(w, inputs, decode, backend), device, args.reps, warmup=3)
            times[label] = {impl: seconds * 1e3 for impl, (seconds, _) in medians.items()}
        with_op, without = times["with the decoder op"], times["logits given"]
        compiled = "compile(plain)"
        print(f"{name} ({w.describe()})")
        for label, t in times.items():
            print(f"  {label:20s} " + "  ".join(f"{impl} {ms:.3f}" for impl, ms in t.items())
                  + f"   {backend} vs compile(plain) {t[compiled] / t[backend]:.2f}x")
        print(f"  the decoder op costs: " + ", ".join(f"{impl} {with_op[impl] - without[impl]:+.3f} ms"
                                                      for impl in with_op))


if __name__ == "__main__":
    main()
