"""Fitting cells held in a dask array: each pass over the cells is a map over the batches of
the batch plan (``_batches``) on the active dask scheduler, reduced on the driver in batch
order, so the fit has the same bits as the in-memory fit with that plan.

What runs where:

* the workers read their batch straight from the array's store (zarr, say), run the cell step
  (the C++ kernel releases the GIL) and return the batch's statistics: its individuals' rows
  of N_jl, the weighted y statistics (L x (1 + p + p^2)) and the entropy of q(M);
* the driver holds only individual-level (J x ...) state and these statistics; xi never
  leaves the workers.  It is recomputed from scratch by every sweep, so the driver keeps, in
  place of xi, the inputs of the last cell step and the column permutation the moves applied
  since (``WorkerXi``): a last map gives the cell labels, and ``cell_probs_`` is a lazy dask
  array (8 N L bytes would not fit where the cells do not).

The scheduler is dask's default: a ``distributed.Client`` if one exists, otherwise the local
threaded scheduler (dask's convention; nothing to configure here).  Dask retries the task of a
worker that dies; every task is a pure function of its inputs, so a retry gives the same bits.

This module imports dask; ``import nestedatoms`` does not import it.
"""

from __future__ import annotations

import functools
import os
import threading

import numpy as np

from ._data import GroupLayout
from ._batches import (ColumnSummary, batch_scatter, batch_summary, combine_cell_stats,
                       combine_summaries, plan_batches, summary_covariance)

__all__ = ["is_dask_array", "DaskData", "WorkerXi", "prepare_dask_data", "initial_state",
           "write_sorted_zarr"]


def is_dask_array(a) -> bool:
    """Whether ``a`` is a dask array (without importing dask)."""
    return type(a).__module__.split(".")[0] == "dask" and hasattr(a, "chunks")


class DaskData(GroupLayout):
    """The cells as a dask array (rows grouped by individual, in sorted label order), their
    offsets, the group-level features, and the batch plan's summaries of the cells.

    Stands in for ``_data.NestedData``: the cells' order is the caller's, so ``order`` is the
    identity and is not stored.
    """

    def __init__(self, Y, offsets, X, groups, summary, batch_size, backend, n_threads):
        self.Y, self.offsets, self.X, self.groups = Y, offsets, X, groups
        self.summary = summary
        self.plan = plan_batches(offsets, batch_size)
        self.backend = backend
        self.n_threads = n_threads          # the estimator's n_threads, resolved on the worker
        self._blocks = None
        self._kept = None                   # ``_kept_cells.KeptCells`` once decided, or False

    @property
    def order(self) -> np.ndarray:
        return np.arange(self.n_cells, dtype=np.int64)

    def to_caller_order(self, per_cell):
        return per_cell

    def kept(self):
        """The batches' rows kept in the workers' memory (``_kept_cells``), or None: decided
        on the first pass, for a Y read from a store, and kept until ``release_cells``."""
        if self._kept is None:
            from ._kept_cells import keep

            blocks = self.store_blocks()
            readers = all(isinstance(b, _BatchReader) for b in blocks)
            nbytes = self.n_cells * int(self.Y.shape[1]) * 8
            self._kept = (readers and keep(blocks, nbytes)) or False
        return self._kept or None

    def release_cells(self) -> None:
        """Let the kept cells go (the fit has ended); a later pass keeps them again."""
        if self._kept:
            self._kept.release()
        self._kept = None

    def map(self, func, per_batch=None, *common):
        """``func(Y_b, *per_batch[b], *common)`` for every batch b on the active scheduler;
        the results in batch order."""
        per_batch = per_batch or [() for _ in range(self.plan.n_batches)]
        kept = self.kept()
        if kept is not None:
            from ._kept_cells import map_kept

            return map_kept(kept, _call_each, func, per_batch, common)
        return self._map_store(func, per_batch, common)

    def store_blocks(self):
        """Per batch, what its task reads its rows of Y from: a ``_BatchReader`` (the task
        reads the batch's chunks from the store itself), or, when Y's graph carries its data
        (``da.from_array`` of an in-memory array), one dask.delayed of the rows."""
        if self._blocks is None:
            readers = [_BatchReader(self.Y[r0:r1]) for _, _, r0, r1 in self.plan]
            if all(r.small() for r in readers):
                self._blocks = readers
            else:
                sizes = tuple(int(n) for n in np.diff(self.plan.rows))
                batched = self.Y.rechunk((sizes, (self.Y.shape[1],)))
                self._blocks = list(batched.to_delayed().ravel())
        return self._blocks

    def _map_store(self, func, per_batch, common):
        """``map`` with every batch's task reading its rows from the store."""
        import dask

        # the arguments common to all batches (the global factors of a sweep, ~0.3 MB at
        # L = p = 30) are one node of the graph, sent to each worker once, not once per task
        shared = dask.delayed(common, pure=True, traverse=False)
        tasks = [dask.delayed(_call)(func, block, args, shared)
                 for block, args in zip(self.store_blocks(), per_batch)]
        return list(dask.compute(*tasks))

    def group_slices(self, per_group):
        """``per_group`` (J, ...) cut into the batches' rows (None stays None)."""
        if per_group is None:
            return [None] * self.plan.n_batches
        return [np.ascontiguousarray(per_group[g0:g1]) for g0, g1, _, _ in self.plan]

    def local_offsets(self):
        return [self.plan.local_offsets(self.offsets, b) for b in range(self.plan.n_batches)]


