"""fastelbo.integrations.DiagonalGaussianDistribution against diffusers' own class (an optional test
dependency, in the test extra; skipped with the reason where it is not installed) and against its
formulas: same values and gradients, NCHW and channels-last, the same noise given to both."""
import math
import types

import pytest
import torch

import fastelbo as fe
from fastelbo.integrations import DiagonalGaussianDistribution
from helpers import BACKENDS, generator, randn

try:
    from diffusers.models.autoencoders import vae as diffusers_vae

    DIFFUSERS = diffusers_vae.DiagonalGaussianDistribution
except Exception as error:  # noqa: BLE001 (any import failure means: not usable here)
    DIFFUSERS, REASON = None, f"diffusers is not importable here: {error}"
else:
    REASON = ""


def _parameters(seed, channels_last=False, dtype=torch.float64):
    p = randn(generator(seed), 2, 8, 3, 5, dtype=dtype, scale=1.5)
    p[:, 4:].mul_(12).sub_(6)  # log-variances from about -30 to 20: the clamp is exercised
    if channels_last:
        p = p.contiguous(memory_format=torch.channels_last)
    return p.requires_grad_()


def _formulas(params):
    """diffusers' class written out (the oracle where diffusers is not installed)."""
    mean, logvar = params.chunk(2, dim=1)
    logvar = logvar.clamp(-30.0, 20.0)
    var = logvar.exp()
    return mean, logvar, var


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_kl_nll_and_mode_follow_the_formulas(backend, channels_last, seed):
    params, other_params = _parameters(seed, channels_last), _parameters(seed + 1, channels_last)
    sample = randn(generator(seed + 2), 2, 4, 3, 5)
    with fe.use_backend(backend):
        dist, other = DiagonalGaussianDistribution(params), DiagonalGaussianDistribution(other_params)
        got = [dist.kl(), dist.kl(other), dist.nll(sample), dist.nll(sample, dims=[2, 3]), dist.mode()]
    mean, logvar, var = _formulas(params)
    o_mean, o_logvar, o_var = _formulas(other_params)
    want = [0.5 * (mean ** 2 + var - 1.0 - logvar).sum([1, 2, 3]),
            0.5 * ((mean - o_mean) ** 2 / o_var + var / o_var - 1.0 - logvar + o_logvar).sum([1, 2, 3]),
            0.5 * (math.log(2 * math.pi) + logvar + (sample - mean) ** 2 / var).sum([1, 2, 3]),
            0.5 * (math.log(2 * math.pi) + logvar + (sample - mean) ** 2 / var).sum([2, 3]),
            mean]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    for a, b in zip(torch.autograd.grad(sum(g.sum() for g in got), (params, other_params)),
                    torch.autograd.grad(sum(w.sum() for w in want), (params, other_params))):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_is_mean_plus_std_times_the_noise(backend, seed):
    params = _parameters(seed)
    with fe.use_backend(backend):
        dist = DiagonalGaussianDistribution(params)
        z = dist.sample(generator=generator(seed))
        again = dist.sample(generator=generator(seed))
    assert torch.equal(z, again)
    mean, logvar, _ = _formulas(params)
    eps = ((z - mean) / torch.exp(0.5 * logvar)).detach()
    assert abs(float(eps.mean())) < 0.5 and 0.5 < float(eps.std()) < 1.5
    torch.testing.assert_close(dist.std, torch.exp(0.5 * logvar))
    torch.testing.assert_close(dist.var, torch.exp(logvar))


def test_deterministic_and_bad_parameters():
    params = _parameters(0)
    dist = DiagonalGaussianDistribution(params, deterministic=True)
    assert torch.equal(dist.sample(), dist.mean) and torch.equal(dist.std, torch.zeros_like(dist.mean))
    assert torch.equal(dist.kl(), torch.Tensor([0.0])) and torch.equal(dist.nll(params[:, :4]), torch.Tensor([0.0]))
    with pytest.raises(ValueError, match="even size along dim 1"):
        DiagonalGaussianDistribution(params[:, :3])
    with pytest.raises(TypeError, match="parameters"):
        DiagonalGaussianDistribution("params")


