"""Fused Gaussian-latent kernels: one pass forward, one pass backward (the README's "The math" and "The Triton backend").

Layout: mu, scale (and eps, prior) are read as R rows of D through row_offset (any strides);
z is written contiguous (K, R, D); log q, log p are (K, R) and kl is (R,), in the compute dtype.
One program owns BLOCK_R rows and all D columns, and loops over the K samples, so backward sums
the K samples' gradients in registers (no atomics) and eps is regenerated, never stored.
CHANNELS_LAST: the rows hold a channels-last event in storage order (column s C + c is logical
element c S + s, C = channels), and each column draws its logical element's noise.

Forward, with sigma, log sigma from `scale` by PARAM and eps from Philox (or the eps tensor):
    z       = mu + sigma eps
    log q   = sum_d [-eps^2/2 - log sigma] - D log(2 pi)/2
    log p   = sum_d [-u^2/2 - log sigma_p] - D log(2 pi)/2,   u = (z - mu_p) / sigma_p
    kl      = sum_d [ (e^(2r) - 1 - 2r)/2 + delta^2/2 ],  r = log sigma - log sigma_p,
              delta = (mu - mu_p) / sigma_p      (standard prior: mu_p = 0, sigma_p = 1)
Backward, given gz = dL/dz, gq = dL/dlog q, gp = dL/dlog p, gk = dL/dkl:
    g_k     = gz_k - gp_k u_k / sigma_p  [ - gq_k eps_k / sigma  with stl ]     (dL/dz_k in total)
    dL/dmu  = sum_k g_k + gk delta / sigma_p
    dL/dlog sigma = sigma sum_k g_k eps_k  [ - sum_k gq_k  without stl ] + gk expm1(2r)
    dL/dmu_p      = sum_k gp_k u_k / sigma_p - gk delta / sigma_p
    dL/dlog sigma_p = sum_k gp_k (u_k^2 - 1) - gk (expm1(2r) + delta^2)
and dL/ds = dsigma/ds sum_k g_k eps_k + dlog sigma/ds [gk expm1(2r) - sum_k gq_k]: dL/dlog sigma *
dlog sigma/ds taken apart, so that softplus' sigma = inf passes z's gradient on as autograd does;
dL/ds_p = dL/dlog sigma_p * d log sigma_p / ds_p.
"""
import triton
import triton.language as tl

from .math import expm1, expm1_minus_x, round_to, row_offset, scalar, sigma_terms
from .rng import normal_lanes, seed_key


