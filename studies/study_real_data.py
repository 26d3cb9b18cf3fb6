"""Real nested data: six CyTOF whole-blood samples (two shared controls x three plates).

The data ship inside the ``cytonormpy`` wheel (``pip install cytonormpy``; nothing is
downloaded at run time; see ``cytonorm_data.py``): the CytoNorm validation design, in which the
same two control samples (``Control_1``, ``Control_2``) were stained and acquired on each of
three barcoded plates (``PTLG021``, ``PTLG028``, ``PTLG034``), 1000 events per file.  Each
sample (file) is one group ("donor") of the model; cells are its events, y = arcsinh(x/5) of 20
surface lineage markers; no x (the common atoms model: samples are clustered by the make-up of
their cells alone).

What a scientist looks at, and what this script writes:

* cell clusters against a hand gating of the major blood lineages (ARI, contingency table,
  each cluster named by its majority gate and its purity), and the clusters' marker means;
* the donor (sample) clusters: do the three plates' copies of one control land together, and
  are the two controls told apart (they differ reproducibly: 3x the NK cells in Control_2)?
* the learned donor concentration ``donor_concentration_`` (default "auto"), next to the
  Nested Atoms Model exactly (``donor_concentration=numpy.inf``) and a few fixed values;
* stability over random_state; fit times (n_threads=1).

Outputs: ``studies/results/real_data.md`` and three PNGs ``studies/results/real_data_*.png``.
Uses only the public API (``nestedatoms.NestedAtomsModel``, ``nestedatoms.tl``,
``nestedatoms.pl``).

    pip install cytonormpy            # the data (and ".[test]" or ".[plot]" for the plots)
    python studies/study_real_data.py            # about 4 min on the shared 2-core machine
    python studies/study_real_data.py --quick    # the default fit only (about 30 s; CI)

Without cytonormpy the script says so and exits with status 3 (``SKIPPED``), which
``studies/run.py`` reports as a skip, not a failure.  ``--quick`` writes to a temporary folder
unless ``--outdir`` is given, so a smoke run never replaces the committed results.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pandas as pd

import nestedatoms as na

import cytonorm_data  # a sibling: scripts run as python studies/<name>.py

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results")
# exit status of a run that cannot start because the data are absent (studies/run.py: skipped)
SKIPPED = 3


READING = """## Reading

