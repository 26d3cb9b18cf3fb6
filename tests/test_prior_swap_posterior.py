"""The prior pieces the recovery study swaps into the exact partition posterior
(``nestedatoms.diagnostics``, implemented in ``_prior_swap``), against closed forms: they carry
the study's claim about which of NAM's priors moves the mode off the truth."""

import numpy as np
import pytest
from scipy import integrate, stats
from scipy.special import gammaln

from nestedatoms._init import relabel_by_first_appearance
from nestedatoms.diagnostics import (dp_partition_label_term, labelling_gap,
                                     mode_with_profiled_group_prior_scale, modes_with_nam_priors,
                                     nw_log_marginal, posterior_from_scores, problem_for,
                                     stick_breaking_log_marginal, subset_members, x_prior_for)


@pytest.mark.parametrize("J", [1, 4, 9])
def test_dirichlet_process_partition_prior_sums_to_one_over_all_partitions(J):
    """With alpha ~ Gamma(0.1, 0.1) integrated out, the prior over partitions of J individuals
    (the DP's EPPF: gammaln(n_k) per block, the alpha integral per number of blocks) is a
    distribution: its normaliser over every partition is 1."""
    sizes = subset_members(J).sum(axis=1)
    post = posterior_from_scores(np.concatenate([[0.0], gammaln(sizes)]),
                                 dp_partition_label_term(J), np.zeros(J, dtype=int))
    assert post.log_evidence == pytest.approx(0.0, abs=1e-9)


def test_dirichlet_process_partition_prior_matches_scipy_quadrature():
    """The integral over alpha, against scipy's adaptive quadrature in alpha itself, for a
    Gamma(400, 200) prior (alpha near 2, where a fixed alpha would give the Chinese
    restaurant process)."""
    J, shape, rate = 6, 400.0, 200.0
    got = dp_partition_label_term(J, shape=shape, rate=rate)[1:]
    for b, value in enumerate(got, start=1):
        def integrand(alpha):
            return np.exp(b * np.log(alpha) + gammaln(alpha) - gammaln(alpha + J)
                          + stats.gamma.logpdf(alpha, shape, scale=1.0 / rate))
        expected, _ = integrate.quad(integrand, 1.0, 3.0, epsabs=0, epsrel=1e-12)
        assert value == pytest.approx(np.log(expected), abs=1e-8)


@pytest.mark.parametrize("beta", [0.3, 1.0, 4.0])
def test_stick_breaking_marginal_in_closed_form(beta):
    """One cell of type l: E[omega_l] = (1 / (1 + beta)) (beta / (1 + beta))^(l - 1); two cells
    of the first type: E[u^2] = 2 / ((1 + beta) (2 + beta)), for u ~ Beta(1, beta)."""
    single = np.eye(4)
    expected = -np.log1p(beta) + np.arange(4) * (np.log(beta) - np.log1p(beta))
    np.testing.assert_allclose(stick_breaking_log_marginal(single, beta), expected, rtol=1e-12)
    two_first = np.array([[2.0, 0.0, 0.0]])
    np.testing.assert_allclose(stick_breaking_log_marginal(two_first, beta),
                               np.log(2.0 / ((1 + beta) * (2 + beta))), rtol=1e-12)


def _brute_force_labelling_gap(groups, alpha, K=40):
    """log of the stick-breaking probability summed over every way to give the blocks distinct
    labels 1..K (the rest of the sticks carries (alpha / (1 + alpha))^K of the mass), minus
    that of the labelling sorted by size: what scoring one labelling leaves out."""
    import itertools

    from scipy.special import betaln, logsumexp

    sizes = np.sort(np.bincount(groups))[::-1].astype(float)

    def log_stick_breaking(label_of_block):
        counts = np.zeros(K)
        counts[list(label_of_block)] = sizes
        beyond = np.cumsum(counts[::-1])[::-1] - counts
        return (betaln(1.0 + counts, alpha + beyond) - betaln(1.0, alpha)).sum()

    every = [log_stick_breaking(lab) for lab in itertools.permutations(range(K), sizes.size)]
    return logsumexp(every) - log_stick_breaking(range(sizes.size))


@pytest.mark.parametrize("groups", [[0] * 12, [0] * 6 + [1] * 4 + [2] * 2,
                                    [1, 0, 2, 1, 1, 0, 1, 2, 1, 1, 0, 1]])
def test_labelling_gap_at_a_fixed_alpha_against_a_sum_over_every_labelling(groups):
    """With alpha fixed, the DP's partition probability is the stick-breaking probability
    summed over every labelling, and SPEC's group-stick terms at their optimum for a hard
    partition are log p(its size-sorted labelling) (q(v) is then the exact posterior of the
    sticks): the gap is what the brute-force sum adds."""
    import nestedatoms as na

    sim = na.simulate(random_state=0)
    prob = problem_for(na.NestedAtomsModel(group_concentration=0.8), sim.Y, sim.groups, sim.X)
    groups = np.asarray(groups)
    assert labelling_gap(prob, sim.cell_truth, groups, backend="numpy") == pytest.approx(
        _brute_force_labelling_gap(groups, 0.8), abs=1e-6)


