"""Checks of the estimator's parameters, of prior hyperparameters, and of the memory a fit needs.

Every check raises before anything is allocated or fitted, with a message that names the
argument, says what is wrong with it and how to fix it.  Data checks live in ``_data.py``.
"""

from __future__ import annotations

import numbers
import os
import warnings

import numpy as np

# public home: nestedatoms.exceptions; this name is kept for old imports
from .exceptions import InvalidParameterError

__all__ = ["InvalidParameterError", "check_estimator_params", "check_nw_prior",
           "check_data_size", "estimate_fit_bytes", "available_memory_bytes", "check_memory"]



# ------------------------------------------------------------------------------------------
# Scalars
# ------------------------------------------------------------------------------------------
def check_int(value, name: str, minimum: int, hint: str = "") -> int:
    """``value`` as an int >= ``minimum`` (bools are refused: True is not a count)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidParameterError(
            f"{name} must be an integer >= {minimum}, got {value!r} of type "
            f"{type(value).__name__}.{hint}")
    if value < minimum:
        raise InvalidParameterError(f"{name} must be an integer >= {minimum}, got {value!r}."
                                    f"{hint}")
    return int(value)


def check_positive(value, name: str, hint: str = "", allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``allow_zero``)."""
    what = "a finite number >= 0" if allow_zero else "a finite number > 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidParameterError(
            f"{name} must be {what}, got {value!r} of type {type(value).__name__}.{hint}")
    value = float(value)
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise InvalidParameterError(f"{name} must be {what}, got {value!r}.{hint}")
    return value


# ------------------------------------------------------------------------------------------
# The estimator's parameters
# ------------------------------------------------------------------------------------------
_TRUNCATION_HINT = (" It is a truncation level: an upper bound on the number of clusters, "
                    "whose unused clusters the fit empties (e.g. 30).")


def check_estimator_params(est) -> None:
    """Validate every constructor parameter of ``NestedAtomsModel`` (scikit-learn checks in fit).

    Values that only make sense once the data is known (prior hyperparameters against the
    dimension) are checked by :func:`check_nw_prior`.
    """
    from ._backend import BACKENDS, resolve_n_threads

    check_int(est.n_group_clusters, "n_group_clusters", 1, _TRUNCATION_HINT)
    check_int(est.n_cell_clusters, "n_cell_clusters", 1, _TRUNCATION_HINT)
    check_int(est.n_init, "n_init", 1, " It is the number of restarts (e.g. 3).")
    check_int(est.max_iter, "max_iter", 1, " It caps the CAVI sweeps of each restart (e.g. 500).")
    check_positive(est.tol, "tol", " Use e.g. 1e-6; tol=0 runs exactly max_iter sweeps.",
                   allow_zero=True)
    if est.backend not in BACKENDS:
        raise InvalidParameterError(f"backend must be one of {BACKENDS}, got {est.backend!r}.")
    if est.prior not in ("empirical", "reference"):
        raise InvalidParameterError(
            f"prior must be 'empirical' (scaled to the data) or 'reference' (for standardised "
            f"data), got {est.prior!r}.")
    for name in ("group_prior", "cell_prior"):
        value = getattr(est, name)
        if value is not None and not hasattr(value, "items"):
            raise InvalidParameterError(
                f"{name} must be None or a dict of prior overrides (keys mean_prior, "
                f"mean_precision_prior, degrees_of_freedom_prior, covariance_prior), got "
                f"{value!r}.")
    check_covariance_type(getattr(est, "covariance_type", "full"))
    for name in ("group_concentration", "cell_concentration"):
        value = getattr(est, name)
        if value is not None:
            check_positive(value, name, " Use None to learn it, or a positive value to fix it.")
    prior = est.concentration_prior
    if (isinstance(prior, (str, bytes)) or not hasattr(prior, "__len__") or len(prior) != 2):
        raise InvalidParameterError(
            f"concentration_prior must be a (shape, rate) pair of positive numbers, got "
            f"{prior!r}; the default is (0.1, 0.1).")
    check_positive(prior[0], "concentration_prior[0] (the Gamma shape)",
                   " The default is (0.1, 0.1).")
    check_positive(prior[1], "concentration_prior[1] (the Gamma rate)",
                   " The default is (0.1, 0.1).")
    resolve_n_threads(est.n_threads)
    rs = est.random_state
    if not (rs is None or isinstance(rs, (np.random.Generator, np.random.RandomState))
            or (isinstance(rs, numbers.Integral) and not isinstance(rs, bool))):
        raise InvalidParameterError(
            f"random_state must be None, a non-negative int or a numpy Generator/RandomState, "
            f"got {rs!r}.")
    if isinstance(rs, numbers.Integral) and not isinstance(rs, bool) and rs < 0:
        raise InvalidParameterError(f"random_state must be a non-negative int, got {rs!r}.")
    learn = getattr(est, "learn_group_prior_scale", "auto")
    if not (isinstance(learn, (bool, np.bool_)) or (isinstance(learn, str) and learn == "auto")):
        raise InvalidParameterError(f'learn_group_prior_scale must be "auto", True or False, '
                                    f"got {learn!r}.")
    conc = getattr(est, "donor_concentration", "auto")
    if isinstance(conc, str):
        if conc != "auto":
            raise InvalidParameterError(
                f'donor_concentration must be "auto", a number > 0 or numpy.inf, got {conc!r}.')
    elif (isinstance(conc, (bool, np.bool_)) or not isinstance(conc, numbers.Real)
          or np.isnan(conc) or conc <= 0):
        raise InvalidParameterError(
            f'donor_concentration must be "auto" (learned), a number > 0 (fixed) or numpy.inf '
            f"(the Nested Atoms Model exactly), got {conc!r}.")
    check_positive(getattr(est, "cell_resolution", 1.0), "cell_resolution",
                   " It divides the cell prior's expected cluster width; the default is 1.")
    if getattr(est, "batch_size", None) is not None:
        check_int(est.batch_size, "batch_size", 1,
                  " It is the number of cells per batch (e.g. 262144), or None.")
    if not isinstance(getattr(est, "copy", True), (bool, np.bool_)):
        raise InvalidParameterError(f"copy must be True or False, got {est.copy!r}.")
    if isinstance(est.verbose, bool) or not isinstance(est.verbose, numbers.Integral) or (
            est.verbose < 0):
        raise InvalidParameterError(f"verbose must be an integer >= 0, got {est.verbose!r}.")


