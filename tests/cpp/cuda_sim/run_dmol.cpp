// Runs csrc/cuda/kernels/dmol.cuh's kernels in the CPU simulator (cuda_sim.h) on raw arrays, as the
// binding csrc/cuda/dmol.cu launches them for contiguous channels-last tensors:
//   run_dmol <f64|f32|f16|bf16> R N n_mix bits params.bin x.bin out.bin grad.bin
// params (R, N, 10 n_mix) and x (R, N, 3) stored in the given type (f16 / bf16: their 16-bit
// patterns); writes out (R,) and the gradient buffer (R, N, 10 n_mix) in the compute type
// (float64 for f64, float32 otherwise); a failure the simulator reports (a deadlock, a bad shuffle) exits with 3.
// Built by tests/test_cuda_sim.py with g++ -include cuda_sim.h (csrc/cuda_sim/).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/dmol.cuh"

using namespace fastelbo::cuda;

template <typename T>
std::vector<T> read(const char* path, size_t n) {
  std::vector<T> v(n);
  FILE* f = std::fopen(path, "rb");
  if (!f || std::fread(v.data(), sizeof(T), n, f) != n) {
    std::fprintf(stderr, "run_dmol: cannot read %zu values from %s\n", n, path);
    std::exit(2);
  }
  std::fclose(f);
  return v;
}

template <typename T>
void write(const char* path, const std::vector<T>& v) {
  FILE* f = std::fopen(path, "wb");
  std::fwrite(v.data(), sizeof(T), v.size(), f);
  std::fclose(f);
}

template <typename S, typename T>
int run(int64_t R, int64_t N, int64_t M, int bits, char** paths) {
  const int64_t C = 10 * M;
  std::vector<S> params = read<S>(paths[0], static_cast<size_t>(R * N * C));
  std::vector<S> x = read<S>(paths[1], static_cast<size_t>(R * N * 3));
  std::vector<T> out(static_cast<size_t>(R)), grad(static_cast<size_t>(R * N * C));
  const DmolGrid g = dmol_grid(R, N);
  std::vector<T> partial(static_cast<size_t>(R * g.chunks));
  DmolParams<S, S, T> p;
  p.params = params.data();
  p.x = x.data();
  p.out = out.data();
  p.partial = partial.data();
  p.grad = grad.data();
  p.shape = RowShape{R, N, 1, 1};
  p.p_st = RowStrides{N * C, 0, 0, C};
  p.x_st = RowStrides{N * 3, 0, 0, 3};
  p.g_st = p.p_st;
  p.p_ch = p.g_ch = p.x_ch = 1;
  p.n_mix = M;
  const double levels = static_cast<double>((int64_t{1} << bits) - 1);
  p.h = 1.0 / levels;
  p.log_half_levels = std::log(levels / 2.0);
  p.grid = g;
  FE_LAUNCH(dim3(static_cast<unsigned>(g.row_blocks), static_cast<unsigned>(g.chunks)), kBlock, 0, nullptr,
            dmol_log_prob_kernel<S, S, T>)(p);
  if (g.chunks > 1) {
    FE_LAUNCH(dim3(static_cast<unsigned>(flat_blocks(R))), kBlock, 0, nullptr, dmol_sum_partials_kernel<T>)(
        static_cast<const T*>(partial.data()), out.data(), R, g.chunks);
  }
  const std::string error = fe_sim::take_error();
  if (!error.empty()) {
    std::fprintf(stderr, "%s\n", error.c_str());
    return 3;
  }
  write(paths[2], out);
  write(paths[3], grad);
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 10) {
    std::fprintf(stderr, "usage: run_dmol <f64|f32|f16|bf16> R N n_mix bits params.bin x.bin out.bin grad.bin\n");
    return 2;
  }
  const int64_t R = std::atoll(argv[2]), N = std::atoll(argv[3]), M = std::atoll(argv[4]);
  const int bits = std::atoi(argv[5]);
  const std::string type = argv[1];
  if (type == "f64") return run<double, double>(R, N, M, bits, argv + 6);
  if (type == "f16") return run<__half, float>(R, N, M, bits, argv + 6);
  if (type == "bf16") return run<__nv_bfloat16, float>(R, N, M, bits, argv + 6);
  return run<float, float>(R, N, M, bits, argv + 6);
}
