#include "normal_wishart.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "special.hpp"

namespace nam {

namespace {

std::string atom_name(const std::string& name, Index g) {
    return name + "[" + std::to_string(g) + "]";
}

CMapRowMat matrix_of(const double* W, Index g, Index D) { return CMapRowMat(W + g * D * D, D, D); }

void check_dof(const NWView& q) {
    for (Index g = 0; g < q.G; ++g) {
        if (!(q.nu[g] > static_cast<double>(q.D) - 1.0))
            fail("nu[" + std::to_string(g) + "] must exceed D - 1 = " + std::to_string(q.D - 1) +
                 " (Wishart degrees of freedom), got " + std::to_string(q.nu[g]));
    }
}

void check_lam(const NWView& q) {
    for (Index g = 0; g < q.G; ++g)
        if (!(q.lam[g] > 0.0))
            fail("lam[" + std::to_string(g) + "] must be positive, got " +
                 std::to_string(q.lam[g]));
}

void check_prior(const NWPrior& prior) {
    if (!(prior.lam0 > 0.0)) fail("lam0 must be positive, got " + std::to_string(prior.lam0));
    if (!(prior.nu0 > static_cast<double>(prior.D) - 1.0))
        fail("nu0 must exceed D - 1 = " + std::to_string(prior.D - 1) + ", got " +
             std::to_string(prior.nu0));
}

// sum_{d=1..D} psi((nu + 1 - d) / 2) + D log 2 + log|W|  (SPEC 4)
double elogdet_one(double logdet_W, double nu, Index D) {
    double s = 0.0;
    for (Index d = 1; d <= D; ++d) s += digamma((nu + 1.0 - static_cast<double>(d)) / 2.0);
    return s + static_cast<double>(D) * kLog2 + logdet_W;
}

// log B_W(W, nu) (SPEC 6), from log|W|.
double log_wishart_norm_one(double logdet_W, double nu, Index D) {
    const double Dd = static_cast<double>(D);
    double s = 0.0;
    for (Index d = 1; d <= D; ++d) s += lgamma((nu + 1.0 - static_cast<double>(d)) / 2.0);
    return -0.5 * nu * logdet_W - 0.5 * nu * Dd * kLog2 - 0.25 * Dd * (Dd - 1.0) * kLogPi - s;
}

// Whether atom g's W is bit for bit atom g - 1's (repeats_previous): the O(D^3) factorisations
// of the empty atoms were most of the ELBO's and the cell step's set-up on small data.
bool same_as_previous(const double* W, Index g, Index D) {
    return repeats_previous(g, {{W, D * D}});
}

// The lower triangle of the posterior's W^-1 (SPEC 5.7) from one atom's statistics (n > 0),
// into ``Winv`` (its upper triangle is left as it was: the factorisation reads the lower):
// W0^-1 + C + shrink (xbar - m0)(xbar - m0)', C = s2 - s1 xbar' the scatter about the weighted
// mean and shrink = lam0 n / (lam0 + n), each entry the mean of (i, j) and (j, i) (C is
// symmetric only to rounding).  One pass with no temporaries: at D = 50 the matrix expressions
// it replaces (five passes, four allocations) cost more than the Cholesky factorisation.
// ``xbar_c`` (the weighted mean minus the centre) and ``diff`` (xbar - m0) are scratch of D.
void posterior_Winv_lower(double n, const double* s1, const double* s2, const Vec& m0c,
                          const double* W0inv, double lam0, Index D, Vec& xbar_c, Vec& diff,
                          Mat& Winv) {
    for (Index d = 0; d < D; ++d) {
        xbar_c[d] = s1[d] / n;
        diff[d] = xbar_c[d] - m0c[d];
    }
    const double shrink = lam0 * n / (lam0 + n);
    for (Index i = 0; i < D; ++i) {
        for (Index j = 0; j <= i; ++j) {
            const double x_ij = W0inv[i * D + j] + (s2[i * D + j] - s1[i] * xbar_c[j]) +
                                shrink * diff[i] * diff[j];
            const double x_ji = W0inv[j * D + i] + (s2[j * D + i] - s1[j] * xbar_c[i]) +
                                shrink * diff[j] * diff[i];
            Winv(i, j) = 0.5 * (x_ij + x_ji);
        }
    }
}

std::vector<double> logdets(const NWView& q, const std::string& name_W) {
    std::vector<double> out(static_cast<size_t>(q.G));
    for (Index g = 0; g < q.G; ++g)
        out[g] = same_as_previous(q.W, g, q.D)
                     ? out[g - 1]
                     : logdet_from_llt(checked_llt(matrix_of(q.W, g, q.D), atom_name(name_W, g)));
    return out;
}

}  // namespace

GaussianAtoms prepare_atoms(const NWView& q, const std::string& name_W,
                            const std::vector<Index>& which) {
    check_lam(q);
    check_dof(q);
    const Index D = q.D;
    GaussianAtoms atoms;
    atoms.G = static_cast<Index>(which.size());
    atoms.D = D;
    atoms.m = q.m;
    atoms.lam = q.lam;
    atoms.nu = q.nu;
    atoms.index = which;
    atoms.U.resize(which.size());
    atoms.constant.resize(atoms.G);
    double logdet_W = 0.0;
    for (Index g = 0; g < atoms.G; ++g) {
        const Index l = which[static_cast<size_t>(g)];
        // the previous prepared atom's factorisation where its W is the same bits
        if (g > 0 && std::memcmp(q.W + l * D * D, q.W + which[static_cast<size_t>(g - 1)] * D * D,
                                 static_cast<size_t>(D * D) * sizeof(double)) == 0) {
            atoms.U[g] = atoms.U[g - 1];
        } else {
            auto llt = checked_llt(matrix_of(q.W, l, D), atom_name(name_W, l));
            atoms.U[g] = llt.matrixL();
            logdet_W = logdet_from_llt(llt);
        }
        const double elogdet = elogdet_one(logdet_W, q.nu[l], D);
        atoms.constant[g] = 0.5 * elogdet - 0.5 * static_cast<double>(D) * kLog2Pi;
    }
    return atoms;
}

GaussianAtoms prepare_atoms(const NWView& q, const std::string& name_W) {
    std::vector<Index> all(static_cast<size_t>(q.G));
    for (Index g = 0; g < q.G; ++g) all[static_cast<size_t>(g)] = g;
    return prepare_atoms(q, name_W, all);
}

void loglik_block(const GaussianAtoms& atoms, const Eigen::Ref<const RowMat>& Z,
                  Eigen::Ref<RowMat> out, RowMat& diff, RowMat& proj) {
    const Index n = Z.rows(), D = atoms.D;
    const double Dd = static_cast<double>(D);
    auto dv = diff.topRows(n);
    auto pv = proj.topRows(n);
    for (Index g = 0; g < atoms.G; ++g) {
        const Index l = atoms.index[static_cast<size_t>(g)];
        const Eigen::Map<const Eigen::RowVectorXd> mg(atoms.m + l * D, D);
        dv = Z.rowwise() - mg;
        pv.noalias() = dv * atoms.U[g];
        const double c = atoms.constant[g], trace_term = Dd / atoms.lam[l], nu = atoms.nu[l];
        for (Index i = 0; i < n; ++i)
            out(i, g) = c - 0.5 * (trace_term + nu * pv.row(i).squaredNorm());
    }
}

RowMat loglik_coefficients(const GaussianAtoms& atoms, const NWView& q, const double* centre) {
    const Index p = q.D, P = packed_size(p), F = P + p + 1;
    const double Dd = static_cast<double>(p);
    RowMat A(F, atoms.G);
    Mat Q(p, p);
    Vec mc(p);
    for (Index g = 0; g < atoms.G; ++g) {
        const Index l = atoms.index[static_cast<size_t>(g)];  // column g is the view's atom l
        const double* W = q.W + l * p * p;
        // Lower triangle, as the Cholesky factorisation that validated W reads it.
        for (Index d = 0; d < p; ++d)
            for (Index e = 0; e <= d; ++e) Q(d, e) = Q(e, d) = q.nu[l] * W[d * p + e];
        for (Index d = 0; d < p; ++d) mc[d] = q.m[l * p + d] - centre[d];
        const Vec Qmc = Q * mc;
        Index k = 0;
        for (Index d = 0; d < p; ++d) {
            A(k++, g) = -0.5 * Q(d, d);
            for (Index e = d + 1; e < p; ++e) A(k++, g) = -Q(d, e);
        }
        for (Index d = 0; d < p; ++d) A(P + d, g) = Qmc[d];
        A(P + p, g) = atoms.constant[g] - 0.5 * Dd / q.lam[l] - 0.5 * mc.dot(Qmc);
    }
    return A;
}

void unpack_stats(const Eigen::Ref<const RowMat>& S, Index D, double* n, double* s1, double* s2) {
    const Index G = S.rows(), P = packed_size(D), F = P + D + 1;
    for (Index g = 0; g < G; ++g) {
        n[g] = S(g, F - 1);
        for (Index d = 0; d < D; ++d) s1[g * D + d] = S(g, P + d);
        double* s2g = s2 + g * D * D;
        Index k = 0;
        for (Index d = 0; d < D; ++d)
            for (Index e = d; e < D; ++e) s2g[d * D + e] = s2g[e * D + d] = S(g, k++);
    }
}

void expected_logdet(const NWView& q, double* out) {
    check_dof(q);
    const auto ld = logdets(q, "W");
    for (Index g = 0; g < q.G; ++g)
        out[g] = repeats_previous(g, {{q.nu, 1}, {q.W, q.D * q.D}})
                     ? out[g - 1]
                     : elogdet_one(ld[g], q.nu[g], q.D);
}

void log_wishart_norm(const NWView& q, double* out) {
    check_dof(q);
    const auto ld = logdets(q, "W");
    for (Index g = 0; g < q.G; ++g)
        out[g] = repeats_previous(g, {{q.nu, 1}, {q.W, q.D * q.D}})
                     ? out[g - 1]
                     : log_wishart_norm_one(ld[g], q.nu[g], q.D);
}

void expected_loglik(const double* Z, Index n, const NWView& q, double* out) {
    const GaussianAtoms atoms = prepare_atoms(q, "W");
    // Blocks bound the scratch to a few hundred rows whatever n is.
    constexpr Index kRows = 512;
    RowMat diff(std::min(n, kRows), q.D), proj(std::min(n, kRows), q.D);
    for (Index start = 0; start < n; start += kRows) {
        const Index nb = std::min(kRows, n - start);
        loglik_block(atoms, CMapRowMat(Z + start * q.D, nb, q.D),
                     MapRowMat(out + start * q.G, nb, q.G), diff, proj);
    }
}

void accumulate_stats_block(const Eigen::Ref<const RowMat>& Z, const Eigen::Ref<const RowMat>& w,
                            const double* centre, double* n_out, double* s1_out, double* s2_out,
                            RowMat& Zc, RowMat& Zw, bool overwrite) {
    const Index n = Z.rows(), D = Z.cols(), G = w.cols();
    const Eigen::Map<const Eigen::RowVectorXd> c(centre, D);
    auto zc = Zc.topRows(n);
    auto zw = Zw.topRows(n);
    zc = Z.rowwise() - c;
    MapVec nv(n_out, G);
    MapRowMat s1(s1_out, G, D);
    // Every reduction is evaluated into an Eigen-owned (aligned) temporary and only then added
    // to the caller's buffer.  Evaluated straight into the caller's buffer, Eigen splits the
    // work between scalar and packet code at that buffer's first aligned element, and the two
    // round differently: the result then depended on where NumPy allocated the output, and
    // fits were not bitwise reproducible.
    const Vec n_block = w.colwise().sum().transpose();
    const RowMat s1_block = w.transpose() * zc;
    if (overwrite) {
        nv = n_block;
        s1 = s1_block;
    } else {
        nv += n_block;
        s1 += s1_block;
    }
    RowMat s2_block(D, D);
    for (Index g = 0; g < G; ++g) {
        // s2_g = Zc' diag(w_g) Zc as one product per block (a GEMM rather than n rank-1 updates).
        zw = zc.array().colwise() * w.col(g).array();
        s2_block.noalias() = zc.transpose() * zw;
        MapRowMat s2(s2_out + g * D * D, D, D);
        if (overwrite)
            s2 = s2_block;
        else
            s2 += s2_block;
    }
}

void symmetrise_stats(double* s2, Index G, Index D) {
    // The product Zc' (w Zc) is symmetric in exact arithmetic but not bit for bit; mirror the lower
    // triangle so downstream Cholesky factorisations see an exactly symmetric matrix.
    for (Index g = 0; g < G; ++g) {
        double* S = s2 + g * D * D;
        for (Index d = 0; d < D; ++d)
            for (Index e = d + 1; e < D; ++e) S[d * D + e] = S[e * D + d];
    }
}

void weighted_stats(const double* Z, Index n, Index D, const double* w, Index G,
                    const double* centre, double* n_out, double* s1_out, double* s2_out) {
    std::fill(n_out, n_out + G, 0.0);
    std::fill(s1_out, s1_out + G * D, 0.0);
    std::fill(s2_out, s2_out + G * D * D, 0.0);
    constexpr Index kRows = 512;
    RowMat Zc(std::min(n, kRows), D), Zw(std::min(n, kRows), D);
    for (Index start = 0; start < n; start += kRows) {
        const Index nb = std::min(kRows, n - start);
        accumulate_stats_block(CMapRowMat(Z + start * D, nb, D), CMapRowMat(w + start * G, nb, G),
                               centre, n_out, s1_out, s2_out, Zc, Zw, false);
    }
    symmetrise_stats(s2_out, G, D);
}

void nw_posterior(const double* n, const double* s1, const double* s2, Index G,
                  const double* centre, const NWPrior& prior, double* m, double* lam, double* W,
                  double* nu) {
    check_prior(prior);
    const Index D = prior.D;
    const CMapRowMat W0inv(prior.W0inv, D, D);
    const Cholesky W0inv_llt = checked_llt(W0inv, "W0inv");
    Mat W0;  // the prior's W, formed when the first empty atom needs it
    const CMapVec m0(prior.m0, D), c(centre, D);
    const Vec m0c = m0 - c;
    Vec xbar_c(D), diff(D);
    Mat Winv(D, D);
    for (Index g = 0; g < G; ++g) {
        MapVec mg(m + g * D, D);
        MapRowMat Wg(W + g * D * D, D, D);
        if (repeats_previous(g, {{n, 1}, {s1, D}, {s2, D * D}})) {
            // the same statistics: the same posterior (the empty atoms after a merge)
            mg = CMapVec(m + (g - 1) * D, D);
            lam[g] = lam[g - 1];
            Wg = CMapRowMat(W + (g - 1) * D * D, D, D);
            nu[g] = nu[g - 1];
            continue;
        }
        if (n[g] <= 0.0) {
            // An empty cluster gets exactly the prior; never divide by n = 0 (SPEC 5.7).  (A NaN
            // count falls through and is refused by the Cholesky check below.)
            if (W0.size() == 0) W0 = spd_inverse(W0inv_llt);
            mg = m0;
            lam[g] = prior.lam0;
            Wg = W0;
            nu[g] = prior.nu0;
            continue;
        }
        posterior_Winv_lower(n[g], s1 + g * D, s2 + g * D * D, m0c, prior.W0inv, prior.lam0,
                             D, xbar_c, diff, Winv);
        cholesky_in_place(Winv, "posterior W^-1 of atom " + std::to_string(g));
        lam[g] = prior.lam0 + n[g];
        mg = c + (prior.lam0 * m0c + CMapVec(s1 + g * D, D)) / lam[g];
        nu[g] = prior.nu0 + n[g];
        Wg = spd_inverse(Winv);
    }
}

double nw_loglik_from_stats(const double* n, const double* s1, const double* s2,
                            const double* centre, const NWView& q) {
    check_lam(q);
    check_dof(q);
    const Index D = q.D;
    const double Dd = static_cast<double>(D);
    const auto ld = logdets(q, "W");
    const CMapVec c(centre, D);
    double total = 0.0;
    double elogdet = 0.0, quad = 0.0;  // atom g's, or the previous atom's where g repeats it
    for (Index g = 0; g < q.G; ++g) {
        if (!repeats_previous(g, {{n, 1}, {q.nu, 1}, {q.m, D}, {s1, D}, {q.W, D * D},
                                  {s2, D * D}})) {
            elogdet = elogdet_one(ld[g], q.nu[g], D);
            const CMapRowMat Wg = matrix_of(q.W, g, D);
            const CMapRowMat s2g(s2 + g * D * D, D, D);
            const CMapVec s1g(s1 + g * D, D);
            const Vec mc = CMapVec(q.m + g * D, D) - c;
            const Vec Wmc = Wg * mc;
            // sum_i w_i (z_i - m)' W (z_i - m) = tr(s2 W) - 2 s1' W mc + n mc' W mc, mc = m - c
            quad = (s2g.array() * Wg.array()).sum() - 2.0 * s1g.dot(Wmc) + n[g] * mc.dot(Wmc);
        }
        total += 0.5 * (n[g] * (elogdet - Dd / q.lam[g] - Dd * kLog2Pi) - q.nu[g] * quad);
    }
    return total;
}

double nw_prior_term(const NWView& q, const NWPrior& prior) {
    check_prior(prior);
    check_lam(q);
    check_dof(q);
    const Index D = q.D;
    const double Dd = static_cast<double>(D);
    const CMapRowMat W0inv(prior.W0inv, D, D);
    // log|W0| = -log|W0^-1|: no need to form W0.
    const double log_b0 =
        log_wishart_norm_one(-logdet_from_llt(checked_llt(W0inv, "W0inv")), prior.nu0, D);
    const auto ld = logdets(q, "W");
    const CMapVec m0(prior.m0, D);
    double total = 0.0;
    // atom g's figures, or the previous atom's where g repeats it
    double elogdet = 0.0, quad = 0.0, trace = 0.0;
    for (Index g = 0; g < q.G; ++g) {
        if (!repeats_previous(g, {{q.nu, 1}, {q.m, D}, {q.W, D * D}})) {
            elogdet = elogdet_one(ld[g], q.nu[g], D);
            const CMapRowMat Wg = matrix_of(q.W, g, D);
            const Vec dm = CMapVec(q.m + g * D, D) - m0;
            quad = dm.dot(Wg * dm);
            trace = (W0inv.array() * Wg.array()).sum();
        }
        total += 0.5 * (Dd * std::log(prior.lam0 / (2.0 * kPi)) + elogdet -
                        Dd * prior.lam0 / q.lam[g] - prior.lam0 * q.nu[g] * quad) +
                 log_b0 + 0.5 * (prior.nu0 - Dd - 1.0) * elogdet - 0.5 * q.nu[g] * trace;
    }
    return total;
}

double nw_entropy(const NWView& q) {
    check_lam(q);
    check_dof(q);
    const Index D = q.D;
    const double Dd = static_cast<double>(D);
    const auto ld = logdets(q, "W");
    double total = 0.0;
    double elogdet = 0.0, log_norm = 0.0;  // atom g's, or the previous atom's where g repeats it
    for (Index g = 0; g < q.G; ++g) {
        if (!repeats_previous(g, {{q.nu, 1}, {q.W, D * D}})) {
            elogdet = elogdet_one(ld[g], q.nu[g], D);
            log_norm = log_wishart_norm_one(ld[g], q.nu[g], D);
        }
        const double h_wishart = -log_norm - 0.5 * (q.nu[g] - Dd - 1.0) * elogdet +
                                 0.5 * q.nu[g] * Dd;
        total += -0.5 * elogdet - 0.5 * Dd * std::log(q.lam[g] / (2.0 * kPi)) + 0.5 * Dd +
                 h_wishart;
    }
    return total;
}

void nw_scores(const double* n, const double* s1, const double* s2, Index G, const double* centre,
               const NWPrior& prior, double* out) {
    // At the optimal q(theta) = the posterior, loglik + prior term + entropy is the log evidence
    // of the atom's weighted cells (the likelihood is exponential-family in theta, linear in the
    // statistics): -(n D / 2) log 2 pi + log Z(posterior) - log Z(prior), Z the Normal-Wishart
    // normaliser, log Z(lam, W, nu) = -log B_W(W, nu) + (D / 2) log(2 pi / lam).  One Cholesky
    // of the posterior W^-1 per atom, where the three terms took some ten O(D^3) factorisations
    // and inverses (the merges score every pair of atoms: at D = 50 that was most of a small
    // fit).  Equal to the three terms to rounding (tests: against the reference's composition).
    check_prior(prior);
    const Index D = prior.D;
    const double Dd = static_cast<double>(D);
    const CMapRowMat W0inv(prior.W0inv, D, D);
    const double log_b0 =
        log_wishart_norm_one(-logdet_from_llt(checked_llt(W0inv, "W0inv")), prior.nu0, D);
    const CMapVec m0(prior.m0, D), c(centre, D);
    const Vec m0c = m0 - c;
    Vec xbar_c(D), diff(D);
    Mat Winv(D, D);
    for (Index g = 0; g < G; ++g) {
        if (n[g] <= 0.0) {      // the posterior is the prior (NaN falls through to the check)
            out[g] = 0.0;
            continue;
        }
        if (repeats_previous(g, {{n, 1}, {s1, D}, {s2, D * D}})) {
            out[g] = out[g - 1];
            continue;
        }
        posterior_Winv_lower(n[g], s1 + g * D, s2 + g * D * D, m0c, prior.W0inv, prior.lam0,
                             D, xbar_c, diff, Winv);
        cholesky_in_place(Winv, "posterior W^-1 of atom " + std::to_string(g));
        const double logdet_W = -logdet_of_factor(Winv);
        const double lam = prior.lam0 + n[g], nu = prior.nu0 + n[g];
        out[g] = -0.5 * n[g] * Dd * kLog2Pi - log_wishart_norm_one(logdet_W, nu, D) + log_b0 +
                 0.5 * Dd * std::log(prior.lam0 / lam);
    }
}

}  // namespace nam
