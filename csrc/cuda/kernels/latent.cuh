// The Gaussian latent and the analytic KL as CUDA kernels (torch-free): one pass forward, one
// pass backward (the README's "The math"); the same computations as triton_kernels/latent.py.
//
// Layout: mu, scale (and the prior, expanded to mu's shape) are read as R rows of D through
// row_offset (any strides, csrc/core/layout.h); z is written contiguous (K, R, D), log q, log p
// contiguous (K, R) and kl (R,) in the compute type T; gradients contiguous (R, D).
//
// Grid: a thread owns groups of 4 consecutive latent dims (d = 4g .. 4g + 3: exactly the four
// normals of Philox call g, so no call is computed twice), `lanes` = latent_lanes(D) threads (a
// power of 2 <= 32) share a row and loop over its groups (g = lane, lane + lanes, ...), and a block
// of kBlock threads holds kBlock / lanes rows. Sums over D are warp-shuffle butterflies within the
// row's lanes. Each thread loops over the K samples itself, so the backward pass sums the K
// samples' gradients in registers (no atomics) and regenerates eps from the seed (never stored).
// The gradient of a prior shared by every row is reduced in the block (shared memory, fixed
// order) to one partial row per block, which the binding sums: deterministic, no float atomics.
#pragma once

#include "common.cuh"
#include "rng.cuh"

