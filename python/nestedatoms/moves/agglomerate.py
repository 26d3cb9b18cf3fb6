"""Merge many cell atoms at once, at the best level of a greedy agglomeration: repairs a true
cluster cut into many pieces, where every pairwise merge fails."""

from __future__ import annotations

import numpy as np

from .._batches import batched_entropies_of_sums, fold_columns
from .._state import Problem, State
from .._steps import elbo, group_weights
from ._base import gain_ok, restore, snapshot
from .merge_atoms import atom_scores, fold_atom_stats


def _agglomeration(be, prob: Problem, st: State):
    """Greedy agglomeration of the occupied atoms by the y-part gain of each merge (as in
    ``_cell_pairs``): the list of partitions it passes through, each a list of atom groups
    (the first atom of a group is the one that keeps the merged mass)."""
    occupied = [int(l) for l in np.nonzero(st.y_n > 0.5)[0]]
    groups = {l: [l] for l in occupied}
    stats = {l: (st.y_n[l], st.y_s1[l], st.y_s2[l]) for l in groups}

    def merged_scores(pairs):
        """atom_score of each pair's merged statistics, in one backend call."""
        n, s1, s2 = (np.stack([stats[a][i] + stats[b][i] for a, b in pairs]) for i in range(3))
        return atom_scores(be, prob, n, s1, s2)

    single = atom_scores(be, prob, st.y_n[occupied], st.y_s1[occupied], st.y_s2[occupied])
    score = dict(zip(occupied, single.tolist()))
    pairs = [(a, b) for a in groups for b in groups if a < b]
    gain = {}
    if pairs:
        for (a, b), merged in zip(pairs, merged_scores(pairs).tolist()):
            gain[a, b] = merged - score[a] - score[b]
    levels = []
    while len(groups) > 1:
        a, b = max(gain, key=gain.get)
        stats[a] = tuple(x + y for x, y in zip(stats[a], stats[b]))
        score[a] = gain[a, b] + score[a] + score[b]
        groups[a] += groups.pop(b)
        gain = {k: v for k, v in gain.items() if b not in k and a not in k}
        others = [c for c in groups if c != a]
        keys = [(min(a, c), max(a, c)) for c in others]
        if keys:
            for key, c, merged in zip(keys, others, merged_scores(keys).tolist()):
                gain[key] = merged - score[a] - score[c]
        levels.append([list(g) for g in groups.values()])
    return levels


def agglomerate_cell_atoms(be, prob: Problem, st: State, n_threads: int = 1,
                           elbo_now: float | None = None) -> bool:
    """Merge many atoms at once: the best level of a greedy agglomeration, if the ELBO rises
    (``elbo_now``: the ELBO of ``st``, when the caller has it; ``Move.knows_elbo``).

    Where clusters overlap heavily and the cells are many, a start with many atoms cuts each
    true cluster into pieces; merging any two pieces fits worse than keeping them, so pairwise
    merges all fail, while merging all the pieces of a cluster gains what the extra atoms cost.
    Every level is judged at fixed q(M) from the statistics; merging columns of xi can only
    lower the entropy of q(M), so the ELBO without that change bounds a level from above and
    the entropy pass is made only for levels whose bound beats the best so far.  The entropy
    change is a sum over the merged groups, and each level adds one group, so a pass reads
    only that group's columns (O(N x its size)).
    """
    levels = _agglomeration(be, prob, st)
    if len(levels) < 2:          # one merge at most: merge_cell_atoms' job
        return False
    before = elbo(be, prob, st) if elbo_now is None else elbo_now
    saved = snapshot(st)
    if prob.batches.n_batches > 1:
        entropy_change = _entropy_change_by_batch(be, prob, st, levels, before, n_threads)
        saved = snapshot(st)
    else:
        entropy_change = _GroupEntropyChange(be, prob, st, n_threads)
    best_value, best_level, best_change = before, None, 0.0
    for i, level in enumerate(levels):
        fold_atom_stats(be, prob, st, level, n_threads)
        bound = elbo(be, prob, st)
        restore(st, saved)
        saved = snapshot(st)    # the folding works in place: keep a clean copy each time
        if gain_ok(bound, best_value):
            change = sum(entropy_change(g) for g in level if len(g) > 1)
            if gain_ok(bound + change, best_value):
                best_value, best_level, best_change = bound + change, i, change
    if best_level is None:
        return False
    level = levels[best_level]
    st.H_xi += best_change
    fold_atom_stats(be, prob, st, level, n_threads)
    st.xi = fold_columns(st.xi, level)      # column by column: no N x |group| temporary
    return True


def _entropy_change_by_batch(be, prob: Problem, st: State, levels, before, n_threads):
    """The entropy change of each group of every level that may gain (its bound beats the
    ELBO before), from one batch-by-batch pass over the cells (``_batches``; on dask workers
    when xi is kept there): the same decisions as ``_GroupEntropyChange``, read at once."""
    saved = snapshot(st)
    groups = set()
    for level in levels:
        fold_atom_stats(be, prob, st, level, n_threads)
        if gain_ok(elbo(be, prob, st), before):
            groups.update(tuple(sorted(g)) for g in level if len(g) > 1)
        restore(st, saved)
        saved = snapshot(st)
    sets = sorted(groups | {(l,) for g in groups for l in g})
    zeta = group_weights(prob, st)
    values = batched_entropies_of_sums(be, prob, st.xi, zeta, sets) if sets else []
    entropy = dict(zip(sets, values))

    def change(group):
        key = tuple(sorted(group))
        return entropy[key] - sum(entropy[l, ] for l in key)

    return change


class _GroupEntropyChange:
    """Entropy of q(M) after summing a group of xi's columns, minus before; cached per group.
    One backend call (``merged_entropy_change``) per new group: a pass over xi's rows with no
    gathered copy of the columns."""

    def __init__(self, be, prob: Problem, st: State, n_threads: int = 1):
        self.be, self.xi, self.offsets = be, st.xi, prob.offsets
        self.weights, self.n_threads = group_weights(prob, st), n_threads
        self.groups: dict[tuple, float] = {}

    def __call__(self, group) -> float:
        key = tuple(sorted(group))
        if key not in self.groups:
            self.groups[key] = float(self.be.merged_entropy_change(
                self.xi, [list(key)], self.offsets, self.weights, self.n_threads)[0])
        return self.groups[key]
