"""Diagnostics: judge a fit against the truth, and against the model's own objective.

These are the tools of the recovery study (``studies/`` in the source repository), public so
that the study, and anyone checking a fit of their own, need no private name:

* **the truth's ceilings**: the exact posterior over partitions of a few individuals
  (:func:`partition_posterior`, :func:`posterior_from_scores`), with NAM's own priors swapped
  in (:func:`modes_with_nam_priors`), and the Bayes classifier of the donors
  (:func:`bayes_donor_labels`);
* **partition comparison** (model section 6b): the ELBO a partition reaches
  (:func:`elbo_from_labels`, :func:`score_partition`, with the labelling-aware bound beside
  it), how far the ELBO under-counts a partition against NAM's exchangeable prior
  (:func:`labelling_gap`), and whether two labelings are one partition
  (:func:`same_partition`);
* **the problem a fit solves**, built or altered for such a comparison (:func:`problem_for`,
  :func:`problem_with`, :func:`x_prior_for`, :func:`simulator_atom_prior`,
  :func:`uncapped_group_prior_scale`), and the pieces the group search works with
  (:func:`group_features`, :func:`kmeans_labels`).

Every function here is a thin layer over the implementation the fit itself uses, so a study
measures the package, not a copy of it.  ``problem`` arguments are a fitted model's
``problem_`` (or one from :func:`problem_for`); ``backend`` is ``"cpp"`` or ``"numpy"``.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import numpy as np

from ._labelling_bound import LabellingBound
from ._partition_posterior import MAX_GROUPS, PartitionPosterior, nw_log_marginal, subset_members
from ._prior_swap import (LOG_SCALE_GRID, ProfiledPartitionMode, dp_partition_label_term,
                          mode_with_profiled_group_prior_scale, stick_breaking_log_marginal)
from ._state import NWPrior, Problem

__all__ = [
    # ceilings from the truth
    "PartitionPosterior", "ProfiledPartitionMode", "MAX_GROUPS", "LOG_SCALE_GRID",
    "partition_posterior", "posterior_from_scores", "subset_members", "nw_log_marginal",
    "dirichlet_multinomial_log_marginal", "dp_partition_label_term",
    "stick_breaking_log_marginal", "modes_with_nam_priors", "mode_with_profiled_group_prior_scale",
    "bayes_donor_labels",
    # comparing partitions under NAM's objective
    "PartitionScore", "LabellingBound", "elbo_from_labels", "score_partition",
    "labelling_bound", "labelling_gap", "same_partition",
    # the problem a fit solves
    "NWPrior", "problem_for", "problem_with", "x_prior_for", "simulator_atom_prior",
    "uncapped_group_prior_scale", "group_features", "kmeans_labels",
]


def _backend(backend):
    from ._backend import get_backend

    return get_backend(backend)


def _problem_of(problem) -> Problem:
    """A model's ``problem_``, or the problem itself."""
    if isinstance(problem, Problem):
        return problem
    prob = getattr(problem, "problem_", None)
    if not isinstance(prob, Problem):
        from .exceptions import InvalidParameterError

        raise InvalidParameterError(
            f"expected a fitted NestedAtomsModel or its problem_, got {type(problem).__name__}; "
            f"fit the model first, or build a problem with problem_for(model, Y, groups, X).")
    return prob


# ------------------------------------------------------------------ ceilings from the truth
def partition_posterior(X, counts, truth, *, T, alpha0_x, alpha0_y, lam_x,
                        nu0) -> PartitionPosterior:
    """The exact posterior over partitions of the individuals under the simulator's model.

    Every cluster's parameters are integrated out; the hyperparameters and the cells' true
    labels are given.  ``Simulation.group_partition_posterior`` calls this with a simulation's
    own values.

    Parameters
    ----------
    X : ndarray (J, q)
        The individuals' vectors; J is at most :data:`MAX_GROUPS` (exact enumeration).
    counts : ndarray (J, L)
        Each individual's cells per true cell type.
    truth : ndarray (J,)
        The true partition, whose posterior probability is reported.
    T, alpha0_x, alpha0_y, lam_x : int, float, float, float
        As in :func:`nestedatoms.simulate`.
    nu0 : float
        Degrees of freedom of the x atoms' Normal-Wishart prior NW(0, lam_x, I, nu0).

    Returns
    -------
    PartitionPosterior
        ``map_labels`` (the mode), ``log_prob_map``, ``log_prob_truth`` and ``log_evidence``.
    """
    from ._partition_posterior import partition_posterior as exact

    return exact(X, counts, truth, T, alpha0_x, alpha0_y, lam_x, nu0)


