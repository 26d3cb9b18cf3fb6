"""The donors' concentration c around their cluster's composition (``donor_concentration="auto"``),
learned at convergence."""

from __future__ import annotations

import numpy as np

from .._state import Problem, State
from .._steps import update_cells
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
    # The cached statistics of q(M) (the y statistics and the entropy) are sums weighted by
    # zeta_j(c): under the new c they must be summed again, which is one cell step (its xi
    # update is the same for any c, zeta_j cancelling from it).  Without it the ELBO reported
    # after the move mixed the two objectives, and the next sweep "lost" the difference (seen
    # by the fuzz test as a 266-nat drop on a 14-cell input).
    update_cells(be, prob, st, n_threads)
    refresh_without_cells(be, prob, st, n_threads)
    return True


