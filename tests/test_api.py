"""Shapes, dtypes, layouts, reproducibility, the backend registry and the reference namespace."""
import sys
import threading

import pytest
import torch

import fastelbo as fe
import fastelbo.reference as ref
from helpers import BACKENDS, DEVICE, FLOAT_DTYPES, generator, rand, randn


@pytest.mark.parametrize("batch", [(), (5,), (2, 3)])
@pytest.mark.parametrize("n_samples", [None, 1, 4])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_latent_shapes_and_dtypes(batch, n_samples, dtype):
    mu, s = torch.zeros(*batch, 7, dtype=dtype), torch.zeros(*batch, 7, dtype=dtype)
    lat = fe.gaussian_latent(mu, s, n_samples=n_samples)
    sample = () if n_samples is None else (n_samples,)
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert lat.z.shape == (*sample, *batch, 7) and lat.z.dtype == dtype
    assert lat.log_q.shape == lat.log_p.shape == (*sample, *batch)
    assert lat.kl.shape == batch
    assert lat.log_q.dtype == lat.log_p.dtype == lat.kl.dtype == out_dtype
    z, log_q, log_p, kl = lat  # plain tuple unpacking
    assert repr(lat).startswith("Latent(")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_likelihood_shapes_and_dtypes(dtype):
    logits = torch.zeros(3, 2, 4, 5, dtype=dtype)
    x = torch.zeros(4, 5, dtype=torch.uint8)
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    for fn in (fe.bernoulli_log_prob, fe.continuous_bernoulli_log_prob, fe.gaussian_log_prob):
        for event_dims, shape in ((0, (3, 2, 4, 5)), (1, (3, 2, 4)), (2, (3, 2)), (4, ())):
            out = fn(logits, x, event_dims=event_dims)
            assert out.shape == shape and out.dtype == out_dtype
    cat = fe.categorical_log_prob(logits, torch.zeros(4, dtype=torch.int64), event_dims=1)
    assert cat.shape == (3, 2) and cat.dtype == out_dtype


def test_gradients_take_input_dtypes():
    mu = torch.zeros(2, 3, dtype=torch.bfloat16, requires_grad=True)
    s = torch.zeros(2, 3, dtype=torch.bfloat16, requires_grad=True)
    prior = (torch.zeros(3, requires_grad=True), torch.zeros(3, dtype=torch.float64, requires_grad=True))
    lat = fe.gaussian_latent(mu, s, prior=prior)
    assert lat.log_q.dtype == torch.float64  # a float64 input makes the math float64
    sum(t.float().sum() for t in lat).backward()
    assert mu.grad.dtype == s.grad.dtype == torch.bfloat16
    assert prior[0].grad.dtype == torch.float32 and prior[1].grad.dtype == torch.float64


