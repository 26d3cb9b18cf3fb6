"""Fold one group cluster into another (the pair that raises the ELBO most)."""

from __future__ import annotations

import numpy as np

from .._state import Problem, State
from .._steps import elbo
from ._base import gain_ok, refresh_without_cells, restore, snapshot


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
        saved = snapshot(st)
        best_value, best_rho = before, None
        for k1, k2 in _group_pairs(st, max_pairs):
            st.rho[:, k1] += st.rho[:, k2]
            st.rho[:, k2] = 0.0
            st.H_rho = be.categorical_entropy(st.rho)
            refresh_without_cells(be, prob, st, n_threads)
            value = elbo(be, prob, st)
            if gain_ok(value, best_value):
                best_value, best_rho = value, st.rho.copy()
            restore(st, saved)
            saved = snapshot(st)
        if best_rho is None:
            return changed
        st.rho = best_rho
        st.H_rho = be.categorical_entropy(st.rho)
        refresh_without_cells(be, prob, st, n_threads)
        if not gain_ok(elbo(be, prob, st), before):
            restore(st, saved)
            return changed
        changed = True

