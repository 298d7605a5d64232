// The CUDA kernels of the fastelbo ops (schemas: csrc/binding/schema.cpp).
#include <torch/library.h>

#include "ops.h"

// Built by nvcc, these are the default overload's CUDA kernels. Built for the CPU simulator
// (csrc/cuda_sim/, FASTELBO_CUDA_SIM defined), the same bindings are the `.cuda_sim` overload's
// kernels for CPU tensors (its schemas and autograd: fastelbo/cpp_backend/cuda_sim.py).
#ifdef FASTELBO_CUDA_SIM
#define FE_CUDA_KEY CPU
#define FE_CUDA_OP(name) name ".cuda_sim"
#else
#define FE_CUDA_KEY CUDA
#define FE_CUDA_OP(name) name
#endif

TORCH_LIBRARY_IMPL(fastelbo, FE_CUDA_KEY, m) {
  using namespace fastelbo::cuda;
  m.impl(FE_CUDA_OP("gaussian_latent"), &gaussian_latent_cuda);
  m.impl(FE_CUDA_OP("gaussian_latent_backward"), &gaussian_latent_backward_cuda);
  m.impl(FE_CUDA_OP("gaussian_kl"), &gaussian_kl_cuda);
  m.impl(FE_CUDA_OP("gaussian_kl_backward"), &gaussian_kl_backward_cuda);
  m.impl(FE_CUDA_OP("bernoulli_log_prob"), &bernoulli_log_prob_cuda);
  m.impl(FE_CUDA_OP("continuous_bernoulli_log_prob"), &continuous_bernoulli_log_prob_cuda);
  m.impl(FE_CUDA_OP("gaussian_log_prob"), &gaussian_log_prob_cuda);
  m.impl(FE_CUDA_OP("gaussian_log_prob_backward"), &gaussian_log_prob_backward_cuda);
  m.impl(FE_CUDA_OP("categorical_log_prob"), &categorical_log_prob_cuda);
  m.impl(FE_CUDA_OP("discretized_logistic_mixture_log_prob"), &discretized_logistic_mixture_log_prob_cuda);
  m.impl(FE_CUDA_OP("elbo"), &elbo_cuda);
  m.impl(FE_CUDA_OP("normal_noise"), &normal_noise_cuda);
  m.impl(FE_CUDA_OP("philox_words"), &philox_words_cuda);
}
