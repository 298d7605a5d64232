// ATen binding of the latent kernels (kernels/latent.cuh): latent, latent_backward, kl,
// kl_backward. Output shapes and dtypes as fastelbo/triton_backend/latent.py.
#include "../binding/checks.h"
#include "../binding/event_dims.h"
#include "aten_utils.cuh"
#include "kernels/latent.cuh"
#include "ops.h"

namespace fastelbo {
namespace cuda {
namespace {

// mu, scale and the prior (expanded to mu's shape) as rows of D, in one storage dtype.
struct LatentSetup {
  at::ScalarType compute;
  at::ScalarType storage;
  bool has_prior;
  RowPlan plan;
  int64_t rows, dim;
  bool pm_shared, ps_shared;
};

LatentSetup setup_latent(const at::Tensor& mu, const at::Tensor& scale, const at::Tensor& prior_mu,
                         const at::Tensor& prior_scale, const at::Tensor& eps) {
  LatentSetup s;
  s.has_prior = prior_mu.defined();
  TORCH_CHECK(s.has_prior == prior_scale.defined(), "fastelbo cuda: prior_mu and prior_scale go together");
  s.compute = compute_dtype({mu, scale, prior_mu, prior_scale});
  s.storage = storage_dtype({mu, scale, prior_mu, prior_scale, eps}, s.compute);
  std::vector<at::Tensor> tensors{cast(mu, s.storage), cast(scale, s.storage)};
  if (s.has_prior) {
    tensors.push_back(cast(prior_mu, s.storage).expand(mu.sizes()));
    tensors.push_back(cast(prior_scale, s.storage).expand(mu.sizes()));
  }
  s.plan = plan_rows(tensors, 1);
  s.rows = s.plan.shape.rows;
  s.dim = s.plan.shape.cols;
  s.pm_shared = s.has_prior && single_row(prior_mu, 1) && core::shared_across_rows(s.plan.strides[2]);
  s.ps_shared = s.has_prior && single_row(prior_scale, 1) && core::shared_across_rows(s.plan.strides[3]);
  return s;
}

template <typename S>
LatentInputs<S> latent_inputs(const LatentSetup& s, int64_t param) {
  LatentInputs<S> in;
  const RowStrides none{0, 0, 0, 0};
  in.mu = ptr<const S>(s.plan.tensors[0]);
  in.scale = ptr<const S>(s.plan.tensors[1]);
  in.prior_mu = s.has_prior ? ptr<const S>(s.plan.tensors[2]) : nullptr;
  in.prior_scale = s.has_prior ? ptr<const S>(s.plan.tensors[3]) : nullptr;
  in.shape = s.plan.shape;
  in.mu_st = s.plan.strides[0];
  in.sc_st = s.plan.strides[1];
  in.pm_st = s.has_prior ? s.plan.strides[2] : none;
  in.ps_st = s.has_prior ? s.plan.strides[3] : none;
  in.param = static_cast<int>(param);
  return in;
}

template <typename T>
void check_compute(const LatentSetup& s) {
  TORCH_CHECK(s.compute == (sizeof(T) == 8 ? at::kDouble : at::kFloat), "fastelbo cuda: compute dtype mismatch");
}

// The prior-gradient buffer of the backward kernels: (R, D), or (blocks, D) when shared.
at::Tensor prior_grad_buffer(const LatentSetup& s, bool shared, const at::Tensor& like) {
  const int64_t rows = shared ? latent_blocks(s.rows, s.dim) : s.rows;
  return at::empty({rows, s.dim}, like.options().dtype(s.compute));
}

// Sum the kernel's prior-gradient rows down to the prior's own shape and dtype.
at::Tensor reduce_prior_grad(const at::Tensor& buffer, bool shared, const at::Tensor& prior, const at::Tensor& mu) {
  at::Tensor full;
  if (shared) {
    std::vector<int64_t> sizes(static_cast<size_t>(mu.dim()), 1);
    sizes.back() = buffer.size(1);
    full = buffer.sum(0).view(sizes);
  } else {
    full = buffer.view(mu.sizes());
  }
  return full.sum_to_size(prior.sizes()).to(prior.scalar_type());
}

// What the latent and KL backward kernels write: grad mu and grad scale in the storage dtype, and
// the prior's gradient rows; finish() gives each input's gradient in its own shape and dtype.
struct PosteriorGradOutputs {
  at::Tensor grad_mu, grad_scale, grad_mu_out, grad_scale_out, pm_buffer, ps_buffer;

