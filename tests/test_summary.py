"""Posterior summaries against independent truths: Beta quantiles, simulated clusters."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import nestedatoms as na
from nestedatoms._metrics import adjusted_rand_index
from nestedatoms._summary import _MAX_OPTIMAL_LEAF_ORDERING, _coclustering_order, _stick_draws
from nestedatoms._steps import expected_stick_weights


@pytest.fixture(scope="module")
def fitted():
    sim = na.simulate(n_groups=30, cells_per_group=np.tile([40, 80, 120], 10),
                      n_group_clusters=3, n_cell_clusters=4, n_group_features=3,
                      n_cell_features=3, lam_x=0.02, lam_y=0.03, random_state=11)
    model = na.NestedAtomsModel(n_group_clusters=5, n_cell_clusters=6, n_init=1,
                                random_state=0).fit(sim.Y, sim.groups, sim.X)
    return sim, model, model.summary(n_samples=20000, random_state=1)


def test_stick_draws_match_the_exact_means():
    rng = np.random.default_rng(0)
    a = rng.uniform(1, 30, size=(5, 3))
    b = rng.uniform(0.5, 30, size=(5, 3))
    draws = _stick_draws(rng, a, b, 40000)
    np.testing.assert_allclose(draws.sum(axis=1), 1.0)
    exact = expected_stick_weights(a, b)
    se = draws.std(axis=0) / np.sqrt(draws.shape[0])
    assert np.all(np.abs(draws.mean(axis=0) - exact) < 5 * se + 1e-12)


def test_first_weight_interval_is_the_beta_quantile(fitted):
    """pi_0 = v_0 ~ Beta(a_0, b_0): its interval is the Beta's 2.5% / 97.5% quantiles."""
    sim, model, s = fitted
    st = model.state_
    row = s.group_clusters[s.group_clusters["internal_index"] == 0].iloc[0]
    lo, hi = stats.beta(st.v_a[0, 0], st.v_b[0, 0]).ppf([0.025, 0.975])
    assert row["weight_lower"] == pytest.approx(lo, abs=0.01)
    assert row["weight_upper"] == pytest.approx(hi, abs=0.01)
    assert row["weight"] == pytest.approx(st.v_a[0, 0] / (st.v_a[0, 0] + st.v_b[0, 0]))
    # and omega_0k = u_0k for each group cluster
    cw = s.cell_weights
    k = int(s.group_clusters["internal_index"].iloc[0])
    l0 = int(np.nonzero(s.cell_cluster_index == 0)[0][0]) if 0 in s.cell_cluster_index else None
    if l0 is not None:
        r = cw[(cw["group_cluster"] == 0) & (cw["cell_cluster"] == l0)].iloc[0]
        lo, hi = stats.beta(st.u_a[0, k], st.u_b[0, k]).ppf([0.025, 0.975])
        assert (r["lower"], r["upper"]) == pytest.approx((lo, hi), abs=0.01)


def test_clusters_recovered_and_numbered_by_size(fitted):
    sim, model, s = fitted
    bayes_groups, bayes_cells = sim.bayes_labels()
    assert adjusted_rand_index(bayes_groups, s.groups["cluster"]) == pytest.approx(1.0)
    assert s.n_group_clusters == np.unique(bayes_groups).size
    assert s.n_cell_clusters == np.unique(model.cell_labels_).size
    assert np.all(np.diff(s.group_clusters["n_groups"].to_numpy()) <= 0)
    assert np.all(np.diff(s.cell_clusters["n_cells"].to_numpy()) <= 0)
    # the mapping back to the model's internal indices
    np.testing.assert_array_equal(s.group_cluster_index[s.groups["cluster"].to_numpy()],
                                  model.group_labels_)
    assert s.group_clusters["n_groups"].sum() == len(model.groups_)
    assert s.cell_clusters["n_cells"].sum() == sim.Y.shape[0]


def test_composition_is_the_crosstab_of_the_labels(fitted):
    """With crisp posteriors, the expected composition is the table of hard labels."""
    sim, model, s = fitted
    rank_c = np.full(model.cell_probs_.shape[1], -1)
    rank_c[s.cell_cluster_index] = np.arange(s.n_cell_clusters)
    group_of_cell = s.groups["cluster"].reindex(sim.groups).to_numpy()
    table = pd.crosstab(group_of_cell, rank_c[model.cell_labels_], normalize="index")
    np.testing.assert_allclose(s.composition.to_numpy(), table.to_numpy(), atol=2e-3)
    np.testing.assert_allclose(s.composition.sum(axis=1), 1.0, atol=1e-6)


