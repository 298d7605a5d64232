// ATen binding of the estimator combine (kernels/estimators.cuh). Output shapes and dtypes as
// fastelbo/triton_backend/estimators.py: value (*batch) and, for mode 2, the normalized weights
// (K, *batch), in promote(log_lik, log_q); computed in float32 (float64 for float64).
#include <cmath>

#include "../binding/checks.h"
#include "aten_utils.cuh"
#include "kernels/estimators.cuh"
#include "ops.h"

namespace fastelbo {
namespace cuda {

Tensor2 elbo_cuda(const Tensor& log_lik, const Tensor& log_q, const Tensor& log_p, const Tensor& kl, int64_t mode,
                  double beta) {
  c10::cuda::CUDAGuard device_guard(log_lik.device());
  const at::ScalarType dtype = at::promote_types(log_lik.scalar_type(), log_q.scalar_type());
  const at::ScalarType compute = at::promote_types(dtype, at::kFloat);
  // log_lik, log_q, log_p: (K, *batch), or (*batch) for one sample without a sample dim.
  const bool sample_dim = checks::elbo_terms(log_lik, log_q, log_p, kl, mode);
  const int64_t k = sample_dim ? log_lik.size(0) : 1;
  const std::vector<int64_t> batch(log_lik.sizes().begin() + (sample_dim ? 1 : 0), log_lik.sizes().end());
  at::Tensor out = at::empty(batch, log_lik.options().dtype(dtype));
  at::Tensor weights = mode == 2 ? at::empty(log_lik.sizes(), log_lik.options().dtype(dtype))
                                 : at::empty({0}, log_lik.options().dtype(dtype));
  const int64_t rows = out.numel();
  if (rows == 0) return {out, weights};
  // The terms each mode reads, contiguous (K, R) / (R,) in the compute dtype.
  const at::Tensor ll = cast(log_lik, compute).contiguous();
  const at::Tensor lq = mode != 1 ? cast(log_q, compute).contiguous() : at::Tensor();
  const at::Tensor lp = mode != 1 ? cast(log_p, compute).contiguous() : at::Tensor();
  const at::Tensor klc = mode == 1 ? cast(kl, compute).contiguous() : at::Tensor();
  at::Tensor out_c = output_in(out, compute);
  at::Tensor weights_c = mode == 2 ? output_in(weights, compute) : at::Tensor();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(compute, "fastelbo_elbo_cuda", [&] {
    using T = scalar_t;
    EstimateParams<T> p;
    p.log_lik = ptr<const T>(ll);
    p.log_q = ptr<const T>(lq);
    p.log_p = ptr<const T>(lp);
    p.kl = ptr<const T>(klc);
    p.out = ptr<T>(out_c);
    p.weights = ptr<T>(weights_c);
    p.rows = rows;
    p.n_samples = k;
    p.mode = static_cast<int>(mode);
    p.beta = beta;
    p.log_k = std::log(static_cast<double>(k));
    FE_LAUNCH(grid_x(flat_blocks(rows)), kBlock, 0, stream, elbo_kernel<T>)(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  finish_output(out, out_c);
  if (mode == 2) finish_output(weights, weights_c);
  return {out, weights};
}

}  // namespace cuda
}  // namespace fastelbo