def test_non_contiguous_inputs_match_contiguous(seed):
    g = generator(seed, "cpu")
    base = randn(g, 4, 6, 10)
    mu, s = base[..., ::2], base.transpose(0, 1).contiguous().transpose(0, 1)[..., 1::2]  # strided views
    assert not mu.is_contiguous() and not s.is_contiguous()
    lat = fe.gaussian_latent(mu, s, n_samples=2, generator=generator(seed, "cpu"))
    lat_c = fe.gaussian_latent(mu.contiguous(), s.contiguous(), n_samples=2, generator=generator(seed, "cpu"))
    assert torch.equal(lat.z, lat_c.z)  # elementwise, and the noise ignores strides
    for a, b in zip(lat[1:], lat_c[1:]):  # sums: the reduction order may follow the layout
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    logits = randn(g, 5, 8).t()
    xx = rand(g, 8, 5)
    for fn in (fe.bernoulli_log_prob, fe.continuous_bernoulli_log_prob, fe.gaussian_log_prob):
        torch.testing.assert_close(fn(logits, xx), fn(logits.contiguous(), xx), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bitwise_reproducible(backend, seed):
    g = generator(seed)
    mu, s = randn(g, 4, 3).float().requires_grad_(True), randn(g, 4, 3).float().requires_grad_(True)
    w, x = randn(g, 3, 6).float(), (rand(g, 4, 6) < 0.5).float()

    def run():
        torch.manual_seed(seed)
        out = fe.ELBO(n_samples=3, kl="mc", estimator="dreg", backend=backend)(x, mu, s, lambda z: z @ w)
        grads = torch.autograd.grad(out.loss, [mu, s])
        return (*out, *grads)

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


# Triton's interpreter (Triton on CPU tensors) patches module state while it runs a kernel: not a
# thread-safe path, and not one anyone trains with; on a GPU every backend runs here.
THREADED_BACKENDS = [b for b in BACKENDS if not (b == "triton" and DEVICE == "cpu")]


@pytest.mark.parametrize("backend", THREADED_BACKENDS)
def test_concurrent_threads_give_the_single_thread_results(backend, seed):
    """Four threads calling the same ops at once (forward and backward) get, bitwise, what each call
    gives alone."""
    g = generator(seed)
    inputs = [(randn(g, 8, 5).float(), randn(g, 8, 5).float(), (rand(g, 8, 7) < 0.5).float(), randn(g, 5, 7).float())
              for _ in range(4)]

    def call(i):
        mu, s, x, w = (t.clone().requires_grad_(t.dtype == torch.float32 and j < 2) for j, t in enumerate(inputs[i]))
        with fe.use_backend(backend):
            lat = fe.gaussian_latent(mu, s, n_samples=2, generator=generator(seed + i))
            value = fe.elbo(fe.bernoulli_log_prob(lat.z @ w, x), lat, kl="mc", estimator="iwae")
        return (lat.z.detach(), value.detach(), *torch.autograd.grad(value.sum(), [mu, s]))

    want = [call(i) for i in range(4)]
    got = [None] * 4

    def work(i):
        for _ in range(3):
            got[i] = call(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(got, want):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_backend_registry():
    status = fe.backends()
    assert set(status) == {"reference", "cpu", "triton", "cuda"}
    assert status["reference"] == "available"
    for name, why in status.items():
        if why != "available":
            assert why  # a reason, not an empty string
            with pytest.raises(RuntimeError, match=f"backend '{name}' is unavailable"):
                fe.set_backend(name)
            with pytest.raises(RuntimeError, match="unavailable"):
                fe.bernoulli_log_prob(torch.zeros(2), torch.zeros(2), backend=name)
    with pytest.raises(ValueError, match="backend must be one of"):
        fe.set_backend("fastest")
    with pytest.raises(ValueError, match="backend must be one of"):
        with fe.use_backend("fastest"):
            pass
    from fastelbo._backend import current_backend, resolve_name

    assert current_backend() == "auto"
    with fe.use_backend("reference"):
        assert current_backend() == "reference"
        with fe.use_backend("auto"):
            assert current_backend() == "auto"
        assert current_backend() == "reference"
    assert current_backend() == "auto"
    fe.set_backend("reference")
    try:
        assert current_backend() == "reference"
    finally:
        fe.set_backend("auto")
    # "auto" picks the first available fused backend for the device, else the reference.
    fused_cpu = [b for b in ("cpu",) if status[b] == "available"]
    assert resolve_name(None, torch.device("cpu")) == (fused_cpu[0] if fused_cpu else "reference")


def test_reference_namespace():
    names = ["gaussian_latent", "gaussian_kl", "bernoulli_log_prob", "gaussian_log_prob",
             "continuous_bernoulli_log_prob", "categorical_log_prob", "elbo", "ELBO", "reparameterize", "vae_loss"]
    for name in names:
        assert hasattr(ref, name) and hasattr(fe, name)
    assert ref.gaussian_latent.__doc__ == fe.gaussian_latent.__doc__
    ref.bernoulli_log_prob(torch.zeros(2), torch.zeros(2), backend="reference")
    with pytest.raises(ValueError, match="always runs backend 'reference'"):
        ref.bernoulli_log_prob(torch.zeros(2), torch.zeros(2), backend="cpu")
    with pytest.raises(ValueError, match="always runs backend 'reference'"):
        ref.ELBO(backend="triton")
    assert ref.ELBO("gaussian").backend == "reference"


def test_public_api_names():
    for name in ["gaussian_latent", "gaussian_kl", "bernoulli_log_prob", "gaussian_log_prob",
                 "continuous_bernoulli_log_prob", "categorical_log_prob", "elbo", "ELBO", "ELBOOutput", "Latent",
                 "reparameterize", "vae_loss", "backends", "set_backend", "use_backend", "set_validation", "reference"]:
        assert name in fe.__all__ and hasattr(fe, name)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_elbo_module_reductions_and_outputs(reduction, seed):
    g = generator(seed, "cpu")
    mu, s = randn(g, 6, 3), rand(g, 6, 3, low=-1, high=0.5)
    w, x = randn(g, 3, 4), (rand(g, 6, 4) < 0.5).double()
    torch.manual_seed(seed)
    out = fe.ELBO(reduction=reduction)(x, mu, s, lambda z: z @ w)
    assert isinstance(out, fe.ELBOOutput)
    assert out.elbo.shape == out.log_lik.shape == out.kl.shape == (6,) and out.z.shape == (6, 3)
    want = {"mean": -out.elbo.mean(), "sum": -out.elbo.sum(), "none": -out.elbo}[reduction]
    torch.testing.assert_close(out.loss, want)
    torch.testing.assert_close(out.elbo, out.log_lik - out.kl)


def test_elbo_module_gaussian_categorical_and_samples(seed):
    g = generator(seed, "cpu")
    mu, s = randn(g, 2, 5, 3), rand(g, 2, 5, 3, low=-1, high=0.5)
    w = randn(g, 3, 4)
    logvar = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    out = fe.ELBO("gaussian", n_samples=3, kl="mc")(randn(g, 2, 5, 4), mu, s, lambda z: (z @ w, logvar))
    assert out.z.shape == (3, 2, 5, 3) and out.log_lik.shape == (3, 2, 5) and out.elbo.shape == (2, 5)
    out.loss.backward()
    assert logvar.grad is not None and torch.isfinite(logvar.grad).all()
    w_cat = randn(g, 3, 4 * 6)
    target = torch.randint(0, 6, (2, 5, 4), generator=g)
    out = fe.ELBO("categorical")(target, mu, s, lambda z: (z @ w_cat).unflatten(-1, (4, 6)))
    assert out.elbo.shape == (2, 5) and torch.isfinite(out.loss)
    out = fe.ELBO("continuous_bernoulli", param="softplus", stl=True)(rand(g, 2, 5, 4), mu, s, lambda z: z @ w)
    assert torch.isfinite(out.loss)


def test_classic_helpers_match_the_classic_code(seed):
    """reparameterize and vae_loss against the lines every VAE tutorial has."""
    g = generator(seed, "cpu")
    mu, logvar = randn(g, 8, 4), rand(g, 8, 4, low=-2, high=1)
    torch.manual_seed(seed)
    z = fe.reparameterize(mu, logvar)
    eps = (z - mu) / torch.exp(0.5 * logvar)
    assert abs(float(eps.mean())) < 1.0 and 0.3 < float(eps.std()) < 2.0
    recon_logits, x = randn(g, 8, 10), rand(g, 8, 10)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(recon_logits, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    torch.testing.assert_close(fe.vae_loss(recon_logits, x, mu, logvar), bce + kld)
    torch.testing.assert_close(fe.vae_loss(recon_logits, x, mu, logvar, beta=4.0, reduction="mean"),
                               (bce + 4.0 * kld) / 8)
    assert fe.vae_loss(recon_logits, x, mu, logvar, reduction="none").shape == (8,)


def test_reparameterize_and_the_module_take_a_generator_and_explicit_noise(seed):
    g = generator(seed, "cpu")
    mu, logvar = randn(g, 8, 4), rand(g, 8, 4, low=-2, high=1)
    z1 = fe.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(seed))
    z2 = fe.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(seed))
    z3 = fe.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(seed + 1))
    assert torch.equal(z1, z2) and not torch.equal(z1, z3)
    eps = randn(g, 8, 4)
    torch.testing.assert_close(fe.reparameterize(mu, logvar, eps=eps), mu + torch.exp(0.5 * logvar) * eps)
    x, w = (rand(g, 8, 5) < 0.5).double(), randn(g, 4, 5)
    runs = [fe.ELBO(n_samples=2)(x, mu, logvar, lambda z: z @ w, generator=torch.Generator().manual_seed(s))
            for s in (seed, seed, seed + 1)]
    assert torch.equal(runs[0].z, runs[1].z) and not torch.equal(runs[0].z, runs[2].z)
    assert torch.equal(runs[0].loss, runs[1].loss)


