"""Likelihood kernels log p(x|z): one pass that writes each row's log-prob and, when gradients
are needed, the elementwise gradient into a buffer fastelbo owns (contiguous (R, N)); the
backward pass only scales that buffer by the row's incoming gradient.

Parameters are read as R rows of N event elements through row_offset (any strides); x is read
through its own strides, so a broadcast x (stride 0 along the dims it lacks) is never copied, and
may be float, bool or uint8.
"""
import triton
import triton.language as tl

from .math import bernoulli_terms, cb_log_normalizer_terms, row_offset, scalar


@triton.jit
def binary_log_prob_kernel(
    l_ptr, x_ptr, out_ptr, grad_ptr,
    R, N, n1, n2,
    l_s0, l_s1, l_s2, l_sc, x_s0, x_s1, x_s2, x_sc, g_hi, g_lo,
    CONTINUOUS: tl.constexpr, NEED_GRAD: tl.constexpr, DTYPE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Bernoulli:              sum_n x l - softplus(l),           d/dl = x - sigmoid(l)
    continuous Bernoulli:     sum_n x l - softplus(l) + log C(l), d/dl = x - sigmoid(l) + dlog C/dl
    The buffer holds (g_hi + g_lo) d/dl, the gradient the caller expects each row to receive."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    l_rows = row_offset(rows, n1, n2, l_s0, l_s1, l_s2)[:, None]
    x_rows = row_offset(rows, n1, n2, x_s0, x_s1, x_s2)[:, None]
    acc = tl.zeros((BLOCK_R,), dtype=DTYPE)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N).to(tl.int64)
        mask = row_mask[:, None] & (cols[None, :] < N)
        l = tl.load(l_ptr + l_rows + cols[None, :] * l_sc, mask=mask, other=0.0).to(DTYPE)
        x = tl.load(x_ptr + x_rows + cols[None, :] * x_sc, mask=mask, other=0).to(DTYPE)
        value, grad = bernoulli_terms(l, x)
        if CONTINUOUS:
            log_c, dlog_c = cb_log_normalizer_terms(l)
            value += log_c
            grad += dlog_c
        acc += tl.sum(tl.where(mask, value, 0.0), axis=1)
        if NEED_GRAD:
            g_scale = scalar(g_hi, g_lo, DTYPE)
            tl.store(grad_ptr + rows[:, None] * N + cols[None, :], (grad * g_scale).to(grad_ptr.dtype.element_ty),
                     mask=mask)
    tl.store(out_ptr + rows, acc, mask=row_mask)


@triton.jit
def gaussian_log_prob_kernel(
    m_ptr, x_ptr, v_ptr, out_ptr, gm_ptr,
    R, N, n1, n2,
    m_s0, m_s1, m_s2, m_sc, x_s0, x_s1, x_s2, x_sc, v_s0, v_s1, v_s2, v_sc,
    v_hi, v_lo, const_hi, const_lo, g_hi, g_lo,
    V_TENSOR: tl.constexpr, NEED_GRAD: tl.constexpr, DTYPE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """sum_n -((x - m)^2 e^-v + v)/2 - N log(2 pi)/2   (const_hi + const_lo = N log(2 pi)/2);
    buffer c b, b = d/dm = (x - m) e^-v, c = g_hi + g_lo the gradient the caller expects each row to
    receive (d/dv is derived from it in backward: gaussian_log_prob_backward_kernel).
    v: a tensor (V_TENSOR) or v_hi + v_lo."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    m_rows = row_offset(rows, n1, n2, m_s0, m_s1, m_s2)[:, None]
    x_rows = row_offset(rows, n1, n2, x_s0, x_s1, x_s2)[:, None]
    v_rows = row_offset(rows, n1, n2, v_s0, v_s1, v_s2)[:, None]
    v_scalar = scalar(v_hi, v_lo, DTYPE)
    acc = tl.zeros((BLOCK_R,), dtype=DTYPE)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N).to(tl.int64)
        mask = row_mask[:, None] & (cols[None, :] < N)
        m = tl.load(m_ptr + m_rows + cols[None, :] * m_sc, mask=mask, other=0.0).to(DTYPE)
        x = tl.load(x_ptr + x_rows + cols[None, :] * x_sc, mask=mask, other=0).to(DTYPE)
        if V_TENSOR:
            v = tl.load(v_ptr + v_rows + cols[None, :] * v_sc, mask=mask, other=0.0).to(DTYPE)
        else:
            v = tl.zeros((BLOCK_R, BLOCK_N), dtype=DTYPE) + v_scalar  # not 0 * m: NaN for an infinite mean
        inv_var = tl.exp(-v)
        diff = x - m
        scaled = diff * diff * inv_var
        acc += tl.sum(tl.where(mask, -0.5 * (scaled + v), 0.0), axis=1)
        offs = rows[:, None] * N + cols[None, :]
        if NEED_GRAD:
            g_scale = scalar(g_hi, g_lo, DTYPE)
            tl.store(gm_ptr + offs, (diff * inv_var * g_scale).to(gm_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + rows, acc - scalar(const_hi, const_lo, DTYPE), mask=row_mask)


@triton.jit
def gaussian_log_prob_backward_kernel(
    g_ptr, b_ptr, v_ptr, gm_ptr, gv_ptr,
    R, N, n1, n2,
    v_s0, v_s1, v_s2, v_sc, c_hi, c_lo,
    NEED_MEAN: tl.constexpr, NEED_GRAD_V: tl.constexpr, DTYPE: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """From the forward's buffer c b, b = (x - m) e^-v (contiguous (R, N)), c = c_hi + c_lo, and the
    rows' gradient g: grad_mean = (g / c) (c b) (NEED_MEAN);  d/dv per element = g ((b e^(v/2))^2 - 1)/2
    (= g ((x - m)^2 e^-v - 1)/2, without overflow), summed to logvar's shape by the launcher."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    c_scale = scalar(c_hi, c_lo, DTYPE)
    g = tl.load(g_ptr + rows, mask=row_mask, other=0.0).to(DTYPE)[:, None]
    v_rows = row_offset(rows, n1, n2, v_s0, v_s1, v_s2)[:, None]
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N).to(tl.int64)
        mask = row_mask[:, None] & (cols[None, :] < N)
        offs = rows[:, None] * N + cols[None, :]
        cb = tl.load(b_ptr + offs, mask=mask, other=0.0).to(DTYPE)
        if NEED_MEAN:
            tl.store(gm_ptr + offs, ((g / c_scale) * cb).to(gm_ptr.dtype.element_ty), mask=mask)
        b = cb * (1.0 / c_scale)
        if NEED_GRAD_V:
            v = tl.load(v_ptr + v_rows + cols[None, :] * v_sc, mask=mask, other=0.0).to(DTYPE)
            # b = 0 gives 0 and an infinite b itself, also where e^(v/2) is inf or 0 (v = +inf: the
            # reference's -1/2; v = -inf: its inf; not the NaN of 0 * inf).
            scaled = tl.where(b == 0.0, 0.0, tl.where(tl.abs(b) == float("inf"), b, b * tl.exp(0.5 * v)))
            tl.store(gv_ptr + offs, (g * (0.5 * (scaled * scaled - 1.0))).to(gv_ptr.dtype.element_ty), mask=mask)