namespace fastelbo {
namespace cuda {

// The posterior's parameters and the optional prior, as rows (shared by all latent kernels).
template <typename S>
struct LatentInputs {
  const S* mu;
  const S* scale;
  const S* prior_mu;     // null with prior_scale: the standard normal prior
  const S* prior_scale;
  RowShape shape;        // rows R, cols D
  RowStrides mu_st, sc_st, pm_st, ps_st;
  int param;             // core::Param
};

template <typename S, typename T>
struct LatentFwdParams {
  LatentInputs<S> in;
  const S* eps;          // explicit noise, contiguous (K, R, D); null: Philox from *seed
  const int64_t* seed;   // 0-dim int64 on the device (read by the kernel, never by the host); null
                         // with explicit noise (whose pointer is null too when D = 0: no element)
  S* z;                  // (K, R, D)
  T* log_q;              // (K, R)
  T* log_p;              // (K, R)
  T* kl;                 // (R,)
  int64_t n_samples;
  int64_t channels;      // 1, or C: the columns stored channels-last (latent_eps)
  double half_log_2pi_d; // D log(2 pi) / 2, a run-time scalar
};

template <typename S, typename T>
struct LatentBwdParams {
  LatentInputs<S> in;
  const S* eps;
  const int64_t* seed;
  const S* grad_z;       // (K, R, D) strided, or null (zero)
  int64_t gz_sk, gz_sr, gz_sd;
  const T* grad_log_q;   // (K, R) strided, or null
  int64_t gq_sk, gq_sr;
  const T* grad_log_p;   // (K, R) strided, or null
  int64_t gp_sk, gp_sr;
  const T* grad_kl;      // (R,) strided, or null
  int64_t gk_sr;
  S* grad_mu;            // (R, D)
  S* grad_scale;         // (R, D)
  T* grad_prior_mu;      // (R, D), or (blocks, D) partial sums when pm_shared; null without prior
  T* grad_prior_scale;   // likewise with ps_shared
  bool pm_shared, ps_shared;
  int64_t n_samples;
  int64_t channels;      // as LatentFwdParams'
  bool stl;
};

template <typename S, typename T>
struct KlFwdParams {
  LatentInputs<S> in;
  T* out;                // (R, D) with per_dim, else (R,)
  bool per_dim;
};

template <typename S, typename T>
struct KlBwdParams {
  LatentInputs<S> in;
  const T* grad;         // (R, D) strided with per_dim, else (R,) strided
  int64_t g_sr, g_sd;
  S* grad_mu;
  S* grad_scale;
  T* grad_prior_mu;
  T* grad_prior_scale;
  bool pm_shared, ps_shared;
  bool per_dim;
};

namespace detail {

// Offsets of column 0 of one row in each input.
struct LatentRowBase {
  int64_t mu, sc, pm, ps;
};

template <typename S>
__device__ __forceinline__ LatentRowBase latent_row_base(const LatentInputs<S>& in, int64_t row) {
  LatentRowBase b{core::row_offset(row, in.shape, in.mu_st), core::row_offset(row, in.shape, in.sc_st), 0, 0};
  if (in.prior_mu != nullptr) {
    b.pm = core::row_offset(row, in.shape, in.pm_st);
    b.ps = core::row_offset(row, in.shape, in.ps_st);
  }
  return b;
}

// The per-dim quantities of 4 consecutive dims. Without a prior, mu_p = 0, 1/sigma_p = 1,
// log sigma_p = 0: every formula below then reduces exactly (bit for bit) to its standard-normal
// form (delta = mu, u = z, r = log sigma).
template <typename T>
struct LatentElems {
  T mu[4], sigma[4], log_sigma[4], dlog[4], dsigma[4];
  T pmu[4], inv_psigma[4], plog_sigma[4], pdlog[4];
};

template <typename S, typename T>
__device__ __forceinline__ void load_latent(const LatentInputs<S>& in, const LatentRowBase& b, int64_t d0,
                                            LatentElems<T>& e) {
  const int64_t D = in.shape.cols;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int64_t d = d0 + j;
    const bool ok = d < D;
    const T mu = ok ? load<T>(in.mu, b.mu + d * in.mu_st.sc) : T(0);
    const T s = ok ? load<T>(in.scale, b.sc + d * in.sc_st.sc) : T(0);
    const core::SigmaTerms<T> st = core::sigma_terms<T>(s, in.param);
    e.mu[j] = mu;
    e.sigma[j] = st.sigma;
    e.log_sigma[j] = st.log_sigma;
    e.dlog[j] = st.dlog;
    e.dsigma[j] = st.dsigma;
    if (in.prior_mu != nullptr) {
      const T pmu = ok ? load<T>(in.prior_mu, b.pm + d * in.pm_st.sc) : T(0);
      const T ps = ok ? load<T>(in.prior_scale, b.ps + d * in.ps_st.sc) : T(0);
      const core::SigmaTerms<T> pst = core::sigma_terms<T>(ps, in.param);
      e.pmu[j] = pmu;
      e.inv_psigma[j] = T(1) / pst.sigma;
      e.plog_sigma[j] = pst.log_sigma;
      e.pdlog[j] = pst.dlog;
    } else {
      e.pmu[j] = T(0);
      e.inv_psigma[j] = T(1);
      e.plog_sigma[j] = T(0);
      e.pdlog[j] = T(0);
    }
  }
}

// KL_d = (e^(2r) - 1 - 2r)/2 + delta^2/2,  r = log sigma - log sigma_p,  delta = (mu - mu_p)/sigma_p
template <typename T>
__device__ __forceinline__ T kl_term(const LatentElems<T>& e, int j) {
  const T delta = (e.mu[j] - e.pmu[j]) * e.inv_psigma[j];
  return T(0.5) * core::expm1_minus_x<T>(T(2) * (e.log_sigma[j] - e.plog_sigma[j])) + T(0.5) * delta * delta;
}

// eps of dims d0 .. d0 + 3 of (sample k, row): the explicit contiguous (K, R, D) tensor, or Philox.
// With `channels` = C > 1 the columns are stored channels-last (csrc/binding/event_dims.h):
// column s C + c holds logical element d = c S + s, whose noise is lane d mod 4 of call d div 4,
// one Philox call per column (four times the calls of the logical order).
template <typename S, typename T>
__device__ __forceinline__ void latent_eps(const S* eps, core::PhiloxKey key, int64_t k, int64_t row, int64_t d0,
                                           int64_t R, int64_t D, int64_t channels, T out[4]) {
  if (eps != nullptr) {
    const int64_t base = (k * R + row) * D;
#pragma unroll
    for (int j = 0; j < 4; ++j) out[j] = d0 + j < D ? load<T>(eps, base + d0 + j) : T(0);
  } else if (channels > 1) {
    const int64_t spatial = D / channels;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t col = d0 + j < D ? d0 + j : D - 1;
      const int64_t d = (col % channels) * spatial + col / channels;
      T lanes[4];
      philox_normals<T>(key, d / 4, row, k, lanes);
      const int lane = static_cast<int>(d & 3);
      out[j] = lane == 0 ? lanes[0] : lane == 1 ? lanes[1] : lane == 2 ? lanes[2] : lanes[3];
    }
  } else {
    philox_normals<T>(key, d0 / 4, row, k, out);
  }
}

// A prior gradient of 4 dims per thread, summed over the block's rows (a shared prior): the
// rows' values meet in smem (kBlock * 4 T) and thread c < 4 lanes adds column c in row order,
// writing the block's partial sum to out[blockIdx.x * D + d]. Every thread must call it.
template <typename T>
__device__ __forceinline__ void block_column_partial(const T v[4], bool valid, int64_t chunk, int lanes, int64_t D,
                                                     T* smem, T* out) {
  const int width = 4 * lanes;
  const int rows_per_block = kBlock / lanes;
  const int row_in_block = threadIdx.x / lanes;
  const int lane = threadIdx.x & (lanes - 1);
  const int64_t d0 = 4 * (chunk * lanes + lane);
  __syncthreads();  // a previous call may still be reading smem
#pragma unroll
  for (int j = 0; j < 4; ++j) smem[row_in_block * width + 4 * lane + j] = (valid && d0 + j < D) ? v[j] : T(0);
  __syncthreads();
  if (threadIdx.x < width) {
    const int64_t d = 4 * chunk * lanes + threadIdx.x;
    if (d < D) {
      T sum = smem[threadIdx.x];
      for (int i = 1; i < rows_per_block; ++i) sum += smem[i * width + threadIdx.x];
      out[static_cast<int64_t>(blockIdx.x) * D + d] = sum;
    }
  }
}

// Store a prior gradient: per element (R, D), or the block's partial sum when shared.
template <typename T>
__device__ __forceinline__ void store_prior_grad(T* out, const T v[4], bool valid, bool shared, int64_t row,
                                                 int64_t chunk, int lanes, int64_t d0, int64_t D, T* smem) {
  if (shared) {
    block_column_partial(v, valid, chunk, lanes, D, smem, out);
  } else if (valid) {
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (d0 + j < D) out[row * D + d0 + j] = v[j];
  }
}

}  // namespace detail

