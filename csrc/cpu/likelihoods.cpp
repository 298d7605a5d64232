// The likelihoods log p(x|z) on the CPU, summed over the event dims: one pass that writes each
// row's log-prob and, when gradients are needed, the elementwise gradient into a buffer fastelbo
// owns (contiguous, compute dtype); the backward pass scales it by the row's incoming gradient.
// The binary likelihoods write it times expected_grad, the gradient the caller expects each row
// to receive (the op's schema: csrc/binding/schema.cpp).
//
//   Bernoulli:             x l - softplus(l),                 d/dl = x - sigmoid(l)
//   continuous Bernoulli:  x l - softplus(l) + log C(l),      d/dl = x - sigmoid(l) + dlog C/dl
//   Gaussian:              -((x - m)^2 e^-v + v + log 2 pi)/2, d/dm = (x - m) e^-v,
//                          d/dv = ((x - m)^2 e^-v - 1)/2 = ((buf e^(v/2))^2 - 1)/2 with buf = d/dm
//   categorical:           l_t - logsumexp(l) (NaN for t outside [0, C)),  d/dl = onehot(t) - softmax(l)
//
// Parameters are read as R rows of N event elements through their strides; x through its own, so
// a broadcast x (stride 0 along the dims it lacks) is never copied.
#include <algorithm>
#include <limits>
#include <vector>

#include "../binding/checks.h"
#include "../binding/plan.h"
#include "common.h"
#include "ops.h"

namespace fastelbo {
namespace {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;

std::vector<int64_t> batch_shape(const Tensor& params, int64_t event_dims) {
  auto s = params.sizes();
  return std::vector<int64_t>(s.begin(), s.end() - event_dims);
}

Tensor grad_buffer(bool need, const Tensor& like, at::ScalarType dtype) {
  return need ? at::empty(like.sizes(), like.options().dtype(dtype)) : at::empty({0}, like.options().dtype(dtype));
}

template <typename scalar_t, typename x_t>
void binary_kernel(const RowPlan& plan, bool continuous, bool need_grad, double expected_grad, Tensor& out,
                   Tensor& grad) {
  using T = compute_t<scalar_t>;
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const scalar_t* l_ptr = plan.tensors[0].const_data_ptr<scalar_t>();
  const x_t* x_ptr = plan.tensors[1].const_data_ptr<x_t>();
  const core::RowStrides ls = plan.strides[0], xs = plan.strides[1];
  const int64_t R = plan.shape.rows, N = plan.shape.cols;
  T* out_ptr = out.data_ptr<T>();
  T* g_ptr = need_grad ? grad.data_ptr<T>() : nullptr;
  const V g_scale(static_cast<T>(expected_grad));
  static_flag(ls.sc == 1 && xs.sc == 1, [&](auto unit) {
  const int64_t lsc = unit ? 1 : ls.sc, xsc = unit ? 1 : xs.sc;
  at::parallel_for(0, R, grain_rows(N), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* l_row = l_ptr + core::row_offset(r, plan.shape, ls);
      const x_t* x_row = x_ptr + core::row_offset(r, plan.shape, xs);
      V acc(T(0));
      for_vectors<W>(N, [&](int64_t j, auto n) {
        const V l = load<T>(l_row + j * lsc, lsc, n);
        const V x = load<T>(x_row + j * xsc, xsc, n);
        auto vg = core::bernoulli_terms<V>(l, x);
        if (continuous) {
          auto cb = core::cb_log_normalizer_terms<V>(l);
          vg.value = vg.value + cb.value;
          vg.grad = vg.grad + cb.grad;
        }
        acc += first(vg.value, n);
        if (need_grad) (vg.grad * g_scale).store(g_ptr + r * N + j, n);
      });
      out_ptr[r] = hsum(acc);
    }
  });
  });
}

// A logvar shared by every row (e.g. one per pixel) is read once per task: v and e^-v per column.
template <typename T, typename scalar_t>
struct SharedLogvar {
  std::vector<T> v, inv_var;
  SharedLogvar(const scalar_t* v_row, int64_t sc, int64_t N) : v(N), inv_var(N) {
    for (int64_t j = 0; j < N; ++j) v[j] = static_cast<T>(v_row[j * sc]);
    for (int64_t j = 0; j < N; j += Vec<T>::size()) {
      const int64_t n = std::min<int64_t>(Vec<T>::size(), N - j);
      vexp(Vec<T>(T(0)) - Vec<T>::loadu(v.data() + j, n)).store(inv_var.data() + j, n);
    }
  }
};

