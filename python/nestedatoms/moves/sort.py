"""Renumber clusters by decreasing size: the stick-breaking prior favours large clusters first.

Empty clusters need no deletion move: an empty cluster sits exactly at its prior, and sorting
moves it behind every occupied one, where stick-breaking makes it free.
"""

from __future__ import annotations

import numpy as np

from .._state import Problem, State
from .._steps import GLOBAL_BLOCKS, elbo
from ._base import gain_ok, restore, snapshot


def sort_clusters(be, prob: Problem, st: State, n_threads: int = 1,
                  elbo_now: float | None = None) -> bool:
    """Renumber group clusters and cell atoms by decreasing expected size; keep if ELBO rises.
    ``elbo_now``: the ELBO of ``st``, when the caller has it (``Move.knows_elbo``)."""
    g_perm = np.argsort(-_sizes(st.rho.sum(axis=0)), kind="stable")
    c_perm = np.argsort(-_sizes(st.y_n), kind="stable")
    identity_g = np.array_equal(g_perm, np.arange(g_perm.size))
    identity_c = np.array_equal(c_perm, np.arange(c_perm.size))
    if identity_g and identity_c:
        return False
    before = elbo(be, prob, st) if elbo_now is None else elbo_now
    saved = snapshot(st)
    st.rho = np.ascontiguousarray(st.rho[:, g_perm])
    if prob.has_x:
        st.mx, st.lamx, st.Wx, st.nux = (st.mx[g_perm], st.lamx[g_perm], st.Wx[g_perm],
                                         st.nux[g_perm])
    if not identity_c:
        st.xi = _permute_columns(st.xi, c_perm)
        st.N_jl = np.ascontiguousarray(st.N_jl[:, c_perm])
        st.y_n, st.y_s1, st.y_s2 = st.y_n[c_perm], st.y_s1[c_perm], st.y_s2[c_perm]
        st.my, st.lamy, st.Wy, st.nuy = (st.my[c_perm], st.lamy[c_perm], st.Wy[c_perm],
                                         st.nuy[c_perm])
    # Sticks and concentrations follow the new order (no pass over the cells).
    for _, update in GLOBAL_BLOCKS:
        update(be, prob, st, n_threads)
    if gain_ok(elbo(be, prob, st), before):
        return True
    restore(st, saved)
    if not identity_c:
        st.xi = _permute_columns(st.xi, np.argsort(c_perm))
    return False


# Expected sizes below this are empty clusters whose mass is rounding noise (1e-300, say): they
# keep their order.  Permuting them changed nothing the ELBO can see, yet "fired" on almost every
# sweep (its refresh of the global blocks gaining what the sweep had left), which cost a
# snapshot, a refresh and two ELBOs each time and kept the run from ever settling.
_EMPTY = 1e-8


def _sizes(expected_sizes: np.ndarray) -> np.ndarray:
    return np.where(expected_sizes < _EMPTY, 0.0, expected_sizes)


def _permute_columns(xi: np.ndarray, perm: np.ndarray, rows: int = 1 << 15):
    """xi[:, :] = xi[:, perm] in place, a slab of rows at a time: a whole-array temporary
    would be another N x L array at the fit's memory peak.  Returns xi; an xi kept on dask
    workers (``_dask.WorkerXi``) is not an array and returns a permuted copy of itself."""
    if not isinstance(xi, np.ndarray):
        return xi.permuted(perm)
    for start in range(0, xi.shape[0], rows):
        slab = xi[start:start + rows]
        slab[...] = slab[:, perm]
    return xi


