"""The command line, run in-process through ``nestedatoms.cli.main`` on tiny problems."""

import sys

import pandas as pd
import pytest

import nestedatoms as na
from nestedatoms._metrics import adjusted_rand_index
from nestedatoms.cli import main

anndata = pytest.importorskip("anndata")

SMALL_MODEL = ["--n-group-clusters", "4", "--n-cell-clusters", "5", "--n-init", "1", "--quiet"]
SMALL_COHORT = ["--n-groups", "24", "--median-cells", "25", "--true-group-clusters", "2",
                "--true-cell-clusters", "3", "--n-group-features", "2", "--n-cell-features",
                "3", "--lam-x", "0.01", "--lam-y", "0.03"]


def test_simulate_then_fit(tmp_path, capsys):
    sim_path, out_path = tmp_path / "sim.h5ad", tmp_path / "out.h5ad"
    cov_path = tmp_path / "x.csv"
    assert main(["simulate", str(sim_path), *SMALL_COHORT, "--seed", "1",
                 "--group-features-out", str(cov_path)]) == 0
    sim = anndata.read_h5ad(sim_path)
    assert {"donor_id", "x0", "x1", "true_cell_cluster", "true_group_cluster"} <= set(
        sim.obs.columns)
    assert sim.obsm["X_pca"].shape == (sim.n_obs, 3) and "truth" in sim.uns
    table = pd.read_csv(cov_path, index_col=0)
    assert table.shape == (24, 2)

    summary_path, model_path = tmp_path / "summary.tsv", tmp_path / "model.npz"
    assert main(["fit", str(sim_path), str(out_path), "--group-key", "donor_id",
                 "--group-features", str(cov_path), "--summary", str(summary_path),
                 "--model", str(model_path), *SMALL_MODEL]) == 0
    printed = capsys.readouterr().out
    assert "group cluster(s)" in printed and "Results written" in printed
    out = anndata.read_h5ad(out_path)
    # the truth columns came through untouched and the clusters match them
    pd.testing.assert_series_equal(out.obs["true_cell_cluster"], sim.obs["true_cell_cluster"])
    ari = adjusted_rand_index
    assert ari(out.obs["true_group_cluster"], out.obs["nam_group_cluster"]) > 0.85
    assert ari(out.obs["true_cell_cluster"], out.obs["nam_cell_cluster"]) > 0.95
    model = na.NestedAtomsModel.load(model_path)
    assert model.elbo_ == out.uns["nam"]["elbo"]
    assert ari(model.cell_labels_, out.obs["nam_cell_cluster"]) == 1.0
    summary = pd.read_csv(summary_path, sep="\t", index_col=0)
    expected = model.summary().table()
    assert summary["n_groups"].tolist() == expected["n_groups"].tolist()
    assert summary["n_groups"].sum() == 24 and "cell_cluster_0" in summary.columns
    # ... and each donor's cluster next to it
    donors = pd.read_csv(tmp_path / "summary_groups.tsv", sep="\t", index_col=0)
    assert len(donors) == 24
    assert donors["cluster"].value_counts().sort_index().tolist() == summary["n_groups"].tolist()
    pd.testing.assert_series_equal(donors["cluster"].rename(None),
                                   model.summary().groups["cluster"].rename(None),
                                   check_index_type=False, check_index=False)

    # group features from obs columns give the same fit as from the file (to rounding: the
    # CSV's decimal round trip moves some values by an ulp, so the ELBO agreed bit for bit
    # only by chance; the traces already differed in the last bit along the way)
    out2 = tmp_path / "out2.h5ad"
    assert main(["fit", str(sim_path), str(out2), "--group-key", "donor_id",
                 "--group-feature-columns", "x0", "x1", *SMALL_MODEL]) == 0
    refit = anndata.read_h5ad(out2)
    assert refit.uns["nam"]["elbo"] == pytest.approx(out.uns["nam"]["elbo"], rel=1e-12)
    assert ari(refit.obs["nam_group_cluster"], out.obs["nam_group_cluster"]) == 1.0
    assert ari(refit.obs["nam_cell_cluster"], out.obs["nam_cell_cluster"]) == 1.0
    capsys.readouterr()
    # the old option names still work, with a deprecation warning naming the new ones
    out3 = tmp_path / "out3.h5ad"
    assert main(["fit", str(sim_path), str(out3), "--group-key", "donor_id",
                 "--covariates", str(cov_path), *SMALL_MODEL]) == 0
    assert "--covariates is deprecated" in capsys.readouterr().err
    assert anndata.read_h5ad(out3).uns["nam"]["elbo"] == out.uns["nam"]["elbo"]