def test_swapped_prior_modes_start_from_the_generating_posterior():
    """The assembly: with nothing swapped, the mode and evidence are those of
    ``Simulation.group_partition_posterior``, built independently."""
    import nestedatoms as na

    sim = na.simulate(n_groups=8, cells_per_group=30, random_state=3)
    modes = modes_with_nam_priors(sim, x_prior_for(sim.X, 30))
    reference = sim.group_partition_posterior()
    np.testing.assert_array_equal(modes["generating"].map_labels, reference.map_labels)
    assert modes["generating"].log_evidence == pytest.approx(reference.log_evidence, abs=1e-9)
    assert set(modes) >= {"NAM partition prior", "NAM composition prior", "NAM x prior",
                          "all three NAM priors"}


def test_profiled_width_mode_is_the_joint_maximum_over_partitions_and_widths():
    """The mode with the x prior's width profiled is the (partition, width) pair that scores
    highest, found here by scoring every partition of six individuals at every width."""
    import itertools

    J, q = 6, 2
    rng = np.random.default_rng(12)
    X = np.concatenate([rng.normal(0.0, 0.5, (3, q)), rng.normal(2.0, 0.5, (3, q))])
    members = subset_members(J)
    sizes = members.sum(axis=1)
    other = rng.normal(0.0, 0.1, members.shape[0])      # a width-free score per block
    label_term = dp_partition_label_term(J)
    W0inv, lam0, nu0 = np.diag(X.var(axis=0)), 0.5, q + 3.0    # too broad for the clusters

    def block_scores_at(f):
        return (gammaln(sizes) + other
                + nw_log_marginal(X, members, lam0 * f, nu0, W0inv * f, X.mean(axis=0)))

    log_scales = np.linspace(-8.0, 0.0, 17)
    truth = np.repeat([0, 1], 3)
    got = mode_with_profiled_group_prior_scale(block_scores_at, label_term, truth, log_scales)

    # every partition once (labels by first appearance), as bit masks of its blocks
    partitions = [np.array(labels) for labels in itertools.product(range(J), repeat=J)
                  if np.array_equal(labels, relabel_by_first_appearance(np.array(labels)))]
    assert len(partitions) == 203                        # Bell(6)
    masks = [np.array([int((1 << np.nonzero(p == k)[0]).sum()) for k in np.unique(p)]) - 1
             for p in partitions]
    best, best_score = None, -np.inf
    for log_f in log_scales:
        scores = block_scores_at(np.exp(log_f))
        for labels, m in zip(partitions, masks):
            score = scores[m].sum() + label_term[m.size]
            if score > best_score:
                best, best_score = (labels, np.exp(log_f)), score
    np.testing.assert_array_equal(got.map_labels, best[0])
    assert got.group_prior_scale == pytest.approx(best[1], rel=1e-12)
    assert got.log_prob_map + got.log_evidence == pytest.approx(best_score, abs=1e-9)
    # not a trivial case: the width moves inside the grid; at the width as set the mode is
    # another partition; and choosing the width by the evidence alone (type-II) would give
    # another width, so the test tells the joint mode from that
    assert np.exp(log_scales[0]) < got.group_prior_scale < 1.0
    as_set = mode_with_profiled_group_prior_scale(block_scores_at, label_term, truth, np.zeros(1))
    assert not np.array_equal(as_set.map_labels, got.map_labels)
    evidence = [posterior_from_scores(np.concatenate([[0.0], block_scores_at(np.exp(f))]),
                                      label_term, truth).log_evidence for f in log_scales]
    assert np.exp(log_scales[int(np.argmax(evidence))]) != pytest.approx(got.group_prior_scale)


def test_profiled_width_at_the_width_as_set_is_the_all_three_mode():
    """The wiring of the profiled entry (x prior at width f, beta as under all three): with a
    grid of the single width 1 it is exactly the mode under all three NAM priors."""
    import nestedatoms as na

    sim = na.simulate(n_groups=8, cells_per_group=30, n_group_clusters=3, lam_x=0.01,
                      random_state=5)
    prior = x_prior_for(sim.X, 30)
    at_one = modes_with_nam_priors(sim, prior, profile_group_prior_scale=True, log_scales=np.zeros(1))
    profiled = at_one["all three NAM priors, x width profiled"]
    fixed = at_one["all three NAM priors"]
    np.testing.assert_array_equal(profiled.map_labels, fixed.map_labels)
    assert profiled.log_evidence == pytest.approx(fixed.log_evidence, abs=1e-9)
    assert profiled.group_prior_scale == 1.0
    # and over the default grid the joint score can only rise
    grid = modes_with_nam_priors(sim, prior, profile_group_prior_scale=True)
    wide = grid["all three NAM priors, x width profiled"]
    assert (wide.log_prob_map + wide.log_evidence
            >= fixed.log_prob_map + fixed.log_evidence - 1e-9)