(Measured on the final code of this round: the donor concentration is learned after the
group search, and the restarts share the first restart's c.)

* **Cells.** Without being told anything about the cells, the default fit finds the major
  blood lineages of the hand gating (granulocytes, monocytes, B/HLA-DR+, NK, CD4 T, CD8 T, a
  DC/pDC/ungated remainder); over five seeds ARI 0.74-0.79 against the 11 gates and
  0.71-0.78 against the 7 lineages. The Nested Atoms Model exactly (c = inf) splits finer
  (12-14 clusters) at a similar gate ARI (0.71-0.75) and a lower lineage ARI.
* **Samples.** The two controls differ reproducibly on every plate (Control_2: about 3x the
  NK cells, more monocytes, fewer granulocytes). The exact model puts the three copies of each
  control together and the two controls apart in 4 of 5 seeds (seed 3 splits one control
  further). The default never splits by plate; it separates the two controls in 1 of 5 seeds
  (seed 0, c of about 1000; then its differential-abundance table names the NK, monocyte and
  granulocyte clusters) and keeps all six samples together in the other 4 (c of 270-1000).
  So with six samples of two donors the learned concentration is conservative: the
  plate-to-plate spread within one control (the ungated fraction: 53-137 events per 1000) is
  as large as the difference between the controls.
* **The learned c also coarsens the cells.** zeta_j weights each sample's y terms too, so at
  c of about 270 the 6000 cells count as about 1300 and the fit finds 7-8 cell clusters,
  sometimes with CD4 and CD8 T cells together; at c of about 1000, 10-11 with them apart.
  `donor_concentration=numpy.inf` gives NAM's finer clusters.
"""


def ari(a, b) -> float:
    """ARI of two labelings given as any labels (compared as text)."""
    return na.adjusted_rand_index(np.asarray(a).astype(str), np.asarray(b).astype(str))


def md_table(df: pd.DataFrame, floatfmt="{:.3g}") -> str:
    """A DataFrame as a GitHub markdown table (no tabulate dependency)."""
    cols = [str(df.index.name or "")] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, row in df.iterrows():
        cells = [str(idx)] + [floatfmt.format(v) if isinstance(v, (float, np.floating)) else
                              str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def name_clusters(clusters, gates):
    """Each cell cluster's majority gate and purity: '3 (B cells 51 %)'."""
    tab = pd.crosstab(clusters, gates)
    names = {}
    for c, row in tab.iterrows():
        names[c] = f"{c} ({row.idxmax()} {100 * row.max() / row.sum():.0f} %)"
    return names, tab


def t_cells_apart(clusters, gates) -> bool:
    """Whether the CD4 T and the CD8 T gates have different majority clusters."""
    clusters = np.asarray(clusters)
    return bool(np.bincount(clusters[gates == "CD4 T"]).argmax()
                != np.bincount(clusters[gates == "CD8 T"]).argmax())


def effective_cells(c, n_j=1000, J=6):
    """The cells' total weight in the tempered fit: J n_j (1 + c) / (n_j + c)."""
    return J * n_j if not np.isfinite(c) else J * n_j * (1 + c) / (n_j + c)


def sample_partition(model):
    return pd.Series(model.group_labels_, index=[str(g) for g in model.groups_])


def donor_table(adata, key):
    """Per sample: plate, control, donor cluster (numbered by size), its probability."""
    groups = adata.uns[key]["groups"].copy()
    groups.index = groups.index.astype(str)
    meta = adata.obs.groupby("sample", observed=True)[["batch", "control"]].first()
    meta.index = meta.index.astype(str)
    out = meta.join(groups)
    out.index.name = "sample"
    return out


def plots(adata, model, summ, names, outdir, exact=None, exact_names=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    clusters = adata.obs["nam_cell_cluster"].astype(int).to_numpy()
    order = sorted(names)

    # 1. Composition: per sample, cell-cluster fractions (bars) and the gates; model's view.
    fig, axes = plt.subplots(1, 3, figsize=(17, 5), layout="constrained",
                             gridspec_kw=dict(width_ratios=[1.1, 1.1, 1.0]))
    cmap = matplotlib.colormaps["tab20" if len(order) > 10 else "tab10"]   # as na.pl.cells
    frac = pd.crosstab(adata.obs["sample"].astype(str), clusters, normalize="index")
    left = np.zeros(len(frac))
    for c in order:
        v = frac[c].to_numpy() if c in frac else np.zeros(len(frac))
        axes[0].barh(frac.index, v, left=left, color=cmap(c % cmap.N), label=names[c])
        left += v
    axes[0].invert_yaxis()
    axes[0].set_xlabel("fraction of the sample's cells")
    axes[0].set_title("Cell clusters per sample (NAM, default)")
    axes[0].legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.12),
                   ncol=2, title="cell cluster (majority gate, purity)")
    gfrac = pd.crosstab(adata.obs["sample"].astype(str), adata.obs["gate"].astype(str),
                        normalize="index")
    gcols = list(gfrac.columns)
    left = np.zeros(len(gfrac))
    gmap = matplotlib.colormaps["tab20b"]
    for i, gname in enumerate(gcols):
        v = gfrac[gname].to_numpy()
        axes[1].barh(gfrac.index, v, left=left, color=gmap(i * 2 % 20), label=gname)
        left += v
    axes[1].invert_yaxis()
    axes[1].set_xlabel("fraction of the sample's cells")
    axes[1].set_title("Hand gates per sample")
    axes[1].legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)
    if exact is None:
        na.pl.composition(summ, ax=axes[2])
    else:
        ex_summ = exact.summary()
        na.pl.composition(ex_summ, ax=axes[2], annotate=True)
        cols = list(ex_summ.composition.columns)
        axes[2].set_xticks(range(len(cols)), [exact_names.get(int(c), str(c)) for c in cols],
                           rotation=60, ha="right", fontsize="x-small")
        members = {k: ", ".join(sorted({str(g).split("_", 1)[1] for g in idx}))
                   for k, idx in ex_summ.groups.groupby("cluster").groups.items()}
        rows = list(ex_summ.composition.index)
        axes[2].set_yticks(range(len(rows)), [f"{k}: {members.get(k, '')}" for k in rows])
        axes[2].set_ylabel("donor cluster: its samples' control")
        axes[2].set_title("NAM exactly (c = inf): its donor clusters' make-up")
    path = os.path.join(outdir, "real_data_composition.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    # 2. Cells: UMAP (scanpy) or the first two principal components, by cluster and by gate.
    coords, what = None, "PC1/PC2 of y"
    try:
        import scanpy as sc

        tmp = adata.copy()
        sc.pp.neighbors(tmp, use_rep="X_lineage", n_neighbors=15, random_state=0)
        sc.tl.umap(tmp, random_state=0)
        coords, what = tmp.obsm["X_umap"], "UMAP of the 20 lineage markers"
    except ImportError:
        pass
    fig, axes = plt.subplots(1, 2, figsize=(14, 6), layout="constrained")
    na.pl.cells(model, coords=coords, ax=axes[0], summary=summ, s=5)
    axes[0].set_title(f"NAM cell clusters ({what})")
    if coords is None:
        Yc = adata.X - adata.X.mean(0)
        coords = Yc @ np.linalg.svd(Yc, full_matrices=False)[2][:2].T
    gates = adata.obs["gate"].astype(str).to_numpy()
    for i, gname in enumerate(gcols):
        sel = gates == gname
        axes[1].scatter(coords[sel, 0], coords[sel, 1], s=5, color=gmap(i * 2 % 20),
                        label=f"{gname} ({sel.sum()})", linewidths=0, alpha=0.7,
                        rasterized=True)
    axes[1].legend(markerscale=3, fontsize="small")
    axes[1].set_title(f"Hand gates ({what})")
    for ax in axes:
        ax.set_xlabel("dim 1")
        ax.set_ylabel("dim 2")
    path = os.path.join(outdir, "real_data_cells.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    # 3. Marker means per cell cluster (arcsinh scale), clusters named by their majority gate.
    means = pd.DataFrame(adata.X, columns=adata.var_names).groupby(clusters).mean()
    means = means.loc[order]
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.45 * len(order)), layout="constrained")
    im = ax.imshow(means.to_numpy(), cmap="magma", aspect="auto")
    ax.set_xticks(range(means.shape[1]), means.columns, rotation=60, ha="right")
    ax.set_yticks(range(len(order)),
                  [f"{names[c]}, n={int((clusters == c).sum())}" for c in order])
    fig.colorbar(im, ax=ax, label="mean arcsinh(x/5)")
    ax.set_title("Marker means of the NAM cell clusters")
    path = os.path.join(outdir, "real_data_markers.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths


def subsample(adata, per_sample, seed):
    """``per_sample`` events of every sample, drawn without replacement."""
    rng = np.random.default_rng(seed)
    samples = adata.obs["sample"].astype(str).to_numpy()
    idx = np.concatenate([rng.choice(np.flatnonzero(samples == s), per_sample, replace=False)
                          for s in np.unique(samples)])
    return adata[np.sort(idx)]


def write_checks(path):
    """The quantities tests/test_real_data.py holds to thresholds, as JSON: the packaged
    design and the hand gates; the default fit on 500 events a sample (seed 0): its ARIs, the
    granulocytes' cluster, the controls' donor clusters; and NAM exactly (c = inf, n_init=1)
    on all events: its ARIs against the controls and the gates."""
    import json

    data = cytonorm_data.load()
    obs = data.obs
    gate_frac = obs["lineage"].value_counts(normalize=True)
    nk = obs[obs["gate"] == "NK cells"].groupby("sample", observed=True).size()
    out = dict(shape=list(data.shape), n_lineage_markers=len(cytonorm_data.LINEAGE),
               finite_nonnegative=bool(np.isfinite(data.X).all() and (data.X >= 0).all()),
               events_per_batch_control=[int(v) for v in obs.groupby(
                   ["batch", "control"], observed=True).size()],
               lineage_fraction={str(k): float(v) for k, v in gate_frac.items()},
               nk_control_1=[int(nk[s]) for s in nk.index if s.endswith("Control_1")],
               nk_control_2=[int(nk[s]) for s in nk.index if s.endswith("Control_2")])

    sub = subsample(data, 500, seed=0)
    samples = sub.obs["sample"].astype(str).to_numpy()
    model = na.NestedAtomsModel(random_state=0, n_threads=1).fit(sub.X, samples)
    gates = sub.obs["gate"].astype(str).to_numpy()
    gran = gates == "Granulocytes"
    in_main = model.cell_labels_ == np.bincount(model.cell_labels_[gran]).argmax()
    part = dict(zip([str(g) for g in model.groups_], model.group_labels_))
    out["default"] = dict(
        ari_gates=ari(gates, model.cell_labels_),
        ari_lineage=ari(sub.obs["lineage"].astype(str), model.cell_labels_),
        granulocyte_cluster_purity=float(gran[in_main].mean()),
        granulocytes_in_their_cluster=float(in_main[gran].mean()),
        donor_clusters_per_control=[len({part[s] for s in part if s.endswith(c)})
                                    for c in ("Control_1", "Control_2")],
        donor_concentration=float(model.donor_concentration_))

    samples = data.obs["sample"].astype(str).to_numpy()
    exact = na.NestedAtomsModel(random_state=0, n_threads=1, n_init=1,
                                donor_concentration=np.inf).fit(data.X, samples)
    controls = [str(g).split("_", 1)[1] for g in exact.groups_]
    out["exact"] = dict(ari_controls=ari(controls, exact.group_labels_),
                        ari_gates=ari(data.obs["gate"].astype(str), exact.cell_labels_))
    with open(path, "w") as fh:
        json.dump(out, fh, indent=1)
    print(json.dumps(out, indent=1))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the default fit only")
    ap.add_argument("--outdir", default=None, help=f"default {OUT} (--quick: a temporary one)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--checks", metavar="JSON", default=None,
                    help="only measure what tests/test_real_data.py checks, into this file")
    args = ap.parse_args()
    try:
        cytonorm_data.resources_dir()
    except ImportError as err:
        print(f"skipped: {err} (the CyTOF files ship inside its wheel)")
        return SKIPPED
    if args.checks:
        return write_checks(args.checks)
    if args.outdir is None and args.quick:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="nestedatoms-study-") as scratch:
            args.outdir = scratch
            return run(args)
    args.outdir = args.outdir or OUT
    return run(args)


