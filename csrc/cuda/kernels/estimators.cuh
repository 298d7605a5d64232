// The estimator combine (torch-free): K per-sample terms (K, R) -> one value per data point (R,),
// one pass; the same computations as triton_kernels/estimators.py. One thread per data point
// (row), looping over the K samples: consecutive threads read consecutive rows of each (K, R)
// input (coalesced).
#pragma once

#include "common.cuh"

namespace fastelbo {
namespace cuda {

template <typename T>
struct EstimateParams {
  const T* log_lik;   // (K, R) contiguous
  const T* log_q;     // (K, R) contiguous (modes 0 and 2)
  const T* log_p;     // (K, R) contiguous (modes 0 and 2)
  const T* kl;        // (R,) contiguous (mode 1)
  T* out;             // (R,)
  T* weights;         // (K, R) normalized weights w~ (mode 2)
  int64_t rows, n_samples;
  int mode;
  double beta;        // run-time scalar
  double log_k;       // log K, run-time scalar
};

// log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x):
//   mode 0, elbo with MC KL:       mean_k [log p(x|z_k) + beta (log p(z_k) - log q(z_k|x))]
//   mode 1, elbo with analytic KL: mean_k log p(x|z_k) - beta kl
//   mode 2, iwae:                  logsumexp_k log w_k - log K by an online max-shifted sum
//                                  (exact at log w = -1e6; -inf when every log w_k is -inf), and
//                                  the normalized weights w~_k = exp(log w_k - max) / sum_j exp(log w_j - max)
//                                  (exp(log w_k - logsumexp) where the max is infinite).
// Grid: flat_blocks(R) blocks of kBlock threads, grid-stride over the rows.
template <typename T>
__global__ void __launch_bounds__(kBlock) elbo_kernel(const EstimateParams<T> p) {
  const int64_t R = p.rows, K = p.n_samples;
  const T beta = static_cast<T>(p.beta);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < R; r += stride) {
    if (p.mode == 2) {
      T run_max = neg_inf<T>(), run_sum = T(0);
      for (int64_t k = 0; k < K; ++k) {
        const int64_t i = k * R + r;
        const T log_w = p.log_lik[i] + p.log_p[i] - p.log_q[i];
        const T new_max = log_w > run_max ? log_w : run_max;    // NaN propagates through the sum
        const bool infinite = new_max == neg_inf<T>() || new_max == -neg_inf<T>();
        const T shift = infinite ? T(0) : new_max;  // an infinite max so far: keep 0 (inf - inf is NaN)
        run_sum = run_sum * core::Ops<T>::exp(run_max - shift) + core::Ops<T>::exp(log_w - shift);
        run_max = new_max;
      }
      // An infinite max is the value (all log-weights -inf: -inf; one +inf: +inf), as torch.logsumexp.
      // A NaN never wins the max, but makes run_sum (and lse) NaN.
      const bool infinite = run_max == neg_inf<T>() || run_max == -neg_inf<T>();
      const T lse = infinite && run_sum == run_sum ? run_max : run_max + core::Ops<T>::log(run_sum);
      p.out[r] = lse - static_cast<T>(p.log_k);
      // The weights normalized by the sum itself, not as exp(log w - lse): lse is rounded at the
      // log-weights' magnitude (ulp(7000) = 4.9e-4 in float32), and so would every weight be.
      for (int64_t k = 0; k < K; ++k) {
        const int64_t i = k * R + r;
        const T log_w = p.log_lik[i] + p.log_p[i] - p.log_q[i];
        p.weights[i] = infinite ? core::Ops<T>::exp(log_w - lse) : core::Ops<T>::exp(log_w - run_max) / run_sum;
      }
    } else {
      T acc = T(0);
      for (int64_t k = 0; k < K; ++k) {
        const int64_t i = k * R + r;
        T term = p.log_lik[i];
        if (p.mode == 0) term += beta * (p.log_p[i] - p.log_q[i]);
        acc += term;
      }
      T value = acc / static_cast<T>(K);
      if (p.mode == 1) value -= beta * p.kl[r];
      p.out[r] = value;
    }
  }
}

}  // namespace cuda
}  // namespace fastelbo