def posterior_from_scores(block_scores, label_term, truth) -> PartitionPosterior:
    """The mode and normaliser of any partition posterior that factors over blocks.

    p(S) is proportional to exp(label_term[b] + the sum of ``block_scores`` over the b blocks
    of S); a dynamic programme over subsets finds the mode and the normaliser exactly.

    Parameters
    ----------
    block_scores : ndarray (2**J,)
        The score of each subset of the J individuals as one block, indexed by bit mask
        (entry 0 unused).
    label_term : ndarray (b_max + 1,)
        The part that depends only on the number of blocks b (-inf where b is impossible).
    truth : ndarray (J,)
        A partition whose posterior probability is reported as ``log_prob_truth``.

    Returns
    -------
    PartitionPosterior
    """
    from ._partition_posterior import posterior_from_scores as exact

    return exact(np.asarray(block_scores, dtype=np.float64),
                 np.asarray(label_term, dtype=np.float64), truth)


def dirichlet_multinomial_log_marginal(counts, a: float) -> np.ndarray:
    """log p(one sequence with these category counts) under a symmetric Dirichlet(a).

    Parameters
    ----------
    counts : ndarray (n, C)
        Category counts, one row per sequence.
    a : float
        The Dirichlet's parameter for every category.

    Returns
    -------
    ndarray (n,)
    """
    from ._partition_posterior import _dirichlet_multinomial

    return _dirichlet_multinomial(np.atleast_2d(np.asarray(counts, dtype=np.float64)), a)


def modes_with_nam_priors(sim, x_prior: NWPrior, *, profile_group_prior_scale: bool = False,
                          log_scales=LOG_SCALE_GRID) -> dict:
    """The exact partition mode with NAM's priors swapped in for the generating model's.

    Which of NAM's priors (partition, composition, x atoms) moves the mode of the individual
    partition away from the truth, with no variational approximation and no search in the way.

    Parameters
    ----------
    sim : Simulation
        Data from :func:`nestedatoms.simulate` (J at most :data:`MAX_GROUPS`).
    x_prior : NWPrior
        NAM's x prior on these data at its width as set (:func:`x_prior_for`).
    profile_group_prior_scale : bool, default False
        Also the joint mode over the partition and the x prior's width, all three priors
        swapped in (what a fit that learns the width maximises).
    log_scales : ndarray, default LOG_SCALE_GRID
        The grid of log widths that profile searches.

    Returns
    -------
    dict of str to PartitionPosterior
        Keys ``"generating"``, ``"NAM partition prior"``, ``"NAM composition prior"``,
        ``"NAM x prior"``, ``"all three NAM priors"`` and, when profiled,
        ``"all three NAM priors, x width profiled"`` (a :class:`ProfiledPartitionMode`).
    """
    from ._prior_swap import modes_with_nam_priors as modes

    return modes(sim, x_prior, profile_group_prior_scale=profile_group_prior_scale,
                 log_scales=log_scales)


def bayes_donor_labels(sim, concentration: float = np.inf) -> np.ndarray:
    """The Bayes classifier of the donors from their true cell-type counts.

    argmax_k log pi_k + log p(N_j. | k) with the true weights pi, compositions omega_.k and
    donor concentration c: Dirichlet-multinomial counts, the multinomial at c = inf.  The x
    vectors are not used (the classifier for a study with ``X=None``).  It is the ceiling for
    a method that must learn all of these.

    Parameters
    ----------
    sim : Simulation
        Data from :func:`nestedatoms.simulate`.
    concentration : float, default inf
        The ``donor_concentration`` the data were simulated with (inf: none).

    Returns
    -------
    ndarray (J,)
        Each donor's most probable true cluster, in the order of ``sim.group_names``.
    """
    from scipy.special import gammaln

    counts = sim._cell_type_counts()                                      # (J, L)
    log_w = np.log(np.maximum(sim.cell_weights, 1e-300))                 # (L, T)
    if np.isinf(concentration):
        loglik = counts @ log_w
    else:
        a = concentration * np.maximum(sim.cell_weights, 1e-12)          # (L, T)
        n = counts.sum(axis=1, keepdims=True)
        loglik = (gammaln(a.sum(axis=0))[None, :] - gammaln(n + a.sum(axis=0)[None, :])
                  + (gammaln(counts[:, :, None] + a[None]) - gammaln(a)[None]).sum(axis=1))
    return np.argmax(np.log(sim.group_weights)[None, :] + loglik, axis=1)


