"""The family of the cell atoms: ``"full"`` (Normal-Wishart) or ``"diag"`` (Normal-Gamma per
dimension).  The one place the estimator's ``covariance_type`` is read.

A family is a small object that knows its prior (how the defaults are resolved from the
data), the backend functions of its atoms (weighted statistics, the conjugate update, the
expected log-likelihood and the ELBO terms, the cell steps) and the shapes it stores.  The
rest of the package asks ``y_family(prob)`` and calls it, so neither the steps nor the moves
branch on the family.  Both families store their atoms as (m, lam, W, nu) with
E[precision] = nu W; for ``"diag"`` W is (L, p), the diagonal, and each dimension is a
one-dimensional Normal-Wishart, i.e. a Normal-Gamma with a = nu / 2, b = 1 / (2 W)
(docs/diag.md has the derivation).  The x atoms are always full.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._data import exact_column_means
from ._state import NWPrior, _feature_variances, apply_prior_overrides, resolve_nw_prior
from ._validation import (COVARIANCE_TYPES, InvalidParameterError, check_covariance_type,
                          check_mean_prior)

__all__ = ["DiagPrior", "AtomFamily", "FULL", "DIAG", "COVARIANCE_TYPES", "family_named",
           "family_of", "resolve_cell_prior", "y_atoms", "y_family"]

# The diag prior's degrees of freedom: the full prior's nu0 = D + 5 at D = 1, i.e. a0 = 3.
# It is also the shape of each diagonal entry of the full prior's Sigma (its marginal is
# Inverse-Gamma((nu0 - D + 1) / 2, .) = Inverse-Gamma(3, .) whatever D).
DIAG_NU0 = 6.0


@dataclass
class DiagPrior:
    """Normal-Gamma prior of diagonal atoms, per dimension d: tau_d ~ Gamma(a0, b0_d),
    mu_d | tau_d ~ N(m0_d, (lam0 tau_d)^-1), stored as one-dimensional Normal-Wishart priors
    sharing lam0 and nu0: a0 = nu0 / 2, b0_d = W0inv_d / 2 (scikit-learn's
    ``degrees_of_freedom_prior`` and ``covariance_prior`` for ``covariance_type="diag"``)."""

    m0: np.ndarray
    lam0: float
    W0inv: np.ndarray          # (D,), the diagonal
    nu0: float

    @property
    def dim(self) -> int:
        return self.m0.shape[0]

    @property
    def a0(self) -> float:
        return 0.5 * self.nu0

    @property
    def b0(self) -> np.ndarray:
        return 0.5 * self.W0inv


class AtomFamily:
    """The backend functions and the shapes of one family of cell atoms.

    ``roles`` maps what the fit needs to the backend's function names; every method takes the
    backend first, then the arguments of that backend function with the atoms as one tuple
    (m, lam, W, nu) and a prior as its object.
    """

    def __init__(self, name: str, roles: dict, prior_type, matrix: bool):
        self.name = name
        self._roles = roles
        self.prior_type = prior_type
        # whether W, s2, W0inv and E[Sigma] are matrices (D, D) per atom or diagonals (D,)
        self.matrix = matrix

    def __repr__(self):
        return f"AtomFamily({self.name!r})"

    def fn(self, be, role: str):
        """The backend's function for ``role`` (e.g. ``"cell_step"``)."""
        return getattr(be, self._roles[role])

    # -- statistics and the conjugate update
    def stats(self, be, Z, w, centre):
        return self.fn(be, "stats")(Z, w, centre)

    def posterior(self, be, stats, centre, prior):
        n, s1, s2 = stats
        return self.fn(be, "posterior")(n, s1, s2, centre, prior.m0, prior.lam0, prior.W0inv,
                                         prior.nu0)

    def scores(self, be, stats, centre, prior) -> np.ndarray:
        n, s1, s2 = (np.ascontiguousarray(a) for a in stats)
        return self.fn(be, "scores")(n, s1, s2, centre, prior.m0, prior.lam0, prior.W0inv,
                                      prior.nu0)

    # -- the ELBO's terms
    def loglik(self, be, stats, centre, atoms) -> float:
        return self.fn(be, "loglik")(*stats, centre, *atoms)

    def prior_term(self, be, atoms, prior) -> float:
        return self.fn(be, "prior_term")(*atoms, prior.m0, prior.lam0, prior.W0inv, prior.nu0)

    def entropy(self, be, atoms) -> float:
        return self.fn(be, "entropy")(*atoms)

    # -- cells
    def expected_loglik(self, be, Z, atoms) -> np.ndarray:
        return self.fn(be, "expected_loglik")(Z, *atoms)

    def cell_step(self, be, Y, offsets, rho, elog_omega, atoms, centre, xi_out, n_threads=1,
                  group_weight=None):
        return self.fn(be, "cell_step")(Y, offsets, rho, elog_omega, *atoms, centre, xi_out,
                                         n_threads, group_weight)

    def cell_step_rows(self, be, Y, offsets, rows, rho, elog_omega, atoms, centre, xi,
                       n_threads=1, group_weight=None):
        return self.fn(be, "cell_step_rows")(Y, offsets, rows, rho, elog_omega, *atoms, centre,
                                              xi, n_threads, group_weight)

    # -- results and files
    def expected_covariances(self, W, nu) -> np.ndarray:
        """E[Sigma] per atom, (G, D, D) (full) or its diagonal (G, D) (diag); NaN where it is
        infinite (nu <= D + 1, resp. a <= 1)."""
        if self.matrix:
            D = W.shape[-1]
            denom = np.where(nu > D + 1, nu - D - 1.0, np.nan)
            return np.linalg.inv(W) / denom[:, None, None]
        # E[1 / tau] = b / (a - 1) = 1 / (W (nu - 2))
        denom = np.where(nu > 2.0, nu - 2.0, np.nan)
        return 1.0 / (W * denom[:, None])

    def min_split_cells(self, D) -> int:
        """Fewest cells an atom needs before the split move tries it: p + 2 per half for a
        full covariance, 1 + 2 per half (each dimension on its own) for a diagonal one."""
        return 2 * ((D if self.matrix else 1) + 2)

    def atom_shape(self, D) -> tuple:
        """Shape of one atom's W (and of its s2, W0inv and E[Sigma])."""
        return (D, D) if self.matrix else (D,)


