// The autograd of the fastelbo operators (schemas: schema.cpp), in C++ at the Autograd dispatch key,
// as PyTorch's generated autograd kernels are written: each differentiable op's Autograd kernel makes
// a graph node (node.h), calls the op below autograd (the CPU or the CUDA kernel), sets the node as
// its outputs' history and saves what the backward needs; the node's backward (the Op's `backward`
// below) calls the backward kernels. The Autograd key is device-independent, so
// the CUDA library (loaded after this one) gets the same autograd. The fakes stay in Python
// (register_fake from each op's module in fastelbo/ops/), so torch.compile traces these ops.
//
// First order is C++ only (no Python): the formulas of the ops' modules (fastelbo/ops/), ported.
//   gaussian_latent, gaussian_kl: their *_backward kernels
//   (continuous_)bernoulli_log_prob: grad_logits = (g / c) b (b = c d out/d logits, the op's buffer, c its
//                      expected_grad), or b itself where g == c (hand_over), grad_x = g logits
//   gaussian_log_prob: the gaussian_log_prob_backward kernel (grad_mean, grad_logvar; grad_mean the
//                      buffer itself where g == c, as the binary ones'), grad_x = -grad_mean
//   categorical:       grad_logits = g b
//   discretized_logistic_mixture: grad_params = g b
//   elbo:              mode 0 (elbo, MC KL), 1 (elbo, analytic KL), 2 (iwae: g w~)
// Gradients go only to the inputs that need them, and undefined incoming gradients stay undefined
// (no buffer is ever zero-filled).
//
// Second order. When the backward itself is recorded (create_graph=True: grad mode is on inside
// it), or a gradient buffer b has a gradient of its own (the backward of a recorded backward), the
// backward calls the op's `*_backward_differentiable` composite op instead (schema.cpp), which
// Python implements as CompositeImplicitAutograd with the rules of the ops' modules: autograd
// records what it does, so higher derivatives are exact. The Bernoulli, Gaussian and categorical
// buffers b are differentiable outputs, which the node saves as its outputs, so the b
// unpacked in a recorded backward carries this node's graph: g b is recorded on b, and its
// derivative comes back here with a gradient for b (answered by the closed forms of d b/d params).
// The latent, the KL, the continuous Bernoulli (b outside the graph, its logits kept) and the
// IWAE recompute their gradient with the reference implementation under autograd.
//
// The backward kernels (gaussian_latent_backward, gaussian_kl_backward, gaussian_log_prob_backward) have an Autograd
// kernel too, so PyTorch's "not registered to the Autograd key" fallback never runs: it calls the
// kernel below autograd, and is an error if asked to record a graph through it.
#include <ATen/SavedTensorHooks.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "node.h"
#include "op_handles.h"

