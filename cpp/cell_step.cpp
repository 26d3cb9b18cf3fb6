#include "cell_step.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <vector>

#include "elbo_terms.hpp"
#include "parallel.hpp"

#if defined(__SSE2__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

namespace nam {

namespace {

// Partial sums of one chunk (a fixed run of consecutive blocks, summed in cell order by the one
// thread that owns it).  N_jl rows are kept for the groups the chunk's cells belong to only.
struct Chunk {
    std::vector<double> dense;  // [entropy | statistics (L x F), row-major]
    Index first_group = 0;
    RowMat Nrows;               // (last group - first group + 1, L)
};

// Per-thread scratch, allocated before the parallel region so nothing in it allocates.
// ``distinct`` holds a block's logits of the distinct atoms (DistinctAtoms), ``gathered`` and
// ``partial`` the nonzero columns of its weights and their statistics (add_statistics).
struct Scratch {
    RowMat Phi, logits, distinct, gathered, partial;
    Eigen::RowVectorXd expo;
    std::vector<char> used;       // (L,) whether a column of the block's weights is nonzero
    std::vector<Index> nonzero;   // the nonzero columns, ascending
    Scratch(Index rows, Index F, Index L, Index n_distinct)
        : Phi(rows, F), logits(rows, L), distinct(rows, n_distinct), gathered(rows, L),
          partial(L, F), expo(L), used(static_cast<size_t>(L)),
          nonzero(static_cast<size_t>(L)) {}
};

// The statistics of one block, stats (L x F) += w' Phi for the block's weights w (nb x L),
// over the columns of w that hold a nonzero only (``sc.used`` marks them): a column of zeros
// adds exactly nothing, and on small data most of L = 30 atoms are empty, their
// responsibilities exactly 0 (kLogTiny) for nearly every cell.  With every column in use this
// is the one product it always was.  Clears ``sc.used``.
template <class Weights, class Features>
void add_statistics(MapRowMat& stats, const Weights& w, const Features& Phi, Scratch& sc) {
    const Index nb = w.rows(), L = w.cols();
    Index n_used = 0;
    for (Index l = 0; l < L; ++l) {
        if (sc.used[static_cast<size_t>(l)]) sc.nonzero[static_cast<size_t>(n_used++)] = l;
        sc.used[static_cast<size_t>(l)] = 0;
    }
    if (n_used == L) {
        stats.noalias() += w.transpose() * Phi;
        return;
    }
    if (n_used == 0) return;
    auto gathered = sc.gathered.topLeftCorner(nb, n_used);
    for (Index k = 0; k < n_used; ++k) gathered.col(k) = w.col(sc.nonzero[static_cast<size_t>(k)]);
    auto partial = sc.partial.topRows(n_used);
    partial.noalias() = gathered.transpose() * Phi;
    for (Index k = 0; k < n_used; ++k) stats.row(sc.nonzero[static_cast<size_t>(k)]) += partial.row(k);
}

// Marks the nonzero entries of one row of weights in ``used``.
template <class Row>
void mark_used(const Row& row, std::vector<char>& used) {
    for (Index l = 0; l < row.size(); ++l)
        if (row[l] != 0.0) used[static_cast<size_t>(l)] = 1;
}

// Subnormal numbers make x86 floating-point units take microcode assists (~100x slower per
// operation), and a fit's xi is mostly tiny numbers: besides cutting them (kLogTiny), the threads
// run the cell step with flush-to-zero and denormals-are-zero, and restore the caller's mode after.
class FlushDenormals {
  public:
    FlushDenormals() {
#if defined(__SSE2__) || defined(_M_X64)
        saved_ = _mm_getcsr();
        _mm_setcsr(saved_ | 0x8040u);  // FTZ (bit 15) | DAZ (bit 6)
#endif
    }
    ~FlushDenormals() {
#if defined(__SSE2__) || defined(_M_X64)
        _mm_setcsr(saved_);
#endif
    }
    FlushDenormals(const FlushDenormals&) = delete;
    FlushDenormals& operator=(const FlushDenormals&) = delete;

