"""What the "triton" backend promises beyond matching the reference (tests/test_backends_vs_reference.py)
and the promises of every fused backend (tests/test_fused_backends.py; opcheck of its ops:
tests/test_op_schemas.py): z independent of the block size, its row plan (broadcast x without copies, every offset of strided
layouts), 64-bit row offsets, and a clear error on CPU tensors without the interpreter. On CPU
these run in Triton's interpreter."""
import math

import pytest
import torch

import fastelbo as fe
from helpers import DEVICE, generator, needs_triton, rand, randn

pytestmark = [
    needs_triton,
    pytest.mark.skipif(fe.backends()["triton"] != "available", reason="backend 'triton' is unavailable here"),
]


def _leaf(t):
    return t.detach().requires_grad_(True)


# ---- noise ----

def test_z_independent_of_block_size(seed, monkeypatch):
    from fastelbo.triton_backend import _common

    g = generator(seed)
    mu, s = randn(g, 37, 13, dtype=torch.float32), rand(g, 37, 13, dtype=torch.float32, low=-1, high=1)
    seed_t = fe.rng.draw_seed(mu.device, g)
    from fastelbo.triton_backend.latent import gaussian_latent

    results = []
    for tile in (16, 64, 4096):  # 1, 4 and 64 rows per program
        monkeypatch.setattr(_common, "TILE_ELEMENTS", tile)
        results.append(gaussian_latent(mu, s, None, None, None, seed_t, 0, 2, False))
    for other in results[1:]:
        assert torch.equal(other[0], results[0][0])
        torch.testing.assert_close(other[1], results[0][1], atol=1e-5, rtol=0)


# ---- layouts ----

def test_broadcast_x_is_read_in_place():
    from fastelbo.triton_backend._layout import plan

    logits = torch.zeros(4, 3, 7)
    x = torch.zeros(3, 7)
    (_, x_planned), layout = plan([logits, x.expand(logits.shape)], 1)
    assert x_planned.data_ptr() == x.data_ptr() and x_planned.stride() == (0, 7, 1)
    assert (layout.rows, layout.cols) == (12, 7)
    assert layout.strides[1] == (0, 0, 7, 1)


def _offsets_by_formula(layout, i):
    s0, s1, s2, sc = layout.strides[i]
    out = []
    for r in range(layout.rows):
        i2, rest = r % layout.n2, r // layout.n2
        base = (rest // layout.n1) * s0 + (rest % layout.n1) * s1 + i2 * s2
        out += [base + c * sc for c in range(layout.cols)]
    return out


@pytest.mark.parametrize("make,event_dims", [
    (lambda: torch.zeros(2, 3, 4, 5).transpose(0, 2), 1),
    (lambda: torch.zeros(6, 10)[:, ::2], 1),
    (lambda: torch.zeros(5).expand(2, 3, 5), 1),
    (lambda: torch.zeros(3, 1, 5).expand(3, 4, 5), 2),
    (lambda: torch.zeros(2, 3, 4, 5, 6)[:, :, ::2, :, ::3], 1),
    (lambda: torch.zeros(4, 5, 6).permute(2, 0, 1), 2),
    (lambda: torch.zeros(2, 3, 4, 5, 6).permute(3, 1, 0, 2, 4), 1),  # four row strides: copied
])
def test_layout_offsets_address_every_element(make, event_dims):
    """The offsets the kernels compute (row_offset + col * stride) are the tensor's own offsets."""
    from fastelbo.triton_backend._layout import plan

    t = make()
    (planned,), layout = plan([t], event_dims)
    want = torch.as_strided(torch.arange(planned.storage_offset() + 10**4), planned.shape, planned.stride(),
                            planned.storage_offset()).flatten().tolist()
    got = [planned.storage_offset() + o for o in _offsets_by_formula(layout, 0)]
    assert got == want


try:
    import triton
    import triton.language as tl

    from fastelbo.triton_kernels.math import expm1, row_offset

    @triton.jit
    def _row_offset_kernel(rows_ptr, out_ptr, n1, n2, s0, s1, s2):
        rows = tl.load(rows_ptr + tl.arange(0, 4))
        tl.store(out_ptr + tl.arange(0, 4), row_offset(rows, n1, n2, s0, s1, s2))

    @triton.jit
    def _expm1_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        tl.store(out_ptr + offsets, expm1(tl.load(x_ptr + offsets, mask=mask)), mask=mask)
except ImportError:  # the module is skipped without triton
    pass


def test_row_offset_is_64_bit():
    """Rows and strides past 2^31: the jit helper's arithmetic stays exact (no int32 wrap)."""
    rows = torch.tensor([0, 2**31 + 5, 3 * 2**32 + 7, 2**40 + 123], dtype=torch.int64, device=DEVICE)
    out = torch.empty_like(rows)
    n1, n2, s0, s1, s2 = 3, 2**20 + 1, 2**33 + 17, 2**22 + 3, 5
    _row_offset_kernel[(1,)](rows, out, n1, n2, s0, s1, s2)
    want = []
    for r in rows.tolist():
        i2, rest = r % n2, r // n2
        want.append((rest // n1) * s0 + (rest % n1) * s1 + i2 * s2)
    assert out.tolist() == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_expm1_over_the_whole_range(dtype):
    """expm1 within 2 ulp of float64 (mpmath-grade torch.expm1 in float64) from the underflow of
    e^x to its overflow, through the subnormal e^x where Kahan's quotient used to break down."""
    info = torch.finfo(dtype)
    low, high = math.log(info.tiny) - 30.0, math.log(info.max) - 0.01
    x = torch.cat([torch.linspace(low, high, 20001, dtype=torch.float64),
                   torch.tensor([0.0, 1e-30, -1e-30, 1e-8, -1e-8, 0.5, -0.5, 0.999, -0.999, 1.0, -1.0],
                                dtype=torch.float64)]).to(dtype).to(DEVICE)
    out = torch.empty_like(x)
    _expm1_kernel[(triton.cdiv(x.numel(), 1024),)](x, out, x.numel(), BLOCK=1024)
    want = torch.expm1(x.double())
    ulp = (want.abs().clamp(min=info.tiny) * info.eps).to(torch.float64)
    assert ((out.double() - want).abs() <= 2 * ulp).all()


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    from fastelbo import _backend

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(_backend, "_RESOLVED", {})
    monkeypatch.setattr(_backend, "_unavailable_reason", lambda name: None)  # as on a GPU machine
    with pytest.raises(ValueError, match="backend 'triton' runs on CUDA tensors .* got tensors on cpu"):
        fe.bernoulli_log_prob(torch.zeros(2, 3), torch.zeros(2, 3), backend="triton")
    monkeypatch.undo()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(_backend, "_RESOLVED", {})
    if not torch.cuda.is_available():
        assert "needs a CUDA GPU" in fe.backends()["triton"]
        with pytest.raises(RuntimeError, match="'triton' is unavailable: needs a CUDA GPU"):
            fe.bernoulli_log_prob(torch.zeros(2, 3), torch.zeros(2, 3), backend="triton")
