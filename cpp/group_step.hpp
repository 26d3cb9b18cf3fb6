// The group update (SPEC 5.2): rho_jk ∝ exp(E log pi_k + sum_l N_jl E log omega_lk + ell^x_k(x_j)).
// It costs O(J L K): one matrix product and J K exponentials, on one thread (the group ascent
// runs many of them, one candidate partition per thread).
#pragma once

#include <algorithm>
#include <cmath>

#include "common.hpp"

namespace nam {

// Responsibilities below exp(kLogTinyGroup) ~ 3.7e-44 of a row's largest are set to exactly 0, as
// the cell step does with e^-600 (cell_step.hpp).  Such a responsibility moves the ELBO by less
// than 100 e^-100 ~ 4e-42 nats and a cluster's statistics by 4e-44 individuals, which vanish
// when added to anything a double can hold beside it (the prior's lam0, nu0, W0^-1); so nothing
// the fit computes can see the cut.  But a cluster whose column is exactly 0 has exactly its
// prior's posterior, the same as every other empty cluster, and the core then factorises and
// scores it once for all of them (``repeats_previous``): without the cut, a group ascent left
// every one of K = 30 clusters 1e-100..1e-134 individuals, and its x atoms were four fifths of
// the published toy design's group search.  (-100 rather than -40: far enough that two clusters
// a donor could still be said to share are never cut.)
constexpr double kLogTinyGroup = -100.0;

// logits (J x K, Eigen-owned scratch) holds the unnormalised log responsibilities on entry; rho
// (J x K, Eigen-owned) gets the normalised ones.  Returns -sum rho log rho.  The exponentials run
// over the whole matrix at once (Eigen's vectorised exp), and only on Eigen-owned buffers, whose
// alignment is fixed: results are then identical from call to call.
inline double normalise_group_logits(RowMat& logits, RowMat& rho) {
    const Index J = logits.rows(), K = logits.cols();
    for (Index j = 0; j < J; ++j) logits.row(j).array() -= logits.row(j).maxCoeff();
    // exp alone: an expression mixing it with select() is evaluated one scalar at a time
    rho.array() = logits.array().exp();
    double entropy = 0.0;
    for (Index j = 0; j < J; ++j) {
        auto r = rho.row(j);
        // -sum r log r = log(sum) - sum_k e_k t_k / sum, t = logit - max, e = exp(t); 0 log 0 = 0
        double dot = 0.0;
        for (Index k = 0; k < K; ++k) {
            if (logits(j, k) < kLogTinyGroup) r[k] = 0.0;
            else dot += r[k] * logits(j, k);
        }
        const double sum = r.sum();
        r /= sum;
        entropy += std::log(sum) - dot / sum;
    }
    return entropy;
}

// N_jl (J, L), elog_pi (K,), elog_omega (L, K), ell_x (J, K) -> rho_out (J, K).
// Returns -sum rho log rho.
inline double group_step(const double* N_jl, const double* elog_pi, const double* elog_omega,
                         const double* ell_x, Index J, Index L, Index K, double* rho_out) {
    RowMat logits(J, K), rho(J, K);
    logits.noalias() = CMapRowMat(N_jl, J, L) * CMapRowMat(elog_omega, L, K);
    logits.rowwise() += Eigen::Map<const Eigen::RowVectorXd>(elog_pi, K);
    logits += CMapRowMat(ell_x, J, K);
    const double entropy = normalise_group_logits(logits, rho);
    std::copy(rho.data(), rho.data() + J * K, rho_out);
    return entropy;
}

}  // namespace nam
