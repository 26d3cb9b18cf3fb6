// Stick-breaking weights and their concentrations (SPEC 4, 5.3-5.6 and their ELBO terms).
//
// Layout (shared with the NumPy reference): the G - 1 free sticks of C independent stick-breaking
// processes are a row-major (G - 1, C) array; column c is process c.  The last stick is fixed at 1
// and has no parameters, no q factor and no ELBO term (SPEC 3), so G = 1 means zero free sticks.
#pragma once

#include <limits>
#include <utility>

#include "common.hpp"
#include "special.hpp"

namespace nam {

// Most sticks of a truncated process are empty: every empty stick of a column (and of every empty
// column) has the same Beta(1, concentration) factor, often hundreds of them (K = L = 30 by
// default, a few atoms occupied).  The loops below therefore reuse the special functions of the
// previous stick when its (a, b) is the same; the results are bitwise those of computing each
// stick afresh (same inputs, same function), at a fraction of the cost (digamma and lgamma were
// most of the group ascent's time).
struct StickElogs {
    double a = std::numeric_limits<double>::quiet_NaN();  // NaN: never equal, so the first computes
    double b = std::numeric_limits<double>::quiet_NaN();
    double elog_v = 0.0, elog_one_minus_v = 0.0;           // g(a, b), g(b, a)
    void at(double ai, double bi) {
        if (ai == a && bi == b) return;
        a = ai;
        b = bi;
        const double psi_ab = digamma(ai + bi);
        elog_v = digamma(ai) - psi_ab;
        elog_one_minus_v = digamma(bi) - psi_ab;
    }
};

// E log w_gc = [g < G-1] g(a_gc, b_gc) + sum_{t < g} g(b_tc, a_tc); out is (G, C), a and b are
// (G - 1, C).  The running sum over t is kept per column so each process costs O(G).
inline void expected_log_stick_weights(const double* a, const double* b, Index n_free, Index C,
                                       double* out) {
    StickElogs e;
    for (Index c = 0; c < C; ++c) {
        double tail = 0.0;  // sum_{t < g} E log(1 - v_t)
        for (Index g = 0; g < n_free; ++g) {
            e.at(a[g * C + c], b[g * C + c]);
            out[g * C + c] = e.elog_v + tail;
            tail += e.elog_one_minus_v;
        }
        out[n_free * C + c] = tail;  // last stick fixed at 1: E log v_G = 0
    }
}

// a_g = 1 + counts_g, b_g = concentration + sum_{t > g} counts_t for g < G; counts is (G, C), a and
// b are (G - 1, C).  The tail sum runs from the last row upwards, like a reversed cumulative sum.
inline void update_sticks(const double* counts, Index G, Index C, double concentration, double* a,
                          double* b) {
    for (Index c = 0; c < C; ++c) {
        double tail = 0.0;  // sum_{t > g} counts_t
        for (Index g = G - 1; g >= 1; --g) {
            tail = (g == G - 1) ? counts[g * C + c] : tail + counts[g * C + c];
            a[(g - 1) * C + c] = 1.0 + counts[(g - 1) * C + c];
            b[(g - 1) * C + c] = concentration + tail;
        }
    }
}

// sum over all free sticks of g(b, a) = E log(1 - v); it appears in both the concentration update
// and the stick prior term.
inline double sum_elog_one_minus(const double* a, const double* b, Index n) {
    double s = 0.0;
    StickElogs e;
    for (Index i = 0; i < n; ++i) {
        e.at(a[i], b[i]);
        s += e.elog_one_minus_v;
    }
    return s;
}

// Gamma posterior (shape, rate) of a DP concentration: shape = prior_shape + #sticks,
// rate = prior_rate - sum g(b, a) (SPEC 5.5-5.6).
inline std::pair<double, double> update_concentration(double prior_shape, double prior_rate,
                                                      const double* a, const double* b, Index n) {
    return {prior_shape + static_cast<double>(n), prior_rate - sum_elog_one_minus(a, b, n)};
}

// E log p(sticks | concentration) = n E log conc + (E conc - 1) sum g(b, a).
inline double stick_prior_term(const double* a, const double* b, Index n, double e_conc,
                               double elog_conc) {
    return static_cast<double>(n) * elog_conc + (e_conc - 1.0) * sum_elog_one_minus(a, b, n);
}

// Sum of Beta(a, b) entropies: log B(a, b) - (a - 1) g(a, b) - (b - 1) g(b, a).
inline double beta_entropy(const double* a, const double* b, Index n) {
    double s = 0.0;
    StickElogs e;
    double term = 0.0;   // the entropy of the previous stick, reused while (a, b) repeats
    for (Index i = 0; i < n; ++i) {
        const double ai = a[i], bi = b[i];
        if (!(ai == e.a && bi == e.b)) {
            e.at(ai, bi);
            term = betaln(ai, bi) - (ai - 1.0) * e.elog_v - (bi - 1.0) * e.elog_one_minus_v;
        }
        s += term;
    }
    return s;
}

}  // namespace nam