template <typename scalar_t>
void gaussian_kernel(const RowPlan& plan, bool has_logvar, double logvar_value, bool need_grad, double expected_grad,
                     Tensor& out, Tensor& grad) {
  using T = compute_t<scalar_t>;
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const scalar_t* m_ptr = plan.tensors[0].const_data_ptr<scalar_t>();
  const scalar_t* x_ptr = plan.tensors[1].const_data_ptr<scalar_t>();
  const scalar_t* v_ptr = has_logvar ? plan.tensors[2].const_data_ptr<scalar_t>() : nullptr;
  const core::RowStrides ms = plan.strides[0], xs = plan.strides[1];
  const core::RowStrides vs = has_logvar ? plan.strides[2] : core::RowStrides{0, 0, 0, 0};
  const bool v_shared = has_logvar && core::shared_across_rows(vs);
  const bool unit_strides = ms.sc == 1 && xs.sc == 1;
  const int64_t R = plan.shape.rows, N = plan.shape.cols;
  const T v_scalar = static_cast<T>(logvar_value);
  const V inv_var_scalar = vexp(V(v_scalar * T(-1)));
  const T half_log_2pi_n = static_cast<T>(static_cast<double>(N) * core::kHalfLog2Pi);
  T* out_ptr = out.data_ptr<T>();
  T* g_ptr = need_grad ? grad.data_ptr<T>() : nullptr;
  const V g_scale(static_cast<T>(expected_grad));
  static_flag(unit_strides, [&](auto unit) {
    static_flag(v_shared, [&](auto shared_v) {
      const int64_t msc = unit ? 1 : ms.sc, xsc = unit ? 1 : xs.sc;
      at::parallel_for(0, R, grain_rows(N), [&](int64_t begin, int64_t end) {
        const SharedLogvar<T, scalar_t> shared(v_ptr, vs.sc, shared_v ? N : 0);
        for (int64_t r = begin; r < end; ++r) {
          const scalar_t* m_row = m_ptr + core::row_offset(r, plan.shape, ms);
          const scalar_t* x_row = x_ptr + core::row_offset(r, plan.shape, xs);
          const scalar_t* v_row = has_logvar ? v_ptr + core::row_offset(r, plan.shape, vs) : nullptr;
          V acc(T(0));
          for_vectors<W>(N, [&](int64_t j, auto n) {
            const V diff = load<T>(x_row + j * xsc, xsc, n) - load<T>(m_row + j * msc, msc, n);
            V v = V(v_scalar), inv_var = inv_var_scalar;
            if constexpr (decltype(shared_v)::value) {
              v = V::loadu(shared.v.data() + j, n);
              inv_var = V::loadu(shared.inv_var.data() + j, n);
            } else if (has_logvar) {
              v = load<T>(v_row + j * vs.sc, vs.sc, n);
              inv_var = vexp(V(T(0)) - v);
            }
            acc += first(diff * diff * inv_var + v, n);
            if (need_grad) (diff * inv_var * g_scale).store(g_ptr + r * N + j, n);
          });
          out_ptr[r] = T(-0.5) * hsum(acc) - half_log_2pi_n;
        }
      });
    });
  });
}

