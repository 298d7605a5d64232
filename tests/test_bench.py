"""`fastelbo bench` (fastelbo.benchmarks): a short run end to end on CPU, and its parts: the plain
baseline computing what the fused step computes, the interleaved timing, the peak memory of a call,
the progress bar and the table."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import subprocess
import sys

import pytest
import torch

import fastelbo as fe
from fastelbo.benchmarks import decoder_share, dmol, hierarchical, linear_head, measure, report, run
from fastelbo.benchmarks.measure import interleaved_medians, peak_bytes
from fastelbo.benchmarks.workloads import GRAD_LEAVES, WORKLOADS, decoder, fused_loss, leaves, make_inputs, plain_loss
from helpers import DEVICE

MiB = 2**20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
needs_cpu_backend = pytest.mark.skipif(fe.backends()["cpu"] != "available", reason="the cpu backend is unavailable")


def bench(tmp_path, *options) -> dict:
    """Run the benchmark on S1 (CPU, 2 rounds of timed calls) into tmp_path; {extension: path} of what it
    wrote. glibc's malloc is left as it is: `--malloc steady` would change it for the rest of the test process."""
    argv = ["--device", "cpu", "--workloads", "S1", "--reps", "2", "--min-time", "0", "--warmup", "1",
            "--malloc", "default", "--out", str(tmp_path), *options]
    assert run.main(argv) == 0
    return {p.suffix: p for p in tmp_path.iterdir()}


