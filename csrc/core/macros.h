// Portability macros of the torch-free core: the same header compiles as host C++ (g++) and as
// CUDA device code (nvcc), so every core function is FE_HD (host and device) and inline.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FE_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Always inlined on the host too: a call into a core function from a vectorized loop passes and
// returns its vectors through memory (sigma_terms as a call was a tenth of the latent kernel).
#define FE_HD inline __attribute__((always_inline))
#else
#define FE_HD inline
#endif
