// The CUDA kernels of the fastelbo ops (schemas: csrc/binding/schema.cpp).
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY_IMPL(fastelbo, CUDA, m) {
  using namespace fastelbo::cuda;
  m.impl("gaussian_latent", &gaussian_latent_cuda);
  m.impl("gaussian_latent_backward", &gaussian_latent_backward_cuda);
  m.impl("gaussian_kl", &gaussian_kl_cuda);
  m.impl("gaussian_kl_backward", &gaussian_kl_backward_cuda);
  m.impl("bernoulli_log_prob", &bernoulli_log_prob_cuda);
  m.impl("continuous_bernoulli_log_prob", &continuous_bernoulli_log_prob_cuda);
  m.impl("gaussian_log_prob", &gaussian_log_prob_cuda);
  m.impl("gaussian_log_prob_backward", &gaussian_log_prob_backward_cuda);
  m.impl("categorical_log_prob", &categorical_log_prob_cuda);
  m.impl("discretized_logistic_mixture_log_prob", &discretized_logistic_mixture_log_prob_cuda);
  m.impl("elbo", &elbo_cuda);
  m.impl("normal_noise", &normal_noise_cuda);
  m.impl("philox_words", &philox_words_cuda);
}