_FULL_ROLES = dict(stats="weighted_stats", posterior="nw_posterior",
                   loglik="nw_loglik_from_stats", prior_term="nw_prior_term",
                   entropy="nw_entropy", scores="nw_scores", expected_loglik="expected_loglik",
                   cell_step="cell_step", cell_step_rows="cell_step_rows")
_DIAG_ROLES = dict(stats="diag_weighted_stats", posterior="diag_posterior",
                   loglik="diag_loglik_from_stats", prior_term="diag_prior_term",
                   entropy="diag_entropy", scores="diag_scores",
                   expected_loglik="diag_expected_loglik", cell_step="diag_cell_step",
                   cell_step_rows="diag_cell_step_rows")

FULL = AtomFamily("full", _FULL_ROLES, NWPrior, matrix=True)
DIAG = AtomFamily("diag", _DIAG_ROLES, DiagPrior, matrix=False)
_FAMILIES = {"full": FULL, "diag": DIAG}


def family_named(name: str) -> AtomFamily:
    """The family called ``name`` ("full" or "diag"), or a clear error."""
    return _FAMILIES[check_covariance_type(name)]


def family_of(prior) -> AtomFamily:
    """The family of a resolved prior."""
    return DIAG if isinstance(prior, DiagPrior) else FULL


def y_family(prob) -> AtomFamily:
    """The family of a problem's cell atoms (read from its prior)."""
    return family_of(prob.y_prior)


def y_atoms(st) -> tuple:
    """The state's cell atoms (m, lam, W, nu)."""
    return st.my, st.lamy, st.Wy, st.nuy


# ---------------------------------------------------------------------------------------------
# The priors
# ---------------------------------------------------------------------------------------------

def resolve_cell_prior(Z, n_clusters: int, preset: str, overrides, covariance_type: str = "full",
                       name: str = "cell_prior", resolution: float = 1.0, summary=None):
    """The cell atoms' prior for ``covariance_type``: ``resolve_nw_prior`` (full) or
    ``resolve_diag_prior`` (diag)."""
    if family_named(covariance_type) is FULL:
        return resolve_nw_prior(Z, n_clusters, preset, overrides, name=name, layer="cells",
                                resolution=resolution, summary=summary)
    return resolve_diag_prior(Z, n_clusters, preset, overrides, name=name,
                              resolution=resolution, summary=summary)


