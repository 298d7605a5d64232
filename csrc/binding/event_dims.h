// The latent op's event dims (ATen side, shared by the CPU and CUDA bindings): its last
// `event_dims` dims are summed in log q, log p and the KL. The kernels sum over one last dim, so
// an entry point called with event_dims > 1 takes those dims as one dim of D = their product and
// calls itself with event_dims = 1:
//     flat(t)     = t.flatten(-event_dims)           mu, scale, eps (K leading), grad_z
//     flat_prior  = the prior with leading 1s to mu's dims, its event dims expanded to mu's,
//                   flattened: broadcastable to flat(mu), its batch dims as they were (1 or mu's)
//     z, grads    = reshaped back to mu's shape; the prior's gradients summed to the prior's shape
// flat is a view whenever the event dims are one strided run (NCHW with dim=(1, 2, 3)): what
// fastelbo.gaussian_latent passes here, so the op replaces the flatten / unflatten views (and
// their autograd nodes) a hierarchical VAE would otherwise pay at every layer. Otherwise reshape
// copies, as Python's would. The noise of element (row, d) is that of the flat row and d, as for
// the same tensor flattened by the caller (docs/RNG.md).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

#include "plan.h"

namespace fastelbo {
namespace event_dims {

inline void check(const at::Tensor& mu, int64_t event_dims, const char* op) {
  TORCH_CHECK_VALUE(event_dims >= 1 && event_dims <= mu.dim(), op, ": event_dims must be in [1, ", mu.dim(),
                    "] for mu with ", mu.dim(), " dim(s), got ", event_dims);
}

inline at::Tensor flat(const at::Tensor& t, int64_t event_dims) { return t.flatten(t.dim() - event_dims); }

inline std::optional<at::Tensor> flat(const std::optional<at::Tensor>& t, int64_t event_dims) {
  if (!t.has_value() || !t->defined()) return t;
  return flat(*t, event_dims);
}

// The prior's sizes as broadcast against mu over the event dims only: leading 1s to mu's dims,
// mu's sizes at the event dims, the prior's own (1 or mu's) at the batch dims.
inline std::vector<int64_t> prior_sizes(const at::Tensor& prior, at::IntArrayRef mu_sizes, int64_t event_dims) {
  const int64_t ndim = static_cast<int64_t>(mu_sizes.size()), lead = ndim - prior.dim();
  std::vector<int64_t> sizes(ndim);
  for (int64_t i = 0; i < ndim; ++i) {
    sizes[i] = i >= ndim - event_dims ? mu_sizes[i] : (i < lead ? 1 : prior.size(i - lead));
  }
  return sizes;
}

inline std::optional<at::Tensor> flat_prior(const std::optional<at::Tensor>& prior, at::IntArrayRef mu_sizes,
                                            int64_t event_dims) {
  if (!prior.has_value() || !prior->defined()) return prior;
  if (prior->sizes() == mu_sizes) return flat(*prior, event_dims);  // a per-sample prior (vdvae's)
  const std::vector<int64_t> sizes = prior_sizes(*prior, mu_sizes, event_dims);
  std::vector<int64_t> padded(sizes.size() - prior->dim(), 1);
  padded.insert(padded.end(), prior->sizes().begin(), prior->sizes().end());
  return flat(prior->reshape(padded).expand(sizes), event_dims);
}

// The gradient of a prior given as `prior`, from the kernel's gradient of its flat_prior.
inline at::Tensor prior_grad(const at::Tensor& grad, const std::optional<at::Tensor>& prior, at::IntArrayRef mu_sizes,
                             int64_t event_dims) {
  if (!prior.has_value() || !prior->defined() || !grad.defined()) return grad;
  if (prior->sizes() == mu_sizes) return grad.reshape(mu_sizes);
  return at::sum_to(grad.reshape(prior_sizes(*prior, mu_sizes, event_dims)), prior->sizes());
}

// The latent op's entry `forward` (gaussian_latent_cpu or _cuda) over the flat event dims, z back
// in mu's shape.
template <typename Forward>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> latent_forward(
    Forward&& forward, const at::Tensor& mu, const at::Tensor& scale, const std::optional<at::Tensor>& prior_mu,
    const std::optional<at::Tensor>& prior_scale, const std::optional<at::Tensor>& eps,
    const std::optional<at::Tensor>& seed, int64_t param, int64_t n_samples, bool stl, int64_t event_dims) {
  auto [z, log_q, log_p, kl, drawn] =
      forward(flat(mu, event_dims), flat(scale, event_dims), flat_prior(prior_mu, mu.sizes(), event_dims),
              flat_prior(prior_scale, mu.sizes(), event_dims), flat(eps, event_dims), seed, param, n_samples, stl, 1);
  return {z.reshape(with_samples(n_samples, mu.sizes())), log_q, log_p, kl, drawn};
}

// The latent's backward entry over the flat event dims, the gradients back in their inputs' shapes.
template <typename Backward>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> latent_backward(
    Backward&& backward, const std::optional<at::Tensor>& grad_z, const std::optional<at::Tensor>& grad_log_q,
    const std::optional<at::Tensor>& grad_log_p, const std::optional<at::Tensor>& grad_kl, const at::Tensor& mu,
    const at::Tensor& scale, const std::optional<at::Tensor>& prior_mu, const std::optional<at::Tensor>& prior_scale,
    const std::optional<at::Tensor>& eps, const std::optional<at::Tensor>& seed, int64_t param, int64_t n_samples,
    bool stl, int64_t event_dims) {
  auto [grad_mu, grad_scale, grad_prior_mu, grad_prior_scale] =
      backward(flat(grad_z, event_dims), grad_log_q, grad_log_p, grad_kl, flat(mu, event_dims), flat(scale, event_dims),
               flat_prior(prior_mu, mu.sizes(), event_dims), flat_prior(prior_scale, mu.sizes(), event_dims),
               flat(eps, event_dims), seed, param, n_samples, stl, 1);
  return {grad_mu.reshape(mu.sizes()), grad_scale.reshape(scale.sizes()),
          prior_grad(grad_prior_mu, prior_mu, mu.sizes(), event_dims),
          prior_grad(grad_prior_scale, prior_scale, mu.sizes(), event_dims)};
}

}  // namespace event_dims
}  // namespace fastelbo
