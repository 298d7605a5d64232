// The analytic KL(N(mu, sigma^2) || prior) on the CPU, per dim or summed over D, and its backward:
//     KL_d = (e^(2r) - 1 - 2r)/2 + delta^2/2,  r = log sigma - log sigma_p, delta = (mu - mu_p)/sigma_p
//     dKL_d/dmu = delta/sigma_p,  dKL_d/dlog sigma = expm1(2r),
//     dKL_d/dmu_p = -delta/sigma_p,  dKL_d/dlog sigma_p = -(expm1(2r) + delta^2)
// (standard prior: mu_p = 0, sigma_p = 1).
#include "latent_flat.h"
#include "latent_rows.h"
#include "ops.h"

namespace fastelbo {
namespace {

template <typename scalar_t>
void gaussian_kl_forward_kernel(const LatentRows& rows, int64_t param, bool per_dim, Tensor& out) {
  using T = compute_t<scalar_t>;
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const RowInputs<scalar_t> in(rows);
  const int64_t R = rows.rows(), D = rows.dim, P = padded_dim(D, W);
  T* out_ptr = out.data_ptr<T>();
  if constexpr (std::is_same_v<scalar_t, T>) {
    if (flat_rows<scalar_t>(rows)) {
      kl_forward_flat<T>(flat_inputs(in), static_cast<int>(param), R, D, per_dim, out_ptr);
      return;
    }
  }
  at::parallel_for(0, R, grain_rows(D * 4), [&](int64_t begin, int64_t end) {
    RowTerms<T> t(P);
    for (int64_t r = begin; r < end; ++r) {
      t.read(in, r, D, static_cast<int>(param), rows.has_prior, false);
      V acc(T(0));
      for_vectors<W>(D, [&](int64_t j, auto n) {
        const V kl = kl_term<T>(t.column(j), rows.has_prior);
        if (per_dim) {
          kl.store(out_ptr + r * D + j, n);
        } else {
          acc += first(kl, n);
        }
      });
      if (!per_dim) out_ptr[r] = hsum(acc);
    }
  });
}

template <typename scalar_t>
void gaussian_kl_backward_kernel(const LatentRows& rows, const Tensor& grad, int64_t param, bool per_dim,
                                 PosteriorGrads& out) {
  using T = compute_t<scalar_t>;
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const RowInputs<scalar_t> in(rows);
  const int64_t R = rows.rows(), D = rows.dim, P = padded_dim(D, W);
  const bool has_prior = rows.has_prior;
  const T* g_ptr = grad.const_data_ptr<T>();
  const int64_t g_sr = grad.stride(0), g_sd = per_dim ? grad.stride(1) : 0;
  if constexpr (std::is_same_v<scalar_t, T>) {
    if (flat_rows<scalar_t>(rows) && (!per_dim || grad.is_contiguous())) {
      kl_backward_flat<T>(flat_inputs(in), static_cast<int>(param), R, D, per_dim, g_ptr, g_sr,
                          flat_out_grads<T>(out, R));
      return;
    }
  }
  const auto grads = out.writer<scalar_t>();
  const int64_t block = out.block, blocks = out.blocks;
  at::parallel_for(0, blocks, 1, [&](int64_t b_begin, int64_t b_end) {
    RowTerms<T> t(P);
    for (int64_t b = b_begin; b < b_end; ++b) {
      for (int64_t r = b * block; r < std::min(R, (b + 1) * block); ++r) {
        t.read(in, r, D, static_cast<int>(param), has_prior, true);
        for_vectors<W>(D, [&](int64_t j, auto n) {
          const V g = per_dim ? load<T>(g_ptr + r * g_sr + j * g_sd, g_sd, n) : V(g_ptr[r * g_sr]);
          const V mu = V::loadu(t.mu.data() + j), log_sigma = V::loadu(t.log_sigma.data() + j);
          V g_mu, em;
          if (has_prior) {
            const V inv_ps = V::loadu(t.inv_psigma.data() + j);
            const V delta = (mu - V::loadu(t.pmu.data() + j)) * inv_ps;
            em = vexpm1(V(T(2)) * (log_sigma - V::loadu(t.plog_sigma.data() + j)));
            g_mu = g * delta * inv_ps;
            const V pm_grad = V(T(0)) - g_mu;
            const V ps_grad = V(T(0)) - g * (em + delta * delta) * V::loadu(t.pdlog.data() + j);
            grads.write_prior(b, r, j, n, pm_grad, ps_grad);
          } else {
            em = vexpm1(V(T(2)) * log_sigma);
            g_mu = g * mu;
          }
          grads.write(r, j, n, g_mu, g * em * V::loadu(t.dlog.data() + j));
        });
      }
    }
  });
}

}  // namespace

Tensor gaussian_kl_cpu(const Tensor& mu, const Tensor& scale, const OptTensor& prior_mu, const OptTensor& prior_scale,
                       int64_t param, bool per_dim) {
  LatentRows rows(mu, scale, prior_mu, prior_scale);
  const at::ScalarType compute = compute_dtype(rows.dtype);
  Tensor out = at::empty(per_dim ? mu.sizes() : mu.sizes().slice(0, mu.dim() - 1), mu.options().dtype(compute));
  if (mu.numel() == 0) return out.zero_();  // D = 0: a sum over nothing
  {
    FASTELBO_DISPATCH_FLOAT(rows.dtype, "fastelbo_gaussian_kl_cpu",
                            [&] { gaussian_kl_forward_kernel<scalar_t>(rows, param, per_dim, out); });
  }
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gaussian_kl_backward_cpu(const Tensor& grad, const Tensor& mu,
                                                                    const Tensor& scale, const OptTensor& prior_mu,
                                                                    const OptTensor& prior_scale, int64_t param,
                                                                    bool per_dim) {
  LatentRows rows(mu, scale, prior_mu, prior_scale);
  PosteriorGrads out(rows, mu, grain_rows(rows.dim * 4));
  if (mu.numel() > 0) {
    const at::ScalarType compute = compute_dtype(rows.dtype);
    Tensor g = per_dim ? as_dtype(grad, compute).reshape({rows.rows(), rows.dim})
                       : as_dtype(grad, compute).reshape({rows.rows()});
    FASTELBO_DISPATCH_FLOAT(rows.dtype, "fastelbo_gaussian_kl_backward_cpu",
                            [&] { gaussian_kl_backward_kernel<scalar_t>(rows, g, param, per_dim, out); });
  }
  return out.finish(mu, scale, prior_mu, prior_scale);
}

}  // namespace fastelbo
