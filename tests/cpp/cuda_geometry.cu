// Test-only host program (tests/test_large_index.py), built with nvcc, no GPU needed: the
// host-callable index and launch-geometry functions the CUDA kernels and their bindings use
// (csrc/cuda/kernels/common.cuh; csrc/core/ compiled as nvcc sees it, __host__ __device__).
//
// Reads one query per line on stdin and prints one line of answers:
//   geometry R N     -> latent_lanes(N) latent_blocks(R, N) likelihood_threads(N) likelihood_blocks(R, N)
//                       column_grid(R, N).{col_threads col_tiles chunks rows_per_chunk} flat_blocks(R)
//   offset r R N n1 n2 s0 s1 s2 sc -> core::row_offset
//   counter g r k    -> core::noise_counter words c0 c1 c2 c3
#include <cstdint>
#include <iostream>
#include <string>

#include "cuda/kernels/common.cuh"

int main() {
  using namespace fastelbo;
  std::string op;
  while (std::cin >> op) {
    if (op == "geometry") {
      int64_t rows, cols;
      std::cin >> rows >> cols;
      const cuda::ColumnGrid g = cuda::column_grid(rows, cols);
      std::cout << cuda::latent_lanes(cols) << ' ' << cuda::latent_blocks(rows, cols) << ' '
                << cuda::likelihood_threads(cols) << ' ' << cuda::likelihood_blocks(rows, cols) << ' ' << g.col_threads
                << ' ' << g.col_tiles << ' ' << g.chunks << ' ' << g.rows_per_chunk << ' ' << cuda::flat_blocks(rows)
                << '\n';
    } else if (op == "offset") {
      int64_t r;
      core::RowShape shape;
      core::RowStrides st;
      std::cin >> r >> shape.rows >> shape.cols >> shape.n1 >> shape.n2 >> st.s0 >> st.s1 >> st.s2 >> st.sc;
      std::cout << core::row_offset(r, shape, st) << '\n';
    } else if (op == "counter") {
      int64_t group, row, sample;
      std::cin >> group >> row >> sample;
      uint32_t c[4];
      core::noise_counter(c, group, row, sample);
      std::cout << c[0] << ' ' << c[1] << ' ' << c[2] << ' ' << c[3] << '\n';
    } else {
      std::cerr << "unknown query " << op << '\n';
      return 2;
    }
  }
  return 0;
}
