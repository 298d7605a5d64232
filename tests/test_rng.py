"""The Philox scheme (docs/RNG.md): known-answer words, normal statistics, replay and invariances.

Statistical tests use fixed seeds so they are deterministic; the thresholds are for p = 1e-4.
"""
import math

import pytest
import torch

import fastelbo as fe
from fastelbo.rng import box_muller, normal_noise, philox4x32_10
from helpers import BACKENDS, PARAMS, generator, randn


def _words(counter, key):
    as_t = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    return [int(w) for w in philox4x32_10(tuple(map(as_t, counter)), tuple(map(as_t, key)))]


@pytest.mark.parametrize("counter,key,want", [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(counter, key, want):
    """The Random123 known-answer vectors for Philox4x32-10."""
    assert _words(counter, key) == list(want)


def test_box_muller_edges():
    w = torch.tensor([0, 0xFFFFFFFF, 0x80000000], dtype=torch.int64)
    n0, n1 = box_muller(w, torch.zeros_like(w))
    assert torch.isfinite(n0).all()
    assert float(n0[1]) == 0.0  # u = 1 exactly -> radius 0
    assert abs(float(n0[0]) - math.sqrt(-2 * math.log(2.0**-24))) < 1e-5  # the largest radius
    torch.testing.assert_close(n1, torch.zeros_like(n1))


def _normal_cdf(x):
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def test_noise_moments_and_ks():
    eps = normal_noise(torch.tensor(20261123), 4, 2500, 37).double().flatten()  # 370k normals
    n = eps.numel()
    z = 3.9  # two-sided p = 1e-4
    assert abs(eps.mean()) < z / math.sqrt(n)
    assert abs(eps.var() - 1) < z * math.sqrt(2 / n)
    assert abs((eps**3).mean()) < z * math.sqrt(15 / n)
    assert abs((eps**4).mean() - 3) < z * math.sqrt(96 / n)
    sorted_eps, _ = torch.sort(eps)
    cdf = _normal_cdf(sorted_eps)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    ks = torch.maximum(i / n - cdf, cdf - (i - 1) / n).max()
    assert ks < 2.23 / math.sqrt(n)  # Kolmogorov critical value at p = 1e-4
    # Lanes of one Philox call and neighbouring rows are uncorrelated.
    grid = normal_noise(torch.tensor(7), 1, 20000, 8)[0].double()
    corr = torch.corrcoef(grid.T)
    off_diag = corr - torch.eye(8, dtype=torch.float64)
    assert off_diag.abs().max() < 4.5 / math.sqrt(20000)


def test_same_seed_same_z_and_fresh_noise_each_call(seed):
    mu, s = torch.zeros(3, 5), torch.zeros(3, 5)
    torch.manual_seed(seed)
    a = fe.gaussian_latent(mu, s, n_samples=2).z
    b = fe.gaussian_latent(mu, s, n_samples=2).z
    torch.manual_seed(seed)
    a2 = fe.gaussian_latent(mu, s, n_samples=2).z
    assert torch.equal(a, a2)
    assert not torch.equal(a, b)
    g1, g2 = generator(seed, "cpu"), generator(seed, "cpu")
    assert torch.equal(fe.gaussian_latent(mu, s, generator=g1).z, fe.gaussian_latent(mu, s, generator=g2).z)


def test_noise_depends_on_logical_index_only(seed):
    """Element (k, row, d) gets the same eps whatever the batch size, layout or dtype."""
    g = generator(seed, "cpu")
    wide = randn(g, 6, 4, 11)
    full = fe.gaussian_latent(torch.zeros(6, 4, 11), torch.zeros(6, 4, 11), n_samples=3, generator=generator(seed, "cpu")).z
    part = fe.gaussian_latent(torch.zeros(2, 4, 11), torch.zeros(2, 4, 11), n_samples=2, generator=generator(seed, "cpu")).z
    assert torch.equal(full[:2, :2], part)
    strided = wide.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    assert not strided.is_contiguous()
    z1 = fe.gaussian_latent(wide, torch.zeros_like(wide), generator=generator(seed, "cpu")).z
    z2 = fe.gaussian_latent(strided, torch.zeros_like(wide), generator=generator(seed, "cpu")).z
    assert torch.equal(z1, z2)
    z16 = fe.gaussian_latent(torch.zeros(6, 4, 11, dtype=torch.float16), torch.zeros(6, 4, 11, dtype=torch.float16),
                             n_samples=3, generator=generator(seed, "cpu")).z
    assert torch.equal(z16, full.to(torch.float16))


@pytest.mark.parametrize("param", PARAMS)
def test_backward_sees_the_forward_eps(param, seed):
    """grad of sum(z) w.r.t. sigma is sum_k eps: the noise of the forward pass."""
    g = generator(seed, "cpu")
    mu = randn(g, 3, 5).requires_grad_(True)
    sigma = torch.rand(3, 5, dtype=torch.float64, generator=g) + 0.5
    s = {"logvar": 2 * sigma.log(), "log_std": sigma.log(), "softplus": torch.log(torch.expm1(sigma)),
         "soft_log_std": 5 * torch.atanh(sigma.log() / 5)}[param]
    s = s.requires_grad_(True)
    lat = fe.gaussian_latent(mu, s, param=param, n_samples=4, generator=generator(seed + 1, "cpu"))
    eps = (lat.z - mu) / sigma
    (grad_s,) = torch.autograd.grad(lat.z.sum(), [s])
    dsigma_ds = {"logvar": sigma / 2, "log_std": sigma, "softplus": torch.sigmoid(s.detach()),
                 "soft_log_std": sigma * (1 - torch.tanh(s.detach() / 5) ** 2)}[param]
    torch.testing.assert_close(grad_s, eps.detach().sum(0) * dsigma_ds)


# ---- the CPU kernel draws its own seed ----

def test_the_cpu_kernel_draws_the_seed_draw_seed_would(seed):
    """With neither seed nor eps, the CPU op draws its seed inside (no separate op per call): the
    value fastelbo.rng.draw_seed gives from the same generator state, the generator left where
    draw_seed leaves it, and the seed returned as the op's fifth output (it fails if the C++ draw
    drifts from torch.randint's)."""
    if "cpu" not in BACKENDS:
        pytest.skip("the cpu backend is unavailable here")
    mu, s = randn(generator(seed, "cpu"), 4, 6), torch.zeros(4, 6)
    op = torch.ops.fastelbo.gaussian_latent.default
    fe.gaussian_latent(mu, s, backend="cpu")  # loads the C++ library
    for n_samples in (0, 3):
        torch.manual_seed(seed)
        drawn = op(mu, s, None, None, None, None, 0, n_samples, False)
        after_op = torch.randint(0, 2**62, (4,))
        torch.manual_seed(seed)
        want = fe.rng.draw_seed(torch.device("cpu"))
        given = op(mu, s, None, None, None, want, 0, n_samples, False)
        assert torch.equal(torch.randint(0, 2**62, (4,)), after_op)
        assert drawn[4].dtype == torch.int64 and drawn[4].shape == () and drawn[4].item() == want.item()
        assert given[4].shape == (0,)  # a given seed is not returned
        for a, b in zip(drawn[:4], given[:4]):
            assert torch.equal(a, b)
    # the public function: every backend from one generator state gives the same z, and the latent
    # remembers the drawn seed for DReG
    zs = {}
    for backend in BACKENDS:
        torch.manual_seed(seed)
        latent = fe.gaussian_latent(mu, s, backend=backend)
        zs[backend] = latent.z
        torch.manual_seed(seed)
        assert latent.inputs[-1].item() == fe.rng.draw_seed(torch.device("cpu")).item(), backend
    for backend, z in zs.items():
        torch.testing.assert_close(z, zs["reference"], rtol=1e-6, atol=1e-6, msg=backend)


def test_a_refused_call_leaves_the_generator_as_it_was():
    if "cpu" not in BACKENDS:
        pytest.skip("the cpu backend is unavailable here")
    op = torch.ops.fastelbo.gaussian_latent.default
    fe.gaussian_latent(torch.zeros(2, 2), torch.zeros(2, 2), backend="cpu")
    state = torch.get_rng_state()
    with pytest.raises(ValueError, match="scale must have mu's shape"):
        op(torch.zeros(3, 4), torch.zeros(3, 2), None, None, None, None, 0, 0, False)
    assert torch.equal(torch.get_rng_state(), state)


def test_kernels_that_do_not_draw_ask_for_a_seed():
    """The Triton and CUDA kernels take the seed their caller drew on the device (CUDA graphs)."""
    overloads = [name for name in ("triton", "cuda_sim") if hasattr(torch.ops.fastelbo.gaussian_latent, name)]
    if not overloads:
        pytest.skip("no Triton or simulated CUDA overload registered here")
    for name in overloads:
        with pytest.raises(ValueError, match="needs eps or a seed"):
            getattr(torch.ops.fastelbo.gaussian_latent, name)(torch.zeros(3, 4), torch.zeros(3, 4), None, None, None,
                                                              None, 0, 0, False)


def test_the_avx512_noise_math_over_every_input(tmp_path):
    """The float32 log, cos and sin of the AVX-512 noise path (csrc/cpu/noise_avx512.h), over all
    2^24 radii and all 2^24 angles the words can give (tests/cpp/box_muller_math.cpp): the log within
    1 ulp, cos and sin within 2 ulp where |value| >= 2^-6 and 1.2e-7 absolute everywhere (float32
    rounding near 1), against double precision of the same float inputs."""
    import shutil
    import subprocess
    from pathlib import Path

    from fastelbo.cpp_backend import _build

    compiler = shutil.which("g++")
    if compiler is None or _build.cpu_capability() != "AVX512":
        pytest.skip("needs g++ and an AVX-512 CPU (the path is AVX-512 only)")
    root = Path(__file__).resolve().parent
    binary = tmp_path / "box_muller_math"
    build = subprocess.run([compiler, "-O2", "-std=c++17", *_build._CPU_FLAGS["AVX512"], f"-I{root.parent / 'csrc'}",
                            str(root / "cpp" / "box_muller_math.cpp"), "-o", str(binary)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    fields = run.stdout.split()
    got = dict(zip(fields[0::2], map(float, fields[1::2])))
    assert got["log_ulp"] <= 1.0 and got["trig_ulp"] <= 2.0 and got["trig_abs"] <= 1.2e-7, got


def test_traced_graphs_never_merge_two_draws():
    """Under AOT autograd (here without dynamo) and torch.compile, fe.gaussian_latent passes a seed
    drawn by torch.randint, which the graph passes know to be random: two identical calls give two
    noises (with the op's own draw, AOT autograd's common-subexpression elimination merged them)."""
    if "cpu" not in BACKENDS:
        pytest.skip("the cpu backend is unavailable here")
    from functorch.compile import aot_function, min_cut_rematerialization_partition, nop

    def two_samples(mu, s):
        return fe.gaussian_latent(mu, s, backend="cpu").z, fe.gaussian_latent(mu, s, backend="cpu").z

    mu, s = torch.zeros(3, 5, requires_grad=True), torch.zeros(3, 5, requires_grad=True)
    za, zb = aot_function(two_samples, fw_compiler=nop, partition_fn=min_cut_rematerialization_partition)(mu, s)
    assert not torch.equal(za, zb)
    za, zb = torch.compile(two_samples, backend="aot_eager", fullgraph=True)(mu, s)
    assert not torch.equal(za, zb)
