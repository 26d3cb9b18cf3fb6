"""Moves between sweeps that let coordinate ascent leave local optima.

Each move proposes a new state, re-optimises the cheap factors (everything but the cells, so no
pass over the cells is needed) and keeps the proposal only if the ELBO rises; otherwise it puts
the old state back.  So no move can lower the ELBO.

* ``sort_clusters``: renumber clusters by decreasing size (the stick-breaking prior favours
  large clusters first).
* ``merge_group_clusters``: fold one group cluster into another.
* ``merge_cell_atoms``: fold one cell atom into another.  The merged statistics are sums of the
  two atoms' statistics; only the entropy of q(M) needs the two columns of xi.
* ``agglomerate_cell_atoms``: merge many atoms at once, at the best level of a greedy
  agglomeration; repairs a true cluster cut into many pieces, where every pairwise merge fails.
* ``split_cell_atoms``: cut an atom in two by 2-means on its cells, move one half to an empty
  atom, let those cells re-choose among all atoms for a few local sweeps; keep if the ELBO rises.
* ``search_group_partition``: with the cells held fixed, every group-level factor can be
  re-optimised in O(J K L) without touching the cells; so try many group partitions (k-means
  for every k up to ~10 on composition and x together, on x alone and on the composition
  alone; merges and 2-means splits of clusters), refine each by group-only coordinate ascent
  and keep the best if it beats the current state.  Where the x prior's width is learned,
  each candidate is scored at its own width, and the best is kept with it.
* ``learn_group_prior_width``: the x prior's width (a prior setting, not a variational factor)
  that maximises the ELBO for the partition reached.

Empty clusters need no deletion move: an empty cluster sits exactly at its prior, and
``sort_clusters`` moves it behind every occupied one, where stick-breaking makes it free.

Scheduling: moves that run after every sweep are cheap (no pass over the cells, or a few
column operations); moves marked ``at_convergence = True`` (the agglomeration, the splits and
the group search) run when the sweeps have converged, or every ``_STALL_PERIOD`` sweeps of a run
that creeps without converging, and the sweeps resume if one of them succeeds.
"""

from __future__ import annotations

import copy

import numpy as np

from ._state import Problem, State
from ._steps import (GLOBAL_BLOCKS, cell_weights, elbo, group_weights, learn_x_prior_scale,
                     update_groups, update_x_atoms, weighted_entropy, weighted_y_stats)

__all__ = ["sort_clusters", "merge_group_clusters", "merge_cell_atoms", "agglomerate_cell_atoms",
           "split_cell_atoms", "search_group_partition", "learn_group_prior_width",
           "DEFAULT_MOVES",
           "refresh_without_cells", "optimise_groups"]

# A proposal must beat the current ELBO by this relative margin, so rounding noise never
# flips a decision back and forth.
_MIN_RELATIVE_GAIN = 1e-10


def _snapshot(st: State) -> State:
    """A copy of the state sharing ``xi`` (the one large array, which moves restore by hand)."""
    new = copy.copy(st)
    for name, value in vars(st).items():
        if isinstance(value, np.ndarray) and name != "xi":
            setattr(new, name, value.copy())
    return new


def _restore(st: State, saved: State) -> None:
    for name, value in vars(saved).items():
        if name != "xi":
            setattr(st, name, value)


def refresh_without_cells(be, prob: Problem, st: State, n_threads: int = 1) -> None:
    """Re-optimise every factor but q(M): global blocks, q(S), global blocks again."""
    for _, update in GLOBAL_BLOCKS:
        update(be, prob, st, n_threads)
    update_groups(be, prob, st, n_threads)
    for _, update in GLOBAL_BLOCKS:
        update(be, prob, st, n_threads)


def _gain_ok(new: float, old: float) -> bool:
    return new > old + _MIN_RELATIVE_GAIN * abs(old)


