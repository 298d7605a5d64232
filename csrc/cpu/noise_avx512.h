// The noise of docs/RNG.md for float32 on AVX-512, sixteen Philox calls per vector, kept in
// registers from the counters to the normals: the counters built from the block's (row, group)
// map, ten rounds with each 32 x 32 -> 64-bit product as two vpmuludq (even and odd lanes) where
// a compiler, given the scalar formula of core::philox_round, emits the 64-bit vpmullq and
// widening moves; then Box-Muller with an inline log (Cephes' logf) and one shared reduction for
// cos and sin (Cephes' sinf / cosf polynomials), where the portable path calls Sleef's log, cos
// and sin on arrays of words. The words are bit for bit those of core::philox4x32_10; the normals
// differ from the portable path's by the rounding of log, cos and sin (about 1 ulp each).
#pragma once

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#include <stdint.h>

#include "../core/philox.h"

namespace fastelbo {
namespace avx512 {

// (hi, lo) 32-bit words of the 64-bit products a m, lane by lane (m: a constant in every lane).
inline void mulhilo(__m512i a, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, m);                        // lanes 0, 2, ... as 64-bit
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);  // lanes 1, 3, ...
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

// Philox4x32-10 of sixteen counters (c0, c1, c2, c3) in place (core::philox_round, ten times).
inline void philox(__m512i& c0, __m512i& c1, __m512i& c2, __m512i& c3, core::PhiloxKey key) {
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(core::kPhiloxM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(core::kPhiloxM1));
  uint32_t k0 = key.k0, k1 = key.k1;
  for (int round = 0; round < 10; ++round) {
    __m512i hi0, lo0, hi1, lo1;
    mulhilo(c0, m0, hi0, lo0);
    mulhilo(c2, m1, hi1, lo1);
    c0 = _mm512_ternarylogic_epi32(hi1, c1, _mm512_set1_epi32(static_cast<int>(k0)), 0x96);  // a ^ b ^ c
    c2 = _mm512_ternarylogic_epi32(hi0, c3, _mm512_set1_epi32(static_cast<int>(k1)), 0x96);
    c1 = lo1;
    c3 = lo0;
    k0 += core::kPhiloxW0;
    k1 += core::kPhiloxW1;
  }
}

// log x for x in [2^-24, 1] (normal floats): Cephes' logf. x = m 2^e with m in [sqrt(1/2),
// sqrt(2)), log x = e ln 2 + f - f^2/2 + f^3 P(f), f = m - 1 (exact), P of degree 8, ln 2 in two
// parts; peak error about 1 ulp.
inline __m512 log_unit(__m512 x) {
  __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);  // [1, 2)
  __m512 e = _mm512_getexp_ps(x);                                          // floor(log2 x)
  const __mmask16 big = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356237309505f), _CMP_GT_OQ);
  m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
  e = _mm512_mask_add_ps(e, big, e, _mm512_set1_ps(1.0f));
  const __m512 f = _mm512_sub_ps(m, _mm512_set1_ps(1.0f));
  const __m512 z = _mm512_mul_ps(f, f);
  __m512 p = _mm512_set1_ps(7.0376836292e-2f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-1.1514610310e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.1676998740e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-1.2420140846e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.4249322787e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-1.6668057665e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.0000714765e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-2.4999993993e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(3.3333331174e-1f));
  __m512 y = _mm512_mul_ps(_mm512_mul_ps(p, f), z);            // f^3 P(f)
  y = _mm512_fmadd_ps(e, _mm512_set1_ps(-2.12194440e-4f), y);  // e (ln 2 - 0.693359375)
  y = _mm512_fnmadd_ps(_mm512_set1_ps(0.5f), z, y);            // - f^2 / 2
  return _mm512_fmadd_ps(e, _mm512_set1_ps(0.693359375f), _mm512_add_ps(f, y));
}

