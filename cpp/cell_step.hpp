// The cell update (SPEC 5.1) fused with everything that depends on xi: the per-group totals N_jl,
// the weighted statistics of y about the centre and the entropy -sum xi log xi.
#pragma once

#include <cstdint>

#include "common.hpp"
#include "normal_wishart.hpp"

namespace nam {

// Cells per work unit.  Blocks are the unit of parallelism *and* of summation: every block's
// partial sums are formed independently and then added in block order, so the results do not
// depend on the number of threads (SPEC 7).  Changing it changes results in the last bits.
constexpr Index kCellBlock = 256;

struct CellStepInput {
    const double* Y;          // (N, p) cells, sorted by group
    Index N;
    Index p;
    const std::int64_t* offsets;  // (J + 1,) group j is Y[offsets[j]:offsets[j + 1]]
    Index J;
    const double* rho;        // (J, K)
    Index K;
    const double* elog_omega; // (L, K)
    Index L;
    NWView atoms;             // the L cell atoms, D = p
    const double* centre;     // (p,)
};

struct CellStepOutput {
    double* xi;    // (N, L), written
    double* N_jl;  // (J, L)
    double* n;     // (L,)
    double* s1;    // (L, p)
    double* s2;    // (L, p, p)
};

// Returns -sum xi log xi.  Throws std::invalid_argument (before any output is touched) if the
// atoms are invalid; offsets are assumed validated by the caller.
double cell_step(const CellStepInput& in, const CellStepOutput& out, int n_threads);

}  // namespace nam
