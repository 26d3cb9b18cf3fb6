"""How much donors vary around their cluster's composition: the concentration c.

NAM gives every individual in cluster k the same cell-type distribution omega_.k.  Real donors
vary: if donor j's distribution is Dirichlet(c omega_.k), its counts N_j. are
Dirichlet-multinomial, with the multinomial's covariance inflated by
phi_j = (n_j + c) / (1 + c); its n_j cells say as much about omega_.k as n_j / phi_j
independent draws.  The fit weights each donor's terms by zeta_j = 1 / phi_j
(``_steps.composition_weights``); this module estimates c.

The estimate is the quasi-likelihood one for an over-dispersed multinomial (McCullagh &
Nelder, section 9.2; Pearson's X^2 over its degrees of freedom), solved for c with each donor's
own phi_j.  For the partition reached, with w_.k the pooled composition of cluster k
(weights rho_jk), its n_k = sum_j rho_jk n_j cells and the atoms A that hold cells,

    X^2 = sum_k sum_j rho_jk sum_{l in A} (N_jl - n_j w_lk)^2 / (n_j w_lk)
    E X^2 = sum_k sum_j rho_jk (1 - n_j / n_k) sum_{l in A} (1 - w_lk) phi_j(c),

and c solves X^2 = E X^2 (E X^2 falls as c grows, from its value at c = 0 to the
multinomial's at c = inf).  Unlike a likelihood with the composition plugged in, the
(1 - n_j / n_k) term counts the degrees of freedom the pooled w_.k uses, so small clusters do
not read their own fit as too little variation, nor as too much; a donor alone in its cluster
adds nothing to either side.  X^2 within chance of the multinomial's chi-square(dof) (upper tail
above ``SIGNIFICANCE``) means no variation the data can show, and c = inf (NAM exactly): with a
dozen donors one unusual donor would otherwise pass for variation, and weaken the evidence
that separates a small cluster.  Counts are the soft N_jl of q(M).

A partition too fine to show variation (fewer than ``MIN_DOF_PER_DONOR`` degrees of freedom
per donor: mostly donors alone in their cluster, which is how NAM exactly leaves donors that
vary) says nothing about c, which is not the same as saying c = inf: there c is estimated with
every donor in one cluster.  That reads any difference between clusters as variation too (a c
on the small side), so the sweeps that follow may merge; the next convergence estimates c
again on the coarser partition they reach.  Without this, a fit that reached one cluster per
donor before its first convergence kept it with c = inf (24 donors of 2000 cells at c = 10).
"""

from __future__ import annotations

import numpy as np

__all__ = ["learn_concentration", "pearson_terms", "CONCENTRATION_BOUNDS", "SIGNIFICANCE",
           "MIN_DOF_PER_DONOR"]

# c is reported in [1e-2, 1e6]; above, it is infinite (NAM exactly).
CONCENTRATION_BOUNDS = (1e-2, 1e6)
# c is finite only where X^2 exceeds the multinomial's chi-square(dof) at this level: a
# cohort that NAM describes keeps NAM exactly, except once in a thousand fits.
SIGNIFICANCE = 1e-3
# Below this many degrees of freedom per donor the partition cannot show variation (module
# docstring): c is estimated with every donor in one cluster instead.
MIN_DOF_PER_DONOR = 0.5
# An atom counts in A when the clusters hold at least this many of its cells in total.
_MIN_ATOM_CELLS = 1.0


def pearson_terms(N_jl: np.ndarray, rho: np.ndarray):
    """(X^2, a_j) with E X^2 = sum_j a_j phi_j(c): Pearson's statistic of the partition and
    each donor's share of its degrees of freedom."""
    n = N_jl.sum(axis=1)                                       # (J,)
    atoms = N_jl.sum(axis=0) >= _MIN_ATOM_CELLS
    N = N_jl[:, atoms]
    n_k = rho.T @ n                                            # (K,)
    # clusters holding at least a millionth of a donor (a column of rho at 1e-300 would
    # overflow n_j / n_k; it adds nothing either way)
    used = rho.sum(axis=0) > 1e-6
    rho, n_k = rho[:, used], n_k[used]
    w = (rho.T @ N) / n_k[:, None]                             # (K, A)
    expected = n[:, None, None] * w[None, :, :]               # (J, K, A)
    with np.errstate(divide="ignore", invalid="ignore"):
        cells = np.where(expected > 0, (N[:, None, :] - expected) ** 2 / expected, 0.0)
    x2 = float(np.sum(rho * cells.sum(axis=2)))
    dof_atoms = np.where(w > 0, 1.0 - w, 0.0).sum(axis=1)     # (K,)
    a = np.sum(rho * (1.0 - n[:, None] / n_k[None, :]) * dof_atoms[None, :], axis=1)
    return x2, np.maximum(a, 0.0)


def learn_concentration(N_jl: np.ndarray, rho: np.ndarray) -> float:
    """The concentration c whose expected Pearson X^2 equals the observed one (see the
    module docstring); inf when the counts vary no more than multinomially."""
    from scipy.optimize import brentq

    from scipy.stats import chi2

    x2, a = pearson_terms(N_jl, rho)
    if np.sum(a) < MIN_DOF_PER_DONOR * N_jl.shape[0]:      # too fine to show variation
        x2, a = pearson_terms(N_jl, np.ones((N_jl.shape[0], 1)))
    n = N_jl.sum(axis=1)
    dof = float(np.sum(a))
    # no variation unless the data show it beyond chance (NAM's own data stay NAM's)
    if dof <= 0.0 or chi2.sf(x2, dof) > SIGNIFICANCE:
        return float("inf")

    def excess(log_c):                     # E X^2(c) - X^2, decreasing in c
        c = np.exp(log_c)
        return float(np.sum(a * (n + c) / (1.0 + c))) - x2

    low, high = (float(np.log(b)) for b in CONCENTRATION_BOUNDS)
    if excess(high) >= 0.0:
        return float("inf")
    if excess(low) <= 0.0:
        return CONCENTRATION_BOUNDS[0]
    return float(np.exp(brentq(excess, low, high, xtol=1e-6)))