namespace fastelbo {
namespace {

using at::Tensor;
using torch::autograd::variable_list;
using namespace ops;  // the op handles and tuple types (op_handles.h): gaussian_latent_op(), Tensor5, ...

// ---- helpers ----

OptTensor opt(const Tensor& t) {
  return t.defined() ? OptTensor(t) : std::nullopt;
}

Tensor or_undefined(const OptTensor& t) {
  return t.has_value() ? *t : Tensor();
}

Tensor if_needed(bool needed, const Tensor& t) {
  return needed ? t : Tensor();
}

bool requires_grad(const Tensor& t) {
  return t.defined() && t.requires_grad();
}

bool requires_grad(const OptTensor& t) {
  return t.has_value() && requires_grad(*t);
}

bool has_tangent(const Tensor& t) {
  return t.defined() && t._fw_grad(/*level=*/0).defined();
}

bool has_tangent(const OptTensor& t) {
  return t.has_value() && has_tangent(*t);
}

// Whether autograd records the call: otherwise the op runs below autograd directly, without a graph
// node. The ops have no forward-mode derivative: an argument carrying a tangent (a dual tensor of
// torch.autograd.forward_ad) is an error, never a result without its tangent.
template <typename... T>
bool recording(const char* op, const T&... tensors) {
  TORCH_CHECK(!(has_tangent(tensors) || ...), "fastelbo::", op,
              " has no forward-mode derivative (jvp): a tangent would be lost; the reference backend has one");
  return at::GradMode::is_enabled() && (requires_grad(tensors) || ...);
}

// A dtype kept among a node's constants (an int IValue), and read back.
c10::IValue dtype_constant(const Tensor& t) {
  return static_cast<int64_t>(t.scalar_type());
}

at::ScalarType dtype_of(const c10::IValue& constant) {
  return static_cast<at::ScalarType>(constant.toInt());
}

// call() run below autograd: the op's CPU or CUDA kernel, no graph node.
template <typename Call>
auto below_autograd(const Call& call) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return call();
}

// t reshaped with `n` trailing 1s: a per-row gradient broadcast over the event dims.
Tensor expand_events(const Tensor& t, int64_t n) {
  c10::SymDimVector shape(t.sym_sizes().begin(), t.sym_sizes().end());
  shape.resize(shape.size() + n, c10::SymInt(1));
  return t.reshape_symint(shape);
}

bool second_order(const Tensor& grad_buffer) {
  return at::GradMode::is_enabled() || grad_buffer.defined();
}

// The gradient of the buffer: only where it is an output.
Tensor buffer_grad(const variable_list& grads) {
  return grads.size() > 1 ? grads[1] : Tensor();
}

// A likelihood's outputs (out, buffer) on its node: out differentiable, the buffer too where
// `differentiable` (its gradient then comes back from a recorded backward); the buffer is saved first.
template <class Op>
void record_with_buffer(Recording<Op>& node, const Tensor2& out, bool differentiable) {
  if (differentiable) {
    node.outputs({std::get<0>(out), std::get<1>(out)});
  } else {
    node.outputs({std::get<0>(out)});
  }
  node.save(0, std::get<1>(out), differentiable);
}

// ---- latent ----

struct GaussianLatentOp {
  static constexpr const char* kName = "GaussianLatentBackward";
  static constexpr size_t kInputs = 4;     // mu, scale, prior_mu, prior_scale
  static constexpr size_t kSaved = 6;      // the four, eps, seed
  static constexpr size_t kConstants = 4;  // param, n_samples, stl, event_dims

  static variable_list backward(const variable_list& saved, const Constants<GaussianLatentOp>& c,
                                const variable_list& grads, const Needs<GaussianLatentOp>& needs) {
    const Tensor &mu = saved[0], &scale = saved[1], &prior_mu = saved[2], &prior_scale = saved[3];
    const Tensor &eps = saved[4], &seed = saved[5];
    const int64_t param = c[0].toInt(), n_samples = c[1].toInt(), event_dims = c[3].toInt();
    const bool stl = c[2].toBool();
    Tensor4 result;
    if (at::GradMode::is_enabled()) {
      result = gaussian_latent_backward_differentiable_op().call(
          opt(grads[0]), opt(grads[1]), opt(grads[2]), opt(grads[3]), mu, scale, opt(prior_mu), opt(prior_scale),
          opt(eps), opt(seed), param, n_samples, stl, event_dims, needs);
    } else {
      at::AutoDispatchBelowADInplaceOrView guard;
      result = gaussian_latent_backward_op().call(opt(grads[0]), opt(grads[1]), opt(grads[2]), opt(grads[3]), mu,
                                                  scale, opt(prior_mu), opt(prior_scale), opt(eps), opt(seed), param,
                                                  n_samples, stl, event_dims);
    }
    return {if_needed(needs[0], std::get<0>(result)), if_needed(needs[1], std::get<1>(result)),
            if_needed(needs[2], std::get<2>(result)), if_needed(needs[3], std::get<3>(result))};
  }
};

Tensor5 gaussian_latent_autograd(const Tensor& mu, const Tensor& scale, const OptTensor& prior_mu,
                                 const OptTensor& prior_scale, const OptTensor& eps, const OptTensor& seed,
                                 int64_t param, int64_t n_samples, bool stl, int64_t event_dims) {
  const auto call = [&] {
    return gaussian_latent_op().call(mu, scale, prior_mu, prior_scale, eps, seed, param, n_samples, stl, event_dims);
  };
  if (!recording("gaussian_latent", mu, scale, prior_mu, prior_scale, eps, seed)) {
    return below_autograd(call);
  }
  Recording<GaussianLatentOp> node(mu, scale, prior_mu, prior_scale);
  Tensor5 out = below_autograd(call);
  node.outputs({std::get<0>(out), std::get<1>(out), std::get<2>(out), std::get<3>(out)});
  // The backward regenerates eps from the seed: the caller's, or the one the op drew (its fifth output,
  // int64: no gradient).
  const Tensor& drawn = std::get<4>(out);
  node.save(0, mu);
  node.save(1, scale);
  node.save(2, or_undefined(prior_mu));
  node.save(3, or_undefined(prior_scale));
  node.save(4, or_undefined(eps));
  node.save(5, drawn.numel() == 1 ? drawn : or_undefined(seed));
  node.constants() = {param, n_samples, stl, event_dims};
  return out;
}

// ---- analytic KL ----

struct GaussianKlOp {
  static constexpr const char* kName = "GaussianKlBackward";
  static constexpr size_t kInputs = 4;     // mu, scale, prior_mu, prior_scale
  static constexpr size_t kSaved = 4;      // the same
  static constexpr size_t kConstants = 2;  // param, per_dim

