// The Gaussian latent's short-row path on the CPU. When mu and scale are contiguous (R, D) rows in
// float or double and the prior is N(0, I) or a per-sample prior of mu's shape, contiguous (the
// common cases: a fixed prior, and a hierarchical VAE's prior network), a block of rows is one
// flat array of rows x D elements: every vector is full whatever D is (at D = 8, two rows to an
// AVX-512 vector), the sigma terms, z and the per-element terms cost one vector op per W elements
// instead of one per row, and each row's sums are D scalar adds instead of a horizontal reduction
// per row and term. The math is latent.cpp's (its header comment), term for term:
//     forward:  z = mu + sigma eps,  log q = sum_d [-eps^2/2 - log sigma] - D log(2 pi)/2,
//               log p = sum_d [-u^2/2 - log sigma_p] - D log(2 pi)/2,  u = (z - mu_p) / sigma_p,
//               kl = sum_d [(e^(2r) - 1 - 2r)/2 + delta^2/2],  r = log sigma - log sigma_p,
//               delta = (mu - mu_p) / sigma_p      (N(0, I): mu_p = 0, sigma_p = 1)
//     backward: g_k = gz_k - gp_k u_k / sigma_p [- gq_k eps_k / sigma with stl]
//               dL/dmu = sum_k g_k + gk delta / sigma_p
//               dL/ds = dsigma/ds sum_k g_k eps_k + dlog sigma/ds [gk expm1(2r) - sum_k gq_k without stl]
//               dL/dmu_p = [sum_k gp_k u_k - gk delta] / sigma_p
//               dL/ds_p = [sum_k gp_k (u_k^2 - 1) - gk (expm1(2r) + delta^2)] dlog sigma_p/ds_p
// eps is drawn exactly as the per-row path draws it (NoiseBlock: the same values, bit for bit).
#pragma once

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include "common.h"
#include "latent_rows.h"
#include "noise.h"