def test_coclustering(fitted):
    sim, model, s = fitted
    P = s.coclustering
    assert list(P.index) == list(s.group_order) == list(P.columns)
    np.testing.assert_allclose(P.to_numpy(), P.to_numpy().T)
    np.testing.assert_allclose(np.diag(P.to_numpy()), 1.0)
    rho = pd.DataFrame(model.group_probs_, index=model.groups_)
    j, k = s.group_order[0], s.group_order[-1]
    assert P.loc[j, k] == pytest.approx(float(rho.loc[j] @ rho.loc[k]))
    # the hierarchical order keeps each cluster contiguous
    clusters = s.groups["cluster"].reindex(s.group_order).to_numpy()
    assert np.count_nonzero(np.diff(clusters)) == s.n_group_clusters - 1


def test_differential_abundance_finds_the_true_differences(fitted):
    """Where the true omegas of two clusters differ clearly, the interval excludes 0 with
    the right sign; where they are equal by construction (a cluster with itself) nothing is
    tested."""
    sim, model, s = fitted
    # map summary group clusters / cell clusters to the truth by majority
    g_truth = pd.Series(sim.group_truth, index=sim.group_names)
    g_map = {c: int(g_truth[s.groups.index[s.groups["cluster"] == c]].mode()[0])
             for c in range(s.n_group_clusters)}
    rank_c = np.full(model.cell_probs_.shape[1], -1)
    rank_c[s.cell_cluster_index] = np.arange(s.n_cell_clusters)
    summary_cells = rank_c[model.cell_labels_]
    c_map = {c: int(pd.Series(sim.cell_truth[summary_cells == c]).mode()[0])
             for c in range(s.n_cell_clusters)}
    da = s.differential_abundance
    n_pairs = s.n_group_clusters * (s.n_group_clusters - 1) // 2
    assert len(da) == n_pairs * s.n_cell_clusters
    checked = 0
    for row in da.itertuples():
        true_diff = (sim.cell_weights[c_map[row.cell_cluster], g_map[row.group_cluster_a]]
                     - sim.cell_weights[c_map[row.cell_cluster], g_map[row.group_cluster_b]])
        assert row.lower <= row.difference <= row.upper
        if abs(true_diff) > 0.1:
            checked += 1
            assert row.differs and np.sign(row.difference) == np.sign(true_diff)
            assert row.prob_greater == (1.0 if true_diff > 0 else 0.0) or \
                abs(row.prob_greater - (true_diff > 0)) < 0.05
    assert checked >= 3
    assert set(s.significant_differences().index) <= set(range(len(da)))


def test_atoms_and_text(fitted):
    sim, model, s = fitted
    assert s.cell_means.shape == (s.n_cell_clusters, sim.Y.shape[1])
    np.testing.assert_array_equal(s.cell_means.to_numpy(),
                                  model.cell_means_[s.cell_cluster_index])
    assert s.cell_covariances.shape == (s.n_cell_clusters, 3, 3)
    assert s.group_means.shape == (s.n_group_clusters, sim.X.shape[1])
    text = str(s)
    assert f"{s.n_group_clusters} group cluster(s)" in text and "Composition" in text
    table = s.table()
    assert len(table) == s.n_group_clusters and "cell_cluster_0" in table.columns


def test_bad_arguments():
    sim = na.simulate(n_groups=4, cells_per_group=20, random_state=0)
    model = na.NestedAtomsModel(n_init=1, max_iter=5, random_state=0).fit(sim.Y, sim.groups)
    with pytest.raises(ValueError, match="level"):
        model.summary(level=1.5)
    with pytest.raises(ValueError, match="n_samples"):
        model.summary(n_samples=1)
    s = model.summary(n_samples=200)
    assert s.group_means is None and s.group_covariances is None   # CAM: no x atoms


@pytest.mark.parametrize("J", [40, _MAX_OPTIMAL_LEAF_ORDERING + 50])
def test_coclustering_order_keeps_clusters_together(J):
    """Below and above the optimal-leaf-ordering cut-off, each cluster stays contiguous."""
    rng = np.random.default_rng(J)
    labels = rng.integers(5, size=J)
    rho = np.full((J, 5), 0.01)
    rho[np.arange(J), labels] = 0.96
    P = rho @ rho.T
    np.fill_diagonal(P, 1.0)
    order = _coclustering_order(P)
    assert sorted(order) == list(range(J))
    assert np.count_nonzero(np.diff(labels[order])) == np.unique(labels).size - 1
