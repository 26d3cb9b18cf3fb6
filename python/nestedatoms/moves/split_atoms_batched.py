"""The split move with the cells in more than one batch (``_batches``: in memory, or on dask
workers where xi never leaves them).

``split_atoms`` cuts an atom's cells by 2-means and re-runs the cell step on those cells only,
which needs the cells' rows of xi in one place.  Here every pass over the cells is a map over
the batches whose results are added in batch order, so the move gives the same bits in memory
and on any number of workers (model section 7).  One round of the move:

1. **Sample** (one pass): for each candidate atom (the largest by y_n, up to ``max_atoms``),
   each batch returns how many of its cells the atom holds with xi > 1/2, and those of them
   whose row is a multiple of a stride (the atom's mass / ``sample_size``, rounded up): a
   deterministic sample of about ``sample_size`` cells (all of them for a smaller atom),
   gathered to the driver in batch order.  2-means on the sample (``_init.kmeans_centres``,
   seeded by the atom as in ``split_atoms``) gives two centres.
2. **Halves** (one pass): each batch cuts the atom's cells by the nearer centre and returns
   the y statistics and per-individual mass of the smaller sample half's side, weighted by
   xi of the atom (the statistics ``split_atoms`` moves to an empty atom).
3. **Judge** each candidate in turn: the statistics of the moved half go to an empty atom,
   the cheap factors are refreshed, then ``n_local_sweeps`` exact cell steps over all cells
   (each a pass), each followed by the refresh.  The split is kept only if the ELBO of that
   state beats the ELBO before (``gain_ok``); otherwise the state is put back.  After a kept
   split the remaining proposals are stale (xi changed), so steps 1-2 run again for the atoms
   not yet tried.

Acceptance is exact and the trace monotone: the proposal only picks where the sweeps start,
and the ELBO compared is that of a full state (xi from an exact cell step, every other factor
refreshed on its statistics).  A try costs ``n_local_sweeps`` cell steps over all the cells
(``split_atoms`` updates only the atom's cells); a round, 2 passes more, and 2 more after
each kept split.  In
memory the tries write into a second N x L array (the fit's xi is kept until a split is).
"""

from __future__ import annotations

import numpy as np

from .._atoms import family_named, y_family
from .._batches import add_in_order, batched_cell_map
from .._state import Problem, State
from .._steps import elbo, group_weights, update_cells
from ._base import gain_ok, refresh_without_cells, restore, snapshot

# About this many of an atom's cells are gathered for its 2-means: 1 MB at p = 30, 8 MB for
# the 8 atoms a round tries (the one-batch split's kmeans_labels subsamples to 20,000; two
# centres need far fewer).
SAMPLE_SIZE = 4096


def _confident(xi: np.ndarray, l: int) -> np.ndarray:
    """Whether each row's largest responsibility is atom l's and exceeds 1/2 (as
    ``split_atoms._confident_labels``: above 1/2 it is the largest)."""
    return xi[:, l] > 0.5


def _w_sample(be, Y, xi, offsets, zeta, row0, atoms, strides):
    """Per atom: (its confident cells in this batch, the rows of those at a multiple of the
    atom's stride)."""
    out = []
    for l, stride in zip(atoms, strides):
        rows = np.nonzero(_confident(xi, l))[0]
        picked = rows[(rows + row0) % stride == 0]
        out.append((int(rows.size), np.array(Y[picked], dtype=np.float64)))
    return out


def _w_halves(be, Y, xi, offsets, zeta, row0, jobs, family, centre):
    """Per (atom, ref, centres, side): the y statistics (n, s1, s2) of the atom's confident
    cells nearer centre ``side``, weighted by their xi of the atom (and zeta), and that mass
    per individual of the batch."""
    from .._init import nearest_centre

    fam = family_named(family)
    group_of = np.repeat(np.arange(offsets.shape[0] - 1), np.diff(offsets))
    out = []
    for l, ref, centres, side in jobs:
        rows = np.nonzero(_confident(xi, l))[0]
        moved = rows[nearest_centre(Y[rows], ref, centres) == side] if rows.size else rows
        w = xi[moved, l]
        cw = w if zeta is None else w * zeta[group_of[moved]]
        stats = fam.stats(be, np.ascontiguousarray(Y[moved]),
                          np.ascontiguousarray(cw[:, None]), centre)
        per_group = np.bincount(group_of[moved], weights=w, minlength=offsets.shape[0] - 1)
        out.append((*stats, per_group))
    return out


