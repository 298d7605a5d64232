// The discretized mixture of logistics (PixelCNN++ / VDVAE / NVAE) per mixture component of one
// pixel, with its derivatives, torch-free (host and device; V = float, double or an ATen vector:
// see math.h). The formulas of the README's "The pixel likelihood of image VAEs" section, mirrored by
// fastelbo/ops/discretized_logistic_mixture_log_prob.py (reference) and triton_kernels/dmol.py.
//
// One channel c of one component: mean m, log-scale s (clamped below at -7), inv = e^-s, bin
// half-width h = 1 / (2^bits - 1), u = x - m:
//   plus = inv (u + h), minus = inv (u - h), mid = inv u, delta = plus - minus = 2 h inv
//   lowest bin  (x < -0.999): log P = log sigmoid(plus)       = -softplus(-plus)
//   highest bin (x >  0.999): log P = log(1 - sigmoid(minus)) = -softplus(minus)
//   otherwise, the bin's mass sigmoid(plus) - sigmoid(minus) = sigmoid(plus) sigmoid(-minus) (1 - e^-delta):
//     log mass = -softplus(-plus) - softplus(minus) + log(-expm1(-delta))   (stable in both tails)
//     log P = log mass where log mass > log 1e-5, else the density at the bin centre times the bin
//     width: log P = mid - s - 2 softplus(mid) - log((2^bits - 1) / 2)
// and the derivatives d log P / d u and d log P / d s:
//   lowest:  d/du = inv sigmoid(-plus),                   d/ds = -plus sigmoid(-plus)
//   highest: d/du = -inv sigmoid(minus),                  d/ds = minus sigmoid(minus)
//   mass:    d/du = inv (sigmoid(-plus) - sigmoid(minus)),
//            d/ds = minus sigmoid(minus) - plus sigmoid(-plus) + delta e^-delta / expm1(-delta)
//   centre:  d/du = inv (1 - 2 sigmoid(mid)),             d/ds = -mid (1 - 2 sigmoid(mid)) - 1
// The component couples the channels' means through the raw coefficients a (t = tanh a):
//   m_0 = mu_0,  m_1 = mu_1 + t_0 x_0,  m_2 = mu_2 + t_1 x_0 + t_2 x_1.
#pragma once

#include "math.h"

