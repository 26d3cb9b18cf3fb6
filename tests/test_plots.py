"""Plots: each draws what the summary says, and a missing matplotlib gets a clear message."""

import sys

import numpy as np
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
    assert len(paths) == 4
    for path in paths:
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_missing_matplotlib_names_the_extra(fitted, monkeypatch):
    sim, model, s = fitted
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r'pip install "nestedatoms\[plot\]"'):
        na.pl.composition(s)
