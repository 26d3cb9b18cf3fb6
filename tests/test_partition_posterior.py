"""The exact posterior over partitions of the individuals under the simulator's model: the
Normal-Wishart marginal against scipy's Student t, the composition term against scipy's
Dirichlet-multinomial, and the whole posterior against brute-force enumeration of every
labelling, each scored one individual at a time from predictive distributions."""

import itertools

import numpy as np
import pytest
from scipy.special import gammaln, logsumexp
from scipy.stats import multivariate_t
from sklearn.metrics import adjusted_rand_score as ari

import nestedatoms as na
from nestedatoms._partition_posterior import MAX_GROUPS, nw_log_marginal


def _student_predictive(z, m, lam, Winv, nu):
    """log p(z) under NW(m, lam, W, nu): a Student t (Bishop PRML 10.81)."""
    q = len(m)
    dof = nu - q + 1
    return multivariate_t(loc=m, shape=Winv * (lam + 1) / (lam * dof), df=dof).logpdf(z)


@pytest.mark.parametrize("q", [1, 3])
def test_normal_wishart_marginal_is_the_chain_of_student_predictives(q):
    rng = np.random.default_rng(q)
    X = rng.normal(size=(2, q)) * 2.0 + 0.5
    m0, lam0, nu0 = rng.normal(size=q), 0.3, q + 4.0
    A = rng.normal(size=(q, q))
    W0inv = A @ A.T + np.eye(q)
    one, two = nw_log_marginal(X, np.array([[True, False], [True, True]]), lam0, nu0, W0inv, m0)
    assert one == pytest.approx(_student_predictive(X[0], m0, lam0, W0inv, nu0), rel=1e-12)
    # p(x1, x2) = p(x1) p(x2 | x1), the second from the posterior after x1 (SPEC 5, step 7)
    d = X[0] - m0
    m1, lam1, nu1 = (lam0 * m0 + X[0]) / (lam0 + 1), lam0 + 1, nu0 + 1
    W1inv = W0inv + lam0 / (lam0 + 1) * np.outer(d, d)
    expected = one + _student_predictive(X[1], m1, lam1, W1inv, nu1)
    assert two == pytest.approx(expected, rel=1e-12)


def _sequential_log_joint(labels, X, cell_types, T, alpha0_x, alpha0_y, lam_x):
    """log p(S = labels, X, M) built one individual at a time from predictive distributions
    (Polya urns for the labels and the cell types, scipy's Student t for x under the running
    Normal-Wishart posterior), sharing no code with the module under test."""
    q, n_types = X.shape[1], 1 + max(int(c.max()) for c in cell_types)
    a_x, a_y = alpha0_x / T, alpha0_y / n_types
    sizes, type_counts = np.zeros(T), np.zeros((T, n_types))
    members = {k: [] for k in range(T)}
    total = 0.0
    for j, k in enumerate(labels):
        total += np.log((a_x + sizes[k]) / (alpha0_x + j))
        # posterior of cluster k's atom after its earlier members: NW(m, lam, W, nu), m0 = 0,
        # W0 = I, nu0 = q + 5 as the simulator draws them
        pts = np.array(members[k]).reshape(-1, q)
        lam, nu = lam_x + len(pts), q + 5.0 + len(pts)
        m = pts.sum(axis=0) / lam
        Winv = np.eye(q) + pts.T @ pts - lam * np.outer(m, m)
        total += _student_predictive(X[j], m, lam, Winv, nu)
        members[k].append(X[j])
        sizes[k] += 1
        for c in cell_types[j]:
            total += np.log((a_y + type_counts[k, c]) / (alpha0_y + type_counts[k].sum()))
            type_counts[k, c] += 1
    return total


