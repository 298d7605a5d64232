"""Elementwise math of the README's "The math" as Triton jit helpers, with the derivatives the kernels need.

Every helper computes in the dtype of its arguments (float32, or float64 for float64 inputs).
Only core `tl` math is used (exp, log, sqrt): the interpreter runs it on CPU, and the accurate
log1p / expm1 below are built from it with Kahan's correction, so no libdevice call is needed.
The formulas mirror fastelbo/reference_backend/_math.py, whose docstrings derive them.
"""
import triton
import triton.language as tl

# Power series of log(u coth u) (u = l/2): a_1..a_9, the coefficients of u^(2n) (reference/_math.py).
CB_A1: tl.constexpr = 1.0 / 3.0
CB_A2: tl.constexpr = -7.0 / 90.0
CB_A3: tl.constexpr = 62.0 / 2835.0
CB_A4: tl.constexpr = -127.0 / 18900.0
CB_A5: tl.constexpr = 146.0 / 66825.0
CB_A6: tl.constexpr = -1414477.0 / 1915538625.0
CB_A7: tl.constexpr = 32764.0 / 127702575.0
CB_A8: tl.constexpr = -16931177.0 / 186080895000.0
CB_A9: tl.constexpr = 11499383114.0 / 350813659321125.0
LOG2: tl.constexpr = 0.6931471805599453


@triton.jit
def scalar(hi, lo, DTYPE: tl.constexpr):
    """A float scalar passed at run time as two float32 halves (hi + lo), rebuilt in DTYPE: exact to
    about 2^-48 relative in float64, plain hi in float32."""
    return tl.cast(hi, DTYPE) + tl.cast(lo, DTYPE)


@triton.jit
def round_to(x, DST: tl.constexpr):
    """x rounded to nearest-even in DST, the dtype of an output. bfloat16 is rounded by integer
    arithmetic on the float32 bits (what the GPU's cvt.rn does), so the interpreter, whose own
    float32 -> bfloat16 cast truncates, gives the same bits."""
    if DST == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(x != x, 0x7FC0, rounded)
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DST)


@triton.jit
def log1p(t):
    """log(1 + t) for t > -1, accurate for small t: with u = 1 + t rounded,
    log1p(t) = log(u) * t / (u - 1) (Kahan), and t itself where u rounds to 1."""
    u = 1.0 + t
    d = u - 1.0
    is_one = d == 0.0
    return tl.where(is_one, t, tl.log(u) * (t / tl.where(is_one, 1.0, d)))


@triton.jit
def expm1(x):
    """e^x - 1. For |x| < 1, with u = e^x rounded: (u - 1) * x / log(u) (Kahan), and x where u
    rounds to 1. Elsewhere u - 1 itself, which has no cancellation there (|u - 1| > 0.63) and is
    exact to rounding even where u is subnormal, zero or inf (Kahan's quotient is not: a subnormal
    u has few significant bits, and log(u) does not see the ones it lost)."""
    u = tl.exp(x)
    d = u - 1.0
    kahan = (tl.abs(x) < 1.0) & (d != 0.0)
    safe_log = tl.log(tl.where(kahan, u, 2.0))
    return tl.where(d == 0.0, x, tl.where(kahan, d * (x / safe_log), d))