namespace fastelbo {
namespace core {

constexpr double kDmolMinLogScale = -7.0;
constexpr double kDmolEdge = 0.999;                        // |x| beyond it: the lowest / highest bin
constexpr double kDmolLogMassFloor = -11.512925464970229;  // log 1e-5

template <typename V>
struct SoftplusSigmoid {
  V softplus;  // log(1 + e^y)
  V sigmoid;   // 1 / (1 + e^-y)
};

// softplus(y) and sigmoid(y) given e = e^-|y|. In single precision with one division for both
// 1/(1 + e) and the atanh argument e/(2 + e) of log1p (as bernoulli_terms in math.h).
template <typename V, typename M = Ops<V>>
FE_HD SoftplusSigmoid<V> softplus_sigmoid(V y, V e) {
  const V one = M::c(1.0);
  const V u = one + e;
  V inv_u, log1p_e;
  if constexpr (M::kSingle) {
    const V v = M::c(2.0) + e;
    const V r = one / (u * v);
    inv_u = v * r;
    log1p_e = log1p_atanh<V, M>(e * u * r);
  } else {
    inv_u = one / u;
    log1p_e = log1p_unit<V, M>(e, u, inv_u);
  }
  return SoftplusSigmoid<V>{M::maximum(y, M::c(0.0)) + log1p_e, M::select(M::ge(y, M::c(0.0)), one, e) * inv_u};
}

template <typename V, typename M = Ops<V>>
FE_HD SoftplusSigmoid<V> softplus_sigmoid(V y) {
  return softplus_sigmoid<V, M>(y, M::exp(M::c(0.0) - M::abs(y)));
}

template <typename V>
struct TanhTerms {
  V t;   // tanh(a)
  V dt;  // 1 - tanh(a)^2
};

// tanh(a) (the library's, about 1 ulp: the coupled means carry its error times the scale's inverse)
// and 1 - tanh^2 = 4 e / (1 + e)^2 with e = e^(-2|a|), not 1 - t t, which cancels where tanh
// saturates (at a = 4 a float32 1 - t t is off by 1e-4 relative).
template <typename V, typename M = Ops<V>>
FE_HD TanhTerms<V> tanh_terms(V a, bool need_dt) {
  if (!need_dt) return TanhTerms<V>{M::tanh(a), M::c(0.0)};
  const V e = M::exp(M::c(-2.0) * M::abs(a));
  const V u = M::c(1.0) + e;
  return TanhTerms<V>{M::tanh(a), M::c(4.0) * e / (u * u)};
}

// log(1 - e^-delta) = log(-em) for delta = 2 h e^-s > 0, em = expm1(-delta). In double precision
// by the log; in single precision without a log call (a call spills every live vector register):
//   delta >= 1: log1p(-e^-delta), by the atanh series of log1p_atanh (|argument| <= 0.23);
//   delta <  1: log delta + log((1 - e^-delta) / delta), with log delta = log(2 h) - s exactly
//     (log(2 h) = -log((2^bits - 1) / 2) = -log_half_levels), and
//     log((1 - e^-d)/d) = -d/2 + d^2/24 - d^4/2880 + d^6/181440 - d^8/9676800 + d^10/479001600
//     (the next term is below 3e-10 at d = 1).
template <typename V, typename M = Ops<V>>
FE_HD V log_one_minus_exp(V delta, V em, V e_delta, V s, V log_half_levels) {
  if constexpr (!M::kSingle) {
    return M::log(M::c(0.0) - em);
  } else {
    const auto small = M::lt(delta, M::c(1.0));
    const V d = M::select(small, delta, M::c(0.0));
    const V d2 = d * d;
    V series = M::c(1.0 / 479001600.0);
    series = series * d2 - M::c(1.0 / 9676800.0);
    series = series * d2 + M::c(1.0 / 181440.0);
    series = series * d2 - M::c(1.0 / 2880.0);
    series = series * d2 + M::c(1.0 / 24.0);
    const V near = (M::c(0.0) - log_half_levels - s) + (series * d2 - M::c(0.5) * d);
    const V e = M::select(small, M::c(0.0), e_delta);
    const V far = log1p_atanh<V, M>((M::c(0.0) - e) / (M::c(2.0) - e));
    return M::select(small, near, far);
  }
}

template <typename V>
struct DmolChannel {
  V value;       // log P
  V d_centered;  // d log P / d (x - m)
  V d_scale;     // d log P / d s (s after the clamp)
};

// One channel of one component: x the data, u = x - m, s the clamped log-scale, inv = e^-s,
// h the bin half-width, log_half_levels = log((2^bits - 1) / 2). Without kGrad (a forward pass
// without gradients) the derivatives are not computed (0).
template <bool kGrad, typename V, typename M = Ops<V>>
FE_HD DmolChannel<V> dmol_channel(V x, V u, V s, V inv, V h, V log_half_levels) {
  const V one = M::c(1.0);
  const V plus = inv * (u + h), minus = inv * (u - h), mid = inv * u;
  const V delta = inv * (M::c(2.0) * h);
  const V em = M::expm1(M::c(0.0) - delta);  // in (-1, 0]
  // e^-delta, not 1 + em, which cancels once delta >~ 1 (on the CPU expm1's exp is shared with it)
  const V e_delta = M::exp(M::c(0.0) - delta);
  // e^-|plus| and e^-|minus| from one exp where the bin lies on one side of the mean: the one
  // nearer 0 is exp'd, the other is it times e^-delta (plus = minus + delta). Lanes whose bin
  // straddles the mean (minus < 0 < plus) need both exps, computed only when some lane does.
  const V a_plus = M::abs(plus), a_minus = M::abs(minus);
  const V e_near = M::exp(M::c(0.0) - M::minimum(a_plus, a_minus));
  const V e_far = e_near * e_delta;
  const auto right = M::ge(minus, M::c(0.0));  // both >= 0: minus is nearer 0
  V e_plus = M::select(right, e_far, e_near), e_minus = M::select(right, e_near, e_far);
  if (!M::all(M::mask_or(right, M::le(plus, M::c(0.0))))) {
    const auto straddle = M::mask_and(M::lt(minus, M::c(0.0)), M::gt(plus, M::c(0.0)));
    e_plus = M::select(straddle, M::exp(M::c(0.0) - a_plus), e_plus);
    e_minus = M::select(straddle, M::exp(M::c(0.0) - a_minus), e_minus);
  }
  const SoftplusSigmoid<V> p = softplus_sigmoid<V, M>(M::c(0.0) - plus, e_plus);  // of -plus
  const SoftplusSigmoid<V> q = softplus_sigmoid<V, M>(minus, e_minus);
  const V log_mass =
      (M::c(0.0) - p.softplus - q.softplus) + log_one_minus_exp<V, M>(delta, em, e_delta, s, log_half_levels);
  const auto low = M::lt(x, M::c(-kDmolEdge)), high = M::gt(x, M::c(kDmolEdge));
  const auto mass = M::gt(log_mass, M::c(kDmolLogMassFloor));
  V value = log_mass, d_u = M::c(0.0), d_s = M::c(0.0);
  if constexpr (kGrad) {
    d_u = inv * (p.sigmoid - q.sigmoid);
    d_s = minus * q.sigmoid - plus * p.sigmoid + delta * e_delta / em;
  }
  // The interior where the bin's mass is below 1e-5 (or NaN): the density at its centre, computed
  // only when some lane needs it (rare in the bulk of an image; a NaN lane always does).
  if (!M::all(M::mask_or(mass, M::mask_or(low, high)))) {
    const SoftplusSigmoid<V> r = softplus_sigmoid<V, M>(mid);
    value = M::select(mass, value, mid - s - M::c(2.0) * r.softplus - log_half_levels);
    if constexpr (kGrad) {
      const V tilt = one - M::c(2.0) * r.sigmoid;  // d (mid - 2 softplus(mid)) / d mid
      d_u = M::select(mass, d_u, inv * tilt);
      d_s = M::select(mass, d_s, M::c(0.0) - mid * tilt - one);
    }
  }
  value = M::select(low, M::c(0.0) - p.softplus, M::select(high, M::c(0.0) - q.softplus, value));
  if constexpr (kGrad) {
    d_u = M::select(low, inv * p.sigmoid, M::select(high, M::c(0.0) - inv * q.sigmoid, d_u));
    d_s = M::select(low, M::c(0.0) - plus * p.sigmoid, M::select(high, minus * q.sigmoid, d_s));
  }
  return DmolChannel<V>{value, d_u, d_s};
}

template <typename V>
struct DmolComponent {
  V log_prob;    // sum over the 3 channels of log P (the component's log-density of the pixel)
  V d_mean[3];   // d log_prob / d mu_c
  V d_scale[3];  // d log_prob / d s_c (raw: 0 where the clamp at -7 holds it)
  V d_coeff[3];  // d log_prob / d a_c (raw coefficients, through tanh and the coupling)
};

// One mixture component of one pixel: x[3] the data, mu[3], s[3] (raw log-scales), a[3] (raw
// coefficients) the component's parameters per channel. Without kGrad only log_prob is set.
template <bool kGrad, typename V, typename M = Ops<V>>
FE_HD DmolComponent<V> dmol_component(const V* x, const V* mu, const V* s_raw, const V* a, V h, V log_half_levels) {
  DmolComponent<V> out;
  V t[3], dt[3];
  for (int c = 0; c < 3; ++c) {
    const TanhTerms<V> tt = tanh_terms<V, M>(a[c], kGrad);
    t[c] = tt.t;
    dt[c] = tt.dt;
  }
  const V mean[3] = {mu[0], mu[1] + t[0] * x[0], mu[2] + t[1] * x[0] + t[2] * x[1]};
  out.log_prob = M::c(0.0);
  for (int c = 0; c < 3; ++c) {
    const V s = M::maximum(s_raw[c], M::c(kDmolMinLogScale));
    const DmolChannel<V> ch =
        dmol_channel<kGrad, V, M>(x[c], x[c] - mean[c], s, M::exp(M::c(0.0) - s), h, log_half_levels);
    out.log_prob = out.log_prob + ch.value;
    if constexpr (kGrad) {
      out.d_mean[c] = M::c(0.0) - ch.d_centered;
      // torch.clamp's gradient: passed where s_raw >= -7 (ties included), else 0.
      out.d_scale[c] = M::select(M::ge(s_raw[c], M::c(kDmolMinLogScale)), ch.d_scale, M::c(0.0));
    }
  }
  if constexpr (kGrad) {
    out.d_coeff[0] = out.d_mean[1] * x[0] * dt[0];
    out.d_coeff[1] = out.d_mean[2] * x[0] * dt[1];
    out.d_coeff[2] = out.d_mean[2] * x[1] * dt[2];
  }
  return out;
}

}  // namespace core
}  // namespace fastelbo
