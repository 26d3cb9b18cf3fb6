"""Statistical quality of the default fit: the default prior in closed form, its invariance to
the scale of the data, escaping local optima (the fit scores at least as high as a run started
at the truth), recovery with enough individuals per cluster, and x mattering where the cell
compositions alone cannot separate the individual clusters."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score as ari

import nestedatoms as na
from nestedatoms._backend import get_backend
from nestedatoms._fit import elbo_from_labels
from nestedatoms._state import resolve_nw_prior


@pytest.mark.parametrize("D, G", [(1, 30), (2, 6), (5, 30)])
def test_empirical_group_prior_in_closed_form(D, G):
    """x layer: E[Sigma] = diag(Cov) / (2 G^(2/D)), atom means spread like the data."""
    rng = np.random.default_rng(D)
    Z = rng.normal(size=(400, D)) @ rng.normal(size=(D, D)) + 3.0
    prior = resolve_nw_prior(Z, G, "empirical", None, layer="groups")
    cov = np.atleast_2d(np.cov(Z, rowvar=False))
    # E[Sigma] = W0^-1 / (nu0 - D - 1) for Lambda ~ Wishart(W0, nu0)
    expected_sigma = prior.W0inv / (prior.nu0 - D - 1)
    np.testing.assert_allclose(expected_sigma, np.diag(np.diag(cov)) / (2 * G ** (2.0 / D)),
                               rtol=1e-12, atol=0)
    # the prior spread of the atom means, E[Sigma] / lam0, is the spread of the data
    np.testing.assert_allclose(expected_sigma / prior.lam0, np.diag(np.diag(cov)), rtol=1e-12)
    np.testing.assert_allclose(prior.m0, Z.mean(axis=0), rtol=1e-12)
    cells = resolve_nw_prior(Z, G, "empirical", None, layer="cells")
    np.testing.assert_allclose(cells.W0inv / cells.nu0, cov / G ** (2.0 / D), rtol=1e-12)


def test_default_fit_is_invariant_to_the_scale_of_the_data():
    sim = na.simulate(random_state=3)
    kwargs = dict(n_init=1, random_state=0, n_threads=1)
    a = na.NestedAtomsModel(**kwargs).fit(sim.Y, sim.groups, sim.X)
    b = na.NestedAtomsModel(**kwargs).fit(250.0 * sim.Y - 40.0, sim.groups, 0.01 * sim.X + 7.0)
    assert ari(a.cell_labels_, b.cell_labels_) == 1.0
    assert ari(a.group_labels_, b.group_labels_) == 1.0
    # each feature of x in its own units (the x prior is diagonal for this reason); powers of
    # two scale exactly, so this tests the maths without rounding noise: a fit at a near-tie
    # may otherwise follow a different path
    units = 2.0 ** np.array([-10, 0, 5, -3, 9])
    c = na.NestedAtomsModel(**kwargs).fit(sim.Y, sim.groups, sim.X * units)
    assert ari(a.group_labels_, c.group_labels_) == 1.0
    np.testing.assert_allclose(c.elbo_ + sim.X.shape[0] * np.log(units).sum(), a.elbo_,
                               rtol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_fit_scores_at_least_as_high_as_a_run_started_at_the_truth(seed):
    """The moves escape the local optima of the k-means start: on the published toy design
    the default fit's ELBO is no lower than that of CAVI started from the true partition."""
    sim = na.simulate(random_state=seed)
    model = na.NestedAtomsModel(n_init=1, random_state=seed, n_threads=1)
    model.fit(sim.Y, sim.groups, sim.X)
    be = get_backend("cpp")
    prob = model.problem_
    # both sides run to the same tight tolerance from hard labels, numbered alike
    from_fit = elbo_from_labels(be, prob, model.cell_labels_, model.group_labels_)
    from_truth = elbo_from_labels(be, prob, sim.cell_truth, sim.group_truth)
    assert from_fit >= from_truth - 1e-9 * abs(from_truth)
    _, bayes_cells = sim.bayes_labels()
    assert ari(sim.cell_truth, model.cell_labels_) >= ari(sim.cell_truth, bayes_cells) - 0.015