// Forward, with sigma, log sigma from `scale` by param and eps from Philox (or the eps tensor):
//     z     = mu + sigma eps
//     log q = sum_d [-eps^2/2 - log sigma] - D log(2 pi)/2
//     log p = sum_d [-u^2/2 - log sigma_p] - D log(2 pi)/2,   u = (z - mu_p) / sigma_p
//     kl    = sum_d [ (e^(2r) - 1 - 2r)/2 + delta^2/2 ],  r = log sigma - log sigma_p,
//             delta = (mu - mu_p) / sigma_p      (standard prior: mu_p = 0, sigma_p = 1)
// Grid: latent_blocks(R, D) blocks of kBlock threads; K >= 1.
template <typename S, typename T>
__global__ void __launch_bounds__(kBlock) gaussian_latent_forward_kernel(const LatentFwdParams<S, T> p) {
  const int64_t R = p.in.shape.rows, D = p.in.shape.cols;
  const int lanes = latent_lanes(D);
  const int lane = threadIdx.x & (lanes - 1);
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kBlock / lanes) + threadIdx.x / lanes;
  const bool active = row < R;
  const int64_t iters = ceil_div(ceil_div(D, 4), lanes);
  const detail::LatentRowBase base = active ? detail::latent_row_base(p.in, row) : detail::LatentRowBase{0, 0, 0, 0};

  const core::PhiloxKey key = p.seed != nullptr ? core::seed_key(*p.seed) : core::PhiloxKey{0u, 0u};
  const T half_log_2pi_d = static_cast<T>(p.half_log_2pi_d);
  for (int64_t k = 0; k < p.n_samples; ++k) {  // the launcher guarantees K >= 1
    T log_q = T(0), log_p = T(0), kl = T(0);    // kl: with the first sample's pass
    const int64_t out_row = k * R + row;
    for (int64_t it = 0; it < iters; ++it) {
      const int64_t d0 = 4 * (it * lanes + lane);
      if (!active || d0 >= D) continue;
      detail::LatentElems<T> e;  // re-read per sample: L1/L2 hits, the Box-Muller math dominates
      detail::load_latent(p.in, base, d0, e);
      T eps[4];
      detail::latent_eps(p.eps, key, k, row, d0, R, D, p.channels, eps);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (d0 + j >= D) continue;
        const T z = e.mu[j] + e.sigma[j] * eps[j];
        store(p.z, out_row * D + d0 + j, z);
        log_q += T(-0.5) * eps[j] * eps[j] - e.log_sigma[j];
        const T u = (z - e.pmu[j]) * e.inv_psigma[j];
        log_p += T(-0.5) * u * u - e.plog_sigma[j];
        if (k == 0) kl += detail::kl_term(e, j);
      }
    }
    if (k == 0) {  // uniform over the block
      kl = group_sum(kl, lanes);
      if (active && lane == 0) p.kl[row] = kl;
    }
    log_q = group_sum(log_q, lanes);
    log_p = group_sum(log_p, lanes);
    if (active && lane == 0) {
      p.log_q[out_row] = log_q - half_log_2pi_d;
      p.log_p[out_row] = log_p - half_log_2pi_d;
    }
  }
}

