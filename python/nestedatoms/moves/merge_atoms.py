"""Fold one cell atom into another.  The merged statistics are sums of the two atoms'
statistics; only the entropy of q(M) needs the two columns of xi."""

from __future__ import annotations

import numpy as np

from .._atoms import y_family
from .._batches import batched_entropies_of_sums, fold_columns
from .._group_ascent import apply_group_factors, concentration_factors, group_ascent
from .._state import Problem, State
from .._steps import elbo, group_weights, scale_rows, update_y_atoms
from ._base import gain_ok, refresh_without_cells


def atom_score(be, prob: Problem, n, s1, s2) -> float:
    """The y part of the ELBO of one atom at its optimal q(theta^y) given its statistics."""
    return float(atom_scores(be, prob, n, s1, s2)[0])


def atom_scores(be, prob: Problem, n, s1, s2) -> np.ndarray:
    """``atom_score`` of each of G atoms given their statistics (G,), (G, p), (G, p, p) (or
    (G, p) for diagonal atoms): one backend call for all of them."""
    return y_family(prob).scores(be, (n, s1, s2), prob.y_centre, prob.y_prior)


def _cell_pairs(be, prob: Problem, st: State, max_pairs: int):
    """Occupied atom pairs ranked by the ELBO change of the y part alone when merged."""
    return [(l1, l2) for l1, l2, _ in _AtomScores(be, prob, st).ranked_pairs(max_pairs)]


_PAIR_CHUNK = 32


class _AtomScores:
    """The y part of each atom (``atom_scores``) and of each pair's merged atom, kept for the
    duration of a move: a merge changes the statistics of its two atoms only, so after it only
    the pairs that involve them are scored again (from a k-means start with 30 atoms, the
    first sweep's merges rescored all 435 pairs after each of ~20 accepted merges; at p = 50
    that was most of a small fit's time).  Scores are per atom, so a kept score is the one a
    new call would give.  ``merged[l1, l2]`` (l1 < l2) is NaN until scored."""

    def __init__(self, be, prob: Problem, st: State):
        self.be, self.prob, self.st = be, prob, st
        self.single = atom_scores(be, prob, st.y_n, st.y_s1, st.y_s2)   # every atom, (L,)
        L = self.single.shape[0]
        self.merged = np.full((L, L), np.nan)

    def merged_away(self, l1: int, l2: int) -> None:
        """l2 was folded into l1 (the state's statistics already say so)."""
        st = self.st
        self.single = self.single.copy()
        self.single[[l1, l2]] = atom_scores(self.be, self.prob, st.y_n[[l1, l2]],
                                            st.y_s1[[l1, l2]], st.y_s2[[l1, l2]])
        self.merged[[l1, l2], :] = np.nan
        self.merged[:, [l1, l2]] = np.nan

    def ranked_pairs(self, max_pairs: int):
        """Occupied atom pairs ranked by the ELBO change of the y part alone when merged:
        [(l1, l2, merged score)], the best ``max_pairs`` (ties by l1, then l2)."""
        st = self.st
        occupied = np.nonzero(st.y_n > 0.5)[0]
        if occupied.size < 2:
            return []
        a, b = np.triu_indices(occupied.size, k=1)          # every pair, in the order a < b
        l1, l2 = occupied[a], occupied[b]
        new = np.nonzero(np.isnan(self.merged[l1, l2]))[0]
        # a few pairs' summed statistics at a time: gathering all of them at once made
        # (pairs x p x p) temporaries, 9 MB at p = 50 from 30 atoms, whose first touch cost
        # more than scoring them
        for start in range(0, new.size, _PAIR_CHUNK):
            chunk = new[start:start + _PAIR_CHUNK]
            n1, n2 = l1[chunk], l2[chunk]
            self.merged[n1, n2] = atom_scores(self.be, self.prob, st.y_n[n1] + st.y_n[n2],
                                              st.y_s1[n1] + st.y_s1[n2],
                                              st.y_s2[n1] + st.y_s2[n2])
        merged = self.merged[l1, l2]
        # merging also frees one atom, which then sits at its prior (score 0 up to terms that
        # cancel between proposals), so rank by the y-part gain alone
        gains = merged - self.single[l1] - self.single[l2]
        order = np.lexsort((l2, l1, -gains))[:max_pairs]
        return [(int(l1[i]), int(l2[i]), float(merged[i])) for i in order]


