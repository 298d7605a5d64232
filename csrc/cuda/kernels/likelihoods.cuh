// Likelihood kernels log p(x|z) (torch-free): one pass that writes each row's log-prob and, when
// gradients are needed, the elementwise gradient into a buffer fastelbo owns (contiguous (R, N),
// compute type T); the backward pass only scales that buffer. Same computations as
// triton_kernels/likelihoods.py.
//
// Parameters are read as R rows of N event elements through row_offset (any strides); x is read
// through its own strides, so a broadcast x (stride 0 along the dims it lacks) is never copied.
// X, the storage of x: the parameters' type S, float, or uint8_t (bool and uint8 data).
//
// Grid of the row kernels: tpr = likelihood_threads(N) threads per row (a power of 2, about 4
// columns each, up to a whole block of kBlock for long rows), kBlock / tpr rows per block; the
// threads of a row read its columns lane, lane + tpr, ... (coalesced) and reduce with warp
// shuffles, then shared memory across warps in a fixed order (deterministic).
#pragma once

#include "common.cuh"

namespace fastelbo {
namespace cuda {

template <typename S, typename X, typename T>
struct BinaryParams {
  const S* logits;
  const X* x;
  T* out;      // (R,)
  T* grad;     // (R, N) expected_grad d/dlogits, or null
  RowShape shape;
  RowStrides l_st, x_st;
  bool continuous;
  double expected_grad;  // run-time scalar: the gradient the caller expects each row to receive
};

template <typename S, typename X, typename T>
struct GaussianParams {
  const S* mean;
  const X* x;
  const S* logvar;        // expanded to mean's shape, or null: logvar_value everywhere
  T* out;                 // (R,)
  T* grad_mean;           // (R, N) (x - m) e^-v, or null
  RowShape shape;
  RowStrides m_st, x_st, v_st;
  double logvar_value;    // run-time scalar
  double expected_grad;   // run-time scalar: the buffer is expected_grad d/dm
  double half_log_2pi_n;  // N log(2 pi) / 2, run-time scalar
};

// V: the logvar tensor's storage type.
template <typename V, typename T>
struct GaussianBwdParams {
  const T* grad_out;      // (R,) strided: go_sr
  int64_t go_sr;
  const T* buffer;        // (R, N) contiguous: c (x - m) e^-v, c = expected_grad
  const V* logvar;        // expanded to mean's shape (shape / v_st), or null: no logvar gradient
  RowShape shape;
  RowStrides v_st;
  T* grad_mean;           // (R, N), or null: not asked for (the caller hands the buffer over)
  double expected_grad;   // run-time scalar
  T* grad_logvar;         // (R, N), or (chunks, N) partial sums when v_shared; null without logvar
  bool v_shared;
  int col_threads;        // column_grid(R, N)
  int64_t rows_per_chunk;
};

// I: the integer type of the targets.
template <typename S, typename I, typename T>
struct CategoricalParams {
  const S* logits;        // E rows of C classes
  const I* target;        // read at row_offset (its column stride is unused)
  T* out;                 // (E,) per-element log-probs
  T* grad;                // (E, C), or null
  RowShape shape;         // rows E, cols C
  RowStrides l_st, t_st;
};

// Bernoulli:            sum_n x l - softplus(l),           d/dl = x - sigmoid(l)
// continuous Bernoulli: sum_n x l - softplus(l) + log C(l), d/dl = x - sigmoid(l) + dlog C/dl
// The buffer holds expected_grad d/dl. Grid: likelihood_blocks(R, N) blocks of kBlock threads.
template <typename S, typename X, typename T>
__global__ void __launch_bounds__(kBlock) binary_log_prob_kernel(const BinaryParams<S, X, T> p) {
  __shared__ T smem[kBlock / 32];
  const int64_t R = p.shape.rows, N = p.shape.cols;
  const T g_scale = static_cast<T>(p.expected_grad);
  const int tpr = likelihood_threads(N);
  const int lane = threadIdx.x & (tpr - 1);
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kBlock / tpr) + threadIdx.x / tpr;
  const bool active = row < R;
  T acc = T(0);
  if (active) {
    const int64_t lo = core::row_offset(row, p.shape, p.l_st);
    const int64_t xo = core::row_offset(row, p.shape, p.x_st);
    for (int64_t c = lane; c < N; c += tpr) {
      const T l = load<T>(p.logits, lo + c * p.l_st.sc);
      const T x = load<T>(p.x, xo + c * p.x_st.sc);
      core::ValueGrad<T> vg = core::bernoulli_terms<T>(l, x);
      if (p.continuous) {
        const core::ValueGrad<T> cb = core::cb_log_normalizer_terms<T>(l);
        vg.value += cb.value;
        vg.grad += cb.grad;
      }
      acc += vg.value;
      if (p.grad != nullptr) p.grad[row * N + c] = vg.grad * g_scale;
    }
  }
  acc = row_sum(acc, tpr, smem);
  if (active && lane == 0) p.out[row] = acc;
}

// sum_n -((x - m)^2 e^-v + v)/2 - N log(2 pi)/2;  expected_grad d/dm = c (x - m) e^-v (into grad_mean).
// v: the logvar tensor or logvar_value. Grid: likelihood_blocks(R, N) blocks of kBlock threads.
template <typename S, typename X, typename T>
__global__ void __launch_bounds__(kBlock) gaussian_log_prob_kernel(const GaussianParams<S, X, T> p) {
  __shared__ T smem[kBlock / 32];
  const int64_t R = p.shape.rows, N = p.shape.cols;
  const int tpr = likelihood_threads(N);
  const int lane = threadIdx.x & (tpr - 1);
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kBlock / tpr) + threadIdx.x / tpr;
  const bool active = row < R;
  const T v_scalar = static_cast<T>(p.logvar_value);
  const T g_scale = static_cast<T>(p.expected_grad);
  T acc = T(0);
  if (active) {
    const int64_t mo = core::row_offset(row, p.shape, p.m_st);
    const int64_t xo = core::row_offset(row, p.shape, p.x_st);
    const int64_t vo = p.logvar != nullptr ? core::row_offset(row, p.shape, p.v_st) : 0;
    for (int64_t c = lane; c < N; c += tpr) {
      const T m = load<T>(p.mean, mo + c * p.m_st.sc);
      const T x = load<T>(p.x, xo + c * p.x_st.sc);
      const T v = p.logvar != nullptr ? load<T>(p.logvar, vo + c * p.v_st.sc) : v_scalar;
      const T inv_var = core::Ops<T>::exp(-v);
      const T diff = x - m;
      const T scaled = diff * diff * inv_var;
      acc += T(-0.5) * (scaled + v);
      if (p.grad_mean != nullptr) p.grad_mean[row * N + c] = diff * inv_var * g_scale;
    }
  }
  acc = row_sum(acc, tpr, smem);
  if (active && lane == 0) p.out[row] = acc - static_cast<T>(p.half_log_2pi_n);
}