class _BatchReader:
    """A batch's rows of Y as a small dask graph that the batch's task computes itself, on
    its worker, with dask's synchronous scheduler.

    Handed to the scheduler as the task's input instead, the batch's store chunks would be
    read by any worker and shipped to the one that joins them (measured: a third of a
    2-worker sweep on a OneK1K-sized store); read inside the task, they never move.  The
    rows are the same, so are the bits.
    """

    _MAX_GRAPH_BYTES = 1 << 20

    def __init__(self, rows):
        self.rows = rows

    def small(self) -> bool:
        """Whether the graph is a recipe (a store to read) rather than the data itself."""
        import pickle

        try:
            return len(pickle.dumps(self.rows)) <= self._MAX_GRAPH_BYTES
        except Exception:           # not picklable: let dask ship the rows instead
            return False

    def read(self) -> np.ndarray:
        """The rows as float64, in this thread's reused buffer (``_cell_buffer``): each chunk
        is written in place as it is read, instead of joined into a fresh array and copied
        again into a contiguous one.  Under the nanny's low ``MALLOC_TRIM_THRESHOLD_`` every
        fresh batch-sized array is paged in anew; the copies cost more than the reads."""
        import dask.array as da

        out = _cell_buffer("y", self.rows.shape[0], self.rows.shape[1])
        da.store(self.rows, out, lock=False, scheduler="sync")
        return out


# ---------------------------------------------------------------------------------------------
# Worker side: small pure functions of a batch and J-level arrays
# ---------------------------------------------------------------------------------------------
_buffers = threading.local()


def _as_cells(Yb) -> np.ndarray:
    """A batch's cells as a C-contiguous float64 array (a read batch lives in this thread's
    buffer until the thread reads its next batch: use it within the task)."""
    if isinstance(Yb, _BatchReader):
        return Yb.read()
    return np.ascontiguousarray(Yb, dtype=np.float64)


def _cell_buffer(name: str, n: int, width: int) -> np.ndarray:
    """A per-thread (n, width) float64 buffer, reused from batch to batch: allocating a
    batch-sized array afresh for every task costs page faults on every call, all the more
    under the nanny's low MALLOC_TRIM_THRESHOLD_, which hands freed memory straight back to
    the system."""
    cache = getattr(_buffers, name, None)
    if cache is None or cache.shape[1] != width or cache.shape[0] < n:
        cache = np.empty((n, width))
        setattr(_buffers, name, cache)
    return cache[:n]


def _xi_buffer(n: int, L: int) -> np.ndarray:
    return _cell_buffer("xi", n, L)


def _call(func, block, args, common):
    with _heap_kept():
        return func(block, *args, *common)


def _call_each(func, blocks, per_batch, common):
    """``_call`` for several batches in turn, in one task (``_kept_cells.map_kept``)."""
    with _heap_kept():
        return [func(block, *args, *common) for block, args in zip(blocks, per_batch)]


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_heap_lock = threading.Lock()
_heap_users = [0]


