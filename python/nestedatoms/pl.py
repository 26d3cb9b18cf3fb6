"""Plots of a fitted model (matplotlib, an optional extra: ``pip install "nestedatoms[plot]"``).

Every function draws into ``ax`` when given (else a new figure) and returns the Axes, so the
plots compose with the rest of a matplotlib figure; :func:`save_all` writes all of them as PNG
files.  Clusters are numbered as in ``model.summary()`` (by size, largest first).
"""

from __future__ import annotations

import os

import numpy as np

from ._atomic import atomic_path

__all__ = ["elbo_traces", "composition", "coclustering", "cells", "save_all", "plot_paths"]

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


def _summary(obj):
    from ._summary import Summary

    if isinstance(obj, Summary):
        return obj
    if hasattr(obj, "summary"):
        return obj.summary()
    raise TypeError(f"expected a fitted NestedAtomsModel or a Summary, got {type(obj).__name__}.")


def elbo_traces(model, ax=None):
    """The ELBO after every sweep, one line per restart; the kept restart is drawn bold.

    The y axis is the gap to the best final ELBO (log scale), so the convergence of every
    restart is visible however large the ELBO itself is.
    """
    _matplotlib()
    ax = _new_axes(ax, (6, 4))
    traces = [np.asarray(t) for t in model.elbo_traces_]
    best_final = max(t[-1] for t in traces if t.size)
    scale = max(abs(best_final), 1.0)
    floor = 1e-12 * scale   # the converged run sits at 0: show it at the plot's floor
    kept = getattr(model, "best_restart_", None)
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


def composition(model_or_summary, ax=None, annotate=None):
    """Heatmap of each group cluster's cell-cluster composition (rows sum to 1)."""
    _matplotlib()
    s = _summary(model_or_summary)
    comp = s.composition.to_numpy()
    ax = _new_axes(ax, (1.2 + 0.6 * comp.shape[1], 1.2 + 0.5 * comp.shape[0]))
    sizes = s.group_clusters["n_groups"].to_numpy()
    rows = [f"{k} (n={n})" for k, n in zip(s.composition.index, sizes)]
    if annotate is None:
        annotate = comp.size <= 200
    _heatmap(ax, comp, rows, list(s.composition.columns), "viridis", 0.0,
             max(float(comp.max()), 1e-12), "fraction of the cluster's cells", annotate)
    ax.set_xlabel("cell cluster")
    ax.set_ylabel("group cluster (number of groups)")
    ax.set_title("Composition of each group cluster")
    return ax


def coclustering(model_or_summary, ax=None, order="cluster"):
    """Heatmap of P(S_j = S_j') between groups.

    ``order="cluster"``: groups sorted by their cluster (largest first), then by the
    hierarchical order within it, with lines between clusters; ``"hierarchical"``: the
    dendrogram leaf order alone.
    """
    _matplotlib()
    s = _summary(model_or_summary)
    if order not in ("cluster", "hierarchical"):
        raise ValueError(f"order must be 'cluster' or 'hierarchical', got {order!r}.")
    P = s.coclustering
    labels = list(P.index)
    if order == "cluster":
        leaf_rank = {g: i for i, g in enumerate(labels)}
        clusters = s.groups["cluster"]
        labels = sorted(labels, key=lambda g: (clusters[g], leaf_rank[g]))
    values = P.loc[labels, labels].to_numpy()
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
        counts = s.groups["cluster"].value_counts().sort_index().to_numpy()
        for edge in np.cumsum(counts)[:-1]:
            ax.axhline(edge - 0.5, color="white", lw=0.8)
            ax.axvline(edge - 0.5, color="white", lw=0.8)
    ax.set_xlabel(f"groups ({J}), ordered by {order}")
    ax.set_ylabel("groups")
    ax.set_title("Co-clustering of groups")
    return ax


