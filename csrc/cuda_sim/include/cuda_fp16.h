// cuda_sim: __half as 16-bit storage with cuda_fp16.h's conversions (round to nearest even).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

struct __half {
  uint16_t bits;
};

inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  uint32_t exponent = (h.bits >> 10) & 0x1Fu, mantissa = h.bits & 0x3FFu, out;
  if (exponent == 0x1F) {
    out = sign | 0x7F800000u | (mantissa << 13);  // inf, NaN
  } else if (exponent == 0) {
    if (mantissa == 0) {
      out = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do {
        ++e;
        mantissa <<= 1;
      } while ((mantissa & 0x400u) == 0);
      out = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mantissa & 0x3FFu) << 13);
    }
  } else {
    out = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &out, 4);
  return f;
}

inline __half __float2half_rn(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t abs = x & 0x7FFFFFFFu;
  __half h;
  if (abs >= 0x7F800000u) {  // inf or NaN
    h.bits = sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u : 0u);
    return h;
  }
  if (abs >= 0x477FF000u) {  // rounds to >= 65520: inf
    h.bits = sign | 0x7C00u;
    return h;
  }
  if (abs < 0x38800000u) {  // below 2^-14: subnormal half (or 0)
    float a;
    std::memcpy(&a, &abs, 4);
    const float scaled = a * 16777216.0f;  // a / 2^-24, exact; round to nearest even integer
    h.bits = sign | static_cast<uint16_t>(std::nearbyint(scaled));
    return h;
  }
  const uint32_t mantissa = abs & 0x7FFFFFu, exponent = (abs >> 23) - 127 + 15;
  uint32_t bits = (exponent << 10) | (mantissa >> 13);
  const uint32_t rest = mantissa & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (bits & 1u))) ++bits;  // to nearest even (carry may reach inf)
  h.bits = sign | static_cast<uint16_t>(bits);
  return h;
}
