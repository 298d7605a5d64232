// The per-element math of the README's "The math" with its derivatives, torch-free (host and device).
//
// Every formula is a template over a value type V with its operations in Ops<V>: V = float or
// double here (scalar host code and CUDA threads); the CPU backend adds Ops for ATen's
// Vectorized<float> / Vectorized<double> (csrc/cpu/common.h), so one text of each formula runs
// scalar on the GPU and SIMD on the CPU. The formulas mirror fastelbo/reference/_math.py (whose
// docstrings derive them) and triton_kernels/math.py.
#pragma once

#include <math.h>

#include "macros.h"

namespace fastelbo {
namespace core {

// Ops<V>: kSingle (float32 arithmetic), constants c(x), exp, log, log1p, expm1, tanh, sqrt, sin, cos, abs, maximum, minimum, the
// comparisons lt/le/gt/ge/eq giving a Mask, mask_and / mask_or, all(mask) (every lane set: a bool), and
// select(mask, a, b) = mask ? a : b.
template <typename V>
struct Ops;

template <>
struct Ops<float> {
  using Mask = bool;
  static constexpr bool kSingle = true;  // float32 arithmetic
  static FE_HD float c(double x) { return static_cast<float>(x); }
  static FE_HD float exp(float x) { return expf(x); }
  static FE_HD float log(float x) { return logf(x); }
  static FE_HD float log1p(float x) { return log1pf(x); }
  static FE_HD float expm1(float x) { return expm1f(x); }
  static FE_HD float tanh(float x) { return tanhf(x); }
  static FE_HD float sqrt(float x) { return sqrtf(x); }
  static FE_HD float sin(float x) { return sinf(x); }
  static FE_HD float cos(float x) { return cosf(x); }
  static FE_HD float abs(float x) { return fabsf(x); }
  static FE_HD float maximum(float a, float b) { return a != a ? a : (a > b ? a : b); }
  static FE_HD float minimum(float a, float b) { return a != a ? a : (a < b ? a : b); }
  static FE_HD bool lt(float a, float b) { return a < b; }
  static FE_HD bool le(float a, float b) { return a <= b; }
  static FE_HD bool gt(float a, float b) { return a > b; }
  static FE_HD bool ge(float a, float b) { return a >= b; }
  static FE_HD bool eq(float a, float b) { return a == b; }
  static FE_HD bool mask_and(bool a, bool b) { return a && b; }
  static FE_HD bool mask_or(bool a, bool b) { return a || b; }
  static FE_HD bool all(bool m) { return m; }
  static FE_HD float select(bool m, float a, float b) { return m ? a : b; }
};

template <>
struct Ops<double> {
  using Mask = bool;
  static constexpr bool kSingle = false;
  static FE_HD double c(double x) { return x; }
  static FE_HD double exp(double x) { return ::exp(x); }
  static FE_HD double log(double x) { return ::log(x); }
  static FE_HD double log1p(double x) { return ::log1p(x); }
  static FE_HD double expm1(double x) { return ::expm1(x); }
  static FE_HD double tanh(double x) { return ::tanh(x); }
  static FE_HD double sqrt(double x) { return ::sqrt(x); }
  static FE_HD double sin(double x) { return ::sin(x); }
  static FE_HD double cos(double x) { return ::cos(x); }
  static FE_HD double abs(double x) { return ::fabs(x); }
  static FE_HD double maximum(double a, double b) { return a != a ? a : (a > b ? a : b); }
  static FE_HD double minimum(double a, double b) { return a != a ? a : (a < b ? a : b); }
  static FE_HD bool lt(double a, double b) { return a < b; }
  static FE_HD bool le(double a, double b) { return a <= b; }
  static FE_HD bool gt(double a, double b) { return a > b; }
  static FE_HD bool ge(double a, double b) { return a >= b; }
  static FE_HD bool eq(double a, double b) { return a == b; }
  static FE_HD bool mask_and(bool a, bool b) { return a && b; }
  static FE_HD bool mask_or(bool a, bool b) { return a || b; }
  static FE_HD bool all(bool m) { return m; }
  static FE_HD double select(bool m, double a, double b) { return m ? a : b; }
};

enum Param : int { kLogvar = 0, kLogStd = 1, kSoftplus = 2, kSoftLogStd = 3 };

// Power series of log(u coth u) in u^2 (u = l/2), a_1..a_9 (fastelbo/reference/_math.py):
// cb_series(n) = a_(n+1). A function rather than only an array: CUDA device code cannot read a
// namespace-scope host array at a run-time index.
FE_HD constexpr double cb_series(int n) {
  switch (n) {
    case 0: return 1.0 / 3.0;
    case 1: return -7.0 / 90.0;
    case 2: return 62.0 / 2835.0;
    case 3: return -127.0 / 18900.0;
    case 4: return 146.0 / 66825.0;
    case 5: return -1414477.0 / 1915538625.0;
    case 6: return 32764.0 / 127702575.0;
    case 7: return -16931177.0 / 186080895000.0;
    default: return 11499383114.0 / 350813659321125.0;
  }
}
constexpr double kCbSeries[9] = {cb_series(0), cb_series(1), cb_series(2), cb_series(3), cb_series(4),
                                 cb_series(5), cb_series(6), cb_series(7), cb_series(8)};
constexpr double kLog2 = 0.6931471805599453;
constexpr double kHalfLog2Pi = 0.91893853320467274178;

// log1p(t) = 2 atanh(s) = 2 s (1 + s^2/3 + ... + s^12/13) for s = t / (2 + t) in [0, 1/3] (t in
// [0, 1]): the omitted terms are below 2e-8 relative, and no log is evaluated (single precision).
template <typename V, typename M = Ops<V>>
FE_HD V log1p_atanh(V s) {
  const V z = s * s;
  V p = M::c(1.0 / 13.0);
  p = p * z + M::c(1.0 / 11.0);
  p = p * z + M::c(1.0 / 9.0);
  p = p * z + M::c(1.0 / 7.0);
  p = p * z + M::c(1.0 / 5.0);
  p = p * z + M::c(1.0 / 3.0);
  p = p * z + M::c(1.0);
  return M::c(2.0) * s * p;
}

// log1p(t) for t in [0, 1], given u = fl(1 + t) and its reciprocal (which callers reuse).
//   single precision: log1p_atanh of t / (2 + t);
//   double precision: log(u) - ((u - 1) - t)/u, the log corrected for the rounding of u to first
//     order (t itself where u rounds to 1).
template <typename V, typename M = Ops<V>>
FE_HD V log1p_unit(V t, V u, V inv_u) {
  if constexpr (M::kSingle) {
    return log1p_atanh<V, M>(t / (M::c(2.0) + t));
  } else {
    return M::log(u) - ((u - M::c(1.0)) - t) * inv_u;
  }
}

// softplus(x) = log(1 + e^x) = max(x, 0) + log1p(e^-|x|)
template <typename V, typename M = Ops<V>>
FE_HD V softplus(V x) {
  V e = M::exp(M::c(0.0) - M::abs(x));
  V u = M::c(1.0) + e;
  return M::maximum(x, M::c(0.0)) + log1p_unit<V, M>(e, u, M::c(1.0) / u);
}

// sigmoid(x) = 1 / (1 + e^-x), as e^-|x| / (1 + e^-|x|) for x < 0 (no overflow)
template <typename V, typename M = Ops<V>>
FE_HD V sigmoid(V x) {
  V e = M::exp(M::c(0.0) - M::abs(x));
  V one = M::c(1.0);
  return M::select(M::ge(x, M::c(0.0)), one, e) / (one + e);
}

template <typename V>
struct SigmaTerms {
  V sigma;      // sigma
  V log_sigma;  // log sigma
  V dlog;       // d log sigma / d s
  V dsigma;     // d sigma / d s
};

// sigma, log sigma and d log sigma / ds of the encoder's scale output s:
//   logvar:       sigma = e^(s/2),     d log sigma/ds = 1/2
//   log_std:      sigma = e^s,         d log sigma/ds = 1
//   softplus:     sigma = softplus(s), d log sigma/ds = sigmoid(s) / softplus(s); below s = -20,
//                 log sigma = s - e^s/2 and its derivative 1 - e^s/2 (softplus(s) would underflow).
//   soft_log_std: log sigma = 5 tanh(s / 5) (NVAE's soft clamp), d log sigma/ds = 1 - tanh(s/5)^2,
//                 as 4 e^(-2|s|/5) / (2 + m)^2 with m = expm1(-2|s|/5) (no cancellation where tanh saturates)
// d sigma/ds is sigma d log sigma/ds, except for softplus, where it is sigmoid(s): finite (1) where
// sigma = inf and d log sigma/ds = 0, so a gradient through z reaches s there as autograd's would.
// Forward passes, which never read the derivatives, pass need_dlog = false (dlog, dsigma may then be 0).
template <typename V, typename M = Ops<V>>
FE_HD SigmaTerms<V> sigma_terms(V s, int param, bool need_dlog = true) {
  if (param == kLogvar) {
    V log_sigma = M::c(0.5) * s;
    V sigma = M::exp(log_sigma);
    return SigmaTerms<V>{sigma, log_sigma, M::c(0.5), M::c(0.5) * sigma};
  }
  if (param == kLogStd) {
    V sigma = M::exp(s);
    return SigmaTerms<V>{sigma, s, M::c(1.0), sigma};
  }
  if (param == kSoftLogStd) {
    // tanh |y| = -m / (2 + m) with m = expm1(-2|y|) in (-1, 0]: no overflow, no cancellation
    // near 0; 1 - tanh^2 = 4 e / (2 + m)^2 with e = e^(-2|y|) = 1 + m, taken from exp (1 + m
    // rounds to 0 where tanh saturates).
    V y = s * M::c(0.2);
    V m = M::expm1(M::c(-2.0) * M::abs(y));
    V u = M::c(2.0) + m;
    V t = (M::c(0.0) - m) / u;
    V log_sigma = M::c(5.0) * M::select(M::lt(y, M::c(0.0)), M::c(0.0) - t, t);
    V dlog = need_dlog ? M::c(4.0) * M::exp(M::c(-2.0) * M::abs(y)) / (u * u) : M::c(0.0);
    V sigma = M::exp(log_sigma);
    return SigmaTerms<V>{sigma, log_sigma, dlog, sigma * dlog};
  }
  V sigma = softplus<V, M>(s);
  auto tail = M::lt(s, M::c(-20.0));
  V e = M::exp(M::minimum(s, M::c(-20.0)));
  V safe_sigma = M::select(tail, M::c(1.0), sigma);
  V log_sigma = M::select(tail, s - M::c(0.5) * e, M::log(safe_sigma));
  if (!need_dlog) return SigmaTerms<V>{sigma, log_sigma, M::c(0.0), M::c(0.0)};
  V dsigma = sigmoid<V, M>(s);
  V dlog = M::select(tail, M::c(1.0) - M::c(0.5) * e, dsigma / safe_sigma);
  return SigmaTerms<V>{sigma, log_sigma, dlog, dsigma};
}

// The prior's terms from its scale s_p, as the kernels use them: 1 / sigma_p, log sigma_p and
// d log sigma_p / ds_p. For the exponential parametrizations 1 / sigma_p is one exp of -log sigma_p,
// where sigma_terms would take an exp and a division.
template <typename V>
struct PriorTerms {
  V inv_sigma;  // 1 / sigma_p
  V log_sigma;  // log sigma_p
  V dlog;       // d log sigma_p / d s_p
};

template <typename V, typename M = Ops<V>>
FE_HD PriorTerms<V> prior_terms(V s, int param, bool need_dlog = true) {
  if (param == kLogvar || param == kLogStd) {
    V log_sigma = param == kLogvar ? M::c(0.5) * s : s;
    return PriorTerms<V>{M::exp(M::c(0.0) - log_sigma), log_sigma, M::c(param == kLogvar ? 0.5 : 1.0)};
  }
  SigmaTerms<V> t = sigma_terms<V, M>(s, param, need_dlog);
  return PriorTerms<V>{M::c(1.0) / t.sigma, t.log_sigma, t.dlog};
}

// e^x - 1 - x: x^2 (1/2! + x/3! + ... + x^8/10!) for |x| below the limit where those terms are
// exact to the type (float32: |x| < 1/2, the next term < 1e-10 relative; float64: |x| < 0.1, < 1e-16),
// else e^x - 1 - x (float32: one exp where expm1 on vectors would evaluate its own series as well;
// at |x| = 1/2 about three bits cancel, 4.5 ulp at most just above it, measured) or expm1(x) - x (float64).
template <typename V, typename M = Ops<V>>
FE_HD V expm1_minus_x(V x) {
  auto small = M::lt(M::abs(x), M::c(M::kSingle ? 0.5 : 0.1));
  V xs = M::select(small, x, M::c(0.0));
  V acc = M::c(2.755731922398589e-07);
  acc = acc * xs + M::c(2.7557319223985893e-06);
  acc = acc * xs + M::c(2.48015873015873e-05);
  acc = acc * xs + M::c(0.0001984126984126984);
  acc = acc * xs + M::c(0.001388888888888889);
  acc = acc * xs + M::c(0.008333333333333333);
  acc = acc * xs + M::c(0.041666666666666664);
  acc = acc * xs + M::c(0.16666666666666666);
  acc = acc * xs + M::c(0.5);
  V xl = M::select(small, M::c(1.0), x);
  V large = M::kSingle ? M::exp(xl) - M::c(1.0) - xl : M::expm1(xl) - xl;
  return M::select(small, xs * xs * acc, large);
}

template <typename V>
struct ValueGrad {
  V value;
  V grad;
};

// Bernoulli log-density x l - softplus(l) and its derivative x - sigmoid(l), without
// cancellation: for l > 0 the value is (x - 1) l - softplus(-l), so both branches read
// log1p(e^-|l|).
template <typename V, typename M = Ops<V>>
FE_HD ValueGrad<V> bernoulli_terms(V l, V x) {
  V one = M::c(1.0);
  V e = M::exp(M::c(0.0) - M::abs(l));
  V u = one + e;
  V linear = M::select(M::gt(l, M::c(0.0)), (x - one) * l, x * l);
  V inv_u, log1p_e;
  if constexpr (M::kSingle) {
    // One division for both 1/(1 + e) and the atanh argument e/(2 + e): r = 1/((1 + e)(2 + e)).
    V v = M::c(2.0) + e;
    V r = one / (u * v);
    inv_u = v * r;
    log1p_e = log1p_atanh<V, M>(e * u * r);
  } else {
    inv_u = one / u;
    log1p_e = log1p_unit<V, M>(e, u, inv_u);
  }
  V sig = M::select(M::ge(l, M::c(0.0)), one, e) * inv_u;
  return ValueGrad<V>{linear - log1p_e, x - sig};
}

// log C(l) of the continuous Bernoulli (C = l / tanh(l/2)) and d log C / dl:
//   |l| < 1/2: log 2 + sum_n a_n u^(2n) with u = l/2, derivative (l/2) sum_n n a_n u^(2n-2);
//   else, with e = e^-|l|: log C = log(|l| (1 + e) / (1 - e)), d/dl = 1/l - sign(l) 2e / (1 - e^2).
template <typename V, typename M = Ops<V>>
FE_HD ValueGrad<V> cb_log_normalizer_terms(V l) {
  V one = M::c(1.0);
  auto small = M::lt(M::abs(l), M::c(0.5));
  V ls = M::select(small, l, M::c(0.0));
  V u2 = M::c(0.25) * ls * ls;
  V series = M::c(cb_series(8));
  V dseries = M::c(9.0 * cb_series(8));
  for (int n = 7; n >= 0; --n) {
    series = series * u2 + M::c(cb_series(n));
    dseries = dseries * u2 + M::c((n + 1) * cb_series(n));
  }
  V safe = M::select(small, one, l);
  V a = M::abs(safe);
  V e = M::exp(M::c(0.0) - a);
  V direct = M::log(a * (one + e) / (one - e));
  V sign2 = M::select(M::lt(l, M::c(0.0)), M::c(-2.0), M::c(2.0));
  V ddirect = one / safe - sign2 * e / (one - e * e);
  return ValueGrad<V>{M::select(small, M::c(kLog2) + u2 * series, direct),
                      M::select(small, M::c(0.5) * ls * dseries, ddirect)};
}

}  // namespace core
}  // namespace fastelbo
