"""nestedatoms.diagnostics: the public tools of the recovery study, each against an independent
truth (another backend, scipy's distributions, a brute-force check or the fit itself).

The pieces of the exact partition posterior with NAM's priors swapped in are tested in
test_prior_swap_posterior.py, the labelling bound itself in test_labelling_bound.py."""

import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

import nestedatoms as na
from nestedatoms import diagnostics as dg
from nestedatoms.exceptions import InvalidParameterError

needs_dirichlet_multinomial = pytest.mark.skipif(
    not hasattr(stats, "dirichlet_multinomial"), reason="scipy.stats.dirichlet_multinomial: "
    "scipy >= 1.11")


@pytest.fixture(scope="module")
def toy():
    sim = na.simulate(random_state=0)
    model = na.NestedAtomsModel(n_init=1, random_state=0, n_threads=1).fit(sim.Y, sim.groups,
                                                                            sim.X)
    return sim, model


def test_import_stays_light_and_diagnostics_loads_on_first_use():
    code = ("import sys, nestedatoms as na; "
            "assert 'nestedatoms.diagnostics' not in sys.modules; "
            "assert 'scipy.stats' not in sys.modules, 'import nestedatoms pulled scipy.stats'; "
            "d = na.diagnostics; import nestedatoms.diagnostics as e; assert d is e; "
            "assert callable(d.elbo_from_labels)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_public_name_is_documented():
    for name in dg.__all__:
        obj = getattr(dg, name)
        if callable(obj):
            assert obj.__doc__ and len(obj.__doc__) > 40, name


# ------------------------------------------------------------------ comparing partitions
def test_elbo_from_labels_agrees_across_backends_and_ignores_label_names(toy):
    """The C++ and the NumPy backends are independent implementations of the same sweeps; the
    cluster names are arbitrary (labels are numbered by size before CAVI)."""
    small = na.simulate(n_groups=6, cells_per_group=20, random_state=0)
    prob = dg.problem_for(na.NestedAtomsModel(), small.Y, small.groups, small.X)
    assert dg.elbo_from_labels(prob, small.cell_truth, small.group_truth) == pytest.approx(
        dg.elbo_from_labels(prob, small.cell_truth, small.group_truth, backend="numpy"),
        rel=1e-8)
    sim, model = toy
    cpp = dg.elbo_from_labels(model, sim.cell_truth, sim.group_truth)
    renamed = dg.elbo_from_labels(model, 7 - sim.cell_truth, 5 * sim.group_truth + 3)
    assert renamed == pytest.approx(cpp, rel=1e-12)
    # the same run as score_partition's, which keeps what it reached
    score = dg.score_partition(model, sim.cell_truth, sim.group_truth)
    assert score.elbo == pytest.approx(cpp, rel=1e-12)
    assert score.converged and dg.same_partition(score.group_labels, sim.group_truth)
    assert score.bound.value >= score.bound.elbo - 1e-9
    assert score.bound.elbo == pytest.approx(score.elbo, rel=1e-12)


def test_labels_are_read_in_the_callers_cell_order(toy):
    """Cells shuffled in the input, their labels shuffled alike: the same ELBO."""
    sim, model = toy
    perm = np.random.default_rng(1).permutation(sim.Y.shape[0])
    prob = dg.problem_for(na.NestedAtomsModel(), sim.Y[perm], sim.groups[perm], sim.X)
    shuffled = dg.elbo_from_labels(prob, sim.cell_truth[perm], sim.group_truth)
    assert shuffled == pytest.approx(
        dg.elbo_from_labels(model, sim.cell_truth, sim.group_truth), rel=1e-9)


def test_held_groups_keep_a_split_the_free_sweeps_may_undo(toy):
    """q(S) held at a partition: the score is of that partition (a split of the truth), and it
    is below the truth's on these well-separated data."""
    sim, model = toy
    split = sim.group_truth.copy()
    first = np.flatnonzero(split == 0)
    split[first[: first.size // 2]] = split.max() + 1
    held = dg.score_partition(model, sim.cell_truth, split, hold_groups=True)
    assert dg.same_partition(held.group_labels, split)
    assert held.bound.value >= held.elbo - 1e-9
    truth = dg.score_partition(model, sim.cell_truth, sim.group_truth, hold_groups=True,
                               bound=False)
    assert truth.bound is None and truth.elbo > held.elbo
    # the terms say where: they sum to the ELBO, and the split pays more for its labels
    # (one more occupied cluster for the same individuals: a larger assignment cost log p(S))
    for score in (held, truth):
        assert sum(score.terms.values()) == pytest.approx(score.elbo, rel=1e-12)
    assert held.terms["log_p_S"] < truth.terms["log_p_S"]


def test_labelling_bound_is_the_models(toy):
    _, model = toy
    res = dg.labelling_bound(model)
    assert res.value == pytest.approx(model.labelling_bound().value, rel=1e-12)
    assert res.value >= res.elbo


@pytest.mark.parametrize("call", [
    lambda m, s: dg.elbo_from_labels(m, s.cell_truth[:-1], s.group_truth),
    lambda m, s: dg.score_partition(m, s.cell_truth, s.group_truth[:-1]),
    lambda m, s: dg.labelling_gap(m, s.cell_truth, s.group_truth[1:]),
    lambda m, s: dg.elbo_from_labels(na.NestedAtomsModel(), s.cell_truth, s.group_truth),
    lambda m, s: dg.elbo_from_labels(m, np.arange(s.cell_truth.size), s.group_truth),
    lambda m, s: dg.score_partition(m, s.cell_truth, np.where(s.group_truth == 0, np.nan, 1.0)),
])
def test_bad_input_names_the_problem(toy, call):
    sim, model = toy
    with pytest.raises(InvalidParameterError,
                       match="fit the model first|one label per cell|n_cell_clusters|NaN"):
        call(model, sim)


def test_labels_may_be_any_that_sort(toy):
    sim, model = toy
    names = np.array(["a", "b", "c", "d", "e", "f"])
    assert dg.elbo_from_labels(model, names[sim.cell_truth], names[sim.group_truth]) == \
        pytest.approx(dg.elbo_from_labels(model, sim.cell_truth, sim.group_truth), rel=1e-12)


def test_same_partition():
    a = np.array([0, 0, 1, 1, 2])
    assert dg.same_partition(a, np.array([5, 5, 3, 3, 9]))
    assert not dg.same_partition(a, np.array([0, 0, 1, 1, 1]))
    assert not dg.same_partition(a, np.array([0, 1, 1, 1, 2]))


# ------------------------------------------------------------------ the problem a fit solves
def test_problem_for_is_the_problem_fit_solves(toy):
    sim, model = toy
    prob = dg.problem_for(na.NestedAtomsModel(n_init=1, random_state=0), sim.Y, sim.groups,
                          sim.X)
    fitted = model.problem_
    assert (prob.K, prob.L) == (fitted.K, fitted.L)
    np.testing.assert_array_equal(prob.data.order, fitted.data.order)
    for got, want in ((prob.x_prior, fitted.x_prior), (prob.y_prior, fitted.y_prior),
                      (dg.x_prior_for(sim.X, fitted.K), fitted.x_prior)):
        np.testing.assert_allclose(got.W0inv, want.W0inv)
        np.testing.assert_allclose(got.m0, want.m0)
        assert (got.lam0, got.nu0) == pytest.approx((want.lam0, want.nu0))


def test_problem_with_swaps_pieces_and_leaves_the_model_alone(toy):
    sim, model = toy
    before = (model.problem_.x_prior, model.problem_.learn_group_prior_scale,
              model.problem_.donor_concentration)
    atoms = dg.simulator_atom_prior(sim.X.shape[1], 0.1)
    swapped = dg.problem_with(model, x_prior=atoms, learn_group_prior_scale=False, donor_concentration=50)
    assert swapped.x_prior is atoms and not swapped.learn_group_prior_scale
    assert swapped.donor_concentration == 50.0 and not swapped.learn_donor_concentration
    assert swapped.data is model.problem_.data
    assert (model.problem_.x_prior, model.problem_.learn_group_prior_scale,
            model.problem_.donor_concentration) == before
    # the simulator's prior, model section 8: NW(0, lam, I, q + 5)
    q = sim.X.shape[1]
    np.testing.assert_array_equal(atoms.m0, np.zeros(q))
    np.testing.assert_array_equal(atoms.W0inv, np.eye(q))
    assert (atoms.lam0, atoms.nu0) == (0.1, q + 5.0)


def test_uncapped_group_prior_scale_lifts_the_cap_only_inside_the_block():
    """Poorly separated individuals (lam_x = 1) want a wider x prior than the one set: capped
    at f = 1 by default, above it inside the block, capped again after it (even after an
    error inside)."""
    sim = na.simulate(lam_x=1.0, random_state=1)

    def width():
        return na.NestedAtomsModel(n_init=1, random_state=0).fit(
            sim.Y, sim.groups, sim.X).group_prior_scale_

    assert width() <= 1.0
    with dg.uncapped_group_prior_scale(8.0):
        assert 1.0 < width() <= np.exp(8.0)
    with pytest.raises(RuntimeError), dg.uncapped_group_prior_scale(8.0):
        raise RuntimeError
    assert width() <= 1.0


def test_kmeans_and_group_features(toy):
    sim, model = toy
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(0, 0.1, (20, 2)), rng.normal(5, 0.1, (10, 2))])
    labels = dg.kmeans_labels(blobs, 2, random_state=0)
    assert dg.same_partition(labels, np.repeat([0, 1], [20, 10]))
    np.testing.assert_array_equal(labels, dg.kmeans_labels(blobs, 2, random_state=0))
    feats = dg.group_features(model)
    assert feats.shape[0] == sim.X.shape[0] and np.isfinite(feats).all()


# ------------------------------------------------------------------ ceilings from the truth
def test_partition_posterior_is_the_simulations():
    sim = na.simulate(n_groups=8, cells_per_group=30, random_state=3)
    post = dg.partition_posterior(sim.X, sim._cell_type_counts(), sim.group_truth,
                                  T=sim.group_weights.shape[0], alpha0_x=sim.alpha0_x,
                                  alpha0_y=sim.alpha0_y, lam_x=sim.lam_x,
                                  nu0=sim.X.shape[1] + 5)
    ref = sim.group_partition_posterior()
    np.testing.assert_array_equal(post.map_labels, ref.map_labels)
    assert post.log_evidence == pytest.approx(ref.log_evidence, abs=1e-12)


@needs_dirichlet_multinomial
def test_dirichlet_multinomial_against_scipy():
    """scipy's pmf counts every ordering of the sequence: divide by the multinomial
    coefficient to get one sequence's probability."""
    counts = np.array([[3, 0, 2], [1, 1, 1], [0, 0, 4]])
    a = 0.7
    n = counts.sum(axis=1)
    expected = (stats.dirichlet_multinomial.logpmf(counts, np.full(3, a), n)
                - stats.multinomial.logpmf(counts, n, np.full(3, 1 / 3)) + n * np.log(1 / 3))
    np.testing.assert_allclose(dg.dirichlet_multinomial_log_marginal(counts, a), expected,
                               rtol=1e-10)


@needs_dirichlet_multinomial
@pytest.mark.parametrize("concentration", [np.inf, 30.0])
def test_bayes_donor_labels_against_scipy(concentration):
    """argmax_k log pi_k + log p(N_j. | k), with scipy's multinomial and Dirichlet-multinomial
    (their coefficient is the same for every k)."""
    sim = na.simulate(n_groups=16, cells_per_group=60, n_cell_clusters=4,
                      donor_concentration=None if np.isinf(concentration) else concentration,
                      random_state=4)
    counts = sim._cell_type_counts()
    n = counts.sum(axis=1)
    scores = []
    for k in range(sim.group_weights.size):
        w = sim.cell_weights[:, k]
        loglik = (stats.multinomial.logpmf(counts, n, w) if np.isinf(concentration)
                  else stats.dirichlet_multinomial.logpmf(counts, concentration * w, n))
        scores.append(np.log(sim.group_weights[k]) + loglik)
    np.testing.assert_array_equal(dg.bayes_donor_labels(sim, concentration),
                                  np.argmax(np.column_stack(scores), axis=1))
