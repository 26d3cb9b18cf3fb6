// Group-only coordinate ascent (cells held fixed): the refinement step of the group search.
//
// With q(M) fixed, every group-level factor (q(S), the sticks, the concentrations and the x atoms)
// can be re-optimised in O(J K (L + q^2)) without touching the cells.  The search refines hundreds
// of candidate partitions this way; one call here refines a batch of them to convergence, the
// candidates in parallel over threads.  Each candidate's arithmetic runs on one thread in a fixed
// order on buffers it owns, so every result is bitwise identical for any number of threads.
//
// The ascent is, block for block, the one of the Python moves (and of reference.group_ascent):
//   first pass:  group sticks, cell sticks, alpha, beta, x atoms
//   iterate:     q(S), then the same blocks, until max |rho - rho_old| < tol (or max_iter)
// and the result carries the group-level part of the ELBO (every term but the y atoms' and the
// entropy of q(M), which the cells fix).
#pragma once

#include <cmath>
#include <vector>

#include "common.hpp"
#include "normal_wishart.hpp"

namespace nam {

// A DP concentration's Gamma(shape, rate) prior, or a fixed value (fixed is NaN when learned).
struct ConcentrationSpec {
    double shape;
    double rate;
    double fixed;
    bool learned() const { return std::isnan(fixed); }
};

struct GroupAscentInput {
    const double* counts;   // (J, L) the tempered composition counts zeta_j N_jl
    Index J;
    Index L;
    Index K;
    const double* X;        // (J, q) group covariates, or nullptr (CAM)
    Index q;
    const double* x_centre; // (q,)
    NWPrior x_prior;        // the x prior at width 1 (each candidate scales it by its x_scale)
    ConcentrationSpec alpha;
    ConcentrationSpec beta;
    int max_iter;
    double tol;
};

// One candidate: the start (rho, the concentrations' q factors, the x prior's width) and, after
// the call, the refined factors.
struct GroupFactors {
    RowMat rho;                 // (J, K) in: start; out: refined
    double alpha_shape = 0, alpha_rate = 0, beta_shape = 0, beta_rate = 0;  // in and out
    double x_scale = 1.0;       // in
    RowMat v_a, v_b;            // (K - 1, 1)
    RowMat u_a, u_b;            // (L - 1, K)
    RowMat mx;                  // (K, q)
    Vec lamx;                   // (K,)
    RowMat Wx;                  // (K, q * q)
    Vec nux;                    // (K,)
    double H_rho = 0;           // -sum rho log rho
    double elbo = 0;            // the group-level part of the ELBO
    int n_iter = 0;             // q(S) updates made
};

// Refines every candidate in place.  Errors (an invalid prior, a non-finite input) are thrown
// after the parallel region, the one of the first failing candidate in candidate order.
void group_ascent(const GroupAscentInput& in, std::vector<GroupFactors>& candidates,
                  int n_threads);

}  // namespace nam