  static variable_list backward(const variable_list& saved, const Constants<GaussianKlOp>& c,
                                const variable_list& grads, const Needs<GaussianKlOp>& needs) {
    const Tensor& grad = grads[0];
    if (!grad.defined()) {
      return {Tensor(), Tensor(), Tensor(), Tensor()};
    }
    const Tensor &mu = saved[0], &scale = saved[1], &prior_mu = saved[2], &prior_scale = saved[3];
    const int64_t param = c[0].toInt();
    const bool per_dim = c[1].toBool();
    Tensor4 result;
    if (at::GradMode::is_enabled()) {
      result = gaussian_kl_backward_differentiable_op().call(grad, mu, scale, opt(prior_mu), opt(prior_scale), param,
                                                             per_dim, needs);
    } else {
      at::AutoDispatchBelowADInplaceOrView guard;
      result = gaussian_kl_backward_op().call(grad, mu, scale, opt(prior_mu), opt(prior_scale), param, per_dim);
    }
    return {if_needed(needs[0], std::get<0>(result)), if_needed(needs[1], std::get<1>(result)),
            if_needed(needs[2], std::get<2>(result)), if_needed(needs[3], std::get<3>(result))};
  }
};

Tensor gaussian_kl_autograd(const Tensor& mu, const Tensor& scale, const OptTensor& prior_mu,
                            const OptTensor& prior_scale, int64_t param, bool per_dim) {
  const auto call = [&] { return gaussian_kl_op().call(mu, scale, prior_mu, prior_scale, param, per_dim); };
  if (!recording("gaussian_kl", mu, scale, prior_mu, prior_scale)) {
    return below_autograd(call);
  }
  Recording<GaussianKlOp> node(mu, scale, prior_mu, prior_scale);
  Tensor out = below_autograd(call);
  node.outputs({out});
  node.save(0, mu);
  node.save(1, scale);
  node.save(2, or_undefined(prior_mu));
  node.save(3, or_undefined(prior_scale));
  node.constants() = {param, per_dim};
  return out;
}

// ---- Bernoulli and continuous Bernoulli ----
// out = sum x l - (softplus(l) or the continuous Bernoulli's terms); the buffer is c d out/d l with c
// the gradient the caller expects each row to receive (expected_grad, 1 by default), d out/d x = l.
// One node for the two ops (bernoulli_log_prob, continuous_bernoulli_log_prob).

Tensor2 binary_op(const Tensor& logits, const Tensor& x, int64_t event_dims, bool continuous, bool need_grad,
                  double expected_grad) {
  return continuous ? continuous_bernoulli_op().call(logits, x, event_dims, need_grad, expected_grad)
                    : bernoulli_op().call(logits, x, event_dims, need_grad, expected_grad);
}

template <typename T>
bool all_equal(const Tensor& t, double value) {
  const Tensor dense = t.contiguous();  // a per-row gradient: small next to the buffer
  const T* data = dense.const_data_ptr<T>();
  const T target = static_cast<T>(value);
  for (int64_t i = 0, n = dense.numel(); i < n; ++i) {
    if (data[i] != target) return false;
  }
  return true;
}

bool plain_cpu(const Tensor& t) {
  return t.is_cpu() && t.layout() == at::kStrided && t.has_storage() &&
         !t.unsafeGetTensorImpl()->is_python_dispatch();  // not a FakeTensor (torch.compile's tracing)
}

// Saved-tensor hooks (torch.autograd.graph.saved_tensors_hooks, save_on_cpu, checkpointing) are
// given the buffer output itself to pack, and may keep it out of this node's sight: a buffer saved
// under them is never handed over.
bool saved_tensor_hooks_active() {
  return at::SavedTensorDefaultHooks::get_hooks(/*ignore_is_tracing=*/true).has_value();
}

// Whether nothing but this node holds the buffer output it saved (`buffer`: unpacked in its
// backward). An output of the node is saved as a second TensorImpl on the same storage and
// unpacked as a third: the storage has two holders unless the op's caller kept the output (or a
// view of it). (A buffer set aside instead, the continuous Bernoulli's, is saved as itself, among
// holders this cannot tell apart from its caller's: it is never handed over.)
bool only_this_node_holds(const Tensor& buffer) {
  return buffer.storage().use_count() <= 2 && buffer.use_count() == 1;
}

// Whether the backward owns the buffer outright, and may make it the logits' gradient (as it is, or
// scaled in place): a buffer output the forward wrote (need_grad, not under saved-tensor hooks),
// CPU tensors (hand_over reads g without a device sync), the logits in the buffer's dtype (no
// cast), a graph freed after this backward (with retain_graph the buffer serves the next backward
// too, so it must not become a gradient that autograd accumulates into or a user modifies), and no
// holder but this node. The buffer is then the gradient's only owner once the engine releases this
// node's saved tensors, so AccumulateGrad takes it as .grad without a copy.
bool owns_buffer(const Tensor& buffer, bool buffer_output, const Tensor& grad_out, at::ScalarType logits_dtype) {
  return buffer_output && buffer.scalar_type() == logits_dtype && grad_out.scalar_type() == logits_dtype &&
         plain_cpu(buffer) && plain_cpu(grad_out) && !torch::autograd::get_current_graph_task_keep_graph() &&
         only_this_node_holds(buffer);
}

// Whether every row's incoming gradient is exactly expected_grad, so the buffer already is
// g d out/d l, and a product would copy it.
bool is_expected(const Tensor& grad_out, double expected_grad, at::ScalarType logits_dtype) {
  return logits_dtype == at::kDouble ? all_equal<double>(grad_out, expected_grad)
                                     : all_equal<float>(grad_out, expected_grad);
}

// Whether the backward may hand the buffer itself over as the logits' gradient, unscaled.
bool hand_over(const Tensor& buffer, bool buffer_output, const Tensor& grad_out, double expected_grad,
               at::ScalarType logits_dtype) {
  return owns_buffer(buffer, buffer_output, grad_out, logits_dtype) &&
         is_expected(grad_out, expected_grad, logits_dtype);
}

struct BinaryOp {
  static constexpr const char* kName = "BinaryLogProbBackward";
  static constexpr size_t kInputs = 2;     // logits, x
  static constexpr size_t kSaved = 3;      // buffer, logits (where needed), x
  static constexpr size_t kConstants = 5;  // event_dims, continuous, buffer_output, expected_grad, logits dtype