// buf = c b (c = expected_grad, b = (x - m) e^-v): grad_mean = (g_r / c) buf (unless !need_mean: the
// caller hands buf over itself);  d/dv = g_r ((b e^(v/2))^2 - 1)/2 with b = buf / c (= g_r ((x -
// m)^2 e^-v - 1)/2, without overflow), summed over each block of rows when logvar is shared by every
// row (fixed blocks: the sum does not depend on the thread count).
template <typename T, typename v_t>
void gaussian_backward_kernel(const Tensor& g, const Tensor& buffer, const RowPlan* v_plan, T expected_grad,
                              bool need_mean, Tensor& grad_mean, Tensor& grad_v, bool v_shared, int64_t block) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const int64_t R = g.numel(), N = R ? buffer.numel() / R : 0;
  const T* g_ptr = g.const_data_ptr<T>();
  const T* b_ptr = buffer.const_data_ptr<T>();
  T* gm_ptr = need_mean ? grad_mean.data_ptr<T>() : nullptr;
  const V inv_c(T(1) / expected_grad);
  T* gv_ptr = v_plan ? grad_v.data_ptr<T>() : nullptr;
  const v_t* v_ptr = v_plan ? v_plan->tensors[0].const_data_ptr<v_t>() : nullptr;
  const core::RowStrides vs = v_plan ? v_plan->strides[0] : core::RowStrides{0, 0, 0, 0};
  const int64_t blocks = (R + block - 1) / block;
  static_flag(v_plan != nullptr, [&](auto with_v) {
    static_flag(v_shared, [&](auto shared_v) {
      at::parallel_for(0, blocks, 1, [&](int64_t b_begin, int64_t b_end) {
        std::vector<T> exp_half_v(shared_v ? N : 0);  // e^(v/2) per column of a shared logvar
        if constexpr (decltype(shared_v)::value) {
          for_vectors<W>(N, [&](int64_t j, auto n) {
            vexp(V(T(0.5)) * load<T>(v_ptr + j * vs.sc, vs.sc, n)).store(exp_half_v.data() + j, n);
          });
        }
        for (int64_t b = b_begin; b < b_end; ++b) {
          for (int64_t r = b * block; r < std::min(R, (b + 1) * block); ++r) {
            const V gr(g_ptr[r]), gr_over_c(g_ptr[r] / expected_grad);  // g_r == c: exactly 1
            const v_t* v_row = with_v ? v_ptr + core::row_offset(r, v_plan->shape, vs) : nullptr;
            T* dv_row = with_v ? gv_ptr + (shared_v ? b : r) * N : nullptr;
            for_vectors<W>(N, [&](int64_t j, auto n) {
              const V scaled_buf = V::loadu(b_ptr + r * N + j, n);
              if (need_mean) (gr_over_c * scaled_buf).store(gm_ptr + r * N + j, n);
              if constexpr (decltype(with_v)::value) {
                const V buf = scaled_buf * inv_c;
                V scaled;
                if constexpr (decltype(shared_v)::value) {
                  scaled = buf * V::loadu(exp_half_v.data() + j, n);
                } else {
                  scaled = buf * vexp(V(T(0.5)) * load<T>(v_row + j * vs.sc, vs.sc, n));
                }
                // b = 0 gives 0 and an infinite b itself, also where e^(v/2) is inf or 0 (v = +inf:
                // the reference's -1/2; v = -inf: its inf; not the NaN of 0 * inf).
                scaled = V::blendv(scaled, buf, buf.abs() == V(std::numeric_limits<T>::infinity()));
                scaled = V::blendv(scaled, V(T(0)), buf == V(T(0)));
                const V dv = V(T(0.5)) * gr * (scaled * scaled - V(T(1)));
                (shared_v ? V::loadu(dv_row + j, n) + dv : dv).store(dv_row + j, n);
              }
            });
          }
        }
      });
    });
  });
}

template <typename scalar_t>
void categorical_kernel(const RowPlan& plan, bool need_grad, Tensor& out, Tensor& grad) {
  using T = compute_t<scalar_t>;
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const scalar_t* l_ptr = plan.tensors[0].const_data_ptr<scalar_t>();
  const int64_t* t_ptr = plan.tensors[1].const_data_ptr<int64_t>();
  const core::RowStrides ls = plan.strides[0], ts = plan.strides[1];
  const int64_t E = plan.shape.rows, C = plan.shape.cols;
  const T neg_inf = -std::numeric_limits<T>::infinity();
  T* out_ptr = out.data_ptr<T>();
  T* g_ptr = need_grad ? grad.data_ptr<T>() : nullptr;
  at::parallel_for(0, E, grain_rows(C * 2), [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      const scalar_t* l_row = l_ptr + core::row_offset(e, plan.shape, ls);
      const int64_t target = t_ptr[core::row_offset(e, plan.shape, ts)];
      const bool valid = target >= 0 && target < C;
      V vmax(neg_inf);
      for_vectors<W>(C, [&](int64_t j, auto n) {
        const V l = load<T>(l_row + j * ls.sc, ls.sc, n);
        vmax = at::vec::maximum(vmax, n == W ? l : V::set(V(neg_inf), l, n));
      });
      const T row_max = at::vec::vec_reduce_all<T>([](V& a, V& b) { return at::vec::maximum(a, b); }, vmax);
      // Sleef's exp in this kernel, not vexp: with exp_f32 inlined into its gradient loop, gcc 12 -O3
      // gave wrong lanes 1-15 of whole bfloat16 vectors (tests/test_cpp_backend.py:
      // test_gradient_buffers_of_whole_vectors caught it).
      // With the gradient, e^(l - max) goes into its row of the buffer as it is summed, and the
      // softmax is that row over the sum: the logits are read twice and exponentiated once.
      T* g_row = need_grad ? g_ptr + e * C : nullptr;
      V vsum(T(0));
      for_vectors<W>(C, [&](int64_t j, auto n) {
        const V ex = first((load<T>(l_row + j * ls.sc, ls.sc, n) - V(row_max)).exp(), n);
        if (g_row) ex.store(g_row + j, n);
        vsum += ex;
      });
      const T sum = hsum(vsum);
      // (l - max) - log sum, never l - (max + log sum): that sum rounds at the logits' size (1e-3 at 1e4).
      const T log_sum = std::log(sum);
      const T picked = valid ? static_cast<T>(l_row[target * ls.sc]) : T(0);
      out_ptr[e] = valid ? (picked - row_max) - log_sum : std::numeric_limits<T>::quiet_NaN();
      if (g_row && valid) {
        const V neg_inv_sum(T(-1) / sum);
        for_vectors<W>(C, [&](int64_t j, auto n) { (V::loadu(g_row + j, n) * neg_inv_sum).store(g_row + j, n); });
        g_row[target] += T(1);
      } else if (g_row) {
        std::fill(g_row, g_row + C, T(0));  // no gradient from a row whose target is out of range
      }
    }
  });
}

