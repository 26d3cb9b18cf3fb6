"""A new user's walk-through on scanpy's ``pbmc68k_reduced`` with 14 pseudo-donors.

The data set ships with scanpy (no download): 700 PBMCs, 50 PCs, a UMAP and the cell-type
annotation ``bulk_labels``.  Cells are dealt to 14 pseudo-donors, 7 "case" donors enriched
for myeloid cells (dendritic cells and CD14+ monocytes: a myeloid cell goes to a case donor
with probability 0.75, any other cell with probability 0.25) and 7 "control" donors; each
donor also gets an age and a sex, as a sample table would.

    python tools/pbmc_pseudodonors.py [--plots DIR] [--markdown FILE]

prints what ``tl.fit``, ``tl.differential_abundance`` and ``tl.predict`` report, with wall
times; ``--plots`` writes the PNGs; ``--markdown`` writes the printed report as a fenced block
(``tools/readme_outputs.py`` pastes it into the README, so it cannot go stale).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import warnings
from contextlib import redirect_stdout

import numpy as np
import pandas as pd

MYELOID = ("Dendritic", "CD14+ Monocyte")


def pseudo_donors(seed=0):
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    rng = np.random.default_rng(seed)
    myeloid = adata.obs["bulk_labels"].isin(MYELOID).to_numpy()
    to_case = rng.random(adata.n_obs) < np.where(myeloid, 0.75, 0.25)
    donor = np.where(to_case, rng.integers(0, 7, adata.n_obs),
                     rng.integers(7, 14, adata.n_obs))
    adata.obs["donor_id"] = pd.Categorical([f"D{d:02d}" for d in donor])
    adata.obs["status"] = pd.Categorical(np.where(donor < 7, "case", "control"))
    age = pd.Series(rng.integers(25, 80, 14), index=[f"D{d:02d}" for d in range(14)])
    sex = pd.Series(rng.choice(["F", "M"], 14), index=age.index)
    adata.obs["age"] = age[adata.obs["donor_id"]].to_numpy()
    adata.obs["sex"] = pd.Categorical(sex[adata.obs["donor_id"]].to_numpy())
    return adata


def report(plots=None):
    import nestedatoms as na
    from nestedatoms._metrics import adjusted_rand_index as ari

    adata = pseudo_donors()
    shares = pd.crosstab(adata.obs["donor_id"], adata.obs["bulk_labels"].isin(MYELOID),
                         normalize="index")[True]
    status = adata.obs.groupby("donor_id", observed=True)["status"].first()
    print(f"pbmc68k_reduced: {adata.n_obs} cells, obsm['X_pca'] with "
          f"{adata.obsm['X_pca'].shape[1]} PCs, 14 pseudo-donors ({adata.obs['donor_id'].value_counts().min()}-"
          f"{adata.obs['donor_id'].value_counts().max()} cells each); myeloid share: case "
          f"{shares[status == 'case'].mean():.2f}, control {shares[status == 'control'].mean():.2f}")

    start = time.perf_counter()
    model = na.tl.fit(adata, group_key="donor_id", use_rep="X_pca", return_model=True,
                      verbose=0)
    seconds = time.perf_counter() - start
    uns = adata.uns["nam"]
    n_cell = len(adata.obs["nam_cell_cluster"].cat.categories)
    n_group = len(adata.obs["nam_group_cluster"].cat.categories)
    print(f"\ntl.fit(adata, group_key='donor_id', use_rep='X_pca'): {seconds:.1f} s, "
          f"{model.n_init} restarts, {uns['n_iter']} sweeps in the kept one; {n_cell} cell "
          f"clusters (bulk_labels: 10, louvain: {adata.obs['louvain'].nunique()}), {n_group} "
          f"donor clusters")
    print(f"  ARI of the cell clusters vs bulk_labels {ari(adata.obs['bulk_labels'], adata.obs['nam_cell_cluster']):.2f}, "
          f"vs louvain {ari(adata.obs['louvain'], adata.obs['nam_cell_cluster']):.2f}")
    donors = uns["groups"].join(status.rename("status").set_axis(
        status.index.astype(str)))
    print("  donor clusters by status:")
    print("  " + pd.crosstab(donors["cluster"], donors["status"]).to_string().replace(
        "\n", "\n  "))
    main_type = pd.crosstab(adata.obs["nam_cell_cluster"], adata.obs["bulk_labels"])
    print("  largest annotated type in each cell cluster: " + ", ".join(
        f"{c}: {t} ({n})" for c, (t, n) in enumerate(zip(main_type.idxmax(axis=1),
                                                           main_type.sum(axis=1)))))

    start = time.perf_counter()
    table = na.tl.differential_abundance(adata, condition_key="status", reference="control")
    seconds = time.perf_counter() - start
    cols = ["cell_cluster", "mean_a", "mean_b", "difference", "lower", "upper", "observed_a",
            "observed_b", "differs"]
    print(f"\ntl.differential_abundance(adata, condition_key='status', reference='control'): "
          f"{seconds:.2f} s (case - control, 95% intervals from q)")
    with pd.option_context("display.width", 120, "display.precision", 3):
        print(table[cols].to_string(index=False))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        na.tl.fit(adata, group_key="donor_id", use_rep="X_pca", group_features=["age", "sex"],
                  key_added="nam_agesex", verbose=0, rank_genes=False)
    names = sorted({type(w.message).__name__ for w in caught})
    agesex = adata.uns["nam_agesex"]["groups"].join(donors["status"])
    sex = adata.obs.groupby("donor_id", observed=True)["sex"].first()
    agesex = agesex.join(sex.set_axis(sex.index.astype(str)).rename("sex"))
    print(f"\ngroup_features=['age', 'sex'] (what a biologist would call covariates) warns "
          f"{', '.join(names)}; donors are then clustered by them too: "
          f"{agesex['cluster'].nunique()} donor clusters,")
    print("  " + pd.crosstab(agesex["cluster"], [agesex["status"], agesex["sex"]]).to_string(
        ).replace("\n", "\n  "))

    from nestedatoms._validation import HighDimensionWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", HighDimensionWarning)   # stop at the warning
        try:
            na.tl.fit(adata.copy(), group_key="donor_id", use_rep="X", verbose=0)
        except HighDimensionWarning as warning:
            print(f"use_rep='X' ({adata.n_vars} genes) warns before fitting: {warning}")

    print("\ncell_resolution (how fine the cell clusters are):")
    for r in (1.0, 2.0, 3.0):
        start = time.perf_counter()
        res = na.tl.fit(adata, group_key="donor_id", use_rep="X_pca", cell_resolution=r,
                        key_added="nam_res", copy=True, verbose=0, rank_genes=False)
        seconds = time.perf_counter() - start
        labels = res.obs["nam_res_cell_cluster"]
        print(f"  cell_resolution={r:g}: {labels.nunique()} cell clusters, ARI vs bulk_labels "
              f"{ari(adata.obs['bulk_labels'], labels):.2f}, vs louvain "
              f"{ari(adata.obs['louvain'], labels):.2f}; "
              f"{res.obs['nam_res_group_cluster'].nunique()} donor clusters; {seconds:.1f} s")

    held_out = ["D06", "D13"]
    is_new = adata.obs["donor_id"].isin(held_out).to_numpy()
    ref, new = adata[~is_new].copy(), adata[is_new].copy()
    start = time.perf_counter()
    ref_model = na.tl.fit(ref, group_key="donor_id", use_rep="X_pca", return_model=True,
                          verbose=0, rank_genes=False)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    na.tl.predict(new, ref_model, group_key="donor_id", use_rep="X_pca")
    pred_s = time.perf_counter() - start
    agree = (new.obs["nam_cell_cluster"].astype(str)
             == adata.obs.loc[new.obs_names, "nam_cell_cluster"].astype(str)).mean()
    print(f"\ntl.predict of the 2 held-out donors {held_out} onto a fit of the other 12 "
          f"({fit_s:.1f} s): {pred_s:.2f} s; their donor clusters "
          f"{new.uns['nam']['groups']['cluster'].to_dict()}; "
          f"ARI of their cells' clusters vs the full fit's "
          f"{ari(adata.obs.loc[new.obs_names, 'nam_cell_cluster'], new.obs['nam_cell_cluster']):.2f}")
    del agree, ref_model

    if plots:
        import os

        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        os.makedirs(plots, exist_ok=True)
        paths = []
        for name, size, draw in (("donors", (7.5, 4.2), na.pl.donor_composition),
                                 ("abundance", (6.5, 4.0), na.pl.differential_abundance),
                                 ("cells", (6.0, 5.0), na.pl.cells)):
            fig = Figure(figsize=size, layout="constrained")
            draw(adata, ax=fig.add_subplot())
            paths.append(os.path.join(plots, f"pbmc_{name}.png"))
            fig.savefig(paths[-1], dpi=90)
        print("\nplots: " + ", ".join(paths))
    return adata


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plots", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)
    buf = io.StringIO()
    with redirect_stdout(buf):
        report(args.plots)
    text = buf.getvalue()
    sys.stdout.write(text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write("```\n" + text.split("\nplots:")[0].rstrip() + "\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
