// Portability macros of the torch-free core: the same header compiles as host C++ (g++) and as
// CUDA device code (nvcc), so every core function is FE_HD (host and device) and inline.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FE_HD __host__ __device__ __forceinline__
#else
#define FE_HD inline
#endif