def test_fit_errors_are_reported_not_raised(tmp_path, capsys):
    sim_path = tmp_path / "sim.h5ad"
    assert main(["simulate", str(sim_path), *SMALL_COHORT]) == 0
    code = main(["fit", str(sim_path), str(tmp_path / "o.h5ad"), "--group-key", "donor",
                 *SMALL_MODEL])
    assert code == 2
    assert "donor" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "missing.h5ad"), str(tmp_path / "o.h5ad"),
                 "--group-key", "donor_id"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_demo_reports_recovery_and_writes_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["demo", "--outdir", str(tmp_path), "--n-groups", "30", "--median-cells", "30",
                 *SMALL_MODEL]) == 0
    out = capsys.readouterr().out
    assert "ARI vs truth" in out and "Bayes classifier" in out and "Composition" in out
    for name in ("elbo", "composition", "coclustering", "cells"):
        png = tmp_path / f"nestedatoms_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_without_matplotlib_skips_the_plots(tmp_path, capsys, monkeypatch):
    """`pip install . && nestedatoms demo` has no matplotlib: the demo still runs."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["demo", "--outdir", str(tmp_path), "--n-groups", "12", "--median-cells", "20",
                 *SMALL_MODEL]) == 0
    out = capsys.readouterr().out
    assert "ARI vs truth" in out and "Plots skipped" in out and "nestedatoms[plot]" in out
    assert not list(tmp_path.iterdir())


def test_fit_learns_the_group_prior_width_unless_told_not_to(tmp_path):
    """The width is learned by default for the default prior and reaches the saved model;
    --no-learn-group-prior-scale holds the prior as set, and so does --prior reference unless
    --learn-group-prior-scale asks."""
    sim_path = tmp_path / "sim.h5ad"
    cov_path = tmp_path / "x.csv"
    assert main(["simulate", str(sim_path), *SMALL_COHORT, "--seed", "2",
                 "--group-features-out", str(cov_path)]) == 0
    scales = {}
    cases = (([], "auto", True), (["--no-learn-group-prior-scale"], False, False),
             (["--prior", "reference"], "auto", False),
             (["--prior", "reference", "--learn-group-prior-scale"], True, True))
    for flag, param, learned in cases:
        out_path, model_path = tmp_path / "out.h5ad", tmp_path / "model.npz"
        assert main(["fit", str(sim_path), str(out_path), "--group-key", "donor_id",
                     "--group-features", str(cov_path), "--model", str(model_path),
                     *SMALL_MODEL, "--force", *flag]) == 0      # the outputs exist after 1
        model = na.NestedAtomsModel.load(model_path)
        assert model.learn_group_prior_scale == param
        assert model.problem_.learn_group_prior_scale is learned
        scales.setdefault(learned, []).append(model.group_prior_scale_)
    assert scales[False] == [1.0, 1.0] and all(0.0 < f <= 1.0 for f in scales[True])


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"nestedatoms {na.__version__}"


def test_fit_with_conditions_umap_plots_then_predict(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import numpy as np

    sim_path = tmp_path / "sim.h5ad"
    assert main(["simulate", str(sim_path), *SMALL_COHORT, "--seed", "3"]) == 0
    adata = anndata.read_h5ad(sim_path)
    adata.obs["status"] = np.where(adata.obs["true_group_cluster"].astype(int) == 0,
                                   "case", "control")
    adata.obsm["X_umap"] = adata.obsm["X_pca"][:, [1, 2]] * 10.0
    donors = adata.obs["donor_id"].unique()
    new = adata.obs["donor_id"].isin(donors[-4:]).to_numpy()
    adata[~new].copy().write_h5ad(tmp_path / "ref.h5ad")
    adata[new].copy().write_h5ad(tmp_path / "new.h5ad")

    out_path, plots = tmp_path / "out.h5ad", tmp_path / "plots"
    model_path = tmp_path / "model.npz"
    assert main(["fit", str(tmp_path / "ref.h5ad"), str(out_path), "--group-key", "donor_id",
                 "--group-feature-columns", "x0", "x1", "--condition-key", "status",
                 "--reference", "control", "--model", str(model_path), "--plots", str(plots),
                 *SMALL_MODEL]) == 0
    printed = capsys.readouterr().out
    assert "Differential abundance between the conditions of 'status'" in printed
    out = anndata.read_h5ad(out_path)
    table = out.uns["nam_abundance"]["table"]
    assert set(table["condition_a"]) == {"case"} and set(table["condition_b"]) == {"control"}
    names = sorted(p.name for p in plots.iterdir())
    assert names == sorted(f"nestedatoms_{n}.png" for n in (
        "elbo", "composition", "donors", "coclustering", "cells", "abundance"))

    mapped_path = tmp_path / "mapped.h5ad"
    assert main(["predict", str(tmp_path / "new.h5ad"), str(model_path), str(mapped_path),
                 "--group-key", "donor_id", "--group-feature-columns", "x0", "x1",
                 "--plots", str(tmp_path / "mapped_plots")]) == 0
    printed = capsys.readouterr().out
    assert "4 not seen in training" in printed
    mapped = anndata.read_h5ad(mapped_path)
    assert not mapped.uns["nam"]["groups"]["known"].any()
    ari = adjusted_rand_index
    assert ari(mapped.obs["true_group_cluster"], mapped.obs["nam_group_cluster"]) > 0.8 or (
        mapped.obs["true_group_cluster"].nunique() == 1)
    assert ari(mapped.obs["true_cell_cluster"], mapped.obs["nam_cell_cluster"]) > 0.9
    assert sorted(p.name for p in (tmp_path / "mapped_plots").iterdir()) == [
        "nestedatoms_cells.png", "nestedatoms_donors.png"]
    # the fit's output records its model file, so it serves as the reference itself
    assert out.uns["nam"]["model_file"] == str(model_path.resolve())
    by_ref = tmp_path / "mapped_by_ref.h5ad"
    assert main(["predict", str(tmp_path / "new.h5ad"), str(out_path), str(by_ref),
                 "--group-key", "donor_id", "--group-feature-columns", "x0", "x1"]) == 0
    capsys.readouterr()
    assert (anndata.read_h5ad(by_ref).obs["nam_cell_cluster"]
            == mapped.obs["nam_cell_cluster"]).all()
    # a new donor without its features: the error names the fix
    assert main(["predict", str(tmp_path / "new.h5ad"), str(model_path),
                 str(tmp_path / "mapped2.h5ad"), "--group-key", "donor_id"]) == 2
    assert "pass group_features" in capsys.readouterr().err
    # an existing output is refused before anything is read
    assert main(["predict", str(tmp_path / "new.h5ad"), str(model_path), str(mapped_path),
                 "--group-key", "donor_id"]) == 2
    assert "pass --force" in capsys.readouterr().err


def test_basis_names_the_plot_coordinates(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    sim_path = tmp_path / "sim.h5ad"
    assert main(["simulate", str(sim_path), *SMALL_COHORT, "--seed", "4"]) == 0
    code = main(["fit", str(sim_path), str(tmp_path / "o.h5ad"), "--group-key", "donor_id",
                 "--plots", str(tmp_path / "p"), "--basis", "X_tsne", *SMALL_MODEL])
    assert code == 2 and "--basis 'X_tsne'" in capsys.readouterr().err
    assert not (tmp_path / "o.h5ad").exists()            # refused before the fit