std::tuple<Tensor, Tensor> binary_log_prob(const Tensor& logits, const Tensor& x, int64_t event_dims, bool continuous,
                                           bool need_grad, double expected_grad) {
  const char* op = continuous ? "fastelbo.continuous_bernoulli_log_prob" : "fastelbo.bernoulli_log_prob";
  checks::logits_and_data(logits, x, event_dims, op);
  checks::expected_grad(expected_grad, op);
  // The compute dtype is the logits' (as the reference's); a float x of another dtype is read in it.
  const at::ScalarType dtype = logits.scalar_type(), compute = compute_dtype(dtype);
  Tensor xx = x;
  if (x.is_floating_point() && x.scalar_type() != dtype && x.scalar_type() != compute) xx = x.to(compute);
  Tensor out = at::empty(batch_shape(logits, event_dims), logits.options().dtype(compute));
  Tensor grad = grad_buffer(need_grad, logits, compute);
  if (out.numel() == 0) return {out, grad};
  if (logits.numel() == 0) return {out.zero_(), grad};
  RowPlan plan = plan_rows({logits, expanded_to(xx, logits.sizes())}, event_dims);
  FASTELBO_DISPATCH_FLOAT(dtype, "fastelbo_binary_cpu", [&] {
    using T = compute_t<scalar_t>;
    switch (xx.scalar_type()) {
      case at::kBool: binary_kernel<scalar_t, bool>(plan, continuous, need_grad, expected_grad, out, grad); break;
      case at::kByte: binary_kernel<scalar_t, uint8_t>(plan, continuous, need_grad, expected_grad, out, grad); break;
      default:
        if (xx.scalar_type() == dtype) {
          binary_kernel<scalar_t, scalar_t>(plan, continuous, need_grad, expected_grad, out, grad);
        } else {
          binary_kernel<scalar_t, T>(plan, continuous, need_grad, expected_grad, out, grad);
        }
    }
  });
  return {out, grad};
}

}  // namespace

std::tuple<Tensor, Tensor> bernoulli_log_prob_cpu(const Tensor& logits, const Tensor& x, int64_t event_dims,
                                                  bool need_grad, double expected_grad) {
  return binary_log_prob(logits, x, event_dims, false, need_grad, expected_grad);
}

std::tuple<Tensor, Tensor> continuous_bernoulli_log_prob_cpu(const Tensor& logits, const Tensor& x, int64_t event_dims,
                                                             bool need_grad, double expected_grad) {
  return binary_log_prob(logits, x, event_dims, true, need_grad, expected_grad);
}

std::tuple<Tensor, Tensor> gaussian_log_prob_cpu(const Tensor& mean, const Tensor& x, const OptTensor& logvar,
                                                 double logvar_value, int64_t event_dims, bool need_grad,
                                                 double expected_grad) {
  checks::gaussian(mean, x, logvar, logvar_value, event_dims, "fastelbo.gaussian_log_prob");
  checks::expected_grad(expected_grad, "fastelbo.gaussian_log_prob");
  // The compute dtype is mean's and logvar's (as the reference's); inputs of mixed dtypes, x
  // included, are all read in it.
  const bool has_logvar = logvar.has_value() && logvar->defined();
  at::ScalarType dtype = common_float_dtype({&mean, has_logvar ? &*logvar : nullptr});
  const at::ScalarType compute = compute_dtype(dtype);
  if (x.scalar_type() != dtype) dtype = compute;
  Tensor out = at::empty(batch_shape(mean, event_dims), mean.options().dtype(compute));
  Tensor grad = grad_buffer(need_grad, mean, compute);
  if (out.numel() == 0) return {out, grad};
  std::vector<Tensor> tensors = {as_dtype(mean, dtype), expanded_to(as_dtype(x, dtype), mean.sizes())};
  if (has_logvar) tensors.push_back(expanded_to(as_dtype(*logvar, dtype), mean.sizes()));
  RowPlan plan = plan_rows(tensors, event_dims);
  FASTELBO_DISPATCH_FLOAT(dtype, "fastelbo_gaussian_cpu", [&] {
    gaussian_kernel<scalar_t>(plan, has_logvar, logvar_value, need_grad, expected_grad, out, grad);
  });
  return {out, grad};
}

