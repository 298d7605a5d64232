// What the CPU kernels share: ATen's Vectorized as a value type of the core formulas
// (Ops<Vectorized<T>>), loads and stores of partial vectors from any dtype and stride, the compute
// type of a storage type, and the thread split of a row loop.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <type_traits>

#include "../core/math.h"

namespace fastelbo {

template <typename T>
using Vec = at::vec::Vectorized<T>;

// float64 computes in float64; float32, float16 and bfloat16 in float32.
template <typename scalar_t>
using compute_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// e^x on float32 vectors, inline (no call into Sleef): Cephes' expf, i.e. x = n ln 2 + r with
// |r| <= ln(2)/2 (Cody-Waite: ln 2 split in two constants), e^r by a degree-6 polynomial (peak
// error about 2 ulp), then 2^n applied, so results are right down to the subnormals and overflow
// to inf; NaN stays NaN. With AVX-512, 2^n is one vscalefps (y 2^n, rounded once) and the clamp is
// a bare vmaxps/vminps: about half the instructions of the portable path (its NaN-keeping clamp,
// and 2^n as 2^a 2^b with a, b in [-75, 64], both normal floats, built from integer shifts).
// The Bernoulli kernel, one exp per element, went from 13.4 to 10.6 us at 256 x 64 and from 256
// to 188 us at 1024 x 784 with it.
C10_ALWAYS_INLINE Vec<float> exp_f32(const Vec<float>& x) {
  using V = Vec<float>;
#if defined(CPU_CAPABILITY_AVX512)
  // vmaxps/vminps return their second operand when either is NaN: x second, so NaN stays NaN.
  const __m512 xc = _mm512_min_ps(_mm512_set1_ps(88.8f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f),
                                   _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc));
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  return V(_mm512_scalef_ps(y, n));  // y 2^n, one rounding: subnormals right, overflow to inf
#else
  using I = Vec<int32_t>;
  const V xc = at::vec::minimum(at::vec::maximum(x, V(-104.0f)), V(88.8f));  // both propagate NaN
  const V n = (xc * V(1.44269504088896341f) + V(0.5f)).floor();
  const V r = (xc - n * V(0.693359375f)) + n * V(2.12194440e-4f);
  V p = V(1.9875691500e-4f);
  p = p * r + V(1.3981999507e-3f);
  p = p * r + V(8.3334519073e-3f);
  p = p * r + V(4.1665795894e-2f);
  p = p * r + V(1.6666665459e-1f);
  p = p * r + V(5.0000001201e-1f);
  const V y = p * (r * r) + r + V(1.0f);
  const V a = (n * V(0.5f)).floor();
  auto pow2 = [](const V& k) {
    return at::vec::cast<float>((at::vec::convert_to_int_of_same_size(k) + I(127)) << I(23));
  };
  return y * pow2(a) * pow2(n - a);
#endif
}

// e^x - 1 on float32 vectors, inline: for |x| < 1/2 the Taylor series x + x^2/2! + ... + x^9/9!
// (the omitted terms are below 1e-9 relative), else exp_f32(x) - 1 (no cancellation there: at most
// about 3 ulp); -1 below -104, inf above 88.8, NaN stays NaN.
inline Vec<float> expm1_f32(const Vec<float>& x) {
  using V = Vec<float>;
  const auto small = x.abs() < V(0.5f);
  const V xs = V::blendv(V(0.0f), x, small);
  V p = V(2.7557319e-06f);  // 1/9!
  p = p * xs + V(2.4801587e-05f);
  p = p * xs + V(1.9841270e-04f);
  p = p * xs + V(1.3888889e-03f);
  p = p * xs + V(8.3333333e-03f);
  p = p * xs + V(4.1666667e-02f);
  p = p * xs + V(1.6666667e-01f);
  p = p * xs + V(0.5f);
  const V series = p * (xs * xs) + xs;
  return V::blendv(exp_f32(x) - V(1.0f), series, small);
}

