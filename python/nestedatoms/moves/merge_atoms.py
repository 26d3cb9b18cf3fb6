"""Fold one cell atom into another.  The merged statistics are sums of the two atoms'
statistics; only the entropy of q(M) needs the two columns of xi."""

from __future__ import annotations

import numpy as np

from .._atoms import y_family
from .._batches import batched_entropies_of_sums, fold_columns
from .._state import Problem, State
from .._steps import elbo, group_weights
from ._base import gain_ok, refresh_without_cells, restore, snapshot


def atom_score(be, prob: Problem, n, s1, s2) -> float:
    """The y part of the ELBO of one atom at its optimal q(theta^y) given its statistics."""
    return float(atom_scores(be, prob, n, s1, s2)[0])


def atom_scores(be, prob: Problem, n, s1, s2) -> np.ndarray:
    """``atom_score`` of each of G atoms given their statistics (G,), (G, p), (G, p, p) (or
    (G, p) for diagonal atoms): one backend call for all of them."""
    return y_family(prob).scores(be, (n, s1, s2), prob.y_centre, prob.y_prior)


def _cell_pairs(be, prob: Problem, st: State, max_pairs: int):
    """Occupied atom pairs ranked by the ELBO change of the y part alone when merged."""
    occupied = np.nonzero(st.y_n > 0.5)[0]
    if occupied.size < 2:
        return []
    single = atom_scores(be, prob, st.y_n[occupied], st.y_s1[occupied], st.y_s2[occupied])
    a, b = np.triu_indices(occupied.size, k=1)          # every pair, in the order a < b
    l1, l2 = occupied[a], occupied[b]
    merged = atom_scores(be, prob, st.y_n[l1] + st.y_n[l2], st.y_s1[l1] + st.y_s1[l2],
                         st.y_s2[l1] + st.y_s2[l2])
    # merging also frees one atom, which then sits at its prior (score 0 up to terms that
    # cancel between proposals), so rank by the y-part gain alone
    gains = merged - single[a] - single[b]
    pairs = sorted(zip((-gains).tolist(), l1.tolist(), l2.tolist()))
    return [(x, y) for _, x, y in pairs[:max_pairs]]


def merge_cell_atoms(be, prob: Problem, st: State, n_threads: int = 1,
                     max_pairs: int = 5) -> bool:
    """Try folding atom l2 into l1 for the most promising pairs; keep every gain found."""
    if prob.batches.n_batches > 1:
        return _merge_cell_atoms_by_batch(be, prob, st, n_threads, max_pairs)
    changed = False
    while True:  # ends: every accepted merge empties one more atom
        before = elbo(be, prob, st)
        accepted = False
        for l1, l2 in _cell_pairs(be, prob, st, max_pairs):
            # the proposal is judged on the statistics alone, plus the entropy change of q(M)
            # (one pass over xi's rows, no gathered columns; pair by pair, as the first pair
            # is often accepted); xi is rewritten only for an accepted merge
            saved = snapshot(st)
            st.H_xi = st.H_xi + float(be.merged_entropy_change(
                st.xi, [[l1, l2]], prob.offsets, group_weights(prob, st), n_threads)[0])
            fold_atom_stats(be, prob, st, [[l1, l2]], n_threads)
            if gain_ok(elbo(be, prob, st), before):
                st.xi[:, l1] += st.xi[:, l2]
                st.xi[:, l2] = 0.0
                accepted = changed = True
                break
            restore(st, saved)
        if not accepted:
            return changed


def _merge_cell_atoms_by_batch(be, prob: Problem, st: State, n_threads: int,
                               max_pairs: int) -> bool:
    """``merge_cell_atoms`` with the cells in batches (``_batches``; on dask workers, or in
    memory with the same plan and the same bits): the entropies of xi's columns are summed
    batch by batch, in one pass over the cells for all the pairs that may gain.

    Merging two columns can only lower the entropy of q(M), so the ELBO of the merged
    statistics without that change bounds the merge from above: a pair whose bound does not
    gain is skipped without reading the cells (most sweeps read none), and the first pair
    that gains, in ``_cell_pairs`` order, is the one ``merge_cell_atoms`` would accept.
    """
    changed = False
    entropy = {}     # per set of columns; a merge changes only its two columns' entries
    while True:  # ends: every accepted merge empties one more atom
        before = elbo(be, prob, st)
        candidates = []
        for l1, l2 in _cell_pairs(be, prob, st, max_pairs):
            saved = snapshot(st)
            fold_atom_stats(be, prob, st, [[l1, l2]], n_threads)
            if gain_ok(elbo(be, prob, st), before):
                candidates.append((l1, l2))
            restore(st, saved)
        if not candidates:
            return changed
        sets = sorted({s for l1, l2 in candidates for s in ((l1,), (l2,), (l1, l2))}
                      - set(entropy))
        if sets:
            entropy.update(zip(sets, batched_entropies_of_sums(
                be, prob, st.xi, group_weights(prob, st), sets)))
        accepted = False
        for l1, l2 in candidates:
            saved = snapshot(st)
            st.H_xi = st.H_xi - (entropy[l1, ] + entropy[l2, ]) + entropy[l1, l2]
            fold_atom_stats(be, prob, st, [[l1, l2]], n_threads)
            if gain_ok(elbo(be, prob, st), before):
                st.xi = fold_columns(st.xi, [[l1, l2]])
                entropy = {k: v for k, v in entropy.items() if l1 not in k and l2 not in k}
                accepted = changed = True
                break
            restore(st, saved)
        if not accepted:
            return changed


def fold_atom_stats(be, prob: Problem, st: State, groups, n_threads: int) -> None:
    """Fold each group of atoms into its first one in N_jl and the y statistics (xi and the
    entropy of q(M) left alone), and refresh the cheap factors."""
    for g in groups:
        keep, rest = g[0], g[1:]
        if not rest:
            continue
        st.N_jl[:, keep] += st.N_jl[:, rest].sum(axis=1)
        st.N_jl[:, rest] = 0.0
        for name in ("y_n", "y_s1", "y_s2"):
            arr = getattr(st, name)
            arr[keep] += arr[rest].sum(axis=0)
            arr[rest] = 0.0
    refresh_without_cells(be, prob, st, n_threads)