namespace fastelbo {

// Rows are taken in fixed blocks of kFlatBlockRows, split across threads by whole blocks: where a
// block starts never depends on the thread count, so neither do the results. (When blocks
// followed the threads' ranges, a range's last block could end in a partial vector, and the
// compiler rounds a partial vector's arithmetic differently from a full one's: z was 1 ulp apart.)
constexpr int64_t kFlatBlockRows = 64;

inline int64_t flat_blocks(int64_t rows) { return (rows + kFlatBlockRows - 1) / kFlatBlockRows; }

// The blocks per task of a parallel loop over blocks: about grain_rows(elements_per_row)'s work.
inline int64_t block_grain(int64_t elements_per_row) {
  return std::max<int64_t>(1, grain_rows(elements_per_row) / kFlatBlockRows);
}

// The longest rows a per-sample prior takes this path for. Longer ones take the per-row tiled path
// (latent.cpp), whose working set stays in L1: at 512 x 128 and 16 x 4096 it was the faster one,
// at 1024 x 64 the two cost the same, and at 4096 x 2 the per-row path took 6x the time (fwd+bwd,
// float32, 2 threads).
constexpr int64_t kFlatPriorMaxDim = 64;

// Whether the rows take this path: contiguous float/double mu and scale, and no prior or a
// contiguous one of mu's shape on rows of at most kFlatPriorMaxDim (a prior broadcast over rows
// takes the per-row path, which computes its terms once per distinct prior row, unless the
// broadcast left it contiguous: one row, or a copy made by the event dims' flattening). The flat
// kernels write the prior's gradients per row: PosteriorGrads' per-row buffers, or its one block
// when there is one row (asserted by the callers).
template <typename scalar_t>
bool flat_rows(const LatentRows& rows) {
  if (!std::is_same_v<scalar_t, compute_t<scalar_t>>) return false;
  if (rows.has_prior && rows.dim > kFlatPriorMaxDim) return false;
  for (int i = 0; i < (rows.has_prior ? 4 : 2); ++i) {
    if (!rows.plan.tensors[i].is_contiguous()) return false;
  }
  return true;
}

// The flat path's inputs: mu, scale and the prior's (nullptr for N(0, I)), contiguous (R, D).
template <typename T>
struct FlatInputs {
  const T* mu;
  const T* scale;
  const T* prior_mu;
  const T* prior_scale;
};

// Block b of the flat rows: rows [r0, r0 + n_rows), their n elements, and the inputs there.
template <typename T>
struct FlatBlock {
  int64_t r0, n_rows, n;
  const T* mu;
  const T* scale;
  const T* prior_mu;     // nullptr for N(0, I)
  const T* prior_scale;  // nullptr for N(0, I)
  FlatBlock(const FlatInputs<T>& in, int64_t b, int64_t R, int64_t D)
      : r0(b * kFlatBlockRows),
        n_rows(std::min(kFlatBlockRows, R - r0)),
        n(n_rows * D),
        mu(in.mu + r0 * D),
        scale(in.scale + r0 * D),
        prior_mu(in.prior_mu ? in.prior_mu + r0 * D : nullptr),
        prior_scale(in.prior_scale ? in.prior_scale + r0 * D : nullptr) {}
};

// Rows of a compile-time width kDim shorter than a vector: row_sums and spread_rows below. The row
// loop runs over whole rows with kDim unrolled, so the compiler vectorizes it across rows (each
// row's kDim terms an interleaved group of loads or stores); each row's sum still adds its terms
// in order from 0, as the scalar loop does, bit for bit.
template <int64_t kDim, typename T>
inline void fixed_row_sums(const T* terms, int64_t n_rows, T offset, T* out) {
  for (int64_t i = 0; i < n_rows; ++i) {
    T acc = T(0);
#pragma GCC unroll 16
    for (int64_t d = 0; d < kDim; ++d) acc += terms[i * kDim + d];
    out[i] = acc + offset;
  }
}

template <int64_t kDim, typename T>
inline void fixed_spread_rows(const T* values, int64_t stride, int64_t n_rows, T* out) {
  for (int64_t i = 0; i < n_rows; ++i) {
    const T v = values[i * stride];
#pragma GCC unroll 16
    for (int64_t d = 0; d < kDim; ++d) out[i * kDim + d] = v;
  }
}

// fn(std::integral_constant<int64_t, D>) when dim is one of the widths kWidths; false for others.
template <int64_t... kWidths, typename Fn>
inline bool with_width(int64_t dim, Fn&& fn) {
  return ((dim == kWidths && (fn(std::integral_constant<int64_t, kWidths>{}), true)) || ...);
}

// The short widths that have a fixed-width loop.
template <typename Fn>
inline bool with_short_width(int64_t dim, Fn&& fn) {
  return with_width<1, 2, 4, 8>(dim, std::forward<Fn>(fn));
}

// out[i] = sum_d terms[i * D + d] + offset for each of n_rows rows: the fixed widths' loop for rows
// of 1, 2, 4 or 8, D scalar adds for other rows shorter than a vector, else vector adds along the
// row and one horizontal sum.
template <typename T>
inline void row_sums(const T* terms, int64_t n_rows, int64_t dim, T offset, T* out) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  if (dim < W &&
      with_short_width(dim, [&](auto width) { fixed_row_sums<decltype(width)::value>(terms, n_rows, offset, out); })) {
    return;
  }
  for (int64_t i = 0; i < n_rows; ++i) {
    const T* row = terms + i * dim;
    T acc = T(0);
    if (dim < W) {
      for (int64_t d = 0; d < dim; ++d) acc += row[d];
    } else {
      V vacc = V::loadu(row);
      int64_t d = W;
      for (; d + W <= dim; d += W) vacc += V::loadu(row + d);
      if (d < dim) vacc += V::loadu(row + d, dim - d);
      acc = hsum(vacc);
    }
    out[i] = acc + offset;
  }
}

// values[i * stride] repeated over row i's D elements: a per-row gradient as per-element vectors.
template <typename T>
inline void spread_rows(const T* values, int64_t stride, int64_t n_rows, int64_t dim, T* out) {
  if (with_short_width(dim,
                       [&](auto width) { fixed_spread_rows<decltype(width)::value>(values, stride, n_rows, out); }))
    return;
  for (int64_t i = 0; i < n_rows; ++i) std::fill(out + i * dim, out + (i + 1) * dim, values[i * stride]);
}

// Sample k's eps for rows [r0, r0 + n_rows), flat: the explicit tensor's rows, or drawn into buf.
template <typename T>
const T* flat_eps(const EpsSource<T>& source, NoiseBlock<T>& noise, T* buf, int64_t r0, int64_t n_rows, int64_t k) {
  if (source.eps != nullptr) return source.eps + (k * source.rows + r0) * source.dim;
  for (int64_t i = 0; i < n_rows; i += noise.max_rows) {
    const int64_t n = std::min(noise.max_rows, n_rows - i);
    noise.fill(buf + i * source.dim, source.dim, source.key, r0 + i, n, k);
  }
  return buf;
}

