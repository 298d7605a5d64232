// The operator schemas of the C++ kernels: one definition per op, named as the public function
// (fastelbo.gaussian_latent -> fastelbo::gaussian_latent, ...), a CPU kernel for each
// (csrc/cpu/register.cpp), a CUDA kernel for each (csrc/cuda/register.cu), and the autograd of each
// at the Autograd key (csrc/binding/autograd.cpp: device-independent, so the CUDA library shares
// it). The Triton backend registers its kernels as the `.triton` overload of the same ops, with the
// same schema (fastelbo/triton_backend/); each op's module in fastelbo/ops/ holds its schema
// string, its fake and its gradient rules, and tests/test_op_schemas.py checks that the two agree.
//
// Conventions:
//   param: 0 logvar, 1 log_std, 2 softplus.  The seed is the int64 0-dim device tensor of
//   fastelbo.rng.draw_seed (read by the kernel, never by the host); absent optional gradients
//   are empty tensors. Outputs that are log-densities are float32 (float64 for float64 inputs);
//   z and gradients take their inputs' dtypes.
//
// gaussian_latent:   (stl only matters to the backward; autograd reads it from here)
//                    z (K, *mu.shape), log_q (K, *batch), log_p (K, *batch), kl (*batch) for
//                    n_samples = K >= 1; n_samples = 0 is one sample without the sample dim
//                    (z of mu's shape, log_q and log_p (*batch); eps then has mu's shape). The
//                    event dims are mu's last event_dims dims (batch = the others), taken as one
//                    dim of their product (csrc/binding/event_dims.h)
// gaussian_latent_backward: grad_mu, grad_scale, grad_prior_mu (prior_mu's shape), grad_prior_scale
// gaussian_kl:       (*batch) or per_dim (*mu.shape);  gaussian_kl_backward: as gaussian_latent_backward
// bernoulli_log_prob, continuous_bernoulli_log_prob:
//                    (out (*batch), grad_logits buffer (logits' shape, compute dtype) or empty); the
//                    buffer is expected_grad d out/d logits, expected_grad being the gradient the
//                    caller expects every row of out to receive (fe.ELBO and fe.vae_loss know it:
//                    the loss's), so that a backward receiving exactly it can hand the buffer over as
//                    the logits' gradient, without a pass (csrc/binding/autograd.cpp)
// gaussian_log_prob: (out, grad_mean buffer (mean's shape, compute dtype) or empty), the buffer
//                    expected_grad d out/d mean, as the binary likelihoods'
// gaussian_log_prob_backward(grad_out, grad_mean_buffer, logvar?, ..., expected_grad, need_mean):
//                    (grad_mean = grad_out / expected_grad * buffer (compute dtype, mean's shape), or
//                     empty without need_mean (the caller hands the buffer over itself),
//                     grad_logvar = sum of grad_out ((b e^(v/2))^2 - 1)/2, b = buffer / expected_grad, in
//                     logvar's shape and dtype, or empty without a logvar tensor or need_logvar)
// categorical_log_prob: (out (*batch), grad_logits buffer or empty)
// discretized_logistic_mixture_log_prob: params (..., 10 n_mix) and x (..., 3) with the channel dim
//                    last (any strides); (out (params' batch shape), grad_params buffer (empty_like
//                    params, compute dtype) or empty)
// elbo:              (value (*batch), weights w~ (K, *batch) for mode 2, else empty); log_lik, log_q,
//                    log_p (K, *batch), or (*batch) without a sample dim in modes 0 and 1
// normal_noise:      eps (K, R, D) in float32 or float64;  philox_words: (4, n) int64 words
//
// The *_backward_differentiable ops are the second-order path of the autograd (autograd.cpp): its
// backward calls them instead of the kernels when the backward itself is recorded
// (create_graph=True: grad mode is on inside it) or a gradient buffer has a gradient of its own.
// They are CompositeImplicitAutograd, implemented in Python by each op's module (fastelbo/ops/) in
// torch ops, so autograd records them and higher derivatives are exact. Each returns the gradients
// of the op's differentiable inputs, an undefined tensor (None) for those not in `needs` or
// without a gradient:
//   gaussian_latent_backward_differentiable: (mu, scale, prior_mu, prior_scale), by the reference
//   gaussian_kl_backward_differentiable:     (mu, scale, prior_mu, prior_scale), by the reference
//   bernoulli_log_prob_backward_differentiable: (logits, x): g b + (d b/d l) u in b itself (b the
//       buffer over its expected_grad)
//   continuous_bernoulli_log_prob_backward_differentiable: (logits, x), the reference from the kept logits
//   gaussian_log_prob_backward_differentiable: (mean, x, logvar) in torch ops on b
//   categorical_log_prob_backward_differentiable: logits: g b + the softmax Jacobian in b
//   discretized_logistic_mixture_log_prob_backward_differentiable: params, by the reference
//   elbo_backward_differentiable: (log_lik, log_q, log_p) of the IWAE (mode 2), by the reference
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastelbo, m) {
  m.def(
      "gaussian_latent(Tensor mu, Tensor scale, Tensor? prior_mu, Tensor? prior_scale, Tensor? eps, Tensor? seed, "
      "int param, int n_samples, bool stl, int event_dims=1) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "gaussian_latent_backward(Tensor? grad_z, Tensor? grad_log_q, Tensor? grad_log_p, Tensor? grad_kl, Tensor mu, "
      "Tensor scale, Tensor? prior_mu, Tensor? prior_scale, Tensor? eps, Tensor? seed, int param, int n_samples, "
      "bool stl, int event_dims=1) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("gaussian_kl(Tensor mu, Tensor scale, Tensor? prior_mu, Tensor? prior_scale, int param, bool per_dim) -> Tensor");
  m.def(
      "gaussian_kl_backward(Tensor grad, Tensor mu, Tensor scale, Tensor? prior_mu, Tensor? prior_scale, int param, "
      "bool per_dim) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "bernoulli_log_prob(Tensor logits, Tensor x, int event_dims, bool need_grad, float expected_grad=1.0) "
      "-> (Tensor, Tensor)");
  m.def(
      "continuous_bernoulli_log_prob(Tensor logits, Tensor x, int event_dims, bool need_grad, float expected_grad=1.0) "
      "-> (Tensor, Tensor)");
  m.def(
      "gaussian_log_prob(Tensor mean, Tensor x, Tensor? logvar, float logvar_value, int event_dims, "
      "bool need_grad, float expected_grad=1.0) -> (Tensor, Tensor)");
  m.def(
      "gaussian_log_prob_backward(Tensor grad_out, Tensor grad_mean_buffer, Tensor? logvar, float logvar_value, "
      "int event_dims, bool need_logvar, float expected_grad=1.0, bool need_mean=True) -> (Tensor, Tensor)");
  m.def("categorical_log_prob(Tensor logits, Tensor target, int event_dims, bool need_grad) -> (Tensor, Tensor)");
  m.def(
      "discretized_logistic_mixture_log_prob(Tensor params, Tensor x, int n_mix, int bits, int event_dims, "
      "bool need_grad) -> (Tensor, Tensor)");
  m.def("elbo(Tensor log_lik, Tensor log_q, Tensor log_p, Tensor kl, int mode, float beta) -> (Tensor, Tensor)");
  m.def("normal_noise(Tensor seed, int n_samples, int n_rows, int dim, bool float64) -> Tensor");
  m.def("philox_words(Tensor counter, Tensor key) -> Tensor");

  m.def(
      "gaussian_latent_backward_differentiable(Tensor? grad_z, Tensor? grad_log_q, Tensor? grad_log_p, Tensor? grad_kl, "
      "Tensor mu, Tensor scale, Tensor? prior_mu, Tensor? prior_scale, Tensor? eps, Tensor? seed, int param, "
      "int n_samples, bool stl, int event_dims, bool[4] needs) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "gaussian_kl_backward_differentiable(Tensor grad, Tensor mu, Tensor scale, Tensor? prior_mu, Tensor? prior_scale, "
      "int param, bool per_dim, bool[4] needs) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "bernoulli_log_prob_backward_differentiable(Tensor? grad_out, Tensor? grad_buffer, Tensor buffer, "
      "Tensor? logits, Tensor x, int event_dims, ScalarType logits_dtype, float expected_grad, bool[2] needs) "
      "-> (Tensor, Tensor)");
  m.def(
      "continuous_bernoulli_log_prob_backward_differentiable(Tensor? grad_out, Tensor? grad_buffer, Tensor buffer, "
      "Tensor? logits, Tensor x, int event_dims, ScalarType logits_dtype, float expected_grad, bool[2] needs) "
      "-> (Tensor, Tensor)");
  m.def(
      "gaussian_log_prob_backward_differentiable(Tensor? grad_out, Tensor? grad_buffer, Tensor buffer, "
      "Tensor? logvar, float logvar_value, int event_dims, ScalarType mean_dtype, SymInt[] x_shape, "
      "ScalarType x_dtype, float expected_grad, bool[3] needs) -> (Tensor, Tensor, Tensor)");
  m.def(
      "categorical_log_prob_backward_differentiable(Tensor? grad_out, Tensor? grad_buffer, Tensor buffer, "
      "Tensor target, int event_dims, ScalarType logits_dtype) -> Tensor");
  m.def(
      "discretized_logistic_mixture_log_prob_backward_differentiable(Tensor grad_out, Tensor params, Tensor x, "
      "int n_mix, int bits, int event_dims) -> Tensor");
  m.def(
      "elbo_backward_differentiable(Tensor grad, Tensor log_lik, Tensor log_q, Tensor log_p, bool[3] needs) "
      "-> (Tensor, Tensor, Tensor)");
}
