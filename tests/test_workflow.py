"""The biologist's workflow from AnnData (issue 22): names, warnings, return values, mapping."""

import warnings

import numpy as np
import pandas as pd
import pytest

import nestedatoms as na
from nestedatoms.tl import CategoricalGroupFeatureWarning
from nestedatoms._validation import HighDimensionWarning

anndata = pytest.importorskip("anndata")

KW = dict(n_group_clusters=4, n_cell_clusters=5, n_init=1, rank_genes=False, verbose=0)


@pytest.fixture(scope="module")
def sim():
    return na.simulate(n_groups=24, cells_per_group=40, n_group_clusters=2, n_cell_clusters=3,
                       n_group_features=2, n_cell_features=3, lam_x=0.01, lam_y=0.03,
                       random_state=4)


def _with_sex(sim):
    adata = sim.to_anndata()
    rng = np.random.default_rng(0)
    sex = pd.Series(rng.choice(["F", "M"], size=len(sim.group_names)), index=sim.group_names)
    adata.obs["sex"] = sex[adata.obs["donor_id"]].to_numpy()
    return adata


def test_group_covariates_is_a_deprecated_alias_of_group_features(sim):
    adata = sim.to_anndata()
    new = na.tl.fit(adata, group_features=["x0", "x1"], copy=True, **KW)
    with pytest.warns(FutureWarning, match="group_covariates is deprecated.*group_features"):
        old = na.tl.fit(adata, group_covariates=["x0", "x1"], copy=True, **KW)
    assert old.uns["nam"]["elbo"] == new.uns["nam"]["elbo"]
    assert old.uns["nam"]["group_features"] == ["x0", "x1"]
    with pytest.raises(TypeError, match="both group_features and its deprecated alias"):
        na.tl.fit(adata, group_features=["x0"], group_covariates=["x1"], **KW)


def test_one_hot_encoding_a_categorical_column_warns(sim):
    adata = _with_sex(sim)
    with pytest.warns(CategoricalGroupFeatureWarning, match=r"\['sex'\].*one-hot.*adjust"):
        out = na.tl.fit(adata, group_features=["x0", "sex"], copy=True, **KW)
    assert out.uns["nam"]["group_features"] == ["x0", "sex_F", "sex_M"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CategoricalGroupFeatureWarning)
        na.tl.fit(adata, group_features=["x0", "x1"], copy=True, **KW)   # numeric: silent


def test_return_model_returns_what_scanpy_would(sim):
    adata = sim.to_anndata()
    model = na.tl.fit(adata, return_model=True, **KW)
    assert isinstance(model, na.NestedAtomsModel)
    assert adata.uns["nam"]["elbo"] == model.elbo_
    pair = na.tl.fit(adata, key_added="again", copy=True, return_model=True, **KW)
    out, model2 = pair
    assert isinstance(out, anndata.AnnData) and out is not adata
    assert "again" in out.uns and "again" not in adata.uns
    assert model2.elbo_ == model.elbo_
    assert na.tl.fit(adata, key_added="third", **KW) is None