@functools.lru_cache(maxsize=1)
def _glibc():
    """glibc through ctypes, or None (another C library, another system)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


class _heap_kept:
    """Within a task, let glibc keep the memory it frees, and hand it back when the task ends.

    The distributed nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_`` set low, so that
    freed memory goes straight back to the system.  Setting it also fixes glibc's mmap
    threshold at 128 KB: every larger allocation is a fresh mapping, paged in anew.  The cell
    step's matrix products (Eigen's blocking buffers, a few hundred KB each, twice per block of
    256 cells) and zarr's chunk buffers then cost 18,600 page faults per 53k-cell batch, and
    the cell step took 1.8x as long (0.106 s against 0.058 s, measured in one process with and
    without the variable).  So while a task runs the thresholds are raised (the task reuses
    its heap), and when the last running task ends they are put back and the heap is trimmed,
    which is what the nanny wants.  Nothing changes without that variable or without glibc.
    """

    def __enter__(self):
        self.libc = None
        if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
            return self
        with _heap_lock:
            libc = _glibc()
            if libc is None:
                return self
            self.libc = libc
            if _heap_users[0] == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, 1 << 25)      # glibc's largest: 32 MB
                libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
            _heap_users[0] += 1
        return self

    def __exit__(self, *exc):
        if self.libc is None:
            return
        with _heap_lock:
            _heap_users[0] -= 1
            if _heap_users[0] == 0:
                trim = os.environ.get("MALLOC_TRIM_THRESHOLD_", "")
                mmap = os.environ.get("MALLOC_MMAP_THRESHOLD_", "")
                self.libc.mallopt(_M_TRIM_THRESHOLD, int(trim) if trim.isdigit() else 128 << 10)
                self.libc.mallopt(_M_MMAP_THRESHOLD, int(mmap) if mmap.isdigit() else 128 << 10)
                self.libc.malloc_trim(0)


def _w_summary(Yb, row0):
    return batch_summary(_as_cells(Yb), row0)


def _w_scatter(Yb, means):
    return batch_scatter(_as_cells(Yb), means)


def _w_centre_counts(Yb, ref, centres, k):
    from ._init import nearest_centre

    return np.bincount(nearest_centre(_as_cells(Yb), ref, centres), minlength=k)


def _w_start_stats(Yb, offsets, zeta, ref, centres, rank, L, centre, backend, family):
    """The statistics of the k-means start on one batch (as ``_init.state_from_labels``)."""
    from ._atoms import family_named
    from ._backend import get_backend
    from ._init import label_counts, label_stats, nearest_centre

    Y = _as_cells(Yb)
    labels = rank[nearest_centre(Y, ref, centres)]
    w = None if zeta is None else np.repeat(zeta, np.diff(offsets))
    return label_counts(labels, offsets, L), label_stats(
        get_backend(backend), Y, labels, L, w, centre, family_named(family))


def _apply_ops(xi, ops):
    """Replay on a batch's xi what the moves did to xi in memory since the cell step."""
    from ._batches import fold_columns

    for op in ops:
        if op[0] == "perm":
            xi[...] = xi[:, op[1]]                  # as the sort move permutes xi in memory
        else:
            fold_columns(xi, op[1])                 # as the atom merges fold its columns


def _w_cell_step(Yb, offsets, rho, zeta, inputs, backend, n_threads, want="stats", ops=(),
                 now_zeta=None, column_sets=(), row0=0, call=None):
    """The cell step on one batch: its statistics, or (``want``) its labels, its xi, the
    entropies of sums of xi's columns (``column_sets``, cells weighted by ``now_zeta``), or
    ``"map"``: ``func(be, Y, xi, offsets, now_zeta, row0, *args)`` of ``call = (func, args)``
    (``_batches.batched_cell_map``)."""
    from ._backend import get_backend, resolve_n_threads

    from ._atoms import family_named

    elog_omega, m, lam, W, nu, centre, family = inputs
    Y = _as_cells(Yb)
    L = elog_omega.shape[0]
    be = get_backend(backend)
    xi = np.empty((Y.shape[0], L)) if want == "probs" else _xi_buffer(Y.shape[0], L)
    stats = family_named(family).cell_step(be, Y, offsets, rho, elog_omega, (m, lam, W, nu),
                                           centre, xi, resolve_n_threads(n_threads), zeta)
    if want == "stats":
        return stats
    _apply_ops(xi, ops)
    if want == "map":
        func, args = call
        return func(be, Y, xi, offsets, now_zeta, row0, *args)
    if want == "entropies":
        from ._batches import entropies_of_sums

        w = None if now_zeta is None else np.repeat(now_zeta, np.diff(offsets))
        return entropies_of_sums(be, xi, w, column_sets)
    return xi if want == "probs" else np.argmax(xi, axis=1)


