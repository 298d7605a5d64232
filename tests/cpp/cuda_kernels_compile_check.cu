// Compile check of the torch-free device code (tests/test_cuda_compile.py): includes every
// csrc/cuda/kernels/*.cuh and explicitly instantiates every kernel template for every storage /
// compute type the bindings dispatch to, so `nvcc -std=c++17 -arch=sm_90 -I csrc/cuda -c
// tests/cpp/cuda_kernels_compile_check.cu` type-checks and code-generates all of them on a machine
// without a GPU or torch.
#include "kernels/common.cuh"
#include "kernels/dmol.cuh"
#include "kernels/estimators.cuh"
#include "kernels/latent.cuh"
#include "kernels/likelihoods.cuh"
#include "kernels/rng.cuh"

namespace fastelbo {
namespace cuda {

// (storage S, compute T): float, double, and the half types computed in float.
#define FE_FOR_EACH_FLOAT(X) X(float, float) X(double, double) X(__half, float) X(__nv_bfloat16, float)

#define FE_LATENT(S, T)                                                        \
  template __global__ void gaussian_latent_forward_kernel<S, T>(const LatentFwdParams<S, T>); \
  template __global__ void gaussian_latent_backward_kernel<S, T>(const LatentBwdParams<S, T>); \
  template __global__ void gaussian_kl_forward_kernel<S, T>(const KlFwdParams<S, T>);         \
  template __global__ void gaussian_kl_backward_kernel<S, T>(const KlBwdParams<S, T>);
FE_FOR_EACH_FLOAT(FE_LATENT)

// x / data storage X of the binary and Gaussian likelihoods: uint8_t (bool, uint8), S, or float.
#define FE_LIKELIHOOD_X(S, X, T)                                                               \
  template __global__ void binary_log_prob_kernel<S, X, T>(const BinaryParams<S, X, T>);     \
  template __global__ void gaussian_log_prob_kernel<S, X, T>(const GaussianParams<S, X, T>);
#define FE_LIKELIHOOD(S, T) FE_LIKELIHOOD_X(S, uint8_t, T) FE_LIKELIHOOD_X(S, S, T)
FE_FOR_EACH_FLOAT(FE_LIKELIHOOD)
FE_LIKELIHOOD_X(__half, float, float)
FE_LIKELIHOOD_X(__nv_bfloat16, float, float)

#define FE_GAUSSIAN_BWD(V, T) \
  template __global__ void gaussian_log_prob_bwd_kernel<V, T>(const GaussianBwdParams<V, T>);
FE_FOR_EACH_FLOAT(FE_GAUSSIAN_BWD)

#define FE_CATEGORICAL_I(S, I, T) \
  template __global__ void categorical_log_prob_kernel<S, I, T>(const CategoricalParams<S, I, T>);
#define FE_CATEGORICAL(S, T)                                                                   \
  FE_CATEGORICAL_I(S, uint8_t, T) FE_CATEGORICAL_I(S, int8_t, T) FE_CATEGORICAL_I(S, int16_t, T) \
  FE_CATEGORICAL_I(S, int32_t, T) FE_CATEGORICAL_I(S, int64_t, T)
FE_FOR_EACH_FLOAT(FE_CATEGORICAL)

// The discretized logistic mixture: x read as S or cast to the compute type T.
#define FE_DMOL_X(S, X, T) template __global__ void dmol_log_prob_kernel<S, X, T>(const DmolParams<S, X, T>);
#define FE_DMOL(S, T) FE_DMOL_X(S, S, T)
FE_FOR_EACH_FLOAT(FE_DMOL)
FE_DMOL_X(__half, float, float)
FE_DMOL_X(__nv_bfloat16, float, float)
template __global__ void dmol_sum_partials_kernel<float>(const float*, float*, int64_t, int64_t);
template __global__ void dmol_sum_partials_kernel<double>(const double*, double*, int64_t, int64_t);

template __global__ void elbo_kernel<float>(const EstimateParams<float>);
template __global__ void elbo_kernel<double>(const EstimateParams<double>);
template __global__ void normal_noise_kernel<float>(const NormalNoiseParams<float>);
template __global__ void normal_noise_kernel<double>(const NormalNoiseParams<double>);
template __global__ void philox_words_kernel<int64_t>(const PhiloxWordsParams<int64_t>);

// The launch geometry is host code too.
static_assert(kBlock % 32 == 0, "whole warps");

}  // namespace cuda
}  // namespace fastelbo