// Backward, given gz = dL/dz, gq = dL/dlog q, gp = dL/dlog p, gk = dL/dkl (absent ones zero):
//     g_k     = gz_k - gp_k u_k / sigma_p  [ - gq_k eps_k / sigma  with stl ]     (dL/dz_k in total)
//     dL/dmu  = sum_k g_k + gk delta / sigma_p
//     dL/dlog sigma = sigma sum_k g_k eps_k  [ - sum_k gq_k  without stl ] + gk expm1(2r)
//     dL/dmu_p      = sum_k gp_k u_k / sigma_p - gk delta / sigma_p
//     dL/dlog sigma_p = sum_k gp_k (u_k^2 - 1) - gk (expm1(2r) + delta^2)
// and dL/ds = dsigma/ds sum_k g_k eps_k + dlog sigma/ds [gk expm1(2r) - sum_k gq_k] (dL/dlog sigma
// * dlog sigma/ds taken apart: softplus' sigma = inf passes z's gradient on, as autograd does), dL/ds_p
// = dL/dlog sigma_p * d log sigma_p / ds_p. eps is regenerated from the seed. Grid: latent_blocks(R, D) blocks of kBlock threads.
template <typename S, typename T>
__global__ void __launch_bounds__(kBlock) gaussian_latent_backward_kernel(const LatentBwdParams<S, T> p) {
  __shared__ T smem[4 * kBlock];
  const int64_t R = p.in.shape.rows, D = p.in.shape.cols;
  const int lanes = latent_lanes(D);
  const int lane = threadIdx.x & (lanes - 1);
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kBlock / lanes) + threadIdx.x / lanes;
  const bool active = row < R;
  const bool has_prior = p.in.prior_mu != nullptr;
  const int64_t iters = ceil_div(ceil_div(D, 4), lanes);
  const detail::LatentRowBase base = active ? detail::latent_row_base(p.in, row) : detail::LatentRowBase{0, 0, 0, 0};
  const core::PhiloxKey key = p.seed != nullptr ? core::seed_key(*p.seed) : core::PhiloxKey{0u, 0u};

  T sum_gq = T(0);  // sum_k gq_k (without stl)
  if (active && p.grad_log_q != nullptr && !p.stl)
    for (int64_t k = 0; k < p.n_samples; ++k) sum_gq += p.grad_log_q[k * p.gq_sk + row * p.gq_sr];
  const T gk = (active && p.grad_kl != nullptr) ? p.grad_kl[row * p.gk_sr] : T(0);

  for (int64_t it = 0; it < iters; ++it) {
    const int64_t d0 = 4 * (it * lanes + lane);
    const bool valid = active && d0 < D;
    T pm_grad[4] = {T(0), T(0), T(0), T(0)}, ps_grad[4] = {T(0), T(0), T(0), T(0)};
    if (valid) {
      detail::LatentElems<T> e;
      detail::load_latent(p.in, base, d0, e);
      T acc_z[4] = {T(0), T(0), T(0), T(0)};     // sum_k g_k
      T acc_z_eps[4] = {T(0), T(0), T(0), T(0)}; // sum_k g_k eps_k
      T acc_pmu[4] = {T(0), T(0), T(0), T(0)};   // sum_k gp_k u_k
      T acc_plog[4] = {T(0), T(0), T(0), T(0)};  // sum_k gp_k (u_k^2 - 1)
      for (int64_t k = 0; k < p.n_samples; ++k) {
        T eps[4];
        detail::latent_eps(p.eps, key, k, row, d0, R, D, p.channels, eps);
        const T gp = p.grad_log_p != nullptr ? p.grad_log_p[k * p.gp_sk + row * p.gp_sr] : T(0);
        const T gq = (p.grad_log_q != nullptr && p.stl) ? p.grad_log_q[k * p.gq_sk + row * p.gq_sr] : T(0);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t d = d0 + j;
          if (d >= D) continue;
          T g = p.grad_z != nullptr ? load<T>(p.grad_z, k * p.gz_sk + row * p.gz_sr + d * p.gz_sd) : T(0);
          if (p.grad_log_p != nullptr) {
            const T z = e.mu[j] + e.sigma[j] * eps[j];
            const T u = (z - e.pmu[j]) * e.inv_psigma[j];
            g -= gp * u * e.inv_psigma[j];
            acc_pmu[j] += gp * u;
            acc_plog[j] += gp * (u * u - T(1));
          }
          if (p.grad_log_q != nullptr && p.stl) g -= gq * eps[j] / e.sigma[j];
          acc_z[j] += g;
          acc_z_eps[j] += g * eps[j];
        }
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t d = d0 + j;
        if (d >= D) continue;
        T grad_mu = acc_z[j];
        T grad_log_sigma = -sum_gq;  // but for the path through z: d sigma/ds sum_k g_k eps_k
        if (p.grad_kl != nullptr) {
          const T delta = (e.mu[j] - e.pmu[j]) * e.inv_psigma[j];
          const T em = core::Ops<T>::expm1(T(2) * (e.log_sigma[j] - e.plog_sigma[j]));
          acc_pmu[j] -= gk * delta;
          acc_plog[j] -= gk * (em + delta * delta);
          grad_mu += gk * delta * e.inv_psigma[j];
          grad_log_sigma += gk * em;
        }
        store(p.grad_mu, row * D + d, grad_mu);
        store(p.grad_scale, row * D + d, e.dsigma[j] * acc_z_eps[j] + grad_log_sigma * e.dlog[j]);
        pm_grad[j] = acc_pmu[j] * e.inv_psigma[j];
        ps_grad[j] = acc_plog[j] * e.pdlog[j];
      }
    }
    if (has_prior) {  // uniform over the block: the shared-prior reduction's barriers are safe
      detail::store_prior_grad(p.grad_prior_mu, pm_grad, valid, p.pm_shared, row, it, lanes, d0, D, smem);
      detail::store_prior_grad(p.grad_prior_scale, ps_grad, valid, p.ps_shared, row, it, lanes, d0, D, smem);
    }
  }
}

