"""The batch plan: the cells cut into batches of whole individuals, and the sums over them.

Every pass over the cells (the cell step, the data summaries the priors and centres are built
from, the statistics of the starting partition) runs batch by batch and adds the batches'
results in batch order.  The plan depends only on the data (each individual's number of cells)
and a batch size in cells, never on the number of workers or threads, so a fit gives the same
bits in memory, on one dask worker or on many (model section 7).

With one batch (the in-memory default) every pass is exactly the single call it was before
batches existed, so such a fit is bitwise unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BatchPlan", "plan_batches", "DEFAULT_DASK_BATCH_SIZE", "dask_batch_size",
           "ColumnSummary",
           "batch_summary", "combine_summaries", "batch_scatter", "summary_covariance",
           "in_memory_summary", "batched_cell_step", "batched_weighted_stats",
           "add_in_order", "weighted_entropy", "entropies_of_sums",
           "batched_entropies_of_sums", "batched_cell_map", "fold_columns"]

# The default batch size of a dask fit (``dask_batch_size``): at most ~60 MB of float64 cells
# at p = 30 (and as much for the batch's xi), so a worker holds a few batches in a few hundred
# MB; and at least DEFAULT_DASK_BATCHES batches where they can hold MIN_DASK_BATCH_SIZE cells
# each, so that the batches spread evenly over the usual worker counts (24 is a multiple of 1,
# 2, 3, 4, 6, 8 and 12; with 5 batches on 2 workers one worker did 3 and the sweep waited for it,
# 1.2x of the balanced time).  A few thousand tasks' overhead per sweep would not pay for itself
# below ~32768 cells a batch.
DEFAULT_DASK_BATCH_SIZE = 1 << 18
DEFAULT_DASK_BATCHES = 24
MIN_DASK_BATCH_SIZE = 1 << 15


def dask_batch_size(n_cells: int) -> int:
    """The batch size of a dask fit with ``batch_size=None``: one batch up to
    ``DEFAULT_DASK_BATCH_SIZE`` cells (such a Y is read and fit in memory), otherwise at least
    ``DEFAULT_DASK_BATCHES`` batches of at least ``MIN_DASK_BATCH_SIZE`` cells, at most
    ``DEFAULT_DASK_BATCH_SIZE``.  A function of the number of cells alone, so the plan still
    depends on the data only; pass the same number as ``batch_size`` to an in-memory fit to
    get the same bits."""
    n = int(n_cells)
    if n <= DEFAULT_DASK_BATCH_SIZE:
        return max(n, 1)
    even = -(-n // DEFAULT_DASK_BATCHES)
    return int(min(DEFAULT_DASK_BATCH_SIZE, max(MIN_DASK_BATCH_SIZE, even)))


@dataclass(frozen=True)
class BatchPlan:
    """Batches of whole individuals.

    ``groups[b]:groups[b + 1]`` are batch b's individuals and ``rows[b]:rows[b + 1]`` its cells
    (the cells are in the group-sorted layout, so both ranges are contiguous).
    """

    groups: np.ndarray      # (B + 1,) int64
    rows: np.ndarray        # (B + 1,) int64

    @property
    def n_batches(self) -> int:
        return self.groups.shape[0] - 1

    def __iter__(self):
        """(g0, g1, r0, r1) of each batch, in batch order."""
        for b in range(self.n_batches):
            yield (int(self.groups[b]), int(self.groups[b + 1]),
                   int(self.rows[b]), int(self.rows[b + 1]))

    def local_offsets(self, offsets: np.ndarray, b: int) -> np.ndarray:
        """Batch b's group offsets, relative to its first cell."""
        g0, g1 = int(self.groups[b]), int(self.groups[b + 1])
        return np.ascontiguousarray(offsets[g0:g1 + 1] - offsets[g0])


def plan_batches(offsets: np.ndarray, batch_size: int | None) -> BatchPlan:
    """Cut the individuals, in order, into batches of about ``batch_size`` cells, as even as
    whole individuals allow.

    B = ceil(N / batch_size) batches, cut at the individual boundary nearest each k N / B, so
    each batch holds N / B cells give or take an individual (batches of unequal size spread
    unevenly over workers: a sweep waits for the worker with the most cells).  An individual
    is never split: one with more cells than ``batch_size`` is a batch of its own.  ``None``
    gives one batch.  The plan is a function of the individuals' sizes and ``batch_size``
    alone.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    J = offsets.shape[0] - 1
    n = int(offsets[-1]) if J > 0 else 0
    if batch_size is None or J == 0 or n <= batch_size:
        return BatchPlan(groups=np.array([0, J], dtype=np.int64),
                         rows=np.array([0, n], dtype=np.int64))
    n_batches = -(-n // int(batch_size))
    targets = np.arange(1, n_batches, dtype=np.int64) * n / n_batches
    # the boundary nearest each target (the lower one on a tie), inside (0, J)
    upper = np.clip(np.searchsorted(offsets, targets, side="left"), 1, J)
    lower = upper - 1
    nearest = np.where(targets - offsets[lower] <= offsets[upper] - targets, lower, upper)
    # and around every individual larger than a batch
    large = np.nonzero(np.diff(offsets) > batch_size)[0]
    cuts = np.unique(np.concatenate([nearest, large, large + 1]))
    cuts = cuts[(cuts > 0) & (cuts < J)]
    groups = np.concatenate([[0], cuts, [J]]).astype(np.int64)
    return BatchPlan(groups=groups, rows=offsets[groups].astype(np.int64))


def add_in_order(parts):
    """Sum of the parts, left to right (the one summation order every path uses)."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