namespace core {

template <typename T>
struct Ops<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  static constexpr bool kSingle = std::is_same_v<T, float>;
  static V c(double x) { return V(static_cast<T>(x)); }
  static V exp(V x) {
    if constexpr (kSingle) {
      return exp_f32(x);
    } else {
      return x.exp();
    }
  }
  static V log(V x) { return x.log(); }
  static V log1p(V x) { return x.log1p(); }
  static V expm1(V x) {
    if constexpr (kSingle) {
      return expm1_f32(x);
    } else {
      return x.expm1();
    }
  }
  static V tanh(V x) { return x.tanh(); }  // Sleef, 1 ulp
  static V sqrt(V x) { return x.sqrt(); }
  static V sin(V x) { return x.sin(); }
  static V cos(V x) { return x.cos(); }
  static V abs(V x) { return x.abs(); }
  static V maximum(V a, V b) { return at::vec::maximum(a, b); }
  static V minimum(V a, V b) { return at::vec::minimum(a, b); }
#if defined(CPU_CAPABILITY_AVX512)
  // A mask register per comparison, read by the blend: at::vec's comparisons return vectors (all
  // bits set where true) that its blendv compares back into a mask, two more instructions per
  // select (the Bernoulli loop: 50 vector instructions per 16 floats with them, 46 without).
  using Mask = std::conditional_t<kSingle, __mmask16, __mmask8>;
  template <int kPredicate>
  static Mask compare(V a, V b) {
    if constexpr (kSingle) {
      return _mm512_cmp_ps_mask(a, b, kPredicate);
    } else {
      return _mm512_cmp_pd_mask(a, b, kPredicate);
    }
  }
  // The predicates of at::vec's operators (ordered, quiet: false where either side is NaN).
  static Mask lt(V a, V b) { return compare<_CMP_LT_OQ>(a, b); }
  static Mask le(V a, V b) { return compare<_CMP_LE_OQ>(a, b); }
  static Mask gt(V a, V b) { return compare<_CMP_GT_OQ>(a, b); }
  static Mask ge(V a, V b) { return compare<_CMP_GE_OQ>(a, b); }
  static Mask eq(V a, V b) { return compare<_CMP_EQ_OQ>(a, b); }
  static Mask mask_and(Mask a, Mask b) { return static_cast<Mask>(a & b); }
  static Mask mask_or(Mask a, Mask b) { return static_cast<Mask>(a | b); }
  static bool all(Mask m) { return m == static_cast<Mask>(~Mask(0)); }
  static V select(Mask m, V a, V b) {
    if constexpr (kSingle) {
      return _mm512_mask_blend_ps(m, b, a);
    } else {
      return _mm512_mask_blend_pd(m, b, a);
    }
  }
#else
  using Mask = V;  // all bits set where true
  static Mask lt(V a, V b) { return a < b; }
  static Mask le(V a, V b) { return a <= b; }
  static Mask gt(V a, V b) { return a > b; }
  static Mask ge(V a, V b) { return a >= b; }
  static Mask eq(V a, V b) { return a == b; }
  static Mask mask_and(Mask a, Mask b) { return a & b; }
  static Mask mask_or(Mask a, Mask b) { return a | b; }
  static bool all(Mask m) { return m.zero_mask() == 0; }  // no lane all-zero bits
  static V select(Mask m, V a, V b) { return V::blendv(b, a, m); }
#endif
};

}  // namespace core

// e^x and e^x - 1 of a vector: inline for float (exp_f32, expm1_f32), Sleef for double.
template <typename T>
inline Vec<T> vexp(const Vec<T>& x) {
  return core::Ops<Vec<T>>::exp(x);
}

template <typename T>
inline Vec<T> vexpm1(const Vec<T>& x) {
  return core::Ops<Vec<T>>::expm1(x);
}

// float16 and bfloat16, whose vectors hold twice float's lanes.
template <typename S>
constexpr bool kReducedFloat = std::is_same_v<S, at::Half> || std::is_same_v<S, at::BFloat16>;

