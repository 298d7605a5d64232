// Exhaustive check of the AVX-512 noise path's float32 math (csrc/cpu/noise_avx512.h) over every
// input the noise can give it: log_unit over all 2^24 values of u = ((w >> 8) + 1) 2^-24, and
// sincos_turn over all 2^24 values of theta = float32(2 pi) ((w >> 8) 2^-24), against double
// precision log, cos and sin of the same float inputs. Prints
//   log_ulp <worst ulps>  trig_ulp <worst ulps where |value| >= 2^-6>  trig_abs <worst abs error>
// Built and run by tests/test_rng.py (g++ with AVX-512 flags, where the CPU has AVX-512).
#include <cmath>
#include <cstdio>

#include "cpu/noise_avx512.h"

namespace {

double ulps(float got, double want) {
  const double ulp = std::ldexp(1.0, std::ilogb(static_cast<float>(want)) - 23);
  return std::fabs(static_cast<double>(got) - want) / ulp;
}

}  // namespace

int main() {
  using namespace fastelbo;
  constexpr uint32_t kWords = 1u << 24;
  const float two_m24 = static_cast<float>(core::kTwoPowM24), two_pi = static_cast<float>(core::kTwoPiF32);
  double log_ulp = 0, trig_ulp = 0, trig_abs = 0;
  alignas(64) float in[16], a[16], b[16];
  for (uint32_t v0 = 0; v0 < kWords; v0 += 16) {
    for (int i = 0; i < 16; ++i) in[i] = static_cast<float>(v0 + i + 1) * two_m24;  // u
    _mm512_store_ps(a, avx512::log_unit(_mm512_load_ps(in)));
    for (int i = 0; i < 16; ++i) log_ulp = std::fmax(log_ulp, ulps(a[i], std::log(static_cast<double>(in[i]))));
    for (int i = 0; i < 16; ++i) in[i] = (static_cast<float>(v0 + i) * two_m24) * two_pi;  // theta
    __m512 c, s;
    avx512::sincos_turn(_mm512_load_ps(in), c, s);
    _mm512_store_ps(a, c);
    _mm512_store_ps(b, s);
    for (int i = 0; i < 16; ++i) {
      const double theta = in[i], want[2] = {std::cos(theta), std::sin(theta)};
      const float got[2] = {a[i], b[i]};
      for (int j = 0; j < 2; ++j) {
        trig_abs = std::fmax(trig_abs, std::fabs(static_cast<double>(got[j]) - want[j]));
        if (std::fabs(want[j]) >= 1.0 / 64) trig_ulp = std::fmax(trig_ulp, ulps(got[j], want[j]));
      }
    }
  }
  std::printf("log_ulp %.4f trig_ulp %.4f trig_abs %.4g\n", log_ulp, trig_ulp, trig_abs);
  return 0;
}