# ---------------------------------------------------------------------------------------------
# Data summaries (centres, the empirical prior, validation), one or two passes over the batches
# ---------------------------------------------------------------------------------------------
@dataclass
class ColumnSummary:
    """What the fit needs to know about the cells as a whole, from passes over the batches.

    ``means`` are exact for constant columns (as ``_data.exact_column_means``); ``cov`` is the
    sample covariance (None until the second pass).
    """

    n: int
    sums: np.ndarray
    col_min: np.ndarray
    col_max: np.ndarray
    n_nonfinite: int
    first_bad_rows: list
    cov: np.ndarray | None = None

    @property
    def constant(self) -> np.ndarray:
        return self.col_min == self.col_max

    @property
    def means(self) -> np.ndarray:
        means = self.sums / self.n
        constant = self.constant
        means[constant] = self.col_min[constant]
        return means


def batch_summary(Yb: np.ndarray, row0: int = 0) -> ColumnSummary:
    """First pass over one batch: column sums, minima, maxima, and where values are not finite
    (``row0``: the batch's first row, for the error message)."""
    bad = ~np.isfinite(Yb)
    n_bad = int(bad.sum())
    rows = (np.unique(np.nonzero(bad)[0])[:10] + row0).tolist() if n_bad else []
    return ColumnSummary(n=Yb.shape[0], sums=Yb.sum(axis=0), col_min=Yb.min(axis=0),
                         col_max=Yb.max(axis=0), n_nonfinite=n_bad, first_bad_rows=rows)


def combine_summaries(parts) -> ColumnSummary:
    """The batches' first-pass summaries added in batch order."""
    rows = [r for p in parts for r in p.first_bad_rows][:10]
    return ColumnSummary(
        n=sum(p.n for p in parts), sums=add_in_order([p.sums for p in parts]),
        col_min=np.minimum.reduce([p.col_min for p in parts]),
        col_max=np.maximum.reduce([p.col_max for p in parts]),
        n_nonfinite=sum(p.n_nonfinite for p in parts), first_bad_rows=rows)


def batch_scatter(Yb: np.ndarray, means: np.ndarray):
    """Second pass over one batch: (sum of z, z'z) of z = y - means.

    BLAS on one thread: a threaded BLAS may cut the sum over rows differently for different
    thread counts, and a dask worker's BLAS thread count is not the driver's.
    """
    from ._blas import blas_threads

    Z = Yb - means
    with blas_threads(1):
        return Z.sum(axis=0), Z.T @ Z


def summary_covariance(summary: ColumnSummary, scatters) -> np.ndarray:
    """The sample covariance from the batches' second-pass results, added in batch order."""
    s = add_in_order([sc[0] for sc in scatters])
    S = add_in_order([sc[1] for sc in scatters])
    n = summary.n
    avg = s / n
    if n < 2:
        return np.zeros_like(S)
    return (S - n * np.outer(avg, avg)) / (n - 1)


def in_memory_summary(Y: np.ndarray, plan: BatchPlan) -> ColumnSummary:
    """Both passes over an in-memory Y cut by ``plan`` (what a dask fit computes on workers)."""
    summary = combine_summaries([batch_summary(Y[r0:r1], r0) for _, _, r0, r1 in plan])
    summary.cov = summary_covariance(
        summary, [batch_scatter(Y[r0:r1], summary.means) for _, _, r0, r1 in plan])
    return summary


# ---------------------------------------------------------------------------------------------
# Passes of the fit
# ---------------------------------------------------------------------------------------------
def combine_cell_stats(parts):
    """(N_jl, n, s1, s2, H) of the whole data from the batches' results, in batch order.

    N_jl's rows are the batches' own individuals, so they are stacked, not added.
    """
    if len(parts) == 1:
        return tuple(parts[0])
    N_jl = np.ascontiguousarray(np.vstack([p[0] for p in parts]))
    n, s1, s2 = (add_in_order([p[i] for p in parts]) for i in (1, 2, 3))
    H = float(add_in_order([float(p[4]) for p in parts]))
    return N_jl, n, s1, s2, H


