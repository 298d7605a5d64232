// The latent op's event dims (ATen side, shared by the CPU and CUDA bindings): its last
// `event_dims` dims are summed in log q, log p and the KL. The kernels sum over one last dim, so
// an entry point called with event_dims > 1 takes those dims as one dim of D = their product and
// calls its flat kernel (event_dims = 1) on
//     flat(t)     = t.flatten(-event_dims)           mu, scale, eps (K leading), grad_z
//     flat_prior  = the prior with leading 1s to mu's dims, its event dims expanded to mu's,
//                   flattened: broadcastable to flat(mu), its batch dims as they were (1 or mu's)
//     z, grads    = reshaped back to mu's shape; the prior's gradients summed to the prior's shape
// flat is a view whenever the event dims are one strided run (NCHW with dim=(1, 2, 3)): what
// fastelbo.gaussian_latent passes here, so the op replaces the flatten / unflatten views (and
// their autograd nodes) a hierarchical VAE would otherwise pay at every layer.
//
// Channels-last. A channels-last mu's (C, H, W) are not one run, but (H, W, C) are: mu stores its
// event as S = H W positions of C channels. Then flat(t) is t.movedim(-event_dims, -1) flattened,
// a view (column s C + c holds element (c, s)), z and the gradients come back channels-last, and
// the kernels, told `channels` = C, draw column s C + c's noise at its logical index d = c S + s.
// So the noise of element (row, d) is that of the flat row and d, as for the same tensor flattened
// by the caller, whatever the layout (docs/RNG.md). Other layouts are copied by reshape, as
// Python's would be; so is a tensor whose layout differs from mu's (e.g. an NCHW grad_z).
#pragma once

#include <ATen/ATen.h>
#include <ATen/TensorUtils.h>
#include <c10/util/accumulate.h>

#include <algorithm>
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

// How mu's event dims flatten: `channels` = 1 for flatten(-event_dims) (a view when they are one
// run; a copy for layouts neither rule serves), C = mu.size(-event_dims) > 1 for the channels-last
// order, taken only when that is a view and the plain flatten is not.
struct Flattening {
  int64_t event_dims;
  int64_t channels = 1;

  Flattening(const at::Tensor& mu, int64_t n_event_dims) : event_dims(n_event_dims) {
    const int64_t ndim = mu.dim(), first = ndim - event_dims;
    if (event_dims < 2 || mu.size(first) < 2) return;
    std::vector<int64_t> flat_sizes(mu.sizes().begin(), mu.sizes().begin() + first);
    flat_sizes.push_back(c10::multiply_integers(mu.sizes().slice(first)));
    if (at::detail::computeStride(mu.sizes(), mu.strides(), flat_sizes).has_value()) return;
    const at::Tensor moved = mu.movedim(first, -1);
    if (at::detail::computeStride(moved.sizes(), moved.strides(), flat_sizes).has_value()) channels = mu.size(first);
  }

  // t (mu's event dims last, anything before them) with its event dims as one dim, in the order
  // the kernels take them.
  at::Tensor flat(const at::Tensor& t) const {
    const int64_t first = t.dim() - event_dims;
    if (channels == 1) {
      // One strided run (NCHW, the common case): the view by one as_strided, not flatten's three
      // dispatched ops (flatten, reshape, view), which a small layer pays several times a step.
      at::DimVector sizes(t.sizes().begin(), t.sizes().begin() + first);
      sizes.push_back(c10::multiply_integers(t.sizes().slice(first)));
      if (const auto strides = at::detail::computeStride(t.sizes(), t.strides(), sizes)) {
        return t.as_strided(sizes, *strides);
      }
      return t.flatten(first);  // a copy
    }
    return t.movedim(first, -1).flatten(first);
  }

  std::optional<at::Tensor> flat(const std::optional<at::Tensor>& t) const {
    if (!t.has_value() || !t->defined()) return t;
    return flat(*t);
  }

  // The inverse of flat: t (..., D) back to `sizes` (channels-last strides when channels > 1).
  at::Tensor unflat(const at::Tensor& t, at::IntArrayRef sizes) const {
    if (channels == 1) {
      if (const auto strides = at::detail::computeStride(t.sizes(), t.strides(), sizes)) {
        return t.as_strided(sizes, *strides);  // (as flat: one op for reshape's view)
      }
      return t.reshape(sizes);
    }
    const int64_t first = static_cast<int64_t>(sizes.size()) - event_dims;
    std::vector<int64_t> moved(sizes.begin(), sizes.end());
    std::rotate(moved.begin() + first, moved.begin() + first + 1, moved.end());
    return t.reshape(moved).movedim(-1, first);
  }

