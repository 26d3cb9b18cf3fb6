// Normal-Wishart factors (SPEC 4, 5.7, 6): expectations, posteriors from weighted statistics,
// and their ELBO terms.
//
// Layout (shared with the NumPy reference): G atoms in dimension D as m (G, D), lam (G,),
// W (G, D, D), nu (G,), all row-major, with E[Lambda] = nu W.  A prior is (m0 (D,), lam0,
// W0inv (D, D), nu0).  Weighted statistics are kept about a fixed centre c:
// n_g = sum_i w_ig, s1_g = sum_i w_ig (z_i - c), s2_g = sum_i w_ig (z_i - c)(z_i - c)'.
//
// Every function validates the values it needs (lam > 0, nu > D - 1, W positive definite) and
// throws std::invalid_argument naming the argument and the atom; shapes are checked by the caller.
#pragma once

#include <string>
#include <vector>

#include "common.hpp"

namespace nam {

// Read-only view of G Normal-Wishart factors in dimension D.
struct NWView {
    const double* m;
    const double* lam;
    const double* W;
    const double* nu;
    Index G;
    Index D;
};

struct NWPrior {
    const double* m0;
    double lam0;
    const double* W0inv;
    double nu0;
    Index D;
};

// What the Gaussian log-likelihood ell_g(z) needs, prepared once per call: the lower Cholesky
// factor U_g of W_g (W = U U', so (z - m)' W (z - m) = |(z - m)' U|^2 and a block of cells is one
// matrix product) and the constant 1/2 E log|Lambda_g| - D/2 log 2 pi.
struct GaussianAtoms {
    Index G = 0;                // atoms prepared
    Index D = 0;
    const double* m = nullptr;  // the view's arrays: prepared atom g is the view's atom index[g]
    const double* lam = nullptr;
    const double* nu = nullptr;
    std::vector<Index> index;
    std::vector<Mat> U;
    Vec constant;
};

GaussianAtoms prepare_atoms(const NWView& q, const std::string& name_W);
// The view's atoms ``which`` only (every atom's lam and nu are still checked): the cell step
// prepares one atom of each kind where the others repeat it bit for bit.
GaussianAtoms prepare_atoms(const NWView& q, const std::string& name_W,
                            const std::vector<Index>& which);

// ell_g(z) for the rows of the block Z (n x D) into out (n x G).  `diff` and `proj` are caller
// scratch of at least n x D, so the hot loop never allocates.
void loglik_block(const GaussianAtoms& atoms, const Eigen::Ref<const RowMat>& Z,
                  Eigen::Ref<RowMat> out, RowMat& diff, RowMat& proj);

// The packed feature form of a Gaussian log-likelihood, shared by the cell step and the group
// ascent.  One feature row per point, phi(z) = [packed upper triangle of zc zc' | zc | 1] with
// zc = z - centre (F = D(D+1)/2 + D + 1 columns).  Then
//   * ell (n x G) = Phi (n x F) * A (F x G), because the expected log-likelihood
//     ell_g(z) = c_g - 1/2 (zc - mc_g)' Q_g (zc - mc_g), Q_g = nu_g W_g, mc_g = m_g - centre,
//     is linear in phi(z) (A holds -Q/2 on the diagonal, -Q off it, Q mc and the constant);
//   * the weighted statistics (G x F) = w' (G x n) * Phi hold n, s1 and the packed s2 at once.
// Using the packed symmetric outer product halves the flops of the dense formulation and turns
// everything into two well-shaped products.  Expanding the quadratic form about the data centre
// loses ~eps |zc|^2 |Q| in absolute terms, far below anything that moves a responsibility.
inline Index packed_size(Index D) { return D * (D + 1) / 2; }

// phi(z) of one point into row (F doubles).
inline void packed_features(const double* z, const double* centre, Index D, double* row) {
    const Index P = packed_size(D);
    double* zc = row + P;
    for (Index d = 0; d < D; ++d) zc[d] = z[d] - centre[d];
    Index k = 0;
    for (Index d = 0; d < D; ++d) {
        const double zd = zc[d];
        for (Index e = d; e < D; ++e) row[k++] = zd * zc[e];
    }
    row[P + D] = 1.0;
}

// A (F x G), one column per prepared atom (prepared by prepare_atoms from the same view).
RowMat loglik_coefficients(const GaussianAtoms& atoms, const NWView& q, const double* centre);

// Unpacks statistics in the packed feature form (G x F) into n (G), s1 (G x D) and s2 (G x D x D),
// s2 mirrored so that it is exactly symmetric.
void unpack_stats(const Eigen::Ref<const RowMat>& S, Index D, double* n, double* s1, double* s2);

void expected_logdet(const NWView& q, double* out);
void log_wishart_norm(const NWView& q, double* out);
void expected_loglik(const double* Z, Index n, const NWView& q, double* out);

// Adds (or, with overwrite, writes) the statistics of one block with weights w (n x G) about the
// centre into n_out (G), s1_out (G x D) and s2_out (G x D x D).  s2 is symmetric only up to
// rounding until symmetrise_stats mirrors its lower triangle.  `Zc` and `Zw` are caller scratch of
// at least n x D.
void accumulate_stats_block(const Eigen::Ref<const RowMat>& Z, const Eigen::Ref<const RowMat>& w,
                            const double* centre, double* n_out, double* s1_out, double* s2_out,
                            RowMat& Zc, RowMat& Zw, bool overwrite);
void symmetrise_stats(double* s2, Index G, Index D);
void weighted_stats(const double* Z, Index n, Index D, const double* w, Index G,
                    const double* centre, double* n_out, double* s1_out, double* s2_out);

void nw_posterior(const double* n, const double* s1, const double* s2, Index G,
                  const double* centre, const NWPrior& prior, double* m, double* lam, double* W,
                  double* nu);
double nw_loglik_from_stats(const double* n, const double* s1, const double* s2,
                            const double* centre, const NWView& q);
double nw_prior_term(const NWView& q, const NWPrior& prior);
double nw_entropy(const NWView& q);
// Per atom g: the NW part of the ELBO at the atom's optimal factor given its statistics,
// loglik + prior term + entropy (the merge moves' score of a proposed atom), into out (G).
void nw_scores(const double* n, const double* s1, const double* s2, Index G, const double* centre,
               const NWPrior& prior, double* out);

}  // namespace nam