# ---------------------------------------------------------------------------------------------
# Driver side
# ---------------------------------------------------------------------------------------------
class WorkerXi:
    """Stands in for xi (N, L) when the cells are on dask workers.

    Holds how to recompute it: the inputs of the last cell step (J-level: rho, E log omega,
    the y atoms, the donor weights) and what the moves did to xi since (column permutations
    and folds, replayed in order).  Immutable, so the fit's checkpoint and restarts may share
    it; every change makes a new one.
    """

    ndim = 2

    def __init__(self, n_cells: int, L: int, step=None, ops=()):
        self.shape = (int(n_cells), int(L))
        # (rho, zeta, (elog_omega, m, lam, W, nu, centre, family name)) or None
        self._step = step
        self._ops = tuple(ops)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def permuted(self, perm) -> "WorkerXi":
        """xi[:, perm], as a new stand-in."""
        return WorkerXi(*self.shape, self._step, self._ops + (("perm", np.asarray(perm)),))

    def folded(self, groups) -> "WorkerXi":
        """xi with each group of columns folded into its first, as a new stand-in."""
        groups = [list(map(int, g)) for g in groups]
        return WorkerXi(*self.shape, self._step, self._ops + (("fold", groups),))

    def cell_step(self, be, prob, st, n_threads):
        """The cell step on the workers: (the new stand-in, (N_jl, n, s1, s2, H))."""
        from ._atoms import y_family
        from ._steps import _elog_omega, group_weights

        inputs = (_elog_omega(be, st), st.my, st.lamy, st.Wy, st.nuy, prob.y_centre,
                  y_family(prob).name)
        step = (st.rho.copy(), group_weights(prob, st), inputs)
        stats = self._map(prob, "stats", step=step)
        return WorkerXi(*self.shape, step), combine_cell_stats(stats)

    def _map(self, prob, want, step=None, now_zeta=None, column_sets=(), call=None):
        data = prob.data
        rho, zeta, inputs = step or self._require_step()
        per_batch = zip(data.local_offsets(), data.group_slices(rho), data.group_slices(zeta),
                        data.group_slices(now_zeta), (int(r0) for _, _, r0, _ in data.plan))
        return data.map(_w_cell_step_each, list(per_batch), inputs, data.backend,
                        data.n_threads, want, self._ops, column_sets, call)

    def _require_step(self):
        if self._step is None:
            raise ValueError("no cell step has run yet")
        return self._step

    def entropies_of_sums(self, prob, now_zeta, column_sets) -> list:
        """Each batch's ``_batches.entropies_of_sums`` of the current xi, in batch order."""
        return self._map(prob, "entropies", now_zeta=now_zeta,
                         column_sets=[list(map(int, c)) for c in column_sets])

    def map_cells(self, prob, now_zeta, func, args) -> list:
        """``_batches.batched_cell_map`` on the workers: each recomputes its batch's xi."""
        return self._map(prob, "map", now_zeta=now_zeta, call=(func, tuple(args)))

    def labels(self, prob) -> np.ndarray:
        """argmax of each cell's xi (N,), computed by a last map over the batches."""
        return np.concatenate(self._map(prob, "labels")).astype(np.int64, copy=False)

    def probs(self, prob):
        """xi (N, L) as a lazy dask array, one chunk per batch (computed when asked for)."""
        import dask
        import dask.array as da

        data = prob.data
        rho, zeta, inputs = self._require_step()
        parts = []
        # from the store (a lazy array that holds the kept cells would keep them in the
        # workers' memory for as long as it lives)
        for block, offsets, rho_b, zeta_b, (_, _, r0, r1) in zip(
                data.store_blocks(), data.local_offsets(), data.group_slices(rho),
                data.group_slices(zeta), data.plan):
            task = dask.delayed(_call)(_w_cell_step, block, (offsets, rho_b, zeta_b),
                                       (inputs, data.backend, data.n_threads, "probs",
                                        self._ops))
            parts.append(da.from_delayed(task, shape=(r1 - r0, self.shape[1]),
                                         dtype=np.float64))
        return da.concatenate(parts, axis=0)


def _w_cell_step_each(Yb, offsets, rho, zeta, now_zeta, row0, inputs, backend, n_threads, want,
                      ops, column_sets, call):
    return _w_cell_step(Yb, offsets, rho, zeta, inputs, backend, n_threads, want, ops,
                        now_zeta, column_sets, row0, call)