// body(j, count) over [0, n) in vectors of W (the last one partial).
template <int64_t W, typename Body>
inline void for_flat(int64_t n, Body&& body) {
  for (int64_t j = 0; j < n; j += W) body(j, std::min(W, n - j));
}

template <typename T>
void latent_forward_flat(const FlatInputs<T>& in, const EpsSource<T>& eps_source, int param, int64_t K, int64_t R,
                         int64_t D, T* z, T* log_q, T* log_p, T* kl) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const T half_log_2pi_d = static_cast<T>(static_cast<double>(D) * core::kHalfLog2Pi);
  static_flag(in.prior_mu != nullptr, [&](auto prior) {
  constexpr bool has_prior = decltype(prior)::value;
  at::parallel_for(0, flat_blocks(R), block_grain(D * (K + 2)), [&](int64_t b_begin, int64_t b_end) {
    const int64_t cap = std::min(kFlatBlockRows, R) * D, prior_cap = has_prior ? cap : 0;
    std::vector<T> sigma(cap), log_sigma(cap), terms_q(cap), terms_p(cap), eps_buf(cap), inv_psigma(prior_cap),
        plog_sigma(prior_cap);
    NoiseBlock<T> noise(D, eps_source.channels);
    for (int64_t b = b_begin; b < b_end; ++b) {
      const FlatBlock<T> block(in, b, R, D);
      const int64_t r0 = block.r0, n_rows = block.n_rows, n = block.n;
      const T *m = block.mu, *s = block.scale, *pm = block.prior_mu, *ps = block.prior_scale;
      for_flat<W>(n, [&](int64_t j, int64_t c) {
        const V mv = V::loadu(m + j, c);
        const auto t = core::sigma_terms<V>(V::loadu(s + j, c), param, false);
        t.sigma.store(sigma.data() + j, c);
        t.log_sigma.store(log_sigma.data() + j, c);
        if constexpr (has_prior) {
          const auto p = core::prior_terms<V>(V::loadu(ps + j, c), param, false);
          p.inv_sigma.store(inv_psigma.data() + j, c);
          p.log_sigma.store(plog_sigma.data() + j, c);
          kl_elem(t.log_sigma - p.log_sigma, (mv - V::loadu(pm + j, c)) * p.inv_sigma).store(terms_q.data() + j, c);
        } else {
          kl_elem(t.log_sigma, mv).store(terms_q.data() + j, c);
        }
      });
      row_sums(terms_q.data(), n_rows, D, T(0), kl + r0);
      for (int64_t k = 0; k < K; ++k) {
        const T* e = flat_eps(eps_source, noise, eps_buf.data(), r0, n_rows, k);
        T* zk = z + (k * R + r0) * D;
        for_flat<W>(n, [&](int64_t j, int64_t c) {
          const V ev = V::loadu(e + j, c);
          const V zv = V::loadu(m + j, c) + V::loadu(sigma.data() + j, c) * ev;
          zv.store(zk + j, c);
          (V(T(-0.5)) * ev * ev - V::loadu(log_sigma.data() + j, c)).store(terms_q.data() + j, c);
          if constexpr (has_prior) {
            const V u = (zv - V::loadu(pm + j, c)) * V::loadu(inv_psigma.data() + j, c);
            (V(T(-0.5)) * u * u - V::loadu(plog_sigma.data() + j, c)).store(terms_p.data() + j, c);
          } else {
            (V(T(-0.5)) * zv * zv).store(terms_p.data() + j, c);
          }
        });
        row_sums(terms_q.data(), n_rows, D, -half_log_2pi_d, log_q + k * R + r0);
        row_sums(terms_p.data(), n_rows, D, -half_log_2pi_d, log_p + k * R + r0);
      }
    }
  });
  });
}

