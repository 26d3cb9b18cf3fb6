"""Priors, the problem being fit, and the variational state (model sections 2 and 3).

The state is a plain bag of NumPy arrays that Python owns; either backend reads it and writes
it in place, which is what lets tests step one state with both backends block by block.
Names follow the symbols of the model's specification.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from ._data import NestedData, exact_column_means
from ._validation import InvalidParameterError, check_nw_prior

__all__ = ["NWPrior", "ConcentrationPrior", "Problem", "State", "resolve_nw_prior"]

_SKLEARN_PRIOR_NAMES = {
    "mean_prior": "m0",
    "mean_precision_prior": "lam0",
    "degrees_of_freedom_prior": "nu0",
    "covariance_prior": "W0inv",
}


@dataclass
class NWPrior:
    """Normal-Wishart prior NW(m0, lam0, W0, nu0), stored with W0inv = W0^-1."""

    m0: np.ndarray
    lam0: float
    W0inv: np.ndarray
    nu0: float

    @property
    def dim(self) -> int:
        return self.m0.shape[0]


@dataclass
class ConcentrationPrior:
    """Gamma(shape, rate) prior on a DP concentration, or a fixed value when ``fixed``."""

    shape: float
    rate: float
    fixed: float | None = None


def _robust_covariance(Z: np.ndarray, cov: np.ndarray | None = None) -> np.ndarray:
    """Covariance of the rows of Z; a singular one becomes its diagonal plus a small ridge.

    ``cov``: the sample covariance, already computed batch by batch (``_batches``); Z then
    only gives the shape.
    """
    D = Z.shape[1]
    if Z.shape[0] < 2:
        return np.eye(D)
    if cov is None:
        cov = sample_covariance(Z)
    scale = float(np.trace(cov)) / D
    if not np.isfinite(scale) or scale <= 0.0:
        return np.eye(D)
    try:
        np.linalg.cholesky(cov)
        if np.linalg.cond(cov) < 1e12:
            return cov
    except np.linalg.LinAlgError:
        pass
    diag = np.diag(cov).copy()
    diag[diag <= 0.0] = scale
    return np.diag(diag) + 1e-6 * scale * np.eye(D)


_COVARIANCE_ROWS = 1 << 16


def sample_covariance(Z: np.ndarray) -> np.ndarray:
    """The sample covariance (np.cov's) of the rows of Z about exact means: a constant column
    then has exactly zero variance at any magnitude.

    Slab by slab of rows, each centred and added to the scatter in order: np.cov of the
    centred Z made two N x D copies of it (Y at OneK1K is 305 MB, and on this project's
    machines first touching that much new memory costs seconds).  BLAS on one thread, so the
    sums over rows do not depend on the thread count (as ``_batches.batch_scatter``).
    """
    from ._blas import blas_threads

    means = exact_column_means(Z)
    n, D = Z.shape
    scatter = np.zeros((D, D))
    with blas_threads(1):
        for start in range(0, n, _COVARIANCE_ROWS):
            C = Z[start:start + _COVARIANCE_ROWS] - means
            scatter += C.T @ C
    return scatter / (n - 1)


# How much narrower than its share of the volume each individual cluster is expected to be
# (x layer, "empirical" prior); the recovery study's prior ablation measured the choice.
GROUP_SEPARATION = 2.0


def _feature_variances(Z: np.ndarray) -> np.ndarray:
    """Per-column variances; a constant column borrows the mean of the others (or 1).

    Column by column, so the result scales exactly with each feature's units (a ridge shared
    across columns, as in ``_robust_covariance``, would not).
    """
    if Z.shape[0] < 2:
        return np.ones(Z.shape[1])
    var = (Z - exact_column_means(Z)).var(axis=0, ddof=1)
    ok = np.isfinite(var) & (var > 0.0)
    var[~ok] = var[ok].mean() if ok.any() else 1.0
    return var


def resolve_nw_prior(Z: np.ndarray, n_clusters: int, preset: str,
                     overrides: dict | None, name: str = "prior",
                     layer: str = "cells", resolution: float = 1.0,
                     summary=None) -> NWPrior:
    """The Normal-Wishart prior of one layer (model section 2, 'Prior defaults').

    ``"empirical"``: m0 = mean, nu0 = D + 5, and a scale invariant to the scale of the data:
      * ``layer="groups"`` (x): W0^-1 = (nu0 - D - 1) diag(Cov) / (2 G^(2/D)) and
        lam0 = 1 / (2 G^(2/D)), so that a priori E[Sigma] = diag(Cov) / (2 G^(2/D)) exactly
        and the atom means spread like the data, E[Sigma] / lam0 = diag(Cov).  A group
        cluster holds few individuals, so this prior weighs as much as the data there, and
        two choices matter (the recovery study measured both):
        - the diagonal: the off-diagonal part of Cov comes from where the cluster centres
          lie, so a prior shaped like Cov stretches every cluster along the directions that
          separate clusters and makes wrong merges cheap.  The diagonal keeps the invariance
          that matters (to the units of each feature) and drops rotation invariance;
        - the 2: G^(2/D) shares the volume as if the clusters tiled it; clusters worth
          finding are separated, so each is expected narrower than its share (a quarter
          over-splits clusters of a few individuals once the group search finds those splits).
      * ``layer="cells"`` (y): W0^-1 = nu0 Cov / G^(2/D), lam0 = 0.01 (E[Sigma] 2.5 times
        broader at D = 5; with hundreds of cells per atom the difference is small, and on the
        toy design this one tracks the Bayes classifier more closely).
    The recovery study gives the evidence for both.
    ``summary``: the means and covariance of Z computed batch by batch (``_batches``), for Z
    too large to hold (a dask array) or cut into several batches; Z then only gives its shape.
    ``"reference"``: m0 = 0, lam0 = 0.01, nu0 = D + 5, W0 = I.
    ``resolution`` r divides the expected cluster width (E[Sigma]^(1/2)) by r: W0^-1 is
    multiplied by 1 / r^2 (either preset; an explicit ``covariance_prior`` override wins).
    ``overrides`` uses scikit-learn's names (mean_prior, mean_precision_prior,
    degrees_of_freedom_prior, covariance_prior = W0^-1).  ``name`` is the estimator argument
    the overrides came from, for error messages; every value is checked against its domain.
    """
    D = Z.shape[1]
    nu0 = D + 5.0
    lam0 = 0.01
    if layer not in ("groups", "cells"):
        raise ValueError(f"layer must be 'groups' or 'cells', got {layer!r}.")
    if preset == "empirical":
        m0 = exact_column_means(Z) if summary is None else summary.means
        shrink = float(n_clusters) ** (-2.0 / D)
        if layer == "groups":
            # E[Sigma] = W0^-1 / (nu0 - D - 1): the factor makes it exactly the target
            shrink /= GROUP_SEPARATION
            W0inv = (nu0 - D - 1.0) * np.diag(_feature_variances(Z)) * shrink
            lam0 = shrink
        else:
            W0inv = nu0 * _robust_covariance(
                Z, None if summary is None else summary.cov) * shrink
    elif preset == "reference":
        m0 = np.zeros(D)
        W0inv = np.eye(D)
    else:
        raise ValueError(f"prior must be 'empirical' or 'reference', got {preset!r}.")
    W0inv = W0inv / float(resolution) ** 2
    m0, lam0, W0inv, nu0 = apply_prior_overrides(
        {"m0": m0, "lam0": lam0, "W0inv": W0inv, "nu0": nu0}, overrides, name, D)
    if W0inv.ndim == 0:
        W0inv = W0inv * np.eye(D)
    elif W0inv.ndim == 1:
        W0inv = np.diag(W0inv)
    check_nw_prior(m0, lam0, W0inv, nu0, D, name)
    return NWPrior(m0=np.ascontiguousarray(m0), lam0=lam0, W0inv=np.ascontiguousarray(W0inv),
                   nu0=nu0)


def apply_prior_overrides(values: dict, overrides, name: str, D: int):
    """A prior's defaults ``values`` (m0, lam0, W0inv, nu0) with the caller's overrides (under
    scikit-learn's names) applied, as numbers: (m0 (D,), lam0, W0inv as given, nu0).  Shared by
    the full and the diagonal cell atoms, which check the shapes of W0inv each their own way."""
    values = dict(values)
    for key, val in (overrides or {}).items():
        if key not in _SKLEARN_PRIOR_NAMES:
            raise ValueError(
                f"unknown {name} key {key!r}; use {sorted(_SKLEARN_PRIOR_NAMES)}."
            )
        values[_SKLEARN_PRIOR_NAMES[key]] = val
    try:
        m0 = np.array(values["m0"], dtype=np.float64).reshape(-1)
        W0inv = np.array(values["W0inv"], dtype=np.float64)
        lam0, nu0 = float(values["lam0"]), float(values["nu0"])
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"{name} values must be numbers or numeric arrays ({exc}); "
                                    f"got {overrides!r}.") from None
    if m0.size == 1 and D > 1:
        m0 = np.full(D, m0[0])
    return m0, lam0, W0inv, nu0


@dataclass
class Problem:
    """Everything fixed during a fit: the data, truncation levels and priors."""

    data: NestedData
    K: int
    L: int
    y_prior: NWPrior           # or ``_atoms.DiagPrior`` for diagonal cell atoms
    x_prior: NWPrior | None
    alpha_prior: ConcentrationPrior
    beta_prior: ConcentrationPrior
    # Learn a factor f <= 1 of the x prior's width by maximising the ELBO (``group_prior_scale``
    # of the state; ``learn_group_prior_scale`` True, or "auto" with the default x prior);
    # False: x_prior as is.
    learn_group_prior_scale: bool = False
    # Learn the donors' concentration c (``donor_concentration`` of the state) at convergence
    # by the Dirichlet-multinomial evidence of the donors' compositions (``_donor_variation``).
    learn_donor_concentration: bool = False
    # The concentration every run starts from (and keeps, when not learned); inf: NAM.
    donor_concentration: float = float("inf")
    # Cells per batch of every pass over the cells (``_batches``); None: one batch.
    batch_size: int | None = None
    # The cells' column means and covariance computed batch by batch (None: from Y at once,
    # the one-batch case); see ``_batches.ColumnSummary``.
    y_summary: object = None
    y_centre: np.ndarray = field(init=False)
    x_centre: np.ndarray | None = field(init=False)

    def __post_init__(self):
        from ._batches import plan_batches

        self.batches = plan_batches(self.data.offsets, self.batch_size)
        # Sufficient statistics are accumulated about the data mean: exact, and stable.
        # (exact for constant columns, which then centre to exactly 0 at any magnitude)
        self.y_centre = np.ascontiguousarray(
            exact_column_means(self.data.Y) if self.y_summary is None
            else self.y_summary.means)
        X = self.data.X
        self.x_centre = None if X is None else np.ascontiguousarray(exact_column_means(X))

    @property
    def Y(self):
        return self.data.Y

    @property
    def X(self):
        return self.data.X

    @property
    def offsets(self):
        return self.data.offsets

    @property
    def has_x(self) -> bool:
        return self.data.X is not None


@dataclass
class State:
    """Variational parameters (model section 3) plus the statistics cached from the local factors.

    ``N_jl, y_n, y_s1, y_s2, H_xi`` are functions of ``xi`` and ``H_rho`` of ``rho``; the steps
    that change xi or rho refresh them, so the ELBO never needs another pass over the cells.
    """

    rho: np.ndarray            # (J, K) q(S_j)
    xi: np.ndarray             # (N, L) q(M_ji), cells in the sorted layout
    v_a: np.ndarray            # (K - 1, 1) group sticks
    v_b: np.ndarray
    u_a: np.ndarray            # (L - 1, K) cell sticks
    u_b: np.ndarray
    alpha_shape: float
    alpha_rate: float
    beta_shape: float
    beta_rate: float
    my: np.ndarray             # (L, p) y atoms
    lamy: np.ndarray
    Wy: np.ndarray             # (L, p, p); (L, p) for diagonal atoms (``_atoms``)
    nuy: np.ndarray
    mx: np.ndarray | None      # (K, q) x atoms, None for CAM
    lamx: np.ndarray | None
    Wx: np.ndarray | None
    nux: np.ndarray | None
    N_jl: np.ndarray           # (J, L) sum_i xi_jil
    y_n: np.ndarray            # (L,) weighted y statistics about the y centre
    y_s1: np.ndarray
    y_s2: np.ndarray           # (L, p, p); (L, p) for diagonal atoms
    H_xi: float                # -sum xi log xi
    H_rho: float               # -sum rho log rho
    # f: the x prior in use is the problem's with W0^-1 and lam0 times f (see
    # ``_steps.effective_x_prior``); 1 unless the problem learns it
    group_prior_scale: float = 1.0
    # c: the donors' Dirichlet concentration around their cluster's composition; the
    # composition terms are tempered by zeta_j = (1 + c) / (n_j + c) (see
    # ``_steps.composition_weights``).  inf (the default) is NAM exactly, zeta = 1.
    donor_concentration: float = float("inf")

    def copy(self) -> "State":
        return copy.deepcopy(self)

    @property
    def K(self) -> int:
        return self.rho.shape[1]

    @property
    def L(self) -> int:
        return self.xi.shape[1]
