// The noise of docs/RNG.md on the GPU (torch-free): Philox4x32-10 words and Box-Muller normals,
// from csrc/core/philox.h, plus the two plain kernels behind the normal_noise and philox_words ops.
#pragma once

#include "common.cuh"

namespace fastelbo {
namespace cuda {

// The four normals of Philox call (group, row, sample) in T (docs/RNG.md §3-4):
// (rad(w0) cos th(w1), rad(w0) sin th(w1), rad(w2) cos th(w3), rad(w2) sin th(w3)),
// rad(w) = sqrt(-2 log u(w)); lane j is the eps of column 4 group + j.
template <typename T>
__device__ __forceinline__ void philox_normals(core::PhiloxKey key, int64_t group, int64_t row, int64_t sample,
                                               T out[4]) {
  using M = core::Ops<T>;
  uint32_t c[4];
  core::noise_counter(c, group, row, sample);
  core::philox4x32_10(c, key);
  const T r0 = M::sqrt(T(-2) * M::log(core::box_muller_u<T>(c[0])));
  const T t1 = core::box_muller_theta<T>(c[1]);
  const T r2 = M::sqrt(T(-2) * M::log(core::box_muller_u<T>(c[2])));
  const T t3 = core::box_muller_theta<T>(c[3]);
  out[0] = r0 * M::cos(t1);
  out[1] = r0 * M::sin(t1);
  out[2] = r2 * M::cos(t3);
  out[3] = r2 * M::sin(t3);
}

template <typename T>
struct NormalNoiseParams {
  const int64_t* seed;   // 0-dim int64 on the device
  T* out;                // (K, rows, dim) contiguous
  int64_t n_samples, rows, dim;
};

// I: the integer type holding the words (int64_t: the op's tensors).
template <typename I>
struct PhiloxWordsParams {
  const I* counter;  // (4, n) contiguous, words taken mod 2^32
  const I* key;      // (2, n) contiguous
  I* out;            // (4, n) contiguous
  int64_t n;
};

// out[k, r, d] = eps of element (k, r, d): lane d mod 4 of Philox call (d div 4, r, k) with the
// key of *seed. One thread per call (4 columns), grid-stride over K * rows * ceil(dim / 4).
template <typename T>
__global__ void __launch_bounds__(kBlock) normal_noise_kernel(const NormalNoiseParams<T> p) {
  const core::PhiloxKey key = core::seed_key(*p.seed);
  const int64_t groups = ceil_div(p.dim, 4);
  const int64_t total = p.n_samples * p.rows * groups;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t g = i % groups;
    const int64_t kr = i / groups;  // k * rows + r
    T n[4];
    philox_normals<T>(key, g, kr % p.rows, kr / p.rows, n);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t d = 4 * g + j;
      if (d < p.dim) p.out[kr * p.dim + d] = n[j];
    }
  }
}

// out[j, i] = word j of Philox4x32-10(counter[:, i], key[:, i]) (int64 holding uint32).
template <typename I>
__global__ void __launch_bounds__(kBlock) philox_words_kernel(const PhiloxWordsParams<I> p) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n; i += stride) {
    uint32_t c[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) c[j] = static_cast<uint32_t>(static_cast<uint64_t>(p.counter[j * p.n + i]));
    const core::PhiloxKey key{static_cast<uint32_t>(static_cast<uint64_t>(p.key[i])),
                              static_cast<uint32_t>(static_cast<uint64_t>(p.key[p.n + i]))};
    core::philox4x32_10(c, key);
#pragma unroll
    for (int j = 0; j < 4; ++j) p.out[j * p.n + i] = static_cast<I>(c[j]);
  }
}

}  // namespace cuda
}  // namespace fastelbo