  static variable_list backward(const variable_list& saved, const Constants<BinaryOp>& c, const variable_list& grads,
                                const Needs<BinaryOp>& needs) {
    const Tensor &grad_out = grads[0], grad_buffer = buffer_grad(grads);
    const Tensor &buffer = saved[0], &logits = saved[1], &x = saved[2];
    const int64_t event_dims = c[0].toInt();
    const bool continuous = c[1].toBool(), buffer_output = c[2].toBool();
    const double expected_grad = c[3].toDouble();
    const auto logits_dtype = dtype_of(c[4]);
    const bool needs_logits = needs[0], needs_x = needs[1];
    if (second_order(grad_buffer)) {
      const auto& op = continuous ? continuous_bernoulli_backward_differentiable_op()
                                  : bernoulli_backward_differentiable_op();
      auto [grad_logits, grad_x] = op.call(opt(grad_out), opt(grad_buffer), buffer, opt(logits), x, event_dims,
                                           logits_dtype, expected_grad, needs);
      return {grad_logits, grad_x};
    }
    Tensor grad_logits, grad_x;
    if (grad_out.defined()) {
      const Tensor g = expand_events(grad_out, event_dims);
      if (needs_logits) {
        if (owns_buffer(buffer, buffer_output, grad_out, logits_dtype)) {
          // The buffer as the gradient: as it is, or scaled in place (no new tensor: nothing else holds it).
          grad_logits = buffer.detach();  // (the unpacked buffer has this node as its grad_fn)
          if (!is_expected(grad_out, expected_grad, logits_dtype)) {
            grad_logits.mul_(expected_grad == 1.0 ? g : g.div(expected_grad));
          }
        } else {
          grad_logits = buffer.mul(expected_grad == 1.0 ? g : g.div(expected_grad)).to(logits_dtype);
        }
      }
      if (needs_x) {
        grad_x = logits.mul(g).sum_to_size_symint(x.sym_sizes()).to(x.scalar_type());
      }
    }
    return {grad_logits, grad_x};
  }
};

Tensor2 binary_autograd(const Tensor& logits, const Tensor& x, int64_t event_dims, bool continuous, bool need_grad,
                        double expected_grad) {
  const auto call = [&] { return binary_op(logits, x, event_dims, continuous, need_grad, expected_grad); };
  if (!recording(continuous ? "continuous_bernoulli_log_prob" : "bernoulli_log_prob", logits, x)) {
    return below_autograd(call);
  }
  Recording<BinaryOp> node(logits, x);
  Tensor2 out = below_autograd(call);
  // The Bernoulli's buffer is a differentiable output (its gradient comes back from a recorded
  // backward); the continuous Bernoulli's is not (its second derivative is recomputed from its
  // logits), nor is the empty placeholder of need_grad=False.
  const bool buffer_output = need_grad && !continuous;
  record_with_buffer(node, out, buffer_output);
  // d/dx of x l is l: keep the logits when a float x asks for its gradient, or for the continuous
  // Bernoulli.
  const bool keep_logits = x.requires_grad() || continuous;
  node.save(1, keep_logits ? logits : Tensor());
  node.save(2, x);
  // A buffer output may be handed over (hand_over), unless saved-tensor hooks packed it.
  node.constants() = {event_dims, continuous, buffer_output && !saved_tensor_hooks_active(), expected_grad,
                      dtype_constant(logits)};
  return out;
}

Tensor2 bernoulli_autograd(const Tensor& logits, const Tensor& x, int64_t event_dims, bool need_grad,
                           double expected_grad) {
  return binary_autograd(logits, x, event_dims, false, need_grad, expected_grad);
}

Tensor2 continuous_bernoulli_autograd(const Tensor& logits, const Tensor& x, int64_t event_dims, bool need_grad,
                                      double expected_grad) {
  return binary_autograd(logits, x, event_dims, true, need_grad, expected_grad);
}

// ---- Gaussian ----
// out = sum -((x - m)^2 e^-v + v + log 2 pi)/2, b = (x - m) e^-v: d out/d m = b, d out/d x = -b,
// d out/d v = ((b e^(v/2))^2 - 1)/2 (summed by the backward kernel where logvar is shared). The
// buffer is c b, c = expected_grad, handed over as grad_mean where g == c, as the binary ones'.

struct GaussianOp {
  static constexpr const char* kName = "GaussianLogProbBackward";
  static constexpr size_t kInputs = 3;  // mean, x, logvar
  static constexpr size_t kSaved = 2;   // buffer, logvar
  // logvar_value, buffer_output, expected_grad, event_dims, mean dtype, x dtype, x's shape (None unless x
  // asks for its gradient)
  static constexpr size_t kConstants = 7;

