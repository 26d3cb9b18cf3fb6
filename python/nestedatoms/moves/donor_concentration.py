"""The donors' concentration c around their cluster's composition (``donor_concentration="auto"``),
learned at convergence."""

from __future__ import annotations

import numpy as np

from .._state import Problem, State
from ._base import refresh_without_cells


# A concentration change smaller than this (relative) does not count as a move.
_CONCENTRATION_TOLERANCE = 0.05


def learn_donor_variation(be, prob: Problem, st: State, n_threads: int = 1) -> bool:
    """``donor_concentration="auto"``: at convergence, the donors' concentration c around their
    cluster's composition, by the Dirichlet-multinomial evidence of the partition reached
    (``_donor_variation``); the sweeps resume under the new tempering if c moved.

    c is a setting of the objective, not a variational factor: changing it changes the
    objective, so this move is not judged by the ELBO (the trace is monotone between changes
    of c, and ``donor_concentration_`` says which objective the final ELBO is).
    """
    if not prob.learn_donor_concentration:
        return False
    from .._donor_variation import learn_concentration

    old = float(st.donor_concentration)
    new = learn_concentration(st.N_jl, st.rho)
    if np.isinf(old) and np.isinf(new):
        return False
    if np.isfinite(old) and np.isfinite(new) and abs(np.log(new / old)) <= (
            _CONCENTRATION_TOLERANCE):
        return False
    st.donor_concentration = new
    refresh_without_cells(be, prob, st, n_threads)
    return True


