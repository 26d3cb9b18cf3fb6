"""Differential abundance between the user's own conditions (case vs control, ...).

In NAM an individual's expected cell-type composition is omega_{., S_j}: the composition of the
individual cluster it belongs to.  For a condition c (a set of individuals) the expected
composition is the mean of omega_{., S_j} over its individuals, and the quantity of interest,
for each cell cluster l, is the difference of that mean between two conditions.

Its posterior is propagated from q, not taken from point estimates: each Monte Carlo draw takes
S_j ~ q(S_j) = Cat(rho_j) independently for every individual and omega from the Beta sticks of
q(u) (the same draws as ``Summary``'s intervals), then averages per condition.  So the interval
carries both the uncertainty of which cluster each individual is in and of the clusters'
compositions.  Because compositions are shared within an individual cluster, a difference
between conditions shows up only when the conditions are distributed differently over the
individual clusters; ``observed_a`` / ``observed_b`` (the mean per-individual share of each
cell cluster under q(M)) are given alongside as a description of the data.
"""

from __future__ import annotations

import numpy as np

__all__ = ["condition_differences"]


def _draw_clusters(rng, rho: np.ndarray, n_samples: int) -> np.ndarray:
    """(S, J) draws of S_j ~ Cat(rho_j), independently per individual."""
    cdf = np.cumsum(rho, axis=1)
    cdf /= cdf[:, -1:]
    u = rng.random((n_samples, rho.shape[0]))
    out = np.empty((n_samples, rho.shape[0]), dtype=np.int64)
    for j in range(rho.shape[0]):
        out[:, j] = np.searchsorted(cdf[j], u[:, j], side="right")
    return np.minimum(out, rho.shape[1] - 1)


def _comparisons(levels: list, reference):
    if reference is None:
        return [(levels[a], levels[b]) for a in range(len(levels))
                for b in range(a + 1, len(levels))]
    if reference not in levels:
        raise ValueError(f"reference {reference!r} is not one of the conditions {levels}.")
    return [(c, reference) for c in levels if c != reference]


def condition_differences(rho, u_a, u_b, condition, cell_index, observed=None,
                          reference=None, n_samples=4000, level=0.95, random_state=0):
    """The differential-abundance table.

    Parameters
    ----------
    rho : (J, K) q(S) of every individual (internal cluster indices).
    u_a, u_b : (L - 1, K) Beta parameters of the cell sticks q(u).
    condition : pandas Series (J,), the condition of each individual in the order of ``rho``;
        missing values leave the individual out.
    cell_index : (C,) internal index of each reported cell cluster (summary order).
    observed : (J, C) per-individual share of each reported cell cluster, or None.
    reference : a condition; comparisons are then (other - reference), else every pair
        (a - b, a before b in the condition order).

    Returns a long DataFrame, one row per (comparison, cell cluster).
    """
    import pandas as pd

    from ._summary import _interval, _stick_draws

    if not (0.0 < float(level) < 1.0):
        raise ValueError(f"level must be in (0, 1), got {level!r}.")
    n_samples = int(n_samples)
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples!r}.")
    keep = condition.notna().to_numpy()
    cond = condition[keep]
    if isinstance(cond.dtype, pd.CategoricalDtype):
        levels = [c for c in cond.cat.categories if (cond == c).any()]
    else:
        levels = list(pd.unique(cond))
        try:
            levels = sorted(levels)
        except TypeError:
            pass
    if len(levels) < 2:
        raise ValueError(f"differential abundance needs individuals of at least two "
                         f"conditions; found {levels} (after leaving out missing values).")
    comparisons = _comparisons(levels, reference)
    codes = pd.Index(levels).get_indexer(cond.to_numpy())
    rho = np.asarray(rho, dtype=float)[keep]
    C, K = len(levels), rho.shape[1]
    n_per = np.bincount(codes, minlength=C).astype(float)

    rng = np.random.default_rng(random_state)
    omega = _stick_draws(rng, np.asarray(u_a, float), np.asarray(u_b, float),
                         n_samples)                                       # (S, L, K)
    S_draw = _draw_clusters(rng, rho, n_samples)                          # (S, J')
    flat = (np.arange(n_samples)[:, None] * (C * K) + codes[None, :] * K + S_draw).ravel()
    counts = np.bincount(flat, minlength=n_samples * C * K).reshape(n_samples, C, K)
    share = counts / n_per[None, :, None]                                 # (S, C, K)
    means = np.einsum("sck,slk->scl", share, omega)[:, :, np.asarray(cell_index)]  # (S, C, Lo)

    obs_mean = None
    if observed is not None:
        obs = np.asarray(observed, dtype=float)[keep]
        obs_mean = np.stack([obs[codes == c].mean(axis=0) for c in range(C)])   # (C, Lo)
    rows = []
    for a, b in comparisons:
        ia, ib = levels.index(a), levels.index(b)
        diff = means[:, ia, :] - means[:, ib, :]
        lo, hi = _interval(diff, level)
        for l in range(diff.shape[1]):
            row = {"condition_a": a, "condition_b": b, "cell_cluster": l,
                   "n_a": int(n_per[ia]), "n_b": int(n_per[ib]),
                   "mean_a": float(means[:, ia, l].mean()),
                   "mean_b": float(means[:, ib, l].mean()),
                   "difference": float(diff[:, l].mean()), "lower": float(lo[l]),
                   "upper": float(hi[l]), "prob_greater": float(np.mean(diff[:, l] > 0))}
            if obs_mean is not None:
                row["observed_a"] = float(obs_mean[ia, l])
                row["observed_b"] = float(obs_mean[ib, l])
            rows.append(row)
    table = pd.DataFrame(rows)
    table["differs"] = (table["lower"] > 0) | (table["upper"] < 0)
    return table
