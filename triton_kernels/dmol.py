"""The discretized mixture of logistics (PixelCNN++ / VDVAE / NVAE): one pass that writes each
pixel's log-likelihood and, when gradients are needed, d log p / d params into a buffer fastelbo
owns; the backward pass only scales that buffer by the image's incoming gradient.

The formulas are csrc/core/dmol.h's (the C++ kernels'), mirrored by the reference in
fastelbo/ops/discretized_logistic_mixture_log_prob.py. Pixels are read through row_offset (any
strides: NCHW views, channels-last, a broadcast x with stride 0), the 10 M parameters of a pixel
through one channel stride, in the order: M logits, then per colour channel c = 0, 1, 2 the means,
raw log-scales and raw coefficients (M each) at M + 3 M c + {0, M, 2 M} + m.
"""
import triton
import triton.language as tl

from .math import expm1, log1p, row_offset, scalar

MIN_LOG_SCALE: tl.constexpr = -7.0
EDGE: tl.constexpr = 0.999
LOG_MASS_FLOOR: tl.constexpr = -11.512925464970229  # log 1e-5


@triton.jit
def softplus_sigmoid(y):
    """(softplus(y), sigmoid(y)) from one exp(-|y|)."""
    e = tl.exp(-tl.abs(y))
    u = 1.0 + e
    return tl.maximum(y, 0.0) + log1p(e), tl.where(y >= 0.0, 1.0, e) / u


@triton.jit
def tanh_terms(a):
    """(tanh a, 1 - tanh^2 a) without overflow or cancellation: with m = expm1(-2|a|),
    tanh |a| = -m / (2 + m) and 1 - tanh^2 a = 4 e^(-2|a|) / (2 + m)^2 (exact where tanh saturates)."""
    m = expm1(-2.0 * tl.abs(a))
    v = 2.0 + m
    t = -m / v
    return tl.where(a < 0.0, -t, t), 4.0 * tl.exp(-2.0 * tl.abs(a)) / (v * v)


@triton.jit
def dmol_channel(x, u, s_raw, h, log_half_levels):
    """One colour channel of one component: (log P, d log P / d u, d log P / d s_raw) with u = x - m.

    s = max(s_raw, -7) (NaN stays NaN), inv = e^-s, plus = inv (u + h), minus = inv (u - h),
    mid = inv u, delta = 2 h inv:
      x < -0.999: log P = -softplus(-plus);       d/du = inv sigmoid(-plus);  d/ds = -plus sigmoid(-plus)
      x >  0.999: log P = -softplus(minus);       d/du = -inv sigmoid(minus); d/ds = minus sigmoid(minus)
      else, log mass = -softplus(-plus) - softplus(minus) + log(-expm1(-delta)):
        log mass > log 1e-5: log P = log mass;    d/du = inv (sigmoid(-plus) - sigmoid(minus))
                             d/ds = minus sigmoid(minus) - plus sigmoid(-plus) + delta e^-delta / expm1(-delta)
        otherwise:           log P = mid - s - 2 softplus(mid) - log((2^bits - 1) / 2)
                             d/du = inv (1 - 2 sigmoid(mid)); d/ds = -mid (1 - 2 sigmoid(mid)) - 1
    d/ds_raw = d/ds where s_raw >= -7 (torch.clamp's gradient, ties included), else 0."""
    s = tl.where(s_raw < MIN_LOG_SCALE, MIN_LOG_SCALE, s_raw)  # not tl.maximum: a NaN s_raw stays NaN
    inv = tl.exp(-s)
    plus = inv * (u + h)
    minus = inv * (u - h)
    mid = inv * u
    delta = inv * (2.0 * h)
    p_sp, p_sig = softplus_sigmoid(-plus)
    q_sp, q_sig = softplus_sigmoid(minus)
    r_sp, r_sig = softplus_sigmoid(mid)
    em = expm1(-delta)  # in (-1, 0]; 0 only where delta underflows (then the mass branch is not taken)
    log_mass = (-p_sp - q_sp) + tl.log(-em)
    tilt = 1.0 - 2.0 * r_sig
    low = x < -EDGE
    high = x > EDGE
    mass = log_mass > LOG_MASS_FLOOR
    em_safe = tl.where(mass, em, -1.0)
    value = tl.where(mass, log_mass, mid - s - 2.0 * r_sp - log_half_levels)
    d_u = tl.where(mass, inv * (p_sig - q_sig), inv * tilt)
    d_s = tl.where(mass, minus * q_sig - plus * p_sig + delta * (1.0 + em_safe) / em_safe, -mid * tilt - 1.0)
    value = tl.where(low, -p_sp, tl.where(high, -q_sp, value))
    d_u = tl.where(low, inv * p_sig, tl.where(high, -inv * q_sig, d_u))
    d_s = tl.where(low, -plus * p_sig, tl.where(high, minus * q_sig, d_s))
    d_s = tl.where(s_raw >= MIN_LOG_SCALE, d_s, 0.0)
    return value, d_u, d_s