// The incoming gradients of the flat path: gz contiguous (K, R, D), or one value per row read
// through its sample and row strides (gz_per_row: a gradient expanded along the row, as z.sum()'s
// or z.mean(-1)'s, read without a copy), or absent; the per-row ones (K, R) / (R,) through their
// strides.
template <typename T>
struct FlatGrads {
  const T* gz;
  bool gz_per_row;
  int64_t gz_sk, gz_sr;
  const T* gq;
  int64_t gq_sk, gq_sr;
  const T* gp;
  int64_t gp_sk, gp_sr;
  const T* gk;
  int64_t gk_sr;
};

// The flat path's gradients: mu's and scale's, and the prior's (nullptr without one), contiguous (R, D).
template <typename T>
struct FlatOutGrads {
  T* mu;
  T* scale;
  T* prior_mu;
  T* prior_scale;
};

// The flat kernels' inputs and gradient buffers from the per-row path's (flat_rows<T> holds: the
// inputs contiguous, a prior given per row, so its gradient buffers are per row, never shared).
template <typename T>
FlatInputs<T> flat_inputs(const RowInputs<T>& in) {
  return FlatInputs<T>{in.ptr[0], in.ptr[1], in.ptr[2], in.ptr[3]};
}

template <typename T>
FlatOutGrads<T> flat_out_grads(const PosteriorGrads& out, int64_t R) {
  TORCH_INTERNAL_ASSERT(R == 1 || !(out.pm_shared || out.ps_shared));  // per-row prior buffers
  return FlatOutGrads<T>{out.mu.data_ptr<T>(), out.scale.data_ptr<T>(),
                         out.has_prior ? out.prior_mu.data_ptr<T>() : nullptr,
                         out.has_prior ? out.prior_scale.data_ptr<T>() : nullptr};
}