// Analytic KL(N(mu, sigma^2) || prior) per dim ((R, D) out) or summed over D ((R,) out):
// KL_d = (e^(2r) - 1 - 2r)/2 + delta^2/2 as in gaussian_latent_forward_kernel. Grid as gaussian_latent_forward_kernel.
template <typename S, typename T>
__global__ void __launch_bounds__(kBlock) gaussian_kl_forward_kernel(const KlFwdParams<S, T> p) {
  const int64_t R = p.in.shape.rows, D = p.in.shape.cols;
  const int lanes = latent_lanes(D);
  const int lane = threadIdx.x & (lanes - 1);
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kBlock / lanes) + threadIdx.x / lanes;
  const bool active = row < R;
  const int64_t iters = ceil_div(ceil_div(D, 4), lanes);
  const detail::LatentRowBase base = active ? detail::latent_row_base(p.in, row) : detail::LatentRowBase{0, 0, 0, 0};
  T kl = T(0);
  for (int64_t it = 0; it < iters; ++it) {
    const int64_t d0 = 4 * (it * lanes + lane);
    if (!active || d0 >= D) continue;
    detail::LatentElems<T> e;
    detail::load_latent(p.in, base, d0, e);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (d0 + j >= D) continue;
      const T term = detail::kl_term(e, j);
      if (p.per_dim) p.out[row * D + d0 + j] = term;
      kl += term;
    }
  }
  if (!p.per_dim) {
    kl = group_sum(kl, lanes);
    if (active && lane == 0) p.out[row] = kl;
  }
}

