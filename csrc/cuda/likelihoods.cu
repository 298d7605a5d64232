// ATen binding of the likelihood kernels (kernels/likelihoods.cuh): binary (Bernoulli and
// continuous Bernoulli), Gaussian (+ its backward), categorical. Output shapes and dtypes as
// fastelbo/triton_backend/likelihoods.py; gaussian_log_prob_backward as csrc/binding/schema.cpp.
#include "../binding/checks.h"
#include "aten_utils.cuh"
#include "kernels/likelihoods.cuh"
#include "ops.h"

namespace fastelbo {
namespace cuda {
namespace {

at::Tensor grad_buffer(bool need, const at::Tensor& like, at::ScalarType dtype) {
  return need ? at::empty(like.sizes(), like.options().dtype(dtype)) : at::empty({0}, like.options().dtype(dtype));
}

Tensor2 binary_log_prob(const Tensor& logits, const Tensor& x, int64_t event_dims, bool continuous, bool need_grad,
                        double expected_grad) {
  const char* op = continuous ? "fastelbo.continuous_bernoulli_log_prob" : "fastelbo.bernoulli_log_prob";
  checks::logits_and_data(logits, x, event_dims, op);
  checks::expected_grad(expected_grad, op);
  c10::cuda::CUDAGuard device_guard(logits.device());
  const at::ScalarType compute = compute_dtype({logits});
  at::Tensor out = at::empty(batch_sizes(logits, event_dims), logits.options().dtype(compute));
  at::Tensor grad = grad_buffer(need_grad, logits, compute);
  if (out.numel() == 0) return {out, grad};
  DataKind kind;
  const at::Tensor x_data = prepare_data(x, logits.scalar_type(), compute, &kind);
  const RowPlan plan = plan_rows({logits, x_data.expand(logits.sizes())}, event_dims);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FE_DISPATCH_FLOAT(logits.scalar_type(), "fastelbo_binary_log_prob_cuda", [&] {
    dispatch_data<S, T>(kind, [&](auto tag) {
      using X = typename decltype(tag)::type;
      BinaryParams<S, X, T> p;
      p.logits = ptr<const S>(plan.tensors[0]);
      p.x = ptr<const X>(plan.tensors[1]);
      p.out = ptr<T>(out);
      p.grad = need_grad ? ptr<T>(grad) : nullptr;
      p.shape = plan.shape;
      p.l_st = plan.strides[0];
      p.x_st = plan.strides[1];
      p.continuous = continuous;
      p.expected_grad = expected_grad;
      FE_LAUNCH(grid_x(likelihood_blocks(plan.shape.rows, plan.shape.cols)), kBlock, 0, stream,
                binary_log_prob_kernel<S, X, T>)(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, grad};
}

}  // namespace

Tensor2 bernoulli_log_prob_cuda(const Tensor& logits, const Tensor& x, int64_t event_dims, bool need_grad,
                                double expected_grad) {
  return binary_log_prob(logits, x, event_dims, false, need_grad, expected_grad);
}

Tensor2 continuous_bernoulli_log_prob_cuda(const Tensor& logits, const Tensor& x, int64_t event_dims, bool need_grad,
                                           double expected_grad) {
  return binary_log_prob(logits, x, event_dims, true, need_grad, expected_grad);
}

Tensor2 gaussian_log_prob_cuda(const Tensor& mean, const Tensor& x, const OptTensor& logvar_opt, double logvar_value,
                               int64_t event_dims, bool need_grad, double expected_grad) {
  checks::gaussian(mean, x, logvar_opt, logvar_value, event_dims, "fastelbo.gaussian_log_prob");
  checks::expected_grad(expected_grad, "fastelbo.gaussian_log_prob");
  c10::cuda::CUDAGuard device_guard(mean.device());
  const at::Tensor logvar = value_or_undefined(logvar_opt);
  const at::ScalarType compute = compute_dtype({mean, logvar});
  at::Tensor out = at::empty(batch_sizes(mean, event_dims), mean.options().dtype(compute));
  at::Tensor grad_mean = grad_buffer(need_grad, mean, compute);
  if (out.numel() == 0) return {out, grad_mean};
  const at::ScalarType storage = storage_dtype({mean, logvar}, compute);
  DataKind kind;
  const at::Tensor x_data = prepare_data(x, storage, compute, &kind);
  std::vector<at::Tensor> tensors{cast(mean, storage), x_data.expand(mean.sizes())};
  if (logvar.defined()) tensors.push_back(cast(logvar, storage).expand(mean.sizes()));
  const RowPlan plan = plan_rows(tensors, event_dims);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FE_DISPATCH_FLOAT(storage, "fastelbo_gaussian_log_prob_cuda", [&] {
    dispatch_data<S, T>(kind, [&](auto tag) {
      using X = typename decltype(tag)::type;
      GaussianParams<S, X, T> p;
      p.mean = ptr<const S>(plan.tensors[0]);
      p.x = ptr<const X>(plan.tensors[1]);
      p.logvar = logvar.defined() ? ptr<const S>(plan.tensors[2]) : nullptr;
      p.out = ptr<T>(out);
      p.grad_mean = need_grad ? ptr<T>(grad_mean) : nullptr;
      p.shape = plan.shape;
      p.m_st = plan.strides[0];
      p.x_st = plan.strides[1];
      p.v_st = logvar.defined() ? plan.strides[2] : RowStrides{0, 0, 0, 0};
      p.logvar_value = logvar_value;
      p.expected_grad = expected_grad;
      p.half_log_2pi_n = static_cast<double>(plan.shape.cols) * core::kHalfLog2Pi;
      FE_LAUNCH(grid_x(likelihood_blocks(plan.shape.rows, plan.shape.cols)), kBlock, 0, stream,
                gaussian_log_prob_kernel<S, X, T>)(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, grad_mean};
}

Tensor2 gaussian_log_prob_backward_cuda(const Tensor& grad_out, const Tensor& buffer, const OptTensor& logvar_opt,
                                        double logvar_value, int64_t event_dims, bool need_logvar,
                                        double expected_grad, bool need_mean) {
  (void)logvar_value;  // the logvar gradient exists only for a logvar tensor
  checks::expected_grad(expected_grad, "fastelbo.gaussian_log_prob_backward");
  c10::cuda::CUDAGuard device_guard(buffer.device());
  const at::ScalarType compute = buffer.scalar_type();
  TORCH_CHECK(compute == at::kFloat || compute == at::kDouble, "fastelbo cuda: grad_mean_buffer must be float32/64");
  const at::Tensor logvar = need_logvar ? value_or_undefined(logvar_opt) : at::Tensor();
  const int64_t ndim = buffer.dim();
  int64_t cols = 1;
  for (int64_t i = ndim - event_dims; i < ndim; ++i) cols *= buffer.size(i);

  at::Tensor grad_mean = at::empty(need_mean ? buffer.sizes() : at::IntArrayRef{0}, buffer.options());

  // logvar is cast to the compute dtype only when its own compute dtype differs (float64 mean).
  const at::Tensor lv = (logvar.defined() && compute == at::kDouble) ? cast(logvar, at::kDouble) : logvar;
  std::vector<at::Tensor> tensors{buffer.contiguous()};
  if (lv.defined()) tensors.push_back(lv.expand(buffer.sizes()));
  const RowPlan plan = plan_rows(tensors, event_dims);
  const bool shared = lv.defined() && single_row(lv, event_dims) && core::shared_across_rows(plan.strides[1]);
  const int64_t rows = plan.shape.rows;
  TORCH_CHECK(plan.shape.cols == cols, "fastelbo cuda: gaussian backward layout");
  // The logvar gradient, summed per block (shared) or per element, to logvar's own shape and dtype.
  auto finish = [&](at::Tensor grad_logvar) -> Tensor2 {
    if (!lv.defined()) return {grad_mean, grad_logvar};
    std::vector<int64_t> full(buffer.sizes().begin(), buffer.sizes().end());
    if (shared) {
      std::fill(full.begin(), full.end() - event_dims, 1);
      grad_logvar = grad_logvar.sum(0);
    }
    return {grad_mean, grad_logvar.view(full).sum_to_size(logvar.sizes()).to(logvar.scalar_type())};
  };
  if (buffer.numel() == 0) {
    return finish(lv.defined()
                      ? at::zeros(shared ? std::vector<int64_t>{1, cols} : buffer.sizes().vec(), buffer.options())
                      : at::empty({0}, buffer.options()));
  }
  const ColumnGrid cg = column_grid(rows, cols);
  at::Tensor grad_logvar = !lv.defined() ? at::empty({0}, buffer.options())
                           : shared      ? at::empty({cg.chunks, cols}, buffer.options())
                                         : at::empty(buffer.sizes(), buffer.options());
  const at::Tensor go = grad_out.to(compute).reshape({rows});
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FE_DISPATCH_FLOAT(lv.defined() ? lv.scalar_type() : compute, "fastelbo_gaussian_log_prob_backward_cuda", [&] {
    TORCH_CHECK(compute == (sizeof(T) == 8 ? at::kDouble : at::kFloat), "fastelbo cuda: compute dtype mismatch");
    GaussianBwdParams<S, T> p;
    p.grad_out = ptr<const T>(go);
    p.go_sr = go.stride(0);
    p.buffer = ptr<const T>(plan.tensors[0]);
    p.logvar = lv.defined() ? ptr<const S>(plan.tensors[1]) : nullptr;
    p.shape = plan.shape;
    p.v_st = lv.defined() ? plan.strides[1] : RowStrides{0, 0, 0, 0};
    p.grad_mean = need_mean ? ptr<T>(grad_mean) : nullptr;
    p.expected_grad = expected_grad;
    p.grad_logvar = lv.defined() ? ptr<T>(grad_logvar) : nullptr;
    p.v_shared = shared;
    p.col_threads = cg.col_threads;
    p.rows_per_chunk = cg.rows_per_chunk;
    TORCH_CHECK(cg.chunks <= 65535, "fastelbo cuda: grid too large");
    const dim3 grid(grid_x(cg.col_tiles), static_cast<unsigned>(cg.chunks));
    FE_LAUNCH(grid, kBlock, 0, stream, gaussian_log_prob_bwd_kernel<S, T>)(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return finish(grad_logvar);
}

Tensor2 categorical_log_prob_cuda(const Tensor& logits, const Tensor& target, int64_t event_dims, bool need_grad) {
  c10::cuda::CUDAGuard device_guard(logits.device());
  const at::ScalarType compute = compute_dtype({logits});
  const std::vector<int64_t> elem_sizes = batch_sizes(logits, 1);
  at::Tensor grad = grad_buffer(need_grad, logits, compute);
  at::Tensor per_element = at::empty(elem_sizes, logits.options().dtype(compute));
  if (per_element.numel() > 0) {
    const at::Tensor target_full = target.expand(elem_sizes).unsqueeze(-1).expand(logits.sizes());
    const RowPlan plan = plan_rows({logits, target_full}, 1);
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    FE_DISPATCH_FLOAT(logits.scalar_type(), "fastelbo_categorical_log_prob_cuda", [&] {
      AT_DISPATCH_INTEGRAL_TYPES(target.scalar_type(), "fastelbo_categorical_target", [&] {
        using I = scalar_t;
        CategoricalParams<S, I, T> p;
        p.logits = ptr<const S>(plan.tensors[0]);
        p.target = ptr<const I>(plan.tensors[1]);
        p.out = ptr<T>(per_element);
        p.grad = need_grad ? ptr<T>(grad) : nullptr;
        p.shape = plan.shape;
        p.l_st = plan.strides[0];
        p.t_st = plan.strides[1];
        FE_LAUNCH(grid_x(likelihood_blocks(plan.shape.rows, plan.shape.cols)), kBlock, 0, stream,
                  categorical_log_prob_kernel<S, I, T>)(p);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  if (event_dims == 0) return {per_element, grad};
  std::vector<int64_t> dims;
  for (int64_t d = -event_dims; d < 0; ++d) dims.push_back(d);
  return {per_element.sum(dims), grad};
}

}  // namespace cuda
}  // namespace fastelbo
