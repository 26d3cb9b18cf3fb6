"""Search the group partition at fixed cells.

With the cells held fixed, every group-level factor can be re-optimised in O(J K L) without
touching the cells; so try many group partitions (k-means for every k up to ~10 on composition
and x together, on x alone and on the composition alone; merges and 2-means splits of
clusters), refine each by group-only coordinate ascent and keep the best if it beats the
current state.  Where the x prior's width is learned, each candidate is scored at its own
width, and the best is kept with it.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

from .._group_ascent import (apply_group_factors, cell_level_elbo, concentration_factors,
                             group_ascent)
from .._init import one_hot
from .._state import Problem, State
from .._steps import best_group_prior_scales, elbo, update_y_atoms
from ._base import MIN_RELATIVE_GAIN, gain_ok, restore, snapshot


def optimise_groups(be, prob: Problem, st: State, n_threads: int = 1, max_iter: int = 200,
                    tol: float = 1e-7) -> float:
    """Group-only coordinate ascent (cells fixed) until rho settles; returns the ELBO.

    One backend call (``group_ascent``): a pass of the group-level blocks, then q(S) and that
    pass again until max |rho - rho_old| < tol.  Convergence is judged on rho itself (no ELBO
    per iteration, which costs more than a step).
    """
    update_y_atoms(be, prob, st, n_threads)   # the one block of the sweep outside the group level
    result, = group_ascent(be, prob, st, [st.rho], [st.group_prior_scale],
                           [concentration_factors(st)], n_threads, max_iter, tol)
    apply_group_factors(st, result)
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
    J = feature_views[0].shape[0]
    out, seen = [], set()
    for v, feats in enumerate(feature_views):
        for k in range(1 if v == 0 else 2, min(K, J, max_clusters) + 1):
            seeds = 1 if k == 1 else n_seeds
            for s in range(seeds):
                # fixed seeds: the move is a deterministic function of the state
                labels = _kmeans_labels_cached(feats, k, 1000 * k + s + 100 * v)
                _append_new_partition(out, seen, labels, always=v == 0)
    return out


# k-means partitions by (features, k, seed), the most recent first out: the view of x alone
# does not change during a fit, and its ~30 k-means were redone by every search (one per
# restart and more after moves; k-means was a third of the published toy design's search).
_KMEANS_CACHE: OrderedDict = OrderedDict()
_KMEANS_CACHE_SIZE = 1024
_KMEANS_CACHE_LOCK = threading.Lock()     # fits may run in several threads at once


def _kmeans_labels_cached(feats: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``kmeans_labels(feats, k, default_rng(seed))``, computed once per content of feats."""
    from .._init import kmeans_labels

    feats = np.ascontiguousarray(feats)
    key = (hashlib.blake2b(feats.tobytes(), digest_size=16).digest(), feats.shape,
           str(feats.dtype), int(k), int(seed))
    with _KMEANS_CACHE_LOCK:
        labels = _KMEANS_CACHE.get(key)
        if labels is not None:
            _KMEANS_CACHE.move_to_end(key)
            return labels
    labels = kmeans_labels(feats, k, np.random.default_rng(seed))   # outside the lock
    labels.flags.writeable = False
    with _KMEANS_CACHE_LOCK:
        _KMEANS_CACHE[key] = labels
        while len(_KMEANS_CACHE) > _KMEANS_CACHE_SIZE:
            _KMEANS_CACHE.popitem(last=False)
    return labels


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
                           max_rounds: int = 5, elbo_now: float | None = None) -> bool:
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
    before = elbo(be, prob, st) if elbo_now is None else elbo_now
    saved = snapshot(st)
    learns_width = prob.has_x and prob.learn_group_prior_scale
    # the terms the cells fix, once: each candidate's ELBO is this plus its group-level part
    fixed_part = cell_level_elbo(be, prob, st, n_threads)
    start_width, start_conc = saved.group_prior_scale, concentration_factors(saved)

    def evaluate_all(rhos):
        """(ELBO, (rho, width)) of each candidate, refined by one batch of group-only ascents
        (in parallel in the core) and, where the width is learned, a second batch at each
        candidate's own width.  Every candidate starts from the same width and the same
        concentration factors, so its result depends on it alone, not on the batch."""
        n = len(rhos)
        results = group_ascent(be, prob, st, rhos, [start_width] * n, [start_conc] * n,
                               n_threads, max_iter=50, tol=1e-5)
        widths = [start_width] * n
        if learns_width:
            # every candidate's own width, in one vectorised search over all of them
            learned = best_group_prior_scales(be, prob, [r["rho"] for r in results],
                                              [start_width] * n)
            again = [i for i in range(n) if float(learned[i]) != start_width]
            for i in again:
                widths[i] = float(learned[i])
            redone = group_ascent(be, prob, st, [results[i]["rho"] for i in again],
                                  [widths[i] for i in again],
                                  [concentration_factors(results[i]) for i in again],
                                  n_threads, max_iter=50, tol=1e-5)
            for i, result in zip(again, redone):
                results[i] = result
        return [(fixed_part + r["elbo"], (r["rho"], float(w))) for r, w in zip(results, widths)]

    views = group_feature_views(prob, st.N_jl)
    starts = [saved.rho.copy()] + [one_hot(labels, prob.K) for labels in
                                   _group_candidates(views, prob.K, max_clusters, n_seeds)]
    evaluated = evaluate_all(starts)
    best_value, best = evaluated[0]
    for value, candidate in evaluated[1:]:   # in order: the first of equal values wins
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
        for value, candidate in evaluate_all([one_hot(p, prob.K) for p in proposals]):
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


