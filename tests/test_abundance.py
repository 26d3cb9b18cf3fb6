"""Differential abundance between the user's own conditions (issue 22, item 4)."""

import numpy as np
import pandas as pd
import pytest

import nestedatoms as na
from nestedatoms._abundance import condition_differences

CONTROL = np.array([0.4, 0.3, 0.2, 0.1])
CASE = np.array([0.6, 0.1, 0.2, 0.1])        # type 0 up by 0.2, type 1 down, 2 and 3 as they are


def _planted_cohort(n_per_condition=10, cells=150, seed=0):
    """Cells of four well-separated types; case donors hold more of type 0 and less of type 1.

    Counts per donor are exact (no multinomial noise), so types 2 and 3 have the same share in
    every donor: a difference found there would be a false positive.
    """
    rng = np.random.default_rng(seed)
    means = 8.0 * np.eye(4)[:, :3] + np.array([0.0, 0.0, 0.0])
    means[3] = [-8.0, -8.0, 0.0]
    Y, groups, truth, condition = [], [], [], {}
    for j in range(2 * n_per_condition):
        name = f"d{j:02d}"
        cond = "case" if j % 2 else "control"
        condition[name] = cond
        counts = np.round(cells * (CASE if cond == "case" else CONTROL)).astype(int)
        for t, n in enumerate(counts):
            Y.append(means[t] + rng.normal(size=(n, 3)))
            groups += [name] * n
            truth += [t] * n
    return np.vstack(Y), np.array(groups), np.array(truth), pd.Series(condition)


@pytest.fixture(scope="module")
def planted():
    Y, groups, truth, condition = _planted_cohort()
    model = na.NestedAtomsModel(n_group_clusters=5, n_cell_clusters=6, n_init=1,
                                random_state=0).fit(Y, groups)
    return Y, groups, truth, condition, model


def _type_of_cluster(model, truth):
    s = model.summary(n_samples=200)
    rank = np.full(model.cell_probs_.shape[1], -1)
    rank[s.cell_cluster_index] = np.arange(s.n_cell_clusters)
    found = rank[model.cell_labels_]
    table = pd.crosstab(found, truth)
    assert (table.to_numpy() > 0).sum(axis=1).max() == 1   # each cluster is one true type
    return table.idxmax(axis=1).to_dict()


def test_planted_shift_is_found_and_nothing_else(planted):
    Y, groups, truth, condition, model = planted
    type_of = _type_of_cluster(model, truth)
    da = model.differential_abundance(condition, reference="control")
    assert set(da["condition_a"]) == {"case"} and set(da["condition_b"]) == {"control"}
    assert (da["n_a"] == 10).all() and (da["n_b"] == 10).all()
    for _, row in da.iterrows():
        t = type_of[row["cell_cluster"]]
        planted_shift = CASE[t] - CONTROL[t]
        assert row["lower"] <= row["difference"] <= row["upper"]
        if planted_shift != 0:
            assert row["differs"], row
            assert np.sign(row["difference"]) == np.sign(planted_shift)
            assert row["difference"] == pytest.approx(planted_shift, abs=0.05)
            assert row["prob_greater"] == (1.0 if planted_shift > 0 else 0.0)
        else:
            assert not row["differs"], row
            assert abs(row["difference"]) < 0.03
        # the descriptive shares are the data's
        assert row["observed_a"] == pytest.approx(CASE[t], abs=0.02)
        assert row["observed_b"] == pytest.approx(CONTROL[t], abs=0.02)
    # without a reference: the pair in sorted order, case - control, the same numbers
    pairwise = model.differential_abundance(condition.to_dict())
    np.testing.assert_allclose(pairwise["difference"], da["difference"])


