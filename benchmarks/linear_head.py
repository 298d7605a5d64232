"""The fused "linear + likelihood" ops against the decoder's last nn.Linear and its loss written in
plain PyTorch, on W4-shaped problems (hidden 512 -> Dx 12288, B = 512; fp32, fwd+bwd).

Implementations, each one training step of the decoder's last layer (leaves: h, W, b, and the
Gaussian's learned logvar (Dx,)):

    plain              logits = F.linear(h, W, b)
                       Bernoulli: loss = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / B
                       Gaussian:  loss = 0.5 * ((x - logits) ** 2 * exp(-logvar) + logvar + log 2 pi).sum() / B
    compile(plain)     torch.compile(plain, fullgraph=True)
    fused[sum]         loss = -fe.linear_<likelihood>_log_prob(h, W, b, x, reduction="sum") / B
                       (the gradients computed in the forward pass, scaled in the backward)
    fused[none]        loss = -fe.linear_<likelihood>_log_prob(h, W, b, x).mean()
                       (per-row values; the backward recomputes each block's logits)
    fused[sum]+compile torch.compile of fused[sum], fullgraph=True

Bytes. With s bytes per element, N rows, H inputs, Dx outputs, the least any implementation
moves is each input read once and each gradient written once:
    minimal   = s (2 N H [h, dh] + 2 Dx H [W, dW] + N Dx [x] + 2 Dx [b, db] (+ 2 Dx [logvar, dlogvar]))
The unfused step also writes the logits and reads them back, and writes their gradient and reads
it twice (for dh and dW): at least 5 s N Dx more, which the fused ops keep in cache, a block
(chunk_size columns) at a time:
    unfused   >= minimal + 5 s N Dx
FLOPs: three GEMMs of 2 N H Dx each (fused[none]: four). On the 2-core CPU the GEMMs dominate the
time; the saving shows in the peak memory (the logits and their gradient, 2 s N Dx, never exist).

    python -m fastelbo.benchmarks.linear_head [--rows 512] [--hidden 512] [--dx 12288] [--reps 7]
        [--chunk-sizes 256 1024 4096] [--device cpu]
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

import fastelbo as fe

from .measure import interleaved_medians, peak_bytes, script_setup, step_call

LOG_2PI = math.log(2 * math.pi)
LIKELIHOODS = ("bernoulli", "gaussian")


def make_inputs(likelihood: str, rows: int, hidden: int, dx: int, device) -> dict:
    g = torch.Generator(device).manual_seed(0)
    t = {"h": torch.randn(rows, hidden, generator=g, device=device),
         "weight": torch.randn(dx, hidden, generator=g, device=device) / math.sqrt(hidden),
         "bias": torch.randn(dx, generator=g, device=device) * 0.1}
    if likelihood == "bernoulli":
        t["x"] = (torch.rand(rows, dx, generator=g, device=device) < 0.5).float()
    else:
        t["x"] = torch.randn(rows, dx, generator=g, device=device)
        t["logvar"] = torch.zeros(dx, device=device)
    return t


def plain_loss(likelihood: str, t: dict) -> torch.Tensor:
    logits = F.linear(t["h"], t["weight"], t["bias"])
    if likelihood == "bernoulli":
        rec = F.binary_cross_entropy_with_logits(logits, t["x"], reduction="sum")
    else:
        v = t["logvar"]
        rec = 0.5 * ((t["x"] - logits) ** 2 * torch.exp(-v) + v + LOG_2PI).sum()
    return rec / t["h"].shape[0]


def fused_loss(likelihood: str, t: dict, reduction: str, chunk_size=None, backend=None) -> torch.Tensor:
    options = {"logvar": t["logvar"]} if likelihood == "gaussian" else {}
    fn = fe.linear_bernoulli_log_prob if likelihood == "bernoulli" else fe.linear_gaussian_log_prob
    out = fn(t["h"], t["weight"], t["bias"], t["x"], reduction=reduction, chunk_size=chunk_size, backend=backend,
             **options)
    return -out / t["h"].shape[0] if reduction == "sum" else -out.mean()


def minimal_bytes(likelihood: str, rows: int, hidden: int, dx: int, s: int = 4) -> int:
    extra = 2 * dx if likelihood == "gaussian" else 0
    return s * (2 * rows * hidden + 2 * dx * hidden + rows * dx + 2 * dx + extra)


def _leaves(t: dict) -> dict:
    return {k: (v.detach().requires_grad_() if k != "x" else v) for k, v in t.items()}


def steps(likelihood: str, backend: str, chunk_sizes) -> dict:
    torch._dynamo.reset()
    out = {"plain": lambda t: plain_loss(likelihood, t)}
    out["compile(plain)"] = torch.compile(out["plain"], fullgraph=True)
    for chunk in chunk_sizes:
        label = "" if chunk is None else f",chunk={chunk}"
        out[f"fused[sum{label}]"] = lambda t, c=chunk: fused_loss(likelihood, t, "sum", c, backend)
    out["fused[none]"] = lambda t: fused_loss(likelihood, t, "none", None, backend)
    out["fused[sum]+compile"] = torch.compile(lambda t: fused_loss(likelihood, t, "sum", None, backend),
                                              fullgraph=True)
    return out


def measure(likelihood: str, rows: int, hidden: int, dx: int, device, reps: int, chunk_sizes) -> dict:
    backend = "cpu" if device.type == "cpu" else "cuda"
    inputs = make_inputs(likelihood, rows, hidden, dx, device)
    calls, peaks = {}, {}
    for name, fn in steps(likelihood, backend, [None] + list(chunk_sizes)).items():
        call, before = calls[name] = step_call(fn, lambda: _leaves(inputs), backward=True)
        before()
        call()  # compiles the compiled ones before the peak is taken
        before()
        peaks[name] = peak_bytes(call, device)
    medians = interleaved_medians(calls, device, reps, warmup=2)
    return {name: (medians[name][0], peaks[name]) for name in calls}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--dx", type=int, default=12288)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--chunk-sizes", type=int, nargs="*", default=[256, 1024, 4096])
    parser.add_argument("--likelihoods", nargs="+", default=list(LIKELIHOODS), choices=LIKELIHOODS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device, _, malloc = script_setup(args.device)
    n, h, dx = args.rows, args.hidden, args.dx
    gflop = 3 * 2 * n * h * dx / 1e9
    print(f"linear head fwd+bwd, N={n} H={h} Dx={dx} fp32 on {device.type}; malloc: {malloc}; "
          f"3 GEMMs = {gflop:.1f} GFLOP; logits {n * dx * 4 / 2**20:.0f} MiB")
    for likelihood in args.likelihoods:
        results = measure(likelihood, n, h, dx, device, args.reps, args.chunk_sizes)
        base_time, base_peak = results["plain"]
        minimal = minimal_bytes(likelihood, n, h, dx)
        print(f"\n{likelihood}: minimal bytes {minimal / 2**20:.0f} MiB (unfused >= "
              f"{(minimal + 5 * 4 * n * dx) / 2**20:.0f} MiB)")
        print(f"  {'implementation':24s} {'median ms':>10s} {'vs plain':>9s} {'vs compile':>10s} {'GFLOP/s':>8s} "
              f"{'peak MiB':>9s}")
        compiled_time = results["compile(plain)"][0]
        for name, (seconds, peak) in results.items():
            print(f"  {name:24s} {seconds * 1e3:10.2f} {base_time / seconds:8.2f}x {compiled_time / seconds:9.2f}x "
                  f"{gflop / seconds:8.1f} {peak / 2**20:9.1f}")


if __name__ == "__main__":
    main()