def _proposals(be, prob: Problem, st: State, atoms, min_cells: int, sample_size: int) -> dict:
    """For each atom: (statistics of the side to move, its mass per individual), or None when
    the atom holds fewer than ``min_cells`` cells with xi > 1/2 or its sample does not cut."""
    from .._init import kmeans_centres, nearest_centre

    zeta = group_weights(prob, st)
    mass = st.N_jl.sum(axis=0)
    strides = [max(1, int(np.ceil(mass[l] / sample_size))) for l in atoms]
    parts = batched_cell_map(be, prob, st.xi, zeta, _w_sample, list(atoms), strides)
    jobs = []
    for i, l in enumerate(atoms):
        count = sum(p[i][0] for p in parts)
        sample = np.concatenate([p[i][1] for p in parts])
        if count < min_cells or sample.shape[0] < 2:
            continue
        ref, centres = kmeans_centres(sample, 2, np.random.default_rng(l))
        if centres.shape[0] < 2:
            continue
        near = np.bincount(nearest_centre(sample, ref, centres), minlength=2)
        if near.min() == 0:
            continue
        # move the smaller half of the sample (split_atoms moves kmeans_labels' second, the
        # smaller; on a tie, the second centre)
        jobs.append((l, ref, centres, 0 if near[0] < near[1] else 1))
    if not jobs:
        return {}
    parts = batched_cell_map(be, prob, st.xi, zeta, _w_halves, jobs, y_family(prob).name,
                             prob.y_centre)
    out = {}
    for i, (l, *_rest) in enumerate(jobs):
        n, s1, s2 = (add_in_order([p[i][k] for p in parts]) for k in range(3))
        per_group = np.concatenate([p[i][3] for p in parts])
        out[l] = (n, s1, s2, per_group)
    return out


def _try_split(be, prob: Problem, st: State, source: int, target: int, proposal,
               n_threads: int, n_local_sweeps: int) -> bool:
    """Move the proposal's statistics from ``source`` to the empty ``target``, refresh, run
    exact cell steps over all cells; keep if the ELBO rises, else put the state back."""
    before = elbo(be, prob, st)
    saved, saved_xi = snapshot(st), st.xi
    n, s1, s2, per_group = proposal
    st.y_n, st.y_s1, st.y_s2 = st.y_n.copy(), st.y_s1.copy(), st.y_s2.copy()
    for arr, value in ((st.y_n, n[0]), (st.y_s1, s1[0]), (st.y_s2, s2[0])):
        arr[source] -= value
        arr[target] += value
    st.N_jl = st.N_jl.copy()
    st.N_jl[:, source] -= per_group
    st.N_jl[:, target] += per_group
    refresh_without_cells(be, prob, st, n_threads)
    if isinstance(saved_xi, np.ndarray):
        st.xi = np.empty_like(saved_xi)     # the cell steps write here; xi stays until kept
    for _ in range(n_local_sweeps):
        update_cells(be, prob, st, n_threads)
        refresh_without_cells(be, prob, st, n_threads)
    if gain_ok(elbo(be, prob, st), before):
        return True
    restore(st, saved)
    st.xi = saved_xi
    return False


def split_cell_atoms_batched(be, prob: Problem, st: State, n_threads: int = 1,
                             max_atoms: int = 8, n_local_sweeps: int = 3,
                             min_cells: int | None = None,
                             sample_size: int = SAMPLE_SIZE) -> bool:
    """Try splitting the largest atoms in two, with the cells in batches (module docstring);
    keep each split that raises the ELBO.  Tries at most ``max_atoms`` atoms (the largest by
    y_n whose mass reaches ``min_cells``), each while an empty atom is left."""
    if min_cells is None:
        min_cells = y_family(prob).min_split_cells(prob.Y.shape[1])
    changed = False
    tried: set = set()
    while len(tried) < max_atoms:
        mass = st.N_jl.sum(axis=0)
        atoms = [int(l) for l in np.argsort(-st.y_n, kind="stable")
                 if int(l) not in tried and mass[l] >= min_cells][:max_atoms - len(tried)]
        if not atoms or not np.any(st.y_n < 1e-8):
            break
        proposals = _proposals(be, prob, st, atoms, min_cells, sample_size)
        tried.update(atoms)
        kept = False
        for l in atoms:
            empty = np.nonzero(st.y_n < 1e-8)[0]
            if l not in proposals or empty.size == 0:
                continue
            if _try_split(be, prob, st, l, int(empty[0]), proposals[l], n_threads,
                          n_local_sweeps):
                changed = kept = True
                # the others' proposals read the old xi: draw them again (next round)
                tried.difference_update(atoms[atoms.index(l) + 1:])
                break
        if not kept:
            break
    return changed
