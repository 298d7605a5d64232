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

  LatentRows(const Tensor& mu, const Tensor& scale, const OptTensor& pm, const OptTensor& ps) {
    has_prior = pm.has_value() && pm->defined();
    dtype = common_float_dtype({&mu, &scale, has_prior ? &*pm : nullptr, has_prior ? &*ps : nullptr});
    std::vector<Tensor> tensors = {mu.to(dtype), scale.to(dtype)};
    if (has_prior) {
      tensors.push_back(pm->to(dtype).expand(mu.sizes()));
      tensors.push_back(ps->to(dtype).expand(mu.sizes()));
    }
    plan = plan_rows(tensors, 1);
    dim = mu.size(-1);
  }
  int64_t rows() const { return plan.shape.rows; }
  bool prior_shared(int i) const { return core::shared_across_rows(plan.strides[i]); }
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

// Per-row posterior and prior terms in the compute type, one vector-padded buffer each.
template <typename T>
struct RowTerms {
  std::vector<T> mu, sigma, log_sigma, dlog, pmu, inv_psigma, plog_sigma, pdlog;
  explicit RowTerms(int64_t padded)
      : mu(padded), sigma(padded), log_sigma(padded), dlog(padded), pmu(padded), inv_psigma(padded),
        plog_sigma(padded), pdlog(padded) {}

  template <typename scalar_t>
  void read(const RowInputs<scalar_t>& in, int64_t r, int64_t dim, int param, bool has_prior) {
    using V = Vec<T>;
    constexpr int64_t W = V::size();
    const scalar_t* m = in.row(0, r);
    const scalar_t* s = in.row(1, r);
    for_vectors<W>(dim, [&](int64_t j, auto n) {
      load<T>(m + j * in.st[0].sc, in.st[0].sc, n).store(mu.data() + j);
      auto t = core::sigma_terms<V>(load<T>(s + j * in.st[1].sc, in.st[1].sc, n), param);
      t.sigma.store(sigma.data() + j);
      t.log_sigma.store(log_sigma.data() + j);
      t.dlog.store(dlog.data() + j);
      if (has_prior) {
        const scalar_t* pm = in.row(2, r);
        const scalar_t* ps = in.row(3, r);
        load<T>(pm + j * in.st[2].sc, in.st[2].sc, n).store(pmu.data() + j);
        auto p = core::sigma_terms<V>(load<T>(ps + j * in.st[3].sc, in.st[3].sc, n), param);
        (V(T(1)) / p.sigma).store(inv_psigma.data() + j);
        p.log_sigma.store(plog_sigma.data() + j);
        p.dlog.store(pdlog.data() + j);
      }
    });
  }
};

// KL_d = (e^(2r) - 1 - 2r)/2 + delta^2/2 over the vector at column j.
template <typename T>
inline Vec<T> kl_terms(const RowTerms<T>& t, int64_t j, bool has_prior) {
  using V = Vec<T>;
  const V mu = V::loadu(t.mu.data() + j), log_sigma = V::loadu(t.log_sigma.data() + j);
  const V half(T(0.5)), two(T(2));
  if (!has_prior) return half * core::expm1_minus_x<V>(two * log_sigma) + half * mu * mu;
  const V delta = (mu - V::loadu(t.pmu.data() + j)) * V::loadu(t.inv_psigma.data() + j);
  return half * core::expm1_minus_x<V>(two * (log_sigma - V::loadu(t.plog_sigma.data() + j))) + half * delta * delta;
}

inline int64_t padded_dim(int64_t dim, int64_t width) {
  const int64_t groups4 = (dim + 3) / 4 * 4;
  return std::max<int64_t>(width, (groups4 + width - 1) / width * width);
}

// Prior-gradient rows: per row (R, D), or per block of rows when the prior is shared.
inline Tensor prior_grad_buffer(bool shared, int64_t blocks, int64_t R, int64_t D, const Tensor& like) {
  return shared ? at::zeros({blocks, D}, like.options()) : at::empty({R, D}, like.options());  // rows: all written
}

inline Tensor reduce_prior_grad(const Tensor& buffer, bool shared, at::IntArrayRef batch, int64_t D, const Tensor& prior) {
  std::vector<int64_t> shape(batch.begin(), batch.end());
  shape.push_back(D);
  Tensor full;
  if (shared) {
    std::vector<int64_t> ones(batch.size(), 1);
    ones.push_back(D);
    full = buffer.sum(0).view(ones);
  } else {
    full = buffer.view(shape);
  }
  return full.sum_to_size(prior.sizes()).to(prior.scalar_type());
}

}  // namespace fastelbo