  static variable_list backward(const variable_list& saved, const Constants<GaussianOp>& c,
                                const variable_list& grads, const Needs<GaussianOp>& needs) {
    const Tensor &grad_out = grads[0], grad_buffer = buffer_grad(grads);
    const Tensor &buffer = saved[0], &logvar = saved[1];
    const double logvar_value = c[0].toDouble(), expected_grad = c[2].toDouble();
    const bool buffer_output = c[1].toBool();
    const int64_t event_dims = c[3].toInt();
    const auto mean_dtype = dtype_of(c[4]);
    const auto x_dtype = dtype_of(c[5]);
    const std::vector<c10::SymInt> x_shape = c[6].isNone() ? std::vector<c10::SymInt>() : c[6].toSymIntVector();
    if (second_order(grad_buffer)) {
      auto [grad_mean, grad_x, grad_logvar] = gaussian_backward_differentiable_op().call(
          opt(grad_out), opt(grad_buffer), buffer, opt(logvar), logvar_value, event_dims, mean_dtype, x_shape, x_dtype,
          expected_grad, needs);
      return {grad_mean, grad_x, grad_logvar};
    }
    if (!grad_out.defined()) {
      return {Tensor(), Tensor(), Tensor()};
    }
    const bool need_logvar = needs[2];  // only where logvar is a tensor
    // The buffer itself as grad_mean where it may be (hand_over); the kernel then writes no grad_mean.
    const bool handed_over =
        needs[0] && !needs[1] && hand_over(buffer, buffer_output, grad_out, expected_grad, mean_dtype);
    Tensor2 result;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      result = gaussian_backward_op().call(grad_out, buffer, opt(logvar), logvar_value, event_dims, need_logvar,
                                           expected_grad, !handed_over && (needs[0] || needs[1]));
    }
    const Tensor& scaled = std::get<0>(result);
    Tensor grad_mean = handed_over ? buffer.detach() : needs[0] ? scaled.to(mean_dtype) : Tensor();
    Tensor grad_x = needs[1] ? scaled.neg().sum_to_size_symint(x_shape).to(x_dtype) : Tensor();  // d/dx = -d/dm
    return {grad_mean, grad_x, if_needed(need_logvar, std::get<1>(result))};
  }
};

