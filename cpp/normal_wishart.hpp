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
    Index G = 0;
    Index D = 0;
    const double* m = nullptr;
    const double* lam = nullptr;
    const double* nu = nullptr;
    std::vector<Mat> U;
    Vec constant;
};

GaussianAtoms prepare_atoms(const NWView& q, const std::string& name_W);

// ell_g(z) for the rows of the block Z (n x D) into out (n x G).  `diff` and `proj` are caller
// scratch of at least n x D, so the hot loop never allocates.
void loglik_block(const GaussianAtoms& atoms, const Eigen::Ref<const RowMat>& Z,
                  Eigen::Ref<RowMat> out, RowMat& diff, RowMat& proj);

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

}  // namespace nam
