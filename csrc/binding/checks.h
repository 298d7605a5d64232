// Argument checks at the ops' entry points, shared by the CPU and CUDA bindings: what a kernel
// needs to hold before it runs (dtypes, shapes, devices, option codes), checked in C++ where it
// costs nanoseconds. TORCH_CHECK_TYPE / TORCH_CHECK_VALUE reach Python as TypeError / ValueError.
// The public functions (fastelbo/ops/) call these ops without checking in Python first; when one
// of these checks fails they run their own checks, whose messages name the public arguments.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <vector>

namespace fastelbo {
namespace checks {

inline bool is_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void floating(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(is_float(t.scalar_type()), op, ": ", name, " must be a floating-point tensor, got ",
                   t.scalar_type());
}

inline void same_device(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                        const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " must be on ", ref_name, "'s device ", ref.device(),
                    ", got ", t.device());
}

// t broadcasts to `shape` without enlarging it: each of its trailing sizes 1 or equal to shape's.
inline void broadcasts_to(const at::Tensor& t, at::IntArrayRef shape, const char* op, const char* name,
                          const char* ref_name) {
  const int64_t n = t.dim(), m = static_cast<int64_t>(shape.size());
  bool fits = n <= m;
  for (int64_t i = 1; fits && i <= n; ++i) {
    fits = t.size(n - i) == 1 || t.size(n - i) == shape[m - i];
  }
  TORCH_CHECK_VALUE(fits, op, ": ", name, " of shape ", t.sizes(), " must broadcast to ", ref_name, "'s shape ", shape);
}

inline void event_dims(int64_t event_dims, const at::Tensor& params, const char* op, const char* name) {
  TORCH_CHECK_VALUE(event_dims >= 0 && event_dims <= params.dim(), op, ": event_dims=", event_dims, " must be in [0, ",
                    params.dim(), "] (", name, "'s dims)");
}

// gaussian_latent / gaussian_kl: mu, scale of one shape (D last), the prior broadcasting to mu,
// eps of z's shape, a seed where eps is absent, a known param code.
inline void posterior(const at::Tensor& mu, const at::Tensor& scale, const c10::optional<at::Tensor>& prior_mu,
                      const c10::optional<at::Tensor>& prior_scale, int64_t param, const char* op) {
  floating(mu, op, "mu");
  floating(scale, op, "scale");
  TORCH_CHECK_VALUE(mu.dim() >= 1, op, ": mu must have at least 1 dim (D last), got a 0-dim tensor");
  TORCH_CHECK_VALUE(scale.sizes() == mu.sizes(), op, ": scale must have mu's shape ", mu.sizes(), ", got ",
                    scale.sizes());
  same_device(scale, mu, op, "scale", "mu");
  TORCH_CHECK_VALUE(param >= 0 && param <= 3, op, ": param code ", param,
                    " is not 0 (logvar), 1 (log_std), 2 (softplus) or 3 (soft_log_std)");
  const bool has_mu = prior_mu.has_value() && prior_mu->defined();
  const bool has_scale = prior_scale.has_value() && prior_scale->defined();
  TORCH_CHECK_VALUE(has_mu == has_scale, op, ": the prior needs both prior_mu and prior_scale");
  if (has_mu) {
    const char* names[2] = {"prior_mu", "prior_scale"};
    const at::Tensor* prior[2] = {&*prior_mu, &*prior_scale};
    for (int i = 0; i < 2; ++i) {
      floating(*prior[i], op, names[i]);
      same_device(*prior[i], mu, op, names[i], "mu");
      broadcasts_to(*prior[i], mu.sizes(), op, names[i], "mu");
    }
  }
}

inline void noise(const at::Tensor& mu, const c10::optional<at::Tensor>& eps, const c10::optional<at::Tensor>& seed,
                  int64_t n_samples, const char* op, bool may_draw) {
  TORCH_CHECK_VALUE(n_samples >= 0, op, ": n_samples must be >= 0 (0: one sample without a sample dim), got ",
                    n_samples);
  if (eps.has_value() && eps->defined()) {
    floating(*eps, op, "eps");
    same_device(*eps, mu, op, "eps", "mu");
    const bool shaped =
        n_samples == 0 ? eps->sizes() == mu.sizes()
                       : eps->dim() == mu.dim() + 1 && eps->size(0) == n_samples && eps->sizes().slice(1) == mu.sizes();
    TORCH_CHECK_VALUE(shaped, op, ": eps must have z's shape, got ", eps->sizes());
  } else if (!(seed.has_value() && seed->defined())) {
    TORCH_CHECK_VALUE(may_draw, op, ": needs eps or a seed on ", mu.device(),
                      " (only the CPU kernels draw their own seed)");
  } else {
    TORCH_CHECK_TYPE(seed->scalar_type() == at::kLong && seed->dim() == 0, op,
                     ": seed must be a 0-dim int64 tensor, got ", seed->scalar_type(), " of shape ", seed->sizes());
    same_device(*seed, mu, op, "seed", "mu");
  }
}

// A likelihood's data x: float, bool or uint8, on the parameters' device, broadcasting to them.
inline void data(const at::Tensor& x, const at::Tensor& params, const char* op, const char* params_name) {
  const auto xt = x.scalar_type();
  TORCH_CHECK_TYPE(is_float(xt) || xt == at::kBool || xt == at::kByte, op,
                   ": x must be a floating-point, bool or uint8 tensor, got ", xt);
  same_device(x, params, op, "x", params_name);
  broadcasts_to(x, params.sizes(), op, "x", params_name);
}

// The Bernoulli-type likelihoods: float logits, x (float, bool or uint8) broadcasting to them.
inline void logits_and_data(const at::Tensor& logits, const at::Tensor& x, int64_t event_dims_value, const char* op) {
  floating(logits, op, "logits");
  data(x, logits, op, "logits");
  event_dims(event_dims_value, logits, op, "logits");
}

// The Gaussian likelihood: a float mean, x (float, bool or uint8) broadcasting to it, and the log-variance:
// a float tensor on mean's device broadcasting to it, or a finite number.
inline void gaussian(const at::Tensor& mean, const at::Tensor& x, const c10::optional<at::Tensor>& logvar,
                     double logvar_value, int64_t event_dims_value, const char* op) {
  floating(mean, op, "mean");
  data(x, mean, op, "mean");
  if (logvar.has_value() && logvar->defined()) {
    floating(*logvar, op, "logvar");
    same_device(*logvar, mean, op, "logvar", "mean");
    broadcasts_to(*logvar, mean.sizes(), op, "logvar", "mean");
  } else {
    TORCH_CHECK_VALUE(std::isfinite(logvar_value), op, ": logvar must be finite, got ", logvar_value);
  }
  event_dims(event_dims_value, mean, op, "mean");
}

// The gradient a likelihood's caller expects each row to receive (its buffer is scaled by it and
// the backward divides by it): finite, and a normal float32 in magnitude (the float32 kernels
// scale by it in float32).
inline void expected_grad(double value, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(value) && std::fabs(value) >= std::numeric_limits<float>::min() &&
                        std::fabs(value) <= std::numeric_limits<float>::max(),
                    op, ": expected_grad must be finite with a magnitude in [", std::numeric_limits<float>::min(), ", ",
                    std::numeric_limits<float>::max(), "] (the gradient each row is expected to receive), got ",
                    value);
}