def _brute_force(sim, T):
    """Every one of the T^J labellings, scored sequentially and summed per partition."""
    J = len(sim.X)
    codes = np.searchsorted(sim.group_names, sim.groups)
    cell_types = [sim.cell_truth[codes == j] for j in range(J)]
    per_partition = {}
    for labels in itertools.product(range(T), repeat=J):
        score = _sequential_log_joint(labels, sim.X, cell_types, T, sim.alpha0_x,
                                      sim.alpha0_y, sim.lam_x)
        per_partition.setdefault(_canonical(labels), []).append(score)
    log_probs = {key: logsumexp(v) for key, v in per_partition.items()}
    log_z = logsumexp(list(log_probs.values()))
    best = max(log_probs, key=log_probs.get)
    return (np.array(best), log_probs[best] - log_z,
            log_probs[_canonical(sim.group_truth)] - log_z, log_z)


def _canonical(labels):
    seen = {}
    return tuple(seen.setdefault(int(v), len(seen)) for v in labels)


@pytest.mark.parametrize("seed, T", [(0, 3), (1, 2), (4, 3), (5, 4)])
def test_partition_posterior_matches_brute_force_enumeration(seed, T):
    sim = na.simulate(n_groups=6, cells_per_group=12, n_group_clusters=T, n_cell_clusters=3,
                      n_group_features=2, lam_x=0.5, random_state=seed)
    got = sim.group_partition_posterior()
    labels, log_map, log_truth, log_evidence = _brute_force(sim, T)
    np.testing.assert_array_equal(got.map_labels, labels)
    assert got.log_prob_map == pytest.approx(log_map, abs=1e-9)
    assert got.log_prob_truth == pytest.approx(log_truth, abs=1e-9)
    # log p(X, M): the labelling sums and the blocks' marginals, against the sequential scores
    assert got.log_evidence == pytest.approx(log_evidence, rel=1e-12)


def test_well_separated_individuals_have_the_truth_as_posterior_mode():
    sim = na.simulate(lam_x=1e-4, random_state=0)
    post = sim.group_partition_posterior()
    assert ari(sim.group_truth, post.map_labels) == 1.0
    assert post.log_prob_truth == pytest.approx(post.log_prob_map)
    assert -1e-3 < post.log_prob_truth <= 0.0


def test_partition_posterior_refuses_too_many_individuals():
    sim = na.simulate(n_groups=MAX_GROUPS + 1, cells_per_group=5, random_state=0)
    with pytest.raises(ValueError, match="J <= 14"):
        sim.group_partition_posterior()


def test_dirichlet_multinomial_term_against_scipy():
    import scipy.stats

    if not hasattr(scipy.stats, "dirichlet_multinomial"):
        pytest.skip("scipy.stats.dirichlet_multinomial needs scipy >= 1.11")
    from nestedatoms._partition_posterior import _dirichlet_multinomial

    counts = np.array([[3.0, 0.0, 5.0], [1.0, 1.0, 1.0], [0.0, 0.0, 2.0]])
    a = 25.0 / 3
    got = _dirichlet_multinomial(counts, a)
    for row, value in zip(counts, got):
        n = row.sum()
        # scipy gives the probability of the counts; ours is that of one sequence with them
        log_coefficient = gammaln(n + 1) - gammaln(row + 1).sum()
        expected = scipy.stats.dirichlet_multinomial(np.full(3, a), int(n)).logpmf(row)
        assert value == pytest.approx(expected - log_coefficient, rel=1e-12)


def test_shared_composition_copy_differs_only_in_cells_and_is_refused():
    sim = na.simulate(n_groups=8, cells_per_group=20, random_state=3)
    shared = sim.with_shared_composition(0)
    np.testing.assert_array_equal(shared.X, sim.X)
    np.testing.assert_array_equal(shared.group_truth, sim.group_truth)
    assert shared.Y.shape == sim.Y.shape and not sim.compositions_shared
    # every group cluster now has cluster 0's composition
    np.testing.assert_array_equal(shared.cell_weights,
                                  np.repeat(sim.cell_weights[:, :1], 3, axis=1))
    with pytest.raises(ValueError, match="with_shared_composition"):
        shared.group_partition_posterior()
