// The noise scheme of docs/RNG.md, torch-free (host and device): Philox4x32-10 and Box-Muller.
//
//   key     = (seed mod 2^32, seed div 2^32)            seed: the int64 from fastelbo.rng.draw_seed
//   counter = (d div 4, r mod 2^32, r div 2^32, k)      element (k, r, d) of z
//   words   = Philox4x32-10(counter, key)
//   u       = ((w_a >> 8) + 1) 2^-24,   theta = float32(2 pi) ((w_b >> 8) 2^-24)
//   lanes   = (rad(w0) cos th(w1), rad(w0) sin th(w1), rad(w2) cos th(w3), rad(w2) sin th(w3)),
//             rad(w) = sqrt(-2 log u(w)); eps of column d is lane d mod 4 of call d div 4.
//
// The words are bit for bit those of fastelbo/rng.py and triton_kernels/rng.py; the normals agree
// to the rounding of each math library's log, sqrt, cos and sin.
#pragma once

#include <stdint.h>

#include "macros.h"

namespace fastelbo {
namespace core {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;  // multiplies counter word 0
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;  // multiplies counter word 2
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // key word 0 increment
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // key word 1 increment
constexpr double kTwoPowM24 = 5.9604644775390625e-08;
constexpr double kTwoPiF32 = 6.2831854820251465;  // float32(2 pi), exact in float64 too

struct PhiloxKey {
  uint32_t k0, k1;
};

FE_HD PhiloxKey seed_key(int64_t seed) {
  uint64_t s = static_cast<uint64_t>(seed);
  return PhiloxKey{static_cast<uint32_t>(s & 0xFFFFFFFFu), static_cast<uint32_t>(s >> 32)};
}

// One Philox round on the words (c0, c1, c2, c3) with round key (k0, k1):
//   (c0, c1, c2, c3) <- (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1, lo(M0 c0)).
FE_HD void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0, uint32_t k1) {
  const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
  const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
  c0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
  c2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
  c1 = static_cast<uint32_t>(p1);
  c3 = static_cast<uint32_t>(p0);
}

// Ten rounds on c[0..3] in place, the key bumped by (W0, W1) mod 2^32 after each.
FE_HD void philox4x32_10(uint32_t c[4], PhiloxKey key) {
  uint32_t k0 = key.k0, k1 = key.k1;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    philox_round(c[0], c[1], c[2], c[3], k0, k1);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}

// The Philox counter of call (group, row, sample), i.e. columns 4 group .. 4 group + 3.
FE_HD void noise_counter(uint32_t c[4], int64_t group, int64_t row, int64_t sample) {
  const uint64_t r = static_cast<uint64_t>(row);
  c[0] = static_cast<uint32_t>(group);
  c[1] = static_cast<uint32_t>(r & 0xFFFFFFFFu);
  c[2] = static_cast<uint32_t>(r >> 32);
  c[3] = static_cast<uint32_t>(sample);
}

// u in (0, 1] of the radius word and theta in [0, 2 pi) of the angle word, exact in T.
template <typename T>
FE_HD T box_muller_u(uint32_t word) {
  return static_cast<T>((word >> 8) + 1u) * static_cast<T>(kTwoPowM24);
}

template <typename T>
FE_HD T box_muller_theta(uint32_t word) {
  return (static_cast<T>(word >> 8) * static_cast<T>(kTwoPowM24)) * static_cast<T>(kTwoPiF32);
}

}  // namespace core
}  // namespace fastelbo
