// The autograd of the fastelbo operators (schemas: schema.cpp), in C++ at the Autograd dispatch key,
// as torchvision does for its ops: each differentiable op is a torch::autograd::Function whose
// forward calls the op below autograd (the CPU or the CUDA kernel) and saves what its backward
// needs, and whose backward calls the backward kernels. The Autograd key is device-independent, so
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
// (materialize_grads off: no buffer is ever zero-filled).
//
// Second order. When the backward itself is recorded (create_graph=True: grad mode is on inside
// it), or a gradient buffer b has a gradient of its own (the backward of a recorded backward), the
// backward calls the op's `*_backward_differentiable` composite op instead (schema.cpp), which
// Python implements as CompositeImplicitAutograd with the rules of the ops' modules: autograd
// records what it does, so higher derivatives are exact. The Bernoulli, Gaussian and categorical
// buffers b are differentiable outputs, which ctx->save_for_backward saves as outputs, so the b
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
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "op_handles.h"

namespace fastelbo {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
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

// Whether autograd records the call (what torch::autograd::Function::apply decides): otherwise the
// op runs below autograd directly, without a graph node.
template <typename... T>
bool recording(const T&... tensors) {
  return at::GradMode::is_enabled() && (requires_grad(tensors) || ...);
}

// ctx->needs_input_grad(i) counts the tensors given to forward (an absent optional has no edge);
// this gives it by argument position, for the first N arguments (`given`: which are tensors).
template <size_t N>
std::array<bool, N> needs_by_argument(AutogradContext* ctx, const std::array<bool, N>& given) {
  std::array<bool, N> needs{};
  size_t edge = 0;
  for (size_t i = 0; i < N; ++i) {
    if (given[i]) {
      needs[i] = ctx->needs_input_grad(edge++);
    }
  }
  return needs;
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

// A Function's outputs: (out, buffer) where the buffer is differentiable, else (out) with the buffer
// set aside in *aside, outside the graph (an empty placeholder, the continuous Bernoulli's buffer,
// the IWAE weights). Not ctx->mark_non_differentiable: compiled autograd asserts that a C++
// Function marks no output.
variable_list outputs(const Tensor& out, const Tensor& buffer, bool differentiable, Tensor* aside) {
  if (differentiable) {
    return {out, buffer};
  }
  *aside = buffer;
  return {out};
}

Tensor2 with_aside(const variable_list& out, const Tensor& aside) {
  return {out[0], out.size() > 1 ? out[1] : aside};
}

// The gradient of the buffer: only where it is an output.
Tensor buffer_grad(const variable_list& grads) {
  return grads.size() > 1 ? grads[1] : Tensor();
}

void save_dtype(AutogradContext* ctx, const char* key, at::ScalarType dtype) {
  ctx->saved_data[key] = static_cast<int64_t>(dtype);
}

at::ScalarType saved_dtype(AutogradContext* ctx, const char* key) {
  return static_cast<at::ScalarType>(ctx->saved_data[key].toInt());
}

// ---- latent ----

struct GaussianLatentFunction : public torch::autograd::Function<GaussianLatentFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& mu, const Tensor& scale, const OptTensor& prior_mu,
                               const OptTensor& prior_scale, const OptTensor& eps, const OptTensor& seed,
                               int64_t param, int64_t n_samples, bool stl, int64_t event_dims) {
    Tensor5 out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = gaussian_latent_op().call(mu, scale, prior_mu, prior_scale, eps, seed, param, n_samples, stl, event_dims);
    }
    ctx->set_materialize_grads(false);
    ctx->saved_data["param"] = param;
    ctx->saved_data["n_samples"] = n_samples;
    ctx->saved_data["stl"] = stl;
    ctx->saved_data["event_dims"] = event_dims;
    // The backward regenerates eps from the seed: the caller's, or the one the op drew (its fifth output).
    const Tensor& drawn = std::get<4>(out);
    const Tensor used_seed = drawn.numel() == 1 ? drawn : or_undefined(seed);
    // (The seed is int64, so autograd gives it no gradient without mark_non_differentiable, which
    // compiled autograd refuses for C++ Functions.)
    ctx->save_for_backward({mu, scale, or_undefined(prior_mu), or_undefined(prior_scale), or_undefined(eps), used_seed});
    return {std::get<0>(out), std::get<1>(out), std::get<2>(out), std::get<3>(out), drawn};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &mu = saved[0], &scale = saved[1], &prior_mu = saved[2], &prior_scale = saved[3];
    const Tensor &eps = saved[4], &seed = saved[5];
    const int64_t param = ctx->saved_data["param"].toInt();
    const int64_t n_samples = ctx->saved_data["n_samples"].toInt();
    const bool stl = ctx->saved_data["stl"].toBool();
    const int64_t event_dims = ctx->saved_data["event_dims"].toInt();
    // (eps and seed come after the four differentiable arguments; seed may be the one the op drew)
    const auto needs = needs_by_argument<4>(ctx, {true, true, prior_mu.defined(), prior_scale.defined()});
    Tensor4 result;
    if (at::GradMode::is_enabled()) {
      result = gaussian_latent_backward_differentiable_op().call(
          opt(grads[0]), opt(grads[1]), opt(grads[2]), opt(grads[3]), mu, scale, opt(prior_mu), opt(prior_scale),
          opt(eps), opt(seed), param, n_samples, stl, event_dims, {needs[0], needs[1], needs[2], needs[3]});
    } else {
      at::AutoDispatchBelowADInplaceOrView guard;
      result = gaussian_latent_backward_op().call(opt(grads[0]), opt(grads[1]), opt(grads[2]), opt(grads[3]), mu, scale,
                                         opt(prior_mu), opt(prior_scale), opt(eps), opt(seed), param, n_samples, stl,
                                         event_dims);
    }
    return {if_needed(needs[0], std::get<0>(result)), if_needed(needs[1], std::get<1>(result)),
            if_needed(needs[2], std::get<2>(result)), if_needed(needs[3], std::get<3>(result)),
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor5 gaussian_latent_autograd(const Tensor& mu, const Tensor& scale, const OptTensor& prior_mu, const OptTensor& prior_scale,
                        const OptTensor& eps, const OptTensor& seed, int64_t param, int64_t n_samples, bool stl,
                        int64_t event_dims) {
  if (!recording(mu, scale, prior_mu, prior_scale, eps, seed)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return gaussian_latent_op().call(mu, scale, prior_mu, prior_scale, eps, seed, param, n_samples, stl, event_dims);
  }
  const variable_list out =
      GaussianLatentFunction::apply(mu, scale, prior_mu, prior_scale, eps, seed, param, n_samples, stl, event_dims);
  return {out[0], out[1], out[2], out[3], out[4]};
}

// ---- analytic KL ----

struct GaussianKlFunction : public torch::autograd::Function<GaussianKlFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& mu, const Tensor& scale, const OptTensor& prior_mu,
                               const OptTensor& prior_scale, int64_t param, bool per_dim) {
    Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = gaussian_kl_op().call(mu, scale, prior_mu, prior_scale, param, per_dim);
    }
    ctx->set_materialize_grads(false);
    ctx->saved_data["param"] = param;
    ctx->saved_data["per_dim"] = per_dim;
    ctx->save_for_backward({mu, scale, or_undefined(prior_mu), or_undefined(prior_scale)});
    return {out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor& grad = grads[0];
    if (!grad.defined()) {
      return {Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
    }
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &mu = saved[0], &scale = saved[1], &prior_mu = saved[2], &prior_scale = saved[3];
    const int64_t param = ctx->saved_data["param"].toInt();
    const bool per_dim = ctx->saved_data["per_dim"].toBool();
    const auto needs = needs_by_argument<4>(ctx, {true, true, prior_mu.defined(), prior_scale.defined()});
    Tensor4 result;
    if (at::GradMode::is_enabled()) {
      result = gaussian_kl_backward_differentiable_op().call(grad, mu, scale, opt(prior_mu), opt(prior_scale), param, per_dim,
                                                    needs);
    } else {
      at::AutoDispatchBelowADInplaceOrView guard;
      result = gaussian_kl_backward_op().call(grad, mu, scale, opt(prior_mu), opt(prior_scale), param, per_dim);
    }
    return {if_needed(needs[0], std::get<0>(result)), if_needed(needs[1], std::get<1>(result)),
            if_needed(needs[2], std::get<2>(result)), if_needed(needs[3], std::get<3>(result)), Tensor(), Tensor()};
  }
};

Tensor gaussian_kl_autograd(const Tensor& mu, const Tensor& scale, const OptTensor& prior_mu, const OptTensor& prior_scale,
                   int64_t param, bool per_dim) {
  if (!recording(mu, scale, prior_mu, prior_scale)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return gaussian_kl_op().call(mu, scale, prior_mu, prior_scale, param, per_dim);
  }
  return GaussianKlFunction::apply(mu, scale, prior_mu, prior_scale, param, per_dim)[0];
}

// ---- Bernoulli and continuous Bernoulli ----
// out = sum x l - (softplus(l) or the continuous Bernoulli's terms); the buffer is c d out/d l with c
// the gradient the caller expects each row to receive (expected_grad, 1 by default), d out/d x = l.
// One Function for the two ops (bernoulli_log_prob, continuous_bernoulli_log_prob).

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
// backward). An output of the Function is saved as a second TensorImpl on the same storage and
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

struct BinaryFunction : public torch::autograd::Function<BinaryFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& logits, const Tensor& x, int64_t event_dims,
                               bool continuous, bool need_grad, double expected_grad, Tensor* aside) {
    Tensor2 out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = binary_op(logits, x, event_dims, continuous, need_grad, expected_grad);
    }
    const Tensor& buffer = std::get<1>(out);
    ctx->set_materialize_grads(false);
    ctx->saved_data["event_dims"] = event_dims;
    ctx->saved_data["continuous"] = continuous;
    // A buffer output (as outputs() below decides) that may be handed over (hand_over).
    ctx->saved_data["buffer_output"] = need_grad && !continuous && !saved_tensor_hooks_active();
    ctx->saved_data["expected_grad"] = expected_grad;
    save_dtype(ctx, "logits_dtype", logits.scalar_type());
    // d/dx of x l is l: keep the logits when a float x asks for its gradient, or for the continuous
    // Bernoulli, whose buffer is not differentiable (its second derivative is recomputed from its
    // logits). Without need_grad the buffer is an empty placeholder.
    const bool keep_logits = x.requires_grad() || continuous;
    ctx->save_for_backward({buffer, keep_logits ? logits : Tensor(), x});
    return outputs(std::get<0>(out), buffer, need_grad && !continuous, aside);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor &grad_out = grads[0], grad_buffer = buffer_grad(grads);
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &buffer = saved[0], &logits = saved[1], &x = saved[2];
    const int64_t event_dims = ctx->saved_data["event_dims"].toInt();
    const at::ScalarType logits_dtype = saved_dtype(ctx, "logits_dtype");
    const double expected_grad = ctx->saved_data["expected_grad"].toDouble();
    const bool needs_logits = ctx->needs_input_grad(0), needs_x = ctx->needs_input_grad(1);
    if (second_order(grad_buffer)) {
      const auto& op = ctx->saved_data["continuous"].toBool() ? continuous_bernoulli_backward_differentiable_op()
                                                               : bernoulli_backward_differentiable_op();
      auto [grad_logits, grad_x] =
          op.call(opt(grad_out), opt(grad_buffer), buffer, opt(logits), x, event_dims, logits_dtype, expected_grad,
                  {needs_logits, needs_x});
      return {grad_logits, grad_x, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
    }
    Tensor grad_logits, grad_x;
    if (grad_out.defined()) {
      const Tensor g = expand_events(grad_out, event_dims);
      if (needs_logits) {
        if (owns_buffer(buffer, ctx->saved_data["buffer_output"].toBool(), grad_out, logits_dtype)) {
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
    return {grad_logits, grad_x, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor2 binary_autograd(const Tensor& logits, const Tensor& x, int64_t event_dims, bool continuous, bool need_grad,
                        double expected_grad) {
  if (!recording(logits, x)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return binary_op(logits, x, event_dims, continuous, need_grad, expected_grad);
  }
  Tensor aside;
  const variable_list out =
      BinaryFunction::apply(logits, x, event_dims, continuous, need_grad, expected_grad, &aside);
  return with_aside(out, aside);
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

struct GaussianFunction : public torch::autograd::Function<GaussianFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& mean, const Tensor& x, const OptTensor& logvar,
                               double logvar_value, int64_t event_dims, bool need_grad, double expected_grad,
                               Tensor* aside) {
    Tensor2 out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = gaussian_op().call(mean, x, logvar, logvar_value, event_dims, need_grad, expected_grad);
    }
    ctx->set_materialize_grads(false);
    ctx->saved_data["logvar_value"] = logvar_value;
    // A buffer output (as outputs() below decides) that may be handed over (hand_over).
    ctx->saved_data["buffer_output"] = need_grad && !saved_tensor_hooks_active();
    ctx->saved_data["expected_grad"] = expected_grad;
    ctx->saved_data["event_dims"] = event_dims;
    save_dtype(ctx, "mean_dtype", mean.scalar_type());
    save_dtype(ctx, "x_dtype", x.scalar_type());
    if (x.requires_grad()) {
      ctx->saved_data["x_shape"] = x.sym_sizes();
    }
    ctx->save_for_backward({std::get<1>(out), or_undefined(logvar)});
    return outputs(std::get<0>(out), std::get<1>(out), need_grad, aside);  // else an empty placeholder
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor &grad_out = grads[0], grad_buffer = buffer_grad(grads);
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &buffer = saved[0], &logvar = saved[1];
    const double logvar_value = ctx->saved_data["logvar_value"].toDouble();
    const double expected_grad = ctx->saved_data["expected_grad"].toDouble();
    const int64_t event_dims = ctx->saved_data["event_dims"].toInt();
    const at::ScalarType mean_dtype = saved_dtype(ctx, "mean_dtype"), x_dtype = saved_dtype(ctx, "x_dtype");
    const auto needs = needs_by_argument<3>(ctx, {true, true, logvar.defined()});
    const auto x_shape_entry = ctx->saved_data.find("x_shape");
    const std::vector<c10::SymInt> x_shape =
        x_shape_entry == ctx->saved_data.end() ? std::vector<c10::SymInt>() : x_shape_entry->second.toSymIntVector();
    if (second_order(grad_buffer)) {
      auto [grad_mean, grad_x, grad_logvar] = gaussian_backward_differentiable_op().call(
          opt(grad_out), opt(grad_buffer), buffer, opt(logvar), logvar_value, event_dims, mean_dtype, x_shape, x_dtype,
          expected_grad, needs);
      return {grad_mean, grad_x, grad_logvar, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
    }
    if (!grad_out.defined()) {
      return {Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
    }
    const bool need_logvar = needs[2];  // only where logvar is a tensor
    // The buffer itself as grad_mean where it may be (hand_over); the kernel then writes no grad_mean.
    const bool handed_over = needs[0] && !needs[1] &&
                             hand_over(buffer, ctx->saved_data["buffer_output"].toBool(), grad_out, expected_grad,
                                       mean_dtype);
    Tensor2 result;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      result = gaussian_backward_op().call(grad_out, buffer, opt(logvar), logvar_value, event_dims, need_logvar,
                                           expected_grad, !handed_over && (needs[0] || needs[1]));
    }
    const Tensor& scaled = std::get<0>(result);
    Tensor grad_mean = handed_over ? buffer.detach() : needs[0] ? scaled.to(mean_dtype) : Tensor();
    Tensor grad_x = needs[1] ? scaled.neg().sum_to_size_symint(x_shape).to(x_dtype) : Tensor();  // d/dx = -d/dm
    return {grad_mean, grad_x, if_needed(need_logvar, std::get<1>(result)), Tensor(), Tensor(), Tensor(), Tensor(),
            Tensor()};
  }
};

Tensor2 gaussian_autograd(const Tensor& mean, const Tensor& x, const OptTensor& logvar, double logvar_value,
                          int64_t event_dims, bool need_grad, double expected_grad) {
  if (!recording(mean, x, logvar)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return gaussian_op().call(mean, x, logvar, logvar_value, event_dims, need_grad, expected_grad);
  }
  Tensor aside;
  const variable_list out =
      GaussianFunction::apply(mean, x, logvar, logvar_value, event_dims, need_grad, expected_grad, &aside);
  return with_aside(out, aside);
}

// ---- categorical ----
// b = onehot(target) - softmax(logits) = d out/d logits.

struct CategoricalFunction : public torch::autograd::Function<CategoricalFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& logits, const Tensor& target, int64_t event_dims,
                               bool need_grad, Tensor* aside) {
    Tensor2 out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = categorical_op().call(logits, target, event_dims, need_grad);
    }
    ctx->set_materialize_grads(false);
    ctx->saved_data["event_dims"] = event_dims;
    save_dtype(ctx, "logits_dtype", logits.scalar_type());
    ctx->save_for_backward({std::get<1>(out), target});
    return outputs(std::get<0>(out), std::get<1>(out), need_grad, aside);  // else an empty placeholder
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor &grad_out = grads[0], grad_buffer = buffer_grad(grads);
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &buffer = saved[0], &target = saved[1];
    const int64_t event_dims = ctx->saved_data["event_dims"].toInt();
    const at::ScalarType logits_dtype = saved_dtype(ctx, "logits_dtype");
    Tensor grad_logits;
    if (ctx->needs_input_grad(0)) {
      if (second_order(grad_buffer)) {
        grad_logits = categorical_backward_differentiable_op().call(opt(grad_out), opt(grad_buffer), buffer, target,
                                                                    event_dims, logits_dtype);
      } else if (grad_out.defined()) {
        grad_logits = buffer.mul(expand_events(grad_out, event_dims + 1)).to(logits_dtype);  // the class dim too
      }
    }
    return {grad_logits, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor2 categorical_autograd(const Tensor& logits, const Tensor& target, int64_t event_dims, bool need_grad) {
  if (!recording(logits, target)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return categorical_op().call(logits, target, event_dims, need_grad);
  }
  Tensor aside;
  const variable_list out = CategoricalFunction::apply(logits, target, event_dims, need_grad, &aside);
  return with_aside(out, aside);
}

// ---- discretized logistic mixture ----
// b = d out/d params (the channel dim last): grad_params = g b. The buffer is not differentiable;
// the recorded backward differentiates the reference from the saved params.

struct DmolFunction : public torch::autograd::Function<DmolFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& params, const Tensor& x, int64_t n_mix, int64_t bits,
                               int64_t event_dims, bool need_grad, Tensor* aside) {
    Tensor2 out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = dmol_op().call(params, x, n_mix, bits, event_dims, need_grad);
    }
    ctx->set_materialize_grads(false);
    ctx->saved_data["n_mix"] = n_mix;
    ctx->saved_data["bits"] = bits;
    ctx->saved_data["event_dims"] = event_dims;
    save_dtype(ctx, "params_dtype", params.scalar_type());
    ctx->save_for_backward({std::get<1>(out), params, x});
    return outputs(std::get<0>(out), std::get<1>(out), false, aside);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor& grad_out = grads[0];
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &buffer = saved[0], &params = saved[1], &x = saved[2];
    const int64_t event_dims = ctx->saved_data["event_dims"].toInt();
    Tensor grad_params;
    if (ctx->needs_input_grad(0) && grad_out.defined()) {
      if (at::GradMode::is_enabled()) {
        grad_params = dmol_backward_differentiable_op().call(grad_out, params, x, ctx->saved_data["n_mix"].toInt(),
                                                             ctx->saved_data["bits"].toInt(), event_dims);
      } else {
        grad_params = buffer.mul(expand_events(grad_out, event_dims + 1)).to(saved_dtype(ctx, "params_dtype"));
      }
    }
    return {grad_params, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor2 dmol_autograd(const Tensor& params, const Tensor& x, int64_t n_mix, int64_t bits, int64_t event_dims,
                      bool need_grad) {
  if (!recording(params, x)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return dmol_op().call(params, x, n_mix, bits, event_dims, need_grad);
  }
  Tensor aside;
  const variable_list out = DmolFunction::apply(params, x, n_mix, bits, event_dims, need_grad, &aside);
  return with_aside(out, aside);
}

// ---- estimator combine ----
// mode 0 elbo/MC KL, 1 elbo/analytic KL, 2 iwae. Backward (g the incoming gradient per data point):
//   mode 0: d/dlog_lik = g/K, d/dlog_p = beta g/K, d/dlog_q = -beta g/K
//   mode 1: d/dlog_lik = g/K, d/dkl = -beta g
//   mode 2: d/dlog_lik = d/dlog_p = g w~, d/dlog_q = -g w~
// The elbo modes are linear in their inputs: their recorded backward is these same torch ops.

struct ElboFunction : public torch::autograd::Function<ElboFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& log_lik, const Tensor& log_q, const Tensor& log_p,
                               const Tensor& kl, int64_t mode, double beta, Tensor* aside) {
    Tensor2 out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = elbo_op().call(log_lik, log_q, log_p, kl, mode, beta);
    }
    const Tensor& weights = std::get<1>(out);
    ctx->set_materialize_grads(false);
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["beta"] = beta;
    // (K, *batch) log-weights, or (*batch) for one sample without a sample dim.
    const bool sample_dim = log_lik.dim() == kl.dim() + 1;
    ctx->saved_data["sample_dim"] = sample_dim;
    ctx->saved_data["k"] = sample_dim ? log_lik.sym_size(0) : c10::SymInt(1);
    save_dtype(ctx, "ll_dtype", log_lik.scalar_type());
    save_dtype(ctx, "lq_dtype", log_q.scalar_type());
    save_dtype(ctx, "lp_dtype", log_p.scalar_type());
    save_dtype(ctx, "kl_dtype", kl.scalar_type());
    // The IWAE's second derivative is recomputed from its (K, *batch) log-weights.
    if (mode == 2) {
      ctx->save_for_backward({weights, log_lik, log_q, log_p});
    }
    return outputs(std::get<0>(out), weights, false, aside);  // the weights: not differentiable
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor& grad = grads[0];
    if (!grad.defined()) {
      return {Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
    }
    const int64_t mode = ctx->saved_data["mode"].toInt();
    const double beta = ctx->saved_data["beta"].toDouble();
    const auto needs = needs_by_argument<4>(ctx, {true, true, true, true});
    const at::ScalarType ll_dtype = saved_dtype(ctx, "ll_dtype"), lq_dtype = saved_dtype(ctx, "lq_dtype");
    const at::ScalarType lp_dtype = saved_dtype(ctx, "lp_dtype"), kl_dtype = saved_dtype(ctx, "kl_dtype");
    if (mode == 2) {
      const variable_list saved = ctx->get_saved_variables();
      if (at::GradMode::is_enabled()) {
        auto [grad_ll, grad_lq, grad_lp] = elbo_backward_differentiable_op().call(
            grad, saved[1], saved[2], saved[3], {needs[0], needs[1], needs[2]});
        return {grad_ll, grad_lq, grad_lp, Tensor(), Tensor(), Tensor(), Tensor()};
      }
      const Tensor per_sample = (ctx->saved_data["sample_dim"].toBool() ? grad.unsqueeze(0) : grad).mul(saved[0]);
      return {needs[0] ? per_sample.to(ll_dtype) : Tensor(), needs[1] ? per_sample.neg().to(lq_dtype) : Tensor(),
              needs[2] ? per_sample.to(lp_dtype) : Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
    }
    const c10::SymInt k = ctx->saved_data["k"].toSymInt();
    Tensor mean_grad = grad;  // one sample without a sample dim: the mean over K is the sample
    if (ctx->saved_data["sample_dim"].toBool()) {
      c10::SymDimVector shape{k};
      shape.append(grad.sym_sizes().begin(), grad.sym_sizes().end());
      mean_grad = grad.div(c10::Scalar(k)).unsqueeze(0).expand_symint(shape);
    }
    if (mode == 1) {
      return {needs[0] ? mean_grad.to(ll_dtype) : Tensor(), Tensor(), Tensor(),
              needs[3] ? grad.mul(-beta).to(kl_dtype) : Tensor(), Tensor(), Tensor(), Tensor()};
    }
    return {needs[0] ? mean_grad.to(ll_dtype) : Tensor(), needs[1] ? mean_grad.mul(-beta).to(lq_dtype) : Tensor(),
            needs[2] ? mean_grad.mul(beta).to(lp_dtype) : Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor2 elbo_autograd(const Tensor& log_lik, const Tensor& log_q, const Tensor& log_p, const Tensor& kl,
                          int64_t mode, double beta) {
  if (!recording(log_lik, log_q, log_p, kl)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return elbo_op().call(log_lik, log_q, log_p, kl, mode, beta);
  }
  Tensor aside;
  const variable_list out = ElboFunction::apply(log_lik, log_q, log_p, kl, mode, beta, &aside);
  return with_aside(out, aside);
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