# ------------------------------------------------------------------ comparing partitions
@dataclass(frozen=True)
class PartitionScore:
    """A partition scored by NAM's objective (:func:`score_partition`).

    Attributes
    ----------
    elbo : float
        The ELBO at the CAVI optimum reached from the partition.
    bound : LabellingBound or None
        The labelling-aware bound there (model section 6b), if asked for.
    group_labels, cell_labels : ndarray (J,), (N,)
        The partitions at that optimum (argmax of q(S) and q(M)); cells in the caller's order.
    n_iter, converged : int, bool
        The sweeps run, and whether the tolerance ended them.
    terms : dict of str to float
        The ELBO's terms there (model section 6; entropies carry an ``H_`` prefix), summing
        to ``elbo``: which part of the objective a comparison of two partitions turns on.
    """

    elbo: float
    bound: LabellingBound | None
    group_labels: np.ndarray
    cell_labels: np.ndarray
    n_iter: int
    converged: bool
    terms: dict = field(default_factory=dict)


def elbo_from_labels(problem, cell_labels, group_labels, *, backend: str = "cpp",
                     max_iter: int = 1000, tol: float = 1e-9) -> float:
    """NAM's ELBO at the CAVI optimum reached from a hard partition.

    Plain sweeps from the labels, and no move but the x width's when the problem learns it,
    so it scores the basin of that start.  Compute every side of a comparison here: a fit
    stops at its own ``tol``, so its ``elbo_`` against a tighter run would compare stopping
    rules, not partitions.

    Parameters
    ----------
    problem : NestedAtomsModel or its problem_
        The data and priors (a fitted model's, or from :func:`problem_for`).
    cell_labels : array-like (N,)
        Each cell's cluster, in the caller's cell order (as ``cell_labels_``); any labels that
        sort (numbers, strings), at most ``n_cell_clusters`` of them.
    group_labels : array-like (J,)
        Each individual's cluster, in the order of the model's ``groups_``; at most
        ``n_group_clusters`` of them.
    backend : {"cpp", "numpy"}, default "cpp"
    max_iter, tol : int, float
        The sweeps' cap and relative tolerance.

    Returns
    -------
    float
    """
    return score_partition(problem, cell_labels, group_labels, backend=backend,
                           max_iter=max_iter, tol=tol, bound=False).elbo


def score_partition(problem, cell_labels, group_labels, *, hold_groups: bool = False,
                    bound: bool = True, backend: str = "cpp", max_iter: int = 1000,
                    tol: float = 1e-9, max_orders: int = 720) -> PartitionScore:
    """Score a partition by the ELBO and the labelling-aware bound (model section 6b).

    Parameters
    ----------
    problem : NestedAtomsModel or its problem_
        The data and priors.
    cell_labels, group_labels : array-like (N,), (J,)
        The partition, cells in the caller's order, individuals in the order of ``groups_``.
    hold_groups : bool, default False
        Hold q(S) at the hard ``group_labels`` and sweep every other block to convergence:
        the score of that partition even where it is not a fixed point of the full sweeps
        (as a split or merge move proposes it).  By default every block moves, as in
        :func:`elbo_from_labels`.
    bound : bool, default True
        Also compute the labelling-aware bound at the optimum reached.
    backend : {"cpp", "numpy"}, default "cpp"
    max_iter, tol : int, float
        The sweeps' cap and relative tolerance.
    max_orders : int, default 720
        The number of relabellings the bound mixes (all m! up to m = 6 occupied clusters).

    Returns
    -------
    PartitionScore
    """
    from ._fit import run_from_labels
    from ._init import relabel_by_size, state_from_labels
    from ._labelling_bound import labelling_bound as bound_of
    from ._steps import BLOCKS, elbo, elbo_terms

    prob, be = _problem_of(problem), _backend(backend)
    cell_labels, group_labels = _partition(prob, cell_labels, group_labels)
    if not hold_groups:
        run = run_from_labels(be, prob, cell_labels, group_labels, max_iter, tol)
        st, value, n_iter, converged = run.state, run.elbo, run.n_iter, run.converged
    else:
        st = state_from_labels(be, prob, relabel_by_size(cell_labels)[prob.data.order],
                               relabel_by_size(group_labels))
        value, n_iter, converged = elbo(be, prob, st), 0, False
        while n_iter < max_iter and not converged:
            for name, update in BLOCKS:
                if name != "groups":
                    update(be, prob, st)
            previous, value = value, elbo(be, prob, st)
            n_iter += 1
            converged = abs(value - previous) <= tol * abs(value)
    return PartitionScore(
        elbo=float(value), bound=bound_of(be, prob, st, max_orders=max_orders) if bound else None,
        group_labels=np.argmax(st.rho, axis=1),
        cell_labels=prob.data.to_caller_order(np.argmax(st.xi, axis=1)),
        n_iter=n_iter, converged=converged, terms=elbo_terms(be, prob, st))


