// The CUDA implementations of the fastelbo ops (schemas: csrc/binding/schema.cpp), registered for
// the CUDA dispatch key in csrc/cuda/register.cu.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace fastelbo {
namespace cuda {

using Tensor = at::Tensor;
using OptTensor = std::optional<at::Tensor>;
using Tensor2 = std::tuple<at::Tensor, at::Tensor>;
using Tensor4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Tensor5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// csrc/cuda/latent.cu
Tensor5 gaussian_latent_cuda(const Tensor& mu, const Tensor& scale, const OptTensor& prior_mu,
                             const OptTensor& prior_scale, const OptTensor& eps, const OptTensor& seed, int64_t param,
                             int64_t n_samples, bool stl, int64_t event_dims);
Tensor4 gaussian_latent_backward_cuda(const OptTensor& grad_z, const OptTensor& grad_log_q, const OptTensor& grad_log_p,
                                      const OptTensor& grad_kl, const Tensor& mu, const Tensor& scale,
                                      const OptTensor& prior_mu, const OptTensor& prior_scale, const OptTensor& eps,
                                      const OptTensor& seed, int64_t param, int64_t n_samples, bool stl,
                                      int64_t event_dims);
Tensor gaussian_kl_cuda(const Tensor& mu, const Tensor& scale, const OptTensor& prior_mu, const OptTensor& prior_scale,
                        int64_t param, bool per_dim);
Tensor4 gaussian_kl_backward_cuda(const Tensor& grad, const Tensor& mu, const Tensor& scale, const OptTensor& prior_mu,
                                  const OptTensor& prior_scale, int64_t param, bool per_dim);

// csrc/cuda/likelihoods.cu
Tensor2 bernoulli_log_prob_cuda(const Tensor& logits, const Tensor& x, int64_t event_dims, bool need_grad,
                                double expected_grad);
Tensor2 continuous_bernoulli_log_prob_cuda(const Tensor& logits, const Tensor& x, int64_t event_dims, bool need_grad,
                                           double expected_grad);
Tensor2 gaussian_log_prob_cuda(const Tensor& mean, const Tensor& x, const OptTensor& logvar, double logvar_value,
                               int64_t event_dims, bool need_grad, double expected_grad);
Tensor2 gaussian_log_prob_backward_cuda(const Tensor& grad_out, const Tensor& grad_mean_buffer, const OptTensor& logvar,
                                        double logvar_value, int64_t event_dims, bool need_logvar,
                                        double expected_grad, bool need_mean);
Tensor2 categorical_log_prob_cuda(const Tensor& logits, const Tensor& target, int64_t event_dims, bool need_grad);

// csrc/cuda/dmol.cu
Tensor2 discretized_logistic_mixture_log_prob_cuda(const Tensor& params, const Tensor& x, int64_t n_mix, int64_t bits,
                                                   int64_t event_dims, bool need_grad);

// csrc/cuda/estimators.cu
Tensor2 elbo_cuda(const Tensor& log_lik, const Tensor& log_q, const Tensor& log_p, const Tensor& kl, int64_t mode,
                  double beta);

// csrc/cuda/rng.cu
Tensor normal_noise_cuda(const Tensor& seed, int64_t n_samples, int64_t n_rows, int64_t dim, bool float64);
Tensor philox_words_cuda(const Tensor& counter, const Tensor& key);

}  // namespace cuda
}  // namespace fastelbo
