"""Plots: each draws what the summary says, and a missing matplotlib gets a clear message."""

import sys

import numpy as np
import pandas as pd
import pytest

import nestedatoms as na

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@pytest.fixture(scope="module")
def fitted():
    sim = na.simulate(n_groups=30, cells_per_group=30, n_group_clusters=2, n_cell_clusters=3,
                      n_group_features=2, n_cell_features=3, lam_x=0.01, lam_y=0.03,
                      random_state=5)
    model = na.NestedAtomsModel(n_group_clusters=4, n_cell_clusters=5, n_init=2, max_iter=40,
                                random_state=0).fit(sim.Y, sim.groups, sim.X)
    return sim, model, model.summary(n_samples=500)


def test_elbo_traces_draws_every_restart(fitted):
    sim, model, s = fitted
    ax = na.pl.elbo_traces(model)
    lines = ax.get_lines()
    assert len(lines) == len(model.elbo_traces_) == 2
    for line, trace in zip(lines, model.elbo_traces_):
        assert len(line.get_xdata()) == len(trace)
    best = max(t[-1] for t in model.elbo_traces_)
    kept = lines[model.best_restart_].get_ydata()
    assert kept[0] == pytest.approx(best - model.elbo_traces_[model.best_restart_][0])
    plt.close("all")


def test_heatmaps_show_the_summary(fitted):
    sim, model, s = fitted
    ax = na.pl.composition(s)
    np.testing.assert_allclose(ax.images[0].get_array(), s.composition.to_numpy())
    fig, axes = plt.subplots(1, 2)
    ax = na.pl.coclustering(model, ax=axes[0])
    assert ax is axes[0]
    shown = np.asarray(ax.images[0].get_array())
    assert shown.shape == (30, 30)
    # ordered by cluster: the matrix is block diagonal with one block per cluster
    clusters = s.groups["cluster"].sort_values(kind="stable").to_numpy()
    same = clusters[:, None] == clusters[None, :]
    assert np.all(shown[same] > 0.99) and np.all(shown[~same] < 0.01)
    plt.close("all")


def test_cells_scatter_colours_every_cluster(fitted):
    sim, model, s = fitted
    ax = na.pl.cells(model, summary=s)
    counts = [len(c.get_offsets()) for c in ax.collections]
    assert counts == s.cell_clusters["n_cells"].tolist()
    ax = na.pl.cells(model, coords=sim.Y[:, :2], max_points=100, summary=s)
    assert sum(len(c.get_offsets()) for c in ax.collections) == 100
    with pytest.raises(ValueError, match="coords"):
        na.pl.cells(model, coords=sim.Y[:10, :2], summary=s)
    plt.close("all")


def test_save_all_writes_pngs(fitted, tmp_path):
    sim, model, s = fitted
    paths = na.pl.save_all(model, tmp_path, summary=s)
    assert [p.rsplit("_", 1)[1] for p in map(str, paths)] == [
        "elbo.png", "composition.png", "donors.png", "coclustering.png", "cells.png"]
    for path in paths:
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_missing_matplotlib_names_the_extra(fitted, monkeypatch):
    sim, model, s = fitted
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r'pip install "nestedatoms\[plot\]"'):
        na.pl.composition(s)


# ------------------------------------------------------------------ the AnnData of tl.fit
@pytest.fixture(scope="module")
def fitted_adata(fitted, tmp_path_factory):
    anndata = pytest.importorskip("anndata")
    sim, model, s = fitted
    adata = sim.to_anndata()
    adata.obs["status"] = np.where(adata.obs["x0"] > adata.obs["x0"].median(), "case", "ctrl")
    fit_model = na.tl.fit(adata, group_features=["x0", "x1"], n_group_clusters=4,
                          n_cell_clusters=5, n_init=2, max_iter=40, rank_genes=False,
                          return_model=True, verbose=0)
    na.tl.differential_abundance(adata, condition_key="status", n_samples=300)
    path = tmp_path_factory.mktemp("h5ad") / "fitted.h5ad"
    adata.write_h5ad(path)
    return anndata.read_h5ad(path), fit_model     # what a user reads back from disk


