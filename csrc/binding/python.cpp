// Typed Python bindings of the forward ops that the public functions call once per step: the same
// dispatcher ops as torch.ops.fastelbo.<op>.default (op_handles.h), called unboxed, as ATen's
// generated Python bindings call the native ops. torch.ops' generic path converts every argument
// to an IValue on a stack, looks for __torch_function__ overrides, and calls the op boxed: about
// 1.5 us of a small call (at 256 x 8, the latent op took 8.2 us through it, 6.7 us through this).
// fastelbo/ops/_cpp_calls.py chooses between the two per call: these in eager mode on tensors
// without __torch_function__, torch.ops (which handles those, and which torch.compile traces)
// otherwise. The GIL is released during the call, as torch.ops and ATen's bindings release it.
//
// This file is the library's Python module (PyInit_<library name>, named by torch's build with
// TORCH_EXTENSION_NAME); torch.ops.load_library loads the same file for its operators.
#include <torch/extension.h>

#include "front_door.h"
#include "op_handles.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace fastelbo::ops;
  namespace py = pybind11;
  const auto release = py::call_guard<py::gil_scoped_release>();
  m.doc() = "fastelbo's C++ ops, called without torch.ops' boxed path (csrc/binding/python.cpp)";
  m.def(
      "gaussian_latent",
      [](const Tensor& mu, const Tensor& scale, const OptTensor& prior_mu, const OptTensor& prior_scale,
         const OptTensor& eps, const OptTensor& seed, int64_t param, int64_t n_samples, bool stl, int64_t event_dims) {
        return gaussian_latent_op().call(mu, scale, prior_mu, prior_scale, eps, seed, param, n_samples, stl,
                                         event_dims);
      },
      release);
  m.def(
      "gaussian_kl",
      [](const Tensor& mu, const Tensor& scale, const OptTensor& prior_mu, const OptTensor& prior_scale, int64_t param,
         bool per_dim) { return gaussian_kl_op().call(mu, scale, prior_mu, prior_scale, param, per_dim); },
      release);
  m.def(
      "bernoulli_log_prob",
      [](const Tensor& logits, const Tensor& x, int64_t event_dims, bool need_grad, double expected_grad) {
        return bernoulli_op().call(logits, x, event_dims, need_grad, expected_grad);
      },
      release);
  m.def(
      "continuous_bernoulli_log_prob",
      [](const Tensor& logits, const Tensor& x, int64_t event_dims, bool need_grad, double expected_grad) {
        return continuous_bernoulli_op().call(logits, x, event_dims, need_grad, expected_grad);
      },
      release);
  m.def(
      "gaussian_log_prob",
      [](const Tensor& mean, const Tensor& x, const OptTensor& logvar, double logvar_value, int64_t event_dims,
         bool need_grad, double expected_grad) {
        return gaussian_op().call(mean, x, logvar, logvar_value, event_dims, need_grad, expected_grad);
      },
      release);
  m.def(
      "categorical_log_prob",
      [](const Tensor& logits, const Tensor& target, int64_t event_dims, bool need_grad) {
        return categorical_op().call(logits, target, event_dims, need_grad);
      },
      release);
  m.def(
      "elbo",
      [](const Tensor& log_lik, const Tensor& log_q, const Tensor& log_p, const Tensor& kl, int64_t mode, double beta) {
        return elbo_op().call(log_lik, log_q, log_p, kl, mode, beta);
      },
      release);
  fastelbo::front_door::add_to(m.ptr());
}
