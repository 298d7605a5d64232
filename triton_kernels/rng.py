"""The noise scheme of docs/RNG.md in Triton: Philox4x32-10 and Box-Muller, 4 normals per call.

    key     = (seed mod 2^32, seed div 2^32)          seed: int64 read from device memory
    counter = (d div 4, r mod 2^32, r div 2^32, k)    element (k, r, d) of z
    u       = ((w_a >> 8) + 1) * 2^-24,  theta = float32(2 pi) * ((w_b >> 8) * 2^-24)
    lanes   = (rad(w0) cos th(w1), rad(w0) sin th(w1), rad(w2) cos th(w3), rad(w2) sin th(w3))
"""
import triton
import triton.language as tl

PHILOX_M0: tl.constexpr = 0xD2511F53
PHILOX_M1: tl.constexpr = 0xCD9E8D57
PHILOX_W0: tl.constexpr = 0x9E3779B9
PHILOX_W1: tl.constexpr = 0xBB67AE85
TWO_POW_M24: tl.constexpr = 5.9604644775390625e-08
TWO_PI_F32: tl.constexpr = 6.2831854820251465  # float32(2 pi), exact in float64 too


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Ten Philox rounds on uint32 words: (c0, c1, c2, c3) <- (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2),
    hi(M0 c0) ^ c3 ^ k1, lo(M0 c0)); then (k0, k1) += (W0, W1)."""
    for _ in tl.static_range(10):
        prev0 = c0
        prev2 = c2
        c0 = tl.umulhi(PHILOX_M1, prev2) ^ c1 ^ k0
        c2 = tl.umulhi(PHILOX_M0, prev0) ^ c3 ^ k1
        c1 = PHILOX_M1 * prev2
        c3 = PHILOX_M0 * prev0
        k0 = k0 + PHILOX_W0
        k1 = k1 + PHILOX_W1
    return c0, c1, c2, c3


@triton.jit
def box_muller(wa, wb, DTYPE: tl.constexpr):
    """Two normals in DTYPE (float32 or float64) from two uint32 words (radius from wa, angle from wb)."""
    u = ((wa >> 8) + 1).to(DTYPE) * TWO_POW_M24
    theta = ((wb >> 8).to(DTYPE) * TWO_POW_M24) * TWO_PI_F32
    radius = tl.sqrt(-2.0 * tl.log(u))
    return radius * tl.cos(theta), radius * tl.sin(theta)


@triton.jit
def seed_key(seed_ptr):
    """The Philox key (two uint32 words) of the int64 seed stored at seed_ptr."""
    seed = tl.load(seed_ptr)
    return (seed & 0xFFFFFFFF).to(tl.uint32), ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)


@triton.jit
def normal_lanes(k0, k1, group, row, sample, DTYPE: tl.constexpr):
    """The four normals (in DTYPE) of Philox call (group, row, sample): lanes 0..3 of columns
    4 group + j. group: int32/int64 tensor, row: int64 tensor, sample: scalar; shapes broadcast."""
    c0 = group.to(tl.uint32)
    c1 = (row & 0xFFFFFFFF).to(tl.uint32)
    c2 = ((row >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c3 = (group * 0 + sample).to(tl.uint32)
    w0, w1, w2, w3 = philox4x32_10(c0, c1, c2, c3, k0, k1)
    n0, n1 = box_muller(w0, w1, DTYPE)
    n2, n3 = box_muller(w2, w3, DTYPE)
    return n0, n1, n2, n3


@triton.jit
def philox_words_kernel(counter_ptr, key_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """out[j, i] = word j of Philox4x32-10(counter[:, i], key[:, i]); int64 in and out."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    c0 = tl.load(counter_ptr + offs, mask=mask, other=0).to(tl.uint32)
    c1 = tl.load(counter_ptr + n + offs, mask=mask, other=0).to(tl.uint32)
    c2 = tl.load(counter_ptr + 2 * n + offs, mask=mask, other=0).to(tl.uint32)
    c3 = tl.load(counter_ptr + 3 * n + offs, mask=mask, other=0).to(tl.uint32)
    k0 = tl.load(key_ptr + offs, mask=mask, other=0).to(tl.uint32)
    k1 = tl.load(key_ptr + n + offs, mask=mask, other=0).to(tl.uint32)
    w0, w1, w2, w3 = philox4x32_10(c0, c1, c2, c3, k0, k1)
    tl.store(out_ptr + offs, w0.to(tl.int64), mask=mask)
    tl.store(out_ptr + n + offs, w1.to(tl.int64), mask=mask)
    tl.store(out_ptr + 2 * n + offs, w2.to(tl.int64), mask=mask)
    tl.store(out_ptr + 3 * n + offs, w3.to(tl.int64), mask=mask)


@triton.jit
def normal_noise_kernel(seed_ptr, out_ptr, n_rows, dim, DTYPE: tl.constexpr, BLOCK_ROWS: tl.constexpr,
                        BLOCK_GROUPS: tl.constexpr):
    """out[k, r, d] = eps of element (k, r, d), out contiguous (K, n_rows, dim), in DTYPE.
    Grid: (cdiv(n_rows, BLOCK_ROWS), K)."""
    k0, k1 = seed_key(seed_ptr)
    sample = tl.program_id(1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS).to(tl.int64)
    row_mask = rows < n_rows
    base = out_ptr + (sample.to(tl.int64) * n_rows + rows[:, None]) * dim
    for g0 in range(0, tl.cdiv(dim, 4), BLOCK_GROUPS):
        groups = g0 + tl.arange(0, BLOCK_GROUPS)
        n0, n1, n2, n3 = normal_lanes(k0, k1, groups[None, :], rows[:, None], sample, DTYPE)
        col = 4 * groups[None, :]
        tl.store(base + col, n0, mask=row_mask[:, None] & (col < dim))
        tl.store(base + col + 1, n1, mask=row_mask[:, None] & (col + 1 < dim))
        tl.store(base + col + 2, n2, mask=row_mask[:, None] & (col + 2 < dim))
        tl.store(base + col + 3, n3, mask=row_mask[:, None] & (col + 3 < dim))