def initial_state(be, prob, rng):
    """The default start of ``_init.initial_state``, with the cells on the workers: k-means
    centres from the same subsample, every cell's nearest centre on its worker, and the
    statistics of that partition added in batch order."""
    from ._init import (_MAX_KMEANS_POINTS, group_features, kmeans_centres, kmeans_labels,
                        kmeans_sample, one_hot, state_from_stats)
    from ._atoms import y_family
    from ._steps import composition_weights

    data = prob.data
    n, L = data.n_cells, prob.L
    k = int(min(L, n))
    offsets = data.local_offsets()
    zeta = composition_weights(data.group_sizes, prob.donor_concentration)
    if k <= 1:      # one atom: every cell in it (as kmeans_labels)
        ref, centres = np.zeros(data.Y.shape[1]), np.zeros((1, data.Y.shape[1]))
        rank = np.zeros(1, dtype=np.int64)
    else:
        idx = None if n <= _MAX_KMEANS_POINTS else kmeans_sample(n, _MAX_KMEANS_POINTS, rng)
        sub = data.Y if idx is None else data.Y[idx]
        ref, centres = kmeans_centres(_as_cells(sub.compute()), k, rng)
        counts = np.sum(data.map(_w_centre_counts, None, ref, centres, k), axis=0)
        rank = np.empty_like(counts)      # _init.relabel_by_size, from the counts
        rank[np.argsort(-counts, kind="stable")] = np.arange(counts.size)
    parts = data.map(_w_start_stats, list(zip(offsets, data.group_slices(zeta))), ref, centres,
                     rank, L, prob.y_centre, data.backend, y_family(prob).name)
    N_jl = np.ascontiguousarray(np.vstack([p[0] for p in parts]))
    y_stats = combine_cell_stats([(None, *p[1], 0.0) for p in parts])[1:4]
    group_labels = kmeans_labels(group_features(prob, N_jl), prob.K, rng)
    return state_from_stats(be, prob, WorkerXi(n, L), one_hot(group_labels, prob.K), N_jl,
                            y_stats)


# ---------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------
_SORT_HINT = ("Sort the cells by individual once and write them to zarr, e.g. "
              "nestedatoms.write_sorted_zarr(Y, groups, 'cells.zarr'), then fit "
              "dask.array.from_zarr('cells.zarr/Y') with the groups it wrote.")


def _group_offsets(groups, n_cells: int):
    """(offsets, unique labels) of cells grouped by individual in sorted label order, or a
    clear error saying how to get there."""
    from ._data import _factorize_groups

    if is_dask_array(groups):
        groups = groups.compute()
    codes, uniques = _factorize_groups(groups, n_cells)
    if not bool(np.all(codes[1:] >= codes[:-1])):
        first = int(np.nonzero(codes[1:] < codes[:-1])[0][0]) + 1
        raise ValueError(
            f"a dask array Y must have its cells grouped by individual, in sorted label order "
            f"(each individual's cells contiguous), so that batches of whole individuals are "
            f"runs of rows; row {first} (group {uniques[codes[first]]!r}) comes after a row of "
            f"group {uniques[codes[first - 1]]!r}. {_SORT_HINT}")
    offsets = np.zeros(uniques.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(codes, minlength=uniques.shape[0]), out=offsets[1:])
    return offsets, uniques


def _check_dask_Y(Y) -> None:
    if Y.ndim != 2:
        raise ValueError(f"Y must be 2-D (rows x features), got shape {Y.shape}.")
    if any(np.isnan(s) for s in Y.shape):
        raise ValueError("Y has rows of unknown count (a dask array with unknown chunk "
                         "sizes); call Y.compute_chunk_sizes() first.")
    if not (np.issubdtype(Y.dtype, np.floating) or np.issubdtype(Y.dtype, np.integer)):
        raise TypeError(f"Y must be a real numeric dask array, got dtype {Y.dtype}.")
    if Y.shape[0] == 0 or Y.shape[1] == 0:
        raise ValueError(f"Y is empty (shape={Y.shape}); it needs at least one row and one "
                         f"column.")