def test_elbo_from_labels_does_not_depend_on_how_the_clusters_are_named():
    """The stick-breaking priors depend on the order of the clusters, so a partition must be
    scored the same whatever its labels are called (they are renumbered by size)."""
    sim = na.simulate(random_state=0)
    prob = na.NestedAtomsModel(n_init=1, random_state=0, n_threads=1).fit(
        sim.Y, sim.groups, sim.X).problem_
    be = get_backend("cpp")
    cells, groups = sim.cell_truth, sim.group_truth
    renamed = elbo_from_labels(be, prob, (cells + 1) % (cells.max() + 1), groups.max() - groups)
    assert renamed == elbo_from_labels(be, prob, cells, groups)


@pytest.mark.parametrize("seed", [
    5,     # the fit is the exact posterior mode (which is not the truth here)
    # NAM's objective scores the mode 0.32 nats above the one cluster the fit returns, but the
    # mode is two splits away and the first alone scores lower (studies/STUDY.md section 3): a
    # known miss of the greedy search, kept here until a search finds it
    pytest.param(2, marks=pytest.mark.xfail(strict=True, reason="mode two splits away")),
])
def test_default_fit_scores_at_least_as_high_as_the_exact_posterior_mode(seed):
    """Against an independent partition: the exact posterior mode of the individual partition
    under the generating model (subset enumeration), started from the true cells."""
    sim = na.simulate(random_state=seed)
    model = na.NestedAtomsModel(random_state=seed, n_threads=1).fit(sim.Y, sim.groups, sim.X)
    mode = sim.group_partition_posterior().map_labels
    prob = model.problem_
    be = get_backend("cpp")
    # both sides run to the same tight tolerance from hard labels
    from_fit = elbo_from_labels(be, prob, model.cell_labels_, model.group_labels_)
    from_mode = elbo_from_labels(be, prob, sim.cell_truth, mode)
    assert from_fit >= from_mode - 1e-9 * abs(from_mode)


@pytest.mark.parametrize("seed", [3, 6, 7, 9])
def test_toy_design_individuals_recovered_where_the_old_full_covariance_prior_merged(seed):
    """Published toy design seeds on which the previous default x prior (shaped like the full
    covariance of x) merged or mixed two true individual clusters; the diagonal default must
    recover them exactly (studies/STUDY.md sections 1 and 3)."""
    sim = na.simulate(random_state=seed)
    model = na.NestedAtomsModel(n_init=1, random_state=seed, n_threads=1)
    model.fit(sim.Y, sim.groups, sim.X)
    assert ari(sim.group_truth, model.group_labels_) == 1.0


@pytest.mark.parametrize("seed", [7, 1007])
def test_with_enough_individuals_per_cluster_groups_match_the_bayes_classifier(seed):
    sim = na.simulate(n_groups=60, cells_per_group=50, random_state=seed)
    bayes_groups, bayes_cells = sim.bayes_labels()
    model = na.NestedAtomsModel(n_init=1, random_state=seed, n_threads=1)
    model.fit(sim.Y, sim.groups, sim.X)
    assert ari(sim.group_truth, model.group_labels_) >= ari(sim.group_truth, bayes_groups)
    assert ari(sim.cell_truth, model.cell_labels_) >= ari(sim.cell_truth, bayes_cells) - 0.01


def _same_composition(seed):
    """Two individual clusters that share one cell-type composition and differ only in x."""
    sim = na.simulate(n_groups=30, cells_per_group=40, n_group_clusters=2, alpha0_x=1e6,
                      random_state=seed)
    return sim.with_shared_composition(seed)


def test_x_separates_individual_clusters_that_compositions_cannot():
    sim = _same_composition(seed=5)
    bayes_groups, _ = sim.bayes_labels()
    assert ari(sim.group_truth, bayes_groups) == 1.0
    kwargs = dict(n_init=1, random_state=0, n_threads=1)
    nam = na.NestedAtomsModel(**kwargs).fit(sim.Y, sim.groups, sim.X)
    cam = na.NestedAtomsModel(**kwargs).fit(sim.Y, sim.groups, None)
    assert ari(sim.group_truth, nam.group_labels_) == 1.0
    assert ari(sim.group_truth, cam.group_labels_) < 0.5