# The families of cell atoms (``_atoms``).
COVARIANCE_TYPES = ("full", "diag")


def check_covariance_type(value) -> str:
    """``value`` if it names a family of cell atoms, else a clear error."""
    if not (isinstance(value, str) and value in COVARIANCE_TYPES):
        raise InvalidParameterError(
            f'covariance_type must be "full" (a full covariance per cell cluster, the '
            f'default) or "diag" (diagonal covariances, for many features), got {value!r}.')
    return value


def check_data_size(n_cells: int, n_groups: int, L: int) -> None:
    """Warn when the truncation level of the cells exceeds the number of cells.

    A cell-cluster truncation level above N can never be used and only costs time.  (No
    warning for K > J: the default K = 30 exceeds the number of individuals of most studies,
    and the spare group clusters are simply left empty.)
    """
    if L > n_cells:
        warnings.warn(
            f"n_cell_clusters={L} exceeds the number of cells ({n_cells}): at most {n_cells} "
            f"cell clusters can be occupied; set n_cell_clusters <= {n_cells} to save time.",
            UserWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------
# Normal-Wishart prior hyperparameters
# ------------------------------------------------------------------------------------------
# Cell clusters have full covariance matrices: p (p + 1) / 2 parameters each, and a sweep costs
# O(N L p^2).  Above this many features the clusters are mostly noise dimensions (on 765 genes:
# 211 s, 1.9 GB, one cluster); scanpy's default PCA keeps 50 components.  Diagonal atoms
# (covariance_type="diag") have 2 p parameters each and a sweep costs O(N L p), as much as
# reading the data, so no dimension makes them disproportionately slow: they get no warning.
MAX_RECOMMENDED_DIMENSION = 50


class HighDimensionWarning(UserWarning):
    """The cell representation has more dimensions than full covariances are suited to."""


def check_dimension(p: int, covariance_type: str = "full") -> None:
    """Warn when y has more than ``MAX_RECOMMENDED_DIMENSION`` features and full covariances."""
    if p > MAX_RECOMMENDED_DIMENSION and covariance_type == "full":
        warnings.warn(
            f"Y has {p} features; the cell clusters have full covariances, which above "
            f"{MAX_RECOMMENDED_DIMENSION} dimensions make the fit slow and memory-hungry and "
            f"tend to merge everything into one cluster. Reduce Y first, e.g. to principal "
            f"components: for AnnData sc.pp.pca(adata, n_comps=30) and use_rep='X_pca'; or "
            f"fit diagonal covariances, covariance_type='diag' (linear in the features).",
            HighDimensionWarning, stacklevel=3)


def check_mean_prior(m0, lam0, D: int, name: str) -> None:
    """Check the atoms' mean prior (m0, lam0), the part the full and diagonal families share."""
    if m0.shape != (D,):
        raise InvalidParameterError(
            f"{name}['mean_prior'] must be a scalar or have shape ({D},) to match the "
            f"{D} feature(s) of the data, got shape {m0.shape}.")
    if not np.all(np.isfinite(m0)):
        raise InvalidParameterError(f"{name}['mean_prior'] must be finite, got {m0}.")
    if not (np.isfinite(lam0) and lam0 > 0):
        raise InvalidParameterError(
            f"{name}['mean_precision_prior'] (lam0) must be a finite number > 0, got {lam0!r}; "
            f"the default is 0.01 (a vague prior on the cluster means).")


def check_nw_prior(m0, lam0, W0inv, nu0, D: int, name: str) -> None:
    """Check a resolved NW(m0, lam0, W0, nu0) prior of dimension D (W0inv = W0^-1).

    ``name`` is the estimator argument it came from (``cell_prior`` or ``group_prior``), so
    the message can point at the key to change.
    """
    check_mean_prior(m0, lam0, D, name)
    if not (np.isfinite(nu0) and nu0 > D - 1):
        raise InvalidParameterError(
            f"{name}['degrees_of_freedom_prior'] (nu0) must be > D - 1 = {D - 1} for the "
            f"{D}-dimensional data (the Wishart is undefined otherwise), got {nu0!r}; the "
            f"default is D + 5 = {D + 5}.")
    if W0inv.shape != (D, D):
        raise InvalidParameterError(
            f"{name}['covariance_prior'] must be a scalar, a ({D},) diagonal or a ({D}, {D}) "
            f"matrix, got shape {W0inv.shape}.")
    if not np.all(np.isfinite(W0inv)):
        raise InvalidParameterError(f"{name}['covariance_prior'] must be finite.")
    if not np.allclose(W0inv, W0inv.T, rtol=1e-10, atol=0.0):
        raise InvalidParameterError(
            f"{name}['covariance_prior'] must be symmetric; pass (C + C.T) / 2.")
    try:
        np.linalg.cholesky(W0inv)
    except np.linalg.LinAlgError:
        eig = float(np.linalg.eigvalsh(W0inv).min())
        raise InvalidParameterError(
            f"{name}['covariance_prior'] must be positive definite, but its smallest "
            f"eigenvalue is {eig:.3g}; add a ridge (C + eps * np.eye({D})) or pass a positive "
            f"scalar or diagonal.") from None


# ------------------------------------------------------------------------------------------
# Memory
# ------------------------------------------------------------------------------------------
# Set this environment variable to a true value to skip the check (the estimate of what is
# available can be too low, e.g. when swap or a cgroup limit is not reflected in MemAvailable).
SKIP_MEMORY_CHECK_ENV = "NESTEDATOMS_SKIP_MEMORY_CHECK"


def available_memory_bytes() -> int | None:
    """Memory the system can give us now (Linux MemAvailable, else free pages), or None.

    A module-level function so that tests can monkeypatch it.  Read by hand because psutil,
    which would do it, is not a dependency and this is one line of /proc/meminfo.
    """
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_AVPHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def estimate_fit_bytes(n_cells: int, p: int, L: int, n_init: int, backend: str) -> dict:
    """The dominant allocations of a fit, in bytes, by item (model section 3: xi is N x L).

    * the state's xi (sorted layout; the checkpoint that lets an interrupted fit keep a
      consistent model holds no copy of it, see ``_fit``);
    * the best earlier restart's xi while the next one runs (n_init > 1);
    * ``cell_probs_``, the caller-ordered copy the estimator returns;
    * scratch of the cell step: one N x L buffer for the C++ core, about five for NumPy
      (log-likelihoods, the group bias repeated per cell, the log-sum-exp temporaries and
      the exponential), as measured with tracemalloc (in the test suite);
    * the data: a float64 copy of Y and its group-sorted copy.
    """
    nl = 8 * int(n_cells) * int(L)
    items = {
        "state xi": nl,
        "best restart xi": nl if n_init > 1 else 0,
        "cell_probs_": nl,
        "cell-step scratch": (1 if backend == "cpp" else 5) * nl,
        "data copies": 2 * 8 * int(n_cells) * int(p),
    }
    items["total"] = sum(items.values())
    return items


def _gb(n: float) -> str:
    """A byte count for people: 12.3 GB, 45.6 MB or 7.0 kB."""
    if n >= 1e8:
        return f"{n / 1e9:.2f} GB"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def check_memory(n_cells: int, p: int, L: int, n_init: int, backend: str) -> None:
    """Refuse, before allocating, a fit that needs more memory than is available."""
    if os.environ.get(SKIP_MEMORY_CHECK_ENV, "").strip().lower() in ("1", "true", "yes"):
        return
    avail = available_memory_bytes()
    if avail is None:
        return
    need = estimate_fit_bytes(n_cells, p, L, n_init, backend)
    if need["total"] <= avail:
        return
    per_xi = 8 * n_cells * L
    held = [k for k, v in need.items() if v and k not in ("total", "data copies")]
    copies = (need["total"] - need["data copies"]) // per_xi
    # the largest L whose N x L arrays fit beside the data copies
    max_L = int((avail - need["data copies"]) // (copies * 8 * n_cells))
    smaller_L = (f"Reduce n_cell_clusters (at most {max_L} would fit), or f" if max_L >= 1
                 else "F")
    raise MemoryError(
        f"this fit needs about {_gb(need['total'])} but only {_gb(avail)} is available: the "
        f"cell responsibilities xi are N x L = {n_cells:,} x {L} float64 ({_gb(per_xi)}), held "
        f"{copies} times ({', '.join(held)}). {smaller_L}"
        f"it a subsample of the cells; single precision is not supported yet. Set "
        f"{SKIP_MEMORY_CHECK_ENV}=1 to skip this check if the estimate of available memory is "
        f"wrong.")
