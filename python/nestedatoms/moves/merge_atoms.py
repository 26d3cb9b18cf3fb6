"""Fold one cell atom into another.  The merged statistics are sums of the two atoms'
statistics; only the entropy of q(M) needs the two columns of xi."""

from __future__ import annotations

import numpy as np

from .._batches import batched_entropies_of_sums, fold_columns
from .._state import Problem, State
from .._steps import cell_weights, elbo, group_weights, weighted_entropy
from ._base import gain_ok, refresh_without_cells, restore, snapshot


def atom_score(be, prob: Problem, n, s1, s2) -> float:
    """The y part of the ELBO of one atom at its optimal q(theta^y) given its statistics."""
    p = prob.y_prior
    m, lam, W, nu = be.nw_posterior(n, s1, s2, prob.y_centre, p.m0, p.lam0, p.W0inv, p.nu0)
    return (be.nw_loglik_from_stats(n, s1, s2, prob.y_centre, m, lam, W, nu)
            + be.nw_prior_term(m, lam, W, nu, p.m0, p.lam0, p.W0inv, p.nu0)
            + be.nw_entropy(m, lam, W, nu))


def _cell_pairs(be, prob: Problem, st: State, max_pairs: int):
    """Occupied atom pairs ranked by the ELBO change of the y part alone when merged."""
    occupied = np.nonzero(st.y_n > 0.5)[0]
    if occupied.size < 2:
        return []

    single = {int(l): atom_score(be, prob, st.y_n[[l]], st.y_s1[[l]], st.y_s2[[l]])
              for l in occupied}
    pairs = []
    for a in range(occupied.size):
        for b in range(a + 1, occupied.size):
            l1, l2 = int(occupied[a]), int(occupied[b])
            idx = [l1, l2]
            merged = atom_score(be, prob, st.y_n[idx].sum(keepdims=True),
                                 st.y_s1[idx].sum(0)[None], st.y_s2[idx].sum(0)[None])
            # merging also frees one atom, which then sits at its prior (score 0 up to terms
            # that cancel between proposals), so rank by the y-part gain alone
            pairs.append((-(merged - single[l1] - single[l2]), l1, l2))
    pairs.sort()
    return [(l1, l2) for _, l1, l2 in pairs[:max_pairs]]


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
            # The proposal is judged on the statistics alone (nothing below reads xi), so xi
            # is rewritten only for an accepted merge: one (N, 2) read per proposal.
            saved = snapshot(st)
            pair = st.xi[:, [l1, l2]]
            merged = pair.sum(axis=1, keepdims=True)
            w = cell_weights(prob, st)
            st.H_xi = (st.H_xi - weighted_entropy(be, pair, w)
                       + weighted_entropy(be, merged, w))
            fold_atom_stats(be, prob, st, [[l1, l2]], n_threads)
            if gain_ok(elbo(be, prob, st), before):
                st.xi[:, l1] = merged[:, 0]
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

