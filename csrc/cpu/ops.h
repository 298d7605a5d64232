// The CPU implementations of the operators of csrc/binding/schema.cpp.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace fastelbo {

using OptionalTensor = c10::optional<at::Tensor>;

// z, log q, log p, KL and the seed the op drew (seed and eps both absent: from the default CPU
// generator, as fastelbo.rng.draw_seed draws it), or an empty tensor when the caller passed one.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gaussian_latent_cpu(
    const at::Tensor& mu, const at::Tensor& scale, const OptionalTensor& prior_mu, const OptionalTensor& prior_scale,
    const OptionalTensor& eps, const OptionalTensor& seed, int64_t param, int64_t n_samples, bool stl,
    int64_t event_dims);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gaussian_latent_backward_cpu(
    const OptionalTensor& grad_z, const OptionalTensor& grad_log_q, const OptionalTensor& grad_log_p,
    const OptionalTensor& grad_kl, const at::Tensor& mu, const at::Tensor& scale, const OptionalTensor& prior_mu,
    const OptionalTensor& prior_scale, const OptionalTensor& eps, const OptionalTensor& seed, int64_t param,
    int64_t n_samples, bool stl, int64_t event_dims);

at::Tensor gaussian_kl_cpu(const at::Tensor& mu, const at::Tensor& scale, const OptionalTensor& prior_mu,
                           const OptionalTensor& prior_scale, int64_t param, bool per_dim);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gaussian_kl_backward_cpu(
    const at::Tensor& grad, const at::Tensor& mu, const at::Tensor& scale, const OptionalTensor& prior_mu,
    const OptionalTensor& prior_scale, int64_t param, bool per_dim);

std::tuple<at::Tensor, at::Tensor> bernoulli_log_prob_cpu(const at::Tensor& logits, const at::Tensor& x,
                                                          int64_t event_dims, bool need_grad, double expected_grad);
std::tuple<at::Tensor, at::Tensor> continuous_bernoulli_log_prob_cpu(const at::Tensor& logits, const at::Tensor& x,
                                                                     int64_t event_dims, bool need_grad,
                                                                     double expected_grad);

std::tuple<at::Tensor, at::Tensor> gaussian_log_prob_cpu(const at::Tensor& mean, const at::Tensor& x,
                                                         const OptionalTensor& logvar, double logvar_value,
                                                         int64_t event_dims, bool need_grad, double expected_grad);

std::tuple<at::Tensor, at::Tensor> gaussian_log_prob_backward_cpu(const at::Tensor& grad_out, const at::Tensor& buffer,
                                                                  const OptionalTensor& logvar, double logvar_value,
                                                                  int64_t event_dims, bool need_logvar,
                                                                  double expected_grad, bool need_mean);

std::tuple<at::Tensor, at::Tensor> categorical_log_prob_cpu(const at::Tensor& logits, const at::Tensor& target,
                                                            int64_t event_dims, bool need_grad);

std::tuple<at::Tensor, at::Tensor> discretized_logistic_mixture_log_prob_cpu(const at::Tensor& params,
                                                                             const at::Tensor& x, int64_t n_mix,
                                                                             int64_t bits, int64_t event_dims,
                                                                             bool need_grad);

std::tuple<at::Tensor, at::Tensor> elbo_cpu(const at::Tensor& log_lik, const at::Tensor& log_q, const at::Tensor& log_p,
                                            const at::Tensor& kl, int64_t mode, double beta);

at::Tensor normal_noise_cpu(const at::Tensor& seed, int64_t n_samples, int64_t n_rows, int64_t dim, bool float64);

at::Tensor philox_words_cpu(const at::Tensor& counter, const at::Tensor& key);

}  // namespace fastelbo
