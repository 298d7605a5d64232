// The discretized mixture of logistics (PixelCNN++ / VDVAE / NVAE) log-likelihood of 3-channel
// images, torch-free: one pass that writes each image's log-prob and, when gradients are needed,
// d out / d params into a buffer fastelbo owns (compute type T, params' layout). Same computation
// as fastelbo/ops/discretized_logistic_mixture_log_prob.py (reference) and csrc/cpu/dmol.cpp.
//
// Per pixel, 10 M parameters along the channel dim (read through its stride, any layout): M logits
// pi_m, then per colour channel c = 0, 1, 2 a block of 3 M at M + 3 M c: means mu_c,m (+ 0),
// raw log-scales s_c,m (+ M), raw coefficients a_c,m (+ 2 M), each + m. With log P_c,m the
// channel's log-mass of x_c's bin (csrc/core/dmol.h: core::dmol_component, the coupled means, the
// edge bins, the mass / bin-centre switch, h = 1/(2^bits - 1), log((2^bits - 1)/2)):
//     b_m = log_softmax(pi)_m + sum_c log P_c,m
//     log p(pixel) = logsumexp_m b_m,        out[image] = sum over the image's pixels
//     d/dpi_m = w_m - softmax(pi)_m,  d/d(mu, s, a)_c,m = w_m d log P_m / d(mu, s, a)_c,   w_m = softmax_m(b)
//
// One thread per pixel, three passes over m with nothing stored per component: (0) an online
// logsumexp of the logits, (1) the components without gradients and an online logsumexp of b,
// (2) with need_grad, each component again with its derivatives, scaled by w_m = e^(b_m - lse).
//
// Layout: the pixels are R rows (images) of N columns (pixels of one image) addressed through
// row_offset of each tensor's pixel view (params, x and the buffer at channel 0: csrc/core/layout.h)
// plus one channel stride per tensor; x is read through its own strides (0 on broadcast dims).
// X, the storage of x: the parameters' type S, or the compute type T.
//
// Grid (dmol_grid, shared by binding and kernel): tpr = threads_per_row(N, 1, kBlock) threads per
// row, kBlock / tpr rows per block along grid.x; an image's columns split into `chunks` chunks of
// chunk_cols columns (chunk_cols a multiple of tpr; chunks > 1 only with tpr = kBlock, one row per
// block) along grid.y. Each thread sums its pixels of the chunk in column order, the row's threads
// reduce with row_sum (warp butterflies, then warps in a fixed order), and lane 0 writes out[row]
// (one chunk) or partial[row, chunk], which dmol_sum_partials_kernel adds in chunk order: no float
// atomics, the same bits on every run for given shapes.
#pragma once

#include <type_traits>

#include "../../core/dmol.h"
#include "common.cuh"

