"""Plots of a fitted model (matplotlib, an optional extra: ``pip install "nestedatoms[plot]"``).

Every function takes what you have: the AnnData that ``nestedatoms.tl.fit`` wrote (scanpy's
convention: the results are read from ``uns[key]``, ``obs`` and ``obsm``; ``key`` is the
``key_added`` of the fit, "nam" by default), a fitted ``NestedAtomsModel``, or (for the tables)
its ``Summary``.  Each draws into ``ax`` when given (else a new figure) and returns the Axes,
so the plots compose with the rest of a matplotlib figure; :func:`save_all` writes them all as
PNG files.  Clusters are numbered as in ``model.summary()`` (by size, largest first).
"""

from __future__ import annotations

import os

import numpy as np

from ._atomic import atomic_path

__all__ = ["elbo_traces", "composition", "donor_composition", "coclustering", "cells",
           "differential_abundance", "save_all", "plot_paths"]

_MAX_POINTS = 30000


def _matplotlib():
    try:
        import matplotlib  # noqa: F401
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        raise ImportError(
            'nestedatoms plots need matplotlib: pip install "nestedatoms[plot]" '
            "(or pip install matplotlib)."
        ) from None
    return matplotlib


def _new_axes(ax, figsize):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _is_anndata(obj) -> bool:
    return hasattr(obj, "obs") and hasattr(obj, "uns") and hasattr(obj, "obsm")


def _is_model(obj) -> bool:
    return hasattr(obj, "summary") and hasattr(obj, "elbo_traces_")


def _summary(obj):
    from ._summary import Summary

    if isinstance(obj, Summary):
        return obj
    if hasattr(obj, "summary"):
        return obj.summary()
    raise TypeError(f"expected the AnnData written by nestedatoms.tl.fit, a fitted "
                    f"NestedAtomsModel or a Summary, got {type(obj).__name__}.")


class _View:
    """What the plots need, read from an AnnData (``uns[key]``), a model or a Summary."""

    def __init__(self, data, key="nam", summary=None):
        self.data = data
        self.key = key
        self.kind = ("anndata" if _is_anndata(data) else "model" if _is_model(data)
                     else "summary")
        if self.kind == "anndata":
            if key not in data.uns or not isinstance(data.uns[key], dict):
                raise KeyError(f"adata.uns[{key!r}] not found: run nestedatoms.tl.fit(adata, "
                               f"key_added={key!r}) first, or pass key= the key_added you "
                               f"used.")
            self.uns = data.uns[key]
            self.summary = None
        else:
            self.summary = summary if summary is not None else _summary(data)

    def _need(self, what, fit_only=True):
        if self.kind == "summary":
            raise TypeError(f"this plot needs {what}: pass the fitted model or the AnnData "
                            f"written by tl.fit, not a Summary.")
        if self.kind == "anndata" and fit_only and self.uns.get("predicted", False):
            raise ValueError(f"adata.uns[{self.key!r}] was written by tl.predict, which maps "
                             f"cells onto a fitted model; this plot needs {what} of a fit: "
                             f"draw it from the reference AnnData or the model.")

    def table(self, name):
        """A summary table: composition, group_clusters, groups, coclustering."""
        if self.kind == "anndata":
            self._need(f"uns[{self.key!r}][{name!r}]", fit_only=name != "groups")
            return self.uns[name]
        return getattr(self.summary, name)

    def traces(self):
        self._need("the ELBO traces")
        if self.kind == "anndata":
            traces = self.uns["elbo_traces"]
            traces = [np.asarray(traces[k]) for k in sorted(traces, key=int)]
            kept = self.uns.get("best_restart")
            return traces, None if kept is None else int(kept)
        model = self.data
        return ([np.asarray(t) for t in model.elbo_traces_],
                getattr(model, "best_restart_", None))

    def cell_labels(self):
        """(N,) cell cluster (summary number) of every cell, in the caller's order."""
        self._need("the cells' clusters", fit_only=False)
        if self.kind == "anndata":
            return self.data.obs[f"{self.key}_cell_cluster"].astype(int).to_numpy()
        model, s = self.data, self.summary
        rank = np.full(model.cell_probs_.shape[1], -1)
        rank[s.cell_cluster_index] = np.arange(s.n_cell_clusters)
        return rank[model.cell_labels_]

    def n_cell_clusters(self) -> int:
        if self.kind == "anndata":
            return len(self.data.obs[f"{self.key}_cell_cluster"].cat.categories)
        return self.summary.n_cell_clusters

    def default_coords(self, basis=None):
        """(coords, xlabel, ylabel): ``obsm[basis]``; by default X_umap when the AnnData has
        it, else the first two principal components of y."""
        self._need("the cells", fit_only=False)
        if self.kind == "anndata":
            obsm = self.data.obsm
            if basis is None and "X_umap" in obsm:
                basis = "X_umap"
            if basis is not None:
                if basis not in obsm:
                    raise KeyError(f"basis {basis!r} is not in adata.obsm (keys: "
                                   f"{list(obsm.keys())}); compute it (e.g. sc.tl.umap) or "
                                   f"leave basis=None for the principal components of y.")
                name = basis[2:] if basis.startswith("X_") else basis
                return (np.asarray(obsm[basis])[:, :2], f"{name.upper()}1",
                        f"{name.upper()}2")
            Y = np.asarray(obsm[self.uns["use_rep"]], dtype=float)
        else:
            if basis is not None:
                raise ValueError("basis names an obsm key of an AnnData; with a model pass "
                                 "coords=(n_cells, 2) instead.")
            data = self.data.problem_.data
            Y = data.to_caller_order(data.Y)
        if Y.shape[1] < 2:
            raise ValueError("the fitted Y has one column; pass coords (N, 2) to plot cells.")
        return _principal_components(Y), "PC1 of y", "PC2 of y"

    def donor_shares(self):
        """(groups x cell clusters) mean q(M) of each group's cells, and each group's cluster."""
        import pandas as pd

        self._need("the cells of every donor", fit_only=False)
        if self.kind == "anndata":
            adata, uns = self.data, self.uns
            groups = uns["groups"]
            probs = np.asarray(adata.obsm[f"{self.key}_cell_probs"], dtype=float)
            index = np.asarray(uns["cell_cluster_index"])
            if probs.shape[1] != index.size:     # written before empty columns were cut
                probs = probs[:, index]
            labels = pd.Index([str(g) for g in groups.index])
            of_cell = labels.get_indexer(adata.obs[uns["group_key"]].astype(str).to_numpy())
            sums = np.zeros((labels.size, probs.shape[1]))
            np.add.at(sums, of_cell, probs)
            shares = sums / np.maximum(np.bincount(of_cell, minlength=labels.size),
                                       1)[:, None]
            clusters = groups["cluster"].astype(int).to_numpy()
        else:
            model, s = self.data, self.summary
            st = model.state_
            sizes = np.maximum(model.problem_.data.group_sizes, 1)
            shares = st.N_jl[:, s.cell_cluster_index] / sizes[:, None]
            labels = pd.Index([str(g) for g in model.groups_])
            clusters = s.groups["cluster"].to_numpy()
        return pd.DataFrame(shares, index=labels), clusters


