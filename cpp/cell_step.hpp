// The cell update (SPEC 5.1) fused with everything that depends on xi: the per-group totals N_jl,
// the weighted statistics of y about the centre and the entropy -sum xi log xi.
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>

#include "common.hpp"
#include "normal_gamma.hpp"
#include "normal_wishart.hpp"

namespace nam {

// Cells per work unit.  Blocks are the unit of parallelism *and* of summation: every block's
// partial sums are formed independently and then added in block order, so the results do not
// depend on the number of threads (SPEC 7).  Changing it changes results in the last bits.
// 256 cells keep a block's feature matrix (256 x (p(p+1)/2 + p + 1) doubles, ~1 MB at p = 30)
// inside a core's L2 cache while giving the two GEMMs a deep enough inner dimension.
constexpr Index kCellBlock = 256;
// Cells per sub-block: a block's features and products are formed 64 cells at a time, so that
// the feature rows stay in a core's L2 cache between their fill and the two products (at
// p = 50 a whole block's are 2.7 MB).  Measured on 2,048 cells: 9-12% faster at p = 30 with 5
// or 13 distinct atoms, 4% with 30; 4-5% at p = 50 with 5 or 13, 1% slower with 30.  The
// statistics of a block are the sum of its sub-blocks' in order.
constexpr Index kCellRows = 64;
// Fewest blocks of cells (4,096 cells) that justify one more thread in the cell step.
constexpr Index kMinBlocksPerThread = 16;
// Fewest blocks of a chunk of the cell step's fixed summation plan (cell_step.cpp, plan_chunks).
constexpr Index kMinBlocksPerChunk = 8;

// Responsibilities below exp(kLogTiny) ~ 2.6e-261 of a cell's largest one are set to exactly 0
// (sparse xi).  Their effect on the ELBO is below L * 1e-256 per cell, far under the 1e-9 |ELBO|
// monotonicity tolerance and under double precision itself (sum xi = 1 to the last bit), but it
// keeps subnormal numbers, which x86 FPUs process ~100x slower, out of the statistics GEMM.
constexpr double kLogTiny = -600.0;

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
    NWView atoms;             // the L cell atoms, D = p (W (L, p, p), or (L, p) if diagonal)
    const double* centre;     // (p,)
    // (J,) or nullptr: weight of group j's cells in the y statistics and the entropy (the
    // donor-variation tempering zeta_j; xi and N_jl are unweighted).  nullptr: all 1.
    const double* group_weight = nullptr;
    // Diagonal atoms (normal_gamma.hpp): W is (L, p) and the statistics' s2 is (L, p).
    bool diagonal = false;
};

struct CellStepOutput {
    double* xi;    // (N, L), written
    double* N_jl;  // (J, L)
    double* n;     // (L,)
    double* s1;    // (L, p)
    double* s2;    // (L, p, p), or (L, p) for diagonal atoms
};

// Thrown by cell_step when `interrupted` returned true.  xi_out then holds the new
// responsibilities for the blocks finished before the stop and the old values elsewhere; the other
// outputs are unspecified.  The caller is expected to raise the pending Python exception.
struct Interrupted : std::runtime_error {
    Interrupted() : std::runtime_error("cell step interrupted") {}
};

// Returns -sum xi log xi.  Throws std::invalid_argument (before any output is touched) if the
// atoms are invalid; offsets are assumed validated by the caller.  `interrupted` (optional) is
// polled by the calling thread between rounds of blocks, at most every ~0.1 s.
double cell_step(const CellStepInput& in, const CellStepOutput& out, int n_threads,
                 const std::function<bool()>& interrupted = {});

// The cell update of the given cells only (``rows``, ascending indices into Y), in place in the
// full xi (N, L), returning the *change* it made to everything that depends on xi: N_jl, the
// weighted y statistics and the entropy (the split move's local sweeps).  The change statistics
// are those of (new - old) xi, formed in the same product as the cell step's statistics, so
// neither Y nor xi is gathered into copies and no large sum is subtracted from another.  Results
// are bitwise identical for every n_threads.
struct CellRowsOutput {
    double* xi;     // (N, L), rows updated in place
    double* dN_jl;  // (J, L)
    double* dn;     // (L,)
    double* ds1;    // (L, p)
    double* ds2;    // (L, p, p), or (L, p) for diagonal atoms
};

double cell_step_rows(const CellStepInput& in, const std::int64_t* rows, Index n_rows,
                      const CellRowsOutput& out, int n_threads);

}  // namespace nam
