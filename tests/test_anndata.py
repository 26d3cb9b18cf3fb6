"""``nestedatoms.tl.fit`` on real AnnData objects, written to .h5ad and read back."""

import numpy as np
import pandas as pd
import pytest

import nestedatoms as na
from nestedatoms._metrics import adjusted_rand_index

anndata = pytest.importorskip("anndata")

MODEL_KW = dict(n_group_clusters=4, n_cell_clusters=5, n_init=1)


@pytest.fixture(scope="module")
def sim():
    return na.simulate(n_groups=30, cells_per_group=np.tile([20, 40], 15), n_group_clusters=2,
                       n_cell_clusters=3, n_group_features=2, n_cell_features=3, lam_x=0.01,
                       lam_y=0.03, random_state=4)


def _snapshot(adata):
    return (adata.obs.copy(), {k: v.copy() for k, v in adata.obsm.items()},
            set(adata.uns.keys()))


def test_results_written_and_recovered(sim, tmp_path):
    adata = sim.to_anndata()
    before_obs, before_obsm, before_uns = _snapshot(adata)
    out = na.tl.fit(adata, group_key="donor_id", use_rep="X_pca",
                    group_features=["x0", "x1"], copy=True, rank_genes=False,
                    **MODEL_KW)
    # copy=True leaves the caller's AnnData exactly as it was
    pd.testing.assert_frame_equal(adata.obs, before_obs)
    assert set(adata.obsm.keys()) == set(before_obsm) and set(adata.uns.keys()) == before_uns
    np.testing.assert_array_equal(adata.obsm["X_pca"], before_obsm["X_pca"])

    cell = out.obs["nam_cell_cluster"]
    group = out.obs["nam_group_cluster"]
    assert isinstance(cell.dtype, pd.CategoricalDtype)
    assert isinstance(group.dtype, pd.CategoricalDtype)
    # the labels are the estimator's, renumbered by size (summary numbering)
    model = na.NestedAtomsModel(random_state=0, **MODEL_KW).fit(sim.Y, sim.groups, sim.X)
    s = model.summary()
    np.testing.assert_array_equal(s.cell_cluster_index[cell.astype(int).to_numpy()],
                                  model.cell_labels_)
    codes = np.searchsorted(sim.group_names, sim.groups)
    np.testing.assert_array_equal(s.group_cluster_index[group.astype(int).to_numpy()],
                                  model.group_labels_[codes])
    assert out.uns["nam"]["elbo"] == model.elbo_
    # and they recover the simulated clusters about as well as the Bayes classifier
    bayes_groups, bayes_cells = sim.bayes_labels()
    assert adjusted_rand_index(bayes_cells, cell.to_numpy()) > 0.95
    assert adjusted_rand_index(bayes_groups[codes], group.to_numpy()) > 0.85
    probs = out.obsm["nam_cell_probs"]
    # only the occupied clusters, column c = cell cluster c, with the map to the model
    assert probs.shape == (adata.n_obs, s.n_cell_clusters)
    np.testing.assert_array_equal(probs, model.cell_probs_[:, s.cell_cluster_index])
    np.testing.assert_array_equal(out.uns["nam"]["cell_cluster_index"], s.cell_cluster_index)
    np.testing.assert_array_equal(np.argmax(probs, axis=1), cell.astype(int).to_numpy())
    uns = out.uns["nam"]
    assert list(uns["groups"].index) == list(sim.group_names)
    assert uns["elbo_trace"][-1] == pytest.approx(uns["elbo"])
    assert np.all(np.diff(uns["elbo_trace"]) >= -1e-9 * np.abs(uns["elbo_trace"][1:]))
    assert uns["group_features"] == ["x0", "x1"]
    assert uns["best_restart"] == model.best_restart_
    assert uns["group_prior_scale"] == model.group_prior_scale_
    assert 0 < uns["group_prior_scale"] < 1       # learned by default: tighter than the prior
    # the group table agrees with the per-cell column
    per_cell = uns["groups"]["cluster"].reindex(sim.groups).astype(str).to_numpy()
    np.testing.assert_array_equal(per_cell, group.astype(str).to_numpy())

    # a real file round trip
    path = tmp_path / "fitted.h5ad"
    out.write_h5ad(path)
    back = anndata.read_h5ad(path)
    pd.testing.assert_series_equal(back.obs["nam_cell_cluster"], cell)
    np.testing.assert_array_equal(back.obsm["nam_cell_probs"], probs)
    pd.testing.assert_frame_equal(back.uns["nam"]["composition"], uns["composition"],
                                  check_dtype=False, check_index_type=False)
    pd.testing.assert_frame_equal(back.uns["nam"]["groups"], uns["groups"], check_dtype=False)
    np.testing.assert_array_equal(back.uns["nam"]["elbo_trace"], uns["elbo_trace"])
    assert back.uns["nam"]["params"]["n_cell_clusters"] == MODEL_KW["n_cell_clusters"]
    assert back.uns["nam"]["group_prior_scale"] == uns["group_prior_scale"]


