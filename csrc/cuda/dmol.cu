// ATen binding of the discretized logistic mixture kernel (kernels/dmol.cuh). Output shapes and
// dtypes as fastelbo/ops/discretized_logistic_mixture_log_prob.py's fake: out of params' batch shape
// (params.shape[:dim - 1 - event_dims]) in the compute dtype (float32, float64 for float64 params),
// and the gradient buffer empty_like(params) in the compute dtype (a dense params' strides), or an
// empty tensor without need_grad.
//
// Layout: params (..., 10 M), x expanded to (..., 3) (a view) and the buffer are planned as R
// images x N pixels through their pixel views (select(-1, 0)) plus each one's channel stride
// (stride(-1)): NCHW viewed channels-last, channels-last, broadcast x are all read in place. Only
// where plan_rows cannot address a pixel view (it had to copy it), the whole tensor is made
// contiguous instead (x's broadcast then materialized; the buffer written to a contiguous temporary
// and copied into the empty_like buffer), and the plan redone.
#include <cmath>

#include "../binding/checks.h"
#include "aten_utils.cuh"
#include "kernels/dmol.cuh"
#include "ops.h"

namespace fastelbo {
namespace cuda {
namespace {

constexpr const char* kOp = "fastelbo.discretized_logistic_mixture_log_prob";

// The pixel views of `full` (params, x, buffer: each (..., C)) planned together; a full tensor whose
// pixel view plan_rows had to copy is replaced by a contiguous copy (a fresh contiguous tensor for
// the buffer, whose contents are not read) and the plan redone: at most twice (all contiguous
// tensors plan without copies).
RowPlan plan_pixels(std::vector<at::Tensor>& full, size_t buffer_index, int64_t event_dims) {
  for (int attempt = 0;; ++attempt) {
    std::vector<at::Tensor> views;
    for (const auto& t : full) views.push_back(t.select(-1, 0));
    RowPlan plan = plan_rows(views, event_dims);
    bool addressed = true;
    for (size_t j = 0; j < full.size(); ++j) {
      if (plan.tensors[j].is_same(views[j])) continue;
      addressed = false;
      if (full[j].is_contiguous()) continue;
      full[j] = j == buffer_index ? at::empty(full[j].sizes(), full[j].options()) : full[j].contiguous();
    }
    if (addressed) return plan;
    TORCH_CHECK(attempt < 2, kOp, ": internal error: contiguous tensors' pixels not addressed");
    if (attempt == 1) {  // only a mix of layouts left: every tensor contiguous
      for (size_t j = 0; j < full.size(); ++j) {
        if (full[j].is_contiguous()) continue;
        full[j] = j == buffer_index ? at::empty(full[j].sizes(), full[j].options()) : full[j].contiguous();
      }
    }
  }
}

}  // namespace

Tensor2 discretized_logistic_mixture_log_prob_cuda(const Tensor& params, const Tensor& x, int64_t n_mix, int64_t bits,
                                                   int64_t event_dims, bool need_grad) {
  checks::dmol(params, x, n_mix, bits, event_dims, kOp);
  c10::cuda::CUDAGuard device_guard(params.device());
  const at::ScalarType compute = compute_dtype({params});
  const int64_t ndim = params.dim();
  std::vector<int64_t> batch(params.sizes().begin(), params.sizes().begin() + (ndim - 1 - event_dims));
  at::Tensor out = at::empty(batch, params.options().dtype(compute));
  at::Tensor buffer = need_grad ? at::empty_like(params, params.options().dtype(compute))
                                : at::empty({0}, params.options().dtype(compute));
  if (out.numel() == 0) return {out, buffer};
  if (params.numel() == 0) {  // images without pixels: sums over nothing
    out.zero_();
    return {out, buffer};
  }

  // x read as params' storage type, else cast (small before its expansion) to the compute type.
  const bool x_same = x.scalar_type() == params.scalar_type();
  std::vector<int64_t> x_shape(params.sizes().begin(), params.sizes().end());
  x_shape.back() = 3;
  std::vector<at::Tensor> full{params, (x_same ? x : x.to(compute)).expand(x_shape)};
  if (need_grad) full.push_back(buffer);
  const RowPlan plan = plan_pixels(full, 2, event_dims);
  const at::Tensor& grad = need_grad ? full[2] : buffer;  // buffer itself, or its contiguous stand-in

  const DmolGrid grid = dmol_grid(plan.shape.rows, plan.shape.cols);
  TORCH_CHECK(grid.chunks >= 1 && grid.chunks <= 65535, kOp, ": grid too large");
  at::Tensor partial = grid.chunks > 1 ? at::empty({plan.shape.rows, grid.chunks}, out.options()) : at::Tensor();
  const double levels = std::ldexp(1.0, static_cast<int>(bits)) - 1.0;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FE_DISPATCH_FLOAT(params.scalar_type(), "fastelbo_dmol_log_prob_cuda", [&] {
    auto launch = [&](auto tag) {
      using X = typename decltype(tag)::type;
      DmolParams<S, X, T> p;
      p.params = ptr<const S>(full[0]);
      p.x = ptr<const X>(full[1]);
      p.out = ptr<T>(out);
      p.partial = ptr<T>(partial);
      p.grad = need_grad ? ptr<T>(grad) : nullptr;
      p.shape = plan.shape;
      p.p_st = plan.strides[0];
      p.x_st = plan.strides[1];
      p.g_st = need_grad ? plan.strides[2] : RowStrides{0, 0, 0, 0};
      p.p_ch = full[0].stride(-1);
      p.x_ch = full[1].stride(-1);
      p.g_ch = need_grad ? grad.stride(-1) : 0;
      p.n_mix = n_mix;
      p.h = 1.0 / levels;
      p.log_half_levels = std::log(levels / 2.0);
      p.grid = grid;
      const dim3 blocks(grid_x(grid.row_blocks), static_cast<unsigned>(grid.chunks));
      FE_LAUNCH(blocks, kBlock, 0, stream, dmol_log_prob_kernel<S, X, T>)(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (grid.chunks > 1) {
        FE_LAUNCH(grid_x(flat_blocks(plan.shape.rows)), kBlock, 0, stream, dmol_sum_partials_kernel<T>)(
            ptr<const T>(partial), ptr<T>(out), plan.shape.rows, grid.chunks);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    };
    if (x_same) {
      launch(Tag<S>{});
    } else {
      launch(Tag<T>{});
    }
  });
  if (need_grad && !grad.is_same(buffer)) buffer.copy_(grad);
  return {out, buffer};
}

}  // namespace cuda
}  // namespace fastelbo