class _MergeProposals:
    """The ELBO of folding atom l2 into l1, judged without touching the state.

    A merge changes the y statistics of two atoms and two columns of N_jl; the fit's judge of
    it was: fold the statistics, refresh every factor but q(M) (``refresh_without_cells``),
    evaluate the ELBO, put the state back (some 40 small backend calls and copies of the state
    per pair, after every sweep: most of a sweep's time on small data).  Here the same
    quantities come from two sums and one core call: the y part is a sum over atoms of each
    atom's score at its optimal q(theta^y) (``atom_scores``: the pair's merged score replaces
    its two atoms', the freed atom scores 0 at its prior), and the refresh of the group level
    is one step of the group ascent (``group_ascent`` with ``max_iter = 1``: the global
    blocks, q(S), the global blocks, exactly the refresh), which also returns the group level's
    part of the ELBO.  ``bound`` leaves out the entropy change of q(M), which is <= 0: a pair
    whose bound does not gain cannot gain, and no cell is read for it.
    """

    def __init__(self, be, prob: Problem, st: State, n_threads: int, scores: _AtomScores):
        self.be, self.prob, self.st, self.n_threads = be, prob, st, n_threads
        # the y part of the ELBO now, as the sum of every atom's score (the empty ones too)
        self.scores = scores.single
        self.y_total = float(np.sum(self.scores))
        self.zeta = group_weights(prob, st)
        self.start = (st.rho, st.group_prior_scale, concentration_factors(st))

    def bound(self, l1: int, l2: int, merged_score: float):
        """(ELBO after the merge without the entropy change of q(M), group-level factors)."""
        N = self.st.N_jl.copy()
        N[:, l1] += N[:, l2]
        N[:, l2] = 0.0
        rho, width, conc = self.start
        result, = group_ascent(self.be, self.prob, self.st, [rho], [width], [conc],
                               self.n_threads, max_iter=1, counts=scale_rows(N, self.zeta))
        y_part = (self.y_total - float(self.scores[l1]) - float(self.scores[l2])
                  + merged_score)
        return y_part + self.st.H_xi + float(result["elbo"]), result

    def accept(self, l1: int, l2: int, result: dict, entropy_change: float) -> None:
        """Make the state the merged one: statistics folded (xi is the caller's), the group
        level from ``result``, the y atoms at their optimum."""
        st = self.st
        st.H_xi = st.H_xi + entropy_change
        st.N_jl = st.N_jl.copy()
        st.N_jl[:, l1] += st.N_jl[:, l2]
        st.N_jl[:, l2] = 0.0
        for name in ("y_n", "y_s1", "y_s2"):
            arr = getattr(st, name).copy()
            arr[l1] += arr[l2]
            arr[l2] = 0.0
            setattr(st, name, arr)
        apply_group_factors(st, result)
        # only the two atoms' statistics changed; every other atom is already at its optimum
        # for its statistics, and the posterior is computed atom by atom, so this is the
        # update of all L atoms, bit for bit, at 2 / L of its cost
        update_y_atoms(self.be, self.prob, st, self.n_threads, rows=[l1, l2])


def merge_cell_atoms(be, prob: Problem, st: State, n_threads: int = 1,
                     max_pairs: int = 5, elbo_now: float | None = None) -> bool:
    """Try folding atom l2 into l1 for the most promising pairs; keep every gain found.
    ``elbo_now``: the ELBO of ``st``, when the caller has it (``Move.knows_elbo``)."""
    if prob.batches.n_batches > 1:
        return _merge_cell_atoms_by_batch(be, prob, st, n_threads, max_pairs)
    changed = False
    scores = _AtomScores(be, prob, st)
    before = elbo(be, prob, st) if elbo_now is None else elbo_now
    while True:  # ends: every accepted merge empties one more atom
        proposals = _MergeProposals(be, prob, st, n_threads, scores)
        accepted = False
        for l1, l2, merged in scores.ranked_pairs(max_pairs):
            bound, result = proposals.bound(l1, l2, merged)
            if not gain_ok(bound, before):
                continue
            # the entropy change of q(M): one pass over xi's rows, no gathered columns;
            # xi is rewritten only for an accepted merge
            change = float(be.merged_entropy_change(
                st.xi, [[l1, l2]], prob.offsets, group_weights(prob, st), n_threads)[0])
            if gain_ok(bound + change, before):
                proposals.accept(l1, l2, result, change)
                scores.merged_away(l1, l2)
                st.xi[:, l1] += st.xi[:, l2]
                st.xi[:, l2] = 0.0
                # the accepted state is the one the bound described (the y atoms at their
                # optimum, the group level from ``result``, q(M)'s entropy changed): its ELBO
                # is bound + change, up to rounding far below gain_ok's margin
                before = bound + change
                accepted = changed = True
                break
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
    scores = _AtomScores(be, prob, st)
    while True:  # ends: every accepted merge empties one more atom
        before = elbo(be, prob, st)
        proposals = _MergeProposals(be, prob, st, n_threads, scores)
        candidates = []
        for l1, l2, merged in scores.ranked_pairs(max_pairs):
            bound, result = proposals.bound(l1, l2, merged)
            if gain_ok(bound, before):
                candidates.append((l1, l2, bound, result))
        if not candidates:
            return changed
        sets = sorted({s for l1, l2, _, _ in candidates for s in ((l1,), (l2,), (l1, l2))}
                      - set(entropy))
        if sets:
            entropy.update(zip(sets, batched_entropies_of_sums(
                be, prob, st.xi, group_weights(prob, st), sets)))
        accepted = False
        for l1, l2, bound, result in candidates:
            change = entropy[l1, l2] - (entropy[l1, ] + entropy[l2, ])
            if gain_ok(bound + change, before):
                proposals.accept(l1, l2, result, change)
                scores.merged_away(l1, l2)
                st.xi = fold_columns(st.xi, [[l1, l2]])
                entropy = {k: v for k, v in entropy.items() if l1 not in k and l2 not in k}
                accepted = changed = True
                break
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