// Gradients of the analytic KL for the incoming g ((R, D) with per_dim, else (R,)):
// dKL_d/dmu = delta/sigma_p, dKL_d/dlog sigma = expm1(2r), dKL_d/dmu_p = -delta/sigma_p,
// dKL_d/dlog sigma_p = -(expm1(2r) + delta^2). Grid as gaussian_latent_forward_kernel.
template <typename S, typename T>
__global__ void __launch_bounds__(kBlock) gaussian_kl_backward_kernel(const KlBwdParams<S, T> p) {
  __shared__ T smem[4 * kBlock];
  const int64_t R = p.in.shape.rows, D = p.in.shape.cols;
  const int lanes = latent_lanes(D);
  const int lane = threadIdx.x & (lanes - 1);
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kBlock / lanes) + threadIdx.x / lanes;
  const bool active = row < R;
  const bool has_prior = p.in.prior_mu != nullptr;
  const int64_t iters = ceil_div(ceil_div(D, 4), lanes);
  const detail::LatentRowBase base = active ? detail::latent_row_base(p.in, row) : detail::LatentRowBase{0, 0, 0, 0};
  const T g_row = (active && !p.per_dim) ? p.grad[row * p.g_sr] : T(0);
  for (int64_t it = 0; it < iters; ++it) {
    const int64_t d0 = 4 * (it * lanes + lane);
    const bool valid = active && d0 < D;
    T pm_grad[4] = {T(0), T(0), T(0), T(0)}, ps_grad[4] = {T(0), T(0), T(0), T(0)};
    if (valid) {
      detail::LatentElems<T> e;
      detail::load_latent(p.in, base, d0, e);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t d = d0 + j;
        if (d >= D) continue;
        const T g = p.per_dim ? p.grad[row * p.g_sr + d * p.g_sd] : g_row;
        const T delta = (e.mu[j] - e.pmu[j]) * e.inv_psigma[j];
        const T em = core::Ops<T>::expm1(T(2) * (e.log_sigma[j] - e.plog_sigma[j]));
        const T grad_mu = g * delta * e.inv_psigma[j];
        store(p.grad_mu, row * D + d, grad_mu);
        store(p.grad_scale, row * D + d, g * em * e.dlog[j]);
        pm_grad[j] = -grad_mu;
        ps_grad[j] = -g * (em + delta * delta) * e.pdlog[j];
      }
    }
    if (has_prior) {
      detail::store_prior_grad(p.grad_prior_mu, pm_grad, valid, p.pm_shared, row, it, lanes, d0, D, smem);
      detail::store_prior_grad(p.grad_prior_scale, ps_grad, valid, p.ps_shared, row, it, lanes, d0, D, smem);
    }
  }
}

}  // namespace cuda
}  // namespace fastelbo