  private:
    unsigned int saved_ = 0;
};

// The plan of a pass over n cells: fixed chunks of consecutive blocks, the unit of work and of
// summation.  A chunk is summed in cell order by one thread and the chunk totals are then added
// in chunk order, so the results do not depend on the number of threads (model section 7).
// Their count depends on n, L and p only: at most ~64 MB of chunk totals (16..1024 chunks, and
// at least kMinBlocksPerChunk blocks each),
// so a thread preempted on a shared machine holds up little work and nothing waits at a
// barrier until the end.  ``group_of(i)`` is the group of the pass's i-th cell.
struct ChunkPlan {
    Index n_blocks = 0, chunk_blocks = 1;
    std::vector<Chunk> chunks;

    // The kernel's schedule, called inside an OpenMP parallel region: the chunks are shared out
    // one at a time and each chunk's blocks run in order; ``body(b, chunk)`` runs block b until
    // ``stop`` is set, and what it throws goes to ``on_error`` (an exception must never leave an
    // OpenMP region).
    template <class Body, class OnError>
    void run(const std::atomic<bool>& stop, Body&& body, OnError&& on_error) {
        const Index n_chunks = static_cast<Index>(chunks.size());
#ifdef NESTEDATOMS_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (Index c = 0; c < n_chunks; ++c) {
            const Index b_end = std::min(n_blocks, (c + 1) * chunk_blocks);
            for (Index b = c * chunk_blocks; b < b_end; ++b) {
                if (stop.load(std::memory_order_relaxed)) break;
                try {
                    body(b, chunks[c]);
                } catch (...) {
                    on_error();
                }
            }
        }
    }

