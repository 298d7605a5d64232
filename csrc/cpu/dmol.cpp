// The discretized mixture of logistics on the CPU (the formulas: csrc/core/dmol.h): one pass that
// writes each image's log-likelihood and, when gradients are needed, d out / d params (10 M per
// pixel) into a buffer fastelbo owns (params' layout, compute dtype); the backward scales it by the
// image's incoming gradient.
//
// The channel dim is last (params (..., 10 M), x (..., 3)), every other dim is read through its
// strides: the tensors' channel-0 views are planned as R rows (images) of N pixels (plan.h), each
// tensor with its own channel stride, so NCHW and channels-last tensors and a broadcast x are never
// copied. SIMD lanes are pixels: for a vector of W pixels, one pass over the M components computes
// each component's log-density and derivatives (csrc/core/dmol.h) into a small scratch, then the
// logsumexp over components and, with gradients, the responsibilities w_m that weight them:
//   d/d pi_m = w_m - softmax(pi)_m,   d/d (mu, s, a)_c,m = w_m d log p_m / d (mu, s, a)_c,m.
// Work is split into fixed chunks of pixels, each chunk's sum kept apart and the chunks of an image
// added in order: the result does not depend on the thread count.
#include "../core/dmol.h"

#include <limits>
#include <vector>

#include "../binding/checks.h"
#include "../binding/plan.h"
#include "common.h"
#include "ops.h"

namespace fastelbo {
namespace {

using at::Tensor;

constexpr int64_t kChunkPixels = 256;
// Per component of a pixel vector: pi_m, then a_m (the component's log-weight plus log-density), e^(pi_m - max),
// and the 9 derivatives (mean, scale, coeff per channel).
constexpr int64_t kSlots = 11;

// The channel-0 views of params, x and the buffer planned as rows of pixels, and each tensor's
// channel stride. False where a view would need a copy (plan_rows made it contiguous).
bool plan_pixels(const Tensor& params, const Tensor& x, const Tensor& buffer, int64_t event_dims, RowPlan* plan,
                 int64_t channel_strides[3]) {
  const Tensor& written = buffer.defined() ? buffer : params;
  std::vector<Tensor> views = {params.select(-1, 0), x.select(-1, 0), written.select(-1, 0)};
  *plan = plan_rows(views, event_dims);
  for (size_t i = 0; i < views.size(); ++i) {
    if (!plan->tensors[i].is_same(views[i])) return false;
  }
  channel_strides[0] = params.stride(-1);
  channel_strides[1] = x.stride(-1);
  channel_strides[2] = written.stride(-1);
  return true;
}

template <typename scalar_t, typename x_t>
void dmol_kernel(const RowPlan& plan, const int64_t cs[3], int64_t M, int64_t bits, bool need_grad, Tensor& out) {
  using T = compute_t<scalar_t>;
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const scalar_t* p_ptr = plan.tensors[0].const_data_ptr<scalar_t>();
  const x_t* x_ptr = plan.tensors[1].const_data_ptr<x_t>();
  T* g_ptr = need_grad ? static_cast<T*>(plan.tensors[2].data_ptr()) : nullptr;
  const core::RowStrides ps = plan.strides[0], xs = plan.strides[1], gs = plan.strides[2];
  const int64_t R = plan.shape.rows, N = plan.shape.cols;
  const int64_t chunks = (N + kChunkPixels - 1) / kChunkPixels;
  const double levels = static_cast<double>((int64_t{1} << bits) - 1);
  const V h(static_cast<T>(1.0 / levels)), log_half_levels(static_cast<T>(std::log(levels / 2.0)));
  const V neg_inf(-std::numeric_limits<T>::infinity());
  std::vector<T> partial(R * chunks);
  static_flag(need_grad, [&](auto grad) {
    constexpr bool kGrad = decltype(grad)::value;
    at::parallel_for(0, R * chunks, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(kSlots * M * W);
      auto slot = [&](int64_t m, int64_t k) { return scratch.data() + (m * kSlots + k) * W; };
      for (int64_t task = begin; task < end; ++task) {
        const int64_t r = task / chunks, c0 = (task % chunks) * kChunkPixels;
        const scalar_t* p_row = p_ptr + core::row_offset(r, plan.shape, ps);
        const x_t* x_row = x_ptr + core::row_offset(r, plan.shape, xs);
        T* g_row = need_grad ? g_ptr + core::row_offset(r, plan.shape, gs) : nullptr;
        V acc(T(0));
        for_vectors<W>(std::min(kChunkPixels, N - c0), [&](int64_t offset, auto n) {
          const int64_t j = c0 + offset;
          auto param = [&](int64_t k) { return load<T>(p_row + j * ps.sc + k * cs[0], ps.sc, n); };
          auto put = [&](int64_t k, const V& v) { store<T>(g_row + j * gs.sc + k * cs[2], gs.sc, v, n); };
          V x[3];
          for (int c = 0; c < 3; ++c) x[c] = load<T>(x_row + j * xs.sc + c * cs[1], xs.sc, n);
          // log_softmax of the mixture logits: max, then the sum of e^(pi - max)
          // (the logits read once, into slot 0, which the component's log-weight overwrites below)
          V pi_max = neg_inf;
          for (int64_t m = 0; m < M; ++m) {
            const V pi = param(m);
            pi.store(slot(m, 0));
            pi_max = at::vec::maximum(pi_max, pi);
          }
          V pi_sum(T(0));
          for (int64_t m = 0; m < M; ++m) {
            const V e = vexp(V::loadu(slot(m, 0)) - pi_max);
            pi_sum += e;
            e.store(slot(m, 1));
          }
          const V log_norm = pi_max + pi_sum.log();
          V a_max = neg_inf;
          for (int64_t m = 0; m < M; ++m) {
            V mu[3], s[3], a[3];
            for (int c = 0; c < 3; ++c) {
              const int64_t base = M + 3 * M * c + m;
              mu[c] = param(base);
              s[c] = param(base + M);
              a[c] = param(base + 2 * M);
            }
            const core::DmolComponent<V> comp = core::dmol_component<kGrad, V>(x, mu, s, a, h, log_half_levels);
            const V am = V::loadu(slot(m, 0)) - log_norm + comp.log_prob;
            a_max = at::vec::maximum(a_max, am);
            am.store(slot(m, 0));
            if constexpr (kGrad) {
              for (int c = 0; c < 3; ++c) {
                comp.d_mean[c].store(slot(m, 2 + c));
                comp.d_scale[c].store(slot(m, 5 + c));
                comp.d_coeff[c].store(slot(m, 8 + c));
              }
            }
          }
          V sum(T(0));
          for (int64_t m = 0; m < M; ++m) sum += vexp(V::loadu(slot(m, 0)) - a_max);
          const V lse = a_max + sum.log();
          acc += first(lse, n);
          if constexpr (!kGrad) return;
          const V inv_pi_sum = V(T(1)) / pi_sum;
          for (int64_t m = 0; m < M; ++m) {
            const V w = vexp(V::loadu(slot(m, 0)) - lse);
            put(m, w - V::loadu(slot(m, 1)) * inv_pi_sum);
            for (int c = 0; c < 3; ++c) {
              const int64_t base = M + 3 * M * c + m;
              put(base, w * V::loadu(slot(m, 2 + c)));
              put(base + M, w * V::loadu(slot(m, 5 + c)));
              put(base + 2 * M, w * V::loadu(slot(m, 8 + c)));
            }
          }
        });
        partial[task] = hsum(acc);
      }
    });
  });
  T* out_ptr = out.data_ptr<T>();
  for (int64_t r = 0; r < R; ++r) {
    T total = T(0);
    for (int64_t k = 0; k < chunks; ++k) total += partial[r * chunks + k];
    out_ptr[r] = total;
  }
}

}  // namespace