@pytest.mark.skipif(DIFFUSERS is None, reason=REASON)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("deterministic", [False, True])
def test_matches_diffusers(channels_last, deterministic, monkeypatch, seed):
    """Every method against diffusers' class on the same parameters; sample() given the same noise
    (diffusers' randn_tensor made to return the noise fastelbo drew)."""
    params = _parameters(seed, channels_last)
    ours, theirs = (cls(params, deterministic=deterministic) for cls in (DiagonalGaussianDistribution, DIFFUSERS))
    other_params = _parameters(seed + 1, channels_last)
    ours_other, theirs_other = DiagonalGaussianDistribution(other_params), DIFFUSERS(other_params)
    sample = randn(generator(seed + 2), 2, 4, 3, 5)

    z = ours.sample(generator=generator(seed))
    std = theirs.std
    eps = torch.zeros_like(z) if deterministic else ((z - theirs.mean) / std).detach()
    monkeypatch.setattr(diffusers_vae, "randn_tensor", lambda *args, **kwargs: eps)
    pairs = [(z, theirs.sample(generator=generator(seed))), (ours.kl(), theirs.kl()),
             (ours.kl(ours_other), theirs.kl(theirs_other)), (ours.nll(sample), theirs.nll(sample)),
             (ours.mode(), theirs.mode()), (ours.std, theirs.std), (ours.var, theirs.var),
             (ours.logvar, theirs.logvar), (ours.mean, theirs.mean)]
    for a, b in pairs:
        torch.testing.assert_close(a, b)
    if not deterministic:
        wrt = (params, other_params)
        for a, b in zip(torch.autograd.grad(sum(a.sum() for a, _ in pairs), wrt, allow_unused=True),
                        torch.autograd.grad(sum(b.sum() for _, b in pairs), wrt, allow_unused=True)):
            torch.testing.assert_close(a, b)


@pytest.mark.skipif(DIFFUSERS is None, reason=REASON)
def test_swapped_into_an_autoencoder_kl(monkeypatch):
    """The README's swap: AutoencoderKL.encode then returns fastelbo's class, and a training step runs."""
    from diffusers import AutoencoderKL
    from diffusers.models.autoencoders import autoencoder_kl

    monkeypatch.setattr(autoencoder_kl, "DiagonalGaussianDistribution", fe.integrations.DiagonalGaussianDistribution)
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), block_out_channels=(16,), latent_channels=4,
                        norm_num_groups=8, sample_size=8)
    x = torch.randn(2, 3, 8, 8)
    posterior = vae.encode(x).latent_dist
    assert isinstance(posterior, DiagonalGaussianDistribution)
    reconstruction = vae.decode(posterior.sample()).sample
    loss = (reconstruction - x).pow(2).mean() + 1e-6 * posterior.kl().mean()
    loss.backward()
    assert all(p.grad is not None and bool(p.grad.isfinite().all()) for p in vae.encoder.parameters())


def test_nll_dims_and_kl_like_diffusers(seed):
    """nll's dims as torch.sum takes them (errors naming dims for one out of range or repeated,
    all dims when empty, a broadcast sample), kl over dims 1, 2, 3 for any rank, and kl(other)
    with a deterministic other: diffusers' inf; other may be any object with its attributes."""
    params = _parameters(seed)
    dist = DiagonalGaussianDistribution(params)
    sample = randn(generator(seed + 1), 2, 4, 3, 5)
    mean, logvar, var = _formulas(params)
    nll = 0.5 * (math.log(2 * math.pi) + logvar + (sample - mean) ** 2 / var)
    for dims, want in (([], nll.sum()), ([0, 2], nll.sum([0, 2])), (-1, nll.sum(-1)), ((3, 1), nll.sum([1, 3]))):
        torch.testing.assert_close(dist.nll(sample, dims=dims), want)
    broadcast = 0.5 * (math.log(2 * math.pi) + logvar + (sample[0] - mean) ** 2 / var)  # a (C, H, W) sample
    torch.testing.assert_close(dist.nll(sample[0]), broadcast.sum([1, 2, 3]))
    with pytest.raises(IndexError, match="dims"):
        dist.nll(sample, dims=[1, 2, 3, 4])
    with pytest.raises(ValueError, match="dims"):
        dist.nll(sample, dims=[1, 1])
    video = DiagonalGaussianDistribution(randn(generator(seed), 2, 8, 2, 3, 4))
    v_mean, v_logvar, v_var = _formulas(video.parameters)
    torch.testing.assert_close(video.kl(), 0.5 * (v_mean ** 2 + v_var - 1.0 - v_logvar).sum([1, 2, 3]))
    deterministic = DiagonalGaussianDistribution(_parameters(seed + 2), deterministic=True)
    assert bool(torch.isinf(dist.kl(deterministic)).all())

    other = types.SimpleNamespace(mean=deterministic.mean, logvar=deterministic.logvar)  # duck-typed
    torch.testing.assert_close(dist.kl(other), dist.kl(DiagonalGaussianDistribution(deterministic.parameters)))
    with pytest.raises(TypeError, match="generator"):
        dist.sample(generator=[torch.Generator(), torch.Generator()])