// Backward of the Gaussian log-density from the forward's buffer c b (b = (x - m) e^-v, c =
// expected_grad) and the incoming per-row gradient g:
//     grad_mean   = (g / c) (c b)   (unless grad_mean is null)
//     grad_logvar = g (b^2 e^v - 1)/2 = g ((b e^(v/2))^2 - 1)/2   (= g ((x - m)^2 e^-v - 1)/2)
// per element, or summed over the rows when the logvar is the same for every row (v_shared): each
// block sums its rows of its columns in shared memory (fixed order) into partial row blockIdx.y,
// which the binding sums. Grid: (col_tiles, chunks) of column_grid(R, N); block kBlock threads =
// col_threads columns x (kBlock / col_threads) rows, striding over the chunk's rows.
template <typename V, typename T>
__global__ void __launch_bounds__(kBlock) gaussian_log_prob_bwd_kernel(const GaussianBwdParams<V, T> p) {
  __shared__ T smem[kBlock];
  const int64_t R = p.shape.rows, N = p.shape.cols;
  const int ct = p.col_threads;
  const int tx = threadIdx.x & (ct - 1);
  const int ty = threadIdx.x / ct;
  const int row_threads = kBlock / ct;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * ct + tx;
  const bool col_ok = c < N;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * p.rows_per_chunk;
  const T c_scale = static_cast<T>(p.expected_grad), inv_c = T(1) / c_scale;
  const int64_t r1 = r0 + p.rows_per_chunk < R ? r0 + p.rows_per_chunk : R;
  T acc = T(0);
  if (col_ok) {
    for (int64_t r = r0 + ty; r < r1; r += row_threads) {
      const T g = p.grad_out[r * p.go_sr];
      const T cb = p.buffer[r * N + c];
      if (p.grad_mean != nullptr) p.grad_mean[r * N + c] = (g / c_scale) * cb;  // g == c: cb itself
      const T b = cb * inv_c;
      if (p.logvar != nullptr) {
        const int64_t vo = p.v_shared ? 0 : core::row_offset(r, p.shape, p.v_st);
        const T v = load<T>(p.logvar, vo + c * p.v_st.sc);
        // b = 0 gives 0 and an infinite b itself, also where e^(v/2) is inf or 0 (v = +inf: the
        // reference's -1/2; v = -inf: its inf; not the NaN of 0 * inf).
        const T t = b == T(0) ? T(0) : (isinf(b) ? b : b * core::Ops<T>::exp(T(0.5) * v));
        const T gv = g * (T(0.5) * (t * t - T(1)));
        if (p.v_shared) {
          acc += gv;
        } else {
          p.grad_logvar[r * N + c] = gv;
        }
      }
    }
  }
  if (p.logvar != nullptr && p.v_shared) {  // uniform over the block
    smem[threadIdx.x] = acc;
    __syncthreads();
    if (ty == 0 && col_ok) {
      T sum = smem[tx];
      for (int i = 1; i < row_threads; ++i) sum += smem[i * ct + tx];
      p.grad_logvar[static_cast<int64_t>(blockIdx.y) * N + c] = sum;
    }
  }
}