def test_uncertainty_of_the_individual_clusters_is_propagated():
    # Two individual clusters with nearly fixed compositions (huge Beta parameters).
    big = 1e7
    v = np.array([[0.5, 0.2], [0.5, 0.5]])                # (L - 1, K) stick proportions
    u_a, u_b = big * v, big * (1 - v)
    omega0 = np.array([0.5, 0.25, 0.25])
    omega1 = np.array([0.2, 0.4, 0.4])
    cond = pd.Series(["a", "a", "b", "b"])
    sure = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    t = condition_differences(sure, u_a, u_b, cond, np.arange(3), n_samples=2000)
    np.testing.assert_allclose(t["difference"], omega0 - omega1, atol=1e-3)
    assert (t["upper"] - t["lower"]).max() < 1e-2 and t["differs"].all()
    # Every individual 50/50 between the clusters: no difference in expectation, and the
    # interval must carry the draws of S_j (a t-test on the point means would see none).
    unsure = np.full((4, 2), 0.5)
    t = condition_differences(unsure, u_a, u_b, cond, np.arange(3), n_samples=4000)
    np.testing.assert_allclose(t["difference"], 0.0, atol=0.02)
    assert not t["differs"].any()
    width = (t["upper"] - t["lower"]).to_numpy()
    assert np.all(width > 0.5 * np.abs(omega0 - omega1))


def test_bad_conditions_name_the_fix(planted):
    Y, groups, truth, condition, model = planted
    with pytest.raises(ValueError, match="at least two conditions"):
        model.differential_abundance(pd.Series("case", index=condition.index))
    with pytest.raises(ValueError, match="one entry per fitted group"):
        model.differential_abundance(["case", "control"])
    with pytest.raises(ValueError, match="no entry for any fitted group"):
        model.differential_abundance({"nobody": "case"})
    with pytest.raises(ValueError, match="reference 'healthy'"):
        model.differential_abundance(condition, reference="healthy")


def _as_anndata(anndata, Y, groups, condition):
    """The planted cohort as cells with a donor and a condition column."""
    obs = pd.DataFrame({"donor_id": groups, "status": condition[groups].to_numpy()},
                       index=[f"c{i}" for i in range(len(groups))])
    return anndata.AnnData(obs=obs, obsm={"X_pca": Y})


def test_anndata_table_matches_the_estimator_and_survives_h5ad(planted, tmp_path):
    anndata = pytest.importorskip("anndata")
    Y, groups, truth, condition, model = planted
    adata = _as_anndata(anndata, Y, groups, condition)
    fitted = na.tl.fit(adata, group_key="donor_id", rank_genes=False, n_group_clusters=5,
                       n_cell_clusters=6, n_init=1, return_model=True, verbose=0)
    assert fitted.elbo_ == model.elbo_
    path = tmp_path / "fitted.h5ad"
    adata.write_h5ad(path)
    back = anndata.read_h5ad(path)
    table = na.tl.differential_abundance(back, condition_key="status", reference="control")
    expected = model.differential_abundance(condition, reference="control")
    pd.testing.assert_frame_equal(table, expected, check_dtype=False)
    stored = back.uns["nam_abundance"]
    assert stored["condition_key"] == "status" and stored["table"] is table
    back.write_h5ad(tmp_path / "again.h5ad")            # the result is storable
    # a condition that varies within a donor is refused, naming the donors
    back.obs["mixed"] = np.where(np.arange(back.n_obs) % 2, "x", "y")
    with pytest.raises(ValueError, match="varies within group"):
        na.tl.differential_abundance(back, condition_key="mixed")
    with pytest.raises(KeyError, match="run nestedatoms.tl.fit"):
        na.tl.differential_abundance(back, condition_key="status", key="other")


def test_only_the_result_key_is_written(planted):
    anndata = pytest.importorskip("anndata")
    Y, groups, truth, condition, model = planted
    adata = _as_anndata(anndata, Y, groups, condition)
    na.tl.fit(adata, rank_genes=False, n_group_clusters=5, n_cell_clusters=6, n_init=1,
              verbose=0)
    obs, obsm = adata.obs.copy(), {k: v.copy() for k, v in adata.obsm.items()}
    uns_keys, posterior = set(adata.uns), {k: v.copy() for k, v in
                                           adata.uns["nam"]["posterior"].items()}
    na.tl.differential_abundance(adata, condition_key="status", key_added="da")
    pd.testing.assert_frame_equal(adata.obs, obs)
    for k, v in obsm.items():
        np.testing.assert_array_equal(adata.obsm[k], v)
    assert set(adata.uns) == uns_keys | {"da"}
    for k, v in posterior.items():
        np.testing.assert_array_equal(adata.uns["nam"]["posterior"][k], v)
