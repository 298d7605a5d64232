// Row planning shared by the CPU and CUDA bindings (ATen side): address tensors of one logical
// shape as R rows of N columns (csrc/core/layout.h), copying only those whose layout cannot be
// addressed that way. The same rules as fastelbo/triton_backend/_layout.py.
#pragma once

#include <ATen/ATen.h>

#include <utility>
#include <vector>

#include "../core/layout.h"

namespace fastelbo {

// The latent op's n_samples: K >= 1 samples with a leading sample dim on z, log q and log p, or 0
// for one sample without it (outputs of mu's shape: what fe.gaussian_latent returns by default).
// Shared by the CPU and CUDA bindings of the latent op.
inline int64_t sample_count(int64_t n_samples) { return n_samples == 0 ? 1 : n_samples; }

inline std::vector<int64_t> with_samples(int64_t n_samples, at::IntArrayRef shape) {
  std::vector<int64_t> out;
  if (n_samples != 0) out.push_back(n_samples);
  out.insert(out.end(), shape.begin(), shape.end());
  return out;
}

struct RowPlan {
  core::RowShape shape;
  std::vector<at::Tensor> tensors;  // the inputs, copied (made contiguous) only where needed
  std::vector<core::RowStrides> strides;
};

namespace detail {

// The single stride of the collapsed event dims, or -1 if they do not collapse to one.
inline int64_t col_stride(at::IntArrayRef shape, at::IntArrayRef strides, int64_t event_dims) {
  const int64_t ndim = static_cast<int64_t>(shape.size());
  int64_t inner_size = 1, inner_stride = -1;
  bool found = false;
  for (int64_t i = ndim - 1; i >= ndim - event_dims; --i) {
    if (shape[i] == 1) continue;
    if (!found) {
      inner_stride = strides[i];
      inner_size = shape[i];
      found = true;
      continue;
    }
    if (strides[i] != inner_stride * inner_size) return -1;
    inner_size *= shape[i];
  }
  return found ? inner_stride : 1;
}

// Adjacent batch dims merged where every tensor allows it: (size, stride of each tensor).
inline std::vector<std::pair<int64_t, std::vector<int64_t>>> row_dims(at::IntArrayRef shape,
                                                                      const std::vector<at::Tensor>& tensors,
                                                                      int64_t event_dims) {
  std::vector<std::pair<int64_t, std::vector<int64_t>>> merged;
  const int64_t batch_dims = static_cast<int64_t>(shape.size()) - event_dims;
  for (int64_t i = 0; i < batch_dims; ++i) {
    if (shape[i] == 1) continue;
    std::vector<int64_t> st;
    for (const auto& t : tensors) st.push_back(t.stride(i));
    if (!merged.empty()) {
      auto& prev = merged.back();
      bool mergeable = true;
      for (size_t j = 0; j < st.size(); ++j) mergeable = mergeable && prev.second[j] == st[j] * shape[i];
      if (mergeable) {
        prev.first *= shape[i];
        prev.second = st;
        continue;
      }
    }
    merged.emplace_back(shape[i], st);
  }
  return merged;
}

}  // namespace detail

// Whether t's own shape is 1 in every dim before its last `event_dims`, so that its gradient summed
// over all rows already has t's shape. A tensor whose row strides are all 0 is one row shared by
// every row only if this holds too: an expanded view (stride 0) can have rows of its own.
inline bool single_row(const at::Tensor& t, int64_t event_dims) {
  for (int64_t i = 0; i < t.dim() - event_dims; ++i) {
    if (t.size(i) != 1) return false;
  }
  return true;
}

// `tensors` all have one shape (expand broadcast inputs first: a view, never a copy).
inline RowPlan plan_rows(std::vector<at::Tensor> tensors, int64_t event_dims) {
  TORCH_CHECK(!tensors.empty(), "plan_rows needs a tensor");
  const auto shape = tensors[0].sizes().vec();
  for (auto& t : tensors) {
    TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "plan_rows: tensors of different shapes");
    if (detail::col_stride(shape, t.strides(), event_dims) < 0) t = t.contiguous();
  }
  auto dims = detail::row_dims(shape, tensors, event_dims);
  if (dims.size() > 3) {
    for (auto& t : tensors) t = t.contiguous();
    dims = detail::row_dims(shape, tensors, event_dims);
  }
  while (dims.size() < 3) dims.insert(dims.begin(), {1, std::vector<int64_t>(tensors.size(), 0)});
  RowPlan plan;
  const int64_t batch_dims = static_cast<int64_t>(shape.size()) - event_dims;
  int64_t rows = 1, cols = 1;
  for (int64_t i = 0; i < static_cast<int64_t>(shape.size()); ++i) (i < batch_dims ? rows : cols) *= shape[i];
  plan.shape = core::RowShape{rows, cols, dims[1].first, dims[2].first};
  for (size_t j = 0; j < tensors.size(); ++j) {
    plan.strides.push_back(core::RowStrides{dims[0].second[j], dims[1].second[j], dims[2].second[j],
                                            detail::col_stride(shape, tensors[j].strides(), event_dims)});
  }
  plan.tensors = std::move(tensors);
  return plan;
}

}  // namespace fastelbo
