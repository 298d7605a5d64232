// How the kernels address strided tensors without copies (fastelbo/triton_backend/_layout.py has
// the same scheme): tensors sharing a logical shape are read as R rows of N columns; the leading
// (batch) dims collapse to at most three row dims (n0, n1, n2) shared by all tensors, each tensor
// with its own row strides (s0, s1, s2) and one column stride sc. A broadcast tensor has stride 0
// along the dims it lacks. All offsets are 64-bit.
#pragma once

#include <stdint.h>

#include "macros.h"

namespace fastelbo {
namespace core {

struct RowShape {
  int64_t rows;  // R = n0 n1 n2
  int64_t cols;  // N
  int64_t n1, n2;
};

struct RowStrides {
  int64_t s0, s1, s2, sc;
};

// Element offset of column 0 of flattened row r = (i0 n1 + i1) n2 + i2.
FE_HD int64_t row_offset(int64_t r, const RowShape& shape, const RowStrides& st) {
  const int64_t i2 = r % shape.n2;
  const int64_t rest = r / shape.n2;
  return (rest / shape.n1) * st.s0 + (rest % shape.n1) * st.s1 + i2 * st.s2;
}

// True when the tensor is the same for every row (all row strides 0), e.g. a shared prior.
FE_HD bool shared_across_rows(const RowStrides& st) { return st.s0 == 0 && st.s1 == 0 && st.s2 == 0; }

}  // namespace core
}  // namespace fastelbo
