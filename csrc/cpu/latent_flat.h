// The Gaussian latent's short-row path on the CPU. When mu and scale are contiguous (R, D) rows in
// float or double and the prior is N(0, I) (the common case), a block of rows is one flat array of
// rows x D elements: every vector is full whatever D is (at D = 8, two rows to an AVX-512 vector),
// the sigma terms, z and the per-element terms cost one vector op per W elements instead of one
// per row, and each row's sums are D scalar adds instead of a horizontal reduction per row and
// term. The math is latent.cpp's (its header comment), term for term:
//     forward:  z = mu + sigma eps,  log q = sum_d [-eps^2/2 - log sigma] - D log(2 pi)/2,
//               log p = sum_d [-z^2/2] - D log(2 pi)/2,  kl = sum_d [(e^(2 log sigma) - 1 - 2 log sigma)/2 + mu^2/2]
//     backward: g_k = gz_k - gp_k z_k [- gq_k eps_k / sigma with stl]
//               dL/dmu = sum_k g_k + gk mu
//               dL/ds = dsigma/ds sum_k g_k eps_k + dlog sigma/ds [gk expm1(2 log sigma) - sum_k gq_k without stl]
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

constexpr int64_t kFlatBlockRows = 64;

// Whether the rows take this path: contiguous float/double mu and scale, no prior.
template <typename scalar_t>
bool flat_rows(const LatentRows& rows) {
  return std::is_same_v<scalar_t, compute_t<scalar_t>> && !rows.has_prior && rows.plan.tensors[0].is_contiguous() &&
         rows.plan.tensors[1].is_contiguous();
}

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
void latent_forward_flat(const T* mu, const T* scale, const EpsSource<T>& eps_source, int param, int64_t K, int64_t R,
                         int64_t D, T* z, T* log_q, T* log_p, T* kl) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const T half_log_2pi_d = static_cast<T>(static_cast<double>(D) * core::kHalfLog2Pi);
  at::parallel_for(0, R, grain_rows(D * (K + 2)), [&](int64_t begin, int64_t end) {
    const int64_t cap = std::min(kFlatBlockRows, end - begin) * D;
    std::vector<T> sigma(cap), log_sigma(cap), terms_q(cap), terms_p(cap), eps_buf(cap);
    NoiseBlock<T> noise(D, eps_source.channels);
    for (int64_t r0 = begin; r0 < end; r0 += kFlatBlockRows) {
      const int64_t n_rows = std::min(kFlatBlockRows, end - r0), n = n_rows * D;
      const T* m = mu + r0 * D;
      const T* s = scale + r0 * D;
      for_flat<W>(n, [&](int64_t j, int64_t c) {
        const V mv = V::loadu(m + j, c);
        const auto t = core::sigma_terms<V>(V::loadu(s + j, c), param, false);
        t.sigma.store(sigma.data() + j, c);
        t.log_sigma.store(log_sigma.data() + j, c);
        const V half(T(0.5));
        (half * core::expm1_minus_x<V>(V(T(2)) * t.log_sigma) + half * mv * mv).store(terms_q.data() + j, c);
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
          (V(T(-0.5)) * zv * zv).store(terms_p.data() + j, c);
        });
        row_sums(terms_q.data(), n_rows, D, -half_log_2pi_d, log_q + k * R + r0);
        row_sums(terms_p.data(), n_rows, D, -half_log_2pi_d, log_p + k * R + r0);
      }
    }
  });
}

// The incoming gradients of the flat path: gz contiguous (K, R, D) or absent; the per-row ones
// (K, R) / (R,) through their strides.
template <typename T>
struct FlatGrads {
  const T* gz;
  const T* gq;
  int64_t gq_sk, gq_sr;
  const T* gp;
  int64_t gp_sk, gp_sr;
  const T* gk;
  int64_t gk_sr;
};