def _colours(n):
    import matplotlib

    cmap = matplotlib.colormaps["tab20" if n > 10 else "tab10"]
    return [cmap(c % cmap.N) for c in range(n)]


def elbo_traces(data, *, ax=None, key="nam"):
    """The ELBO after every sweep, one line per restart; the kept restart is drawn bold.

    ``data``: the AnnData written by ``tl.fit`` or the fitted model.  The y axis is the gap to
    the best final ELBO (log scale), so the convergence of every restart is visible however
    large the ELBO itself is.
    """
    _matplotlib()
    traces, kept = _View(data, key, summary=False).traces()
    ax = _new_axes(ax, (6, 4))
    best_final = max(t[-1] for t in traces if t.size)
    scale = max(abs(best_final), 1.0)
    floor = 1e-12 * scale   # the converged run sits at 0: show it at the plot's floor
    for r, trace in enumerate(traces):
        sweeps = np.arange(1, trace.size + 1)
        gap = np.maximum(best_final - trace, floor)
        is_kept = r == kept
        ax.plot(sweeps, gap, lw=2.2 if is_kept else 1.0, alpha=1.0 if is_kept else 0.7,
                label=f"restart {r + 1}: final ELBO {trace[-1]:,.2f}" + (" (kept)" if is_kept
                                                                      else ""))
    from matplotlib.ticker import MaxNLocator

    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("CAVI sweep")
    ax.set_ylabel("best final ELBO − ELBO")
    ax.set_title("ELBO traces of all restarts")
    ax.legend(fontsize="small")
    return ax


def _heatmap(ax, values, row_labels, col_labels, cmap, vmin, vmax, cbar_label, annotate):
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto",
                   interpolation="nearest")
    ax.figure.colorbar(im, ax=ax, label=cbar_label, shrink=0.8)
    if annotate:
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                v = values[i, j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize="small",
                        color="white" if v > 0.5 * (vmin + vmax) else "black")
    if row_labels is not None:
        ax.set_yticks(np.arange(len(row_labels)), labels=row_labels)
    if col_labels is not None:
        ax.set_xticks(np.arange(len(col_labels)), labels=col_labels)
    return im


