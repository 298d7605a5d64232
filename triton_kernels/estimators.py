"""The estimator combine: K per-sample terms (K, R) -> one value per data point (R,), one pass.

log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x), beta = beta_hi + beta_lo, log K = logk_hi + logk_lo:
    MODE 0, elbo with MC KL:       mean_k [log p(x|z_k) + beta (log p(z_k) - log q(z_k|x))]
    MODE 1, elbo with analytic KL: mean_k log p(x|z_k) - beta kl
    MODE 2, iwae:                  logsumexp_k log w_k - log K, by an online max-shifted sum, and
                                   the normalized weights w~_k = exp(log w_k - max) / sum_j
                                   exp(log w_j - max) (exp(log w_k - logsumexp) where the max is
                                   infinite) that the backward pass multiplies the incoming gradient by.
"""
import triton
import triton.language as tl

from .math import scalar


@triton.jit
def elbo_kernel(
    ll_ptr, lq_ptr, lp_ptr, kl_ptr, out_ptr, w_ptr,
    R, K, beta_hi, beta_lo, logk_hi, logk_lo,
    MODE: tl.constexpr, DTYPE: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Inputs contiguous (K, R) (kl: (R,)); out (R,), w (K, R) in MODE 2."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask = rows < R
    beta = scalar(beta_hi, beta_lo, DTYPE)
    if MODE == 2:
        run_max = tl.full((BLOCK_R,), float("-inf"), dtype=DTYPE)
        run_sum = tl.zeros((BLOCK_R,), dtype=DTYPE)
        for k in range(K):
            offs = tl.cast(k, tl.int64) * R + rows
            log_w = (tl.load(ll_ptr + offs, mask=mask, other=0.0).to(DTYPE)
                     + tl.load(lp_ptr + offs, mask=mask, other=0.0).to(DTYPE)
                     - tl.load(lq_ptr + offs, mask=mask, other=0.0).to(DTYPE))
            new_max = tl.maximum(run_max, log_w)
            infinite = (new_max == float("-inf")) | (new_max == float("inf"))
            shift = tl.where(infinite, 0.0, new_max)  # an infinite max so far: keep 0 (inf - inf is NaN)
            run_sum = run_sum * tl.exp(run_max - shift) + tl.exp(log_w - shift)
            run_max = new_max
        # An infinite max is the value (all log-weights -inf: -inf; one +inf: +inf), as torch.logsumexp.
        # A NaN log-weight makes run_sum NaN, and so the value.
        infinite = (run_max == float("-inf")) | (run_max == float("inf"))
        lse = tl.where(infinite & (run_sum == run_sum), run_max, run_max + tl.log(run_sum))
        tl.store(out_ptr + rows, lse - scalar(logk_hi, logk_lo, DTYPE), mask=mask)
        for k in range(K):
            offs = tl.cast(k, tl.int64) * R + rows
            log_w = (tl.load(ll_ptr + offs, mask=mask, other=0.0).to(DTYPE)
                     + tl.load(lp_ptr + offs, mask=mask, other=0.0).to(DTYPE)
                     - tl.load(lq_ptr + offs, mask=mask, other=0.0).to(DTYPE))
            # normalized by the sum itself, not as exp(log w - lse): lse is rounded at the log-weights'
            # magnitude (ulp(7000) = 4.9e-4 in float32), and so would every weight be
            weight = tl.where(infinite, tl.exp(log_w - lse), tl.exp(log_w - run_max) / run_sum)
            tl.store(w_ptr + offs, weight, mask=mask)
    else:
        acc = tl.zeros((BLOCK_R,), dtype=DTYPE)
        for k in range(K):
            offs = tl.cast(k, tl.int64) * R + rows
            term = tl.load(ll_ptr + offs, mask=mask, other=0.0).to(DTYPE)
            if MODE == 0:
                lp = tl.load(lp_ptr + offs, mask=mask, other=0.0).to(DTYPE)
                lq = tl.load(lq_ptr + offs, mask=mask, other=0.0).to(DTYPE)
                term += beta * (lp - lq)
            acc += term
        value = acc / K
        if MODE == 1:
            value -= beta * tl.load(kl_ptr + rows, mask=mask, other=0.0).to(DTYPE)
        tl.store(out_ptr + rows, value, mask=mask)
