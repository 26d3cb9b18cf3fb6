// The change of the entropy of q(M) when groups of cell atoms are merged (their columns of xi
// summed): for each group G, sum_i w_i [entr(sum_{l in G} xi_il) - sum_{l in G} entr(xi_il)].
// The merge moves judge proposals by it; one pass over xi serves every group, reading each row
// once, with no gathered copy of the columns.  A row with at most one nonzero entry in G adds
// exactly 0 (entr(a) - entr(a)), so a sparse xi costs a few compares per row.
#pragma once

#include <cstdint>

#include "common.hpp"

namespace nam {

// xi (N, L); groups given as flat column indices cols with group g = cols[starts[g]:starts[g+1]]
// (n_groups + 1 starts); group_weight (J,) with offsets (J + 1,) or nullptr (all 1).  Writes
// out (n_groups,).  Bitwise identical for every n_threads (fixed row chunks summed in order).
void merged_entropy_change(const double* xi, Index N, Index L, const std::int64_t* cols,
                           const std::int64_t* starts, Index n_groups,
                           const std::int64_t* offsets, const double* group_weight, Index J,
                           double* out, int n_threads);

}  // namespace nam
