"""`fastelbo demo`: the digits data, the fused and reference runs agreeing, the plain-PyTorch
objective computing fe.ELBO's value and gradients, the printed comparison, the PNGs, and a wrong
fused objective being caught."""
import subprocess
import sys

import pytest
import torch

from helpers import DEVICE

import fastelbo as fe
import fastelbo.demo.train as train
from fastelbo import _backend
from fastelbo.demo import command, data as digits
from fastelbo.demo.model import DigitsVAE, likelihood_options
from fastelbo.demo.plain import PlainELBO
from fastelbo.testing import TOLERANCES

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

FUSED = _backend.resolve_name("auto", torch.device(DEVICE))
needs_fused = pytest.mark.skipif(FUSED == "reference", reason=f"no fused backend on {DEVICE}")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "gaussian", "categorical"])
def test_data_views(likelihood):
    """Each likelihood's view of the digits: (N, 64) targets, fixed by the seed (dmol's: below)."""
    data = digits.load(likelihood, device="cpu", seed=1)
    assert data.train.shape == (1500, 64) and data.test.shape == (297, 64)
    x = torch.cat([data.train, data.test])
    if likelihood == "categorical":
        assert x.dtype == torch.int64 and x.min() == 0 and x.max() == 16
    else:
        assert x.dtype == torch.float32 and x.min() == 0 and x.max() == 1
    if likelihood == "bernoulli":
        assert set(x.unique().tolist()) == {0.0, 1.0}
    encoded = data.encoder_input(x)
    assert encoded.dtype == torch.float32 and 0 <= encoded.min() and encoded.max() <= 1
    again = digits.load(likelihood, device="cpu", seed=1)
    assert torch.equal(again.train, data.train)  # the split is fixed by the seed


def test_dmol_data_view():
    """dmol: dithered 3-bit grey RGB, (N, 8, 8, 3) on the grid of 8 levels in [-1, 1], the channels
    at most one level apart (not copies of one another), fixed by the seeds."""
    data = digits.load("dmol", device="cpu", seed=1)
    assert data.train.shape == (1500, 8, 8, 3) and data.test.shape == (297, 8, 8, 3)
    x = torch.cat([data.train, data.test])
    k = (x + 1) * 3.5
    assert (k - k.round()).abs().max() < 1e-5 and k.min() == 0 and k.max() == 7  # (float32 sevenths)
    k = k.round()
    spread = k.amax(-1) - k.amin(-1)
    assert spread.max() == 1 and (spread > 0).float().mean() > 0.2
    encoded = data.encoder_input(x)
    assert encoded.shape == (1797, 64) and 0 <= encoded.min() and encoded.max() <= 1
    assert torch.equal(digits.load("dmol", device="cpu", seed=1).train, data.train)


@needs_fused
@pytest.mark.parametrize("likelihood,estimator,n_samples", [
    ("bernoulli", "elbo", 1), ("bernoulli", "iwae", 4), ("bernoulli", "dreg", 3),
    ("continuous_bernoulli", "elbo", 2), ("gaussian", "elbo", 1), ("categorical", "iwae", 2), ("dmol", "elbo", 1),
    ("dmol", "iwae", 2),
])
def test_fused_and_reference_runs_agree(likelihood, estimator, n_samples, seed):
    config = train.DemoConfig(likelihood=likelihood, estimator=estimator, n_samples=n_samples, epochs=2,
                              batch_size=250, seed=seed, device=DEVICE)
    data = digits.load(likelihood, device=DEVICE, seed=seed)
    fused, reference = train.train_pair(config, data, FUSED)
    assert len(fused.train_elbo) == len(reference.train_elbo) == 2
    for f, r in zip(fused.train_elbo, reference.train_elbo):
        assert command.relative_difference(f, r) <= command.AGREEMENT_RTOL
    assert reference.train_elbo[-1] > reference.train_elbo[0]  # it trains
    # (The weights are not compared elementwise after training: Adam's m / sqrt(v) turns rounding
    # noise in a near-zero gradient into a step of order lr. The first step's gradients are, below.)