    // The fold: the chunks' totals into ``total`` (1 + L F) and their rows of N_jl into N, in
    // chunk order.
    template <class Rows>
    void fold(std::vector<double>& total, Rows& N) const {
        for (const Chunk& ch : chunks) {
            for (size_t e = 0; e < total.size(); ++e) total[e] += ch.dense[e];
            N.middleRows(ch.first_group, ch.Nrows.rows()) += ch.Nrows;
        }
    }
};

template <class GroupOf>
ChunkPlan plan_chunks(Index n, Index L, Index F, GroupOf group_of) {
    ChunkPlan plan;
    plan.n_blocks = (n + kCellBlock - 1) / kCellBlock;
    const Index dense_size = 1 + L * F;
    // A chunk's totals (8 (1 + L F) bytes: 119 KB at L = p = 30) are zeroed and folded once per
    // call: with a chunk per block, a batch of 53k cells spent 25 MB on them, as much time as on
    // its cells where the allocator hands freed memory back at once (a dask worker's nanny).
    // So a chunk holds at least kMinBlocksPerChunk blocks (still >= 2 chunks per worthwhile
    // thread, see kMinBlocksPerThread).
    const Index max_chunks = std::min(
        std::clamp<Index>((Index(64) << 20) / (8 * dense_size), Index(16), Index(1024)),
        std::max<Index>(1, plan.n_blocks / kMinBlocksPerChunk));
    plan.chunk_blocks = std::max<Index>(1, (plan.n_blocks + max_chunks - 1) / max_chunks);
    const Index n_chunks = (plan.n_blocks + plan.chunk_blocks - 1) / plan.chunk_blocks;
    plan.chunks.resize(static_cast<size_t>(n_chunks));
    for (Index c = 0; c < n_chunks; ++c) {
        Chunk& ch = plan.chunks[c];
        const Index first = c * plan.chunk_blocks * kCellBlock;
        const Index last = std::min(n, (c + 1) * plan.chunk_blocks * kCellBlock) - 1;
        ch.dense.assign(static_cast<size_t>(dense_size), 0.0);
        ch.first_group = group_of(first);
        ch.Nrows = RowMat::Zero(group_of(last) - ch.first_group + 1, L);
    }
    return plan;
}

// q(M_i) from one row of logits, the one place both cell steps normalise: the row is shifted
// by its maximum, exp() goes to ``expo`` (responsibilities below exp(kLogTiny) become exactly 0,
// see cell_step.hpp) and the result is xi_i = expo / sum.  Returns sum and the entropy
// -sum x log x = log(sum) - sum_l x_l t_l / sum (t = logit - max; 0 log 0 = 0).  The exp runs on
// thread-local scratch of fixed alignment: Eigen peels unaligned leading elements off to scalar
// code, so working in the caller's xi would change the last bits from call to call; and it runs
// on its own, since inside a select() Eigen 3.4 evaluates exp one scalar at a time.
struct Normalised {
    double sum, entropy;
};

template <class Row>
Normalised normalise_logits(Row&& row, Eigen::RowVectorXd& expo) {
    const double mx = row.maxCoeff();
    row.array() -= mx;
    expo.array() = row.array().exp();
    double dot = 0.0;
    for (Index l = 0; l < row.size(); ++l) {
        if (row[l] < kLogTiny) expo[l] = 0.0;
        else dot += expo[l] * row[l];
    }
    const double sum = expo.sum();
    return {sum, std::log(sum) - dot / sum};
}

// The feature form of the atoms' family: full atoms use the packed outer product
// (normal_wishart.hpp), diagonal ones the squares (normal_gamma.hpp).  Chosen once per step;
// everything else in a cell step is the same for both.
struct FeatureMap {
    Index F;
    void (*fill)(const double* z, const double* centre, Index D, double* row);
    void (*unpack)(const Eigen::Ref<const RowMat>& S, Index D, double* n, double* s1, double* s2);
};

FeatureMap feature_map(const CellStepInput& in) {
    if (in.diagonal) return {diag_feature_size(in.p), &diag_features, &unpack_diag_stats};
    return {packed_size(in.p) + in.p + 1, &packed_features, &unpack_stats};
}

// The atoms with repeats folded: atoms whose parameters (m, lam, W, nu) are bit for bit an
// earlier atom's (the empty atoms, all exactly at the prior: 26 of L = 30 on small data) are of
// its kind, have the same coefficients and share its column of the logits product, whose result
// is then expanded per cell.  Only the first atom of each kind is factorised and given
// coefficients (the set-up of a small step), each as it would be alone, so the logits are those
// of the full product with the shape of the distinct one; with no repeats it is the full product.
struct DistinctAtoms {
    RowMat A;                       // (F, n_distinct): the first atom of each kind, in atom order
    std::vector<Index> column_of;   // (L,): atom l's column of A
};

DistinctAtoms distinct_atoms(const CellStepInput& in) {
    const NWView& q = in.atoms;
    const Index L = q.G, D = q.D, w_size = in.diagonal ? D : D * D;
    auto same = [&](const double* a, Index l, Index k, Index size) {
        return std::memcmp(a + l * size, a + k * size, static_cast<size_t>(size) * sizeof(double)) == 0;
    };
    DistinctAtoms out;
    out.column_of.resize(static_cast<size_t>(L));
    std::vector<Index> first;       // the first atom of each kind
    for (Index l = 0; l < L; ++l) {
        size_t k = 0;
        while (k < first.size() &&
               !(same(q.lam, l, first[k], 1) && same(q.nu, l, first[k], 1) &&
                 same(q.m, l, first[k], D) && same(q.W, l, first[k], w_size)))
            ++k;
        if (k == first.size()) first.push_back(l);
        out.column_of[static_cast<size_t>(l)] = static_cast<Index>(k);
    }
    out.A = in.diagonal
                ? diag_coefficients(DiagView{q.m, q.lam, q.W, q.nu, q.G, q.D}, in.centre, first)
                : loglik_coefficients(prepare_atoms(q, "W", first), q, in.centre);
    return out;
}

// What the logits of a cell step are made of: the coefficients of the expected
// log-likelihood in the features (DistinctAtoms), and bias (J x L) = rho @ E log omega', the
// prior part, which depends only on the group.  Building them checks the atoms (Cholesky of W,
// or W > 0), so a cell step fails here, before its parallel region and before any output is
// written.
struct LogitTerms {
    DistinctAtoms atoms;
    RowMat bias;
    explicit LogitTerms(const CellStepInput& in)
        : atoms(distinct_atoms(in)),
          bias(in.J, in.L) {
        if (in.K > 0)
            bias.noalias() = CMapRowMat(in.rho, in.J, in.K) *
                             CMapRowMat(in.elog_omega, in.L, in.K).transpose();
        else
            bias.setZero();
    }
    Index n_distinct() const { return atoms.A.cols(); }

