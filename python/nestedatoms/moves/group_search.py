"""Search the group partition at fixed cells.

With the cells held fixed, every group-level factor can be re-optimised in O(J K L) without
touching the cells; so try many group partitions (k-means for every k up to ~10 on composition
and x together, on x alone and on the composition alone; merges and 2-means splits of
clusters), refine each by group-only coordinate ascent and keep the best if it beats the
current state.  Where the x prior's width is learned, each candidate is scored at its own
width, and the best is kept with it.
"""

from __future__ import annotations

import numpy as np

from .._init import one_hot
from .._state import Problem, State
from .._steps import GLOBAL_BLOCKS, best_group_prior_scale, elbo, update_groups
from ._base import MIN_RELATIVE_GAIN, gain_ok, restore, snapshot


# With q(M) fixed, the y atoms depend on nothing that changes here: leave them out.
_GROUP_LEVEL_BLOCKS = tuple(b for b in GLOBAL_BLOCKS if b[0] != "y_atoms")


def optimise_groups(be, prob: Problem, st: State, n_threads: int = 1, max_iter: int = 200,
                    tol: float = 1e-7) -> float:
    """Group-only coordinate ascent (cells fixed) until rho settles; returns the ELBO.

    Convergence is judged on rho itself (no ELBO per iteration, which costs more than a step).
    """
    for _, update in GLOBAL_BLOCKS:
        update(be, prob, st, n_threads)
    for _ in range(max_iter):
        old = st.rho.copy()
        update_groups(be, prob, st, n_threads)
        for _, update in _GROUP_LEVEL_BLOCKS:
            update(be, prob, st, n_threads)
        if np.max(np.abs(st.rho - old)) < tol:
            break
    return elbo(be, prob, st)



def _set_rho(be, st: State, rho: np.ndarray) -> None:
    st.rho = np.ascontiguousarray(rho)
    st.H_rho = be.categorical_entropy(st.rho)


def _group_candidates(feature_views, K: int, max_clusters: int, n_seeds: int):
    """Hard group partitions to try: k-means on each feature view for k = 1..max_clusters.

    A single-source view's partition that an earlier candidate already proposed is left out
    (it would score the same).  The joint view's list is kept whole, so that without x (one
    view) the search is exactly what it was before the other views were added.
    """
    from .._init import kmeans_labels

    J = feature_views[0].shape[0]
    out, seen = [], set()
    for v, feats in enumerate(feature_views):
        for k in range(1 if v == 0 else 2, min(K, J, max_clusters) + 1):
            seeds = 1 if k == 1 else n_seeds
            for s in range(seeds):
                # fixed seeds: the move is a deterministic function of the state
                labels = kmeans_labels(feats, k, np.random.default_rng(1000 * k + s + 100 * v))
                _append_new_partition(out, seen, labels, always=v == 0)
    return out


def _append_new_partition(partitions: list, seen: set, labels: np.ndarray,
                          always: bool = False) -> None:
    """Append ``labels`` unless ``seen`` (the keys of ``partitions``) holds its partition;
    ``always``: append it even then (its key is recorded either way)."""
    key = _partition_key(labels)
    if always or key not in seen:
        seen.add(key)
        partitions.append(labels)


def _partition_key(labels: np.ndarray) -> bytes:
    """One key per partition: the labels renumbered in order of first appearance.  Hashable,
    so checking a candidate against all earlier ones costs one set lookup (pairwise checks
    took a fifth of a fit's time on the published toy design)."""
    from .._init import relabel_by_first_appearance

    return relabel_by_first_appearance(labels).astype(np.int64, copy=False).tobytes()