def composition(data, *, ax=None, annotate=None, key="nam"):
    """Heatmap of each group cluster's cell-cluster composition (rows sum to 1).

    ``data``: the AnnData written by ``tl.fit``, the fitted model or its ``Summary``.
    """
    _matplotlib()
    v = _View(data, key)
    table = v.table("composition")
    comp = table.to_numpy(dtype=float)
    ax = _new_axes(ax, (1.2 + 0.6 * comp.shape[1], 1.2 + 0.5 * comp.shape[0]))
    sizes = v.table("group_clusters")["n_groups"].to_numpy()
    rows = [f"{k} (n={n})" for k, n in zip(table.index, sizes)]
    if annotate is None:
        annotate = comp.size <= 200
    _heatmap(ax, comp, rows, [str(c) for c in table.columns], "viridis", 0.0,
             max(float(comp.max()), 1e-12), "fraction of the cluster's cells", annotate)
    ax.set_xlabel("cell cluster")
    ax.set_ylabel("group cluster (number of groups)")
    ax.set_title("Composition of each group cluster")
    return ax


def donor_composition(data, *, ax=None, key="nam", max_labels=60, legend=True):
    """Stacked bars: each donor's share of every cell cluster, donors grouped by cluster.

    ``data``: the AnnData written by ``tl.fit`` (or ``tl.predict``) or the fitted model.  A
    donor's share is the mean q(M) of its cells; donors are grouped by their donor cluster
    (largest first, separated by lines and labelled below the bars) and sorted within it by
    their share of cell cluster 0.  Donor names are shown up to ``max_labels`` donors.
    """
    _matplotlib()
    v = _View(data, key)
    shares, clusters = v.donor_shares()
    values = shares.to_numpy()
    order = np.lexsort((-values[:, 0], clusters))
    values, names, clusters = values[order], shares.index[order], clusters[order]
    J, C = values.shape
    ax = _new_axes(ax, (max(5.0, 1.5 + 0.18 * J), 4.2))
    colours = _colours(C)
    x = np.arange(J)
    bottom = np.zeros(J)
    for c in range(C):
        ax.bar(x, values[:, c], bottom=bottom, width=0.85, color=colours[c], label=str(c),
               linewidth=0)
        bottom += values[:, c]
    edges = np.nonzero(np.diff(clusters))[0]
    for edge in edges:
        ax.axvline(edge + 0.5, color="black", lw=1.0)
    starts = np.concatenate([[0], edges + 1])
    ends = np.concatenate([edges + 1, [J]])
    for start, end in zip(starts, ends):
        ax.text(0.5 * (start + end - 1), 1.02, f"donor cluster {clusters[start]}",
                ha="center", va="bottom", fontsize="small",
                transform=ax.get_xaxis_transform())
    if J <= max_labels:
        ax.set_xticks(x, labels=[str(n) for n in names], rotation=90, fontsize="x-small")
    else:
        ax.set_xticks([])
    ax.set_xlim(-0.5, J - 0.5)
    ax.set_ylim(0, max(1.0, float(bottom.max())))
    ax.set_ylabel("share of the donor's cells")
    ax.set_xlabel(f"donors ({J}), grouped by donor cluster")
    ax.set_title("Cell-cluster composition of each donor", pad=18)
    if legend:
        ax.legend(title="cell cluster", fontsize="small", loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), ncol=1 if C <= 15 else 2)
    return ax


def coclustering(data, *, ax=None, order="cluster", key="nam"):
    """Heatmap of P(S_j = S_j') between groups.

    ``data``: the AnnData written by ``tl.fit``, the fitted model or its ``Summary``.
    ``order="cluster"``: groups sorted by their cluster (largest first), then by the
    hierarchical order within it, with lines between clusters; ``"hierarchical"``: the
    dendrogram leaf order alone.
    """
    _matplotlib()
    if order not in ("cluster", "hierarchical"):
        raise ValueError(f"order must be 'cluster' or 'hierarchical', got {order!r}.")
    v = _View(data, key)
    P = v.table("coclustering")
    labels = [str(g) for g in P.index]
    P = P.set_axis(labels, axis=0).set_axis(labels, axis=1)
    clusters = v.table("groups")["cluster"]
    clusters = clusters.set_axis([str(g) for g in clusters.index])
    if order == "cluster":
        leaf_rank = {g: i for i, g in enumerate(labels)}
        labels = sorted(labels, key=lambda g: (clusters[g], leaf_rank[g]))
    values = P.loc[labels, labels].to_numpy(dtype=float)
    J = len(labels)
    ax = _new_axes(ax, (6, 5))
    show = J <= 60
    _heatmap(ax, values, labels if show else None, labels if show else None, "magma",
             0.0, 1.0, "P(same group cluster)", annotate=False)
    if show:
        ax.tick_params(axis="x", labelrotation=90, labelsize="x-small")
        ax.tick_params(axis="y", labelsize="x-small")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if order == "cluster":
        counts = clusters.value_counts().sort_index().to_numpy()
        for edge in np.cumsum(counts)[:-1]:
            ax.axhline(edge - 0.5, color="white", lw=0.8)
            ax.axvline(edge - 0.5, color="white", lw=0.8)
    ax.set_xlabel(f"groups ({J}), ordered by {order}")
    ax.set_ylabel("groups")
    ax.set_title("Co-clustering of groups")
    return ax


