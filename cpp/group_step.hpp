// The group update (SPEC 5.2): rho_jk ∝ exp(E log pi_k + sum_l N_jl E log omega_lk + ell^x_k(x_j)).
// It costs O(J L K), negligible next to the cell step, so it runs on one thread.
#pragma once

#include "common.hpp"

namespace nam {

// N_jl (J, L), elog_pi (K,), elog_omega (L, K), ell_x (J, K) -> rho_out (J, K).
// Returns -sum rho log rho.
inline double group_step(const double* N_jl, const double* elog_pi, const double* elog_omega,
                         const double* ell_x, Index J, Index L, Index K, double* rho_out) {
    RowMat logits(J, K);
    logits.noalias() = CMapRowMat(N_jl, J, L) * CMapRowMat(elog_omega, L, K);
    const Eigen::Map<const Eigen::RowVectorXd> pi(elog_pi, K);
    const CMapRowMat ex(ell_x, J, K);
    double entropy = 0.0;
    for (Index j = 0; j < J; ++j) {
        auto row = logits.row(j);
        row = (pi + row) + ex.row(j);
        const double mx = row.maxCoeff();
        double sum = 0.0;
        for (Index k = 0; k < K; ++k) sum += std::exp(row[k] - mx);
        const double lse = mx + std::log(sum);
        for (Index k = 0; k < K; ++k) {
            const double t = row[k] - lse;
            const double r = std::exp(t);
            rho_out[j * K + k] = r;
            if (r > 0.0) entropy -= r * t;  // 0 log 0 = 0
        }
    }
    return entropy;
}

}  // namespace nam