template <typename T>
void latent_backward_flat(const FlatInputs<T>& in, const EpsSource<T>& eps_source, int param, int64_t K, int64_t R,
                          int64_t D, bool stl, const FlatGrads<T>& g, const FlatOutGrads<T>& out) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  static_flag(in.prior_mu != nullptr, [&](auto prior) {
  constexpr bool has_prior = decltype(prior)::value;
  at::parallel_for(0, flat_blocks(R), block_grain(D * (K + 2)), [&](int64_t b_begin, int64_t b_end) {
    const int64_t cap = std::min(kFlatBlockRows, R) * D, prior_cap = has_prior ? cap : 0;
    std::vector<T> sigma(cap), log_sigma(cap), dlog(cap), dsigma(cap), acc_g(cap), acc_ge(cap), eps_buf(cap),
        row_a(cap), row_b(cap), row_z(g.gz_per_row ? cap : 0), inv_psigma(prior_cap), plog_sigma(prior_cap),
        pdlog(prior_cap), acc_pmu(prior_cap), acc_plog(prior_cap);
    NoiseBlock<T> noise(D, eps_source.channels);
    const T zero(0);
    for (int64_t b = b_begin; b < b_end; ++b) {
      const FlatBlock<T> block(in, b, R, D);
      const int64_t r0 = block.r0, n_rows = block.n_rows, n = block.n;
      const T *m = block.mu, *s = block.scale, *pm = block.prior_mu, *ps = block.prior_scale;
      for_flat<W>(n, [&](int64_t j, int64_t c) {
        const auto t = core::sigma_terms<V>(V::loadu(s + j, c), param, true);
        t.sigma.store(sigma.data() + j, c);
        t.log_sigma.store(log_sigma.data() + j, c);
        t.dlog.store(dlog.data() + j, c);
        t.dsigma.store(dsigma.data() + j, c);
        if constexpr (has_prior) {
          const auto p = core::prior_terms<V>(V::loadu(ps + j, c), param, true);
          p.inv_sigma.store(inv_psigma.data() + j, c);
          p.log_sigma.store(plog_sigma.data() + j, c);
          p.dlog.store(pdlog.data() + j, c);
        }
      });
      std::fill(acc_g.begin(), acc_g.begin() + n, zero);
      std::fill(acc_ge.begin(), acc_ge.begin() + n, zero);
      if constexpr (has_prior) {
        std::fill(acc_pmu.begin(), acc_pmu.begin() + n, zero);
        std::fill(acc_plog.begin(), acc_plog.begin() + n, zero);
      }
      for (int64_t k = 0; k < K; ++k) {
        const T* e = flat_eps(eps_source, noise, eps_buf.data(), r0, n_rows, k);
        const T* gz_k = nullptr;
        if (g.gz_per_row) {
          spread_rows(g.gz + k * g.gz_sk + r0 * g.gz_sr, g.gz_sr, n_rows, D, row_z.data());
          gz_k = row_z.data();
        } else if (g.gz) {
          gz_k = g.gz + (k * R + r0) * D;
        }
        if (g.gp) spread_rows(g.gp + k * g.gp_sk + r0 * g.gp_sr, g.gp_sr, n_rows, D, row_a.data());
        const bool stl_q = stl && g.gq;
        if (stl_q) spread_rows(g.gq + k * g.gq_sk + r0 * g.gq_sr, g.gq_sr, n_rows, D, row_b.data());
        for_flat<W>(n, [&](int64_t j, int64_t c) {
          const V ev = V::loadu(e + j, c);
          const V sig = V::loadu(sigma.data() + j, c);
          V grad = gz_k ? V::loadu(gz_k + j, c) : V(zero);
          if (g.gp) {
            const V gp_v = V::loadu(row_a.data() + j, c);
            const V zv = V::loadu(m + j, c) + sig * ev;
            if constexpr (has_prior) {
              const V inv_ps = V::loadu(inv_psigma.data() + j, c);
              const V u = (zv - V::loadu(pm + j, c)) * inv_ps;
              grad = grad - gp_v * u * inv_ps;
              (V::loadu(acc_pmu.data() + j, c) + gp_v * u).store(acc_pmu.data() + j, c);
              (V::loadu(acc_plog.data() + j, c) + gp_v * (u * u - V(T(1)))).store(acc_plog.data() + j, c);
            } else {
              grad = grad - gp_v * zv;
            }
          }
          if (stl_q) grad = grad - V::loadu(row_b.data() + j, c) * ev / sig;
          (V::loadu(acc_g.data() + j, c) + grad).store(acc_g.data() + j, c);
          (V::loadu(acc_ge.data() + j, c) + grad * ev).store(acc_ge.data() + j, c);
        });
      }
      // Per row: sum_k gq_k (the log q gradient through log sigma, without stl) and gk.
      const bool sum_q = g.gq && !stl;
      if (sum_q) {
        for (int64_t i = 0; i < n_rows; ++i) {
          T acc = zero;
          for (int64_t k = 0; k < K; ++k) acc += g.gq[k * g.gq_sk + (r0 + i) * g.gq_sr];
          std::fill(row_a.data() + i * D, row_a.data() + (i + 1) * D, acc);
        }
      }
      if (g.gk) spread_rows(g.gk + r0 * g.gk_sr, g.gk_sr, n_rows, D, row_b.data());
      for_flat<W>(n, [&](int64_t j, int64_t c) {
        const V mv = V::loadu(m + j, c);
        V g_mu = V::loadu(acc_g.data() + j, c);
        V g_lsig(zero);  // dL/dlog sigma but for the path through z (see latent.cpp)
        if (sum_q) g_lsig = g_lsig - V::loadu(row_a.data() + j, c);
        if constexpr (has_prior) {
          const V inv_ps = V::loadu(inv_psigma.data() + j, c);
          V g_pmu = V::loadu(acc_pmu.data() + j, c), g_plog = V::loadu(acc_plog.data() + j, c);
          if (g.gk) {
            const V gkv = V::loadu(row_b.data() + j, c);
            const V delta = (mv - V::loadu(pm + j, c)) * inv_ps;
            const V em = vexpm1(V(T(2)) * (V::loadu(log_sigma.data() + j, c) - V::loadu(plog_sigma.data() + j, c)));
            g_pmu = g_pmu - gkv * delta;
            g_plog = g_plog - gkv * (em + delta * delta);
            g_mu = g_mu + gkv * delta * inv_ps;
            g_lsig = g_lsig + gkv * em;
          }
          (g_pmu * inv_ps).store(out.prior_mu + r0 * D + j, c);
          (g_plog * V::loadu(pdlog.data() + j, c)).store(out.prior_scale + r0 * D + j, c);
        } else if (g.gk) {
          const V gkv = V::loadu(row_b.data() + j, c);
          g_mu = g_mu + gkv * mv;
          g_lsig = g_lsig + gkv * vexpm1(V(T(2)) * V::loadu(log_sigma.data() + j, c));
        }
        g_mu.store(out.mu + r0 * D + j, c);
        const V through_z = V::loadu(dsigma.data() + j, c) * V::loadu(acc_ge.data() + j, c);
        (through_z + g_lsig * V::loadu(dlog.data() + j, c)).store(out.scale + r0 * D + j, c);
      });
    }
  });
  });
}