namespace fastelbo {
namespace cuda {

struct DmolGrid {
  int tpr;             // threads per row (a power of 2 <= kBlock)
  int64_t row_blocks;  // grid.x: ceil(R / (kBlock / tpr))
  int64_t chunk_cols;  // columns per chunk (a multiple of tpr)
  int64_t chunks;      // grid.y: ceil(N / chunk_cols), at most 65535
};

FE_HD DmolGrid dmol_grid(int64_t rows, int64_t cols) {
  DmolGrid g;
  const int64_t n = cols > 0 ? cols : 1;
  g.tpr = threads_per_row(n, 1, kBlock);
  g.row_blocks = ceil_div(rows > 0 ? rows : 1, kBlock / g.tpr);
  // One column per thread and chunk, unless grid.y would exceed its 65535 limit.
  const int64_t per_thread = ceil_div(n, static_cast<int64_t>(g.tpr) * 65535);
  g.chunk_cols = static_cast<int64_t>(g.tpr) * per_thread;
  g.chunks = ceil_div(n, g.chunk_cols);
  return g;
}

template <typename S, typename X, typename T>
struct DmolParams {
  const S* params;  // (..., 10 M): pixel view p_st, channel stride p_ch
  const X* x;       // (..., 3) expanded to the pixels: x_st (0 on broadcast dims), channel stride x_ch
  T* out;           // (R,) when grid.chunks == 1
  T* partial;       // (R, chunks) contiguous when grid.chunks > 1, else unused
  T* grad;          // d out / d params with params' logical shape (g_st, g_ch), or null
  RowShape shape;   // R images x N pixels
  RowStrides p_st, x_st, g_st;
  int64_t p_ch, x_ch, g_ch;
  int64_t n_mix;
  double h;                // 1 / (2^bits - 1), run-time scalar
  double log_half_levels;  // log((2^bits - 1) / 2), run-time scalar
  DmolGrid grid;
};

// log p of the pixel at params offset po, x offset xo; with p.grad, its gradient at offset go.
template <typename S, typename X, typename T>
__device__ __forceinline__ T dmol_pixel(const DmolParams<S, X, T>& p, int64_t po, int64_t xo, int64_t go) {
  using M = core::Ops<T>;
  const int64_t nm = p.n_mix, pc = p.p_ch;
  const T h = static_cast<T>(p.h), log_half_levels = static_cast<T>(p.log_half_levels);
  T x[3];
  for (int c = 0; c < 3; ++c) x[c] = load<T>(p.x, xo + c * p.x_ch);
  // Pass 0: logsumexp of the logits; log_softmax(pi)_m = (pi_m - max) - log sum.
  MaxSum<T> logits{neg_inf<T>(), T(0)};
  for (int64_t m = 0; m < nm; ++m) logits = max_sum_add(logits, load<T>(p.params, po + m * pc));
  const T log_z = M::log(logits.s);
  // The component m's parameters per channel.
  auto component = [&](int64_t m, auto grad) {  // grad: std::true_type or std::false_type
    T mu[3], s[3], a[3];
    for (int c = 0; c < 3; ++c) {
      const int64_t base = po + (nm + 3 * nm * c + m) * pc;
      mu[c] = load<T>(p.params, base);
      s[c] = load<T>(p.params, base + nm * pc);
      a[c] = load<T>(p.params, base + 2 * nm * pc);
    }
    return core::dmol_component<decltype(grad)::value, T>(x, mu, s, a, h, log_half_levels);
  };
  // Pass 1: the bracket b_m and its online logsumexp.
  MaxSum<T> mix{neg_inf<T>(), T(0)};
  for (int64_t m = 0; m < nm; ++m) {
    const T log_weight = (load<T>(p.params, po + m * pc) - logits.m) - log_z;
    mix = max_sum_add(mix, log_weight + component(m, std::false_type{}).log_prob);
  }
  const T log_mix = M::log(mix.s);
  // Pass 2: the responsibilities w_m = e^((b_m - max) - log sum) times each component's derivatives.
  if (p.grad != nullptr) {
    const int64_t gc = p.g_ch;
    for (int64_t m = 0; m < nm; ++m) {
      const T log_weight = (load<T>(p.params, po + m * pc) - logits.m) - log_z;
      const core::DmolComponent<T> comp = component(m, std::true_type{});
      const T w = M::exp(((log_weight + comp.log_prob) - mix.m) - log_mix);
      p.grad[go + m * gc] = w - M::exp(log_weight);
      for (int c = 0; c < 3; ++c) {
        const int64_t base = go + (nm + 3 * nm * c + m) * gc;
        p.grad[base] = w * comp.d_mean[c];
        p.grad[base + nm * gc] = w * comp.d_scale[c];
        p.grad[base + 2 * nm * gc] = w * comp.d_coeff[c];
      }
    }
  }
  return mix.m + log_mix;
}

// Grid: (grid.row_blocks, grid.chunks) blocks of kBlock threads (dmol_grid(R, N)).
template <typename S, typename X, typename T>
__global__ void __launch_bounds__(kBlock) dmol_log_prob_kernel(const DmolParams<S, X, T> p) {
  __shared__ T smem[kBlock / 32];
  const int64_t R = p.shape.rows, N = p.shape.cols;
  const int tpr = p.grid.tpr;
  const int lane = threadIdx.x & (tpr - 1);
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kBlock / tpr) + threadIdx.x / tpr;
  const bool active = row < R;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * p.grid.chunk_cols;
  const int64_t c1 = c0 + p.grid.chunk_cols < N ? c0 + p.grid.chunk_cols : N;
  T acc = T(0);
  if (active) {
    const int64_t po = core::row_offset(row, p.shape, p.p_st);
    const int64_t xo = core::row_offset(row, p.shape, p.x_st);
    const int64_t go = p.grad != nullptr ? core::row_offset(row, p.shape, p.g_st) : 0;
    for (int64_t c = c0 + lane; c < c1; c += tpr) {
      acc += dmol_pixel(p, po + c * p.p_st.sc, xo + c * p.x_st.sc, go + c * p.g_st.sc);
    }
  }
  acc = row_sum(acc, tpr, smem);  // every thread of the block, active or not
  if (active && lane == 0) {
    if (p.grid.chunks == 1) {
      p.out[row] = acc;
    } else {
      p.partial[row * p.grid.chunks + blockIdx.y] = acc;
    }
  }
}

// out[r] = sum over k in order of partial[r, k] (partial contiguous (rows, chunks)).
// Grid: flat_blocks(rows) blocks of kBlock threads, grid-stride.
template <typename T>
__global__ void __launch_bounds__(kBlock) dmol_sum_partials_kernel(const T* partial, T* out, int64_t rows,
                                                                   int64_t chunks) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += stride) {
    const T* row = partial + r * chunks;
    T sum = row[0];
    for (int64_t k = 1; k < chunks; ++k) sum += row[k];
    out[r] = sum;
  }
}

}  // namespace cuda
}  // namespace fastelbo