def run(args):
    os.makedirs(args.outdir, exist_ok=True)
    adata = cytonorm_data.load()
    samples = adata.obs["sample"].astype(str).to_numpy()
    control_of = adata.obs.groupby("sample", observed=True)["control"].first().astype(str)
    control_of.index = control_of.index.astype(str)
    batch_of = adata.obs.groupby("sample", observed=True)["batch"].first().astype(str)
    batch_of.index = batch_of.index.astype(str)
    gates = adata.obs["gate"].astype(str).to_numpy()
    lineage = adata.obs["lineage"].astype(str).to_numpy()
    lines = []
    w = lines.append

    # The default fit, through the AnnData interface (scanpy style).
    t = time.perf_counter()
    model = na.tl.fit(adata, group_key="sample", use_rep="X_lineage", key_added="nam",
                         return_model=True, n_threads=1, random_state=0)
    t_default = time.perf_counter() - t
    summ = model.summary()
    clusters = adata.obs["nam_cell_cluster"].astype(int).to_numpy()
    names, tab = name_clusters(clusters, gates)
    ltab = pd.crosstab(clusters, lineage)
    purity = ltab.max(axis=1).sum() / ltab.to_numpy().sum()
    donors = donor_table(adata, "nam")
    part = sample_partition(model)

    def same_control_together(p):
        return all(p[control_of == c].nunique() == 1 for c in control_of.unique())

    w("# Real nested data: CyTOF whole blood, two shared controls on three plates\n")
    w("Made by `python studies/study_real_data.py` (data: the `cytonormpy` wheel, "
      "`pip install cytonormpy`; loader `studies/cytonorm_data.py`). Everything below is "
      "measured by that script; n_threads=1 on the shared 2-core machine.\n")
    w("## Data\n")
    w(f"* {adata.n_obs} cells (events), {len(control_of)} samples = groups: the same two "
      f"control samples (Control_1, the CytoNorm reference, and Control_2) acquired on each "
      f"of three barcoded plates (PTLG021, PTLG028, PTLG034), unstimulated whole blood, "
      f"1000 events per file (the files as packaged; no subsampling).")
    w(f"* y = arcsinh(x/5) of {adata.n_vars} surface lineage markers: "
      f"{', '.join(adata.var_names)}. Left out: barcodes, DNA, beads, time, the 10 "
      f"signalling read-outs, Tbet/FoxP3, CXCR3/CCR9, CD235ab_CD61, and CD19 and CD25, which "
      f"separate nothing in these files (one broad mode on every lineage).")
    w("* No x (common atoms model): samples are clustered by the make-up of their cells.")
    w("* Annotation: none ships (cytonormpy's example cell labels are random draws), so the "
      "cells are hand-gated into 11 gates / 7 lineages by a fixed tree on the same markers "
      "(`cytonorm_data.gate`, thresholds at the valleys of the pooled histograms). A "
      "reference, not ground truth.\n")
    gate_counts = pd.crosstab(adata.obs["sample"].astype(str), adata.obs["gate"].astype(str))
    gate_counts.index.name = "sample"
    w("Hand gates per sample (cells):\n")
    w(md_table(gate_counts) + "\n")
    w("Control_2 carries about 3x the NK cells of Control_1 (39-48 vs 11-15 per 1000), more "
      "monocytes and CD8 T cells, on every plate; the ungated fraction (low-signal events) "
      "varies by plate (Control_1: 105, 53, 137).\n")

    w("## Default fit (`na.tl.fit(adata, group_key='sample', use_rep='X_lineage', "
      "n_threads=1)`)\n")
    w(f"* fit time {t_default:.1f} s (3 restarts; kept restart: {model.n_iter_} sweeps, "
      f"converged {model.converged_}), ELBO {model.elbo_:.1f}")
    w(f"* learned donor concentration `donor_concentration_` = "
      f"{model.donor_concentration_:.1f}: each 1000-cell sample weighs as "
      f"{1000 * (1 + model.donor_concentration_) / (1000 + model.donor_concentration_):.0f} "
      f"cells of evidence about its cluster's composition")
    w(f"* cell clusters found: {summ.n_cell_clusters}; ARI vs the 11 hand gates "
      f"{ari(gates, clusters):.3f}, vs the 7 lineages {ari(lineage, clusters):.3f}; "
      f"lineage purity (cells in their cluster's majority lineage) {purity:.3f}")
    w(f"* donor (sample) clusters found: {summ.n_group_clusters}; ARI vs control identity "
      f"{ari(control_of[part.index], part):.3f}, vs plate {ari(batch_of[part.index], part):.3f}; "
      f"the three copies of each control share a cluster: {same_control_together(part)}\n")
    tab_named = tab.rename(index=names)
    tab_named.index.name = "cell cluster (majority gate, purity)"
    w("Contingency table, cell clusters (numbered by size) x hand gates:\n")
    w(md_table(tab_named) + "\n")
    w("Donor clusters:\n")
    w(md_table(donors) + "\n")

    robust_rows = []
    scan_rows = []
    exact = ex_names = None
    if not args.quick:
        # The Nested Atoms Model exactly (no donor variation), through tl as well.
        t = time.perf_counter()
        exact = na.tl.fit(adata, group_key="sample", use_rep="X_lineage",
                             key_added="nam_exact", return_model=True, n_threads=1,
                             random_state=0, donor_concentration=np.inf, rank_genes=False)
        t_exact = time.perf_counter() - t
        ex_clusters = adata.obs["nam_exact_cell_cluster"].astype(int).to_numpy()
        ex_part = sample_partition(exact)
        ex_names, ex_tab = name_clusters(ex_clusters, gates)
        w("## The Nested Atoms Model exactly (`donor_concentration=numpy.inf`)\n")
        w(f"* fit time {t_exact:.1f} s; cell clusters {len(np.unique(ex_clusters))}, ARI vs "
          f"gates {ari(gates, ex_clusters):.3f}, vs lineages {ari(lineage, ex_clusters):.3f}")
        w(f"* donor clusters {ex_part.nunique()}; ARI vs control identity "
          f"{ari(control_of[ex_part.index], ex_part):.3f}, vs plate "
          f"{ari(batch_of[ex_part.index], ex_part):.3f}\n")
        w(md_table(donor_table(adata, "nam_exact")) + "\n")
        ex_named = ex_tab.rename(index=ex_names)
        ex_named.index.name = "cell cluster (majority gate, purity)"
        w("Contingency table, cell clusters x hand gates:\n")
        w(md_table(ex_named) + "\n")
        da = exact.summary().significant_differences()
        if len(da):
            w("Cell clusters whose share differs between the two donor clusters (interval "
              "excludes 0; `summary().significant_differences()`), named by majority gate:\n")
            da = da.copy()
            col = [c for c in da.columns if "cell" in c.lower()][:1]
            if col:
                da[col[0]] = [ex_names.get(int(c), c) for c in da[col[0]]]
            w(md_table(da.set_index(da.columns[0])) + "\n")

        # The default from the exact fit's answer: does the learned c keep the two controls?
        t = time.perf_counter()
        warm = na.NestedAtomsModel(random_state=0, n_threads=1, n_init=1)
        ex_groups = pd.Series(exact.group_labels_, index=exact.groups_)
        warm.fit(adata.X, samples, init_group_labels=ex_groups,
                 init_cell_labels=exact.cell_labels_)
        wp = sample_partition(warm)
        w("Started from the exact fit's labels (`fit(init_group_labels=, init_cell_labels=)`), "
          f"the default (learned c) ends with {wp.nunique()} donor cluster(s) (ARI vs control "
          f"{ari(control_of[wp.index], wp):.3f}), c = {warm.donor_concentration_:.1f}, "
          f"{len(np.unique(warm.cell_labels_))} cell clusters, ELBO {warm.elbo_:.1f} (the "
          f"default fit from k-means: {model.elbo_:.1f} at c = "
          f"{model.donor_concentration_:.1f}); {time.perf_counter() - t:.1f} s.\n")

        # Fixed concentrations: where the two controls come apart.
        for c in (300.0, 1000.0, 2000.0, 5000.0):
            t = time.perf_counter()
            m = na.NestedAtomsModel(random_state=0, n_threads=1, donor_concentration=c)
            m.fit(adata.X, samples)
            p = sample_partition(m)
            scan_rows.append(dict(c=c, effective_cells=round(effective_cells(c)),
                                  donor_clusters=p.nunique(),
                                  ari_control=ari(control_of[p.index], p),
                                  cell_clusters=len(np.unique(m.cell_labels_)),
                                  cd4_cd8_apart=t_cells_apart(m.cell_labels_, gates),
                                  ari_gates=ari(gates, m.cell_labels_),
                                  seconds=time.perf_counter() - t))
        # Stability over random_state, default and exact.
        for setting in ("auto", np.inf):
            for seed in range(5):
                t = time.perf_counter()
                m = na.NestedAtomsModel(random_state=seed, n_threads=1,
                                        donor_concentration=setting)
                m.fit(adata.X, samples)
                p = sample_partition(m)
                robust_rows.append(dict(
                    setting="default (auto)" if setting == "auto" else "exact (inf)",
                    seed=seed, c_hat=m.donor_concentration_, donor_clusters=p.nunique(),
                    ari_control=ari(control_of[p.index], p),
                    controls_together=same_control_together(p),
                    cell_clusters=len(np.unique(m.cell_labels_)),
                    cd4_cd8_apart=t_cells_apart(m.cell_labels_, gates),
                    ari_gates=ari(gates, m.cell_labels_),
                    ari_lineage=ari(lineage, m.cell_labels_),
                    seconds=time.perf_counter() - t))
        scan = pd.DataFrame(scan_rows).set_index("c")
        w("## Fixed donor concentrations c (random_state 0)\n")
        w("`effective_cells`: the cells' total weight in the fit, 6000 (1 + c) / (1000 + c); "
          "each sample's y terms, composition terms and q(M) entropy are all weighted by "
          "zeta_j = (1 + c) / (n_j + c). `cd4_cd8_apart`: the CD4 T and CD8 T gates have "
          "different majority clusters.\n")
        w(md_table(scan) + "\n")
        rob = pd.DataFrame(robust_rows).set_index("setting")
        w("## Stability over random_state (full data, n_init=3 each)\n")
        w(md_table(rob) + "\n")
        rob.to_csv(os.path.join(args.outdir, "real_data_runs.csv"))

    if not args.quick:
        w(READING)
    if not args.no_plots:
        try:
            paths = plots(adata, model, summ, names, args.outdir, exact,
                          ex_names if exact is not None else None)
            w("## Plots\n")
            for p in paths:
                w(f"* `{os.path.relpath(p, os.path.dirname(HERE))}`")
            w("")
        except ImportError as err:
            w(f"Plots skipped: {err}\n")

    text = "\n".join(lines) + "\n"
    out = os.path.join(args.outdir, "real_data.md")
    if args.quick:
        out = os.path.join(args.outdir, "real_data_quick.md")
    with open(out, "w") as fh:
        fh.write(text)
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
