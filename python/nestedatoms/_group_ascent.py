"""Group-only coordinate ascent through the backend: a state's group level refined with the
cells held fixed (the group search's inner loop), one candidate partition or a batch of them.

The ascent itself is ``group_ascent`` of the backend (the C++ core runs a batch's candidates in
parallel, bitwise identically for any thread count; ``reference.group_ascent`` is its NumPy twin).
This module only translates between a ``State`` and its arguments and results.
"""

from __future__ import annotations

import numpy as np

from ._state import ConcentrationPrior, Problem, State
from ._steps import composition_counts, elbo_terms, update_y_atoms

__all__ = ["concentration_factors", "group_ascent", "apply_group_factors", "cell_level_elbo"]

# The ELBO terms that the cells (q(M)) and the y atoms fix: the group ascent returns all others.
_CELL_LEVEL_TERMS = ("loglik_y", "log_p_theta_y", "H_theta_y", "H_M")


def _spec(prior: ConcentrationPrior):
    return (float(prior.shape), float(prior.rate),
            None if prior.fixed is None else float(prior.fixed))


def concentration_factors(source) -> tuple:
    """The q(alpha) and q(beta) of a state (or of a ``group_ascent`` result) as an ascent's
    start: (alpha_shape, alpha_rate, beta_shape, beta_rate)."""
    names = ("alpha_shape", "alpha_rate", "beta_shape", "beta_rate")
    if isinstance(source, dict):
        return tuple(float(source[n]) for n in names)
    return tuple(float(getattr(source, n)) for n in names)


def cell_level_elbo(be, prob: Problem, st: State, n_threads: int = 1) -> float:
    """The ELBO terms the group ascent leaves out, with the y atoms set to their optimum first
    (as the ascent's first pass of the fit's blocks would)."""
    update_y_atoms(be, prob, st, n_threads)
    terms = elbo_terms(be, prob, st)
    return float(sum(terms[name] for name in _CELL_LEVEL_TERMS))


def group_ascent(be, prob: Problem, st: State, rhos, widths, concentrations,
                 n_threads: int = 1, max_iter: int = 200, tol: float = 1e-7,
                 counts=None) -> list:
    """Refine each candidate (a start rho, an x prior width f, a start (alpha, beta) factor) by
    group-only coordinate ascent on the cells of ``st``; one result dict per candidate (see
    ``reference.group_ascent``), whose ``elbo`` is the group-level part of the ELBO.
    ``counts``: the tempered composition counts zeta_j N_jl to use instead of the state's (a
    merge of cell atoms judged before it is made)."""
    if len(rhos) == 0:
        return []
    rho = np.ascontiguousarray(np.stack(rhos), dtype=np.float64)
    conc = np.ascontiguousarray(np.asarray(concentrations, dtype=np.float64).reshape(-1, 4))
    scale = np.ascontiguousarray(np.asarray(widths, dtype=np.float64).reshape(-1))
    if prob.has_x:
        p = prob.x_prior
        X, x_centre, x_prior = prob.X, prob.x_centre, (p.m0, float(p.lam0), p.W0inv,
                                                       float(p.nu0))
    else:
        X = x_centre = x_prior = None
    counts = np.ascontiguousarray(composition_counts(prob, st) if counts is None else counts)
    return be.group_ascent(counts, rho, conc, scale, X, x_centre, x_prior,
                           _spec(prob.alpha_prior), _spec(prob.beta_prior),
                           max_iter=int(max_iter), tol=float(tol), n_threads=int(n_threads))


def apply_group_factors(st: State, result: dict, width: float | None = None) -> None:
    """Write one candidate's refined factors into the state (and its x prior width)."""
    st.rho = np.ascontiguousarray(result["rho"])
    st.H_rho = float(result["H_rho"])
    st.v_a, st.v_b = result["v_a"], result["v_b"]
    st.u_a, st.u_b = result["u_a"], result["u_b"]
    st.alpha_shape, st.alpha_rate = float(result["alpha_shape"]), float(result["alpha_rate"])
    st.beta_shape, st.beta_rate = float(result["beta_shape"]), float(result["beta_rate"])
    if result["mx"] is not None:
        st.mx, st.lamx, st.Wx, st.nux = (result["mx"], result["lamx"], result["Wx"],
                                         result["nux"])
    if width is not None:
        st.group_prior_scale = float(width)
