// Test-only extension (tests/test_large_index.py): the pure index functions of csrc/ exposed to
// Python, so their 64-bit arithmetic can be checked against Python's exact integers on sizes,
// strides and rows past 2^31 and 2^32 without allocating anything that large.
//
//   row_offsets   core::row_offset (csrc/core/layout.h) of each row
//   plan          plan_rows (csrc/binding/plan.h) on tensors, e.g. meta tensors of any size
//   counter       core::noise_counter + core::seed_key (csrc/core/philox.h) of element (k, r, d)
//   words         core::philox4x32_10 of that counter
//   noise_row     the CPU kernels' eps of one (row, sample): EpsSource<float>::row (csrc/cpu/noise.h),
//                 built with the backend's instruction set (the AVX-512 noise path where it runs)
#include <torch/extension.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "binding/plan.h"
#include "core/layout.h"
#include "core/philox.h"
#include "cpu/noise.h"

namespace {

using fastelbo::core::RowShape;
using fastelbo::core::RowStrides;

std::vector<int64_t> row_offsets(const std::vector<int64_t>& rows, std::tuple<int64_t, int64_t, int64_t, int64_t> shape,
                                 std::tuple<int64_t, int64_t, int64_t, int64_t> strides) {
  const RowShape s{std::get<0>(shape), std::get<1>(shape), std::get<2>(shape), std::get<3>(shape)};
  const RowStrides st{std::get<0>(strides), std::get<1>(strides), std::get<2>(strides), std::get<3>(strides)};
  std::vector<int64_t> out;
  for (int64_t r : rows) out.push_back(fastelbo::core::row_offset(r, s, st));
  return out;
}

// (rows, cols, n1, n2, [(s0, s1, s2, sc) per tensor], [whether plan_rows copied the tensor]).
py::tuple plan(const std::vector<at::Tensor>& tensors, int64_t event_dims) {
  const fastelbo::RowPlan p = fastelbo::plan_rows(tensors, event_dims);
  py::list strides, copied;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const RowStrides& st = p.strides[i];
    strides.append(py::make_tuple(st.s0, st.s1, st.s2, st.sc));
    copied.append(!p.tensors[i].is_same(tensors[i]));
  }
  return py::make_tuple(p.shape.rows, p.shape.cols, p.shape.n1, p.shape.n2, strides, copied);
}

// The Philox counter and key of element (k, r, d) of z under `seed`: (c0, c1, c2, c3, k0, k1).
std::vector<int64_t> counter(int64_t seed, int64_t k, int64_t r, int64_t d) {
  uint32_t c[4];
  fastelbo::core::noise_counter(c, d / 4, r, k);
  const fastelbo::core::PhiloxKey key = fastelbo::core::seed_key(seed);
  return {c[0], c[1], c[2], c[3], key.k0, key.k1};
}

std::vector<int64_t> words(int64_t seed, int64_t k, int64_t r, int64_t d) {
  uint32_t c[4];
  fastelbo::core::noise_counter(c, d / 4, r, k);
  fastelbo::core::philox4x32_10(c, fastelbo::core::seed_key(seed));
  return {c[0], c[1], c[2], c[3]};
}

// Row r of a block of noise that starts at row `first` (<= r; the block holds NoiseBlock::max_rows
// rows, so a short row's block can span rows on both sides of 2^32).
at::Tensor noise_row(const at::Tensor& seed, int64_t rows, int64_t dim, int64_t r, int64_t k, int64_t first) {
  const fastelbo::EpsSource<float> source(at::Tensor(), seed, rows, dim);
  typename fastelbo::EpsSource<float>::Scratch scratch(source, 4 * ((dim + 3) / 4), 1);
  source.row(scratch, first, k);
  const float* eps = source.row(scratch, r, k);
  return at::from_blob(const_cast<float*>(eps), {dim}, at::kFloat).clone();
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("row_offsets", &row_offsets);
  m.def("plan", &plan);
  m.def("counter", &counter);
  m.def("words", &words);
  m.def("noise_row", &noise_row);
}
