"""Cut a cell atom in two by 2-means on its cells, move one half to an empty atom, let those
cells re-choose among all atoms for a few local sweeps; keep if the ELBO rises."""

from __future__ import annotations

import numpy as np

from .._atoms import y_atoms, y_family
from .._state import Problem, State
from .._steps import (cell_weights, elbo, group_weights, weighted_y_stats)
from ._base import gain_ok, refresh_without_cells, restore, snapshot


def _local_cell_sweep(be, prob: Problem, st: State, rows: np.ndarray,
                      n_threads: int = 1) -> None:
    """Exact coordinate update of q(M_ji) for the given cells only (``rows``: ascending indices
    into the group-sorted cells), with the cached statistics (N_jl, y statistics, entropy of
    q(M)) corrected by the change of those rows.

    One backend call (``cell_step_rows``): the cell step's arithmetic on those rows, written
    into xi in place, returning the statistics of the change itself (not the difference of two
    large sums).  It shares the cell step's numerics: in the C++ core, the sparse xi
    (responsibilities below e^-600 of a cell's largest set to 0) and the flush of subnormal
    numbers, which x86 processes ~100x slower.  No copy of the rows' Y or xi is made.
    """
    elog_omega = be.expected_log_stick_weights(st.u_a, st.u_b)
    dN, dn, ds1, ds2, dH = y_family(prob).cell_step_rows(
        be, prob.Y, prob.offsets, rows, st.rho, elog_omega, y_atoms(st), prob.y_centre, st.xi,
        n_threads, group_weights(prob, st))
    # fresh arrays, as every other update makes, so no earlier reference sees the change
    # (atoms the rows did not touch get exact zeros added)
    st.y_n, st.y_s1, st.y_s2 = st.y_n + dn, st.y_s1 + ds1, st.y_s2 + ds2
    st.N_jl = st.N_jl + dN
    st.H_xi += dH


def _move_mass(be, prob: Problem, st: State, moved: np.ndarray, source: int,
               target: int) -> None:
    """Move the xi mass of the cells ``moved`` from atom ``source`` to atom ``target``, with
    N_jl and the y statistics corrected by the statistics of those cells alone (moving mass
    between columns leaves the entropy of q(M) unchanged)."""
    w = st.xi[moved, source]
    n, s1, s2 = weighted_y_stats(be, prob, w[:, None], cell_weights(prob, st, moved), moved)
    st.y_n, st.y_s1, st.y_s2 = st.y_n.copy(), st.y_s1.copy(), st.y_s2.copy()
    for arr, value in ((st.y_n, n[0]), (st.y_s1, s1[0]), (st.y_s2, s2[0])):
        arr[source] -= value
        arr[target] += value
    per_group = np.bincount(prob.data.cell_group[moved], weights=w,
                            minlength=prob.data.n_groups)
    st.N_jl = st.N_jl.copy()
    st.N_jl[:, source] -= per_group
    st.N_jl[:, target] += per_group
    st.xi[moved, target] += w
    st.xi[moved, source] = 0.0


def _confident_labels(xi: np.ndarray, rows: int = 1 << 16) -> np.ndarray:
    """Each cell's atom where its responsibility exceeds 1/2, else -1; by slabs of rows (no
    N x L temporary)."""
    out = np.empty(xi.shape[0], dtype=np.int64)
    for start in range(0, xi.shape[0], rows):
        slab = xi[start:start + rows]
        best = slab.argmax(axis=1)
        out[start:start + rows] = np.where(slab[np.arange(best.size), best] > 0.5, best, -1)
    return out


def split_cell_atoms(be, prob: Problem, st: State, n_threads: int = 1, max_atoms: int = 8,
                     n_local_sweeps: int = 3, min_cells: int | None = None,
                     elbo_now: float | None = None) -> bool:
    """Try splitting the largest atoms in two; keep each split that raises the ELBO
    (``elbo_now``: the ELBO of ``st``, when the caller has it; ``Move.knows_elbo``).

    The cells mostly assigned to atom l are cut by 2-means; one half moves (with its xi mass)
    to an empty atom, and the cells of the atom then get ``n_local_sweeps`` exact updates of
    their q(M), each followed by the cheap global refresh.  Costs O(size of the atom) per try.
    """
    from .._init import kmeans_labels

    if min_cells is None:
        min_cells = y_family(prob).min_split_cells(prob.Y.shape[1])
    # which cells each atom holds with xi > 1/2: one pass over xi for the whole move (not a
    # column scan per atom tried), refreshed for the rows an accepted split changes
    labels = _confident_labels(st.xi)
    changed = False
    tried = 0
    # the ELBO of the state each try starts from: a rejected try puts the state back exactly
    current = elbo(be, prob, st) if elbo_now is None else elbo_now
    for l in [int(l) for l in np.argsort(-st.y_n, kind="stable")]:
        if tried >= max_atoms:
            break
        empty = np.nonzero(st.y_n < 1e-8)[0]
        if empty.size == 0:
            break
        rows = np.nonzero(labels == l)[0]
        if rows.size < min_cells:
            continue
        tried += 1
        halves = kmeans_labels(prob.Y, 2, np.random.default_rng(l), rows=rows)
        if halves.min() == halves.max():
            continue
        target = int(empty[0])
        saved = snapshot(st)
        saved_rows = st.xi[rows]      # a copy already (fancy indexing)
        _move_mass(be, prob, st, rows[halves == 1], l, target)
        refresh_without_cells(be, prob, st, n_threads)
        for _ in range(n_local_sweeps):
            _local_cell_sweep(be, prob, st, rows, n_threads)
            refresh_without_cells(be, prob, st, n_threads)
        after = elbo(be, prob, st)
        if gain_ok(after, current):
            changed = True
            current = after
            labels[rows] = _confident_labels(st.xi[rows])
            continue
        restore(st, saved)
        st.xi[rows] = saved_rows
    return changed
