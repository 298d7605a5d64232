"""Production use (issue 6): a whole VAE training step under torch.compile(fullgraph=True) on every
backend, CUDA graphs (mode="reduce-overhead", GPU only), and mixed precision under torch.autocast."""
import pytest
import torch

import fastelbo as fe
from fastelbo.testing import HALF_FACTOR, HALF_FLOOR, TOLERANCES

from helpers import BACKENDS, DEVICE, generator, rand

INTERPRETED = {"triton"} if DEVICE == "cpu" else set()  # Triton on CPU tensors: its interpreter


class TinyVAE(torch.nn.Module):
    def __init__(self, dx=12, h=16, d=4):
        super().__init__()
        self.enc = torch.nn.Sequential(torch.nn.Linear(dx, h), torch.nn.Tanh(), torch.nn.Linear(h, 2 * d))
        self.dec = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.Tanh(), torch.nn.Linear(h, dx))

    def forward(self, x, objective):
        mu, logvar = self.enc(x).chunk(2, dim=-1)
        return objective(x, mu, logvar, self.dec)


def _model_and_data(seed, dx=12):
    torch.manual_seed(seed)
    model = TinyVAE(dx).to(DEVICE)
    x = (rand(generator(seed), 6, dx, dtype=torch.float32) < 0.5).float()
    return model, x


# ---- torch.compile(fullgraph=True) of a training step ----

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("objective_kwargs", [
    dict(likelihood="bernoulli", kl="analytic"),
    dict(likelihood="bernoulli", n_samples=3, kl="mc", estimator="dreg"),
    dict(likelihood="gaussian", n_samples=2, kl="mc", estimator="iwae"),
], ids=["elbo-analytic", "dreg", "gaussian-iwae"])
def test_training_step_compiles_fullgraph(backend, objective_kwargs, seed):
    """A VAE's loss (encoder, fe.ELBO, decoder) compiles with no graph break (fullgraph=True raises on
    one); its loss and every parameter's gradient equal eager's, and an optimizer step follows."""
    torch._dynamo.reset()  # a fresh compile per case: the cases share one code object and its recompile limit
    model, x = _model_and_data(seed)
    objective = fe.ELBO(**objective_kwargs, backend=backend)
    compiler = "aot_eager" if backend in INTERPRETED else "inductor"
    compiled = torch.compile(lambda x: model(x, objective).loss, fullgraph=True, backend=compiler)
    results = []
    for fn in (lambda x: model(x, objective).loss, compiled):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed + 1)
        loss = fn(x)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (eager_loss, eager_grads), (loss, grads) = results
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    torch.optim.SGD(model.parameters(), lr=0.1).step()  # the compiled graph's gradients drive a step
    assert all(p.isfinite().all() for p in model.parameters())


# ---- CUDA graphs ----

@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"] or ["auto"])
def test_reduce_overhead_cuda_graphs_replay_fresh_and_reproducible_noise(backend, seed):
    """Under mode="reduce-overhead" (CUDA graphs) each replay draws fresh noise, the same seed replays
    the same sequence, and every replay is a correct ELBO: log q is the density of the z it drew."""
    torch._dynamo.reset()
    model, x = _model_and_data(seed)
    objective = fe.ELBO("bernoulli", n_samples=2, kl="mc", backend=backend)

    def step(x):
        out = model(x, objective)
        return out.loss, out.z

    compiled = torch.compile(step, mode="reduce-overhead", fullgraph=True)

    def replays(n):
        torch.manual_seed(seed)
        return [tuple(t.detach().clone() for t in compiled(x)) for _ in range(n)]

    for _ in range(3):  # compile, warm up and record the graph before comparing replays
        compiled(x)
    first, second = replays(4), replays(4)
    for (loss_a, z_a), (loss_b, z_b) in zip(first, second):
        assert torch.equal(z_a, z_b) and torch.equal(loss_a, loss_b)
    assert not torch.equal(first[1][1], first[2][1])  # fresh eps on each replay
    mu, logvar = model.enc(x).chunk(2, dim=-1)
    for loss, z in first:  # the graph's z and loss agree with the eager objective on that z
        with torch.no_grad():
            log_q = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
            log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
            log_lik = fe.reference.bernoulli_log_prob(model.dec(z), x)
            want = -(log_lik + log_p - log_q).mean()
        torch.testing.assert_close(loss, want, rtol=1e-4, atol=1e-4)