def test_every_plot_accepts_the_anndata_of_tl_fit(fitted_adata, tmp_path):
    adata, model = fitted_adata
    s = model.summary(n_samples=200)
    ax = na.pl.composition(adata)
    np.testing.assert_allclose(ax.images[0].get_array(), s.composition.to_numpy())
    ax = na.pl.elbo_traces(adata)
    assert [len(line.get_xdata()) for line in ax.get_lines()] == [
        len(t) for t in model.elbo_traces_]
    assert "(kept)" in ax.get_legend().get_texts()[model.best_restart_].get_text()
    ax = na.pl.coclustering(adata)
    assert np.asarray(ax.images[0].get_array()).shape == (30, 30)
    ax = na.pl.cells(adata)
    assert [len(c.get_offsets()) for c in ax.collections] == s.cell_clusters[
        "n_cells"].tolist()
    assert ax.get_xlabel() == "PC1 of y"
    ax = na.pl.differential_abundance(adata)
    assert len(ax.get_yticks()) == s.n_cell_clusters
    paths = na.pl.save_all(adata, tmp_path)
    assert len(paths) == 6 and paths[-1].endswith("abundance.png")
    for path in paths:
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    plt.close("all")


def test_cells_use_umap_when_the_anndata_has_it(fitted_adata):
    adata, model = fitted_adata
    adata = adata.copy()
    adata.obsm["X_umap"] = np.column_stack([np.arange(adata.n_obs), -np.arange(adata.n_obs)])
    ax = na.pl.cells(adata)
    assert ax.get_xlabel() == "UMAP1"
    shown = np.vstack([c.get_offsets() for c in ax.collections])
    assert set(shown[:, 0]) == set(range(adata.n_obs))
    ax = na.pl.cells(adata, basis="X_pca")
    assert ax.get_xlabel() == "PCA1"
    with pytest.raises(KeyError, match="sc.tl.umap"):
        na.pl.cells(adata, basis="X_tsne")
    plt.close("all")


def test_donor_composition_stacks_each_donors_shares(fitted_adata, fitted):
    adata, model = fitted_adata
    ax = na.pl.donor_composition(adata)
    n_clusters = len(adata.obs["nam_cell_cluster"].cat.categories)
    bars = ax.containers
    assert len(bars) == n_clusters
    heights = np.array([[rect.get_height() for rect in c] for c in bars]).T   # donors x C
    np.testing.assert_allclose(heights.sum(axis=1), 1.0, atol=1e-9)
    # each donor's bar is the mean q(M) of its cells
    names = [t.get_text() for t in ax.get_xticklabels()]
    probs = pd.DataFrame(adata.obsm["nam_cell_probs"]).groupby(
        adata.obs["donor_id"].astype(str).to_numpy()).mean()
    np.testing.assert_allclose(heights, probs.loc[names].to_numpy(), atol=1e-12)
    # donors are grouped by donor cluster: one run of bars per cluster
    cluster_of = adata.uns["nam"]["groups"]["cluster"]
    runs = np.asarray(cluster_of.loc[names])
    assert np.all(np.diff(runs) >= 0)
    # the model gives the same picture
    ax2 = na.pl.donor_composition(model)
    heights2 = np.array([[rect.get_height() for rect in c] for c in ax2.containers]).T
    np.testing.assert_allclose(np.sort(heights2, axis=0), np.sort(heights, axis=0), atol=1e-9)
    plt.close("all")


def test_plot_errors_name_the_fix(fitted_adata, fitted):
    adata, model = fitted_adata
    sim, model, s = fitted
    with pytest.raises(KeyError, match="run nestedatoms.tl.fit"):
        na.pl.composition(adata, key="other")
    with pytest.raises(TypeError, match="not a Summary"):
        na.pl.elbo_traces(s)
    with pytest.raises(TypeError, match="AnnData written by nestedatoms.tl.fit"):
        na.pl.composition(np.zeros(3))
