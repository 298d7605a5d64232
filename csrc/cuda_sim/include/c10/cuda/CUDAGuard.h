// cuda_sim: c10::cuda::CUDAGuard for the simulated CUDA bindings, whose tensors are CPU tensors:
// there is no CUDA device to switch to, so the guard does nothing.
#pragma once

#include <c10/core/Device.h>

namespace c10 {
namespace cuda {

struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
  CUDAGuard(const CUDAGuard&) = delete;
  CUDAGuard& operator=(const CUDAGuard&) = delete;
};

}  // namespace cuda
}  // namespace c10