std::tuple<Tensor, Tensor> gaussian_log_prob_backward_cpu(const Tensor& grad_out, const Tensor& buffer,
                                                          const OptTensor& logvar, double logvar_value,
                                                          int64_t event_dims, bool need_logvar, double expected_grad,
                                                          bool need_mean) {
  (void)logvar_value;  // d/dv exists only for a logvar tensor
  checks::expected_grad(expected_grad, "fastelbo.gaussian_log_prob_backward");
  const at::ScalarType compute = buffer.scalar_type();
  Tensor grad_mean = at::empty(need_mean ? buffer.sizes() : at::IntArrayRef{0}, buffer.options());
  const bool with_v = need_logvar && logvar.has_value() && logvar->defined();
  const int64_t R = grad_out.numel();
  int64_t N = 1;
  for (int64_t i = buffer.dim() - event_dims; i < buffer.dim(); ++i) N *= buffer.size(i);
  Tensor g = as_dtype(grad_out, compute).contiguous();
  RowPlan v_plan;
  bool v_shared = false;
  if (with_v) {
    v_plan = plan_rows({logvar->expand(buffer.sizes())}, event_dims);
    v_shared = single_row(*logvar, event_dims) && core::shared_across_rows(v_plan.strides[0]);
  }
  // At most 16 fixed blocks: a shared logvar's partial sums stay small (16 x N), and do not depend
  // on the thread count.
  const int64_t block = std::max(grain_rows(N), (R + 15) / 16);
  const int64_t blocks = R ? (R + block - 1) / block : 0;
  Tensor grad_v = with_v ? at::zeros({v_shared ? blocks : R, N}, buffer.options()) : at::empty({0}, buffer.options());
  if (buffer.numel() > 0) {
    const at::ScalarType v_dtype = with_v ? logvar->scalar_type() : compute;
    auto run = [&](auto compute_tag) {
      using T = decltype(compute_tag);
      FASTELBO_DISPATCH_FLOAT(v_dtype, "fastelbo_gaussian_backward_cpu", [&] {
        gaussian_backward_kernel<T, scalar_t>(g, buffer, with_v ? &v_plan : nullptr, static_cast<T>(expected_grad),
                                              need_mean, grad_mean, grad_v, v_shared, block);
      });
    };
    if (compute == at::kDouble) {
      run(double{});
    } else {
      run(float{});
    }
  } else if (with_v) {
    grad_v.zero_();
  }
  if (with_v) {  // to logvar's own shape and dtype
    std::vector<int64_t> full(buffer.sizes().begin(), buffer.sizes().end());
    if (v_shared) std::fill(full.begin(), full.end() - event_dims, 1);
    grad_v = (v_shared ? grad_v.sum(0) : grad_v).view(full).sum_to_size(logvar->sizes()).to(logvar->scalar_type());
  }
  return {grad_mean, grad_v};
}

std::tuple<Tensor, Tensor> categorical_log_prob_cpu(const Tensor& logits, const Tensor& target, int64_t event_dims,
                                                    bool need_grad) {
  const at::ScalarType compute = compute_dtype(logits.scalar_type());
  auto elem_shape = logits.sizes().slice(0, logits.dim() - 1);
  Tensor per_element = at::empty(elem_shape, logits.options().dtype(compute));
  Tensor grad = grad_buffer(need_grad, logits, compute);
  if (per_element.numel() > 0) {
    Tensor target_full = target.to(at::kLong).expand(elem_shape).unsqueeze(-1).expand(logits.sizes());
    RowPlan plan = plan_rows({logits, target_full}, 1);
    FASTELBO_DISPATCH_FLOAT(logits.scalar_type(), "fastelbo_categorical_cpu", [&] {
      categorical_kernel<scalar_t>(plan, need_grad, per_element, grad);
    });
  }
  std::vector<int64_t> dims;
  for (int64_t i = 1; i <= event_dims; ++i) dims.push_back(-i);
  Tensor out = event_dims ? per_element.sum(dims) : per_element;
  return {out, grad};
}

}  // namespace fastelbo
