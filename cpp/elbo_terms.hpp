// Scalar ELBO terms that belong to no larger concept: Gamma factors of the concentrations and the
// entropy of categorical factors (SPEC 4 and 6).
#pragma once

#include <cmath>
#include <limits>
#include <utility>

#include "common.hpp"
#include "special.hpp"

namespace nam {

// (E x, E log x) for x ~ Gamma(shape, rate) (shape-rate parametrisation, SPEC 2).
inline std::pair<double, double> gamma_expectations(double shape, double rate) {
    return {shape / rate, digamma(shape) - std::log(rate)};
}

// E_q log Gamma(x | prior_shape, prior_rate) for q = Gamma(shape, rate).
inline double gamma_prior_term(double prior_shape, double prior_rate, double shape, double rate) {
    const auto [e, elog] = gamma_expectations(shape, rate);
    return prior_shape * std::log(prior_rate) - lgamma(prior_shape) + (prior_shape - 1.0) * elog -
           prior_rate * e;
}

// Entropy of Gamma(shape, rate) = -E log q.
inline double gamma_entropy(double shape, double rate) {
    const double elog = gamma_expectations(shape, rate).second;
    return -(shape * std::log(rate) - lgamma(shape) + (shape - 1.0) * elog - shape);
}

// -r log r with 0 log 0 = 0 (and -inf for negative r, like scipy.special.entr).
inline double entr(double r) {
    if (r > 0.0) return -r * std::log(r);
    if (r == 0.0) return 0.0;
    if (std::isnan(r)) return r;
    return -std::numeric_limits<double>::infinity();
}

inline double categorical_entropy(const double* r, Index n) {
    double s = 0.0;
    for (Index i = 0; i < n; ++i) s += entr(r[i]);
    return s;
}

}  // namespace nam