def batched_cell_step(be, Y, offsets, plan: BatchPlan, rho, elog_omega, m, lam, W, nu, centre,
                      xi_out, n_threads, group_weight, family=None):
    """The cell step of the atoms' ``family`` (``_atoms``; default full) run batch by batch
    over in-memory cells (xi written in place), returning the statistics of all cells added
    in batch order."""
    step = be.cell_step if family is None else family.fn(be, "cell_step")
    if plan.n_batches == 1:
        return step(Y, offsets, rho, elog_omega, m, lam, W, nu, centre, xi_out, n_threads,
                    group_weight)
    parts = []
    for b, (g0, g1, r0, r1) in enumerate(plan):
        w = None if group_weight is None else np.ascontiguousarray(group_weight[g0:g1])
        parts.append(step(Y[r0:r1], plan.local_offsets(offsets, b),
                          np.ascontiguousarray(rho[g0:g1]), elog_omega, m, lam, W, nu,
                          centre, xi_out[r0:r1], n_threads, w))
    return combine_cell_stats(parts)


def batched_weighted_stats(be, Y, w, centre, plan: BatchPlan, family=None):
    """(n, s1, s2) of all cells with weights ``w`` (N, G), batch by batch in batch order
    (the statistics of the atoms' ``family``; default full)."""
    stats = be.weighted_stats if family is None else family.fn(be, "stats")
    if plan.n_batches == 1:
        return stats(Y, w, centre)
    parts = [stats(Y[r0:r1], np.ascontiguousarray(w[r0:r1]), centre)
             for _, _, r0, r1 in plan]
    return tuple(add_in_order([p[i] for p in parts]) for i in range(3))


# ---------------------------------------------------------------------------------------------
# Columns of xi, batch by batch (the cell-atom merges)
# ---------------------------------------------------------------------------------------------
def weighted_entropy(be, xi_rows: np.ndarray, weights) -> float:
    """-sum_i w_i sum_l xi_il log xi_il (the backend's entropy when ``weights`` is None)."""
    if weights is None:
        return be.categorical_entropy(xi_rows)
    from scipy.special import entr

    return float(np.dot(weights, entr(xi_rows).sum(axis=1)))


def entropies_of_sums(be, xi_rows: np.ndarray, weights, column_sets) -> list:
    """For each set of xi's columns, sum_i w_i h(sum of those columns in row i) over the given
    rows (h(x) = -x log x; the backend's entropy, as H_xi is computed)."""
    return [weighted_entropy(be, np.ascontiguousarray(
        xi_rows[:, list(cols)].sum(axis=1, keepdims=True)), weights) for cols in column_sets]


def batched_entropies_of_sums(be, prob, xi, zeta, column_sets) -> list:
    """``entropies_of_sums`` over all cells of ``xi``, each individual's cells weighted by
    ``zeta`` (J,) or None, batch by batch and added in batch order (on the workers when xi is
    kept there)."""
    if isinstance(xi, np.ndarray):
        parts = []
        for g0, g1, r0, r1 in prob.batches:
            w = (None if zeta is None
                 else np.repeat(zeta[g0:g1], np.diff(prob.offsets[g0:g1 + 1])))
            parts.append(entropies_of_sums(be, xi[r0:r1], w, column_sets))
    else:
        parts = xi.entropies_of_sums(prob, zeta, column_sets)
    return [float(add_in_order([p[i] for p in parts])) for i in range(len(column_sets))]


def batched_cell_map(be, prob, xi, zeta, func, *args) -> list:
    """``func(be, Y_b, xi_b, offsets_b, zeta_b, row0, *args)`` for every batch b, in batch
    order: a move's pass that reads the cells' y with their current xi (on the workers when xi
    is kept there, ``_dask.WorkerXi``; in memory the batches of ``prob.Y`` and ``xi``).

    ``offsets_b`` are the batch's group offsets from its first cell, ``zeta_b`` its
    individuals' rows of ``zeta`` (J,) or None, ``row0`` its first cell's row.  ``func`` must
    be a module-level function (it is sent to the workers), read its arrays only, and be a
    function of its batch alone: then the results are the same on any number of workers.
    """
    if not isinstance(xi, np.ndarray):
        return xi.map_cells(prob, zeta, func, args)
    parts = []
    for b, (g0, g1, r0, r1) in enumerate(prob.batches):
        z = None if zeta is None else np.ascontiguousarray(zeta[g0:g1])
        parts.append(func(be, prob.Y[r0:r1], xi[r0:r1],
                          prob.batches.local_offsets(prob.offsets, b), z, r0, *args))
    return parts


def fold_columns(xi, groups):
    """Fold each group of xi's columns into its first (column by column: no N x |group|
    temporary); returns xi (in place), or a folded stand-in for an xi kept on workers."""
    if not isinstance(xi, np.ndarray):
        return xi.folded(groups)
    for group in groups:
        for l in group[1:]:
            xi[:, group[0]] += xi[:, l]
            xi[:, l] = 0.0
    return xi