def adjusted_partition_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labelings define the same partition (up to renaming the labels)."""
    return _partition_key(a) == _partition_key(b)


def search_group_partition(be, prob: Problem, st: State, n_threads: int = 1,
                           max_clusters: int = 10, n_seeds: int = 3,
                           max_rounds: int = 5) -> bool:
    """Search the group partition at fixed cells; keep the best one if the ELBO rises.

    Candidates: the current partition, k-means partitions for k = 1..min(K, J, max_clusters)
    with ``n_seeds`` seeds each, on the joint group features (composition and standardised x)
    and, with x, on x alone and on the composition alone; the best is then improved greedily by
    merging two clusters or splitting one by 2-means in each of those views, every candidate
    refined by group-only coordinate ascent.  O(J K L) per refinement step: no pass over the
    cells.

    Where the problem learns the x prior's width, each candidate is scored at its own width
    (learned after refining it, then refined again), and the best is kept with its width: the
    fit's objective is the ELBO at the best width, and a tight partition scored at the width
    of a merged one looks worse than it is (the recovery study has two grid fits that
    missed the truth this way before candidates were scored at their own widths).
    """
    from .._init import group_feature_views, kmeans_labels

    if prob.K < 2 or prob.data.n_groups < 2:
        return False
    before = elbo(be, prob, st)
    saved = snapshot(st)
    learns_width = prob.has_x and prob.learn_group_prior_scale

    def evaluate(rho):
        _set_rho(be, st, rho)
        st.group_prior_scale = saved.group_prior_scale  # every candidate: the same start
        value = optimise_groups(be, prob, st, n_threads, max_iter=50, tol=1e-5)
        if learns_width:
            width = best_group_prior_scale(be, prob, st)
            if width != st.group_prior_scale:
                st.group_prior_scale = width
                value = optimise_groups(be, prob, st, n_threads, max_iter=50, tol=1e-5)
        return value, (st.rho.copy(), float(st.group_prior_scale))

    best_value, best = evaluate(saved.rho.copy())
    views = group_feature_views(prob, st.N_jl)
    for labels in _group_candidates(views, prob.K, max_clusters, n_seeds):
        value, candidate = evaluate(one_hot(labels, prob.K))
        if value > best_value:
            best_value, best = value, candidate
    for _ in range(max_rounds):  # greedy merges and splits of the best partition so far
        improved = False
        labels = best[0].argmax(axis=1)
        used = np.unique(labels)
        proposals, seen = [], set()
        for a in range(used.size):
            for b in range(a + 1, used.size):
                _append_new_partition(proposals, seen,
                                      np.where(labels == used[b], used[a], labels), always=True)
        free = np.setdiff1d(np.arange(prob.K), used)
        if free.size:
            for k in used:
                members = np.nonzero(labels == k)[0]
                if members.size < 2:
                    continue
                for feats in views:
                    halves = kmeans_labels(feats[members], 2, np.random.default_rng(int(k)))
                    split = labels.copy()
                    split[members[halves == 1]] = free[0]
                    _append_new_partition(proposals, seen, split)
        for proposal in proposals:
            value, candidate = evaluate(one_hot(proposal, prob.K))
            if value > best_value + MIN_RELATIVE_GAIN * abs(best_value):
                best_value, best, improved = value, candidate, True
        if not improved:
            break
    restore(st, saved)
    best_rho, best_width = best
    # Only a different partition counts: polishing the current one (or its width) is the
    # sweeps' and the width move's job, and reporting it as a move would keep the run from
    # ever converging.
    same = adjusted_partition_equal(best_rho.argmax(axis=1), saved.rho.argmax(axis=1))
    if same or not gain_ok(best_value, before):
        return False
    _set_rho(be, st, best_rho)
    st.group_prior_scale = best_width
    optimise_groups(be, prob, st, n_threads)
    # the re-run differs from the search only by rounding, but check both conditions again:
    # the ELBO rose, and the refinement did not drift back to the partition it started from
    moved = not adjusted_partition_equal(st.rho.argmax(axis=1), saved.rho.argmax(axis=1))
    if moved and gain_ok(elbo(be, prob, st), before):
        return True
    restore(st, saved)
    return False