def _partition(prob: Problem, cell_labels, group_labels):
    """The labels as codes 0, 1, ... (any labels that sort: numbers or strings), checked
    against the problem's cells, groups and truncations."""
    from .exceptions import InvalidParameterError

    out = []
    for labels, n, limit, what, option in (
            (cell_labels, prob.data.n_cells, prob.L, "cell", "n_cell_clusters"),
            (group_labels, prob.data.n_groups, prob.K, "group", "n_group_clusters")):
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise InvalidParameterError(
                f"{what} labels of shape {labels.shape} do not match the problem's {n} "
                f"{what}s; pass one label per cell (caller's order) and one per group (in the "
                f"order of groups_).")
        if labels.dtype.kind in "fc" and not np.isfinite(labels).all():
            raise InvalidParameterError(f"{what} labels contain NaN or inf; pass one finite "
                                        f"label per {what}.")
        _, codes = np.unique(labels, return_inverse=True)
        if codes.size and codes.max() >= limit:
            raise InvalidParameterError(
                f"{codes.max() + 1} {what} clusters, more than the problem's truncation "
                f"{option} = {limit}; refit with a larger {option} or merge clusters.")
        out.append(codes.reshape(-1))
    return out


def labelling_bound(model, *, max_orders: int = 720) -> LabellingBound:
    """The labelling-aware lower bound of a fitted model (model section 6b).

    The same as ``model.labelling_bound()``: the ELBO of a mixture over relabellings of the
    occupied individual clusters, always at least ``elbo_``.

    Parameters
    ----------
    model : NestedAtomsModel
        A fitted model.
    max_orders : int, default 720
        The number of relabellings the bound mixes.

    Returns
    -------
    LabellingBound
        ``value``, ``elbo``, ``bonus``, ``n_orders``, ``n_occupied``, ``weights``, ...
    """
    from ._labelling_bound import labelling_bound_of

    return labelling_bound_of(model, max_orders=max_orders)


def labelling_gap(problem, cell_labels, group_labels, *, backend: str = "cpp") -> float:
    """How far the ELBO under-counts a partition of the individuals, in nats.

    The exact log prior probability of the partition under NAM's Dirichlet process (alpha
    integrated under its Gamma prior, or at its fixed value) minus the partition-prior terms
    of the ELBO at their optimum for that hard partition, labelled by size.  The gap grows with
    the number of clusters, so the ELBO charges a partition with more clusters more than a
    merged one.

    Parameters
    ----------
    problem : NestedAtomsModel or its problem_
        Its truncation K and concentration prior are used.
    cell_labels, group_labels : array-like (N,), (J,)
        The partition, cells in the caller's order.
    backend : {"cpp", "numpy"}, default "cpp"

    Returns
    -------
    float
    """
    from ._prior_swap import labelling_gap as gap

    prob = _problem_of(problem)
    cell_labels, group_labels = _partition(prob, cell_labels, group_labels)
    return gap(_backend(backend), prob, cell_labels, group_labels)


def same_partition(a, b) -> bool:
    """Whether two labelings are the same partition (equal up to the names of the clusters).

    Parameters
    ----------
    a, b : array-like (n,)

    Returns
    -------
    bool
    """
    from .moves import adjusted_partition_equal

    return bool(adjusted_partition_equal(np.asarray(a), np.asarray(b)))


# ------------------------------------------------------------------ the problem a fit solves
def problem_for(model, Y, groups, X=None) -> Problem:
    """The problem ``model.fit(Y, groups, X)`` would solve, without fitting.

    Parameters
    ----------
    model : NestedAtomsModel
        An estimator (fitted or not); its parameters set the priors.
    Y, groups, X : array-like
        As for ``fit``.

    Returns
    -------
    Problem
        The data (cells sorted by group) and the resolved priors, as a fit's ``problem_``.
    """
    from ._data import prepare_data

    model._check_params()
    return model._problem(prepare_data(Y, groups, X))


