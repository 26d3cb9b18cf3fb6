#include "normal_gamma.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "special.hpp"

namespace nam {

namespace {

void check_atoms(const DiagView& q) {
    for (Index g = 0; g < q.G; ++g) {
        if (!(q.lam[g] > 0.0))
            fail("lam[" + std::to_string(g) + "] must be positive, got " +
                 std::to_string(q.lam[g]));
        if (!(q.nu[g] > 0.0) || !std::isfinite(q.nu[g]))
            fail("nu[" + std::to_string(g) + "] must be positive (Gamma shape nu / 2), got " +
                 std::to_string(q.nu[g]));
        for (Index d = 0; d < q.D; ++d) {
            const double w = q.W[g * q.D + d];
            if (!(w > 0.0) || !std::isfinite(w))
                fail("W[" + std::to_string(g) + ", " + std::to_string(d) +
                     "] must be finite and positive, got " + std::to_string(w));
        }
    }
}

void check_prior(const DiagPrior& p) {
    if (!(p.lam0 > 0.0)) fail("lam0 must be positive, got " + std::to_string(p.lam0));
    if (!(p.nu0 > 0.0)) fail("nu0 must be positive, got " + std::to_string(p.nu0));
    for (Index d = 0; d < p.D; ++d)
        if (!(p.W0inv[d] > 0.0) || !std::isfinite(p.W0inv[d]))
            fail("W0inv[" + std::to_string(d) + "] must be finite and positive, got " +
                 std::to_string(p.W0inv[d]));
}

// E log tau = psi(nu / 2) + log 2 + log W
inline double elog_tau(double psi_half_nu, double W) { return psi_half_nu + kLog2 + std::log(W); }

// log B_W(W, nu) at D = 1: -(nu / 2) log(2 W) - lgamma(nu / 2)
inline double log_gamma_norm(double W, double nu) {
    return -0.5 * nu * std::log(2.0 * W) - lgamma(0.5 * nu);
}

}  // namespace

RowMat diag_coefficients(const DiagView& q, const double* centre,
                         const std::vector<Index>& which) {
    check_atoms(q);
    const Index D = q.D, G = static_cast<Index>(which.size());
    RowMat A(2 * D + 1, G);
    for (Index g = 0; g < G; ++g) {
        const Index l = which[static_cast<size_t>(g)];  // column g is atom l
        const double psi = digamma(0.5 * q.nu[l]);
        double constant = 0.0;
        for (Index d = 0; d < D; ++d) {
            const double W = q.W[l * D + d];
            const double Q = q.nu[l] * W;
            const double mc = q.m[l * D + d] - centre[d];
            A(d, g) = -0.5 * Q;
            A(D + d, g) = Q * mc;
            constant += elog_tau(psi, W) - kLog2Pi - 1.0 / q.lam[l] - Q * mc * mc;
        }
        A(2 * D, g) = 0.5 * constant;
    }
    return A;
}

void unpack_diag_stats(const Eigen::Ref<const RowMat>& S, Index D, double* n, double* s1,
                       double* s2) {
    for (Index g = 0; g < S.rows(); ++g) {
        n[g] = S(g, 2 * D);
        for (Index d = 0; d < D; ++d) {
            s2[g * D + d] = S(g, d);
            s1[g * D + d] = S(g, D + d);
        }
    }
}

void diag_expected_loglik(const double* Z, Index n, const DiagView& q, double* out) {
    check_atoms(q);
    const Index D = q.D, G = q.G;
    std::vector<double> constant(static_cast<size_t>(G));
    for (Index g = 0; g < G; ++g) {
        const double psi = digamma(0.5 * q.nu[g]);
        double c = 0.0;
        for (Index d = 0; d < D; ++d) c += elog_tau(psi, q.W[g * D + d]) - kLog2Pi;
        constant[g] = 0.5 * (c - static_cast<double>(D) / q.lam[g]);
    }
    for (Index i = 0; i < n; ++i) {
        const double* z = Z + i * D;
        for (Index g = 0; g < G; ++g) {
            double quad = 0.0;
            for (Index d = 0; d < D; ++d) {
                const double diff = z[d] - q.m[g * D + d];
                quad += q.nu[g] * q.W[g * D + d] * diff * diff;
            }
            out[i * G + g] = constant[g] - 0.5 * quad;
        }
    }
}

void diag_weighted_stats(const double* Z, Index n, Index D, const double* w, Index G,
                         const double* centre, double* n_out, double* s1_out, double* s2_out) {
    // The same feature form as the cell step: (G x F) = w' Phi, in blocks of rows.
    const Index F = diag_feature_size(D);
    constexpr Index kRows = 512;
    RowMat Phi(std::min(n, kRows), F);
    RowMat total = RowMat::Zero(G, F);
    for (Index start = 0; start < n; start += kRows) {
        const Index nb = std::min(kRows, n - start);
        for (Index i = 0; i < nb; ++i)
            diag_features(Z + (start + i) * D, centre, D, Phi.row(i).data());
        const RowMat block = CMapRowMat(w + start * G, nb, G).transpose() * Phi.topRows(nb);
        total += block;
    }
    unpack_diag_stats(total, D, n_out, s1_out, s2_out);
}

void diag_posterior(const double* n, const double* s1, const double* s2, Index G,
                    const double* centre, const DiagPrior& prior, double* m, double* lam,
                    double* W, double* nu) {
    check_prior(prior);
    const Index D = prior.D;
    for (Index g = 0; g < G; ++g) {
        if (n[g] <= 0.0) {
            // An empty cluster gets exactly the prior (SPEC 5.7).
            for (Index d = 0; d < D; ++d) {
                m[g * D + d] = prior.m0[d];
                W[g * D + d] = 1.0 / prior.W0inv[d];
            }
            lam[g] = prior.lam0;
            nu[g] = prior.nu0;
            continue;
        }
        if (!std::isfinite(n[g])) fail("n[" + std::to_string(g) + "] is not finite");
        const double shrink = prior.lam0 * n[g] / (prior.lam0 + n[g]);
        lam[g] = prior.lam0 + n[g];
        nu[g] = prior.nu0 + n[g];
        for (Index d = 0; d < D; ++d) {
            const double s1d = s1[g * D + d];
            const double xbar_c = s1d / n[g];
            const double C = s2[g * D + d] - s1d * xbar_c;
            const double m0c = prior.m0[d] - centre[d];
            const double diff = xbar_c - m0c;
            const double Winv = prior.W0inv[d] + C + shrink * diff * diff;
            if (!(Winv > 0.0) || !std::isfinite(Winv))
                fail("posterior W^-1 of atom " + std::to_string(g) + ", dimension " +
                     std::to_string(d) + " is not finite and positive");
            m[g * D + d] = centre[d] + (prior.lam0 * m0c + s1d) / lam[g];
            W[g * D + d] = 1.0 / Winv;
        }
    }
}

double diag_loglik_from_stats(const double* n, const double* s1, const double* s2,
                              const double* centre, const DiagView& q) {
    check_atoms(q);
    const Index D = q.D;
    const double Dd = static_cast<double>(D);
    double total = 0.0;
    double elog = 0.0, quad = 0.0;  // atom g's, or the previous atom's where g repeats it
    for (Index g = 0; g < q.G; ++g) {
        if (!repeats_previous(g, {{n, 1}, {q.nu, 1}, {q.m, D}, {q.W, D}, {s1, D}, {s2, D}})) {
            const double psi = digamma(0.5 * q.nu[g]);
            elog = 0.0;
            quad = 0.0;
            for (Index d = 0; d < D; ++d) {
                const double W = q.W[g * D + d];
                const double mc = q.m[g * D + d] - centre[d];
                elog += elog_tau(psi, W);
                quad += W * (s2[g * D + d] - 2.0 * s1[g * D + d] * mc + n[g] * mc * mc);
            }
        }
        total += 0.5 * (n[g] * (elog - Dd / q.lam[g] - Dd * kLog2Pi) - q.nu[g] * quad);
    }
    return total;
}

// Per atom, the sums over d of the model's section 6 terms at D = 1, with everything that does
// not depend on d taken out of the sum: e_d = E log tau_d = psi(nu / 2) + log 2 + log W_d is
// the only logarithm per element (the prior's own sum_d log B(W0_d, nu0) is formed once).
double diag_prior_term(const DiagView& q, const DiagPrior& prior) {
    check_prior(prior);
    check_atoms(q);
    const Index D = q.D;
    const double Dd = static_cast<double>(D);
    double log_b0 = 0.0;  // sum_d log B_W(W0_d, nu0), W0_d = 1 / W0inv_d
    for (Index d = 0; d < D; ++d) log_b0 += log_gamma_norm(1.0 / prior.W0inv[d], prior.nu0);
    double total = 0.0;
    // atom g's sums, or the previous atom's where g repeats it
    double sum_elog = 0.0, sum_quad = 0.0;
    for (Index g = 0; g < q.G; ++g) {
        if (!repeats_previous(g, {{q.nu, 1}, {q.m, D}, {q.W, D}})) {
            const double* W = q.W + g * D;
            const double* m = q.m + g * D;
            const double psi = digamma(0.5 * q.nu[g]);
            double sum_log_W = 0.0;
            sum_quad = 0.0;
            for (Index d = 0; d < D; ++d) {
                const double dm = m[d] - prior.m0[d];
                sum_log_W += std::log(W[d]);
                sum_quad += W[d] * (prior.lam0 * dm * dm + prior.W0inv[d]);
            }
            sum_elog = Dd * (psi + kLog2) + sum_log_W;
        }
        total += 0.5 * Dd * (std::log(prior.lam0 / (2.0 * kPi)) - prior.lam0 / q.lam[g]) +
                 log_b0 + 0.5 * (prior.nu0 - 1.0) * sum_elog - 0.5 * q.nu[g] * sum_quad;
    }
    return total;
}

double diag_entropy(const DiagView& q) {
    check_atoms(q);
    const Index D = q.D;
    const double Dd = static_cast<double>(D);
    double total = 0.0;
    // atom g's figures, or the previous atom's where g repeats it
    double sum_elog = 0.0, minus_log_b = 0.0;
    for (Index g = 0; g < q.G; ++g) {
        const double nu = q.nu[g];
        if (!repeats_previous(g, {{q.nu, 1}, {q.W, D}})) {
            const double* W = q.W + g * D;
            double sum_log_W = 0.0;
            for (Index d = 0; d < D; ++d) sum_log_W += std::log(W[d]);
            sum_elog = Dd * (digamma(0.5 * nu) + kLog2) + sum_log_W;
            // per d: -1/2 e - 1/2 log(lam / 2 pi) + 1/2 + H_W, H_W = -log B_W(W, nu)
            // - (nu - 2)/2 e + nu/2 and -log B_W(W, nu) = nu/2 log(2 W) + lgamma(nu / 2)
            minus_log_b = 0.5 * nu * (Dd * kLog2 + sum_log_W) + Dd * lgamma(0.5 * nu);
        }
        total += -0.5 * (nu - 1.0) * sum_elog +
                 Dd * (-0.5 * std::log(q.lam[g] / (2.0 * kPi)) + 0.5 + 0.5 * nu) + minus_log_b;
    }
    return total;
}

void diag_scores(const double* n, const double* s1, const double* s2, Index G,
                 const double* centre, const DiagPrior& prior, double* out) {
    const Index D = prior.D;
    std::vector<double> m(static_cast<size_t>(D)), W(static_cast<size_t>(D));
    double lam = 0.0, nu = 0.0;
    for (Index g = 0; g < G; ++g) {
        if (repeats_previous(g, {{n, 1}, {s1, D}, {s2, D}})) {
            out[g] = out[g - 1];  // the same statistics: the same score (empty atoms' pairs)
            continue;
        }
        diag_posterior(n + g, s1 + g * D, s2 + g * D, 1, centre, prior, m.data(), &lam,
                       W.data(), &nu);
        const DiagView v{m.data(), &lam, W.data(), &nu, 1, D};
        out[g] = diag_loglik_from_stats(n + g, s1 + g * D, s2 + g * D, centre, v) +
                 diag_prior_term(v, prior) + diag_entropy(v);
    }
}

}  // namespace nam
