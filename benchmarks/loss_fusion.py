"""What the loss-level fusion of fe.ELBO saves: the fwd+bwd step of the ELBO workloads (estimator
"elbo": S1, S2, W1, W2, W4) through fe.ELBO, with the fusion and without it, against the same step
through the ops, plain PyTorch and torch.compile of it, interleaved as `fastelbo bench` does, with
each step's peak memory.

fe.ELBO (estimator "elbo", reduction "mean") knows the gradient its loss gives every row of the
log-likelihood (-1 / (K B)): the likelihood kernel writes its gradient buffer scaled by it in the
forward pass, and loss.backward() finds exactly that gradient and takes the buffer as the logits'
(the Gaussian mean's) gradient (fastelbo/ops/bernoulli_log_prob.py). Without the fusion the
backward reads the buffer and writes the product g b: 2 K B Dx elements moved (8 K B Dx bytes in
float32; the Gaussian's backward still reads the buffer once for its logvar gradient, so it saves
the write, 4 K B Dx bytes) and one tensor of the logits' size more. "fe.ELBO unfused" is the same
module call with the scale left at 1 (the backward then makes that product), to isolate the fusion
in one run.

    python -m fastelbo.benchmarks.loss_fusion [--workloads S1 S2 W1 W2 W4] [--reps 30] [--device cpu]
"""
from __future__ import annotations

import argparse
import contextlib

import torch

import fastelbo as fe
import fastelbo.module

from .measure import interleaved_medians, peak_bytes, script_setup, step_call
from .workloads import WORKLOADS, decoder, fused_loss, leaves, make_inputs, plain_loss


@contextlib.contextmanager
def _unfused():
    """fe.ELBO with its likelihood's buffer left unscaled (expected gradient 1): the backward makes
    the product g b, as before the fusion."""
    saved = fastelbo.module.expected_row_grad
    fastelbo.module.expected_row_grad = lambda *args: 1.0
    try:
        yield
    finally:
        fastelbo.module.expected_row_grad = saved


def _module_loss(w, objective, t: dict) -> torch.Tensor:
    if w.likelihood == "gaussian":  # the learned logvar (Dx,) with the mean
        return objective(t["x"], t["mu"], t["scale"], lambda z: (decoder(t["base"], z), t["logvar"])).loss
    return objective(t["x"], t["mu"], t["scale"], lambda z: decoder(t["base"], z)).loss


def _steps(w, backend: str) -> dict:
    torch._dynamo.reset()
    objective = fe.ELBO(w.likelihood, n_samples=w.n_samples, kl=w.kl, estimator=w.estimator, backend=backend)

    def unfused(t):
        with _unfused():
            return _module_loss(w, objective, t)

    steps = {
        "plain": lambda t: plain_loss(w, t),
        f"{backend} ops": lambda t: fused_loss(w, t, backend),
        f"{backend} fe.ELBO": lambda t: _module_loss(w, objective, t),
        f"{backend} fe.ELBO unfused": unfused,
    }
    steps["compile(plain)"] = torch.compile(steps["plain"], fullgraph=True)
    return steps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    elbo_workloads = [n for n, w in WORKLOADS.items() if getattr(w, "estimator", None) == "elbo" and not w.gpu_only]
    parser.add_argument("--workloads", nargs="+", default=elbo_workloads, choices=elbo_workloads)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args(argv)
    device, backend, malloc = script_setup(args.device)
    print(f"malloc: {malloc}; fwd+bwd medians of interleaved calls (ms), peak memory of one step (MiB)")
    for name in args.workloads:
        w = WORKLOADS[name]
        inputs = make_inputs(w, device)
        steps = _steps(w, backend)
        calls = {impl: step_call(fn, lambda: leaves(inputs, True), backward=True) for impl, fn in steps.items()}
        medians = interleaved_medians(calls, device, args.reps, warmup=5, min_seconds=1.0)
        tensor_mib = 4 * w.n_samples * w.batch * w.data_dim / 2**20
        saved_mib = tensor_mib * (1 if w.likelihood == "gaussian" else 2)
        print(f"{name} ({w.describe()}); the fusion saves {saved_mib:.2f} MiB of traffic and one "
              f"{tensor_mib:.2f} MiB tensor")
        plain_ms = medians["plain"][0] * 1e3
        compiled_ms = medians["compile(plain)"][0] * 1e3
        for impl, (seconds, _) in medians.items():
            call, before = calls[impl]
            before()
            peak = peak_bytes(call, device) / 2**20
            ms = seconds * 1e3
            print(f"  {impl:24s} {ms:8.4f} ms  {plain_ms / ms:5.2f}x plain  {compiled_ms / ms:5.2f}x compile(plain)"
                  f"  peak {peak:7.3f} MiB")


if __name__ == "__main__":
    main()
