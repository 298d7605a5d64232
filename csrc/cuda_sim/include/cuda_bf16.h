// cuda_sim: __nv_bfloat16 as 16-bit storage with cuda_bf16.h's conversions (round to nearest even).
#pragma once

#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t x = static_cast<uint32_t>(b.bits) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  __nv_bfloat16 b;
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) {  // NaN stays NaN (quiet)
    b.bits = static_cast<uint16_t>((x >> 16) | 0x40u);
    return b;
  }
  x += 0x7FFFu + ((x >> 16) & 1u);  // to nearest even
  b.bits = static_cast<uint16_t>(x >> 16);
  return b;
}