def cells(data, *, coords=None, ax=None, max_points=_MAX_POINTS, random_state=0, summary=None,
          key="nam", basis=None, **scatter_kw):
    """2-D scatter of the cells coloured by cell cluster.

    ``data``: the AnnData written by ``tl.fit`` (or ``tl.predict``) or the fitted model.
    ``coords`` (N, 2) in the caller's cell order; else ``adata.obsm[basis]``; by default
    ``obsm["X_umap"]`` when the AnnData has it, otherwise the first two principal components
    of y.  At most ``max_points`` cells are drawn (a random subsample) so large cohorts stay
    quick.
    """
    _matplotlib()
    v = _View(data, key, summary=summary)
    labels = v.cell_labels()
    n = labels.size
    if coords is None:
        coords, xlabel, ylabel = v.default_coords(basis)
    else:
        coords = np.asarray(coords, dtype=float)
        if coords.ndim != 2 or coords.shape[0] != n or coords.shape[1] < 2:
            raise ValueError(f"coords must be (n_cells, 2) = ({n}, 2), got "
                             f"{coords.shape}.")
        xlabel, ylabel = "dim 1", "dim 2"
    n_clusters = v.n_cell_clusters()
    idx = np.arange(n)
    if n > max_points:
        idx = np.random.default_rng(random_state).choice(n, max_points, replace=False)
    ax = _new_axes(ax, (6, 5))
    colours = _colours(n_clusters)
    kw = dict(s=4, alpha=0.6, linewidths=0, rasterized=True)
    kw.update(scatter_kw)
    for c in range(n_clusters):
        sel = idx[labels[idx] == c]
        ax.scatter(coords[sel, 0], coords[sel, 1], color=colours[c], label=str(c), **kw)
    ax.legend(title="cell cluster", markerscale=3, fontsize="small", loc="best",
              ncol=1 if n_clusters <= 12 else 2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    shown = f" ({idx.size} of {n} shown)" if idx.size < n else ""
    ax.set_title(f"Cells coloured by cell cluster{shown}")
    return ax


def differential_abundance(data, *, ax=None, key="nam_abundance"):
    """Forest plot of the differences in composition between conditions, per cell cluster.

    ``data``: the table returned by ``tl.differential_abundance`` /
    ``NestedAtomsModel.differential_abundance``, or the AnnData it was written to
    (``uns[key]["table"]``).  Each comparison (a - b) is one row of points per cell cluster
    with its credible interval; filled where the interval excludes 0.
    """
    _matplotlib()
    if _is_anndata(data):
        if key not in data.uns or "table" not in data.uns[key]:
            raise KeyError(f"adata.uns[{key!r}] has no differential-abundance table: run "
                           f"nestedatoms.tl.differential_abundance(adata, condition_key=...) "
                           f"first (it writes uns['<key>_abundance']).")
        table = data.uns[key]["table"]
    elif hasattr(data, "columns") and {"difference", "lower", "upper"} <= set(data.columns):
        table = data
    else:
        raise TypeError(f"expected a differential-abundance table or the AnnData holding "
                        f"one, got {type(data).__name__}.")
    pairs = list(dict.fromkeys(zip(table["condition_a"].astype(str),
                                   table["condition_b"].astype(str))))
    clusters = sorted(table["cell_cluster"].unique())
    ax = _new_axes(ax, (6, 1.2 + 0.4 * len(clusters) * max(1, len(pairs) ** 0.5)))
    colours = _colours(max(len(pairs), 1))
    step = 0.8 / max(len(pairs), 1)
    for i, (a, b) in enumerate(pairs):
        rows = table[(table["condition_a"].astype(str) == a)
                     & (table["condition_b"].astype(str) == b)]
        y = np.searchsorted(clusters, rows["cell_cluster"].to_numpy()) + (
            i - (len(pairs) - 1) / 2) * step
        diff = rows["difference"].to_numpy()
        err = np.vstack([diff - rows["lower"].to_numpy(), rows["upper"].to_numpy() - diff])
        ax.errorbar(diff, y, xerr=err, fmt="none", ecolor=colours[i], elinewidth=1.5,
                    capsize=3, label=f"{a} − {b}")
        differs = rows["differs"].to_numpy(dtype=bool)
        ax.scatter(diff[differs], y[differs], color=colours[i], zorder=3, s=30)
        ax.scatter(diff[~differs], y[~differs], facecolor="white", edgecolor=colours[i],
                   zorder=3, s=30)
    ax.axvline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_yticks(np.arange(len(clusters)), labels=[str(c) for c in clusters])
    ax.invert_yaxis()
    ax.set_ylabel("cell cluster")
    ax.set_xlabel("difference in expected share (filled: interval excludes 0)")
    ax.set_title("Differential abundance between conditions")
    ax.legend(fontsize="small", loc="best")
    return ax


def _principal_components(Y: np.ndarray) -> np.ndarray:
    """The first two principal-component scores of Y (a rotation: clusters are not distorted)."""
    Yc = Y - Y.mean(axis=0)
    _, _, Vt = np.linalg.svd(Yc[:: max(1, Yc.shape[0] // 50000)], full_matrices=False)
    return Yc @ Vt[:2].T


def save_all(data, outdir=".", *, prefix="nestedatoms_", coords=None, summary=None, dpi=120,
             key="nam", basis=None):
    """Write the plots as PNG files into ``outdir``; returns their paths.

    ``data``: the AnnData written by ``tl.fit`` or the fitted model.  Files:
    ``{prefix}elbo.png``, ``{prefix}composition.png``, ``{prefix}donors.png`` (per-donor
    composition), ``{prefix}coclustering.png``, ``{prefix}cells.png`` (``coords``, else
    ``obsm[basis]``, else X_umap when present, else PCs of y), and, for an AnnData that
    holds one (``uns[f"{key}_abundance"]``), ``{prefix}abundance.png``.  For the AnnData of
    ``tl.predict`` only the donor and cell plots (the others describe a fit).  Figures are
    drawn off-screen (no display needed) and closed.
    """
    _matplotlib()
    from matplotlib.figure import Figure

    v = _View(data, key, summary=summary)
    s = v.summary if v.kind != "anndata" else data
    J = len(v.table("groups"))
    jobs = [
        ("donors", (max(6.0, 2.5 + 0.18 * J), 4.8),
         lambda ax: donor_composition(data, ax=ax, key=key)),
        ("cells", (6.5, 5.5), lambda ax: cells(data, coords=coords, ax=ax, summary=v.summary,
                                               key=key, basis=basis)),
    ]
    if not (v.kind == "anndata" and v.uns.get("predicted", False)):   # tl.predict: no fit
        n_rows, n_cols = v.table("composition").shape
        jobs[:0] = [
            ("elbo", (6.5, 4.2), lambda ax: elbo_traces(data, ax=ax, key=key)),
            ("composition", (2.0 + 0.7 * n_cols, 1.6 + 0.55 * n_rows),
             lambda ax: composition(s, ax=ax, key=key)),
        ]
        jobs.insert(3, ("coclustering", (7, 6), lambda ax: coclustering(s, ax=ax, key=key)))
    abundance_key = f"{key}_abundance"
    if v.kind == "anndata" and abundance_key in data.uns:
        jobs.append(("abundance", (6.5, 4.5),
                     lambda ax: differential_abundance(data, ax=ax, key=abundance_key)))
    os.makedirs(outdir, exist_ok=True)
    paths = []
    for name, size, draw in jobs:
        fig = Figure(figsize=size, layout="constrained")
        draw(fig.add_subplot())
        path = os.path.join(outdir, f"{prefix}{name}.png")
        with atomic_path(path, suffix=".png") as tmp:     # a killed run leaves the old PNG
            fig.savefig(tmp, dpi=dpi, format="png")
        paths.append(path)
    return paths


# The names save_all writes (the command line checks them before it fits).
PLOT_NAMES = ("elbo", "composition", "donors", "coclustering", "cells")


def plot_paths(outdir=".", prefix="nestedatoms_"):
    """The paths :func:`save_all` writes into ``outdir``, in its order."""
    return [os.path.join(outdir, f"{prefix}{name}.png") for name in PLOT_NAMES]
