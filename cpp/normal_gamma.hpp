// Diagonal cell atoms (docs/diag.md): per dimension a Normal-Gamma factor, stored as a
// one-dimensional Normal-Wishart, so every formula is the Normal-Wishart one at D = 1 summed over
// the dimensions.  Layout (shared with the NumPy reference): G atoms in dimension D as m (G, D),
// lam (G,), W (G, D) and nu (G,), with tau_gd ~ Gamma(nu_g / 2, rate 1 / (2 W_gd)), so
// E[tau_gd] = nu_g W_gd, and mu_gd | tau_gd ~ N(m_gd, (lam_g tau_gd)^-1).  A prior is
// (m0 (D,), lam0, W0inv (D,), nu0).  Weighted statistics keep the diagonal of s2:
// n_g = sum_i w_ig, s1_gd = sum_i w_ig (z_id - c_d), s2_gd = sum_i w_ig (z_id - c_d)^2.
//
// Every function validates the values it needs (lam > 0, nu > 0, W > 0 and finite) and throws
// std::invalid_argument naming the argument and the atom; shapes are checked by the caller.
#pragma once

#include <vector>

#include "common.hpp"

namespace nam {

struct DiagView {
    const double* m;
    const double* lam;
    const double* W;   // (G, D)
    const double* nu;
    Index G;
    Index D;
};

struct DiagPrior {
    const double* m0;
    double lam0;
    const double* W0inv;  // (D,)
    double nu0;
    Index D;
};

// The feature form of the diagonal log-likelihood, the cell step's (see normal_wishart.hpp for
// the full one): phi(z) = [zc_1^2 .. zc_D^2 | zc | 1], F = 2 D + 1, zc = z - centre.
inline Index diag_feature_size(Index D) { return 2 * D + 1; }

inline void diag_features(const double* z, const double* centre, Index D, double* row) {
    for (Index d = 0; d < D; ++d) {
        const double zc = z[d] - centre[d];
        row[d] = zc * zc;
        row[D + d] = zc;
    }
    row[2 * D] = 1.0;
}

// A (F x G): ell_g(z) = phi(z) A[:, g], with -Q/2 on the squares, Q mc on the linear terms and
// the constant 1/2 sum_d (E log tau_d - log 2 pi - 1/lam - Q_d mc_d^2), Q = nu W, mc = m - c.
// Validates the atoms.  One column per atom of ``which`` (the cell step's one atom of each kind).
RowMat diag_coefficients(const DiagView& q, const double* centre, const std::vector<Index>& which);

// Unpacks statistics in the feature form (G x F) into n (G), s1 (G x D), s2 (G x D).
void unpack_diag_stats(const Eigen::Ref<const RowMat>& S, Index D, double* n, double* s1,
                       double* s2);

void diag_expected_loglik(const double* Z, Index n, const DiagView& q, double* out);
void diag_weighted_stats(const double* Z, Index n, Index D, const double* w, Index G,
                         const double* centre, double* n_out, double* s1_out, double* s2_out);
void diag_posterior(const double* n, const double* s1, const double* s2, Index G,
                    const double* centre, const DiagPrior& prior, double* m, double* lam,
                    double* W, double* nu);
double diag_loglik_from_stats(const double* n, const double* s1, const double* s2,
                              const double* centre, const DiagView& q);
double diag_prior_term(const DiagView& q, const DiagPrior& prior);
double diag_entropy(const DiagView& q);
void diag_scores(const double* n, const double* s1, const double* s2, Index G,
                 const double* centre, const DiagPrior& prior, double* out);

}  // namespace nam
