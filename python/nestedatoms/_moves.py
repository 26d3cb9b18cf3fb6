"""Moves between sweeps that let coordinate ascent leave local optima.

Each move proposes a new state, re-optimises the cheap factors (everything but the cells, so no
pass over the cells is needed) and keeps the proposal only if the ELBO rises; otherwise it puts
the old state back.  So no move can lower the ELBO.

* ``sort_clusters``: renumber clusters by decreasing size (the stick-breaking prior favours
  large clusters first).
* ``merge_group_clusters``: fold one group cluster into another.
* ``merge_cell_atoms``: fold one cell atom into another.  The merged statistics are sums of the
  two atoms' statistics; only the entropy of q(M) needs the two columns of xi.
"""

from __future__ import annotations

import copy

import numpy as np

from ._state import Problem, State
from ._steps import GLOBAL_BLOCKS, elbo, update_groups

__all__ = ["sort_clusters", "merge_group_clusters", "merge_cell_atoms", "DEFAULT_MOVES",
           "refresh_without_cells"]

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


def _entropy(be, column: np.ndarray) -> float:
    return be.categorical_entropy(np.ascontiguousarray(column[:, None]))


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
        st.xi[...] = st.xi[:, c_perm]
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
        inverse = np.argsort(c_perm)
        st.xi[...] = st.xi[:, inverse]
    return False


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
    """Try folding group cluster k2 into k1 for the most similar pairs; keep the first gain."""
    changed = False
    while True:  # ends: every accepted merge empties one more cluster
        before = elbo(be, prob, st)
        accepted = False
        for k1, k2 in _group_pairs(st, max_pairs):
            saved = _snapshot(st)
            st.rho[:, k1] += st.rho[:, k2]
            st.rho[:, k2] = 0.0
            st.H_rho = be.categorical_entropy(st.rho)
            refresh_without_cells(be, prob, st, n_threads)
            if _gain_ok(elbo(be, prob, st), before):
                accepted = changed = True
                break
            _restore(st, saved)
        if not accepted:
            return changed


# ---------------------------------------------------------------------------------------------
def _cell_pairs(be, prob: Problem, st: State, max_pairs: int):
    """Occupied atom pairs ranked by the ELBO change of the y part alone when merged."""
    occupied = np.nonzero(st.y_n > 0.5)[0]
    if occupied.size < 2:
        return []
    p = prob.y_prior

    def atom_score(n, s1, s2):
        m, lam, W, nu = be.nw_posterior(n, s1, s2, prob.y_centre, p.m0, p.lam0, p.W0inv, p.nu0)
        return (be.nw_loglik_from_stats(n, s1, s2, prob.y_centre, m, lam, W, nu)
                + be.nw_prior_term(m, lam, W, nu, p.m0, p.lam0, p.W0inv, p.nu0)
                + be.nw_entropy(m, lam, W, nu))

    single = {int(l): atom_score(st.y_n[[l]], st.y_s1[[l]], st.y_s2[[l]]) for l in occupied}
    pairs = []
    for a in range(occupied.size):
        for b in range(a + 1, occupied.size):
            l1, l2 = int(occupied[a]), int(occupied[b])
            idx = [l1, l2]
            merged = atom_score(st.y_n[idx].sum(keepdims=True), st.y_s1[idx].sum(0)[None],
                                st.y_s2[idx].sum(0)[None])
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
            saved = _snapshot(st)
            col1, col2 = st.xi[:, l1].copy(), st.xi[:, l2].copy()
            merged = col1 + col2
            st.H_xi = (st.H_xi - _entropy(be, col1) - _entropy(be, col2)
                       + _entropy(be, merged))
            st.xi[:, l1] = merged
            st.xi[:, l2] = 0.0
            st.N_jl[:, l1] += st.N_jl[:, l2]
            st.N_jl[:, l2] = 0.0
            for name in ("y_n", "y_s1", "y_s2"):
                arr = getattr(st, name)
                arr[l1] += arr[l2]
                arr[l2] = 0.0
            refresh_without_cells(be, prob, st, n_threads)
            if _gain_ok(elbo(be, prob, st), before):
                accepted = changed = True
                break
            _restore(st, saved)
            st.xi[:, l1], st.xi[:, l2] = col1, col2
        if not accepted:
            return changed


DEFAULT_MOVES = (merge_cell_atoms, merge_group_clusters, sort_clusters)