# ---------------------------------------------------------------------------------------------
def sort_clusters(be, prob: Problem, st: State, n_threads: int = 1) -> bool:
    """Renumber group clusters and cell atoms by decreasing expected size; keep if ELBO rises."""
    g_perm = np.argsort(-st.rho.sum(axis=0), kind="stable")
    c_perm = np.argsort(-st.y_n, kind="stable")
    identity_g = np.array_equal(g_perm, np.arange(g_perm.size))
    identity_c = np.array_equal(c_perm, np.arange(c_perm.size))
    if identity_g and identity_c:
        return False
    before = elbo(be, prob, st)
    saved = _snapshot(st)
    st.rho = np.ascontiguousarray(st.rho[:, g_perm])
    if prob.has_x:
        st.mx, st.lamx, st.Wx, st.nux = (st.mx[g_perm], st.lamx[g_perm], st.Wx[g_perm],
                                         st.nux[g_perm])
    if not identity_c:
        _permute_columns(st.xi, c_perm)
        st.N_jl = np.ascontiguousarray(st.N_jl[:, c_perm])
        st.y_n, st.y_s1, st.y_s2 = st.y_n[c_perm], st.y_s1[c_perm], st.y_s2[c_perm]
        st.my, st.lamy, st.Wy, st.nuy = (st.my[c_perm], st.lamy[c_perm], st.Wy[c_perm],
                                         st.nuy[c_perm])
    # Sticks and concentrations follow the new order (no pass over the cells).
    for _, update in GLOBAL_BLOCKS:
        update(be, prob, st, n_threads)
    if _gain_ok(elbo(be, prob, st), before):
        return True
    _restore(st, saved)
    if not identity_c:
        _permute_columns(st.xi, np.argsort(c_perm))
    return False


def _permute_columns(xi: np.ndarray, perm: np.ndarray, rows: int = 1 << 15) -> None:
    """xi[:, :] = xi[:, perm] in place, a slab of rows at a time: a whole-array temporary
    would be another N x L array at the fit's memory peak."""
    for start in range(0, xi.shape[0], rows):
        slab = xi[start:start + rows]
        slab[...] = slab[:, perm]


# ---------------------------------------------------------------------------------------------
def _group_pairs(st: State, max_pairs: int):
    """Occupied group-cluster pairs, the most similar (by membership overlap and x mean) first."""
    occupied = np.nonzero(st.rho.sum(axis=0) > 0.5)[0]
    if occupied.size < 2:
        return []
    comp = st.N_jl / st.N_jl.sum(axis=1, keepdims=True)
    R = st.rho[:, occupied]
    profile = (R.T @ comp) / R.sum(axis=0)[:, None]          # each cluster's composition
    pairs = []
    for a in range(occupied.size):
        for b in range(a + 1, occupied.size):
            d = float(np.sum((profile[a] - profile[b]) ** 2))
            pairs.append((d, int(occupied[a]), int(occupied[b])))
    pairs.sort()
    return [(k1, k2) for _, k1, k2 in pairs[:max_pairs]]


def merge_group_clusters(be, prob: Problem, st: State, n_threads: int = 1,
                         max_pairs: int = 30) -> bool:
    """Fold group cluster k2 into k1 for the pair (among the most similar) that raises the
    ELBO most; repeat while some merge gains.

    Taking the best pair, not the first that gains, matters: a first-gain greedy search from an
    over-split start merges distinct clusters that happen to be tried early and overshoots.
    """
    changed = False
    while True:  # ends: every accepted merge empties one more cluster
        before = elbo(be, prob, st)
        saved = _snapshot(st)
        best_value, best_rho = before, None
        for k1, k2 in _group_pairs(st, max_pairs):
            st.rho[:, k1] += st.rho[:, k2]
            st.rho[:, k2] = 0.0
            st.H_rho = be.categorical_entropy(st.rho)
            refresh_without_cells(be, prob, st, n_threads)
            value = elbo(be, prob, st)
            if _gain_ok(value, best_value):
                best_value, best_rho = value, st.rho.copy()
            _restore(st, saved)
            saved = _snapshot(st)
        if best_rho is None:
            return changed
        st.rho = best_rho
        st.H_rho = be.categorical_entropy(st.rho)
        refresh_without_cells(be, prob, st, n_threads)
        if not _gain_ok(elbo(be, prob, st), before):
            _restore(st, saved)
            return changed
        changed = True