@needs_fused
@pytest.mark.parametrize("likelihood,estimator,n_samples", [
    ("bernoulli", "elbo", 1), ("bernoulli", "dreg", 3), ("gaussian", "elbo", 2), ("categorical", "iwae", 2),
    ("dmol", "elbo", 1),
])
def test_first_step_gradients_agree(likelihood, estimator, n_samples, seed):
    """From the same weights, batch and noise, the fused and reference objectives give every model
    parameter the same gradient (the float32 backward tolerance of fastelbo.testing)."""
    config = train.DemoConfig(likelihood=likelihood, estimator=estimator, n_samples=n_samples, seed=seed,
                              device=DEVICE)
    data = digits.load(likelihood, device=DEVICE, seed=seed)
    grads = []
    for run in (train.make_run("fused", FUSED, config), train.make_run("reference", "reference", config)):
        with train.own_rng(run, torch.device(DEVICE)):
            train.objective_value(run, data, data.train[:128]).loss.backward()
        grads.append([p.grad for p in run.model.parameters()])
    tol = TOLERANCES[torch.float32]["bwd"]
    for fused_grad, reference_grad in zip(*grads):
        torch.testing.assert_close(fused_grad, reference_grad, atol=tol.atol, rtol=tol.rtol)


@pytest.mark.parametrize("likelihood,estimator,n_samples", [
    ("bernoulli", "elbo", 1), ("bernoulli", "elbo", 3), ("bernoulli", "iwae", 4), ("bernoulli", "dreg", 3),
    ("bernoulli", "dreg", 1), ("continuous_bernoulli", "elbo", 2), ("gaussian", "elbo", 1), ("gaussian", "iwae", 2),
    ("categorical", "iwae", 2), ("categorical", "elbo", 1), ("dmol", "elbo", 1), ("dmol", "dreg", 2),
])
def test_plain_objective_is_fastelbos(likelihood, estimator, n_samples):
    """The plain-PyTorch baseline trains the same objective: given fe.ELBO's noise, its value and every
    model parameter's gradient are fe.ELBO's (float64, reference path)."""
    data = digits.load(likelihood, device="cpu", seed=0)
    x = data.train[:32] if likelihood == "categorical" else data.train[:32].double()
    torch.manual_seed(0)
    model = DigitsVAE(likelihood).double()
    kl = "analytic" if estimator == "elbo" else "mc"
    objective = fe.ELBO(likelihood, n_samples=n_samples, kl=kl, estimator=estimator, backend="reference",
                        **likelihood_options(likelihood))
    encoded = data.encoder_input(x).double()
    out = model(x, encoded, objective)
    out.loss.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    mu, logvar = model.encode(encoded)
    eps = ((out.z - mu) / torch.exp(0.5 * logvar)).detach()  # the noise fe.ELBO drew
    plain = PlainELBO(likelihood, n_samples=n_samples, estimator=estimator)(x, mu, logvar, model.decode, eps=eps)
    plain.loss.backward()
    torch.testing.assert_close(plain.elbo.detach(), out.elbo.detach(), rtol=1e-10, atol=1e-10)
    for p, grad in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, grad, rtol=1e-9, atol=1e-10)