// `count` (<= Vec<T>::size()) elements base[i * stride] converted to T; lanes past count are 0.
// Contiguous float16 inputs widen in vector registers (one load, one conversion): element by
// element, float16 -> float is a software conversion (the kernels ran 2-6x slower in float16 than
// in bfloat16, measured). bfloat16 -> float is a shift that the compiler vectorizes in the loop
// below, faster than ATen's full-width conversion of a half-filled vector (the Gaussian at
// 256 x 784: 15 against 20 us).
template <typename T, typename S>
inline Vec<T> load(const S* base, int64_t stride, int64_t count) {
  if constexpr (std::is_same_v<S, T>) {
    if (stride == 1) return Vec<T>::loadu(base, count);
  }
  if constexpr (std::is_same_v<T, float> && std::is_same_v<S, at::Half>) {
    if (stride == 1) return std::get<0>(at::vec::convert_to_float<S>(Vec<S>::loadu(base, count)));
  }
  alignas(64) T buf[Vec<T>::size()] = {};
  for (int64_t i = 0; i < count; ++i) buf[i] = static_cast<T>(base[i * stride]);
  return Vec<T>::loadu(buf);
}

// Store the first `count` lanes of v at base[i * stride], converted (rounded to nearest even) to S.
template <typename T, typename S>
inline void store(S* base, int64_t stride, const Vec<T>& v, int64_t count) {
  if constexpr (std::is_same_v<S, T>) {
    if (stride == 1) {
      v.store(base, count);
      return;
    }
  }
  if constexpr (std::is_same_v<T, float> && kReducedFloat<S>) {  // rounding in vector registers (both types)
    if (stride == 1) {
      at::vec::convert_from_float<S>(v, v).store(base, count);
      return;
    }
  }
  alignas(64) T buf[Vec<T>::size()];
  v.store(buf);
  for (int64_t i = 0; i < count; ++i) base[i * stride] = static_cast<S>(buf[i]);
}

// v where lane < count, else 0 (for sums over a partial vector).
template <typename T>
inline Vec<T> first(const Vec<T>& v, int64_t count) {
  return count == Vec<T>::size() ? v : Vec<T>::set(Vec<T>(T(0)), v, count);
}

template <typename T>
inline T hsum(const Vec<T>& v) {
  return at::vec::vec_reduce_all<T>([](Vec<T>& a, Vec<T>& b) { return a + b; }, v);
}

// body(j, n) over the columns [0, cols) in vectors of W: whole vectors with n a compile-time W
// (loads, stores and masks fold to plain vector instructions), then one partial vector with n < W.
template <int64_t W, typename Body>
inline void for_vectors(int64_t cols, Body&& body) {
  int64_t j = 0;
  for (; j + W <= cols; j += W) body(j, std::integral_constant<int64_t, W>{});
  if (j < cols) body(j, cols - j);
}

// f(std::true_type{}) or f(std::false_type{}): a run-time flag as a compile-time one, so that hot
// loops are compiled once per case without the flag's branches (and with unit strides folded).
template <typename F>
inline void static_flag(bool flag, F&& f) {
  if (flag) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// Rows per task of a parallel row loop: about `work` elements of work per task.
inline int64_t grain_rows(int64_t elements_per_row, int64_t work = 32768) {
  return std::max<int64_t>(1, work / std::max<int64_t>(1, elements_per_row));
}

// t in `dtype`: t itself when it already is (no dispatcher call: the ops run once per step at
// every size, so their fixed cost counts), else a converted copy.
inline at::Tensor as_dtype(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

// t expanded to `sizes`: t itself when it has them (no op call: a per-sample prior, x of the logits' shape).
inline at::Tensor expanded_to(const at::Tensor& t, at::IntArrayRef sizes) {
  return t.sizes() == sizes ? t : t.expand(sizes);
}

// All float inputs of one dtype, or upcast to the compute dtype (a copy, only for mixed dtypes).
inline at::ScalarType common_float_dtype(std::initializer_list<const at::Tensor*> tensors) {
  at::ScalarType first_dtype = at::ScalarType::Undefined;
  bool mixed = false, any_double = false;
  for (const at::Tensor* t : tensors) {
    if (t == nullptr || !t->defined()) continue;
    if (first_dtype == at::ScalarType::Undefined) first_dtype = t->scalar_type();
    mixed = mixed || t->scalar_type() != first_dtype;
    any_double = any_double || t->scalar_type() == at::kDouble;
  }
  if (!mixed) return first_dtype;
  return any_double ? at::kDouble : at::kFloat;
}

inline at::ScalarType compute_dtype(at::ScalarType storage) {
  return storage == at::kDouble ? at::kDouble : at::kFloat;
}

#define FASTELBO_DISPATCH_FLOAT(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

}  // namespace fastelbo
