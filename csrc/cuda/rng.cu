// ATen binding of the noise kernels (kernels/rng.cuh): normal_noise and philox_words, as
// fastelbo/triton_backend/rng.py. The seed stays on the device (read by the kernel).
#include "aten_utils.cuh"
#include "kernels/rng.cuh"
#include "ops.h"

namespace fastelbo {
namespace cuda {

Tensor normal_noise_cuda(const Tensor& seed, int64_t n_samples, int64_t n_rows, int64_t dim, bool float64) {
  c10::cuda::CUDAGuard device_guard(seed.device());
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.numel() == 1, "fastelbo cuda: the seed is one int64");
  at::Tensor out = at::empty({n_samples, n_rows, dim}, seed.options().dtype(float64 ? at::kDouble : at::kFloat));
  if (out.numel() == 0) return out;
  const at::Tensor seed_c = seed.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "fastelbo_normal_noise_cuda", [&] {
    using T = scalar_t;
    NormalNoiseParams<T> p;
    p.seed = seed_c.data_ptr<int64_t>();
    p.out = ptr<T>(out);
    p.n_samples = n_samples;
    p.rows = n_rows;
    p.dim = dim;
    FE_LAUNCH(grid_x(flat_blocks(n_samples * n_rows * ceil_div(dim, 4))), kBlock, 0, stream, normal_noise_kernel<T>)(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

Tensor philox_words_cuda(const Tensor& counter, const Tensor& key) {
  c10::cuda::CUDAGuard device_guard(counter.device());
  TORCH_CHECK(counter.dim() == 2 && counter.size(0) == 4 && key.dim() == 2 && key.size(0) == 2 &&
                  key.size(1) == counter.size(1),
              "fastelbo cuda: philox_words takes counter (4, n) and key (2, n)");
  const int64_t n = counter.size(1);
  at::Tensor out = at::empty({4, n}, counter.options().dtype(at::kLong));
  if (n == 0) return out;
  const at::Tensor counter_c = counter.to(at::kLong).contiguous();
  const at::Tensor key_c = key.to(at::kLong).contiguous();
  PhiloxWordsParams<int64_t> p;
  p.counter = counter_c.data_ptr<int64_t>();
  p.key = key_c.data_ptr<int64_t>();
  p.out = out.data_ptr<int64_t>();
  p.n = n;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FE_LAUNCH(grid_x(flat_blocks(n)), kBlock, 0, stream, philox_words_kernel<int64_t>)(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace cuda
}  // namespace fastelbo