    // Logits of one block of features into ``sc.distinct``, one column per distinct atom.
    template <class Features>
    void block_products(const Features& Phi, Scratch& sc) const {
        sc.distinct.topRows(Phi.rows()).noalias() = Phi * atoms.A;
    }

    // Row i of the block's logits, expanded to the L atoms, plus group j's bias, into ``row``.
    template <class Row>
    void expand(Index i, Index j, const Scratch& sc, Row&& row) const {
        const double* d = sc.distinct.row(i).data();
        const double* b = bias.row(j).data();
        for (Index l = 0; l < row.size(); ++l)
            row[l] = d[atoms.column_of[static_cast<size_t>(l)]] + b[l];
    }
};

// Seconds between two polls of the interruption callback.
constexpr double kPollSeconds = 0.1;

}  // namespace

double cell_step(const CellStepInput& in, const CellStepOutput& out, int n_threads,
                 const std::function<bool()>& interrupted) {
    const Index N = in.N, p = in.p, J = in.J, L = in.L;
    const FeatureMap features = feature_map(in);
    const Index F = features.F;
    // Everything that can fail (Cholesky of W, value checks) happens here, before the parallel
    // region and before any output is written.
    const LogitTerms terms(in);

    auto group_of = [&](Index cell) {  // upper_bound over offsets: empty groups are skipped
        return static_cast<Index>(std::upper_bound(in.offsets, in.offsets + J + 1,
                                                   static_cast<std::int64_t>(cell)) -
                                  in.offsets) - 1;
    };

    // Fixed chunks of blocks (plan_chunks): results independent of the number of threads.
    const Index dense_size = 1 + L * F;
    ChunkPlan plan = plan_chunks(N, L, F, group_of);
    const Index n_chunks = static_cast<Index>(plan.chunks.size());
    // More threads than chunks would idle, and a thread given only a few blocks costs more in
    // start-up and barrier waits than it saves (on a loaded machine, 2 threads ran a 1,200-cell
    // step 15x slower than 1).  The count never changes the results.
    const Index worth_threads = std::max<Index>(1, plan.n_blocks / kMinBlocksPerThread);
    const int threads = static_cast<int>(std::min<Index>(
        {static_cast<Index>(resolve_threads(n_threads)), n_chunks, worth_threads}));
    std::vector<Scratch> scratch;
    scratch.reserve(static_cast<size_t>(threads));
    for (int t = 0; t < threads; ++t)
        scratch.emplace_back(std::min(N, kCellRows), F, L, terms.n_distinct());

    // An exception must never leave an OpenMP region (that is std::terminate): every throwing
    // call inside it is wrapped, the first exception is kept and rethrown after the region.
    std::exception_ptr error = nullptr;
    std::atomic<bool> stop{false};  // an error or an interruption: skip the remaining work
    bool was_interrupted = false;    // written by the calling thread only
    auto last_poll = std::chrono::steady_clock::now();
    auto record_error = [&] {
#ifdef NESTEDATOMS_OPENMP
#pragma omp critical(nestedatoms_error)
#endif
        if (!error) error = std::current_exception();
        stop.store(true);
    };
    // Ctrl-C: only the calling thread (thread 0 of the team) may talk to Python.
    auto poll = [&](int thread) {
        if (thread != 0 || !interrupted) return;
        const auto now = std::chrono::steady_clock::now();
        if (std::chrono::duration<double>(now - last_poll).count() < kPollSeconds) return;
        last_poll = now;
        if (interrupted()) {
            was_interrupted = true;
            stop.store(true);
        }
    };

    auto process_block = [&](Index b, Chunk& ch, Scratch& sc) {
        const Index start = b * kCellBlock;
        const Index nb = std::min(kCellBlock, N - start);
        MapRowMat stats(ch.dense.data() + 1, L, F);
        double entropy = 0.0;
        Index j = group_of(start);
        for (Index first = start; first < start + nb; first += kCellRows) {  // sub-blocks
            const Index nr = std::min(kCellRows, start + nb - first);
            auto Phi = sc.Phi.topRows(nr);
            for (Index i = 0; i < nr; ++i)
                features.fill(in.Y + (first + i) * p, in.centre, p, Phi.row(i).data());
            terms.block_products(Phi, sc);
            auto logits = sc.logits.topRows(nr);

            // xi is written straight into the caller's array and read back from there for the
            // sums.
            MapRowMat xi(out.xi + first * L, nr, L);
            for (Index i = 0; i < nr; ++i) {
                const Index cell = first + i;
                while (in.offsets[j + 1] <= cell) ++j;
                auto row = logits.row(i);
                terms.expand(i, j, sc, row);
                const Normalised q = normalise_logits(row, sc.expo);
                auto xrow = xi.row(i);
                xrow = sc.expo / q.sum;  // elementwise: identical whatever the alignment
                mark_used(xrow, sc.used);
                ch.Nrows.row(j - ch.first_group) += xrow;
                if (in.group_weight) {
                    // weighted statistics: scale the cell's features (its logits are done)
                    const double w = in.group_weight[j];
                    entropy += w * q.entropy;
                    Phi.row(i) *= w;
                } else {
                    entropy += q.entropy;
                }
            }
            add_statistics(stats, xi, Phi, sc);
        }
        ch.dense[0] += entropy;
    };

    {
        // The heavy products are ours to parallelise; Eigen is built with EIGEN_DONT_PARALLELIZE.
#ifdef NESTEDATOMS_OPENMP
#pragma omp parallel num_threads(threads)
#endif
        {
#ifdef NESTEDATOMS_OPENMP
            const int thread = omp_get_thread_num();
#else
            const int thread = 0;
#endif
            Scratch& sc = scratch[static_cast<size_t>(thread)];
            const FlushDenormals flush;
            plan.run(
                stop,
                [&](Index b, Chunk& ch) {
                    process_block(b, ch, sc);
                    poll(thread);
                },
                record_error);
        }
    }
    if (error) std::rethrow_exception(error);
    if (was_interrupted) throw Interrupted();

    // Fold the chunks in chunk order.
    std::vector<double> total(static_cast<size_t>(dense_size), 0.0);
    MapRowMat N_jl(out.N_jl, J, L);
    N_jl.setZero();
    plan.fold(total, N_jl);

    // Unpack the statistics: n is the last column, s1 the p before it, s2 the packed triangle.
    features.unpack(CMapRowMat(total.data() + 1, L, F), p, out.n, out.s1, out.s2);
    return total[0];
}