def problem_with(problem, *, x_prior: NWPrior | None = None, y_prior: NWPrior | None = None,
                 learn_group_prior_scale: bool | None = None,
                 donor_concentration: float | None = None) -> Problem:
    """A copy of a problem with some priors swapped (the data are shared, not copied).

    Parameters
    ----------
    problem : NestedAtomsModel or its problem_
    x_prior, y_prior : NWPrior, optional
        The atom priors to use instead (:func:`x_prior_for`, :func:`simulator_atom_prior`).
    learn_group_prior_scale : bool, optional
        Whether the x prior's width is learned (False holds the prior as set).
    donor_concentration : float, optional
        Hold the donors' concentration c at this value (inf: NAM exactly).

    Returns
    -------
    Problem
    """
    out = copy.copy(_problem_of(problem))
    if x_prior is not None:
        out.x_prior = x_prior
    if y_prior is not None:
        out.y_prior = y_prior
    if learn_group_prior_scale is not None:
        out.learn_group_prior_scale = bool(learn_group_prior_scale)
    if donor_concentration is not None:
        out.learn_donor_concentration = False
        out.donor_concentration = float(donor_concentration)
    return out


def x_prior_for(X, n_group_clusters: int = 30, overrides=None, *,
                prior: str = "empirical") -> NWPrior:
    """NAM's x prior for these individuals, at its width as set, as a fit resolves it.

    Parameters
    ----------
    X : ndarray (J, q)
    n_group_clusters : int, default 30
        The estimator's ``n_group_clusters`` (the prior's scale shares the data among them).
    overrides : dict, optional
        The estimator's ``group_prior`` (scikit-learn names: ``covariance_prior``, ...).
    prior : {"empirical", "reference"}, default "empirical"
        The estimator's ``prior`` preset.

    Returns
    -------
    NWPrior
    """
    from ._state import resolve_nw_prior

    return resolve_nw_prior(np.asarray(X, dtype=np.float64), int(n_group_clusters), prior,
                            overrides or None, name="group_prior", layer="groups")


def simulator_atom_prior(dim: int, lam: float) -> NWPrior:
    """The simulator's atom prior NW(0, lam, I, dim + 5) (model section 8).

    Parameters
    ----------
    dim : int
        q for the x atoms, p for the y atoms.
    lam : float
        ``lam_x`` or ``lam_y`` of :func:`nestedatoms.simulate`.

    Returns
    -------
    NWPrior
    """
    from ._simulate import ATOM_DF_EXTRA

    return NWPrior(m0=np.zeros(dim), lam0=float(lam), W0inv=np.eye(dim),
                   nu0=dim + float(ATOM_DF_EXTRA))


@contextlib.contextmanager
def uncapped_group_prior_scale(max_log_scale: float = 8.0):
    """Let a learned x width exceed the prior as set, up to e**max_log_scale, inside the block.

    The package caps the learned factor f of the x prior's width at 1; this lifts the cap for
    fits run inside the ``with`` block (in this process, not thread-safe), to measure what
    the cap does.

    Parameters
    ----------
    max_log_scale : float, default 8.0
        The largest log f allowed.
    """
    from . import _steps

    saved = _steps._LOG_SCALE_MAX
    _steps._LOG_SCALE_MAX = float(max_log_scale)
    try:
        yield
    finally:
        _steps._LOG_SCALE_MAX = saved


def group_features(model) -> np.ndarray:
    """The individuals' features the group search clusters (compositions joined with x).

    Parameters
    ----------
    model : NestedAtomsModel
        A fitted model.

    Returns
    -------
    ndarray (J, d)
        One row per individual, in the order of ``groups_``.
    """
    from ._init import group_features as features

    return features(_problem_of(model), model.state_.N_jl)


def kmeans_labels(Z, k: int, random_state=None) -> np.ndarray:
    """k-means++ labels of the rows of Z, as the fit's initialisation computes them.

    Parameters
    ----------
    Z : ndarray (n, d)
    k : int
    random_state : int or numpy.random.Generator, optional

    Returns
    -------
    ndarray (n,)
    """
    from ._init import kmeans_labels as kmeans

    rng = (random_state if isinstance(random_state, np.random.Generator)
           else np.random.default_rng(random_state))
    return kmeans(np.asarray(Z, dtype=np.float64), int(k), rng)
