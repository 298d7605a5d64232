// The CUDA kernels of the fastelbo ops (schemas: csrc/binding/schema.cpp).
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY_IMPL(fastelbo, CUDA, m) {
  using namespace fastelbo::cuda;
  m.impl("latent", &latent_cuda);
  m.impl("latent_backward", &latent_backward_cuda);
  m.impl("kl", &kl_cuda);
  m.impl("kl_backward", &kl_backward_cuda);
  m.impl("binary_log_prob", &binary_log_prob_cuda);
  m.impl("gaussian_log_prob", &gaussian_log_prob_cuda);
  m.impl("gaussian_log_prob_backward", &gaussian_log_prob_backward_cuda);
  m.impl("categorical_log_prob", &categorical_log_prob_cuda);
  m.impl("estimate", &estimate_cuda);
  m.impl("normal_noise", &normal_noise_cuda);
  m.impl("philox_words", &philox_words_cuda);
}