Tensor2 gaussian_autograd(const Tensor& mean, const Tensor& x, const OptTensor& logvar, double logvar_value,
                          int64_t event_dims, bool need_grad, double expected_grad) {
  const auto call = [&] {
    return gaussian_op().call(mean, x, logvar, logvar_value, event_dims, need_grad, expected_grad);
  };
  if (!recording("gaussian_log_prob", mean, x, logvar)) {
    return below_autograd(call);
  }
  Recording<GaussianOp> node(mean, x, logvar);
  Tensor2 out = below_autograd(call);
  record_with_buffer(node, out, need_grad);  // without need_grad the buffer is an empty placeholder
  node.save(1, or_undefined(logvar));
  // A buffer output may be handed over (hand_over), unless saved-tensor hooks packed it.
  node.constants() = {logvar_value,
                      need_grad && !saved_tensor_hooks_active(),
                      expected_grad,
                      event_dims,
                      dtype_constant(mean),
                      dtype_constant(x),
                      x.requires_grad() ? c10::IValue(x.sym_sizes()) : c10::IValue()};
  return out;
}

// ---- categorical ----
// b = onehot(target) - softmax(logits) = d out/d logits.

struct CategoricalOp {
  static constexpr const char* kName = "CategoricalLogProbBackward";
  static constexpr size_t kInputs = 2;     // logits, target (integer: never a gradient)
  static constexpr size_t kSaved = 2;      // buffer, target
  static constexpr size_t kConstants = 2;  // event_dims, logits dtype

  static variable_list backward(const variable_list& saved, const Constants<CategoricalOp>& c,
                                const variable_list& grads, const Needs<CategoricalOp>& needs) {
    const Tensor &grad_out = grads[0], grad_buffer = buffer_grad(grads);
    const Tensor &buffer = saved[0], &target = saved[1];
    const int64_t event_dims = c[0].toInt();
    const auto logits_dtype = dtype_of(c[1]);
    Tensor grad_logits;
    if (needs[0]) {
      if (second_order(grad_buffer)) {
        grad_logits = categorical_backward_differentiable_op().call(opt(grad_out), opt(grad_buffer), buffer, target,
                                                                    event_dims, logits_dtype);
      } else if (grad_out.defined()) {
        grad_logits = buffer.mul(expand_events(grad_out, event_dims + 1)).to(logits_dtype);  // the class dim too
      }
    }
    return {grad_logits, Tensor()};
  }
};

Tensor2 categorical_autograd(const Tensor& logits, const Tensor& target, int64_t event_dims, bool need_grad) {
  const auto call = [&] { return categorical_op().call(logits, target, event_dims, need_grad); };
  if (!recording("categorical_log_prob", logits, target)) {
    return below_autograd(call);
  }
  Recording<CategoricalOp> node(logits, target);
  Tensor2 out = below_autograd(call);
  record_with_buffer(node, out, need_grad);  // without need_grad the buffer is an empty placeholder
  node.save(1, target);
  node.constants() = {event_dims, dtype_constant(logits)};
  return out;
}

