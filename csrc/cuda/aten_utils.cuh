// What the CUDA bindings (csrc/cuda/*.cu) share on the ATen side: storage-type mapping and
// dispatch, the compute dtype, and casts of the rare mixed-dtype calls.
//
// Storage rule: the kernels read every float input of one op through a single storage type S
// (no copies when the inputs share a dtype, the usual case). When they do not (e.g. a float16 mu
// with a float32 scale), the inputs are cast to the compute dtype (float64 if any is float64,
// else float32: lossless), the kernel writes S-typed outputs to temporaries and they are cast to
// their outputs' dtypes. Data x (likelihoods) is read as uint8 (bool / uint8), as S, or cast to
// the compute dtype T (what the kernel would convert it to anyway).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <limits>
#include <optional>
#include <vector>

#include "../binding/plan.h"
#include "kernels/common.cuh"

namespace fastelbo {
namespace cuda {

template <typename scalar_t>
struct CudaType {
  using type = scalar_t;
};
template <>
struct CudaType<at::Half> {
  using type = __half;
};
template <>
struct CudaType<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename X>
struct Tag {
  using type = X;
};

inline bool has(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

inline at::Tensor value_or_undefined(const std::optional<at::Tensor>& t) { return has(t) ? *t : at::Tensor(); }

// float64 if any (defined) input is float64, else float32 (fastelbo._validate.compute_dtype).
inline at::ScalarType compute_dtype(const std::vector<at::Tensor>& tensors) {
  for (const auto& t : tensors)
    if (t.defined() && t.scalar_type() == at::kDouble) return at::kDouble;
  return at::kFloat;
}

// The kernels' storage dtype of the (defined) float inputs: their common dtype, else `compute`.
inline at::ScalarType storage_dtype(const std::vector<at::Tensor>& tensors, at::ScalarType compute) {
  at::ScalarType common = at::ScalarType::Undefined;
  for (const auto& t : tensors) {
    if (!t.defined()) continue;
    if (common == at::ScalarType::Undefined) {
      common = t.scalar_type();
    } else if (t.scalar_type() != common) {
      return compute;
    }
  }
  return common == at::ScalarType::Undefined ? compute : common;
}

inline at::Tensor cast(const at::Tensor& t, at::ScalarType dtype) {
  return (!t.defined() || t.scalar_type() == dtype) ? t : t.to(dtype);
}

// The tensor a kernel writes for output `out`: out itself when it has the storage dtype, else a
// temporary to copy back with finish_output.
inline at::Tensor output_in(const at::Tensor& out, at::ScalarType dtype) {
  return out.scalar_type() == dtype ? out : at::empty(out.sizes(), out.options().dtype(dtype));
}

inline void finish_output(at::Tensor& out, const at::Tensor& written) {
  if (!written.is_same(out)) out.copy_(written);
}

template <typename S>
S* ptr(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<S*>(t.data_ptr()) : nullptr;
}

inline unsigned grid_x(int64_t blocks) {
  TORCH_CHECK(blocks >= 1 && blocks <= std::numeric_limits<int32_t>::max(), "fastelbo cuda: grid too large");
  return static_cast<unsigned>(blocks);
}

// Storage of the likelihoods' data x.
enum class DataKind { kByte, kSame, kCompute };

inline at::Tensor prepare_data(const at::Tensor& x, at::ScalarType storage, at::ScalarType compute, DataKind* kind) {
  if (x.scalar_type() == at::kBool || x.scalar_type() == at::kByte) {
    *kind = DataKind::kByte;
    return x;
  }
  if (x.scalar_type() == storage) {
    *kind = DataKind::kSame;
    return x;
  }
  *kind = DataKind::kCompute;
  return x.to(compute);
}

// Calls f(Tag<X>{}) with the storage type X of prepared data of `kind`.
template <typename S, typename T, typename F>
void dispatch_data(DataKind kind, F&& f) {
  switch (kind) {
    case DataKind::kByte:
      f(Tag<uint8_t>{});
      break;
    case DataKind::kSame:
      f(Tag<S>{});
      break;
    case DataKind::kCompute:
      f(Tag<T>{});
      break;
  }
}

inline std::vector<int64_t> batch_sizes(const at::Tensor& t, int64_t event_dims) {
  auto sizes = t.sizes().vec();
  sizes.resize(sizes.size() - static_cast<size_t>(event_dims));
  return sizes;
}

}  // namespace cuda
}  // namespace fastelbo

// FE_LAUNCH(grid, block, shared_bytes, stream, kernel)(args...) is
// kernel<<<grid, block, shared_bytes, stream>>>(args...): the bindings launch through it so that
// the CPU simulator (csrc/cuda_sim/cuda_sim.h, which defines it first) runs the same bindings on CPU
// tensors. The kernel comes last, as a template-id with commas may.
#ifndef FE_LAUNCH
#define FE_LAUNCH(grid, block, shared_bytes, stream, ...) __VA_ARGS__<<<grid, block, shared_bytes, stream>>>
#endif

// AT_DISPATCH over float, double, Half, BFloat16 with S (the CUDA storage type) and T (compute).
#define FE_DISPATCH_FLOAT(DTYPE, NAME, ...)                                                   \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, DTYPE, NAME, [&] {                \
    using S = typename ::fastelbo::cuda::CudaType<scalar_t>::type;                              \
    using T = typename ::fastelbo::cuda::ComputeOf<S>::type;                                    \
    __VA_ARGS__();                                                                              \
  })