def _summary_variances(summary) -> np.ndarray:
    """Per-feature variances from a batch-by-batch summary (as ``_feature_variances``)."""
    var = np.diag(summary.cov).copy()
    ok = np.isfinite(var) & (var > 0.0)
    var[~ok] = var[ok].mean() if ok.any() else 1.0
    return var


def resolve_diag_prior(Z, n_clusters: int, preset: str, overrides, name: str = "cell_prior",
                       resolution: float = 1.0, summary=None) -> DiagPrior:
    """The Normal-Gamma prior of diagonal cell atoms: the full rule of ``resolve_nw_prior``
    applied to each dimension as a one-dimensional Normal-Wishart.

    ``"empirical"``: m0 = the data mean, lam0 = 0.01, nu0 = 1 + 5 = 6 (a0 = 3: the full
    prior's D + 5 at D = 1, and the shape of every diagonal entry of the full prior's Sigma)
    and W0inv_d = nu0 var_d / G^(2/D) (b0_d = W0inv_d / 2), the volume rule over all D
    dimensions: a priori E[sigma_d^2] = b0_d / (a0 - 1) = 1.5 var_d / G^(2/D).  (The full
    prior's W0^-1 = (D + 5) Cov / G^(2/D) has diagonal entries that grow with D; its
    E[Sigma] = (D + 5) / 4 Cov / G^(2/D) is 1.5 Cov / G^(2/D) only at D = 1.  Taken over per
    dimension that would expect clusters ~190 times as wide as the data at 765 genes.)
    ``"reference"``: m0 = 0, lam0 = 0.01, nu0 = 6, W0inv = 1.  ``resolution`` r divides
    W0inv by r^2, as for full.  ``overrides``: scikit-learn's names, ``covariance_prior`` a
    scalar or a (D,) diagonal (W0inv), ``degrees_of_freedom_prior`` nu0 = 2 a0 > 0.
    """
    D = Z.shape[1]
    nu0, lam0 = DIAG_NU0, 0.01
    if preset == "empirical":
        m0 = exact_column_means(Z) if summary is None else summary.means
        var = _feature_variances(Z) if summary is None else _summary_variances(summary)
        W0inv = nu0 * var * float(n_clusters) ** (-2.0 / D)
    elif preset == "reference":
        m0, W0inv = np.zeros(D), np.ones(D)
    else:
        raise ValueError(f"prior must be 'empirical' or 'reference', got {preset!r}.")
    W0inv = W0inv / float(resolution) ** 2
    m0, lam0, W0inv, nu0 = apply_prior_overrides(
        {"m0": m0, "lam0": lam0, "W0inv": W0inv, "nu0": nu0}, overrides, name, D)
    if W0inv.ndim == 0:
        W0inv = np.full(D, float(W0inv))
    check_diag_prior(m0, lam0, W0inv, nu0, D, name)
    return DiagPrior(m0=np.ascontiguousarray(m0), lam0=lam0,
                     W0inv=np.ascontiguousarray(W0inv), nu0=nu0)


def check_diag_prior(m0, lam0, W0inv, nu0, D: int, name: str) -> None:
    """Check a resolved Normal-Gamma prior of dimension D (W0inv the (D,) diagonal)."""
    check_mean_prior(m0, lam0, D, name)
    if not (np.isfinite(nu0) and nu0 > 0):
        raise InvalidParameterError(
            f"{name}['degrees_of_freedom_prior'] (nu0 = 2 a0, the Gamma shape of each "
            f"precision times 2) must be a finite number > 0 with covariance_type='diag', got "
            f"{nu0!r}; the default is 6.")
    if W0inv.shape != (D,):
        raise InvalidParameterError(
            f"{name}['covariance_prior'] must be a scalar or a ({D},) diagonal with "
            f"covariance_type='diag', got shape {W0inv.shape}.")
    if not (np.all(np.isfinite(W0inv)) and np.all(W0inv > 0)):
        raise InvalidParameterError(
            f"{name}['covariance_prior'] must be finite and > 0 in every dimension (it is "
            f"2 b0, twice the Gamma rate of each precision).")
