"""Choosing a backend and a thread count.

A backend is a module that conforms to :class:`Backend`: the pure-NumPy reference
(``reference.py``, ``"numpy"``) or the compiled core (``_core``, ``"cpp"``).  The fitting code
only ever calls a backend through these names, so either can drive a fit.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import numpy as np

from .exceptions import InvalidParameterError

__all__ = ["Backend", "backend_functions", "get_backend", "resolve_n_threads", "available_cpus",
           "BACKENDS", "core_module", "available_isas"]

BACKENDS = ("cpp", "numpy")


@runtime_checkable
class Backend(Protocol):
    """The functions every backend provides, with one name and one argument list each.

    The reference (``nestedatoms.reference``) documents what each computes and is the oracle
    the core is tested against; the test suite also checks that both backends provide every
    function below with these argument names.  Arrays are
    float64 and C-contiguous; see the conventions in ``reference``'s docstring.
    """

    NAME: str

    # special functions (model section 7)
    def digamma(self, x) -> np.ndarray: ...
    def lgamma(self, x) -> np.ndarray: ...

    # stick-breaking weights and their concentrations
    def expected_log_stick_weights(self, a, b) -> np.ndarray: ...
    def update_sticks(self, counts, concentration) -> tuple: ...
    def update_concentration(self, prior_shape, prior_rate, a, b) -> tuple: ...
    def stick_prior_term(self, a, b, e_conc, elog_conc) -> float: ...
    def beta_entropy(self, a, b) -> float: ...
    def gamma_expectations(self, shape, rate) -> tuple: ...
    def gamma_prior_term(self, prior_shape, prior_rate, shape, rate) -> float: ...
    def gamma_entropy(self, shape, rate) -> float: ...
    def categorical_entropy(self, r) -> float: ...

    # Normal-Wishart atoms
    def expected_logdet(self, W, nu) -> np.ndarray: ...
    def log_wishart_norm(self, W, nu) -> np.ndarray: ...
    def expected_loglik(self, Z, m, lam, W, nu) -> np.ndarray: ...
    def weighted_stats(self, Z, w, centre) -> tuple: ...
    def nw_posterior(self, n, s1, s2, centre, m0, lam0, W0inv, nu0) -> tuple: ...
    def nw_loglik_from_stats(self, n, s1, s2, centre, m, lam, W, nu) -> float: ...
    def nw_prior_term(self, m, lam, W, nu, m0, lam0, W0inv, nu0) -> float: ...
    def nw_entropy(self, m, lam, W, nu) -> float: ...
    def nw_scores(self, n, s1, s2, centre, m0, lam0, W0inv, nu0) -> np.ndarray: ...

    # diagonal atoms (Normal-Gamma per dimension, docs/diag.md): W (G, D), W0inv (D,),
    # s2 (G, D) the diagonals; otherwise the arguments of their Normal-Wishart counterparts
    def diag_expected_loglik(self, Z, m, lam, W, nu) -> np.ndarray: ...
    def diag_weighted_stats(self, Z, w, centre) -> tuple: ...
    def diag_posterior(self, n, s1, s2, centre, m0, lam0, W0inv, nu0) -> tuple: ...
    def diag_loglik_from_stats(self, n, s1, s2, centre, m, lam, W, nu) -> float: ...
    def diag_prior_term(self, m, lam, W, nu, m0, lam0, W0inv, nu0) -> float: ...
    def diag_entropy(self, m, lam, W, nu) -> float: ...
    def diag_scores(self, n, s1, s2, centre, m0, lam0, W0inv, nu0) -> np.ndarray: ...

    # the local steps (model sections 5.1, 5.2)
    def cell_step(self, Y, offsets, rho, elog_omega, m, lam, W, nu, centre, xi_out,
                  n_threads=1, group_weight=None) -> tuple: ...
    def cell_step_rows(self, Y, offsets, rows, rho, elog_omega, m, lam, W, nu, centre, xi,
                       n_threads=1, group_weight=None) -> tuple: ...
    def diag_cell_step(self, Y, offsets, rho, elog_omega, m, lam, W, nu, centre, xi_out,
                       n_threads=1, group_weight=None) -> tuple: ...
    def diag_cell_step_rows(self, Y, offsets, rows, rho, elog_omega, m, lam, W, nu, centre, xi,
                            n_threads=1, group_weight=None) -> tuple: ...
    def group_step(self, N_jl, elog_pi, elog_omega, ell_x, rho_out) -> float: ...
    def merged_entropy_change(self, xi, groups, offsets=None, group_weight=None,
                              n_threads=1) -> np.ndarray: ...

    # the group search's inner loop: group-only coordinate ascent of a batch of candidates
    def group_ascent(self, counts, rho, conc, x_scale, X, x_centre, x_prior, alpha_prior,
                     beta_prior, max_iter=200, tol=1e-7, n_threads=1) -> list: ...


def backend_functions() -> list:
    """The names of the functions a :class:`Backend` provides."""
    return sorted(n for n, v in vars(Backend).items()
                  if callable(v) and not n.startswith("_"))


def get_backend(name: str) -> Backend:
    """The backend module called ``name`` (for ``"cpp"``: the best build for this CPU)."""
    if name == "numpy":
        from . import reference

        return reference
    if name == "cpp":
        return core_module()
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}.")


# The C++ core is built once per instruction set, as separate extension modules (see
# CMakeLists.txt): the baseline ``_core`` runs everywhere; the others only where the CPU (and the
# OS) support their instructions.  NESTEDATOMS_ISA forces one, e.g. to test every path.
ISA_MODULES = {"baseline": "_core", "avx2": "_core_avx2", "avx512": "_core_avx512"}
ISA_FEATURES = {"baseline": (), "avx2": ("avx2", "fma"),
                "avx512": ("avx512f", "avx512dq", "avx512bw", "avx512vl", "avx2", "fma")}
ISA_ENV = "NESTEDATOMS_ISA"
_CORE_CACHE: dict = {}


def _import_core(isa: str):
    import importlib

    return importlib.import_module(f".{ISA_MODULES[isa]}", __package__)


def available_isas() -> list:
    """The instruction-set builds of the core that are installed and run on this CPU."""
    try:
        features = _import_core("baseline").cpu_features()
    except ImportError:
        return []
    out = []
    for isa in ISA_MODULES:
        if not all(features.get(f, False) for f in ISA_FEATURES[isa]):
            continue
        try:
            _import_core(isa)
        except ImportError:  # not built (non-x86 platform, or built without the variants)
            continue
        out.append(isa)
    return out


def core_module(isa: str | None = None):
    """The compiled core for ``isa``; by default $NESTEDATOMS_ISA or the best one available."""
    if isa is None:
        isa = os.environ.get(ISA_ENV, "").strip().lower() or None
    key = isa or "best"
    if key in _CORE_CACHE:
        return _CORE_CACHE[key]
    try:
        _import_core("baseline")
    except ImportError as exc:  # pragma: no cover - only without a compiled build
        raise ImportError(
            "the C++ core nestedatoms._core is not built; reinstall with "
            "`pip install .` (a C++17 compiler is needed) or pass backend='numpy'."
        ) from exc
    usable = available_isas()
    if isa is None:
        module = _import_core(usable[-1])
    elif isa not in ISA_MODULES:
        raise ValueError(f"{ISA_ENV}={isa!r} is not an instruction set of the core; use one of "
                         f"{sorted(ISA_MODULES)} or leave it unset to pick the best.")
    elif isa not in usable:
        raise ImportError(f"{ISA_ENV}={isa!r}: that build of the core is not installed or this "
                          f"CPU cannot run it (usable here: {usable}); unset {ISA_ENV} to pick "
                          f"the best automatically.")
    else:
        module = _import_core(isa)
    _CORE_CACHE[key] = module
    return module


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask and, where joblib is installed (it comes
    with scikit-learn), the container's CPU quota too; not the machine's ``os.cpu_count()``.

    joblib is optional here so that it does not become a dependency for this one number;
    without it the affinity mask (taskset, cpusets) is used, which misses only a cgroup quota.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):       # not on Linux
        n = os.cpu_count() or 1
    try:
        from joblib import cpu_count
    except ImportError:
        return max(1, n)
    return max(1, min(n, int(cpu_count())))


def resolve_n_threads(n_threads) -> int:
    """scikit-learn's rule: None -> OMP_NUM_THREADS or all CPUs; -1 all; -2 all but one; ...

    A count above the number of CPUs is capped at it: the work is CPU-bound, so more threads
    only oversubscribe, and an absurd count would make OpenMP fail to create its threads.
    """
    n_cpus = available_cpus()
    if n_threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        try:
            return min(n_cpus, max(1, int(env.split(",")[0])))
        except ValueError:
            return n_cpus
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int,)) and not (
            hasattr(n_threads, "__index__")):
        raise InvalidParameterError(
            f"n_threads must be an int or None, got {n_threads!r} of type "
            f"{type(n_threads).__name__}; use None (all cores), a positive count, or a "
            f"negative count (-1 = all cores, -2 = all but one).")
    n_threads = int(n_threads)
    if n_threads == 0:
        raise InvalidParameterError(
            "n_threads=0 is invalid; use None (all cores), a positive count, or a negative "
            "count (-1 = all cores, -2 = all but one).")
    if n_threads < 0:
        return max(1, n_cpus + 1 + n_threads)
    return min(n_threads, n_cpus)
