// The estimator combine on the CPU: K per-sample terms (K, R) -> one value per data point (R,).
//
// log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x):
//   mode 0, elbo with MC KL:       mean_k [log p(x|z_k) + beta (log p(z_k) - log q(z_k|x))]
//   mode 1, elbo with analytic KL: mean_k log p(x|z_k) - beta kl
//   mode 2, iwae:                  logsumexp_k log w_k - log K (max-shifted: stable for log-weights
//                                  of -1e6; all -inf gives -inf) and the normalized weights
//                                  w~_k = exp(log w_k - max) / sum_j exp(log w_j - max) the backward
//                                  pass multiplies by (exp(log w_k - logsumexp) where the max is infinite).
#include <cmath>
#include <limits>
#include <vector>

#include "../binding/checks.h"
#include "../core/philox.h"
#include "common.h"
#include "noise.h"
#include "ops.h"

namespace fastelbo {
namespace {

using at::Tensor;

template <typename T>
void elbo_kernel(const Tensor& ll, const Tensor& lq, const Tensor& lp, const Tensor& kl, int64_t K, int64_t mode,
                 double beta, Tensor& out, Tensor& weights) {
  const int64_t R = out.numel();
  const T* ll_ptr = ll.const_data_ptr<T>();
  const T* lq_ptr = lq.const_data_ptr<T>();
  const T* lp_ptr = lp.const_data_ptr<T>();
  const T* kl_ptr = kl.const_data_ptr<T>();
  T* out_ptr = out.data_ptr<T>();
  T* w_ptr = mode == 2 ? weights.data_ptr<T>() : nullptr;
  const T b = static_cast<T>(beta), inv_k = T(1) / static_cast<T>(K), log_k = std::log(static_cast<T>(K));
  const T neg_inf = -std::numeric_limits<T>::infinity();
  at::parallel_for(0, R, grain_rows(K * 4, 16384), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (mode == 2) {
        T run_max = neg_inf;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t i = k * R + r;
          const T log_w = ll_ptr[i] + lp_ptr[i] - lq_ptr[i];
          run_max = log_w > run_max ? log_w : run_max;
        }
        const T shift = std::isinf(run_max) ? T(0) : run_max;  // exp(inf - inf) would be NaN
        T sum = 0;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t i = k * R + r;
          sum += std::exp(ll_ptr[i] + lp_ptr[i] - lq_ptr[i] - shift);
        }
        // An infinite max is the value (all log-weights -inf: -inf; one +inf: +inf), as torch.logsumexp.
        // A NaN never wins the max, but makes the sum (and lse) NaN.
        const T lse = std::isinf(run_max) && !std::isnan(sum) ? run_max : shift + std::log(sum);
        out_ptr[r] = lse - log_k;
        // The weights normalized by the sum itself, not as exp(log w - lse): lse is rounded at the
        // log-weights' magnitude (ulp(7000) = 4.9e-4 in float32), and so would every weight be.
        const bool finite = !std::isinf(run_max);
        for (int64_t k = 0; k < K; ++k) {
          const int64_t i = k * R + r;
          const T log_w = ll_ptr[i] + lp_ptr[i] - lq_ptr[i];
          w_ptr[i] = finite ? std::exp(log_w - shift) / sum : std::exp(log_w - lse);
        }
      } else {
        T acc = 0;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t i = k * R + r;
          acc += mode == 0 ? ll_ptr[i] + b * (lp_ptr[i] - lq_ptr[i]) : ll_ptr[i];
        }
        out_ptr[r] = acc * inv_k - (mode == 1 ? b * kl_ptr[r] : T(0));
      }
    }
  });
}

}  // namespace

std::tuple<Tensor, Tensor> elbo_cpu(const Tensor& log_lik, const Tensor& log_q, const Tensor& log_p, const Tensor& kl,
                                    int64_t mode, double beta) {
  const at::ScalarType dtype = at::promote_types(log_lik.scalar_type(), log_q.scalar_type());
  const at::ScalarType compute = at::promote_types(dtype, at::kFloat);
  // log_lik, log_q, log_p: (K, *batch), or (*batch) for one sample without a sample dim.
  const bool sample_dim = checks::elbo_terms(log_lik, log_q, log_p, kl, mode);
  auto batch = sample_dim ? log_lik.sizes().slice(1) : log_lik.sizes();
  Tensor out = at::empty(batch, log_lik.options().dtype(compute));
  Tensor weights = at::empty(mode == 2 ? log_lik.sizes() : at::IntArrayRef{0}, log_lik.options().dtype(compute));
  if (out.numel() > 0) {
    // Each term the mode reads, flat (K, R) / (R,) in the compute dtype: as given when it already is
    // (no dispatcher call: this op runs once per step at every size), else converted; the others
    // stand in for the pointer the kernel does not read.
    auto prep = [&](const Tensor& t) {
      return t.scalar_type() == compute && t.is_contiguous() ? t : t.to(compute).contiguous();
    };
    const Tensor ll = prep(log_lik);
    const Tensor lq = mode != 1 ? prep(log_q) : ll, lp = mode != 1 ? prep(log_p) : ll;
    const Tensor k = mode == 1 ? prep(kl) : ll;
    const int64_t samples = sample_dim ? log_lik.size(0) : 1;
    AT_DISPATCH_FLOATING_TYPES(compute, "fastelbo_elbo_cpu",
                               [&] { elbo_kernel<scalar_t>(ll, lq, lp, k, samples, mode, beta, out, weights); });
  }
  if (dtype == compute) return {out, weights};
  return {out.to(dtype), weights.to(dtype)};
}

Tensor normal_noise_cpu(const Tensor& seed, int64_t n_samples, int64_t n_rows, int64_t dim, bool float64) {
  Tensor out = at::empty({n_samples, n_rows, dim}, seed.options().dtype(float64 ? at::kDouble : at::kFloat));
  if (out.numel() == 0) return out;
  const core::PhiloxKey key = core::seed_key(*seed.const_data_ptr<int64_t>());
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "fastelbo_normal_noise_cpu", [&] {
    scalar_t* ptr = out.data_ptr<scalar_t>();
    at::parallel_for(0, n_samples * n_rows, grain_rows(dim * 8), [&](int64_t begin, int64_t end) {
      NoiseBlock<scalar_t> noise(dim);
      for (int64_t i = begin; i < end;) {  // blocks of rows within one sample
        const int64_t sample = i / n_rows, row = i % n_rows;
        const int64_t n = std::min({noise.max_rows, n_rows - row, end - i});
        noise.fill(ptr + i * dim, dim, key, row, n, sample);
        i += n;
      }
    });
  });
  return out;
}

Tensor philox_words_cpu(const Tensor& counter, const Tensor& key) {
  Tensor c = counter.to(at::kLong).contiguous(), k = key.to(at::kLong).contiguous();
  const int64_t n = c.size(1);
  Tensor out = at::empty({4, n}, c.options());
  const int64_t* cp = c.const_data_ptr<int64_t>();
  const int64_t* kp = k.const_data_ptr<int64_t>();
  int64_t* op = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    uint32_t words[4];
    for (int64_t j = 0; j < 4; ++j) words[j] = static_cast<uint32_t>(cp[j * n + i]);
    core::philox4x32_10(words, core::PhiloxKey{static_cast<uint32_t>(kp[i]), static_cast<uint32_t>(kp[n + i])});
    for (int64_t j = 0; j < 4; ++j) op[j * n + i] = static_cast<int64_t>(words[j]);
  }
  return out;
}

}  // namespace fastelbo