// cos and sin of theta in [0, 2 pi]: j = round(theta 2 / pi) in 0..4, r = theta - j pi/2 (pi/2 in
// three parts, the first exact in j pi/2 and its difference with theta exact), cos r and sin r by
// Cephes' polynomials on [-pi/4, pi/4], then the quadrant j mod 4 swaps and negates them.
inline void sincos_turn(__m512 theta, __m512& cos_out, __m512& sin_out) {
  const __m512 j = _mm512_roundscale_ps(_mm512_mul_ps(theta, _mm512_set1_ps(0.636619772367581343f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(j, _mm512_set1_ps(1.5703125f), theta);
  r = _mm512_fnmadd_ps(j, _mm512_set1_ps(4.837512969970703125e-4f), r);
  r = _mm512_fnmadd_ps(j, _mm512_set1_ps(7.54978995489188216e-8f), r);
  const __m512 z = _mm512_mul_ps(r, r);
  __m512 s = _mm512_fmadd_ps(_mm512_set1_ps(-1.9515295891e-4f), z, _mm512_set1_ps(8.3321608736e-3f));
  s = _mm512_fmadd_ps(s, z, _mm512_set1_ps(-1.6666654611e-1f));
  s = _mm512_fmadd_ps(_mm512_mul_ps(s, z), r, r);  // r + r^3 P(r^2)
  __m512 c = _mm512_fmadd_ps(_mm512_set1_ps(2.443315711809948e-5f), z, _mm512_set1_ps(-1.388731625493765e-3f));
  c = _mm512_fmadd_ps(c, z, _mm512_set1_ps(4.166664568298827e-2f));
  c = _mm512_fmadd_ps(_mm512_mul_ps(c, z), z, _mm512_fnmadd_ps(_mm512_set1_ps(0.5f), z, _mm512_set1_ps(1.0f)));
  const __m512i q = _mm512_cvtps_epi32(j);
  const __mmask16 swap = _mm512_test_epi32_mask(q, _mm512_set1_epi32(1));
  const __m512i cos_sign =
      _mm512_slli_epi32(_mm512_and_si512(_mm512_add_epi32(q, _mm512_set1_epi32(1)), _mm512_set1_epi32(2)), 30);
  const __m512i sin_sign = _mm512_slli_epi32(_mm512_and_si512(q, _mm512_set1_epi32(2)), 30);
  cos_out = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(_mm512_mask_blend_ps(swap, c, s)), cos_sign));
  sin_out = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(_mm512_mask_blend_ps(swap, s, c)), sin_sign));
}

// The four normals of sixteen Philox calls: call i's lanes to n0[i], n1[i], n2[i], n3[i]. Call i
// has counter (group[i], row0 + row[i] (64-bit), sample).
inline void normals16(__m512i group, __m512i row, int64_t row0, int64_t sample, core::PhiloxKey key, float* n0,
                      float* n1, float* n2, float* n3) {
  const uint64_t first = static_cast<uint64_t>(row0);
  const __m512i offset = row;
  __m512i c0 = group;
  __m512i c1 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(first & 0xFFFFFFFFu)), offset);
  const __mmask16 carry = _mm512_cmplt_epu32_mask(c1, offset);  // the low word wrapped
  __m512i c2 = _mm512_mask_add_epi32(_mm512_set1_epi32(static_cast<int>(first >> 32)), carry,
                                     _mm512_set1_epi32(static_cast<int>(first >> 32)), _mm512_set1_epi32(1));
  __m512i c3 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(sample)));
  philox(c0, c1, c2, c3, key);
  const __m512 two_m24 = _mm512_set1_ps(static_cast<float>(core::kTwoPowM24));
  const __m512 two_pi = _mm512_set1_ps(static_cast<float>(core::kTwoPiF32));
  const __m512i one = _mm512_set1_epi32(1);
  auto radius = [&](__m512i w) {  // sqrt(-2 log u), u = ((w >> 8) + 1) 2^-24
    const __m512 u = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_srli_epi32(w, 8), one)), two_m24);
    return _mm512_sqrt_ps(_mm512_mul_ps(_mm512_set1_ps(-2.0f), log_unit(u)));
  };
  auto angle = [&](__m512i w) {  // float32(2 pi) ((w >> 8) 2^-24)
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(w, 8)), two_m24), two_pi);
  };
  __m512 cos_a, sin_a, cos_b, sin_b;
  sincos_turn(angle(c1), cos_a, sin_a);
  sincos_turn(angle(c3), cos_b, sin_b);
  const __m512 rad_a = radius(c0), rad_b = radius(c2);
  _mm512_storeu_ps(n0, _mm512_mul_ps(rad_a, cos_a));
  _mm512_storeu_ps(n1, _mm512_mul_ps(rad_a, sin_a));
  _mm512_storeu_ps(n2, _mm512_mul_ps(rad_b, cos_b));
  _mm512_storeu_ps(n3, _mm512_mul_ps(rad_b, sin_b));
}

// Lanes 0, 1, ..., 15 plus `first`.
inline __m512i iota_from(int64_t first) {
  return _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(first))),
                          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}

}  // namespace avx512
}  // namespace fastelbo
#endif
