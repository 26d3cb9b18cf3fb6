#include "merge_entropy.hpp"

#include <algorithm>
#include <vector>

#include "elbo_terms.hpp"
#include "parallel.hpp"

namespace nam {

namespace {
// Rows per chunk: the unit of work and of summation (so the result does not depend on threads).
constexpr Index kEntropyRows = 8192;
}  // namespace

void merged_entropy_change(const double* xi, Index N, Index L, const std::int64_t* cols,
                           const std::int64_t* starts, Index n_groups,
                           const std::int64_t* offsets, const double* group_weight, Index J,
                           double* out, int n_threads) {
    std::fill(out, out + n_groups, 0.0);
    if (N == 0 || n_groups == 0) return;
    const Index n_chunks = (N + kEntropyRows - 1) / kEntropyRows;
    std::vector<double> partial(static_cast<size_t>(n_chunks * n_groups), 0.0);
    const int threads = static_cast<int>(
        std::min<Index>(static_cast<Index>(resolve_threads(n_threads)), n_chunks));
#ifdef NESTEDATOMS_OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#endif
    for (Index c = 0; c < n_chunks; ++c) {
        const Index first = c * kEntropyRows, last = std::min(N, first + kEntropyRows);
        double* acc = partial.data() + c * n_groups;
        Index j = 0;
        if (group_weight)
            j = static_cast<Index>(std::upper_bound(offsets, offsets + J + 1,
                                                    static_cast<std::int64_t>(first)) -
                                   offsets) - 1;
        for (Index i = first; i < last; ++i) {
            double w = 1.0;
            if (group_weight) {
                while (offsets[j + 1] <= i) ++j;
                w = group_weight[j];
            }
            const double* row = xi + i * L;
            for (Index g = 0; g < n_groups; ++g) {
                // logarithms only where the row has two or more nonzero entries in the group
                int nonzero = 0;
                double sum = 0.0;
                for (std::int64_t k = starts[g]; k < starts[g + 1]; ++k) {
                    const double x = row[cols[k]];
                    nonzero += x != 0.0;
                    sum += x;
                }
                if (nonzero < 2) continue;
                double parts = 0.0;
                for (std::int64_t k = starts[g]; k < starts[g + 1]; ++k) parts += entr(row[cols[k]]);
                acc[g] += w * (entr(sum) - parts);
            }
        }
    }
    (void)threads;
    for (Index c = 0; c < n_chunks; ++c)
        for (Index g = 0; g < n_groups; ++g) out[g] += partial[c * n_groups + g];
}

}  // namespace nam
