// The CPU kernels of the operators defined in csrc/binding/schema.cpp.
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY_IMPL(fastelbo, CPU, m) {
  m.impl("latent", &fastelbo::latent_cpu);
  m.impl("latent_backward", &fastelbo::latent_backward_cpu);
  m.impl("kl", &fastelbo::kl_cpu);
  m.impl("kl_backward", &fastelbo::kl_backward_cpu);
  m.impl("binary_log_prob", &fastelbo::binary_log_prob_cpu);
  m.impl("gaussian_log_prob", &fastelbo::gaussian_log_prob_cpu);
  m.impl("gaussian_log_prob_backward", &fastelbo::gaussian_log_prob_backward_cpu);
  m.impl("categorical_log_prob", &fastelbo::categorical_log_prob_cpu);
  m.impl("estimate", &fastelbo::estimate_cpu);
  m.impl("normal_noise", &fastelbo::normal_noise_cpu);
  m.impl("philox_words", &fastelbo::philox_words_cpu);
}
