"""Local steps with the global factors held fixed: assignments for new cells and new groups.

A fitted model's global factors (sticks, concentrations, atoms) stay as they are; only q(M) of
the new cells and q(S) of the new groups are optimised.  Cells of a group seen in training keep
that group's fitted q(S) (one cell step is then exact).  Cells of a new group alternate the cell
step and the group step, each an exact coordinate-ascent update of the local part of the ELBO,
until its relative change falls below ``tol``.  The maths lives in the backend's step functions;
this module only arranges the calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._atoms import y_atoms, y_family
from ._data import as_float_matrix, prepare_data
from ._labels import check_same_kind
from ._state import Problem, State
from ._steps import scale_rows

__all__ = ["LocalResult", "local_fit"]


@dataclass
class LocalResult:
    """Local factors for new data, in the caller's cell order.

    ``groups`` (J,) are the unique labels of the new data (sorted where sortable); ``rho``
    (J, K) their q(S) (the fitted rows for known groups); ``known`` (J,) whether each group was
    seen in training; ``xi`` (N, L) q(M) of each cell; ``cell_score`` (N,) each cell's term of
    the local ELBO (see ``cell_scores``); ``group_score`` (J,) each new group's group-level
    terms (0 for known groups); ``n_iter`` / ``converged`` of the alternation and ``trace``, the
    local ELBO after each of its steps (empty when every group is known).
    """

    groups: np.ndarray
    known: np.ndarray
    rho: np.ndarray
    xi: np.ndarray
    cell_score: np.ndarray
    group_score: np.ndarray
    n_iter: int
    converged: bool
    trace: list


def _group_codes(fitted_groups: np.ndarray, new_groups: np.ndarray) -> np.ndarray:
    """Index of each new label among the fitted labels, -1 where it is new."""
    import pandas as pd

    return pd.Index(fitted_groups).get_indexer(pd.Index(new_groups))


def _new_group_x(X, labels: np.ndarray, q: int) -> np.ndarray:
    """x of the new groups (rows follow ``labels``): a DataFrame indexed by label (extra rows
    ignored) or an array with one row per new group in the order of ``labels``."""
    import pandas as pd

    if isinstance(X, pd.DataFrame):
        missing = pd.Index(labels).difference(X.index)
        if len(missing):
            raise ValueError(
                f"X has no row for the new group label(s) {missing.tolist()[:10]}; the model "
                f"was fit with group features, so new groups need theirs (a DataFrame "
                f"indexed by group label)."
            )
        # by position: .loc with boolean labels would be a mask, not a lookup
        Xa = as_float_matrix(X.iloc[X.index.get_indexer(pd.Index(labels))], "X")
    else:
        Xa = as_float_matrix(X, "X")
        if Xa.shape[0] != len(labels):
            raise ValueError(
                f"X has {Xa.shape[0]} rows but there are {len(labels)} new group(s) "
                f"{list(labels)[:10]}; give one row per new group in the order of their sorted "
                f"labels, or a DataFrame indexed by group label."
            )
    if Xa.shape[1] != q:
        raise ValueError(f"X has {Xa.shape[1]} columns but the model was fit with {q} group "
                         f"features.")
    return np.ascontiguousarray(Xa)


def _local_elbo(be, prob: Problem, st: State, elog_pi, elog_omega, ell_x, rho, new, stats,
                zeta=None):
    """The terms of the ELBO that involve the new local factors (globals fixed), with the
    composition terms tempered by ``zeta`` as in the fit.

    Cells: E log p(y | M, theta^y) + E log p(M | S, u) + H[q(M)]; new groups:
    E log p(S | v) + E log p(x | S, theta^x) + H[q(S)].
    """
    N_jl, n, s1, s2, H_xi = stats
    total = y_family(prob).loglik(be, (n, s1, s2), prob.y_centre, y_atoms(st))
    total += float(np.sum((scale_rows(N_jl, zeta) @ elog_omega) * rho)) + H_xi
    if new.any():
        r = np.ascontiguousarray(rho[new])
        total += float(np.sum(r * (elog_pi[None, :] + ell_x[new])))
        total += be.categorical_entropy(r)
    return float(total)


def local_fit(be, prob: Problem, st: State, fitted_groups: np.ndarray, Y, groups=None, X=None,
              max_iter: int = 200, tol: float = 1e-8, n_threads: int = 1,
              with_scores: bool = False) -> LocalResult:
    """Optimise q(M) of the cells in ``Y`` and q(S) of their groups not seen in training.

    ``fitted_groups`` are the training labels (``model.groups_``).  ``groups=None``: for a
    model fit on one group the cells join it; otherwise each cell is taken as an individual of
    its own, not seen in training, whose x is unknown (integrated out, so it adds nothing):
    the population-level prediction, which mixes the group clusters' compositions by their
    weights.  ``with_scores`` also computes the per-cell scores (one more pass over the
    cells); otherwise ``cell_score`` is None.
    """
    from ._steps import _elog_omega, _elog_pi, composition_weights

    Ya = as_float_matrix(Y, "Y")
    p = prob.Y.shape[1]
    if Ya.shape[1] != p:
        raise ValueError(f"Y has {Ya.shape[1]} features but the model was fit with {p}.")
    singletons = groups is None and fitted_groups.shape[0] != 1
    if singletons and X is not None:
        raise ValueError("X holds the group features of new groups, but groups is None (each "
                         "cell is then an individual of its own with unknown x); pass groups "
                         "with X, or drop X.")
    if groups is None:
        groups = (np.arange(Ya.shape[0]) if singletons
                  else np.repeat(fitted_groups[:1], Ya.shape[0]))
    data = prepare_data(Ya, groups, None)
    if not singletons:
        check_same_kind(fitted_groups, data.groups)
    codes = (np.full(data.n_groups, -1) if singletons
             else _group_codes(fitted_groups, data.groups))
    known = codes >= 0
    new = ~known
    K = st.K
    J = data.n_groups
    elog_pi = _elog_pi(be, st)
    elog_omega = _elog_omega(be, st)

    ell_x = np.zeros((J, K))
    if X is not None and not prob.has_x:
        raise ValueError("the model was fit without group features (X=None, the common atoms "
                         "model), so new groups are placed by their cells alone; pass X=None.")
    if prob.has_x and new.any() and not singletons:
        if X is None:
            raise ValueError(
                f"X is required for the new group(s) {data.groups[new].tolist()[:10]}: the "
                f"model was fit with group features. Pass their rows (a DataFrame indexed by "
                f"group label, or one row per new group in sorted label order)."
            )
        Xn = _new_group_x(X, data.groups[new], prob.X.shape[1])
        ell_x[new] = be.expected_loglik(Xn, st.mx, st.lamx, st.Wx, st.nux)
        _check_new_x(ell_x, new, data.groups)

    rho = np.empty((J, K))
    rho[known] = st.rho[codes[known]]
    # New groups start from the expected weights pi: the cells' first step then sees the
    # prior mixture of the group clusters' compositions.
    pi = np.exp(elog_pi - elog_pi.max())
    rho[new] = pi / pi.sum()
    rho = np.ascontiguousarray(rho)
    xi = np.zeros((data.n_cells, st.L))
    # each group's terms are weighted by its zeta_j (from its cells here), as in the fit
    zeta = composition_weights(data.group_sizes, st.donor_concentration)

    def cell_step():
        return y_family(prob).cell_step(be, data.Y, data.offsets, rho, elog_omega, y_atoms(st),
                                       prob.y_centre, xi, n_threads, zeta)

    stats = cell_step()
    n_iter, converged, trace = 1, not new.any(), []
    if new.any():
        prev = _local_elbo(be, prob, st, elog_pi, elog_omega, ell_x, rho, new, stats, zeta)
        trace.append(prev)
        for n_iter in range(1, max_iter + 1):  # noqa: B007 (n_iter is reported after the loop)
            fixed_rows = rho[known].copy()
            be.group_step(scale_rows(stats[0], zeta), elog_pi, elog_omega, ell_x, rho)
            rho[known] = fixed_rows
            trace.append(_local_elbo(be, prob, st, elog_pi, elog_omega, ell_x, rho, new, stats,
                                     zeta))
            stats = cell_step()
            cur = _local_elbo(be, prob, st, elog_pi, elog_omega, ell_x, rho, new, stats, zeta)
            trace.append(cur)
            if abs(cur - prev) <= tol * abs(cur):
                converged = True
                break
            prev = cur

    cell_score = (data.to_caller_order(_cell_scores(be, prob, st, data, rho, elog_omega))
                  if with_scores else None)
    group_score = np.zeros(J)
    if new.any():
        r = rho[new]
        with np.errstate(divide="ignore", invalid="ignore"):
            ent = -np.sum(np.where(r > 0, r * np.log(r), 0.0), axis=1)
        group_score[new] = np.sum(r * (elog_pi[None, :] + ell_x[new]), axis=1) + ent
    _check_finite(data, xi, rho, cell_score, group_score, new)
    return LocalResult(groups=data.groups, known=known, rho=rho,
                       xi=data.to_caller_order(xi), cell_score=cell_score,
                       group_score=group_score, n_iter=n_iter, converged=converged,
                       trace=trace)


def _check_new_x(ell_x, new, labels) -> None:
    """The new groups' x terms are finite, or a NumericalError naming those groups."""
    from .exceptions import NumericalError

    bad = new & ~np.isfinite(ell_x).all(axis=1)
    if bad.any():
        raise NumericalError(
            f"the new group(s) {labels[bad].tolist()[:10]} cannot be placed: their x lies too "
            f"far from every group cluster for float64 (e.g. values of 1e200 against "
            f"covariates of unit scale). Check their covariates' units and scale; such groups "
            f"are outliers of this model.")


