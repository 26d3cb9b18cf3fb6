"""The x prior's width (a prior setting, not a variational factor) that maximises the ELBO for
the partition reached."""

from __future__ import annotations

import numpy as np

from .._state import Problem, State
from .._steps import best_group_prior_scale, update_x_atoms


# A width change smaller than this (relative) does not count as a move, so runs converge.
_WIDTH_TOLERANCE = 1e-3


def learn_group_prior_scale(be, prob: Problem, st: State, n_threads: int = 1) -> bool:
    """``learn_group_prior_scale``: at convergence, the x prior's width f (<= 1) that maximises
    the ELBO for the partition reached, then q(theta^x) under it; the sweeps resume if f moved.

    Only at convergence, not in every sweep: early partitions (the start over-splits the
    individuals, often into singletons) say nothing about the width, and the ELBO then drifts
    f to its lower bound, where the prior forbids every merge: the fit stays split for good
    (seen at lam = 0.5, J = 12).  A converged partition does inform it.  The ELBO rises: the
    current f is one of the candidates, and q(theta^x) is then set to its optimum.
    """
    if not (prob.has_x and prob.learn_group_prior_scale):
        return False
    old = float(st.group_prior_scale)
    st.group_prior_scale = best_group_prior_scale(be, prob, st)
    update_x_atoms(be, prob, st, n_threads)
    return abs(np.log(st.group_prior_scale) - np.log(old)) > _WIDTH_TOLERANCE