@triton.jit
def _noise(k0, k1, rows, sample, DTYPE: tl.constexpr, BLOCK_D: tl.constexpr):
    """eps of columns 0..BLOCK_D-1 of `rows` for sample `sample`, in DTYPE (docs/RNG.md): Philox
    call (d // 4) gives the four lanes of columns 4 g .. 4 g + 3, interleaved back in column order."""
    groups = tl.arange(0, BLOCK_D // 4)
    n0, n1, n2, n3 = normal_lanes(k0, k1, groups[None, :], rows[:, None], sample, DTYPE)
    return tl.interleave(tl.interleave(n0, n2), tl.interleave(n1, n3))


@triton.jit
def _noise_channels_last(k0, k1, rows, sample, D, channels, DTYPE: tl.constexpr, BLOCK_D: tl.constexpr):
    """eps of columns 0..BLOCK_D-1 of rows stored channels-last (csrc/binding/event_dims.h): column
    s C + c holds logical element d = c S + s (C = channels, S = D / C), lane d % 4 of Philox call
    d // 4: one call per column, four times the calls of _noise."""
    cols = tl.arange(0, BLOCK_D)
    d = (cols % channels) * (D // channels) + cols // channels
    n0, n1, n2, n3 = normal_lanes(k0, k1, (d // 4)[None, :], rows[:, None], sample, DTYPE)
    lane = (d % 4)[None, :]
    return tl.where(lane == 0, n0, tl.where(lane == 1, n1, tl.where(lane == 2, n2, n3)))


@triton.jit
def _load_rows(ptr, rows, cols, mask, n1, n2, s0, s1, s2, sd, DTYPE: tl.constexpr):
    offs = row_offset(rows, n1, n2, s0, s1, s2)[:, None] + cols[None, :].to(tl.int64) * sd
    return tl.load(ptr + offs, mask=mask, other=0.0).to(DTYPE)


@triton.jit
def gaussian_latent_forward_kernel(
    mu_ptr, scale_ptr, pmu_ptr, pscale_ptr, eps_ptr, seed_ptr,
    z_ptr, log_q_ptr, log_p_ptr, kl_ptr,
    R, D, K, n1, n2,
    mu_s0, mu_s1, mu_s2, mu_sd, sc_s0, sc_s1, sc_s2, sc_sd,
    pm_s0, pm_s1, pm_s2, pm_sd, ps_s0, ps_s1, ps_s2, ps_sd,
    eps_sk, eps_s0, eps_s1, eps_s2, eps_sd,
    const_hi, const_lo, channels,
    PARAM: tl.constexpr, HAS_PRIOR: tl.constexpr, HAS_EPS: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    DTYPE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """z, log q, log p for K samples and the analytic KL of BLOCK_R rows (formulas above).
    const_hi + const_lo = D log(2 pi) / 2."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    row_mask = rows < R
    mask = row_mask[:, None] & (cols[None, :] < D)
    mu = _load_rows(mu_ptr, rows, cols, mask, n1, n2, mu_s0, mu_s1, mu_s2, mu_sd, DTYPE)
    s = _load_rows(scale_ptr, rows, cols, mask, n1, n2, sc_s0, sc_s1, sc_s2, sc_sd, DTYPE)
    sigma, log_sigma, _, _ = sigma_terms(s, PARAM)
    if HAS_PRIOR:
        pmu = _load_rows(pmu_ptr, rows, cols, mask, n1, n2, pm_s0, pm_s1, pm_s2, pm_sd, DTYPE)
        ps = _load_rows(pscale_ptr, rows, cols, mask, n1, n2, ps_s0, ps_s1, ps_s2, ps_sd, DTYPE)
        psigma, plog_sigma, _, _ = sigma_terms(ps, PARAM)
        inv_psigma = 1.0 / psigma
        delta = (mu - pmu) * inv_psigma
        kl = 0.5 * expm1_minus_x(2.0 * (log_sigma - plog_sigma)) + 0.5 * delta * delta
    else:
        kl = 0.5 * expm1_minus_x(2.0 * log_sigma) + 0.5 * mu * mu
    tl.store(kl_ptr + rows, tl.sum(tl.where(mask, kl, 0.0), axis=1), mask=row_mask)

    half_log_2pi_d = scalar(const_hi, const_lo, DTYPE)
    if not HAS_EPS:
        k0, k1 = seed_key(seed_ptr)
    for k in range(K):
        k64 = tl.cast(k, tl.int64)
        if HAS_EPS:
            eps = _load_rows(eps_ptr + k64 * eps_sk, rows, cols, mask, n1, n2, eps_s0, eps_s1, eps_s2, eps_sd, DTYPE)
        elif CHANNELS_LAST:
            eps = _noise_channels_last(k0, k1, rows, k, D, channels, DTYPE, BLOCK_D)
        else:
            eps = _noise(k0, k1, rows, k, DTYPE, BLOCK_D)
        z = mu + sigma * eps
        out_rows = k64 * R + rows
        tl.store(z_ptr + out_rows[:, None] * D + cols[None, :], round_to(z, z_ptr.dtype.element_ty), mask=mask)
        log_q = tl.sum(tl.where(mask, -0.5 * eps * eps - log_sigma, 0.0), axis=1) - half_log_2pi_d
        if HAS_PRIOR:
            u = (z - pmu) * inv_psigma
            log_p_terms = -0.5 * u * u - plog_sigma
        else:
            log_p_terms = -0.5 * z * z
        log_p = tl.sum(tl.where(mask, log_p_terms, 0.0), axis=1) - half_log_2pi_d
        tl.store(log_q_ptr + out_rows, log_q, mask=row_mask)
        tl.store(log_p_ptr + out_rows, log_p, mask=row_mask)


@triton.jit
def _store_prior_grad(ptr, grad, rows, cols, mask, D, SHARED: tl.constexpr):
    """Per-row prior gradients, or (SHARED: the prior is the same for every row) this program's
    sum over its rows, to be summed over programs by the launcher."""
    if SHARED:
        partial = tl.sum(tl.where(mask, grad, 0.0), axis=0)
        tl.store(ptr + tl.program_id(0).to(tl.int64) * D + cols, partial, mask=cols < D)
    else:
        tl.store(ptr + rows[:, None] * D + cols[None, :], grad, mask=mask)


@triton.jit
def gaussian_latent_backward_kernel(
    mu_ptr, scale_ptr, pmu_ptr, pscale_ptr, eps_ptr, seed_ptr,
    gz_ptr, gq_ptr, gp_ptr, gk_ptr,
    gmu_ptr, gscale_ptr, gpmu_ptr, gpscale_ptr,
    R, D, K, n1, n2,
    mu_s0, mu_s1, mu_s2, mu_sd, sc_s0, sc_s1, sc_s2, sc_sd,
    pm_s0, pm_s1, pm_s2, pm_sd, ps_s0, ps_s1, ps_s2, ps_sd,
    eps_sk, eps_s0, eps_s1, eps_s2, eps_sd,
    gz_sk, gz_sr, gz_sd, gq_sk, gq_sr, gp_sk, gp_sr, gk_sr, channels,
    PARAM: tl.constexpr, HAS_PRIOR: tl.constexpr, HAS_EPS: tl.constexpr, STL: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    HAS_GZ: tl.constexpr, HAS_GQ: tl.constexpr, HAS_GP: tl.constexpr, HAS_GK: tl.constexpr,
    PM_SHARED: tl.constexpr, PS_SHARED: tl.constexpr, DTYPE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dL/dmu, dL/dscale (contiguous (R, D)) and the prior's gradients (formulas above); the
    incoming gradients gz (K, R, D), gq, gp (K, R), gk (R,) are strided, and absent ones are zero."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    cols64 = cols.to(tl.int64)
    row_mask = rows < R
    mask = row_mask[:, None] & (cols[None, :] < D)
    mu = _load_rows(mu_ptr, rows, cols, mask, n1, n2, mu_s0, mu_s1, mu_s2, mu_sd, DTYPE)
    s = _load_rows(scale_ptr, rows, cols, mask, n1, n2, sc_s0, sc_s1, sc_s2, sc_sd, DTYPE)
    sigma, log_sigma, dlog_sigma, dsigma = sigma_terms(s, PARAM)
    if HAS_PRIOR:
        pmu = _load_rows(pmu_ptr, rows, cols, mask, n1, n2, pm_s0, pm_s1, pm_s2, pm_sd, DTYPE)
        ps = _load_rows(pscale_ptr, rows, cols, mask, n1, n2, ps_s0, ps_s1, ps_s2, ps_sd, DTYPE)
        psigma, plog_sigma, pdlog_sigma, _ = sigma_terms(ps, PARAM)
        inv_psigma = 1.0 / psigma
    if not HAS_EPS:
        k0, k1 = seed_key(seed_ptr)

    zero = tl.zeros((BLOCK_R, BLOCK_D), dtype=DTYPE)
    acc_z = zero          # sum_k g_k
    acc_z_eps = zero      # sum_k g_k eps_k
    acc_q = tl.zeros((BLOCK_R,), dtype=DTYPE)  # sum_k gq_k
    acc_pmu = zero        # sum_k gp_k u_k
    acc_plog = zero       # sum_k gp_k (u_k^2 - 1)
    for k in range(K):
        k64 = tl.cast(k, tl.int64)
        if HAS_EPS:
            eps = _load_rows(eps_ptr + k64 * eps_sk, rows, cols, mask, n1, n2, eps_s0, eps_s1, eps_s2, eps_sd, DTYPE)
        elif CHANNELS_LAST:
            eps = _noise_channels_last(k0, k1, rows, k, D, channels, DTYPE, BLOCK_D)
        else:
            eps = _noise(k0, k1, rows, k, DTYPE, BLOCK_D)
        g = zero
        if HAS_GZ:
            gz_offs = k64 * gz_sk + rows[:, None] * gz_sr + cols64[None, :] * gz_sd
            g = tl.load(gz_ptr + gz_offs, mask=mask, other=0.0).to(DTYPE)
        if HAS_GP:
            gp = tl.load(gp_ptr + k64 * gp_sk + rows * gp_sr, mask=row_mask, other=0.0).to(DTYPE)
            z = mu + sigma * eps
            if HAS_PRIOR:
                u = (z - pmu) * inv_psigma
                g = g - gp[:, None] * u * inv_psigma
                acc_pmu += gp[:, None] * u
                acc_plog += gp[:, None] * (u * u - 1.0)
            else:
                g = g - gp[:, None] * z
        if HAS_GQ:
            gq = tl.load(gq_ptr + k64 * gq_sk + rows * gq_sr, mask=row_mask, other=0.0).to(DTYPE)
            if STL:
                g = g - gq[:, None] * eps / sigma
            else:
                acc_q += gq
        acc_z += g
        acc_z_eps += g * eps

    grad_mu = acc_z
    grad_log_sigma = zero - acc_q[:, None]  # but for the path through z: dsigma/ds sum_k g_k eps_k
    if HAS_GK:
        gk = tl.load(gk_ptr + rows * gk_sr, mask=row_mask, other=0.0).to(DTYPE)[:, None]
        if HAS_PRIOR:
            delta = (mu - pmu) * inv_psigma
            em = expm1(2.0 * (log_sigma - plog_sigma))
            acc_pmu -= gk * delta
            acc_plog -= gk * (em + delta * delta)
            grad_mu += gk * delta * inv_psigma
        else:
            em = expm1(2.0 * log_sigma)
            grad_mu += gk * mu
        grad_log_sigma += gk * em
    out_offs = rows[:, None] * D + cols[None, :]
    tl.store(gmu_ptr + out_offs, round_to(grad_mu, gmu_ptr.dtype.element_ty), mask=mask)
    grad_scale = dsigma * acc_z_eps + grad_log_sigma * dlog_sigma
    tl.store(gscale_ptr + out_offs, round_to(grad_scale, gscale_ptr.dtype.element_ty), mask=mask)
    if HAS_PRIOR:
        _store_prior_grad(gpmu_ptr, acc_pmu * inv_psigma, rows, cols, mask, D, PM_SHARED)
        _store_prior_grad(gpscale_ptr, acc_plog * pdlog_sigma, rows, cols, mask, D, PS_SHARED)


@triton.jit
def gaussian_kl_forward_kernel(
    mu_ptr, scale_ptr, pmu_ptr, pscale_ptr, out_ptr,
    R, D, n1, n2,
    mu_s0, mu_s1, mu_s2, mu_sd, sc_s0, sc_s1, sc_s2, sc_sd,
    pm_s0, pm_s1, pm_s2, pm_sd, ps_s0, ps_s1, ps_s2, ps_sd,
    PARAM: tl.constexpr, HAS_PRIOR: tl.constexpr, PER_DIM: tl.constexpr, DTYPE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Analytic KL(N(mu, sigma^2) || prior) per dim ((R, D) out) or summed over D ((R,) out):
    KL_d = (e^(2r) - 1 - 2r)/2 + delta^2/2 as in gaussian_latent_forward_kernel."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    row_mask = rows < R
    mask = row_mask[:, None] & (cols[None, :] < D)
    mu = _load_rows(mu_ptr, rows, cols, mask, n1, n2, mu_s0, mu_s1, mu_s2, mu_sd, DTYPE)
    s = _load_rows(scale_ptr, rows, cols, mask, n1, n2, sc_s0, sc_s1, sc_s2, sc_sd, DTYPE)
    _, log_sigma, _, _ = sigma_terms(s, PARAM)
    if HAS_PRIOR:
        pmu = _load_rows(pmu_ptr, rows, cols, mask, n1, n2, pm_s0, pm_s1, pm_s2, pm_sd, DTYPE)
        ps = _load_rows(pscale_ptr, rows, cols, mask, n1, n2, ps_s0, ps_s1, ps_s2, ps_sd, DTYPE)
        psigma, plog_sigma, _, _ = sigma_terms(ps, PARAM)
        delta = (mu - pmu) / psigma
        kl = 0.5 * expm1_minus_x(2.0 * (log_sigma - plog_sigma)) + 0.5 * delta * delta
    else:
        kl = 0.5 * expm1_minus_x(2.0 * log_sigma) + 0.5 * mu * mu
    if PER_DIM:
        tl.store(out_ptr + rows[:, None] * D + cols[None, :], kl, mask=mask)
    else:
        tl.store(out_ptr + rows, tl.sum(tl.where(mask, kl, 0.0), axis=1), mask=row_mask)


@triton.jit
def gaussian_kl_backward_kernel(
    mu_ptr, scale_ptr, pmu_ptr, pscale_ptr, g_ptr,
    gmu_ptr, gscale_ptr, gpmu_ptr, gpscale_ptr,
    R, D, n1, n2,
    mu_s0, mu_s1, mu_s2, mu_sd, sc_s0, sc_s1, sc_s2, sc_sd,
    pm_s0, pm_s1, pm_s2, pm_sd, ps_s0, ps_s1, ps_s2, ps_sd,
    g_sr, g_sd,
    PARAM: tl.constexpr, HAS_PRIOR: tl.constexpr, PER_DIM: tl.constexpr,
    PM_SHARED: tl.constexpr, PS_SHARED: tl.constexpr, DTYPE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Gradients of the analytic KL for incoming g ((R, D) with PER_DIM, else (R,)):
    dKL_d/dmu = delta/sigma_p, dKL_d/dlog sigma = expm1(2r), dKL_d/dmu_p = -delta/sigma_p,
    dKL_d/dlog sigma_p = -(expm1(2r) + delta^2)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    row_mask = rows < R
    mask = row_mask[:, None] & (cols[None, :] < D)
    mu = _load_rows(mu_ptr, rows, cols, mask, n1, n2, mu_s0, mu_s1, mu_s2, mu_sd, DTYPE)
    s = _load_rows(scale_ptr, rows, cols, mask, n1, n2, sc_s0, sc_s1, sc_s2, sc_sd, DTYPE)
    _, log_sigma, dlog_sigma, _ = sigma_terms(s, PARAM)
    if PER_DIM:
        g = tl.load(g_ptr + rows[:, None] * g_sr + cols[None, :].to(tl.int64) * g_sd, mask=mask, other=0.0).to(DTYPE)
    else:
        g = tl.load(g_ptr + rows * g_sr, mask=row_mask, other=0.0).to(DTYPE)[:, None]
    if HAS_PRIOR:
        pmu = _load_rows(pmu_ptr, rows, cols, mask, n1, n2, pm_s0, pm_s1, pm_s2, pm_sd, DTYPE)
        ps = _load_rows(pscale_ptr, rows, cols, mask, n1, n2, ps_s0, ps_s1, ps_s2, ps_sd, DTYPE)
        psigma, plog_sigma, pdlog_sigma, _ = sigma_terms(ps, PARAM)
        inv_psigma = 1.0 / psigma
        delta = (mu - pmu) * inv_psigma
        em = expm1(2.0 * (log_sigma - plog_sigma))
        grad_mu = g * delta * inv_psigma
    else:
        em = expm1(2.0 * log_sigma)
        grad_mu = g * mu
    out_offs = rows[:, None] * D + cols[None, :]
    tl.store(gmu_ptr + out_offs, round_to(grad_mu, gmu_ptr.dtype.element_ty), mask=mask)
    tl.store(gscale_ptr + out_offs, round_to(g * em * dlog_sigma, gscale_ptr.dtype.element_ty), mask=mask)
    if HAS_PRIOR:
        _store_prior_grad(gpmu_ptr, -grad_mu, rows, cols, mask, D, PM_SHARED)
        _store_prior_grad(gpscale_ptr, -g * (em + delta * delta) * pdlog_sigma, rows, cols, mask, D, PS_SHARED)