@triton.jit
def softplus(x):
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|)."""
    return tl.maximum(x, 0.0) + log1p(tl.exp(-tl.abs(x)))


@triton.jit
def sigmoid(x):
    """1 / (1 + e^-x) without overflow: e^-|x| / (1 + e^-|x|) for x < 0."""
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def sigma_terms(s, PARAM: tl.constexpr):
    """(sigma, log sigma, d log sigma / d s, d sigma / d s) of the encoder's scale output s
    (csrc/core/math.h: sigma_terms, term for term).

    PARAM 0, "logvar":   sigma = e^(s/2),     d log sigma/ds = 1/2
    PARAM 1, "log_std":  sigma = e^s,         d log sigma/ds = 1
    PARAM 2, "softplus": sigma = softplus(s), d log sigma/ds = sigmoid(s) / softplus(s);
        below s = -20, log sigma = s - e^s/2 and its derivative 1 - e^s/2 (no underflow).
    PARAM 3, "soft_log_std": log sigma = 5 tanh(s / 5), d log sigma/ds = 1 - tanh(s/5)^2 (NVAE), as
        4 e^(-2|s|/5) / (2 + m)^2 with m = expm1(-2|s|/5) (no cancellation where tanh saturates).
    d sigma/ds is sigma d log sigma/ds, except for softplus, where it is sigmoid(s): finite (1) where
    sigma = inf and d log sigma/ds = 0, so a gradient through z reaches s there as autograd's would.
    """
    if PARAM == 0:
        log_sigma = 0.5 * s
        sigma = tl.exp(log_sigma)
        return sigma, log_sigma, tl.zeros_like(s) + 0.5, 0.5 * sigma  # not 0 * s: NaN for an infinite s
    elif PARAM == 1:
        sigma = tl.exp(s)
        return sigma, s, tl.zeros_like(s) + 1.0, sigma
    elif PARAM == 3:
        m = expm1(-0.4 * tl.abs(s))  # tanh |s/5| = -m / (2 + m): no overflow, no cancellation near 0
        u = 2.0 + m
        log_sigma = 5.0 * tl.where(s < 0.0, m / u, -m / u)
        sigma = tl.exp(log_sigma)
        dlog = 4.0 * tl.exp(-0.4 * tl.abs(s)) / (u * u)
        return sigma, log_sigma, dlog, sigma * dlog
    else:
        sigma = softplus(s)
        tail = s < -20.0
        e = tl.exp(tl.minimum(s, -20.0))
        log_sigma = tl.where(tail, s - 0.5 * e, tl.log(tl.where(tail, 1.0, sigma)))
        dsigma = sigmoid(s)
        dlog = tl.where(tail, 1.0 - 0.5 * e, dsigma / tl.where(tail, 1.0, sigma))
        return sigma, log_sigma, dlog, dsigma


@triton.jit
def expm1_minus_x(x):
    """e^x - 1 - x: a series for |x| < 0.1 (x^2 (1/2! + x/3! + ... + x^8/10!)), else expm1(x) - x."""
    small = tl.abs(x) < 0.1
    xs = tl.where(small, x, 0.0)
    acc = 2.755731922398589e-07 + 0.0 * xs
    acc = acc * xs + 2.7557319223985893e-06
    acc = acc * xs + 2.48015873015873e-05
    acc = acc * xs + 0.0001984126984126984
    acc = acc * xs + 0.001388888888888889
    acc = acc * xs + 0.008333333333333333
    acc = acc * xs + 0.041666666666666664
    acc = acc * xs + 0.16666666666666666
    acc = acc * xs + 0.5
    return tl.where(small, xs * xs * acc, expm1(tl.where(small, 1.0, x)) - x)


@triton.jit
def bernoulli_terms(l, x):
    """(x l - softplus(l), its derivative x - sigmoid(l)), without cancellation: for l > 0 the
    value is (x - 1) l - softplus(-l), so both branches read log1p(e^-|l|)."""
    e = tl.exp(-tl.abs(l))
    positive = l > 0.0
    linear = tl.where(positive, (x - 1.0) * l, x * l)
    sig = tl.where(l >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))
    return linear - log1p(e), x - sig


@triton.jit
def cb_log_normalizer_terms(l):
    """(log C(l), d log C / d l) of the continuous Bernoulli, C = l / tanh(l/2).

    |l| < 1/2: log 2 + sum_n a_n u^(2n) with u = l/2, derivative (l/2) sum_n n a_n u^(2n-2);
    else, with e = e^-|l|: log C = log(|l| (1 + e) / (1 - e)), d/dl = 1/l - sign(l) 2e / (1 - e^2).
    """
    small = tl.abs(l) < 0.5
    ls = tl.where(small, l, 0.0)
    u2 = 0.25 * ls * ls
    series = CB_A9 + 0.0 * u2
    series = series * u2 + CB_A8
    series = series * u2 + CB_A7
    series = series * u2 + CB_A6
    series = series * u2 + CB_A5
    series = series * u2 + CB_A4
    series = series * u2 + CB_A3
    series = series * u2 + CB_A2
    series = series * u2 + CB_A1
    dseries = 9.0 * CB_A9 + 0.0 * u2
    dseries = dseries * u2 + 8.0 * CB_A8
    dseries = dseries * u2 + 7.0 * CB_A7
    dseries = dseries * u2 + 6.0 * CB_A6
    dseries = dseries * u2 + 5.0 * CB_A5
    dseries = dseries * u2 + 4.0 * CB_A4
    dseries = dseries * u2 + 3.0 * CB_A3
    dseries = dseries * u2 + 2.0 * CB_A2
    dseries = dseries * u2 + CB_A1
    a = tl.abs(tl.where(small, 1.0, l))
    e = tl.exp(-a)
    one_minus_e2 = 1.0 - e * e  # e <= e^-1/2: no cancellation
    direct = tl.log(a * (1.0 + e) / (1.0 - e))
    ddirect = 1.0 / tl.where(small, 1.0, l) - tl.where(l < 0.0, -2.0, 2.0) * e / one_minus_e2
    value = tl.where(small, LOG2 + u2 * series, direct)
    deriv = tl.where(small, 0.5 * ls * dseries, ddirect)
    return value, deriv


@triton.jit
def row_offset(rows, n1, n2, s0, s1, s2):
    """Element offset of flattened row r = (i0 n1 + i1) n2 + i2 of a tensor whose batch dims
    collapse to (n0, n1, n2) with strides (s0, s1, s2); rows is int64, so the offset is too."""
    i2 = rows % n2
    rest = rows // n2
    return (rest // n1) * s0 + (rest % n1) * s1 + i2 * s2