def test_in_place_returns_none_and_matches_the_estimator(sim):
    adata = sim.to_anndata(group_key="ind")
    cov = sim.covariate_table()
    extra = pd.DataFrame([[0.0, 0.0]], index=["nobody"], columns=cov.columns)
    result = na.tl.fit(adata, group_key="ind", group_features=pd.concat([cov, extra]),
                       key_added="run1", rank_genes=False, **MODEL_KW)
    assert result is None
    assert "run1_cell_cluster" in adata.obs and "run1" in adata.uns
    model = na.NestedAtomsModel(random_state=0, **MODEL_KW).fit(sim.Y, sim.groups, sim.X)
    assert adata.uns["run1"]["elbo"] == model.elbo_


def test_bad_input_names_the_problem(sim):
    adata = sim.to_anndata()
    with pytest.raises(KeyError, match="group_key 'donor'"):
        na.tl.fit(adata, group_key="donor")
    with pytest.raises(KeyError, match="X_umap"):
        na.tl.fit(adata, use_rep="X_umap")
    adata.obs["varies"] = np.arange(adata.n_obs, dtype=float)
    with pytest.raises(ValueError, match="vary within a group"):
        na.tl.fit(adata, group_features="varies", **MODEL_KW)
    with pytest.raises(ValueError, match="no row for group"):
        na.tl.fit(adata, group_features=sim.covariate_table().iloc[:3], **MODEL_KW)


def test_backed_anndata_reads_only_the_representation(sim, tmp_path):
    adata = sim.to_anndata()
    rng = np.random.default_rng(0)
    adata = anndata.AnnData(X=rng.poisson(1.0, size=(adata.n_obs, 50)).astype(np.float32),
                            obs=adata.obs, obsm=dict(adata.obsm))
    path = tmp_path / "cohort.h5ad"
    adata.write_h5ad(path)
    backed = anndata.read_h5ad(path, backed="r")
    na.tl.fit(backed, group_features=["x0", "x1"], **MODEL_KW)
    assert backed.isbacked and "nam_cell_cluster" in backed.obs
    assert "nam_markers" not in backed.uns      # ranking genes would have loaded X
    with pytest.raises(ValueError, match="backed"):
        na.tl.fit(backed, copy=True)
    backed.file.close()


def test_marker_genes_with_scanpy(sim):
    pytest.importorskip("scanpy")
    # expression: gene g is high in true cell cluster g, low elsewhere
    rng = np.random.default_rng(1)
    n_types = sim.cell_truth.max() + 1
    X = rng.poisson(1.0, size=(sim.Y.shape[0], 10)).astype(np.float32)
    X[np.arange(X.shape[0]), sim.cell_truth] += 20.0
    X = np.log1p(X)
    base = sim.to_anndata()
    adata = anndata.AnnData(X=X, obs=base.obs, obsm=dict(base.obsm))
    adata.var_names = [f"gene{g}" for g in range(10)]
    na.tl.fit(adata, group_features=["x0", "x1"], **MODEL_KW)
    markers = adata.uns["nam_markers"]
    cluster_of = pd.crosstab(adata.obs["nam_cell_cluster"], sim.cell_truth).idxmax(axis=1)
    for cluster, true_type in cluster_of.items():
        top = markers["names"][cluster][0]
        assert top == f"gene{true_type}"
    assert len(cluster_of) == n_types