# ---------------------------------------------------------------------------------------------
def _atom_score(be, prob: Problem, n, s1, s2) -> float:
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

    single = {int(l): _atom_score(be, prob, st.y_n[[l]], st.y_s1[[l]], st.y_s2[[l]])
              for l in occupied}
    pairs = []
    for a in range(occupied.size):
        for b in range(a + 1, occupied.size):
            l1, l2 = int(occupied[a]), int(occupied[b])
            idx = [l1, l2]
            merged = _atom_score(be, prob, st.y_n[idx].sum(keepdims=True),
                                 st.y_s1[idx].sum(0)[None], st.y_s2[idx].sum(0)[None])
            # merging also frees one atom, which then sits at its prior (score 0 up to terms
            # that cancel between proposals), so rank by the y-part gain alone
            pairs.append((-(merged - single[l1] - single[l2]), l1, l2))
    pairs.sort()
    return [(l1, l2) for _, l1, l2 in pairs[:max_pairs]]


def merge_cell_atoms(be, prob: Problem, st: State, n_threads: int = 1,
                     max_pairs: int = 5) -> bool:
    """Try folding atom l2 into l1 for the most promising pairs; keep every gain found."""
    changed = False
    while True:  # ends: every accepted merge empties one more atom
        before = elbo(be, prob, st)
        accepted = False
        for l1, l2 in _cell_pairs(be, prob, st, max_pairs):
            # The proposal is judged on the statistics alone (nothing below reads xi), so xi
            # is rewritten only for an accepted merge: one (N, 2) read per proposal.
            saved = _snapshot(st)
            pair = st.xi[:, [l1, l2]]
            merged = pair.sum(axis=1, keepdims=True)
            w = cell_weights(prob, st)
            st.H_xi = (st.H_xi - weighted_entropy(be, pair, w)
                       + weighted_entropy(be, merged, w))
            _fold_atom_stats(be, prob, st, [[l1, l2]], n_threads)
            if _gain_ok(elbo(be, prob, st), before):
                st.xi[:, l1] = merged[:, 0]
                st.xi[:, l2] = 0.0
                accepted = changed = True
                break
            _restore(st, saved)
        if not accepted:
            return changed


def _agglomeration(be, prob: Problem, st: State):
    """Greedy agglomeration of the occupied atoms by the y-part gain of each merge (as in
    ``_cell_pairs``): the list of partitions it passes through, each a list of atom groups
    (the first atom of a group is the one that keeps the merged mass)."""
    groups = {int(l): [int(l)] for l in np.nonzero(st.y_n > 0.5)[0]}
    stats = {l: (st.y_n[[l]], st.y_s1[[l]], st.y_s2[[l]]) for l in groups}
    score = {l: _atom_score(be, prob, *stats[l]) for l in groups}

    def merged_stats(a, b):
        return tuple(x + y for x, y in zip(stats[a], stats[b]))

    gain = {}
    for a in groups:
        for b in groups:
            if a < b:
                gain[a, b] = _atom_score(be, prob, *merged_stats(a, b)) - score[a] - score[b]
    levels = []
    while len(groups) > 1:
        a, b = max(gain, key=gain.get)
        stats[a] = merged_stats(a, b)
        score[a] = gain[a, b] + score[a] + score[b]
        groups[a] += groups.pop(b)
        gain = {k: v for k, v in gain.items() if b not in k and a not in k}
        for c in groups:
            if c != a:
                key = (min(a, c), max(a, c))
                gain[key] = _atom_score(be, prob, *merged_stats(*key)) - score[a] - score[c]
        levels.append([list(g) for g in groups.values()])
    return levels