def read_csv(path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@needs_cpu_backend
def test_bench_writes_every_file_with_provenance(tmp_path, capsys):
    files = bench(tmp_path, "--impls", "plain", "reference", "cpu")
    assert sorted(files) == [".csv", ".json", ".md", ".png"]
    rows = read_csv(files[".csv"])
    impls = ("plain", "reference", "cpu")
    assert {(r["mode"], r["impl"]) for r in rows} == {(m, i) for m in ("fwd", "fwd+bwd") for i in impls}
    for row in rows:
        assert row["commit"] and row["device"] and row["torch"] == torch.__version__ and row["malloc"] == "default"
        assert int(row["bytes"]) == WORKLOADS["S1"].bytes_moved(row["mode"] == "fwd+bwd")
        assert float(row["peak_MiB"]) >= 0 and float(row["median_ms"]) > 0 and int(row["reps"]) >= 2
        assert row["speedup_vs_compile_plain"] == ""  # compile(plain) was not measured
        if row["impl"] == "plain":
            assert float(row["speedup_vs_plain"]) == 1.0
    assert len(json.loads(files[".json"].read_text())["rows"]) == len(rows)
    md = files[".md"].read_text()
    assert "| S1 | fwd+bwd | cpu |" in md and "- S1: B=256 D=8 Dx=64, Bernoulli, analytic KL, ELBO" in md
    assert files[".png"].read_bytes().startswith(PNG_SIGNATURE)
    table = capsys.readouterr().out
    assert report.header() in table and sum(line.startswith("S1 ") for line in table.splitlines()) == 6


def test_bench_against_torch_compile(tmp_path):
    """compile(plain) ("compile" for short) and, with the cpu backend, the fused step inside torch.compile."""
    fused = ["cpu+compile"] if fe.backends()["cpu"] == "available" else []
    files = bench(tmp_path, "--impls", "compile", *fused)
    rows = read_csv(files[".csv"])
    assert {r["impl"] for r in rows} == {"compile(plain)", *fused}
    assert [float(r["speedup_vs_compile_plain"]) for r in rows if r["impl"] == "compile(plain)"] == [1.0, 1.0]
    assert all(r["speedup_vs_plain"] == "" and float(r["speedup_vs_compile_plain"]) > 0 for r in rows)
    assert files[".png"].read_bytes().startswith(PNG_SIGNATURE)


@needs_cpu_backend
def test_bench_without_baselines_or_plot(tmp_path, capsys):
    files = bench(tmp_path, "--impls", "cpu", "--no-plot")
    assert sorted(files) == [".csv", ".json", ".md"]
    assert all(r["speedup_vs_plain"] == r["speedup_vs_compile_plain"] == "" for r in read_csv(files[".csv"]))
    assert "| - | - |" in files[".md"].read_text()


def test_bench_refuses_an_implementation_it_cannot_time(tmp_path, capsys):
    argv = ["--device", "cpu", "--workloads", "S1", "--impls", "triton", "--out", str(tmp_path)]
    assert run.main(argv) == 2
    assert "cannot time triton" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_default_workloads_and_baselines():
    assert [name for name, w in WORKLOADS.items() if not w.gpu_only] == ["S1", "S2", "W1", "W2", "W3", "W4", "W6",
                                                                          "W7"]
    assert list(WORKLOADS) == ["S1", "S2", "W1", "W2", "W3", "W4", "W5", "W6", "W7"]
    assert list(run.BASELINES) == ["plain", "compile(plain)"]  # never the reference path


@pytest.mark.parametrize("backend", [name for name in ("reference", "cpu") if fe.backends()[name] == "available"])
@pytest.mark.parametrize("name", [n for n, w in WORKLOADS.items() if hasattr(w, "data_dim")])  # (W6: below)
@pytest.mark.parametrize("decode", [decoder, decoder_share._logits_given], ids=["decoder", "logits_given"])
def test_plain_step_is_the_fused_step(name, backend, decode):
    """Given the same noise, the plain baseline and the fastelbo step are the same function of the
    inputs: the same loss and the same gradients (float64, each workload shrunk), with the stand-in
    decoder and without it (decoder_share.py's second case)."""
    w = dataclasses.replace(WORKLOADS[name], batch=min(WORKLOADS[name].batch, 12),
                            data_dim=min(WORKLOADS[name].data_dim, 40))
    inputs = make_inputs(w, "cpu", torch.float64, seed=3)
    eps = torch.randn(*((w.n_samples,) if w.n_samples > 1 else ()), w.batch, w.latent_dim, dtype=torch.float64)
    results = []
    for step in (lambda t: plain_loss(w, t, eps=eps, decode=decode),
                 lambda t: fused_loss(w, t, backend, eps=eps, decode=decode)):
        t = leaves(inputs, backward=True)
        loss = step(t)
        loss.backward()
        results.append([loss.detach()] + [t[n].grad for n in GRAD_LEAVES if n in t])
    for plain, fused in zip(*results):
        torch.testing.assert_close(fused, plain, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_steady_malloc_on_glibc():
    """--malloc steady (the default) sets glibc's thresholds; in a process of its own, as it lasts."""
    code = "from fastelbo.benchmarks.measure import steady_malloc; print(steady_malloc())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("steady (glibc mmap threshold 32 MiB, no trim)") or "no glibc" in out


def test_interleaved_timing_takes_turns():
    order = []
    calls = {name: (lambda name=name: order.append(name), None) for name in "abc"}
    medians = interleaved_medians(calls, torch.device("cpu"), reps=3, warmup=1)
    assert order == list("abc") + list("abc") + list("bca") + list("cab")  # warmup, then rounds in turn
    assert all(timed == 3 and seconds >= 0 for seconds, timed in medians.values())


DEVICES = ["cpu"] + (["cuda"] if DEVICE == "cuda" else [])


@pytest.mark.parametrize("device", DEVICES)
def test_peak_bytes_of_a_known_allocation(device):
    device = torch.device(device)
    assert 8 * MiB <= peak_bytes(lambda: torch.empty(8 * MiB, dtype=torch.uint8, device=device), device) < 9 * MiB


@pytest.mark.parametrize("device", DEVICES)
def test_peak_bytes_follows_frees_and_ignores_what_was_live_before(device):
    device = torch.device(device)
    live = torch.empty(16 * MiB, dtype=torch.uint8, device=device)

    def two_temporaries():
        a = torch.empty(4 * MiB, dtype=torch.uint8, device=device)
        del a
        b = torch.empty(4 * MiB, dtype=torch.uint8, device=device)  # may reuse a's memory: 4 MiB at once
        return b

    assert 4 * MiB <= peak_bytes(two_temporaries, device) < 5 * MiB
    assert peak_bytes(lambda: live.add_(1), device) < MiB


@pytest.mark.parametrize("device", DEVICES)
def test_peak_bytes_counts_the_backward_pass(device):
    device = torch.device(device)
    x = torch.zeros(MiB, device=device, requires_grad=True)  # 4 MiB; its gradient is as large
    assert peak_bytes(lambda: (x * 2).sum().backward(), device) >= 4 * MiB


def test_progress_bar_format():
    assert report.bar(7, 40, "W2 fwd+bwd", width=10) == "[#.........] 7/40 W2 fwd+bwd"
    assert report.bar(0, 4, "W1 fwd", width=4) == "[....] 0/4 W1 fwd"
    assert report.bar(4, 4, "W1 fwd+bwd", width=4) == "[####] 4/4 W1 fwd+bwd"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_on_a_terminal_and_clears_before_a_table_row(capsys):
    stream = FakeTerminal()
    progress = report.Progress(2, stream)
    progress.show("W1 fwd")
    progress.advance()
    progress.show("W1 fwd+bwd")
    assert stream.getvalue().startswith("\r[") and "\r[##########..........] 1/2 W1 fwd+bwd" in stream.getvalue()
    drawn = len(stream.getvalue())
    progress.print("a table row")
    assert stream.getvalue()[drawn:] == "\r" + " " * len("[##########..........] 1/2 W1 fwd+bwd") + "\r"
    assert capsys.readouterr().out == "a table row\n"


def test_progress_is_silent_off_a_terminal(capsys):
    stream = io.StringIO()
    progress = report.Progress(1, stream)
    progress.show("W1 fwd")
    progress.print("a table row")
    progress.clear()
    assert stream.getvalue() == "" and capsys.readouterr().out == "a table row\n"


def test_table_columns_line_up():
    row = {"workload": "W1", "mode": "fwd+bwd", "impl": "triton+compile", "median_ms": 0.974,
           "speedup_vs_plain": 4.84, "speedup_vs_compile_plain": None, "GB_per_s": 1.34, "copy_fraction": 0.0472,
           "peak_MiB": 0.8}
    heading = report.header().splitlines()[0]
    line = report.table_row(row)
    assert len(line) == len(heading)
    assert line.split() == ["W1", "fwd+bwd", "triton+compile", "0.974", "4.84x", "-", "1.34", "4.7%", "0.8"]


@pytest.mark.skipif(fe.backends()["cpu"] != "available", reason="the cpu backend is unavailable")
def test_decoder_share_reports_each_implementation(monkeypatch, capsys):
    """python -m fastelbo.benchmarks.decoder_share runs both cases and prints the op's cost for each
    implementation (torch.compile stubbed out here: the compiled rows' compile is tested above)."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    monkeypatch.setattr(measure, "steady_malloc", lambda: "default (test)")
    decoder_share.main(["--workloads", "S1", "--reps", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "with the decoder op" in out and "logits given" in out
    for impl in ("plain", "cpu", "compile(plain)", "cpu+compile"):
        assert f"{impl} +" in out or f"{impl} -" in out, out


@pytest.mark.skipif(fe.backends()["cpu"] != "available", reason="the cpu backend is unavailable")
def test_linear_head_bench_reports_each_implementation(monkeypatch, capsys):
    """python -m fastelbo.benchmarks.linear_head times every implementation and measures its peak
    (torch.compile stubbed out); its plain and fused losses agree in value and gradients."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    monkeypatch.setattr(measure, "steady_malloc", lambda: "default (test)")
    linear_head.main(["--rows", "6", "--hidden", "5", "--dx", "40", "--reps", "1", "--chunk-sizes", "16",
                      "--device", "cpu"])
    out = capsys.readouterr().out
    for impl in ("plain", "compile(plain)", "fused[sum]", "fused[sum,chunk=16]", "fused[none]", "fused[sum]+compile"):
        assert f"  {impl} " in out, out
    for likelihood in linear_head.LIKELIHOODS:
        t = linear_head._leaves(linear_head.make_inputs(likelihood, 6, 5, 40, torch.device("cpu")))
        grads = {}
        for name, loss in (("plain", linear_head.plain_loss(likelihood, t)),
                           ("sum", linear_head.fused_loss(likelihood, t, "sum", 16)),
                           ("none", linear_head.fused_loss(likelihood, t, "none", 16))):
            leaves = [v for k, v in t.items() if k != "x"]
            grads[name] = (loss.detach(), torch.autograd.grad(loss, leaves))
        for name in ("sum", "none"):
            torch.testing.assert_close(grads[name][0], grads["plain"][0])
            for a, e in zip(grads[name][1], grads["plain"][1]):
                torch.testing.assert_close(a, e)


@pytest.mark.skipif(fe.backends()["cpu"] != "available", reason="the cpu backend is unavailable")
def test_hierarchical_bench_reports_each_implementation(monkeypatch, capsys):
    """python -m fastelbo.benchmarks.hierarchical (W6) on a few small layers (torch.compile stubbed
    out); the fused step's KL is vdvae's gaussian_analytical_kl summed per image."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    monkeypatch.setattr(measure, "steady_malloc", lambda: "default (test)")
    hierarchical.main(["--reps", "1", "--device", "cpu", "--layers", "3", "--resolutions", "1", "2"])
    out = capsys.readouterr().out
    for impl in ("plain", "compile(plain)", "cpu", "cpu+compile"):
        assert f"  {impl} " in out, out
    layers = hierarchical.make_inputs(hierarchical.Hierarchical(layers=3, resolutions=(1, 2)), torch.device("cpu"))
    for t in layers:
        qm, qv, pm, pv = (t[name] for name in hierarchical.NAMES)
        vdvae = (-0.5 + pv - qv + 0.5 * (torch.exp(qv) ** 2 + (qm - pm) ** 2) / torch.exp(pv) ** 2).sum((1, 2, 3))
        fused = fe.gaussian_latent(qm, qv, param="log_std", dim=(1, 2, 3), prior=(pm, pv), backend="cpu").kl
        torch.testing.assert_close(fused, vdvae, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(fe.backends()["cpu"] != "available", reason="the cpu backend is unavailable")
def test_dmol_bench_reports_each_implementation(monkeypatch, capsys):
    """python -m fastelbo.benchmarks.dmol (W7) on small images (torch.compile stubbed out); its
    plain step, vdvae's discretized_mix_logistic_loss, is the fused step: the same loss and the same
    gradient (float64)."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    monkeypatch.setattr(measure, "steady_malloc", lambda: "default (test)")
    dmol.main(["--reps", "1", "--device", "cpu", "--batch", "2", "--size", "4"])
    out = capsys.readouterr().out
    for impl in ("plain", "compile(plain)", "cpu", "cpu+compile"):
        assert f"  {impl} " in out, out
    w = dmol.Dmol(batch=3, size=5)
    inputs = dmol.make_inputs(w, torch.device("cpu"), torch.float64, seed=1)
    results = []
    for step in (lambda t: dmol.plain_loss(t, w.bits), lambda t: dmol.fused_loss(t, w.n_mix, w.bits, "cpu")):
        t = dmol.leaves(inputs, backward=True)
        loss = step(t)
        results.append((loss.detach(), torch.autograd.grad(loss, t["params"])[0]))
    for plain, fused in zip(*results):
        torch.testing.assert_close(fused, plain, rtol=1e-9, atol=1e-12)
