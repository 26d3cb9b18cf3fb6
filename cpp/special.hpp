// Special functions in double precision (SPEC 7): digamma, a thread-safe lgamma, and log Beta.
//
// The C++ standard library has lgamma but no digamma, so digamma is written here:
//   * x >= 10: the asymptotic (Stirling) series, truncated where the next term is < 1e-17 of psi;
//   * 0 < x < 10: the recurrence psi(x) = psi(x + n) - sum_{i<n} 1/(x + i) up to x + n >= 10;
//   * |x - x0| < 0.25 around the positive root x0 = 1.46163...: a Taylor series about x0, because
//     the recurrence ends in a cancellation there and would lose relative accuracy as psi -> 0;
//   * x < 0: the reflection psi(x) = psi(1 - x) - pi / tan(pi x), with the tangent's argument
//     reduced exactly to (-1/2, 1/2] first.
// Poles follow scipy.special.digamma: psi(+0) = -inf, psi(-0) = +inf, negative integers -> NaN.
#pragma once

#include <cmath>
#include <limits>

#include "common.hpp"

namespace nam {

// Positive root of psi as a double-double (hi + lo), so that h = x - x0 is exact to ~1e-32 near it.
constexpr double kDigammaRootHi = 1.4616321449683622;
constexpr double kDigammaRootLo = 9.549995429965697e-17;

// Taylor coefficients of psi about its root: c_k = psi^(k)(x0) / k! = (-1)^(k+1) zeta(k+1, x0).
// Computed for this package with mpmath at 50 digits:
//   x0 = findroot(digamma, 1.46); [(-1)**(k+1) * zeta(k+1, x0) for k in 1..25]
constexpr double kDigammaRootSeries[25] = {
    9.6767224544762117043e-1,  -4.4276316898359210609e-1, 2.5849976095565101062e-1,
    -1.639427054424065275e-1,  1.0782405069126236576e-1,  -7.2199561256454710926e-2,
    4.8804288164143107225e-2,  -3.3161126474847359292e-2, 2.259764823221810466e-2,
    -1.5424765904948959139e-2, 1.0538791616612175388e-2,  -7.204534386356868241e-3,
    4.9267813957298534464e-3,  -3.3698016554393280828e-3, 2.3051263267349278369e-3,
    -1.5769367714301972593e-3, 1.0788252019162965807e-3,  -7.3807093899600512957e-4,
    5.0495326583460203518e-4,  -3.4546802510630769956e-4, 2.3635601564027052792e-4,
    -1.6170622091974803449e-4, 1.1063372768747410904e-4,  -7.5691795821950659192e-5,
    5.178575795222080869e-5,
};

// psi(x) for x >= 10: log x - 1/(2x) - sum_k B_2k / (2k x^2k), k = 1..8.  At x = 10 the first
// omitted term (k = 9) is ~ 1.6e-19, far below double rounding of psi(10) = 2.25.
inline double digamma_asymptotic(double x) {
    const double r = 1.0 / (x * x);
    // Horner in r of B_2k / (2k): 1/12, -1/120, 1/252, -1/240, 1/132, -691/32760, 1/12, -3617/8160
    double poly = -3617.0 / 8160.0;
    poly = poly * r + 1.0 / 12.0;
    poly = poly * r - 691.0 / 32760.0;
    poly = poly * r + 1.0 / 132.0;
    poly = poly * r - 1.0 / 240.0;
    poly = poly * r + 1.0 / 252.0;
    poly = poly * r - 1.0 / 120.0;
    poly = poly * r + 1.0 / 12.0;
    return std::log(x) - 0.5 / x - poly * r;
}

inline double digamma_positive(double x) {
    if (x >= 10.0) return digamma_asymptotic(x);
    const double h = (x - kDigammaRootHi) - kDigammaRootLo;  // x - hi is exact (Sterbenz) here
    if (std::fabs(h) < 0.25) {
        double s = 0.0;
        for (int k = 24; k >= 0; --k) s = s * h + kDigammaRootSeries[k];
        return s * h;
    }
    // Shift up to the asymptotic range, then subtract the reciprocals smallest-first.
    int n = static_cast<int>(std::ceil(10.0 - x));
    double result = digamma_asymptotic(x + n);
    for (int i = n - 1; i >= 0; --i) result -= 1.0 / (x + i);
    return result;
}

inline double digamma(double x) {
    if (std::isnan(x)) return x;
    if (x > 0.0) {
        if (std::isinf(x)) return x;
        return digamma_positive(x);
    }
    if (x == 0.0) return std::signbit(x) ? std::numeric_limits<double>::infinity()
                                         : -std::numeric_limits<double>::infinity();
    if (std::isinf(x)) return std::numeric_limits<double>::quiet_NaN();
    const double nearest = std::nearbyint(x);
    if (x == nearest) return std::numeric_limits<double>::quiet_NaN();  // pole
    // tan(pi x) has period 1; r = x - nearest is exact, so the reduction adds no rounding.
    const double r = x - nearest;
    return digamma_positive(1.0 - x) - kPi / std::tan(kPi * r);
}

// lgamma without the global `signgam` write of std::lgamma, so it is safe in parallel code and
// with the GIL released; falls back to std::lgamma where lgamma_r does not exist.
inline double lgamma(double x) {
#ifdef NESTEDATOMS_HAVE_LGAMMA_R
    int sign = 0;
    return ::lgamma_r(x, &sign);
#else
    return std::lgamma(x);
#endif
}

// omega(x) = lgamma(x) - [(x - 1/2) log x - x + log(2 pi)/2], for x >= 10 (Stirling's correction
// series; the first omitted term is < 3e-17 at x = 10).
inline double stirling_correction(double x) {
    const double r = 1.0 / (x * x);
    double poly = 1.0 / 156.0;
    poly = poly * r - 691.0 / 360360.0;
    poly = poly * r + 1.0 / 1188.0;
    poly = poly * r - 1.0 / 1680.0;
    poly = poly * r + 1.0 / 1260.0;
    poly = poly * r - 1.0 / 360.0;
    poly = poly * r + 1.0 / 12.0;
    return poly / x;
}

// log B(a, b) = lgamma(a) + lgamma(b) - lgamma(a + b), for a, b > 0.  Stick parameters reach the
// number of cells (1e5 and more); there the three lgammas are ~1e6 and their difference would keep
// only ~10 significant digits, so large arguments go through Stirling's formula with the large
// parts combined analytically (log1p) before any cancellation can happen.
inline double betaln(double a, double b) {
    if (!(a > 0.0) || !(b > 0.0)) {
        if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<double>::quiet_NaN();
        return lgamma(a) + lgamma(b) - lgamma(a + b);  // outside the domain of the ELBO
    }
    if (a > b) std::swap(a, b);  // a <= b
    if (b < 10.0) return lgamma(a) + lgamma(b) - lgamma(a + b);
    const double s = a + b;
    if (a < 10.0) {
        // lgamma(b) - lgamma(a + b) by Stirling: -(b - 1/2) log1p(a / b) - a log(a + b) + a + ...
        return lgamma(a) - (b - 0.5) * std::log1p(a / b) - a * std::log(s) + a +
               (stirling_correction(b) - stirling_correction(s));
    }
    // Both large: (a - 1/2) log(a / s) - (b - 1/2) log1p(a / b) - log(s)/2 + log(2 pi)/2 + omegas.
    return (a - 0.5) * std::log(a / s) - (b - 0.5) * std::log1p(a / b) - 0.5 * std::log(s) +
           0.5 * kLog2Pi +
           (stirling_correction(a) + stirling_correction(b) - stirling_correction(s));
}

// g(a, b) = psi(a) - psi(a + b) = E log v for v ~ Beta(a, b).
inline double beta_elog(double a, double b) { return digamma(a) - digamma(a + b); }

}  // namespace nam
