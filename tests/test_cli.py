"""The command line: `fastelbo check` prints its table and its exit status tells failures."""
import subprocess
import sys

import pytest
import torch

from fastelbo import cli, testing


def test_check_prints_table_and_passes():
    proc = subprocess.run([sys.executable, "-m", "fastelbo", "check", "--dtype", "float32", "--device", "cpu"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "max err fwd" in out and "max err bwd" in out
    for case in testing.CASES:
        assert case.name in out
    for name, status in __import__("fastelbo").backends().items():
        if status != "available":
            assert f"{name:<10} unavailable: {status}" in out
    assert "0 failed" in out
    if __import__("fastelbo")._backend.CUDA_SIM:  # tests/conftest.py sets FASTELBO_CUDA_SIM=1 without a GPU
        assert "FASTELBO_CUDA_SIM=1" in out
        assert any(line.split()[1:3] == ["cuda", "cpu"] and line.endswith("pass") for line in out.splitlines())


def test_check_exit_status_reports_failures(monkeypatch, capsys):
    """With a table no computation can meet, every row fails and the exit status is 1."""
    impossible = {phase: testing.Tolerance(0.0, 0.0) for phase in ("fwd", "bwd")}
    monkeypatch.setitem(testing.TOLERANCES, torch.float32, impossible)
    code = cli.main(["check", "--dtype", "float32", "--backend", "reference", "--device", "cpu", "--seed", "3"])
    out = capsys.readouterr().out
    assert code == 1 and "FAIL" in out


def test_unknown_subcommand_is_an_error():
    with pytest.raises(SystemExit):
        cli.main(["frobnicate"])


def test_check_targets_every_backend_on_its_devices(monkeypatch):
    """Without --device, each available backend is checked on every device present that it takes
    (Triton on CPU tensors, in its interpreter, only where no GPU is; "cuda" on CPU tensors only in
    the CUDA simulator)."""
    from fastelbo import _backend

    monkeypatch.setitem(_backend._DEVICE_TYPE, "cuda", "cuda")  # as without FASTELBO_CUDA_SIM
    status = dict.fromkeys(["reference", "cpu", "triton", "cuda"], "available")
    targets, skipped = cli.check_targets(list(status), status, ["cpu", "cuda"])
    assert targets == [("reference", "cpu"), ("reference", "cuda"), ("cpu", "cpu"), ("triton", "cuda"),
                       ("cuda", "cuda")] and skipped == []
    targets, skipped = cli.check_targets(list(status), status, ["cpu"])
    assert targets == [("reference", "cpu"), ("cpu", "cpu"), ("triton", "cpu")]
    assert skipped == ["  cuda       skipped: it takes CUDA tensors, not cpu (see --device)"]
    status["cpu"] = "the build failed"
    targets, skipped = cli.check_targets(["cpu", "reference"], status, ["cpu"])
    assert targets == [("reference", "cpu")] and skipped == ["  cpu        unavailable: the build failed"]
    monkeypatch.setitem(_backend._DEVICE_TYPE, "cuda", "cpu")  # FASTELBO_CUDA_SIM=1
    targets, skipped = cli.check_targets(["cuda"], status, ["cpu"])
    assert targets == [("cuda", "cpu")] and skipped == []