template <typename T>
void latent_backward_flat(const T* mu, const T* scale, const EpsSource<T>& eps_source, int param, int64_t K, int64_t R,
                          int64_t D, bool stl, const FlatGrads<T>& g, T* grad_mu, T* grad_scale) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  at::parallel_for(0, R, grain_rows(D * (K + 2)), [&](int64_t begin, int64_t end) {
    const int64_t cap = std::min(kFlatBlockRows, end - begin) * D;
    std::vector<T> sigma(cap), log_sigma(cap), dlog(cap), dsigma(cap), acc_g(cap), acc_ge(cap), eps_buf(cap),
        row_a(cap), row_b(cap);
    NoiseBlock<T> noise(D, eps_source.channels);
    const T zero(0);
    for (int64_t r0 = begin; r0 < end; r0 += kFlatBlockRows) {
      const int64_t n_rows = std::min(kFlatBlockRows, end - r0), n = n_rows * D;
      const T* m = mu + r0 * D;
      const T* s = scale + r0 * D;
      for_flat<W>(n, [&](int64_t j, int64_t c) {
        const auto t = core::sigma_terms<V>(V::loadu(s + j, c), param, true);
        t.sigma.store(sigma.data() + j, c);
        t.log_sigma.store(log_sigma.data() + j, c);
        t.dlog.store(dlog.data() + j, c);
        t.dsigma.store(dsigma.data() + j, c);
      });
      std::fill(acc_g.begin(), acc_g.begin() + n, zero);
      std::fill(acc_ge.begin(), acc_ge.begin() + n, zero);
      for (int64_t k = 0; k < K; ++k) {
        const T* e = flat_eps(eps_source, noise, eps_buf.data(), r0, n_rows, k);
        const T* gz_k = g.gz ? g.gz + (k * R + r0) * D : nullptr;
        if (g.gp) spread_rows(g.gp + k * g.gp_sk + r0 * g.gp_sr, g.gp_sr, n_rows, D, row_a.data());
        const bool stl_q = stl && g.gq;
        if (stl_q) spread_rows(g.gq + k * g.gq_sk + r0 * g.gq_sr, g.gq_sr, n_rows, D, row_b.data());
        for_flat<W>(n, [&](int64_t j, int64_t c) {
          const V ev = V::loadu(e + j, c);
          const V sig = V::loadu(sigma.data() + j, c);
          V grad = gz_k ? V::loadu(gz_k + j, c) : V(zero);
          if (g.gp) grad = grad - V::loadu(row_a.data() + j, c) * (V::loadu(m + j, c) + sig * ev);
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
        if (g.gk) {
          const V gkv = V::loadu(row_b.data() + j, c);
          g_mu = g_mu + gkv * mv;
          g_lsig = g_lsig + gkv * vexpm1(V(T(2)) * V::loadu(log_sigma.data() + j, c));
        }
        g_mu.store(grad_mu + r0 * D + j, c);
        const V through_z = V::loadu(dsigma.data() + j, c) * V::loadu(acc_ge.data() + j, c);
        (through_z + g_lsig * V::loadu(dlog.data() + j, c)).store(grad_scale + r0 * D + j, c);
      });
    }
  });
}

// The analytic KL alone (gaussian_kl) on the same flat rows:
//     KL_d = (e^(2 log sigma) - 1 - 2 log sigma)/2 + mu^2/2,  per dim or summed over the row;
//     dKL_d/dmu = mu,  dKL_d/dlog sigma = expm1(2 log sigma).
template <typename T>
void kl_forward_flat(const T* mu, const T* scale, int param, int64_t R, int64_t D, bool per_dim, T* out) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  at::parallel_for(0, R, grain_rows(D * 4), [&](int64_t begin, int64_t end) {
    std::vector<T> terms(per_dim ? 0 : std::min(kFlatBlockRows, end - begin) * D);
    for (int64_t r0 = begin; r0 < end; r0 += kFlatBlockRows) {
      const int64_t n_rows = std::min(kFlatBlockRows, end - r0), n = n_rows * D;
      T* dst = per_dim ? out + r0 * D : terms.data();
      for_flat<W>(n, [&](int64_t j, int64_t c) {
        const V mv = V::loadu(mu + r0 * D + j, c);
        const V log_sigma = core::sigma_terms<V>(V::loadu(scale + r0 * D + j, c), param, false).log_sigma;
        const V half(T(0.5));
        (half * core::expm1_minus_x<V>(V(T(2)) * log_sigma) + half * mv * mv).store(dst + j, c);
      });
      if (!per_dim) row_sums(terms.data(), n_rows, D, T(0), out + r0);
    }
  });
}

// grad: (R,) through its row stride, or per_dim a contiguous (R, D).
template <typename T>
void kl_backward_flat(const T* mu, const T* scale, int param, int64_t R, int64_t D, bool per_dim, const T* grad,
                      int64_t g_sr, T* grad_mu, T* grad_scale) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  at::parallel_for(0, R, grain_rows(D * 4), [&](int64_t begin, int64_t end) {
    std::vector<T> spread(per_dim ? 0 : std::min(kFlatBlockRows, end - begin) * D);
    for (int64_t r0 = begin; r0 < end; r0 += kFlatBlockRows) {
      const int64_t n_rows = std::min(kFlatBlockRows, end - r0), n = n_rows * D;
      const T* g = per_dim ? grad + r0 * D : spread.data();
      if (!per_dim) spread_rows(grad + r0 * g_sr, g_sr, n_rows, D, spread.data());
      for_flat<W>(n, [&](int64_t j, int64_t c) {
        const V gv = V::loadu(g + j, c);
        const auto t = core::sigma_terms<V>(V::loadu(scale + r0 * D + j, c), param, true);
        (gv * V::loadu(mu + r0 * D + j, c)).store(grad_mu + r0 * D + j, c);
        (gv * vexpm1(V(T(2)) * t.log_sigma) * t.dlog).store(grad_scale + r0 * D + j, c);
      });
    }
  });
}

}  // namespace fastelbo