std::tuple<Tensor, Tensor> discretized_logistic_mixture_log_prob_cpu(const Tensor& params, const Tensor& x,
                                                                     int64_t n_mix, int64_t bits, int64_t event_dims,
                                                                     bool need_grad) {
  checks::dmol(params, x, n_mix, bits, event_dims, "fastelbo.discretized_logistic_mixture_log_prob");
  const at::ScalarType dtype = params.scalar_type(), compute = compute_dtype(dtype);
  std::vector<int64_t> out_shape(params.sizes().begin(), params.sizes().end() - 1 - event_dims);
  Tensor out = at::empty(out_shape, params.options().dtype(compute));
  // The buffer keeps params' layout (empty_like: a dense params' strides), as the op's fake says.
  Tensor buffer = need_grad ? at::empty_like(params, params.options().dtype(compute))
                            : at::empty({0}, params.options().dtype(compute));
  if (out.numel() == 0) return {out, buffer};
  if (params.numel() == 0) return {out.zero_(), buffer};  // no pixels: log 1
  // x is read in params' dtype or in the compute dtype (a copy only for a third dtype).
  std::vector<int64_t> x_shape = params.sizes().vec();
  x_shape.back() = 3;
  Tensor x_full = as_dtype(x, x.scalar_type() == dtype ? dtype : compute).expand(x_shape);
  RowPlan plan;
  int64_t channel_strides[3];
  Tensor p_used = params, written = need_grad ? buffer : Tensor();
  if (!plan_pixels(p_used, x_full, written, event_dims, &plan, channel_strides)) {
    // A layout whose pixels cannot be addressed as rows (rare: e.g. more than three row dims that
    // do not merge): contiguous copies, the gradient copied back into the buffer.
    p_used = params.contiguous();
    x_full = x_full.contiguous();
    written = need_grad ? at::empty(params.sizes(), params.options().dtype(compute)) : Tensor();
    TORCH_CHECK(plan_pixels(p_used, x_full, written, event_dims, &plan, channel_strides),
                "fastelbo: discretized_logistic_mixture_log_prob could not plan contiguous tensors");
  }
  FASTELBO_DISPATCH_FLOAT(dtype, "fastelbo_dmol_cpu", [&] {
    using T = compute_t<scalar_t>;
    if (x_full.scalar_type() == dtype) {
      dmol_kernel<scalar_t, scalar_t>(plan, channel_strides, n_mix, bits, need_grad, out);
    } else {
      dmol_kernel<scalar_t, T>(plan, channel_strides, n_mix, bits, need_grad, out);
    }
  });
  if (need_grad && !written.is_same(buffer)) buffer.copy_(written);
  return {out, buffer};
}

}  // namespace fastelbo