def test_high_dimensional_representation_warns_with_the_fix():
    rng = np.random.default_rng(0)
    kw = dict(n_group_clusters=1, n_cell_clusters=2, n_init=1, max_iter=2, random_state=0)
    with pytest.warns(HighDimensionWarning, match=r"51 features.*sc.pp.pca.*X_pca"):
        na.NestedAtomsModel(**kw).fit(rng.normal(size=(120, 51)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", HighDimensionWarning)
        na.NestedAtomsModel(**kw).fit(rng.normal(size=(120, 50)))     # scanpy's default PCA


def test_progress_is_on_by_default_in_tl_fit_but_delayed(sim, monkeypatch):
    from nestedatoms import _progress

    seen = []
    real = _progress.FitProgress.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        seen.append((self.enabled, self.delay))

    monkeypatch.setattr(_progress.FitProgress, "__init__", spy)
    kw = {k: v for k, v in KW.items() if k != "verbose"}
    na.tl.fit(sim.to_anndata(), max_iter=3, **kw)
    assert seen[-1] == (True, na.tl.PROGRESS_DELAY_SECONDS)
    na.tl.fit(sim.to_anndata(), max_iter=3, verbose=1, **kw)
    assert seen[-1] == (True, 0.0)                       # asked for: shown at once
    na.NestedAtomsModel(n_init=1, max_iter=3).fit(sim.Y, sim.groups)
    assert seen[-1] == (False, 0.0)                      # the estimator stays quiet


def test_verbose_lines_number_restarts_like_the_bar(capsys):
    from nestedatoms._progress import FitProgress

    with FitProgress(3, 10, enabled=False, print_sweeps=True) as progress:
        progress(0, 1, -5.0)
        progress(2, 1, -4.0)
    out = capsys.readouterr().out
    assert "restart 1/3 sweep 1" in out and "restart 3/3 sweep 1" in out
    assert "restart 0" not in out


# ---------------------------------------------------------------------------- tl.predict
@pytest.fixture(scope="module")
def split(sim):
    adata = sim.to_anndata()
    held_out = sim.group_names[-6:]
    is_new = adata.obs["donor_id"].isin(held_out).to_numpy()
    ref = adata[~is_new].copy()
    query = adata[is_new].copy()
    model = na.tl.fit(ref, group_features=["x0", "x1"], return_model=True, **KW)
    return sim, ref, query, model, is_new


def test_predict_maps_new_donors_and_cells_in_the_reference_numbering(split, tmp_path):
    sim, ref, query, model, is_new = split
    before = query.obs.copy()
    out = na.tl.predict(query, model, group_features=["x0", "x1"], copy=True)
    pd.testing.assert_frame_equal(query.obs, before)             # copy=True: untouched
    s = model.summary(n_samples=100)
    # the estimator's own predictions, renumbered like the reference AnnData
    X_new = sim.covariate_table()
    groups = query.obs["donor_id"].to_numpy()
    cells = model.predict(query.obsm["X_pca"], groups, X_new)
    rank = np.full(model.cell_probs_.shape[1], -1)
    rank[s.cell_cluster_index] = np.arange(s.n_cell_clusters)
    np.testing.assert_array_equal(out.obs["nam_cell_cluster"].astype(int), rank[cells])
    donors = model.predict_groups(query.obsm["X_pca"], groups, X_new)
    g_rank = np.full(model.group_probs_.shape[1], -1)
    g_rank[s.group_cluster_index] = np.arange(s.n_group_clusters)
    table = out.uns["nam"]["groups"]
    assert list(table.index) == [str(g) for g in donors.index]
    np.testing.assert_array_equal(table["cluster"], g_rank[donors.to_numpy()])
    assert not table["known"].any() and (table["n_cells"] == 40).all()
    # the new donors land in the clusters of the truth, as the reference's donors did
    truth = pd.Series(sim.group_truth, index=sim.group_names)
    ref_table = ref.uns["nam"]["groups"]
    ref_truth = truth[ref_table.index].to_numpy()
    mapping = pd.crosstab(ref_table["cluster"].to_numpy(), ref_truth).idxmax(axis=1)
    assert (mapping[table["cluster"]].to_numpy() == truth[table.index].to_numpy()).all()
    # categories of the reference: the same numbering, the same probabilities columns
    assert list(out.obs["nam_cell_cluster"].cat.categories) == [
        str(c) for c in range(s.n_cell_clusters)]
    assert out.obsm["nam_cell_probs"].shape == (query.n_obs, s.n_cell_clusters)
    # a saved model works the same, and the result is storable
    path = tmp_path / "model.npz"
    model.save(path)
    again = na.tl.predict(query, str(path), group_features=["x0", "x1"], copy=True)
    pd.testing.assert_series_equal(again.obs["nam_cell_cluster"], out.obs["nam_cell_cluster"])
    again.write_h5ad(tmp_path / "mapped.h5ad")


def test_predict_known_donors_keep_their_cluster(split):
    sim, ref, query, model, is_new = split
    na.tl.predict(ref, model, key_added="mapped")                    # training donors: known
    table = ref.uns["mapped"]["groups"]
    assert table["known"].all()
    np.testing.assert_array_equal(table["cluster"].to_numpy(),
                                  ref.uns["nam"]["groups"]["cluster"].to_numpy())
    # the cells of the training data land where the fit put them (one exact cell step)
    agree = (ref.obs["mapped_cell_cluster"].astype(int)
             == ref.obs["nam_cell_cluster"].astype(int)).mean()
    assert agree > 0.99


def test_predict_errors_name_the_fix(split):
    sim, ref, query, model, is_new = split
    with pytest.raises(ValueError, match="need theirs: pass group_features"):
        na.tl.predict(query.copy(), model)
    with pytest.raises(ValueError, match="model_file='model.npz'"):
        na.tl.predict(query.copy(), ref)                          # results but no model
    with pytest.raises(ValueError, match="no fit under uns"):
        na.tl.predict(query.copy(), ref, reference_key="other")
    with pytest.raises(KeyError, match="X_umap"):
        na.tl.predict(query.copy(), model, use_rep="X_umap", group_features=["x0", "x1"])
    cam = na.tl.fit(ref.copy(), return_model=True, **KW)          # no group features
    with pytest.raises(ValueError, match="group_features=None"):
        na.tl.predict(query.copy(), cam, group_features=["x0", "x1"])
    na.tl.predict(query, cam, key_added="cam")                    # placed by their cells
    assert query.uns["cam"]["groups"]["cluster"].notna().all()


def test_predict_from_a_reference_anndata_that_records_its_model_file(split, tmp_path):
    """tl.fit(..., model_file=) saves the model and records it, so the reference AnnData
    itself can be passed to tl.predict (as to sc.tl.ingest), through an h5ad round trip."""
    import anndata

    sim, ref, query, model, is_new = split
    path = tmp_path / "ref_model.npz"
    ref2 = na.tl.fit(ref.copy(), group_features=["x0", "x1"], model_file=path, copy=True, **KW)
    assert ref2.uns["nam"]["model_file"] == str(path.resolve())
    ref2.write_h5ad(tmp_path / "ref.h5ad")
    reread = anndata.read_h5ad(tmp_path / "ref.h5ad")
    by_ref = na.tl.predict(query, reread, group_features=["x0", "x1"], copy=True)
    by_model = na.tl.predict(query, model, group_features=["x0", "x1"], copy=True)
    pd.testing.assert_series_equal(by_ref.obs["nam_cell_cluster"],
                                   by_model.obs["nam_cell_cluster"])
    pd.testing.assert_frame_equal(by_ref.uns["nam"]["groups"], by_model.uns["nam"]["groups"])
    path.unlink()                                      # the recorded file is gone: say so
    with pytest.raises(FileNotFoundError, match="model_file"):
        na.tl.predict(query.copy(), reread, group_features=["x0", "x1"])