// ---- discretized logistic mixture ----
// b = d out/d params (the channel dim last): grad_params = g b. The buffer is not differentiable;
// the recorded backward differentiates the reference from the saved params.

struct DmolOp {
  static constexpr const char* kName = "DiscretizedLogisticMixtureLogProbBackward";
  static constexpr size_t kInputs = 2;     // params, x (no gradient)
  static constexpr size_t kSaved = 3;      // buffer, params, x
  static constexpr size_t kConstants = 4;  // n_mix, bits, event_dims, params dtype

  static variable_list backward(const variable_list& saved, const Constants<DmolOp>& c, const variable_list& grads,
                                const Needs<DmolOp>& needs) {
    const Tensor& grad_out = grads[0];
    const Tensor &buffer = saved[0], &params = saved[1], &x = saved[2];
    const int64_t event_dims = c[2].toInt();
    Tensor grad_params;
    if (needs[0] && grad_out.defined()) {
      if (at::GradMode::is_enabled()) {
        grad_params =
            dmol_backward_differentiable_op().call(grad_out, params, x, c[0].toInt(), c[1].toInt(), event_dims);
      } else {
        grad_params = buffer.mul(expand_events(grad_out, event_dims + 1)).to(dtype_of(c[3]));
      }
    }
    return {grad_params, Tensor()};
  }
};

Tensor2 dmol_autograd(const Tensor& params, const Tensor& x, int64_t n_mix, int64_t bits, int64_t event_dims,
                      bool need_grad) {
  const auto call = [&] { return dmol_op().call(params, x, n_mix, bits, event_dims, need_grad); };
  if (!recording("discretized_logistic_mixture_log_prob", params, x)) {
    return below_autograd(call);
  }
  Recording<DmolOp> node(params, x);
  Tensor2 out = below_autograd(call);
  record_with_buffer(node, out, false);  // the buffer: not differentiable (the recorded backward recomputes)
  node.save(1, params);
  node.save(2, x);
  node.constants() = {n_mix, bits, event_dims, dtype_constant(params)};
  return out;
}

// ---- estimator combine ----
// mode 0 elbo/MC KL, 1 elbo/analytic KL, 2 iwae. Backward (g the incoming gradient per data point):
//   mode 0: d/dlog_lik = g/K, d/dlog_p = beta g/K, d/dlog_q = -beta g/K
//   mode 1: d/dlog_lik = g/K, d/dkl = -beta g
//   mode 2: d/dlog_lik = d/dlog_p = g w~, d/dlog_q = -g w~
// The elbo modes are linear in their inputs: their recorded backward is these same torch ops.

struct ElboOp {
  static constexpr const char* kName = "ElboBackward";
  static constexpr size_t kInputs = 4;  // log_lik, log_q, log_p, kl
  static constexpr size_t kSaved = 4;   // IWAE: its weights and the log-weights' terms
  // mode, beta, sample_dim, K, the four inputs' dtypes
  static constexpr size_t kConstants = 8;

  static variable_list backward(const variable_list& saved, const Constants<ElboOp>& c, const variable_list& grads,
                                const Needs<ElboOp>& needs) {
    const Tensor& grad = grads[0];
    if (!grad.defined()) {
      return {Tensor(), Tensor(), Tensor(), Tensor()};
    }
    const int64_t mode = c[0].toInt();
    const double beta = c[1].toDouble();
    const bool sample_dim = c[2].toBool();
    const at::ScalarType ll_dtype = dtype_of(c[4]), lq_dtype = dtype_of(c[5]), lp_dtype = dtype_of(c[6]);
    const at::ScalarType kl_dtype = dtype_of(c[7]);
    if (mode == 2) {
      if (at::GradMode::is_enabled()) {
        auto [grad_ll, grad_lq, grad_lp] = elbo_backward_differentiable_op().call(
            grad, saved[1], saved[2], saved[3], {needs[0], needs[1], needs[2]});
        return {grad_ll, grad_lq, grad_lp, Tensor()};
      }
      const Tensor per_sample = (sample_dim ? grad.unsqueeze(0) : grad).mul(saved[0]);
      return {needs[0] ? per_sample.to(ll_dtype) : Tensor(), needs[1] ? per_sample.neg().to(lq_dtype) : Tensor(),
              needs[2] ? per_sample.to(lp_dtype) : Tensor(), Tensor()};
    }
    Tensor mean_grad = grad;  // one sample without a sample dim: the mean over K is the sample
    if (sample_dim) {
      const c10::SymInt k = c[3].toSymInt();
      c10::SymDimVector shape{k};
      shape.append(grad.sym_sizes().begin(), grad.sym_sizes().end());
      mean_grad = grad.div(c10::Scalar(k)).unsqueeze(0).expand_symint(shape);
    }
    if (mode == 1) {
      return {needs[0] ? mean_grad.to(ll_dtype) : Tensor(), Tensor(), Tensor(),
              needs[3] ? grad.mul(-beta).to(kl_dtype) : Tensor()};
    }
    return {needs[0] ? mean_grad.to(ll_dtype) : Tensor(), needs[1] ? mean_grad.mul(-beta).to(lq_dtype) : Tensor(),
            needs[2] ? mean_grad.mul(beta).to(lp_dtype) : Tensor(), Tensor()};
  }
};