def _check_finite(data, xi, rho, cell_score, group_score, new) -> None:
    """Every result for new data is finite, or a NumericalError naming the rows of Y.

    Rows far enough from every cluster (say 1e200 for data of unit scale) overflow float64
    in their squared distances; their q(M) would be NaN and ``predict`` would return a
    valid-looking label for them.  (The new groups' x is checked before, by _check_new_x, so
    what is left here comes from the cells.)
    """
    from .exceptions import NumericalError

    bad = ~np.isfinite(xi).all(axis=1)
    if cell_score is not None:
        bad |= ~np.isfinite(cell_score)[data.order]      # caller order -> sorted layout
    bad_groups = ~np.isfinite(rho).all(axis=1) | ~np.isfinite(group_score)
    bad |= np.repeat(bad_groups, data.group_sizes)
    if bad.any():
        rows = np.sort(data.order[bad])
        raise NumericalError(
            f"row(s) {rows[:10].tolist()}{' ...' if rows.size > 10 else ''} of Y cannot be "
            f"placed: they (or cells of their group) lie too far from every cell cluster for "
            f"float64 (e.g. values of 1e200 against data of unit scale). Check their units and "
            f"scale; such rows are outliers of this model.")


def _cell_scores(be, prob: Problem, st: State, data, rho, elog_omega) -> np.ndarray:
    """Each cell's local ELBO term at its optimal q(M), sorted layout.

    For cell i of group j: max over q(M_i) of E[log p(y_i | M_i, theta^y) + log p(M_i | S_j, u)]
    + H[q(M_i)] = log sum_l exp(ell_l(y_i) + sum_k rho_jk E log omega_lk).
    """
    from scipy.special import logsumexp

    ell = y_family(prob).expected_loglik(be, data.Y, y_atoms(st))
    ell += np.repeat(rho @ elog_omega.T, data.group_sizes, axis=0)
    return logsumexp(ell, axis=1)
