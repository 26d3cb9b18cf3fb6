"""The exact posterior mode of the individual partition with NAM's priors swapped in, one at a
time, for the generating model's.

``Simulation.group_partition_posterior`` scores partitions under the model that drew the data:
Dir(alpha0_x / T) cluster weights with T known, cell-type compositions from Dir(alpha0_y / L),
and x atoms from the simulator's NW(0, lam, I, q + 5).  NAM has its own version of each piece
(model section 2).  Every piece below still factors over the blocks of a partition, so the same
exact subset enumeration applies (``posterior_from_scores``), and one can ask which of NAM's
priors moves the mode away from the truth, with no variational approximation and no search in
the way:

* **partition**: a Dirichlet process (NAM's stick-breaking weights with K -> infinity) with
  alpha ~ Gamma(a, b) integrated out: p(S) = int alpha^b Gamma(alpha) / Gamma(alpha + J)
  prod_k Gamma(n_k) p(alpha) d alpha, by quadrature on log alpha;
* **composition**: each cluster's cell-type weights by stick-breaking, u_l ~ Beta(1, beta),
  with the cell types in order of size as NAM orders its atoms and a truncation above their
  number (so every type has a stick):
  p(M_B | beta) = prod_l B(1 + n_l, beta + n_>l) / B(1, beta). beta is shared by every cluster
  (model section 2), which couples the blocks, so it is set to its type-II MAP over a grid under
  Gamma(a, b) (NAM estimates it from the data as well);
* **x atoms**: NAM's default "empirical" x prior (``resolve_nw_prior``), scaled by the data,
  at its width as set; and, with all three swapped in, also with the width profiled: the joint
  mode over the partition and the width f (``mode_with_profiled_group_prior_scale``), which
  is what the fit maximises when it learns f (``learn_group_prior_scale``).

The cells' true labels are still given, as in ``group_partition_posterior``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import betaln, gammaln, logsumexp
from scipy.stats import gamma

from ._init import relabel_by_size, state_from_labels
from ._partition_posterior import (PartitionPosterior, _dirichlet_multinomial, nw_log_marginal,
                                   posterior_from_scores, subset_members)
from ._simulate import ATOM_DF_EXTRA
from ._steps import (_LOG_SCALE_MAX, _LOG_SCALE_MIN, _widened, elbo_terms, update_alpha,
                     update_group_sticks)

__all__ = ["ProfiledPartitionMode", "dp_partition_label_term", "stick_breaking_log_marginal",
           "modes_with_nam_priors", "mode_with_profiled_group_prior_scale", "labelling_gap",
           "LOG_SCALE_GRID"]

# model section 2: a_alpha = b_alpha = a_beta = b_beta = 0.1
CONCENTRATION_SHAPE, CONCENTRATION_RATE = 0.1, 0.1
BETA_GRID = 2.0 ** np.arange(-4.0, 5.0)              # 1/16 .. 16, factors of 2
# NAM learns log f in [-8, 0] (``_steps``); the profile searches that range in
# steps of 1/4
LOG_SCALE_GRID = np.arange(_LOG_SCALE_MIN, _LOG_SCALE_MAX + 0.125, 0.25)


def dp_partition_label_term(J: int, shape: float = CONCENTRATION_SHAPE,
                            rate: float = CONCENTRATION_RATE) -> np.ndarray:
    """The part of a Dirichlet process's partition prior that depends on the number of blocks.

    log int alpha^b Gamma(alpha) / Gamma(alpha + J) Gamma(alpha; shape, rate) d alpha, by
    quadrature on log alpha; with gammaln(n_k) for each block of size n_k it is the DP's
    exchangeable partition probability, alpha integrated out.

    Parameters
    ----------
    J : int
        The number of individuals.
    shape, rate : float, default 0.1, 0.1
        The Gamma prior of the concentration alpha (model section 2).

    Returns
    -------
    ndarray (J + 1,)
        Entry b for b blocks (b = 0 is impossible: -inf), as ``posterior_from_scores`` takes
        its ``label_term``.
    """
    # log alpha; Gamma(0.1, 0.1) keeps about 2% of its mass below e^-40, so reach far down
    t = np.linspace(-400.0, 12.0, 82401)
    alpha = np.exp(t)
    # d alpha = alpha dt, hence the last + t
    base = (gammaln(alpha) - gammaln(alpha + J)
            + gamma.logpdf(alpha, shape, scale=1.0 / rate) + t)
    dt = t[1] - t[0]
    return np.array([-np.inf] + [logsumexp(base + b * t) + np.log(dt) for b in range(1, J + 1)])


def stick_breaking_log_marginal(counts: np.ndarray, beta: float) -> np.ndarray:
    """log p(one sequence of cell types with these counts) under stick-breaking weights.

    p(M | beta) = prod_l B(1 + n_l, beta + n_>l) / B(1, beta), the weights' sticks
    u_l ~ Beta(1, beta) integrated out.

    Parameters
    ----------
    counts : ndarray (n, L)
        Counts per cell type, one row per sequence, columns already in stick order.
    beta : float
        The sticks' concentration.

    Returns
    -------
    ndarray (n,)
    """
    beyond = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1] - counts     # n_>l
    return (betaln(1.0 + counts, beta + beyond) - betaln(1.0, beta)).sum(axis=1)


def modes_with_nam_priors(sim, nam_x_prior, profile_group_prior_scale: bool = False,
                          log_scales: np.ndarray = LOG_SCALE_GRID) -> dict:
    """The exact mode (``PartitionPosterior``) under the generating model and with NAM's
    partition prior, composition prior, x prior, and all three, swapped in.

    ``nam_x_prior``: NAM's ``NWPrior`` for x on these data, at its width as set.
    ``profile_group_prior_scale``: also "all three NAM priors, x width profiled"
    (``mode_with_profiled_group_prior_scale`` over ``log_scales``, a
    ``ProfiledPartitionMode``), with beta as under all three.
    """
    J, q = sim.X.shape
    members = subset_members(J)
    sizes = members.sum(axis=1)
    counts = sim._cell_type_counts().astype(np.float64)
    order = np.argsort(-counts.sum(axis=0), kind="stable")        # NAM sorts atoms by size
    block_counts = members.astype(np.float64) @ counts[:, order]
    T = sim.group_weights.shape[0]

    a_x = sim.alpha0_x / T
    n_blocks = np.arange(1, T + 1)
    partition = {
        "generating": (gammaln(a_x + sizes) - gammaln(a_x),
                       np.concatenate([[-np.inf], gammaln(T + 1) - gammaln(T + 1 - n_blocks)
                                       + gammaln(sim.alpha0_x) - gammaln(sim.alpha0_x + J)])),
        "NAM": (gammaln(sizes), dp_partition_label_term(J)),
    }
    x = {
        "generating": nw_log_marginal(sim.X, members, sim.lam_x, q + ATOM_DF_EXTRA,
                                      np.eye(q), np.zeros(q)),
        "NAM": nw_log_marginal(sim.X, members, nam_x_prior.lam0, nam_x_prior.nu0,
                               nam_x_prior.W0inv, nam_x_prior.m0),
    }
    generating_composition = _dirichlet_multinomial(block_counts,
                                                    sim.alpha0_y / counts.shape[1])

    def mode(part, comp, x_name):
        block_part, label_term = partition[part]
        base = block_part + x[x_name]
        if comp == "generating":
            return posterior_from_scores(np.concatenate([[0.0], base + generating_composition]),
                                         label_term, sim.group_truth), None
        # beta: type-II MAP over the grid, its prior as a density in log beta
        fits = [posterior_from_scores(
            np.concatenate([[0.0], base + stick_breaking_log_marginal(block_counts, beta)]),
            label_term, sim.group_truth) for beta in BETA_GRID]
        log_prior = (gamma.logpdf(BETA_GRID, CONCENTRATION_SHAPE,
                                  scale=1.0 / CONCENTRATION_RATE) + np.log(BETA_GRID))
        best = int(np.argmax([f.log_evidence for f in fits] + log_prior))
        return fits[best], BETA_GRID[best]

    names = {"generating": ("generating", "generating", "generating"),
             "NAM partition prior": ("NAM", "generating", "generating"),
             "NAM composition prior": ("generating", "NAM", "generating"),
             "NAM x prior": ("generating", "generating", "NAM"),
             "all three NAM priors": ("NAM", "NAM", "NAM")}
    modes, betas = {}, {}
    for name, pieces in names.items():
        modes[name], betas[name] = mode(*pieces)
    if profile_group_prior_scale:
        # beta stays at the type-II MAP found with the width as set (re-choosing it for every
        # width would multiply the enumerations by the size of BETA_GRID)
        beta = betas["all three NAM priors"]
        base = (partition["NAM"][0]
                + stick_breaking_log_marginal(block_counts, beta))
        modes["all three NAM priors, x width profiled"] = mode_with_profiled_group_prior_scale(
            lambda f: base + nw_log_marginal(sim.X, members, *_x_prior_at(nam_x_prior, f)),
            partition["NAM"][1], sim.group_truth, log_scales)
    return modes


@dataclass(frozen=True)
class ProfiledPartitionMode(PartitionPosterior):
    """A ``PartitionPosterior`` at the x prior width ``group_prior_scale`` that, jointly with the
    partition, maximises the unnormalised posterior (``log_prob_map`` and ``log_evidence`` are
    those at that width)."""

    group_prior_scale: float = 1.0


def _x_prior_at(prior, f: float):
    """lam0, nu0, W0^-1, m0 of NAM's x prior at width f, as the fit scales it
    (``_steps._widened``: W0^-1 and lam0 times f)."""
    p = _widened(prior, f)
    return p.lam0, p.nu0, p.W0inv, p.m0


def mode_with_profiled_group_prior_scale(block_scores_at, label_term: np.ndarray, truth: np.ndarray,
                               log_scales: np.ndarray = LOG_SCALE_GRID) -> ProfiledPartitionMode:
    """The joint mode over (partition, x prior width f), f on a grid of log f.

    What NAM's fit maximises when it learns f for the partition it reaches (and, in the group
    search, for each candidate), whereas the other modes hold the width as set.  The
    unnormalised log posterior of a partition at f is its block scores plus the label term, so
    the mode at each f and its score ``log_prob_map + log_evidence`` give the joint maximum.

    Parameters
    ----------
    block_scores_at : callable
        ``block_scores_at(f)``: the score of every non-empty subset as one block at width f
        (as ``posterior_from_scores`` takes it, without the leading 0).
    label_term : ndarray (b_max + 1,)
        As ``posterior_from_scores`` takes it.
    truth : ndarray (J,)
        A partition whose probability is reported (at the chosen width).
    log_scales : ndarray, default LOG_SCALE_GRID
        The grid of log f searched.

    Returns
    -------
    ProfiledPartitionMode
        The mode at the best width, that width in ``group_prior_scale``.
    """
    best, best_score, best_f = None, -np.inf, np.nan
    for log_f in log_scales:
        f = float(np.exp(log_f))
        post = posterior_from_scores(np.concatenate([[0.0], block_scores_at(f)]), label_term,
                                     truth)
        score = post.log_prob_map + post.log_evidence
        if score > best_score:
            best, best_score, best_f = post, score, f
    return ProfiledPartitionMode(**vars(best), group_prior_scale=best_f)


def labelling_gap(be, prob, cells: np.ndarray, groups: np.ndarray) -> float:
    """How far the ELBO (model section 6) under-counts a partition of the individuals, in nats:
    the exact log prior probability of the partition under NAM's Dirichlet process (alpha
    integrated under its Gamma prior, or at its fixed value) minus the partition-prior terms
    of the ELBO at their optimum for that hard partition, labelled by size (E log p(S | v),
    log p(v | alpha), log p(alpha) and the entropies of q(v) and q(alpha); the fit's q(S) is
    hard, so H(S) = 0).  ``cells``, ``groups``: labels in the caller's order; ``prob``: the
    fit's problem, whose truncation K and concentration prior are used.

    The gap grows with the number of clusters, so it charges a partition with more clusters
    more than a merged one.  With alpha fixed it is exactly what a brute-force sum over every
    labelling adds to the size-sorted one (tested).
    """
    groups = relabel_by_size(np.asarray(groups))
    st = state_from_labels(be, prob, relabel_by_size(np.asarray(cells))[prob.data.order],
                           groups)
    previous = np.inf
    for _ in range(10000):          # q(v) and q(alpha) only: two closed-form blocks
        update_group_sticks(be, prob, st)
        update_alpha(be, prob, st)
        terms = elbo_terms(be, prob, st)
        bound = sum(terms.get(k, 0.0) for k in ("log_p_S", "log_p_v", "H_v", "log_p_alpha",
                                                "H_alpha"))
        if abs(bound - previous) < 1e-12:
            break
        previous = bound
    sizes = np.bincount(groups).astype(np.float64)
    J, b = sizes.sum(), sizes.size
    prior = prob.alpha_prior
    if prior.fixed is None:
        log_partition = (dp_partition_label_term(int(J), prior.shape, prior.rate)[b]
                         + gammaln(sizes).sum())
    else:
        alpha = prior.fixed
        log_partition = (b * np.log(alpha) + gammaln(alpha) - gammaln(alpha + J)
                         + gammaln(sizes).sum())
    return float(log_partition - bound)