// Per element e (a row of C logits): log softmax(l)[t] = l_t - logsumexp(l), NaN for t outside
// [0, C); gradient onehot(t) - softmax(l) (0 for invalid t). logsumexp runs online over C (a
// running max and sum per thread, merged across the row's threads).
// Grid: likelihood_blocks(E, C) blocks of kBlock threads.
template <typename S, typename I, typename T>
__global__ void __launch_bounds__(kBlock) categorical_log_prob_kernel(const CategoricalParams<S, I, T> p) {
  __shared__ T smem[2 * (kBlock / 32)];
  const int64_t E = p.shape.rows, C = p.shape.cols;
  const int tpr = likelihood_threads(C);
  const int lane = threadIdx.x & (tpr - 1);
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kBlock / tpr) + threadIdx.x / tpr;
  const bool active = row < E;
  const int64_t lo = active ? core::row_offset(row, p.shape, p.l_st) : 0;
  const int64_t target = active ? static_cast<int64_t>(p.target[core::row_offset(row, p.shape, p.t_st)]) : 0;
  const bool valid = target >= 0 && target < C;
  MaxSum<T> st{neg_inf<T>(), T(0)};
  if (active)
    for (int64_t c = lane; c < C; c += tpr) st = max_sum_add(st, load<T>(p.logits, lo + c * p.l_st.sc));
  st = row_max_sum(st, tpr, smem);
  // (l - max) - log sum, never l - (max + log sum): that sum rounds at the logits' size (1e-3 at 1e4).
  const T log_sum = core::Ops<T>::log(st.s);
  if (!active) return;  // no barrier below
  if (lane == 0) {
    p.out[row] = valid ? (load<T>(p.logits, lo + target * p.l_st.sc) - st.m) - log_sum : quiet_nan<T>();
  }
  if (p.grad != nullptr) {
    for (int64_t c = lane; c < C; c += tpr) {
      const T l = load<T>(p.logits, lo + c * p.l_st.sc);
      const T onehot = c == target ? T(1) : T(0);
      p.grad[row * C + c] = valid ? onehot - core::Ops<T>::exp((l - st.m) - log_sum) : T(0);
    }
  }
}

}  // namespace cuda
}  // namespace fastelbo
