"""Cut a cell atom in two by 2-means on its cells, move one half to an empty atom, let those
cells re-choose among all atoms for a few local sweeps; keep if the ELBO rises."""

from __future__ import annotations

import numpy as np

from .._state import Problem, State
from .._steps import (cell_weights, elbo, group_weights, weighted_entropy,
                      weighted_y_stats)
from ._base import gain_ok, refresh_without_cells, restore, snapshot


def _local_cell_sweep(be, prob: Problem, st: State, rows: np.ndarray, cell_group: np.ndarray,
                      n_threads: int = 1) -> None:
    """Exact coordinate update of q(M_ji) for the given cells only (``rows``: ascending indices
    into the group-sorted cells), with the cached statistics (N_jl, y statistics, entropy of
    q(M)) corrected by the change of those rows.

    The update is the backend's cell step run on those rows (ascending, so they stay grouped
    by individual as its offsets require), so it shares the cell step's numerics: in the C++
    core, the sparse xi (responsibilities below e^-600 of a cell's largest set to 0) and the
    flush of subnormal numbers.  A NumPy version of it left subnormals in xi, which made this
    move take over half of a OneK1K-sized fit (x86 processes them ~100x slower).
    """
    Y = prob.Y[rows]
    groups = cell_group[rows]
    counts = np.bincount(groups, minlength=prob.data.n_groups)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    old = st.xi[rows]
    new = np.empty_like(old)
    elog_omega = be.expected_log_stick_weights(st.u_a, st.u_b)
    _, _, _, _, entropy_new = be.cell_step(Y, offsets, st.rho, elog_omega, st.my, st.lamy,
                                           st.Wy, st.nuy, prob.y_centre, new, n_threads,
                                           group_weights(prob, st))
    # the statistics of the change itself, not the difference of two large sums, and only of
    # the atoms whose responsibilities changed (far atoms have xi exactly 0 before and after)
    delta = new - old
    cols = np.nonzero((delta != 0.0).any(axis=0))[0]
    w = cell_weights(prob, st, rows)
    n, s1, s2 = weighted_y_stats(be, prob, delta[:, cols], w, rows)
    # fresh arrays, as every other update makes, so no earlier reference sees the change
    st.y_n, st.y_s1, st.y_s2 = st.y_n.copy(), st.y_s1.copy(), st.y_s2.copy()
    st.y_n[cols] += n
    st.y_s1[cols] += s1
    st.y_s2[cols] += s2
    present = counts > 0
    st.N_jl[present] += np.add.reduceat(delta, offsets[:-1][present], axis=0)
    st.H_xi += entropy_new - weighted_entropy(be, old, w)
    st.xi[rows] = new


def _recompute_cell_stats(be, prob: Problem, st: State, cols) -> None:
    """Exact y statistics and N_jl of the given atoms from xi (the moved atoms only)."""
    cols = list(cols)
    w = np.ascontiguousarray(st.xi[:, cols])
    n, s1, s2 = weighted_y_stats(be, prob, w, cell_weights(prob, st))
    st.y_n[cols], st.y_s1[cols], st.y_s2[cols] = n, s1, s2
    st.N_jl[:, cols] = np.add.reduceat(w, prob.offsets[:-1], axis=0)


def split_cell_atoms(be, prob: Problem, st: State, n_threads: int = 1, max_atoms: int = 8,
                     n_local_sweeps: int = 3, min_cells: int | None = None) -> bool:
    """Try splitting the largest atoms in two; keep each split that raises the ELBO.

    The cells mostly assigned to atom l are cut by 2-means; one half moves (with its xi mass)
    to an empty atom, and the cells of the atom then get ``n_local_sweeps`` exact updates of
    their q(M), each followed by the cheap global refresh.  Costs O(size of the atom) per try.
    """
    from .._init import kmeans_labels

    p = prob.Y.shape[1]
    min_cells = 2 * (p + 2) if min_cells is None else min_cells
    cell_group = prob.data.cell_group
    changed = False
    tried = 0
    for l in [int(l) for l in np.argsort(-st.y_n, kind="stable")]:
        if tried >= max_atoms:
            break
        empty = np.nonzero(st.y_n < 1e-8)[0]
        if empty.size == 0:
            break
        rows = np.nonzero(st.xi[:, l] > 0.5)[0]
        if rows.size < min_cells:
            continue
        tried += 1
        halves = kmeans_labels(prob.Y[rows], 2, np.random.default_rng(l))
        if halves.min() == halves.max():
            continue
        target = int(empty[0])
        before = elbo(be, prob, st)
        saved = snapshot(st)
        saved_rows = st.xi[rows].copy()
        moved = rows[halves == 1]
        st.xi[moved, target] = st.xi[moved, l]       # moving mass between columns leaves the
        st.xi[moved, l] = 0.0                        # entropy of q(M) unchanged
        _recompute_cell_stats(be, prob, st, (l, target))
        refresh_without_cells(be, prob, st, n_threads)
        for _ in range(n_local_sweeps):
            _local_cell_sweep(be, prob, st, rows, cell_group, n_threads)
            refresh_without_cells(be, prob, st, n_threads)
        if gain_ok(elbo(be, prob, st), before):
            changed = True
            continue
        restore(st, saved)
        st.xi[rows] = saved_rows
    return changed