Tensor2 elbo_autograd(const Tensor& log_lik, const Tensor& log_q, const Tensor& log_p, const Tensor& kl, int64_t mode,
                      double beta) {
  const auto call = [&] { return elbo_op().call(log_lik, log_q, log_p, kl, mode, beta); };
  if (!recording("elbo", log_lik, log_q, log_p, kl)) {
    return below_autograd(call);
  }
  Recording<ElboOp> node(log_lik, log_q, log_p, kl);
  Tensor2 out = below_autograd(call);
  node.outputs({std::get<0>(out)});  // the IWAE weights are not differentiable
  // The IWAE's second derivative is recomputed from its (K, *batch) log-weights.
  if (mode == 2) {
    node.save(0, std::get<1>(out));
    node.save(1, log_lik);
    node.save(2, log_q);
    node.save(3, log_p);
  }
  // (K, *batch) log-weights, or (*batch) for one sample without a sample dim.
  const bool sample_dim = log_lik.dim() == kl.dim() + 1;
  node.constants() = {mode,
                      beta,
                      sample_dim,
                      sample_dim ? log_lik.sym_size(0) : c10::SymInt(1),
                      dtype_constant(log_lik),
                      dtype_constant(log_q),
                      dtype_constant(log_p),
                      dtype_constant(kl)};
  return out;
}

// ---- the backward kernels: never differentiated ----
// They run below autograd. Autograd never records them (the recorded backward goes through the
// *_backward_differentiable ops instead), so asking it to is an error that says what to do.

void backward_kernel_autograd(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  if (at::GradMode::is_enabled()) {
    for (const c10::IValue& arg : torch::jit::last(*stack, op.schema().arguments().size())) {
      if (arg.isTensor() && requires_grad(arg.toTensor())) {
        const std::string& name = op.schema().name();
        TORCH_CHECK(false, name, " has no derivative: it is the first-order backward kernel of ",
                    name.substr(0, name.size() - std::string("_backward").size()),
                    "; differentiate that op instead (its backward with create_graph=True is differentiable)");
      }
    }
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  op.callBoxed(stack);
}

}  // namespace
}  // namespace fastelbo

TORCH_LIBRARY_IMPL(fastelbo, Autograd, m) {
  m.impl("gaussian_latent", &fastelbo::gaussian_latent_autograd);
  m.impl("gaussian_kl", &fastelbo::gaussian_kl_autograd);
  m.impl("bernoulli_log_prob", &fastelbo::bernoulli_autograd);
  m.impl("continuous_bernoulli_log_prob", &fastelbo::continuous_bernoulli_autograd);
  m.impl("gaussian_log_prob", &fastelbo::gaussian_autograd);
  m.impl("categorical_log_prob", &fastelbo::categorical_autograd);
  m.impl("discretized_logistic_mixture_log_prob", &fastelbo::dmol_autograd);
  m.impl("elbo", &fastelbo::elbo_autograd);
  m.impl("gaussian_latent_backward", torch::CppFunction::makeFromBoxedFunction<&fastelbo::backward_kernel_autograd>());
  m.impl("gaussian_kl_backward", torch::CppFunction::makeFromBoxedFunction<&fastelbo::backward_kernel_autograd>());
  m.impl("gaussian_log_prob_backward",
         torch::CppFunction::makeFromBoxedFunction<&fastelbo::backward_kernel_autograd>());
}