// The discretized logistic mixture: float params (..., 10 n_mix) and x (..., 3) (channels last)
// on one device, x broadcasting to the parameters' pixels, 1 <= bits <= 10, n_mix >= 1.
inline void dmol(const at::Tensor& params, const at::Tensor& x, int64_t n_mix, int64_t bits, int64_t event_dims_value,
                 const char* op) {
  floating(params, op, "params");
  floating(x, op, "x");
  same_device(x, params, op, "x", "params");
  TORCH_CHECK_VALUE(n_mix >= 1, op, ": n_mix must be >= 1, got ", n_mix);
  TORCH_CHECK_VALUE(bits >= 1 && bits <= 10, op, ": bits must be in [1, 10], got ", bits);
  TORCH_CHECK_VALUE(params.dim() >= 1 && params.size(-1) == 10 * n_mix, op,
                    ": params must have 10 * n_mix = ", 10 * n_mix, " entries in its last (channel) dim, got shape ",
                    params.sizes());
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == 3, op, ": x must have 3 channels in its last dim, got shape ",
                    x.sizes());
  std::vector<int64_t> pixels(params.sizes().begin(), params.sizes().end());
  pixels.back() = 3;
  broadcasts_to(x, pixels, op, "x", "params' pixels (with 3 channels)");
  TORCH_CHECK_VALUE(event_dims_value >= 0 && event_dims_value < params.dim(), op, ": event_dims=", event_dims_value,
                    " must be in [0, ", params.dim() - 1, "] (params' pixel dims)");
}

// The ELBO combine: log_lik, log_q, log_p of one shape, (K, *batch) or (*batch) for one sample
// without a sample dim (mode 2, the IWAE, needs the sample dim), kl (*batch); each mode's terms
// checked (0 and 2 read log_q and log_p, 1 reads kl). Returns whether there is a sample dim.
inline bool elbo_terms(const at::Tensor& log_lik, const at::Tensor& log_q, const at::Tensor& log_p,
                       const at::Tensor& kl, int64_t mode) {
  const char* op = "fastelbo::elbo";
  TORCH_CHECK_VALUE(mode >= 0 && mode <= 2, op,
                    ": mode must be 0 (elbo, MC KL), 1 (elbo, analytic KL) or 2 (iwae), got ", mode);
  const bool sample_dim = log_lik.dim() == kl.dim() + 1;
  TORCH_CHECK_VALUE(sample_dim || mode != 2, op,
                    ": mode 2 (iwae) takes log_lik, log_q, log_p with their sample dim (K, *batch)");
  const at::IntArrayRef batch = sample_dim ? log_lik.sizes().slice(1) : log_lik.sizes();
  if (mode == 1) {
    TORCH_CHECK_VALUE(kl.sizes() == batch, op, ": kl must have log_lik's batch shape ", batch, ", got ", kl.sizes());
  } else {
    TORCH_CHECK_VALUE(log_q.sizes() == log_lik.sizes() && log_p.sizes() == log_lik.sizes(), op,
                      ": log_q and log_p must have log_lik's shape ", log_lik.sizes(), ", got ", log_q.sizes(), " and ",
                      log_p.sizes());
  }
  return sample_dim;
}

}  // namespace checks
}  // namespace fastelbo