@pytest.mark.parametrize("backend", BACKENDS)
def test_elbo_runs_on_the_latents_backend_or_its_own(backend, seed, monkeypatch):
    """fe.elbo runs on its backend= argument, else on the backend that made the latent, never on
    the current default (a reference latent no longer goes through the cpu estimator op)."""
    from fastelbo import _backend

    g = generator(seed)
    mu, s = randn(g, 3, 2), rand(g, 3, 2, low=-1, high=1)
    for name in BACKENDS:  # every backend's module loaded
        fe.gaussian_kl(mu, s, backend=name)
    lat = fe.gaussian_latent(mu, s, n_samples=2, backend=backend)
    ran = []
    elbo_op = sys.modules["fastelbo.ops.elbo"]  # the module (fastelbo.ops.elbo is also the function's name)
    real = elbo_op.resolve
    monkeypatch.setattr(elbo_op, "resolve", lambda *a: ran.append(real(*a)) or ran[-1])
    log_lik = torch.zeros(2, 3, dtype=lat.log_q.dtype, device=DEVICE)
    others = [name for name in BACKENDS if name != backend]
    with fe.use_backend(others[0] if others else backend):
        fe.elbo(log_lik, lat)
        fe.elbo(log_lik, lat, backend="reference")
    assert ran == [backend, "reference"]
    with pytest.raises(ValueError, match="backend must be one of"):
        fe.elbo(log_lik, lat, backend="gpu")


