#include "cell_step.hpp"

#include <algorithm>
#include <cmath>
#include <exception>
#include <vector>

#include "parallel.hpp"

namespace nam {

namespace {

// Partial sums of one block.  N_jl is kept sparse: a block only touches the groups of its own
// cells, recorded in `groups` with one row of `Nrows` each.
struct Slot {
    std::vector<double> dense;  // [entropy | n (L) | s1 (L p) | s2 (L p p)]
    std::vector<Index> groups;
    RowMat Nrows;
};

// Per-thread scratch, allocated once per call.
struct Scratch {
    RowMat logits, diff, proj, Yc, Yw;
    Scratch(Index rows, Index p, Index L)
        : logits(rows, L), diff(rows, p), proj(rows, p), Yc(rows, p), Yw(rows, p) {}
};

}  // namespace

double cell_step(const CellStepInput& in, const CellStepOutput& out, int n_threads) {
    const Index N = in.N, p = in.p, J = in.J, L = in.L;
    // Everything that can fail (Cholesky of W, value checks) happens here, before the parallel
    // region and before any output is written.
    const GaussianAtoms atoms = prepare_atoms(in.atoms, "W");
    // The prior part of the logits depends only on the group: (rho @ elog_omega')[j, l].
    RowMat bias(J, L);
    if (in.K > 0)
        bias.noalias() = CMapRowMat(in.rho, J, in.K) * CMapRowMat(in.elog_omega, L, in.K).transpose();
    else
        bias.setZero();

    const Index n_blocks = (N + kCellBlock - 1) / kCellBlock;
    // Group of each block's first cell (upper_bound over offsets; empty groups are skipped).
    std::vector<Index> first_group(static_cast<size_t>(n_blocks));
    for (Index b = 0; b < n_blocks; ++b) {
        const std::int64_t first_cell = b * kCellBlock;
        first_group[b] =
            static_cast<Index>(std::upper_bound(in.offsets, in.offsets + J + 1, first_cell) -
                               in.offsets) - 1;
    }

    const Index dense_size = 1 + L + L * p + L * p * p;
    // More threads than blocks would idle; the count never changes the results.
    const int threads =
        static_cast<int>(std::min<Index>(resolve_threads(n_threads), std::max<Index>(1, n_blocks)));
    // A round processes up to `round` blocks in parallel, then folds their slots into the totals in
    // block order.  The fold order is block order whatever the round size, so the round size only
    // bounds memory (about 64 MB of slots, but at least one slot per thread) and never affects
    // the results.
    const Index slot_bytes = 8 * (dense_size + std::min(J, kCellBlock) * L);
    const Index round = std::max<Index>(
        {1, static_cast<Index>(threads),
         std::min<Index>({64, n_blocks, (Index(64) << 20) / slot_bytes})});
    std::vector<Slot> slots(static_cast<size_t>(round));
    for (auto& s : slots) {
        s.dense.assign(static_cast<size_t>(dense_size), 0.0);
        s.groups.reserve(static_cast<size_t>(std::min(J, kCellBlock)));
        s.Nrows.resize(std::min(J, kCellBlock), L);
    }
    std::vector<double> total(static_cast<size_t>(dense_size), 0.0);
    MapRowMat N_jl(out.N_jl, J, L);
    N_jl.setZero();

    std::exception_ptr error = nullptr;

    auto process_block = [&](Index b, Slot& slot, Scratch& sc) {
        const Index start = b * kCellBlock;
        const Index nb = std::min(kCellBlock, N - start);
        const CMapRowMat Yb(in.Y + start * p, nb, p);
        auto logits = sc.logits.topRows(nb);
        // xi is written straight into the caller's array and read back from there for the sums.
        MapRowMat xi(out.xi + start * L, nb, L);
        loglik_block(atoms, Yb, logits, sc.diff, sc.proj);

        double* ent = slot.dense.data();
        *ent = 0.0;
        slot.groups.clear();
        Index j = first_group[b];
        for (Index i = 0; i < nb; ++i) {
            const Index cell = start + i;
            while (in.offsets[j + 1] <= cell) ++j;
            if (slot.groups.empty() || slot.groups.back() != j) {
                slot.groups.push_back(j);
                slot.Nrows.row(static_cast<Index>(slot.groups.size()) - 1).setZero();
            }
            auto row = logits.row(i);
            row += bias.row(j);
            // log-sum-exp normalisation over the L cell clusters
            const double mx = row.maxCoeff();
            double sum = 0.0;
            for (Index l = 0; l < L; ++l) sum += std::exp(row[l] - mx);
            const double lse = mx + std::log(sum);
            double h = 0.0;
            for (Index l = 0; l < L; ++l) {
                const double t = row[l] - lse;  // log xi
                const double x = std::exp(t);
                xi(i, l) = x;
                if (x > 0.0) h -= x * t;  // 0 log 0 = 0 (t may be -inf there)
            }
            *ent += h;
            slot.Nrows.row(static_cast<Index>(slot.groups.size()) - 1) += xi.row(i);
        }
        accumulate_stats_block(Yb, xi, in.centre, slot.dense.data() + 1,
                               slot.dense.data() + 1 + L, slot.dense.data() + 1 + L + L * p,
                               sc.Yc, sc.Yw, true);
    };

    {
        // The heavy products are ours to parallelise; Eigen is built with EIGEN_DONT_PARALLELIZE.
#ifdef NESTEDATOMS_OPENMP
#pragma omp parallel num_threads(threads)
#endif
        {
            Scratch sc(std::min(N, kCellBlock), p, L);
            for (Index r0 = 0; r0 < n_blocks; r0 += round) {
                const Index nr = std::min(round, n_blocks - r0);
#ifdef NESTEDATOMS_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
                for (Index r = 0; r < nr; ++r) {
                    try {
                        process_block(r0 + r, slots[r], sc);
                    } catch (...) {
#ifdef NESTEDATOMS_OPENMP
#pragma omp critical(nestedatoms_error)
#endif
                        if (!error) error = std::current_exception();
                    }
                }
                // Fold the dense partials in block order; each element's sum is independent, so
                // the elements can be shared among threads without changing any result.
#ifdef NESTEDATOMS_OPENMP
#pragma omp for schedule(static)
#endif
                for (Index e = 0; e < dense_size; ++e) {
                    double acc = total[e];
                    for (Index r = 0; r < nr; ++r) acc += slots[r].dense[e];
                    total[e] = acc;
                }
#ifdef NESTEDATOMS_OPENMP
#pragma omp single
#endif
                {
                    for (Index r = 0; r < nr; ++r) {
                        const Slot& s = slots[r];
                        for (size_t k = 0; k < s.groups.size(); ++k)
                            N_jl.row(s.groups[k]) += s.Nrows.row(static_cast<Index>(k));
                    }
                }
            }
        }
    }
    if (error) std::rethrow_exception(error);

    std::copy(total.begin() + 1, total.begin() + 1 + L, out.n);
    std::copy(total.begin() + 1 + L, total.begin() + 1 + L + L * p, out.s1);
    std::copy(total.begin() + 1 + L + L * p, total.end(), out.s2);
    symmetrise_stats(out.s2, L, p);
    return total[0];
}

}  // namespace nam
