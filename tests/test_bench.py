"""`fastelbo bench` (fastelbo.benchmarks): a short run end to end on CPU, and its parts: the peak
memory of a call, the progress bar and the table."""
from __future__ import annotations

import csv
import io
import json

import pytest
import torch

import fastelbo as fe
from fastelbo.benchmarks import report, run
from fastelbo.benchmarks.measure import peak_bytes
from fastelbo.benchmarks.workloads import WORKLOADS
from helpers import DEVICE

MiB = 2**20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
needs_cpu_backend = pytest.mark.skipif(fe.backends()["cpu"] != "available", reason="the cpu backend is unavailable")


def bench(tmp_path, *options) -> dict:
    """Run the benchmark on W1 (CPU, 2 timed calls) into tmp_path; {extension: path} of what it wrote."""
    argv = ["--device", "cpu", "--workloads", "W1", "--reps", "2", "--warmup", "1", "--out", str(tmp_path), *options]
    assert run.main(argv) == 0
    return {p.suffix: p for p in tmp_path.iterdir()}


def read_csv(path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@needs_cpu_backend
def test_bench_writes_every_file_with_provenance(tmp_path, capsys):
    files = bench(tmp_path, "--impls", "eager", "cpu")
    assert sorted(files) == [".csv", ".json", ".md", ".png"]
    rows = read_csv(files[".csv"])
    assert {(r["mode"], r["impl"]) for r in rows} == {(m, i) for m in ("fwd", "fwd+bwd") for i in ("eager", "cpu")}
    for row in rows:
        assert row["commit"] and row["device"] and row["torch"] == torch.__version__
        assert int(row["bytes"]) == WORKLOADS["W1"].bytes_moved(row["mode"] == "fwd+bwd")
        assert float(row["peak_MiB"]) >= 0 and float(row["median_ms"]) > 0
        assert row["speedup_vs_compile"] == ""  # compile was not measured
        if row["impl"] == "eager":
            assert float(row["speedup_vs_eager"]) == 1.0
    assert len(json.loads(files[".json"].read_text())["rows"]) == len(rows)
    assert "| W1 | fwd+bwd | cpu |" in files[".md"].read_text()
    assert files[".png"].read_bytes().startswith(PNG_SIGNATURE)
    table = capsys.readouterr().out
    assert report.header() in table and sum(line.startswith("W1 ") for line in table.splitlines()) == 4


def test_bench_against_torch_compile(tmp_path):
    files = bench(tmp_path, "--impls", "eager", "compile")
    rows = read_csv(files[".csv"])
    assert [float(r["speedup_vs_compile"]) for r in rows if r["impl"] == "compile"] == [1.0, 1.0]
    assert files[".png"].read_bytes().startswith(PNG_SIGNATURE)


@needs_cpu_backend
def test_bench_without_baselines_or_plot(tmp_path, capsys):
    files = bench(tmp_path, "--impls", "cpu", "--no-plot")
    assert sorted(files) == [".csv", ".json", ".md"]
    assert all(r["speedup_vs_eager"] == r["speedup_vs_compile"] == "" for r in read_csv(files[".csv"]))
    assert "| - | - |" in files[".md"].read_text()


def test_bench_refuses_an_implementation_it_cannot_time(tmp_path, capsys):
    argv = ["--device", "cpu", "--workloads", "W1", "--impls", "triton", "--out", str(tmp_path)]
    assert run.main(argv) == 2
    assert "cannot time triton" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


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
    assert report.bar(7, 40, "W2 fwd+bwd cpu", width=10) == "[#.........] 7/40 W2 fwd+bwd cpu"
    assert report.bar(0, 4, "W1 fwd eager", width=4) == "[....] 0/4 W1 fwd eager"
    assert report.bar(4, 4, "W1 fwd+bwd cpu", width=4) == "[####] 4/4 W1 fwd+bwd cpu"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_on_a_terminal_and_clears_before_a_table_row(capsys):
    stream = FakeTerminal()
    progress = report.Progress(2, stream)
    progress.show("W1 fwd eager")
    progress.advance()
    progress.show("W1 fwd cpu")
    assert stream.getvalue().startswith("\r[") and "\r[##########..........] 1/2 W1 fwd cpu" in stream.getvalue()
    drawn = len(stream.getvalue())
    progress.print("a table row")
    assert stream.getvalue()[drawn:] == "\r" + " " * len("[##########..........] 1/2 W1 fwd cpu") + "\r"
    assert capsys.readouterr().out == "a table row\n"


def test_progress_is_silent_off_a_terminal(capsys):
    stream = io.StringIO()
    progress = report.Progress(1, stream)
    progress.show("W1 fwd eager")
    progress.print("a table row")
    progress.clear()
    assert stream.getvalue() == "" and capsys.readouterr().out == "a table row\n"


def test_table_columns_line_up():
    row = {"workload": "W1", "mode": "fwd+bwd", "impl": "cpu", "median_ms": 0.974, "speedup_vs_eager": 4.84,
           "speedup_vs_compile": None, "GB_per_s": 1.34, "copy_fraction": 0.0472, "peak_MiB": 0.8}
    heading = report.header().splitlines()[0]
    line = report.table_row(row)
    assert len(line) == len(heading)
    assert line.split() == ["W1", "fwd+bwd", "cpu", "0.974", "4.84x", "-", "1.34", "4.7%", "0.8"]