@triton.jit
def categorical_log_prob_kernel(
    l_ptr, t_ptr, out_ptr, grad_ptr,
    E, C, n1, n2,
    l_s0, l_s1, l_s2, l_sc, t_s0, t_s1, t_s2,
    NEED_GRAD: tl.constexpr, DTYPE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Per element e (a row of C logits): log softmax(l)[t] = l_t - logsumexp(l), NaN for t outside
    [0, C); gradient onehot(t) - softmax(l) (0 for invalid t). logsumexp runs online over C."""
    elems = tl.program_id(0).to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E)
    elem_mask = elems < E
    l_rows = row_offset(elems, n1, n2, l_s0, l_s1, l_s2)[:, None]
    target = tl.load(t_ptr + row_offset(elems, n1, n2, t_s0, t_s1, t_s2), mask=elem_mask, other=0).to(tl.int64)
    valid = (target >= 0) & (target < C)
    run_max = tl.full((BLOCK_E,), float("-inf"), dtype=DTYPE)
    run_sum = tl.zeros((BLOCK_E,), dtype=DTYPE)
    picked = tl.zeros((BLOCK_E,), dtype=DTYPE)
    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C).to(tl.int64)
        col_mask = cols[None, :] < C
        l = tl.load(l_ptr + l_rows + cols[None, :] * l_sc, mask=elem_mask[:, None] & col_mask, other=0.0).to(DTYPE)
        l = tl.where(col_mask, l, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(l, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(l - new_max[:, None]), axis=1)
        run_max = new_max
        picked += tl.sum(tl.where(cols[None, :] == target[:, None], l, 0.0), axis=1)
    # (l - max) - log sum, never l - (max + log sum): that sum rounds at the logits' size (1e-3 at 1e4).
    log_sum = tl.log(run_sum)
    tl.store(out_ptr + elems, tl.where(valid, (picked - run_max) - log_sum, float("nan")), mask=elem_mask)
    if NEED_GRAD:
        for start in range(0, C, BLOCK_C):
            cols = start + tl.arange(0, BLOCK_C).to(tl.int64)
            mask = elem_mask[:, None] & (cols[None, :] < C)
            l = tl.load(l_ptr + l_rows + cols[None, :] * l_sc, mask=mask, other=0.0).to(DTYPE)
            onehot = tl.where(cols[None, :] == target[:, None], 1.0, 0.0)
            grad = tl.where(valid[:, None], onehot - tl.exp((l - run_max[:, None]) - log_sum[:, None]), 0.0)
            tl.store(grad_ptr + elems[:, None] * C + cols[None, :], grad.to(grad_ptr.dtype.element_ty), mask=mask)