def _check_summary(summary: ColumnSummary) -> None:
    """The checks ``_data.as_float_matrix`` and ``check_constant_columns`` make on an
    in-memory Y, from the batches' summary."""
    from ._data import _MAX_OFFSET_TO_SPREAD, _MAX_SPREAD, _MIN_SPREAD

    if summary.n_nonfinite:
        raise ValueError(
            f"Y contains {summary.n_nonfinite} NaN or infinite value(s), in row(s) "
            f"{summary.first_bad_rows}{' ...' if summary.n_nonfinite > 10 else ''}; remove or "
            f"impute them before fitting.")
    col_range = summary.col_max - summary.col_min
    spread = float(np.max(col_range))
    if spread > _MAX_SPREAD or 0.0 < spread < _MIN_SPREAD:
        raise ValueError(f"Y has values spread over {spread:.3g}, too large or too small to "
                         f"square in float64; rescale it (e.g. standardise each column).")
    varying = col_range > 0
    if varying.any():
        offset = np.maximum(np.abs(summary.col_max), np.abs(summary.col_min))
        if np.max(offset[varying] / col_range[varying]) > _MAX_OFFSET_TO_SPREAD:
            raise ValueError("a column of Y varies too little around its offset for float64 "
                             "to fit it; centre Y first (Y - Y.mean(axis=0)) or standardise "
                             "its columns.")
    constant = summary.constant
    if summary.n >= 2 and constant.any() and not constant.all():
        idx = np.nonzero(constant)[0]
        raise ValueError(
            f"Y has {idx.size} constant column(s) ({', '.join(f'Y[:, {i}]' for i in idx[:10])})"
            f": a constant feature carries no information but biases the fit towards fewer "
            f"clusters. Drop it: Y[:, {np.nonzero(~constant)[0].tolist()}].")


def prepare_dask_data(Y, groups, X, batch_size: int, backend: str, n_threads):
    """Validate a dask Y and summarise it in two passes over the batches; None when the plan
    has one batch (the caller then reads Y and fits in memory: one batch is one task, and
    there is nothing to spread over workers)."""
    from ._data import _align_X

    _check_dask_Y(Y)
    offsets, uniques = _group_offsets(groups, int(Y.shape[0]))
    plan = plan_batches(offsets, batch_size)
    if plan.n_batches == 1:
        return None
    Xa = None if X is None else _align_X(X, uniques)
    data = DaskData(Y, offsets, Xa, uniques, None, batch_size, backend, n_threads)
    rows = [(int(r0),) for _, _, r0, _ in plan]
    summary = combine_summaries(data.map(_w_summary, rows))
    _check_summary(summary)
    summary.cov = summary_covariance(summary, data.map(_w_scatter, None, summary.means))
    data.summary = summary
    return data


# ---------------------------------------------------------------------------------------------
# Output helper
# ---------------------------------------------------------------------------------------------
def write_sorted_zarr(Y, groups, path, chunk_rows: int = 1 << 14, compress: bool = False):
    """Write cells sorted by individual (stable, by sorted group label) to a zarr store, once,
    so that a dask fit can read batches of whole individuals as runs of rows.

    ``Y``: (N, p) array-like or dask array; ``groups``: (N,) labels.  Writes ``path/Y``
    (float64, ``chunk_rows`` rows per chunk) and ``path/groups`` (the sorted labels, as
    strings) and returns ``(dask.array.from_zarr(path/Y), sorted groups)`` ready for
    ``NestedAtomsModel(...).fit``.  The sorted order is ``numpy.argsort(codes, kind="stable")``
    of the labels' codes, the order an in-memory fit uses.  ``compress=False``: principal
    components barely compress (by 8% with zarr's default zstd on a OneK1K-shaped cohort),
    while decompressing them took half of a dask sweep, since every sweep reads every cell.
    ``chunk_rows``: zarr reads whole chunks, so a batch reads every chunk it overlaps; 16384
    rows (3.9 MB at p = 30) keep that close to the batch itself (with 65536, the read pass over
    53k-cell batches took ~1.5x as long).
    """
    import dask.array as da
    import zarr

    from ._data import _factorize_groups

    n = int(Y.shape[0])
    codes, uniques = _factorize_groups(np.asarray(groups), n)
    order = np.argsort(codes, kind="stable")
    Yd = Y if is_dask_array(Y) else da.from_array(np.asarray(Y), chunks=(chunk_rows, -1))
    sorted_Y = Yd[order].astype(np.float64).rechunk((chunk_rows, -1))
    sorted_groups = np.asarray(uniques)[codes[order]]
    root = zarr.open_group(str(path), mode="w")
    da.to_zarr(sorted_Y, root.store, component="Y", overwrite=True,
               **({} if compress else {"compressors": None}))
    if sorted_groups.dtype.kind in "OUS":
        # zarr's variable-length strings (labels of other types are written as they are)
        sorted_groups = sorted_groups.astype(str)
        stored = root.create_array("groups", shape=sorted_groups.shape, dtype=str)
        stored[:] = sorted_groups
    else:
        root.create_array("groups", data=sorted_groups)
    return da.from_zarr(str(path), component="Y"), sorted_groups