def agglomerate_cell_atoms(be, prob: Problem, st: State, n_threads: int = 1) -> bool:
    """Merge many atoms at once: the best level of a greedy agglomeration, if the ELBO rises.

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
    before = elbo(be, prob, st)
    saved = _snapshot(st)
    entropy_change = _GroupEntropyChange(be, st.xi, cell_weights(prob, st))
    best_value, best_level, best_change = before, None, 0.0
    for i, level in enumerate(levels):
        _fold_atom_stats(be, prob, st, level, n_threads)
        bound = elbo(be, prob, st)
        _restore(st, saved)
        saved = _snapshot(st)    # the folding works in place: keep a clean copy each time
        if _gain_ok(bound, best_value):
            change = sum(entropy_change(g) for g in level if len(g) > 1)
            if _gain_ok(bound + change, best_value):
                best_value, best_level, best_change = bound + change, i, change
    if best_level is None:
        return False
    level = levels[best_level]
    st.H_xi += best_change
    _fold_atom_stats(be, prob, st, level, n_threads)
    for group in level:
        for l in group[1:]:      # column by column: no N x |group| temporary
            st.xi[:, group[0]] += st.xi[:, l]
            st.xi[:, l] = 0.0
    return True


class _GroupEntropyChange:
    """Entropy of q(M) after summing a group of xi's columns, minus before; cached per group
    and per column, and read by row blocks so that no N x L temporary is made."""

    def __init__(self, be, xi: np.ndarray, weights=None, rows: int = 1 << 15):
        self.be, self.xi, self.rows, self.weights = be, xi, rows, weights
        self.columns: dict[int, float] = {}
        self.groups: dict[tuple, float] = {}

    def _entropy_of_sum(self, cols) -> float:
        # the backend's entropy, as the cached H_xi is computed, on an (rows, 1) block
        total = 0.0
        for start in range(0, self.xi.shape[0], self.rows):
            block = self.xi[start:start + self.rows, cols].sum(axis=1, keepdims=True)
            w = None if self.weights is None else self.weights[start:start + self.rows]
            total += weighted_entropy(self.be, block, w)
        return total

    def __call__(self, group) -> float:
        key = tuple(sorted(group))
        if key not in self.groups:
            for l in key:
                if l not in self.columns:
                    self.columns[l] = self._entropy_of_sum([l])
            self.groups[key] = (self._entropy_of_sum(list(key))
                                - sum(self.columns[l] for l in key))
        return self.groups[key]


def _fold_atom_stats(be, prob: Problem, st: State, groups, n_threads: int) -> None:
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


agglomerate_cell_atoms.at_convergence = True


# ---------------------------------------------------------------------------------------------
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


def _hard_rho(labels: np.ndarray, K: int) -> np.ndarray:
    rho = np.zeros((labels.shape[0], K))
    rho[np.arange(labels.shape[0]), labels] = 1.0
    return rho


def _set_rho(be, st: State, rho: np.ndarray) -> None:
    st.rho = np.ascontiguousarray(rho)
    st.H_rho = be.categorical_entropy(st.rho)


def _group_candidates(feature_views, K: int, max_clusters: int, n_seeds: int):
    """Hard group partitions to try: k-means on each feature view for k = 1..max_clusters.

    A single-source view's partition that an earlier candidate already proposed is left out
    (it would score the same).  The joint view's list is kept whole, so that without x (one
    view) the search is exactly what it was before the other views were added.
    """
    from ._init import kmeans_labels

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
    from ._init import relabel_by_first_appearance

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
    from ._init import group_feature_views, kmeans_labels

    if prob.K < 2 or prob.data.n_groups < 2:
        return False
    before = elbo(be, prob, st)
    saved = _snapshot(st)
    learns_width = prob.has_x and prob.learn_x_prior_scale

    def evaluate(rho):
        _set_rho(be, st, rho)
        st.x_prior_scale = saved.x_prior_scale   # every candidate starts from the same width
        value = optimise_groups(be, prob, st, n_threads, max_iter=50, tol=1e-5)
        if learns_width:
            width = learn_x_prior_scale(be, prob, st)
            if width != st.x_prior_scale:
                st.x_prior_scale = width
                value = optimise_groups(be, prob, st, n_threads, max_iter=50, tol=1e-5)
        return value, (st.rho.copy(), float(st.x_prior_scale))

    best_value, best = evaluate(saved.rho.copy())
    views = group_feature_views(prob, st.N_jl)
    for labels in _group_candidates(views, prob.K, max_clusters, n_seeds):
        value, candidate = evaluate(_hard_rho(labels, prob.K))
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
            value, candidate = evaluate(_hard_rho(proposal, prob.K))
            if value > best_value + _MIN_RELATIVE_GAIN * abs(best_value):
                best_value, best, improved = value, candidate, True
        if not improved:
            break
    _restore(st, saved)
    best_rho, best_width = best
    # Only a different partition counts: polishing the current one (or its width) is the
    # sweeps' and the width move's job, and reporting it as a move would keep the run from
    # ever converging.
    same = adjusted_partition_equal(best_rho.argmax(axis=1), saved.rho.argmax(axis=1))
    if same or not _gain_ok(best_value, before):
        return False
    _set_rho(be, st, best_rho)
    st.x_prior_scale = best_width
    optimise_groups(be, prob, st, n_threads)
    # the re-run differs from the search only by rounding, but check both conditions again:
    # the ELBO rose, and the refinement did not drift back to the partition it started from
    moved = not adjusted_partition_equal(st.rho.argmax(axis=1), saved.rho.argmax(axis=1))
    if moved and _gain_ok(elbo(be, prob, st), before):
        return True
    _restore(st, saved)
    return False


search_group_partition.at_convergence = True


# ---------------------------------------------------------------------------------------------
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
    from ._init import kmeans_labels

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
        saved = _snapshot(st)
        saved_rows = st.xi[rows].copy()
        moved = rows[halves == 1]
        st.xi[moved, target] = st.xi[moved, l]       # moving mass between columns leaves the
        st.xi[moved, l] = 0.0                        # entropy of q(M) unchanged
        _recompute_cell_stats(be, prob, st, (l, target))
        refresh_without_cells(be, prob, st, n_threads)
        for _ in range(n_local_sweeps):
            _local_cell_sweep(be, prob, st, rows, cell_group, n_threads)
            refresh_without_cells(be, prob, st, n_threads)
        if _gain_ok(elbo(be, prob, st), before):
            changed = True
            continue
        _restore(st, saved)
        st.xi[rows] = saved_rows
    return changed


split_cell_atoms.at_convergence = True


# ---------------------------------------------------------------------------------------------
# A width change smaller than this (relative) does not count as a move, so runs converge.
_WIDTH_TOLERANCE = 1e-3


def learn_group_prior_width(be, prob: Problem, st: State, n_threads: int = 1) -> bool:
    """``learn_group_prior_scale``: at convergence, the x prior's width f (<= 1) that maximises
    the ELBO for the partition reached, then q(theta^x) under it; the sweeps resume if f moved.

    Only at convergence, not in every sweep: early partitions (the start over-splits the
    individuals, often into singletons) say nothing about the width, and the ELBO then drifts
    f to its lower bound, where the prior forbids every merge: the fit stays split for good
    (seen at lam = 0.5, J = 12).  A converged partition does inform it.  The ELBO rises: the
    current f is one of the candidates, and q(theta^x) is then set to its optimum.
    """
    if not (prob.has_x and prob.learn_x_prior_scale):
        return False
    old = float(st.x_prior_scale)
    st.x_prior_scale = learn_x_prior_scale(be, prob, st)
    update_x_atoms(be, prob, st, n_threads)
    return abs(np.log(st.x_prior_scale) - np.log(old)) > _WIDTH_TOLERANCE


learn_group_prior_width.at_convergence = True


# A concentration change smaller than this (relative) does not count as a move.
_CONCENTRATION_TOLERANCE = 0.05


def learn_donor_variation(be, prob: Problem, st: State, n_threads: int = 1) -> bool:
    """``donor_concentration="auto"``: at convergence, the donors' concentration c around their
    cluster's composition, by the Dirichlet-multinomial evidence of the partition reached
    (``_donor_variation``); the sweeps resume under the new tempering if c moved.

    c is a setting of the objective, not a variational factor: changing it changes the
    objective, so this move is not judged by the ELBO (the trace is monotone between changes
    of c, and ``donor_concentration_`` says which objective the final ELBO is).
    """
    if not prob.learn_donor_concentration:
        return False
    from ._donor_variation import learn_concentration

    old = float(st.donor_concentration)
    new = learn_concentration(st.N_jl, st.rho)
    if np.isinf(old) and np.isinf(new):
        return False
    if np.isfinite(old) and np.isfinite(new) and abs(np.log(new / old)) <= (
            _CONCENTRATION_TOLERANCE):
        return False
    st.donor_concentration = new
    refresh_without_cells(be, prob, st, n_threads)
    return True


learn_donor_variation.at_convergence = True


# The donor concentration is learned last, on the partition the search and the width have
# refined: learned first, at a convergence where two groups were still merged, it read their
# difference as donor variation and kept them merged (NAM-exact data, 2 of 7 settings).
DEFAULT_MOVES = (merge_cell_atoms, sort_clusters, agglomerate_cell_atoms, split_cell_atoms,
                 search_group_partition, learn_group_prior_width, learn_donor_variation)