@triton.jit
def dmol_log_prob_kernel(
    p_ptr, x_ptr, lp_ptr, g_ptr,
    P, M, n1, n2,
    p_s0, p_s1, p_s2, p_sc, x_s0, x_s1, x_s2, x_sc, g_s0, g_s1, g_s2, g_sc,
    h_hi, h_lo, lhl_hi, lhl_lo,
    NEED_GRAD: tl.constexpr, DTYPE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """Per pixel (x_0, x_1, x_2) and component m (t_c = tanh a_c,m):
        mean_0 = mu_0,  mean_1 = mu_1 + t_0 x_0,  mean_2 = mu_2 + t_1 x_0 + t_2 x_1
        b_m = log_softmax(pi)_m + sum_c log P(x_c; mean_c, s_c,m)   (dmol_channel)
        lp[pixel] = logsumexp_m b_m                                 (lp: contiguous, one per pixel)
    and, with NEED_GRAD, w_m = softmax_m(b) and dmean_c = -d log P_c / du into g (params' shape):
        d/dpi_m = w_m - softmax(pi)_m,  d/dmu_c,m = w_m dmean_c,  d/ds_c,m = w_m d log P_c / ds_raw,
        d/da_0 = w_m dmean_1 x_0 (1 - t_0^2),  d/da_1 = w_m dmean_2 x_0 (1 - t_1^2),
        d/da_2 = w_m dmean_2 x_1 (1 - t_2^2).
    One program: BLOCK_P pixels x BLOCK_M components (M padded to a power of two; padded
    components take -inf in both softmaxes). h = h_hi + h_lo = 1 / (2^bits - 1),
    lhl_hi + lhl_lo = log((2^bits - 1) / 2)."""
    pix = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    pix_mask = pix < P
    comp = tl.arange(0, BLOCK_M).to(tl.int64)
    comp_ok = comp < M
    mask = pix_mask[:, None] & comp_ok[None, :]
    h = scalar(h_hi, h_lo, DTYPE)
    log_half_levels = scalar(lhl_hi, lhl_lo, DTYPE)

    p_rows = p_ptr + row_offset(pix, n1, n2, p_s0, p_s1, p_s2)[:, None]
    x_rows = x_ptr + row_offset(pix, n1, n2, x_s0, x_s1, x_s2)
    x0 = tl.load(x_rows, mask=pix_mask, other=0.0).to(DTYPE)[:, None]
    x1 = tl.load(x_rows + x_sc, mask=pix_mask, other=0.0).to(DTYPE)[:, None]
    x2 = tl.load(x_rows + 2 * x_sc, mask=pix_mask, other=0.0).to(DTYPE)[:, None]

    # log_softmax of the mixture logits
    logits = tl.load(p_rows + (comp * p_sc)[None, :], mask=mask, other=0.0).to(DTYPE)
    logits = tl.where(comp_ok[None, :], logits, float("-inf"))
    l_max = tl.max(logits, axis=1)
    l_max = tl.where(l_max == float("-inf"), 0.0, l_max)  # all logits -inf: NaN, as log_softmax gives
    l_shift = logits - l_max[:, None]
    log_pi = l_shift - tl.log(tl.sum(tl.exp(l_shift), axis=1))[:, None]

    # channel c's block starts at M + 3 M c: means, raw log-scales, raw coefficients
    mu0 = tl.load(p_rows + ((comp + M) * p_sc)[None, :], mask=mask, other=0.0).to(DTYPE)
    s0 = tl.load(p_rows + ((comp + 2 * M) * p_sc)[None, :], mask=mask, other=0.0).to(DTYPE)
    a0 = tl.load(p_rows + ((comp + 3 * M) * p_sc)[None, :], mask=mask, other=0.0).to(DTYPE)
    mu1 = tl.load(p_rows + ((comp + 4 * M) * p_sc)[None, :], mask=mask, other=0.0).to(DTYPE)
    s1 = tl.load(p_rows + ((comp + 5 * M) * p_sc)[None, :], mask=mask, other=0.0).to(DTYPE)
    a1 = tl.load(p_rows + ((comp + 6 * M) * p_sc)[None, :], mask=mask, other=0.0).to(DTYPE)
    mu2 = tl.load(p_rows + ((comp + 7 * M) * p_sc)[None, :], mask=mask, other=0.0).to(DTYPE)
    s2 = tl.load(p_rows + ((comp + 8 * M) * p_sc)[None, :], mask=mask, other=0.0).to(DTYPE)
    a2 = tl.load(p_rows + ((comp + 9 * M) * p_sc)[None, :], mask=mask, other=0.0).to(DTYPE)
    t0, dt0 = tanh_terms(a0)
    t1, dt1 = tanh_terms(a1)
    t2, dt2 = tanh_terms(a2)

    v0, du0, ds0 = dmol_channel(x0, x0 - mu0, s0, h, log_half_levels)
    v1, du1, ds1 = dmol_channel(x1, x1 - (mu1 + t0 * x0), s1, h, log_half_levels)
    v2, du2, ds2 = dmol_channel(x2, x2 - ((mu2 + t1 * x0) + t2 * x1), s2, h, log_half_levels)

    # logsumexp over the components; a NaN anywhere in a pixel's bracket reaches its sum and its
    # log-prob whether or not tl.max propagates NaN.
    bracket = tl.where(comp_ok[None, :], ((v0 + v1) + v2) + log_pi, float("-inf"))
    b_max = tl.max(bracket, axis=1)
    b_max = tl.where(b_max == float("-inf"), 0.0, b_max)
    b_shift = bracket - b_max[:, None]
    log_sum = tl.log(tl.sum(tl.exp(b_shift), axis=1))
    tl.store(lp_ptr + pix, b_max + log_sum, mask=pix_mask)

    if NEED_GRAD:
        w = tl.exp(b_shift - log_sum[:, None])
        g_rows = g_ptr + row_offset(pix, n1, n2, g_s0, g_s1, g_s2)[:, None]
        ty = g_ptr.dtype.element_ty
        dm0 = -w * du0
        dm1 = -w * du1
        dm2 = -w * du2
        tl.store(g_rows + (comp * g_sc)[None, :], (w - tl.exp(log_pi)).to(ty), mask=mask)
        tl.store(g_rows + ((comp + M) * g_sc)[None, :], dm0.to(ty), mask=mask)
        tl.store(g_rows + ((comp + 2 * M) * g_sc)[None, :], (w * ds0).to(ty), mask=mask)
        tl.store(g_rows + ((comp + 3 * M) * g_sc)[None, :], (dm1 * x0 * dt0).to(ty), mask=mask)
        tl.store(g_rows + ((comp + 4 * M) * g_sc)[None, :], dm1.to(ty), mask=mask)
        tl.store(g_rows + ((comp + 5 * M) * g_sc)[None, :], (w * ds1).to(ty), mask=mask)
        tl.store(g_rows + ((comp + 6 * M) * g_sc)[None, :], (dm2 * x0 * dt1).to(ty), mask=mask)
        tl.store(g_rows + ((comp + 7 * M) * g_sc)[None, :], dm2.to(ty), mask=mask)
        tl.store(g_rows + ((comp + 8 * M) * g_sc)[None, :], (w * ds2).to(ty), mask=mask)
        tl.store(g_rows + ((comp + 9 * M) * g_sc)[None, :], (dm2 * x1 * dt2).to(ty), mask=mask)