# ---- mixed precision ----

AUTOCAST = [("cpu", torch.bfloat16)] if DEVICE == "cpu" else [("cuda", torch.float16), ("cuda", torch.bfloat16)]


def _ops_under(backend, mu, logvar, weight, x, seed):
    """The ELBO pieces on given tensors: (z, log_q, log_p, kl, log_lik, elbo) and the gradients."""
    leaves = [t.detach().requires_grad_(True) for t in (mu, logvar, weight)]
    lat = fe.gaussian_latent(leaves[0], leaves[1], n_samples=2, generator=generator(seed), backend=backend)
    logits = lat.z @ leaves[2]  # a matmul: under autocast it runs in the low precision
    log_lik = fe.bernoulli_log_prob(logits, x, backend=backend)
    with fe.use_backend(backend):
        value = fe.elbo(log_lik, lat, kl="mc", estimator="iwae")
    grads = torch.autograd.grad(value.sum(), leaves)
    return (lat.z, lat.log_q, lat.log_p, lat.kl, log_lik, value), grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("device_type,dtype", AUTOCAST)
def test_autocast_gives_fp32_log_densities_and_the_plain_results(backend, device_type, dtype, seed):
    """Under torch.autocast the ops take the low-precision tensors autocast makes, return float32
    log-densities (z keeps the input dtype) and compute exactly what they compute on the same tensors
    outside autocast; those half-precision results are held to the reference by the tolerance table
    (tests/test_backends_vs_reference.py), and here the low-precision ELBO is checked against float64."""
    g = generator(seed)
    w_enc = torch.randn(12, 8, generator=g, device=DEVICE)
    x = (rand(g, 5, 12, dtype=torch.float32) < 0.5).float()
    weight = torch.randn(4, 12, generator=g, device=DEVICE) * 0.5
    with torch.autocast(device_type, dtype=dtype):
        mu, logvar = (x @ w_enc * 0.3).chunk(2, dim=-1)  # autocast's matmul: low precision
        assert mu.dtype == dtype
        outs, grads = _ops_under(backend, mu, logvar, weight, x, seed)
    z, log_q, log_p, kl, log_lik, value = outs
    assert z.dtype == dtype
    assert all(t.dtype == torch.float32 for t in (log_q, log_p, kl, log_lik, value))
    assert [g_.dtype for g_ in grads] == [dtype, dtype, torch.float32]
    plain_outs, plain_grads = _ops_under(backend, mu, logvar, weight.to(dtype), x, seed)
    for a, b in zip((*outs, *grads), (*plain_outs, *plain_grads)):
        assert torch.equal(a, b.to(a.dtype))
    # the float32 ELBO of the low-precision inputs against the same computation in float64
    truth, _ = _ops_under("reference", mu.double(), logvar.double(), weight.to(dtype).double(), x.double(), seed)
    ref_low, _ = _ops_under("reference", mu, logvar, weight.to(dtype), x, seed)
    tol = TOLERANCES[dtype]["fwd"]
    ref_err = (ref_low[-1].double() - truth[-1]).abs().max().item()
    err = (value.double() - truth[-1]).abs().max().item()
    assert err <= max(HALF_FACTOR * ref_err + HALF_FLOOR["fwd"], tol.atol + tol.rtol * truth[-1].abs().max().item())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("device_type,dtype", AUTOCAST)
def test_autocast_training_step(backend, device_type, dtype, seed):
    """A whole VAE step under autocast: float32 loss and float32 parameter gradients, close to the
    reference backend's under the same autocast."""
    results = []
    for name in ("reference", backend):
        model, x = _model_and_data(seed)
        with torch.autocast(device_type, dtype=dtype):
            torch.manual_seed(seed + 1)
            out = model(x, fe.ELBO("bernoulli", n_samples=2, kl="mc", estimator="iwae", backend=name))
        assert out.loss.dtype == torch.float32 and out.elbo.dtype == torch.float32 and out.z.dtype == dtype
        out.loss.backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g.dtype == torch.float32 and g.isfinite().all() for g in grads)
        results.append((out.loss.detach(), grads))
    (ref_loss, ref_grads), (loss, grads) = results
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(loss, ref_loss, atol=tol["fwd"].atol * 10, rtol=tol["fwd"].rtol)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=tol["bwd"].atol, rtol=tol["bwd"].rtol)