@needs_fused
def test_demo_command_prints_comparison_and_writes_pngs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fastelbo", "demo", "--epochs", "2", "--batch-size", "250",
                           "--device", DEVICE, "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert command.HEADER in out and "curves agree" in out and "test ELBO" in out
    speed = next(line for line in out.splitlines() if line.startswith("time: "))
    assert "plain PyTorch" in speed and ("faster than plain PyTorch" in speed or "faster than the fused run" in speed)
    epoch_rows = [line.split() for line in out.splitlines() if line.strip().split(" ")[0] in ("1", "2")]
    assert [row[0] for row in epoch_rows] == ["1", "2"]
    for name in ("reconstructions.png", "curves.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE


@needs_fused
def test_demo_catches_a_wrong_fused_objective(monkeypatch, capsys, tmp_path):
    """A fused run whose objective is off (beta 0.5 instead of 1) must fail the agreement check."""
    make_run = train.make_run

    def wrong_fused(name, backend, config):
        run = make_run(name, backend, config)
        if name == "fused":
            run.objective.beta = 0.5
        return run

    monkeypatch.setattr(train, "make_run", wrong_fused)
    code = command.run(_args(["--epochs", "1", "--batch-size", "250", "--no-plot", "--device", DEVICE]))
    assert code == 1 and "curves DISAGREE" in capsys.readouterr().out


def _args(argv):
    import argparse

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("argv,message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--n-samples", "0"], "--n-samples must be at least 1"),
    (["--batch-size", "-3"], "--batch-size must be at least 1"),
    (["--nproc", "0"], "--nproc must be at least 1"),
])
def test_bad_options_are_named(argv, message):
    with pytest.raises(SystemExit, match=message):
        command.run(_args(argv))


def test_estimator_defaults():
    assert command.config_from_args(_args([])).n_samples == 1
    config = command.config_from_args(_args(["--estimator", "iwae"]))
    assert config.n_samples == 8 and config.kl == "mc"


@needs_fused
@pytest.mark.skipif(DEVICE != "cpu", reason="--nproc 2 on CUDA needs two GPUs")
def test_demo_trains_under_ddp_with_two_processes(tmp_path):
    """`fastelbo demo --nproc 2`: two gloo processes under DistributedDataParallel, curves agreeing.
    (tests/test_distributed.py shows DDP's gradients equal one process's on the same global batch.)"""
    proc = subprocess.run([sys.executable, "-m", "fastelbo", "demo", "--nproc", "2", "--epochs", "2",
                           "--batch-size", "250", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "torch.distributed: 2 processes, DistributedDataParallel (gloo)" in out and "curves agree" in out
    assert out.count("fastelbo demo: a VAE") == 1  # rank 0 alone prints
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_SIGNATURE


@needs_fused
def test_hierarchical_demo_agrees_prints_layer_kls_and_writes_its_png(capsys, tmp_path):
    """fastelbo demo --model hierarchical: fused and reference runs agree, each epoch prints both
    layers' KL, hierarchical.png is written."""
    code = command.run(_args(["--model", "hierarchical", "--epochs", "2", "--batch-size", "250", "--device", DEVICE,
                              "--out", str(tmp_path)]))
    out = capsys.readouterr().out
    assert code == 0 and "curves agree" in out and "KL top" in out and "KL bottom" in out, out
    rows = [line.split() for line in out.splitlines() if line.strip().split(" ")[0] in ("1", "2")]
    assert [row[0] for row in rows] == ["1", "2"] and all(float(row[5]) > 0 and float(row[6]) > 0 for row in rows)
    assert (tmp_path / "hierarchical.png").read_bytes()[:8] == PNG_SIGNATURE


@needs_fused
def test_hierarchical_demo_catches_a_wrong_fused_kl(monkeypatch, capsys):
    """A fused run whose lower layer's KL is off (halved) must fail the agreement check."""
    from fastelbo.demo import hierarchical

    forward = hierarchical.TopDownVAE.forward

    def wrong(self, x, images, backend):
        loss, elbo, kls = forward(self, x, images, backend)
        if backend != "reference":
            elbo = elbo + 0.5 * kls[1]
            loss, kls = -elbo.mean(), [kls[0], 0.5 * kls[1]]
        return loss, elbo, kls

    monkeypatch.setattr(hierarchical.TopDownVAE, "forward", wrong)
    code = command.run(_args(["--model", "hierarchical", "--epochs", "1", "--batch-size", "250", "--no-plot",
                              "--device", DEVICE]))
    assert code == 1 and "curves DISAGREE" in capsys.readouterr().out


def test_hierarchical_demo_runs_in_one_process():
    with pytest.raises(SystemExit, match="one process"):
        command.run(_args(["--model", "hierarchical", "--nproc", "2"]))