// The analytic KL alone (gaussian_kl) on the same flat rows:
//     KL_d = (e^(2r) - 1 - 2r)/2 + delta^2/2,  r = log sigma - log sigma_p,  delta = (mu - mu_p) / sigma_p,
//     per dim or summed over the row;  dKL_d/dmu = delta / sigma_p = -dKL_d/dmu_p,
//     dKL_d/dlog sigma = expm1(2r),  dKL_d/dlog sigma_p = -(expm1(2r) + delta^2).
template <typename T>
void kl_forward_flat(const FlatInputs<T>& in, int param, int64_t R, int64_t D, bool per_dim, T* out) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  static_flag(in.prior_mu != nullptr, [&](auto prior) {
  constexpr bool has_prior = decltype(prior)::value;
  at::parallel_for(0, flat_blocks(R), block_grain(D * 4), [&](int64_t b_begin, int64_t b_end) {
    std::vector<T> terms(per_dim ? 0 : std::min(kFlatBlockRows, R) * D);
    for (int64_t b = b_begin; b < b_end; ++b) {
      const FlatBlock<T> block(in, b, R, D);
      T* dst = per_dim ? out + block.r0 * D : terms.data();
      for_flat<W>(block.n, [&](int64_t j, int64_t c) {
        const V mv = V::loadu(block.mu + j, c);
        const V log_sigma = core::sigma_terms<V>(V::loadu(block.scale + j, c), param, false).log_sigma;
        if constexpr (has_prior) {
          const auto p = core::prior_terms<V>(V::loadu(block.prior_scale + j, c), param, false);
          kl_elem(log_sigma - p.log_sigma, (mv - V::loadu(block.prior_mu + j, c)) * p.inv_sigma).store(dst + j, c);
        } else {
          kl_elem(log_sigma, mv).store(dst + j, c);
        }
      });
      if (!per_dim) row_sums(terms.data(), block.n_rows, D, T(0), out + block.r0);
    }
  });
  });
}

// grad: (R,) through its row stride, or per_dim a contiguous (R, D).
template <typename T>
void kl_backward_flat(const FlatInputs<T>& in, int param, int64_t R, int64_t D, bool per_dim, const T* grad,
                      int64_t g_sr, const FlatOutGrads<T>& out) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  static_flag(in.prior_mu != nullptr, [&](auto prior) {
  constexpr bool has_prior = decltype(prior)::value;
  at::parallel_for(0, flat_blocks(R), block_grain(D * 4), [&](int64_t b_begin, int64_t b_end) {
    std::vector<T> spread(per_dim ? 0 : std::min(kFlatBlockRows, R) * D);
    for (int64_t b = b_begin; b < b_end; ++b) {
      const FlatBlock<T> block(in, b, R, D);
      const T* g = per_dim ? grad + block.r0 * D : spread.data();
      if (!per_dim) spread_rows(grad + block.r0 * g_sr, g_sr, block.n_rows, D, spread.data());
      for_flat<W>(block.n, [&](int64_t j, int64_t c) {
        const int64_t at = block.r0 * D + j;
        const V gv = V::loadu(g + j, c);
        const V mv = V::loadu(block.mu + j, c);
        const auto t = core::sigma_terms<V>(V::loadu(block.scale + j, c), param, true);
        if constexpr (has_prior) {
          const auto p = core::prior_terms<V>(V::loadu(block.prior_scale + j, c), param, true);
          const V delta = (mv - V::loadu(block.prior_mu + j, c)) * p.inv_sigma;
          const V em = vexpm1(V(T(2)) * (t.log_sigma - p.log_sigma));
          const V g_mu = gv * delta * p.inv_sigma;
          g_mu.store(out.mu + at, c);
          (gv * em * t.dlog).store(out.scale + at, c);
          (V(T(0)) - g_mu).store(out.prior_mu + at, c);
          (V(T(0)) - gv * (em + delta * delta) * p.dlog).store(out.prior_scale + at, c);
        } else {
          (gv * mv).store(out.mu + at, c);
          (gv * vexpm1(V(T(2)) * t.log_sigma) * t.dlog).store(out.scale + at, c);
        }
      });
    }
  });
  });
}

}  // namespace fastelbo