def cells(model, coords=None, ax=None, max_points=_MAX_POINTS, random_state=0, summary=None,
          **scatter_kw):
    """2-D scatter of the training cells coloured by cell cluster.

    ``coords`` (N, 2) in the caller's cell order (for example a UMAP); default: the first two
    principal components of the fitted Y.  At most ``max_points`` cells are drawn
    (a random subsample) so large cohorts stay quick.
    """
    _matplotlib()
    s = _summary(summary if summary is not None else model)
    data = model.problem_.data
    if coords is None:
        Y = data.to_caller_order(data.Y)
        if Y.shape[1] < 2:
            raise ValueError("the fitted Y has one column; pass coords (N, 2) to plot cells.")
        coords, xlabel, ylabel = _principal_components(Y), "PC1 of y", "PC2 of y"
    else:
        coords = np.asarray(coords, dtype=float)
        if coords.ndim != 2 or coords.shape[0] != data.n_cells or coords.shape[1] < 2:
            raise ValueError(f"coords must be (n_cells, 2) = ({data.n_cells}, 2), got "
                             f"{coords.shape}.")
        xlabel, ylabel = "dim 1", "dim 2"
    rank = np.full(model.cell_probs_.shape[1], -1)
    rank[s.cell_cluster_index] = np.arange(s.n_cell_clusters)
    labels = rank[model.cell_labels_]
    n = labels.size
    idx = np.arange(n)
    if n > max_points:
        idx = np.random.default_rng(random_state).choice(n, max_points, replace=False)
    ax = _new_axes(ax, (6, 5))
    import matplotlib

    cmap = matplotlib.colormaps["tab20" if s.n_cell_clusters > 10 else "tab10"]
    kw = dict(s=4, alpha=0.6, linewidths=0, rasterized=True)
    kw.update(scatter_kw)
    for c in range(s.n_cell_clusters):
        sel = idx[labels[idx] == c]
        ax.scatter(coords[sel, 0], coords[sel, 1], color=cmap(c % cmap.N), label=str(c), **kw)
    ax.legend(title="cell cluster", markerscale=3, fontsize="small", loc="best",
              ncol=1 if s.n_cell_clusters <= 12 else 2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    shown = f" ({idx.size} of {n} shown)" if idx.size < n else ""
    ax.set_title(f"Cells coloured by cell cluster{shown}")
    return ax


def _principal_components(Y: np.ndarray) -> np.ndarray:
    """The first two principal-component scores of Y (a rotation: clusters are not distorted)."""
    Yc = Y - Y.mean(axis=0)
    _, _, Vt = np.linalg.svd(Yc[:: max(1, Yc.shape[0] // 50000)], full_matrices=False)
    return Yc @ Vt[:2].T


def save_all(model, outdir=".", prefix="nestedatoms_", coords=None, summary=None, dpi=120):
    """Write the four plots as PNG files into ``outdir``; returns their paths.

    Files: ``{prefix}elbo.png``, ``{prefix}composition.png``, ``{prefix}coclustering.png``,
    ``{prefix}cells.png``.  Figures are drawn off-screen (no display needed) and closed.
    """
    _matplotlib()
    from matplotlib.figure import Figure

    s = summary if summary is not None else model.summary()
    os.makedirs(outdir, exist_ok=True)
    n_rows, n_cols = s.composition.shape
    jobs = [
        ("elbo", (6.5, 4.2), lambda ax: elbo_traces(model, ax=ax)),
        ("composition", (2.0 + 0.7 * n_cols, 1.6 + 0.55 * n_rows),
         lambda ax: composition(s, ax=ax)),
        ("coclustering", (7, 6), lambda ax: coclustering(s, ax=ax)),
        ("cells", (6.5, 5.5), lambda ax: cells(model, coords=coords, ax=ax, summary=s)),
    ]
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
PLOT_NAMES = ("elbo", "composition", "coclustering", "cells")


def plot_paths(outdir=".", prefix="nestedatoms_"):
    """The paths :func:`save_all` writes into ``outdir``, in its order."""
    return [os.path.join(outdir, f"{prefix}{name}.png") for name in PLOT_NAMES]