def test_auto_says_once_when_it_falls_back_to_the_reference(monkeypatch, seed):
    """"auto" with no fused backend available for the device warns once per process, with why."""
    import warnings

    from fastelbo import _backend

    monkeypatch.setattr(_backend, "_unavailable_reason", lambda name: None if name == "reference" else "not built")
    monkeypatch.setattr(_backend, "_RESOLVED", {})
    monkeypatch.setattr(_backend, "_WARNED", set())
    mu = randn(generator(seed), 3, 4)
    with pytest.warns(UserWarning, match=r"'auto' runs the reference path on \w+ tensors.*not built"):
        fe.gaussian_kl(mu, mu, backend="auto")
    monkeypatch.setattr(_backend, "_RESOLVED", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fe.gaussian_kl(mu, mu, backend="auto")


def test_vae_loss_says_logits_in_its_first_sentence():
    first_sentence = fe.vae_loss.__doc__.split(".")[0]
    assert "logits, not probabilities" in first_sentence


def test_empty_batch():
    lat = fe.gaussian_latent(torch.zeros(0, 4), torch.zeros(0, 4), n_samples=2)
    assert lat.z.shape == (2, 0, 4) and lat.kl.shape == (0,)
    ll = fe.bernoulli_log_prob(torch.zeros(2, 0, 3), torch.zeros(0, 3))
    assert fe.elbo(ll, lat, estimator="iwae").shape == (0,)


def test_which_backends_take_which_tensors():
    from fastelbo._backend import CUDA_SIM, runs_on

    assert runs_on("cpu", "cpu") and not runs_on("cpu", "cuda")
    cuda_takes = "cpu" if CUDA_SIM else "cuda"  # FASTELBO_CUDA_SIM=1: CPU tensors, in the simulator
    assert runs_on("cuda", cuda_takes) and not runs_on("cuda", {"cpu": "cuda", "cuda": "cpu"}[cuda_takes])
    assert all(runs_on(name, device) for name in ("reference", "triton") for device in ("cpu", "cuda"))
