// cuda_sim: c10::cuda::getCurrentCUDAStream for the simulated CUDA bindings. Launches run at once,
// in order, on the calling host thread, so the stream is a null handle the launch ignores.
#pragma once

namespace c10 {
namespace cuda {

struct CUDAStream {
  operator cudaStream_t() const { return nullptr; }
};

inline CUDAStream getCurrentCUDAStream() { return CUDAStream{}; }

}  // namespace cuda
}  // namespace c10