double cell_step_rows(const CellStepInput& in, const std::int64_t* rows, Index n_rows,
                      const CellRowsOutput& out, int n_threads) {
    const Index p = in.p, J = in.J, L = in.L;
    const FeatureMap features = feature_map(in);
    const Index F = features.F;
    const LogitTerms terms(in);
    MapRowMat dN(out.dN_jl, J, L);
    dN.setZero();
    std::vector<double> total(static_cast<size_t>(1 + L * F), 0.0);
    if (n_rows > 0) {
        // The group of each row (rows ascend, so one forward scan of the offsets).
        std::vector<Index> group(static_cast<size_t>(n_rows));
        for (Index i = 0, j = 0; i < n_rows; ++i) {
            while (in.offsets[j + 1] <= rows[i]) ++j;
            group[static_cast<size_t>(i)] = j;
        }
        // Fixed chunks of blocks (plan_chunks): results independent of the number of threads.
        ChunkPlan plan = plan_chunks(n_rows, L, F,
                                     [&](Index i) { return group[static_cast<size_t>(i)]; });
        const Index n_chunks = static_cast<Index>(plan.chunks.size());
        const Index worth_threads = std::max<Index>(1, plan.n_blocks / kMinBlocksPerThread);
        const int threads = static_cast<int>(std::min<Index>(
            {static_cast<Index>(resolve_threads(n_threads)), n_chunks, worth_threads}));
        std::exception_ptr error = nullptr;
        std::atomic<bool> stop{false};

        auto process_block = [&](Index b, Chunk& ch, Scratch& sc, RowMat& delta) {
            const Index start = b * kCellBlock;
            const Index nb = std::min(kCellBlock, n_rows - start);
            MapRowMat stats(ch.dense.data() + 1, L, F);
            double entropy_change = 0.0;
            for (Index first = start; first < start + nb; first += kCellRows) {  // sub-blocks
                const Index nr = std::min(kCellRows, start + nb - first);
                auto Phi = sc.Phi.topRows(nr);
                for (Index i = 0; i < nr; ++i)
                    features.fill(in.Y + rows[first + i] * p, in.centre, p, Phi.row(i).data());
                terms.block_products(Phi, sc);
                auto logits = sc.logits.topRows(nr);
                auto d = delta.topRows(nr);
                for (Index i = 0; i < nr; ++i) {
                    const Index j = group[static_cast<size_t>(first + i)];
                    auto row = logits.row(i);
                    terms.expand(i, j, sc, row);
                    const Normalised q = normalise_logits(row, sc.expo);  // as the cell step
                    double* xrow = out.xi + rows[first + i] * L;
                    double old_entropy = 0.0;
                    for (Index l = 0; l < L; ++l) old_entropy += entr(xrow[l]);
                    const double new_entropy = q.entropy;
                    for (Index l = 0; l < L; ++l) {
                        const double x = sc.expo[l] / q.sum;
                        d(i, l) = x - xrow[l];
                        xrow[l] = x;
                    }
                    mark_used(d.row(i), sc.used);
                    ch.Nrows.row(j - ch.first_group) += d.row(i);
                    const double w = in.group_weight ? in.group_weight[j] : 1.0;
                    entropy_change += w * (new_entropy - old_entropy);
                    if (in.group_weight) Phi.row(i) *= w;
                }
                add_statistics(stats, d, Phi, sc);
            }
            ch.dense[0] += entropy_change;
        };

#ifdef NESTEDATOMS_OPENMP
#pragma omp parallel num_threads(threads)
#endif
        {
            Scratch sc(std::min(n_rows, kCellRows), F, L, terms.n_distinct());
            RowMat delta(std::min(n_rows, kCellRows), L);
            const FlushDenormals flush;
            plan.run(
                stop, [&](Index b, Chunk& ch) { process_block(b, ch, sc, delta); },
                [&] {
#ifdef NESTEDATOMS_OPENMP
#pragma omp critical(nestedatoms_rows_error)
#endif
                    if (!error) error = std::current_exception();
                    stop.store(true);
                });
        }
        if (error) std::rethrow_exception(error);
        plan.fold(total, dN);
    }
    features.unpack(CMapRowMat(total.data() + 1, L, F), p, out.dn, out.ds1, out.ds2);
    return total[0];
}

}  // namespace nam