  std::optional<at::Tensor> flat_prior(const std::optional<at::Tensor>& prior, at::IntArrayRef mu_sizes) const;
  at::Tensor prior_grad(const at::Tensor& grad, const std::optional<at::Tensor>& prior, at::IntArrayRef mu_sizes) const;
};

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

inline std::optional<at::Tensor> Flattening::flat_prior(const std::optional<at::Tensor>& prior,
                                                        at::IntArrayRef mu_sizes) const {
  if (!prior.has_value() || !prior->defined()) return prior;
  if (prior->sizes() == mu_sizes) return flat(*prior);  // a per-sample prior (vdvae's)
  const std::vector<int64_t> sizes = prior_sizes(*prior, mu_sizes, event_dims);
  std::vector<int64_t> padded(sizes.size() - prior->dim(), 1);
  padded.insert(padded.end(), prior->sizes().begin(), prior->sizes().end());
  return flat(prior->reshape(padded).expand(sizes));
}

// The gradient of a prior given as `prior`, from the kernel's gradient of its flat_prior.
inline at::Tensor Flattening::prior_grad(const at::Tensor& grad, const std::optional<at::Tensor>& prior,
                                         at::IntArrayRef mu_sizes) const {
  if (!prior.has_value() || !prior->defined() || !grad.defined()) return grad;
  if (prior->sizes() == mu_sizes) return unflat(grad, mu_sizes);
  return at::sum_to(unflat(grad, prior_sizes(*prior, mu_sizes, event_dims)), prior->sizes());
}

// The latent's flat forward kernel `forward` (its last argument the noise's `channels`) over the
// flat event dims, z back in mu's shape (and mu's channels-last order).
template <typename Forward>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> latent_forward(
    Forward&& forward, const at::Tensor& mu, const at::Tensor& scale, const std::optional<at::Tensor>& prior_mu,
    const std::optional<at::Tensor>& prior_scale, const std::optional<at::Tensor>& eps,
    const std::optional<at::Tensor>& seed, int64_t param, int64_t n_samples, bool stl, int64_t event_dims) {
  const Flattening f(mu, event_dims);
  auto [z, log_q, log_p, kl, drawn] =
      forward(f.flat(mu), f.flat(scale), f.flat_prior(prior_mu, mu.sizes()), f.flat_prior(prior_scale, mu.sizes()),
              f.flat(eps), seed, param, n_samples, stl, f.channels);
  return {f.unflat(z, with_samples(n_samples, mu.sizes())), log_q, log_p, kl, drawn};
}

// The latent's flat backward kernel over the flat event dims, the gradients back in their inputs'
// shapes.
template <typename Backward>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> latent_backward(
    Backward&& backward, const std::optional<at::Tensor>& grad_z, const std::optional<at::Tensor>& grad_log_q,
    const std::optional<at::Tensor>& grad_log_p, const std::optional<at::Tensor>& grad_kl, const at::Tensor& mu,
    const at::Tensor& scale, const std::optional<at::Tensor>& prior_mu, const std::optional<at::Tensor>& prior_scale,
    const std::optional<at::Tensor>& eps, const std::optional<at::Tensor>& seed, int64_t param, int64_t n_samples,
    bool stl, int64_t event_dims) {
  const Flattening f(mu, event_dims);
  auto [grad_mu, grad_scale, grad_prior_mu, grad_prior_scale] = backward(
      f.flat(grad_z), grad_log_q, grad_log_p, grad_kl, f.flat(mu), f.flat(scale), f.flat_prior(prior_mu, mu.sizes()),
      f.flat_prior(prior_scale, mu.sizes()), f.flat(eps), seed, param, n_samples, stl, f.channels);
  return {f.unflat(grad_mu, mu.sizes()), f.unflat(grad_scale, scale.sizes()),
          f.prior_grad(grad_prior_mu, prior_mu, mu.sizes()), f.prior_grad(grad_prior_scale, prior_scale, mu.sizes())};
}

}  // namespace event_dims
}  // namespace fastelbo
