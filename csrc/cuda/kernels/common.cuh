// Device helpers shared by the CUDA kernels (torch-free): storage <-> compute conversions, the
// warp / block reductions of one row, and the launch geometry the bindings use to size grids and
// buffers (host-callable, so binding and kernel agree on it).
//
// Storage types S: float, double, __half, __nv_bfloat16 (and uint8_t / integer types for data x
// and targets); compute type T: float for float / __half / __nv_bfloat16 storage, double for double.
// Half types are converted with explicit intrinsics only (torch builds with
// __CUDA_NO_HALF_CONVERSIONS__), and rounded to nearest even when stored.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "../../core/layout.h"
#include "../../core/macros.h"
#include "../../core/math.h"
#include "../../core/philox.h"

namespace fastelbo {
namespace cuda {

using core::RowShape;
using core::RowStrides;

// Every kernel runs blocks of this many threads (8 warps).
constexpr int kBlock = 256;
constexpr unsigned kFullMask = 0xFFFFFFFFu;

// ---- conversions ----

// The compute type of a storage type: double for double, float otherwise.
template <typename S>
struct ComputeOf {
  using type = float;
};
template <>
struct ComputeOf<double> {
  using type = double;
};

template <typename T, typename S>
struct Load {
  static __device__ __forceinline__ T get(S v) { return static_cast<T>(v); }
};
template <typename T>
struct Load<T, __half> {
  static __device__ __forceinline__ T get(__half v) { return static_cast<T>(__half2float(v)); }
};
template <typename T>
struct Load<T, __nv_bfloat16> {
  static __device__ __forceinline__ T get(__nv_bfloat16 v) { return static_cast<T>(__bfloat162float(v)); }
};

// p[i] converted to the compute type T (read-only path).
template <typename T, typename S>
__device__ __forceinline__ T load(const S* p, int64_t i) {
  return Load<T, S>::get(p[i]);
}

template <typename S, typename T>
struct Store {
  static __device__ __forceinline__ S get(T v) { return static_cast<S>(v); }
};
template <typename T>
struct Store<__half, T> {
  static __device__ __forceinline__ __half get(T v) { return __float2half_rn(static_cast<float>(v)); }
};
template <typename T>
struct Store<__nv_bfloat16, T> {
  static __device__ __forceinline__ __nv_bfloat16 get(T v) { return __float2bfloat16_rn(static_cast<float>(v)); }
};

// p[i] = v rounded (to nearest even) to the storage type S.
template <typename S, typename T>
__device__ __forceinline__ void store(S* p, int64_t i, T v) {
  p[i] = Store<S, T>::get(v);
}

template <typename T>
__device__ __forceinline__ T neg_inf() { return -static_cast<T>(INFINITY); }

template <typename T>
__device__ __forceinline__ T quiet_nan() { return static_cast<T>(NAN); }

// ---- reductions ----

// Sum over the `lanes` consecutive threads of one row (lanes a power of 2, at most 32; every
// thread of the warp must call it). Butterfly: every lane of the group gets the same bits.
template <typename T>
__device__ __forceinline__ T group_sum(T v, int lanes) {
  for (int offset = lanes >> 1; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// Sum over the `tpr` consecutive threads of one row, tpr a power of 2 up to blockDim.x. Above a
// warp, warp sums meet in `smem` (blockDim.x / 32 slots) and are added in warp order, so the
// result is deterministic. tpr is uniform over the block; every thread must call it.
template <typename T>
__device__ __forceinline__ T row_sum(T v, int tpr, T* smem) {
  if (tpr <= 32) return group_sum(v, tpr);
  v = group_sum(v, 32);
  __syncthreads();  // smem may still be read by a previous call
  if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = v;
  __syncthreads();
  const int warps = tpr >> 5;
  const int first = static_cast<int>(threadIdx.x / tpr) * warps;
  T total = smem[first];
  for (int w = 1; w < warps; ++w) total += smem[first + w];
  return total;
}

// A running (max, sum of exp(. - max)) pair of an online logsumexp.
template <typename T>
struct MaxSum {
  T m, s;
};

// Merge two online-logsumexp states; an empty state is (-inf, 0) and scales by 0, never by
// exp(-inf - -inf) = NaN. A NaN in either sum propagates.
template <typename T>
__device__ __forceinline__ MaxSum<T> max_sum_merge(MaxSum<T> a, MaxSum<T> b) {
  const T m = a.m > b.m ? a.m : b.m;
  const T fa = a.m == neg_inf<T>() ? T(0) : core::Ops<T>::exp(a.m - m);
  const T fb = b.m == neg_inf<T>() ? T(0) : core::Ops<T>::exp(b.m - m);
  return MaxSum<T>{m, a.s * fa + b.s * fb};
}

// Add one value to an online-logsumexp state (NaN propagates through the sum; -inf adds 0; +inf
// makes the sum NaN, as the reference's exp(x - max) = exp(inf - inf) does, whatever else is there).
template <typename T>
__device__ __forceinline__ MaxSum<T> max_sum_add(MaxSum<T> a, T x) {
  if (x > a.m) {  // a.m = -inf: a.s = 0
    return MaxSum<T>{x, x == -neg_inf<T>() ? quiet_nan<T>() : a.s * core::Ops<T>::exp(a.m - x) + T(1)};
  }
  if (x != neg_inf<T>()) a.s += core::Ops<T>::exp(x - a.m);
  return a;
}

// max_sum_merge over the tpr threads of one row (as row_sum; smem holds 2 * blockDim.x / 32 T).
template <typename T>
__device__ __forceinline__ MaxSum<T> row_max_sum(MaxSum<T> v, int tpr, T* smem) {
  const int lanes = tpr < 32 ? tpr : 32;
  for (int offset = lanes >> 1; offset > 0; offset >>= 1) {
    MaxSum<T> other{__shfl_xor_sync(kFullMask, v.m, offset), __shfl_xor_sync(kFullMask, v.s, offset)};
    // Merge in lane order (lower lane first) so both partners compute the same bits.
    const bool lower = (threadIdx.x & offset) == 0;
    v = lower ? max_sum_merge(v, other) : max_sum_merge(other, v);
  }
  if (tpr <= 32) return v;
  const int n_warps = blockDim.x >> 5;
  __syncthreads();
  if ((threadIdx.x & 31) == 0) {
    smem[threadIdx.x >> 5] = v.m;
    smem[n_warps + (threadIdx.x >> 5)] = v.s;
  }
  __syncthreads();
  const int warps = tpr >> 5;
  const int first = static_cast<int>(threadIdx.x / tpr) * warps;
  MaxSum<T> total{smem[first], smem[n_warps + first]};
  for (int w = 1; w < warps; ++w) total = max_sum_merge(total, MaxSum<T>{smem[first + w], smem[n_warps + first + w]});
  return total;
}

// ---- launch geometry (host and device) ----

FE_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

FE_HD int next_pow2(int64_t n) {
  int p = 1;
  while (p < n && p < (1 << 30)) p <<= 1;
  return p;
}

// Threads per row of `cols` columns with about `items` columns per thread: a power of 2 in
// [1, max_threads]; rows per block = kBlock / threads.
FE_HD int threads_per_row(int64_t cols, int64_t items, int max_threads) {
  const int64_t want = ceil_div(cols > 0 ? cols : 1, items);
  const int t = next_pow2(want);
  return t < max_threads ? t : max_threads;
}

// Blocks for a flat grid-stride kernel over `total` items.
FE_HD int64_t flat_blocks(int64_t total) {
  const int64_t blocks = ceil_div(total > 0 ? total : 1, kBlock);
  return blocks < (int64_t{1} << 22) ? blocks : (int64_t{1} << 22);
}

// The latent kernels: a thread owns groups of 4 consecutive latent dims (one Philox call each),
// lanes_per_row threads (a power of 2, at most 32) share a row.
FE_HD int latent_lanes(int64_t dim) { return threads_per_row(ceil_div(dim, 4), 1, 32); }
FE_HD int64_t latent_blocks(int64_t rows, int64_t dim) { return ceil_div(rows, kBlock / latent_lanes(dim)); }

// The row-reduction likelihood kernels: about 4 columns per thread, up to a whole block per row.
FE_HD int likelihood_threads(int64_t cols) { return threads_per_row(cols, 4, kBlock); }
FE_HD int64_t likelihood_blocks(int64_t rows, int64_t cols) {
  return ceil_div(rows, kBlock / likelihood_threads(cols));
}

// gaussian_log_prob_backward: blocks of col_threads columns x (kBlock / col_threads) rows; grid
// (column tiles, row chunks). The row chunking depends only on (rows, cols): deterministic.
struct ColumnGrid {
  int col_threads;
  int64_t col_tiles;
  int64_t chunks;
  int64_t rows_per_chunk;
};

FE_HD ColumnGrid column_grid(int64_t rows, int64_t cols) {
  ColumnGrid g;
  g.col_threads = threads_per_row(cols, 1, kBlock);
  g.col_tiles = ceil_div(cols > 0 ? cols : 1, g.col_threads);
  const int64_t row_threads = kBlock / g.col_threads;
  const int64_t max_chunks = ceil_div(rows > 0 ? rows : 1, row_threads);
  int64_t chunks = ceil_div(2048, g.col_tiles);  // about 2048 blocks in all
  if (chunks > max_chunks) chunks = max_chunks;
  if (chunks > 65535) chunks = 65535;
  if (chunks < 1) chunks = 1;
  g.rows_per_chunk = ceil_div(rows > 0 ? rows : 1, chunks);
  g.chunks = ceil_div(rows > 0 ? rows : 1, g.rows_per_chunk);
  return g;
}

}  // namespace cuda
}  // namespace fastelbo