  PosteriorGradOutputs(const LatentSetup& s, const at::Tensor& mu, const at::Tensor& scale)
      : grad_mu(at::empty(mu.sizes(), mu.options())),
        grad_scale(at::empty(scale.sizes(), scale.options())),
        grad_mu_out(output_in(grad_mu, s.storage)),
        grad_scale_out(output_in(grad_scale, s.storage)),
        pm_buffer(s.has_prior ? prior_grad_buffer(s, s.pm_shared, mu) : at::Tensor()),
        ps_buffer(s.has_prior ? prior_grad_buffer(s, s.ps_shared, mu) : at::Tensor()) {}

  template <typename S, typename T, typename Params>
  void fill(Params& p, const LatentSetup& s) const {
    p.grad_mu = ptr<S>(grad_mu_out);
    p.grad_scale = ptr<S>(grad_scale_out);
    p.grad_prior_mu = ptr<T>(pm_buffer);
    p.grad_prior_scale = ptr<T>(ps_buffer);
    p.pm_shared = s.pm_shared;
    p.ps_shared = s.ps_shared;
  }

  Tensor4 finish(const LatentSetup& s, const at::Tensor& prior_mu, const at::Tensor& prior_scale,
                 const at::Tensor& mu) {
    finish_output(grad_mu, grad_mu_out);
    finish_output(grad_scale, grad_scale_out);
    if (!s.has_prior) return {grad_mu, grad_scale, at::empty({0}, mu.options()), at::empty({0}, mu.options())};
    return {grad_mu, grad_scale, reduce_prior_grad(pm_buffer, s.pm_shared, prior_mu, mu),
            reduce_prior_grad(ps_buffer, s.ps_shared, prior_scale, mu)};
  }
};

at::Tensor zeros_or_empty(const at::Tensor& prior, const at::Tensor& mu) {
  return prior.defined() ? at::zeros_like(prior) : at::empty({0}, mu.options());
}

// The flat forward (one event dim; `channels` > 1: its columns stored channels-last, see
// csrc/binding/event_dims.h), after the entry's checks.
Tensor5 gaussian_latent_flat_cuda(const Tensor& mu, const Tensor& scale, const OptTensor& prior_mu_opt,
                                  const OptTensor& prior_scale_opt, const OptTensor& eps_opt, const OptTensor& seed_opt,
                                  int64_t param, int64_t n_samples, bool stl, int64_t channels) {
  c10::cuda::CUDAGuard device_guard(mu.device());
  const at::Tensor prior_mu = value_or_undefined(prior_mu_opt), prior_scale = value_or_undefined(prior_scale_opt);
  const at::Tensor eps = value_or_undefined(eps_opt), seed = value_or_undefined(seed_opt);
  const at::ScalarType compute = compute_dtype({mu, scale, prior_mu, prior_scale});
  const int64_t k = sample_count(n_samples);
  const std::vector<int64_t> batch = batch_sizes(mu, 1);
  const std::vector<int64_t> z_sizes = with_samples(n_samples, mu.sizes());
  const std::vector<int64_t> q_sizes = with_samples(n_samples, batch);
  at::Tensor z = at::empty(z_sizes, mu.options());
  at::Tensor log_q = at::empty(q_sizes, mu.options().dtype(compute));
  at::Tensor log_p = at::empty(q_sizes, mu.options().dtype(compute));
  at::Tensor kl = at::empty(batch, mu.options().dtype(compute));
  at::Tensor no_seed = at::empty({0}, mu.options().dtype(at::kLong));
  if (log_q.numel() == 0) return {z, log_q, log_p, kl, no_seed};

  const LatentSetup s = setup_latent(mu, scale, prior_mu, prior_scale, eps);
  const int64_t rows = s.rows, dim = s.dim;
  at::Tensor eps_c;
  if (eps.defined()) {
    eps_c = cast(eps, s.storage).contiguous();
    TORCH_CHECK(eps_c.numel() == k * rows * dim, "fastelbo cuda: eps must have z's shape");
  } else {
    TORCH_CHECK(seed.defined() && seed.numel() == 1 && seed.scalar_type() == at::kLong && seed.device() == mu.device(),
                "fastelbo cuda: latent needs eps or an int64 seed on mu's device");
  }
  at::Tensor z_out = output_in(z, s.storage);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FE_DISPATCH_FLOAT(s.storage, "fastelbo_gaussian_latent_cuda", [&] {
    check_compute<T>(s);
    LatentFwdParams<S, T> p;
    p.in = latent_inputs<S>(s, param);
    p.eps = eps_c.defined() ? ptr<const S>(eps_c) : nullptr;
    p.seed = eps_c.defined() ? nullptr : seed.data_ptr<int64_t>();
    p.z = ptr<S>(z_out);
    p.log_q = ptr<T>(log_q);
    p.log_p = ptr<T>(log_p);
    p.kl = ptr<T>(kl);
    p.n_samples = k;
    p.channels = channels;
    p.half_log_2pi_d = static_cast<double>(dim) * core::kHalfLog2Pi;
    FE_LAUNCH(grid_x(latent_blocks(rows, dim)), kBlock, 0, stream, gaussian_latent_forward_kernel<S, T>)(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  finish_output(z, z_out);
  return {z, log_q, log_p, kl, no_seed};
}

// The flat backward (one event dim, `channels` as gaussian_latent_flat_cuda's).
Tensor4 gaussian_latent_backward_flat_cuda(const OptTensor& grad_z_opt, const OptTensor& grad_log_q_opt,
                                           const OptTensor& grad_log_p_opt, const OptTensor& grad_kl_opt,
                                           const Tensor& mu, const Tensor& scale, const OptTensor& prior_mu_opt,
                                           const OptTensor& prior_scale_opt, const OptTensor& eps_opt,
                                           const OptTensor& seed_opt, int64_t param, int64_t n_samples, bool stl,
                                           int64_t channels) {
  c10::cuda::CUDAGuard device_guard(mu.device());
  const at::Tensor prior_mu = value_or_undefined(prior_mu_opt), prior_scale = value_or_undefined(prior_scale_opt);
  const at::Tensor eps = value_or_undefined(eps_opt), seed = value_or_undefined(seed_opt);
  if (mu.numel() == 0) {
    return {at::zeros(mu.sizes(), mu.options()), at::zeros(scale.sizes(), scale.options()),
            zeros_or_empty(prior_mu, mu), zeros_or_empty(prior_scale, mu)};
  }

  const LatentSetup s = setup_latent(mu, scale, prior_mu, prior_scale, eps);
  const int64_t k = sample_count(n_samples), rows = s.rows, dim = s.dim;
  at::Tensor eps_c;
  if (eps.defined()) {
    eps_c = cast(eps, s.storage).contiguous();
    TORCH_CHECK(eps_c.numel() == k * rows * dim, "fastelbo cuda: eps must have z's shape");
  } else {
    TORCH_CHECK(seed.defined() && seed.numel() == 1 && seed.scalar_type() == at::kLong && seed.device() == mu.device(),
                "fastelbo cuda: latent_backward needs eps or an int64 seed on mu's device");
  }
  // Incoming gradients: z's in the storage dtype, the log-densities' in the compute dtype; views
  // where the layout allows (reshape copies otherwise), addressed through their strides.
  const at::Tensor gz = has(grad_z_opt) ? cast(*grad_z_opt, s.storage).reshape({k, rows, dim}) : at::Tensor();
  const at::Tensor gq = has(grad_log_q_opt) ? cast(*grad_log_q_opt, s.compute).reshape({k, rows}) : at::Tensor();
  const at::Tensor gp = has(grad_log_p_opt) ? cast(*grad_log_p_opt, s.compute).reshape({k, rows}) : at::Tensor();
  const at::Tensor gk = has(grad_kl_opt) ? cast(*grad_kl_opt, s.compute).reshape({rows}) : at::Tensor();
  PosteriorGradOutputs out(s, mu, scale);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FE_DISPATCH_FLOAT(s.storage, "fastelbo_gaussian_latent_backward_cuda", [&] {
    check_compute<T>(s);
    LatentBwdParams<S, T> p;
    p.in = latent_inputs<S>(s, param);
    p.eps = eps_c.defined() ? ptr<const S>(eps_c) : nullptr;
    p.seed = eps_c.defined() ? nullptr : seed.data_ptr<int64_t>();
    p.grad_z = ptr<const S>(gz);
    p.gz_sk = gz.defined() ? gz.stride(0) : 0;
    p.gz_sr = gz.defined() ? gz.stride(1) : 0;
    p.gz_sd = gz.defined() ? gz.stride(2) : 0;
    p.grad_log_q = ptr<const T>(gq);
    p.gq_sk = gq.defined() ? gq.stride(0) : 0;
    p.gq_sr = gq.defined() ? gq.stride(1) : 0;
    p.grad_log_p = ptr<const T>(gp);
    p.gp_sk = gp.defined() ? gp.stride(0) : 0;
    p.gp_sr = gp.defined() ? gp.stride(1) : 0;
    p.grad_kl = ptr<const T>(gk);
    p.gk_sr = gk.defined() ? gk.stride(0) : 0;
    out.fill<S, T>(p, s);
    p.n_samples = k;
    p.channels = channels;
    p.stl = stl;
    FE_LAUNCH(grid_x(latent_blocks(rows, dim)), kBlock, 0, stream, gaussian_latent_backward_kernel<S, T>)(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.finish(s, prior_mu, prior_scale, mu);
}

}  // namespace

// The fifth output is the seed the op drew itself: never on CUDA, where the caller draws it on the
// device (CUDA graphs), so it is always an empty int64 tensor here.
Tensor5 gaussian_latent_cuda(const Tensor& mu, const Tensor& scale, const OptTensor& prior_mu_opt,
                             const OptTensor& prior_scale_opt, const OptTensor& eps_opt, const OptTensor& seed_opt,
                             int64_t param, int64_t n_samples, bool stl, int64_t event_dims) {
  checks::posterior(mu, scale, prior_mu_opt, prior_scale_opt, param, "fastelbo.gaussian_latent");
  checks::noise(mu, eps_opt, seed_opt, n_samples, "fastelbo.gaussian_latent", /*may_draw=*/false);
  event_dims::check(mu, event_dims, "fastelbo.gaussian_latent");
  if (event_dims > 1) {  // one dim of D = their product (csrc/binding/event_dims.h)
    return event_dims::latent_forward(gaussian_latent_flat_cuda, mu, scale, prior_mu_opt, prior_scale_opt, eps_opt,
                                      seed_opt, param, n_samples, stl, event_dims);
  }
  return gaussian_latent_flat_cuda(mu, scale, prior_mu_opt, prior_scale_opt, eps_opt, seed_opt, param, n_samples, stl,
                                   1);
}

Tensor4 gaussian_latent_backward_cuda(const OptTensor& grad_z_opt, const OptTensor& grad_log_q_opt,
                                      const OptTensor& grad_log_p_opt, const OptTensor& grad_kl_opt, const Tensor& mu,
                                      const Tensor& scale, const OptTensor& prior_mu_opt,
                                      const OptTensor& prior_scale_opt, const OptTensor& eps_opt,
                                      const OptTensor& seed_opt, int64_t param, int64_t n_samples, bool stl,
                                      int64_t event_dims) {
  event_dims::check(mu, event_dims, "fastelbo.gaussian_latent_backward");
  if (event_dims > 1) {  // one dim of D = their product (csrc/binding/event_dims.h)
    return event_dims::latent_backward(gaussian_latent_backward_flat_cuda, grad_z_opt, grad_log_q_opt, grad_log_p_opt,
                                       grad_kl_opt, mu, scale, prior_mu_opt, prior_scale_opt, eps_opt, seed_opt, param,
                                       n_samples, stl, event_dims);
  }
  return gaussian_latent_backward_flat_cuda(grad_z_opt, grad_log_q_opt, grad_log_p_opt, grad_kl_opt, mu, scale,
                                            prior_mu_opt, prior_scale_opt, eps_opt, seed_opt, param, n_samples, stl, 1);
}

Tensor gaussian_kl_cuda(const Tensor& mu, const Tensor& scale, const OptTensor& prior_mu_opt,
                        const OptTensor& prior_scale_opt, int64_t param, bool per_dim) {
  c10::cuda::CUDAGuard device_guard(mu.device());
  const at::Tensor prior_mu = value_or_undefined(prior_mu_opt), prior_scale = value_or_undefined(prior_scale_opt);
  const at::ScalarType compute = compute_dtype({mu, scale, prior_mu, prior_scale});
  at::Tensor out = per_dim ? at::empty(mu.sizes(), mu.options().dtype(compute))
                           : at::empty(batch_sizes(mu, 1), mu.options().dtype(compute));
  if (mu.numel() == 0) return out.zero_();
  const LatentSetup s = setup_latent(mu, scale, prior_mu, prior_scale, at::Tensor());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FE_DISPATCH_FLOAT(s.storage, "fastelbo_gaussian_kl_cuda", [&] {
    check_compute<T>(s);
    KlFwdParams<S, T> p;
    p.in = latent_inputs<S>(s, param);
    p.out = ptr<T>(out);
    p.per_dim = per_dim;
    FE_LAUNCH(grid_x(latent_blocks(s.rows, s.dim)), kBlock, 0, stream, gaussian_kl_forward_kernel<S, T>)(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

Tensor4 gaussian_kl_backward_cuda(const Tensor& grad, const Tensor& mu, const Tensor& scale,
                                  const OptTensor& prior_mu_opt, const OptTensor& prior_scale_opt, int64_t param,
                                  bool per_dim) {
  c10::cuda::CUDAGuard device_guard(mu.device());
  const at::Tensor prior_mu = value_or_undefined(prior_mu_opt), prior_scale = value_or_undefined(prior_scale_opt);
  if (mu.numel() == 0) {
    return {at::zeros(mu.sizes(), mu.options()), at::zeros(scale.sizes(), scale.options()),
            zeros_or_empty(prior_mu, mu), zeros_or_empty(prior_scale, mu)};
  }

  const LatentSetup s = setup_latent(mu, scale, prior_mu, prior_scale, at::Tensor());
  const int64_t rows = s.rows, dim = s.dim;
  const at::Tensor g = per_dim ? cast(grad, s.compute).reshape({rows, dim}) : cast(grad, s.compute).reshape({rows});
  PosteriorGradOutputs out(s, mu, scale);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FE_DISPATCH_FLOAT(s.storage, "fastelbo_gaussian_kl_backward_cuda", [&] {
    check_compute<T>(s);
    KlBwdParams<S, T> p;
    p.in = latent_inputs<S>(s, param);
    p.grad = ptr<const T>(g);
    p.g_sr = g.stride(0);
    p.g_sd = per_dim ? g.stride(1) : 0;
    out.fill<S, T>(p, s);
    p.per_dim = per_dim;
    FE_LAUNCH(grid_x(latent_blocks(rows, dim)), kBlock, 0, stream, gaussian_kl_backward_kernel<S, T>)(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.finish(s, prior_mu, prior_scale, mu);
}

}  // namespace cuda
}  // namespace fastelbo
