// The rows of a Gaussian latent on the CPU, shared by the latent and KL kernels: mu, scale and the
// prior planned as rows, their per-row terms in the compute type, the KL per dim, and the
// prior-gradient buffers.
#pragma once

#include <algorithm>
#include <vector>

#include "../binding/plan.h"
#include "common.h"

namespace fastelbo {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;

inline Tensor defined_or_empty(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

// mu, scale and (optionally) the prior, broadcast to mu and planned as rows; float inputs of
// mixed dtypes are upcast to the compute dtype first.
struct LatentRows {
  at::ScalarType dtype;
  bool has_prior;
  RowPlan plan;
  int64_t dim;
  bool prior_single_row[2] = {false, false};  // prior_mu, prior_scale: single_row (plan.h)

  LatentRows(const Tensor& mu, const Tensor& scale, const OptTensor& pm, const OptTensor& ps) {
    has_prior = pm.has_value() && pm->defined();
    dtype = common_float_dtype({&mu, &scale, has_prior ? &*pm : nullptr, has_prior ? &*ps : nullptr});
    std::vector<Tensor> tensors = {as_dtype(mu, dtype), as_dtype(scale, dtype)};
    if (has_prior) {
      tensors.push_back(expanded_to(as_dtype(*pm, dtype), mu.sizes()));
      tensors.push_back(expanded_to(as_dtype(*ps, dtype), mu.sizes()));
      prior_single_row[0] = single_row(*pm, 1);
      prior_single_row[1] = single_row(*ps, 1);
    }
    plan = plan_rows(tensors, 1);
    dim = mu.size(-1);
  }
  int64_t rows() const { return plan.shape.rows; }
  bool prior_shared(int i) const { return prior_single_row[i - 2] && core::shared_across_rows(plan.strides[i]); }
};

// Pointers and strides of the planned inputs, typed.
template <typename scalar_t>
struct RowInputs {
  const scalar_t* ptr[4] = {nullptr, nullptr, nullptr, nullptr};
  core::RowStrides st[4];
  core::RowShape shape;
  explicit RowInputs(const LatentRows& rows) : shape(rows.plan.shape) {
    for (size_t i = 0; i < rows.plan.tensors.size(); ++i) {
      ptr[i] = rows.plan.tensors[i].template const_data_ptr<scalar_t>();
      st[i] = rows.plan.strides[i];
    }
  }
  const scalar_t* row(int i, int64_t r) const { return ptr[i] + core::row_offset(r, shape, st[i]); }
};

// The posterior and prior terms of one vector of columns: mu, sigma, log sigma, d log sigma / ds,
// d sigma / ds, and the prior's mu_p, 1 / sigma_p, log sigma_p, d log sigma_p / ds_p (left unset without
// `with_prior`).
template <typename T>
struct ColumnTerms {
  Vec<T> mu, sigma, log_sigma, dlog, dsigma, pmu, inv_psigma, plog_sigma, pdlog;
};

// The inputs' rows r (mu, scale, and the prior's where it is given).
template <typename scalar_t>
struct RowPointers {
  const scalar_t* p[4] = {nullptr, nullptr, nullptr, nullptr};
  RowPointers(const RowInputs<scalar_t>& in, int64_t r, bool has_prior) {
    for (int i = 0; i < (has_prior ? 4 : 2); ++i) p[i] = in.row(i, r);
  }
};

// ColumnTerms of columns [j, j + n) of the rows `at`.
template <typename T, typename scalar_t, typename N>
C10_ALWAYS_INLINE ColumnTerms<T> column_terms(const RowInputs<scalar_t>& in, const RowPointers<scalar_t>& at, int64_t j,
                                              N n, int param, bool with_prior, bool need_dlog) {
  using V = Vec<T>;
  ColumnTerms<T> c;
  c.mu = load<T>(at.p[0] + j * in.st[0].sc, in.st[0].sc, n);
  auto t = core::sigma_terms<V>(load<T>(at.p[1] + j * in.st[1].sc, in.st[1].sc, n), param, need_dlog);
  c.sigma = t.sigma;
  c.log_sigma = t.log_sigma;
  c.dlog = t.dlog;
  c.dsigma = t.dsigma;
  if (with_prior) {
    c.pmu = load<T>(at.p[2] + j * in.st[2].sc, in.st[2].sc, n);
    const auto p = core::prior_terms<V>(load<T>(at.p[3] + j * in.st[3].sc, in.st[3].sc, n), param, need_dlog);
    c.inv_psigma = p.inv_sigma;
    c.plog_sigma = p.log_sigma;
    c.pdlog = p.dlog;
  }
  return c;
}

// Per-row posterior and prior terms in the compute type, one vector-padded buffer each. The prior's
// terms are kept while the next row reads the same prior row (a prior shared by every row, or by
// a run of rows: its sigma terms are computed once, not once per row).
template <typename T>
struct RowTerms {
  std::vector<T> mu, sigma, log_sigma, dlog, dsigma, pmu, inv_psigma, plog_sigma, pdlog;
  const void* prior_read[2] = {nullptr, nullptr};  // the prior rows the prior terms hold
  explicit RowTerms(int64_t padded)
      : mu(padded), sigma(padded), log_sigma(padded), dlog(padded), dsigma(padded), pmu(padded),
        inv_psigma(padded), plog_sigma(padded), pdlog(padded) {}

  // The held terms at column j (the prior's as they were last read).
  ColumnTerms<T> column(int64_t j) const {
    using V = Vec<T>;
    return ColumnTerms<T>{V::loadu(mu.data() + j),         V::loadu(sigma.data() + j),
                          V::loadu(log_sigma.data() + j),  V::loadu(dlog.data() + j),
                          V::loadu(dsigma.data() + j),     V::loadu(pmu.data() + j),
                          V::loadu(inv_psigma.data() + j), V::loadu(plog_sigma.data() + j),
                          V::loadu(pdlog.data() + j)};
  }

  template <typename scalar_t>
  void read(const RowInputs<scalar_t>& in, int64_t r, int64_t dim, int param, bool has_prior, bool need_dlog) {
    constexpr int64_t W = Vec<T>::size();
    const RowPointers<scalar_t> at(in, r, has_prior);
    if (has_prior) {
      const bool same = at.p[2] == prior_read[0] && at.p[3] == prior_read[1];  // the terms already held
      prior_read[0] = at.p[2];
      prior_read[1] = at.p[3];
      has_prior = !same;
    }
    for_vectors<W>(dim, [&](int64_t j, auto n) {
      const ColumnTerms<T> c = column_terms<T>(in, at, j, n, param, has_prior, need_dlog);
      c.mu.store(mu.data() + j);
      c.sigma.store(sigma.data() + j);
      c.log_sigma.store(log_sigma.data() + j);
      c.dlog.store(dlog.data() + j);
      c.dsigma.store(dsigma.data() + j);
      if (has_prior) {
        c.pmu.store(pmu.data() + j);
        c.inv_psigma.store(inv_psigma.data() + j);
        c.plog_sigma.store(plog_sigma.data() + j);
        c.pdlog.store(pdlog.data() + j);
      }
    });
  }
};

// KL_d = (e^(2r) - 1 - 2r)/2 + delta^2/2, r = log sigma - log sigma_p, delta = (mu - mu_p) / sigma_p
// (the standard prior: r = log sigma, delta = mu).
template <typename V>
C10_ALWAYS_INLINE V kl_elem(const V& r, const V& delta) {
  using T = typename V::value_type;
  const V half(T(0.5));
  return half * core::expm1_minus_x<V>(V(T(2)) * r) + half * delta * delta;
}

template <typename T>
C10_ALWAYS_INLINE Vec<T> kl_term(const ColumnTerms<T>& c, bool has_prior) {
  if (!has_prior) return kl_elem(c.log_sigma, c.mu);
  return kl_elem(c.log_sigma - c.plog_sigma, (c.mu - c.pmu) * c.inv_psigma);
}

inline int64_t padded_dim(int64_t dim, int64_t width) {
  const int64_t groups4 = (dim + 3) / 4 * 4;
  return std::max<int64_t>(width, (groups4 + width - 1) / width * width);
}

// The gradients a latent or KL backward writes: grad mu and grad scale in the rows' dtype (every
// element written), and the prior's per row (R, D) or, for a prior shared by every row, summed per
// fixed block of `block` rows (blocks, D); finish() reduces them to each input's shape and dtype.
struct PosteriorGrads {
  Tensor mu, scale, prior_mu, prior_scale;
  bool has_prior, pm_shared = false, ps_shared = false;
  int64_t block, blocks;

  PosteriorGrads(const LatentRows& rows, const Tensor& mu_in, int64_t block_rows)
      : mu(at::empty(mu_in.sizes(), mu_in.options().dtype(rows.dtype))),
        scale(at::empty(mu_in.sizes(), mu_in.options().dtype(rows.dtype))),
        has_prior(rows.has_prior),
        block(block_rows),
        blocks((rows.rows() + block_rows - 1) / block_rows) {
    const auto options = mu_in.options().dtype(compute_dtype(rows.dtype));
    if (rows.has_prior) {
      pm_shared = rows.prior_shared(2);
      ps_shared = rows.prior_shared(3);
      prior_mu = buffer(pm_shared, rows, options);
      prior_scale = buffer(ps_shared, rows, options);
    } else {
      prior_mu = prior_scale = at::empty({0}, options);
    }
  }

  Tensor buffer(bool shared, const LatentRows& rows, at::TensorOptions options) const {
    return shared ? at::zeros({blocks, rows.dim}, options) : at::empty({rows.rows(), rows.dim}, options);
  }

  std::tuple<Tensor, Tensor, Tensor, Tensor> finish(const Tensor& mu_in, const Tensor& scale_in, const OptTensor& pm,
                                                    const OptTensor& ps) const {
    const bool has_prior = pm.has_value() && pm->defined();
    return {as_dtype(mu, mu_in.scalar_type()), as_dtype(scale, scale_in.scalar_type()),
            has_prior ? reduce(prior_mu, pm_shared, mu_in, *pm) : at::empty({0}, mu_in.options()),
            has_prior ? reduce(prior_scale, ps_shared, mu_in, *ps) : at::empty({0}, mu_in.options())};
  }

  // Typed pointers for a kernel over storage type scalar_t: write(b, r, j, n, ...) stores row r's
  // columns [j, j + n), the prior's added to block b's sums where the prior is shared.
  template <typename scalar_t>
  struct Writer {
    using T = compute_t<scalar_t>;
    scalar_t* mu;
    scalar_t* scale;
    T* prior_mu;
    T* prior_scale;
    bool pm_shared, ps_shared;
    int64_t dim;

    template <typename N>
    void write(int64_t r, int64_t j, N n, const Vec<T>& g_mu, const Vec<T>& g_scale) const {
      store<T>(mu + r * dim + j, 1, g_mu, n);
      store<T>(scale + r * dim + j, 1, g_scale, n);
    }

    template <typename N>
    void write_prior(int64_t b, int64_t r, int64_t j, N n, const Vec<T>& g_pm, const Vec<T>& g_ps) const {
      T* pm_row = prior_mu + (pm_shared ? b : r) * dim + j;
      T* ps_row = prior_scale + (ps_shared ? b : r) * dim + j;
      (pm_shared ? Vec<T>::loadu(pm_row, n) + g_pm : g_pm).store(pm_row, n);
      (ps_shared ? Vec<T>::loadu(ps_row, n) + g_ps : g_ps).store(ps_row, n);
    }
  };

  template <typename scalar_t>
  Writer<scalar_t> writer() {
    using T = compute_t<scalar_t>;
    return Writer<scalar_t>{mu.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(),
                            has_prior ? prior_mu.data_ptr<T>() : nullptr,
                            has_prior ? prior_scale.data_ptr<T>() : nullptr, pm_shared, ps_shared,
                            mu.dim() ? mu.size(-1) : 0};
  }

  static Tensor reduce(const Tensor& buffer, bool shared, const Tensor& mu_in, const Tensor& prior) {
    std::vector<int64_t> shape(mu_in.sizes().begin(), mu_in.sizes().end());
    if (shared) std::fill(shape.begin(), shape.end() - 1, 1);
    Tensor full = buffer.numel() == 0 ? at::zeros(shape, buffer.options()) : (shared ? buffer.sum(0) : buffer).view(shape);
    return full.sum_to_size(prior.sizes()).to(prior.scalar_type());
  }
};

}  // namespace fastelbo
