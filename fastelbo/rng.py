"""The random-number scheme shared by every backend (docs/RNG.md has the full statement).

Each call that needs noise draws one 63-bit seed from torch's generator *on the tensors' device*
(``torch.randint``: no host sync, CUDA-graph safe, reproducible under ``torch.manual_seed``). The
noise of element (k, r, d) of z -- sample k, flattened batch row r, latent dim d -- is then a pure
function of (seed, k, r, d):

    key     = (seed mod 2^32, seed div 2^32)
    counter = (d div 4, r mod 2^32, r div 2^32, k)
    words   = Philox4x32-10(counter, key)            -> (w0, w1, w2, w3)
    eps     = lane (d mod 4) of box_muller(w0, w1, w2, w3), in the compute dtype

so it never depends on block sizes, tiling, strides or the backend. Backward passes regenerate eps
from the saved seed instead of storing it.

This module is the pure-PyTorch implementation (int64 arithmetic, any device) used by the
reference backend and by the tests that pin every other backend's words to it.
"""
from __future__ import annotations

import math

import torch

__all__ = ["draw_seed", "philox4x32_10", "box_muller", "normal_noise"]

MASK32 = 0xFFFFFFFF
PHILOX_M0 = 0xD2511F53  # multiplies counter word 0
PHILOX_M1 = 0xCD9E8D57  # multiplies counter word 2
PHILOX_W0 = 0x9E3779B9  # key word 0 increment (golden ratio)
PHILOX_W1 = 0xBB67AE85  # key word 1 increment (sqrt(3) - 1)
PHILOX_ROUNDS = 10
TWO_PI_F32 = 6.2831854820251465  # float32(2 pi): the constant every backend multiplies by
TWO_POW_M24 = 2.0 ** -24


def draw_seed(device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """One int64 seed in [0, 2^63 - 1), drawn on ``device`` from ``generator`` (default: the
    device's default generator). A 0-dim tensor: kernels read it, the host never does."""
    return torch.randint(0, 2**63 - 1, (), dtype=torch.int64, device=device, generator=generator)


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of the 64-bit product a * b, for a constant a < 2^32 and int64 b
    holding values in [0, 2^32). Split b in 16-bit halves so no partial product leaves int64."""
    b_lo = b & 0xFFFF
    b_hi = b >> 16
    p_lo = a * b_lo  # < 2^48
    p_hi = a * b_hi  # < 2^48
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & MASK32
    return hi, lo


def philox4x32_10(counter: tuple[torch.Tensor, ...], key: tuple[torch.Tensor, torch.Tensor]):
    """Philox4x32-10 (Salmon et al. 2011) on int64 tensors holding 32-bit words.

    One round:  (c0, c1, c2, c3) <- (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1, lo(M0 c0))
    then        (k0, k1) <- (k0 + W0, k1 + W1) mod 2^32; ten rounds. Returns the four output words.
    """
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo32(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def box_muller(w0: torch.Tensor, w1: torch.Tensor, dtype: torch.dtype = torch.float32):
    """Two standard normals from two 32-bit words, the same way on every backend, computed in
    `dtype` (float32, or float64 for float64 computations):

        u     = ((w0 >> 8) + 1) * 2^-24            in (0, 1], exact
        theta = float32(2 pi) * ((w1 >> 8) * 2^-24)  in [0, 2 pi)
        r     = sqrt(-2 log u)
        (n0, n1) = (r cos theta, r sin theta)
    """
    u = ((w0 >> 8) + 1).to(dtype) * TWO_POW_M24
    theta = ((w1 >> 8).to(dtype) * TWO_POW_M24) * TWO_PI_F32
    radius = torch.sqrt(-2.0 * torch.log(u))
    return radius * torch.cos(theta), radius * torch.sin(theta)


def normal_noise(seed: torch.Tensor, n_samples: int, n_rows: int, dim: int,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """eps of shape (n_samples, n_rows, dim) in `dtype` (float32 or float64), on seed's device,
    by the scheme above."""
    device = seed.device
    groups = math.ceil(dim / 4)
    k = torch.arange(n_samples, dtype=torch.int64, device=device).view(-1, 1, 1)
    r = torch.arange(n_rows, dtype=torch.int64, device=device).view(1, -1, 1)
    g = torch.arange(groups, dtype=torch.int64, device=device).view(1, 1, -1)
    shape = (n_samples, n_rows, groups)
    counter = tuple(c.expand(shape) for c in (g, r & MASK32, r >> 32, k))
    key = (seed & MASK32, (seed >> 32) & MASK32)
    w0, w1, w2, w3 = philox4x32_10(counter, key)
    n0, n1 = box_muller(w0, w1, dtype)
    n2, n3 = box_muller(w2, w3, dtype)
    lanes = torch.stack((n0, n1, n2, n3), dim=-1)  # element 4g + j is lane j of group g
    return lanes.reshape(n_samples, n_rows, 4 * groups)[..., :dim]


# The test-only op `philox_words` (csrc/binding/schema.cpp; its `.cuda_sim` overload in
# fastelbo/cpp_backend/cuda_sim.py): these Philox words as a kernel computes them.
PHILOX_WORDS_SCHEMA = "(Tensor counter, Tensor key) -> Tensor"


def philox_words_fake(counter: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """philox_words' output for torch.compile: (4, n) int64 words."""
    return counter.new_empty((4, counter.shape[1]), dtype=torch.int64)
