// The CPU kernels of the operators defined in csrc/binding/schema.cpp.
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY_IMPL(fastelbo, CPU, m) {
  m.impl("gaussian_latent", &fastelbo::gaussian_latent_cpu);
  m.impl("gaussian_latent_backward", &fastelbo::gaussian_latent_backward_cpu);
  m.impl("gaussian_kl", &fastelbo::gaussian_kl_cpu);
  m.impl("gaussian_kl_backward", &fastelbo::gaussian_kl_backward_cpu);
  m.impl("bernoulli_log_prob", &fastelbo::bernoulli_log_prob_cpu);
  m.impl("continuous_bernoulli_log_prob", &fastelbo::continuous_bernoulli_log_prob_cpu);
  m.impl("gaussian_log_prob", &fastelbo::gaussian_log_prob_cpu);
  m.impl("gaussian_log_prob_backward", &fastelbo::gaussian_log_prob_backward_cpu);
  m.impl("categorical_log_prob", &fastelbo::categorical_log_prob_cpu);
  m.impl("discretized_logistic_mixture_log_prob", &fastelbo::discretized_logistic_mixture_log_prob_cpu);
  m.impl("elbo", &fastelbo::elbo_cpu);
  m.impl("normal_noise", &fastelbo::normal_noise_cpu);
  m.impl("philox_words", &fastelbo::philox_words_cpu);
}
