"""Fit the Nested Atoms Model on an AnnData, scanpy style (``nestedatoms.tl.fit``).

Only ``adata.obsm[use_rep]`` and ``adata.obs`` are read, so a backed (on-disk) AnnData with a
large expression matrix works without loading it.  The caller's AnnData is modified only at the
documented result keys (or not at all with ``copy=True``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["fit"]


def _read_inputs(adata, group_key, use_rep):
    if group_key not in adata.obs.columns:
        raise KeyError(f"group_key {group_key!r} is not a column of adata.obs; available "
                       f"columns: {list(adata.obs.columns)[:20]}.")
    if use_rep == "X":
        if adata.isbacked:
            raise ValueError("use_rep='X' would load the backed expression matrix; compute a "
                             "low-dimensional representation (e.g. sc.pp.pca) and pass its "
                             "obsm key.")
        Y = adata.X
    else:
        if use_rep not in adata.obsm:
            raise KeyError(
                f"use_rep {use_rep!r} is not in adata.obsm (keys: {list(adata.obsm.keys())}); "
                f"compute it first, e.g. scanpy.pp.pca(adata) for 'X_pca'."
            )
        Y = adata.obsm[use_rep]
    groups = adata.obs[group_key]
    if groups.isna().any():
        bad = int(groups.isna().sum())
        raise ValueError(f"adata.obs[{group_key!r}] has {bad} missing value(s); every cell "
                         f"needs a group label (drop those cells first).")
    return Y, groups.to_numpy()


def _covariate_table(adata, group_key, group_covariates, labels):
    """Group covariates as a numeric DataFrame indexed by group label, or None."""
    import pandas as pd

    if group_covariates is None:
        return None
    if isinstance(group_covariates, pd.DataFrame):
        table = group_covariates
        missing = pd.Index(labels).difference(table.index)
        if len(missing):
            raise ValueError(
                f"group_covariates has no row for group(s) {missing.tolist()[:10]} of "
                f"adata.obs[{group_key!r}]; index it by the group labels."
            )
        # rows of groups without cells are dropped; by position (boolean labels are no mask)
        table = table.iloc[table.index.get_indexer(pd.Index(labels))]
    else:
        columns = [group_covariates] if isinstance(group_covariates, str) else list(
            group_covariates)
        absent = [c for c in columns if c not in adata.obs.columns]
        if absent:
            raise KeyError(f"group_covariates column(s) {absent} are not in adata.obs.")
        obs = adata.obs[[group_key] + columns]
        n_values = obs.groupby(group_key, observed=True)[columns].nunique(dropna=False)
        varying = [c for c in columns if (n_values[c] > 1).any()]
        if varying:
            raise ValueError(
                f"group_covariates column(s) {varying} vary within a group of {group_key!r}; "
                f"a group covariate must be constant over each group's cells."
            )
        table = obs.groupby(group_key, observed=True)[columns].first()
        table = table.iloc[table.index.get_indexer(pd.Index(labels))]
    numeric = table.select_dtypes(include=["number", "bool"])
    other = [c for c in table.columns if c not in numeric.columns]
    missing = table[other].isna() if other else None
    if missing is not None and missing.to_numpy().any():
        # a numeric NaN is refused (by the fit); a categorical one would silently become an
        # all-zero indicator row, so it is refused here the same way
        bad = missing.any(axis=1)
        cols = [c for c in other if missing[c].any()]
        raise ValueError(
            f"group_covariates column(s) {cols} are missing (NaN) for group(s) "
            f"{table.index[bad].tolist()[:10]}; fill them in, or drop those groups' cells.")
    if other:
        # Categorical covariates enter as one indicator column per level (as a sample table
        # for a Gaussian x would), numeric ones as they are.
        dummies = pd.get_dummies(table[other].astype("category"), dtype=float)
        table = pd.concat([numeric.astype(float), dummies], axis=1)
    return table.astype(float)


def _json_params(params: dict) -> dict:
    """Estimator parameters in a form h5ad can store (None is left out)."""
    from ._io import _json_safe

    out = {}
    for key, value in params.items():
        value = _json_safe(value)
        if value is None:
            continue
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
        out[key] = value
    return out


def _str_index(df, name=None):
    """A table as h5ad stores it: string labels, unnamed columns (so it reads back equal)."""
    out = df.copy()
    out.index = out.index.astype(str)
    out.columns = [str(c) for c in out.columns]
    if name is not None:
        out.index.name = name
    return out


def fit(adata, group_key="donor_id", use_rep="X_pca", group_covariates=None, key_added="nam",
        copy=False, rank_genes="auto", return_model=False, **model_kwargs):
    """Cluster individuals and their cells with the Nested Atoms Model.

    Parameters
    ----------
    adata : AnnData
        Cells in rows; may be backed (only ``obsm[use_rep]`` and ``obs`` are read).
    group_key : str
        ``obs`` column holding each cell's group (individual, donor) label.
    use_rep : str
        ``obsm`` key of the cell representation y (e.g. "X_pca", "X_scVI").
    group_covariates : DataFrame, str or list of str, optional
        Group-level x: a DataFrame indexed by group label (rows of absent groups are dropped),
        or ``obs`` column(s) constant within each group.  Non-numeric columns become one
        indicator column per level.  None fits the common atoms model (no x).
    key_added : str
        Prefix of every result key.
    copy : bool
        Return a modified copy instead of writing into ``adata``.
    rank_genes : {"auto", True, False}
        Marker genes per cell cluster with ``scanpy.tl.rank_genes_groups`` (written to
        ``uns[f"{key_added}_markers"]``).  "auto": when scanpy is installed and the AnnData is
        in memory with a non-empty ``X``; True: require it.
    return_model : bool
        Also return the fitted ``NestedAtomsModel`` (for ``predict``, ``save``, plots).
    **model_kwargs
        Passed to ``NestedAtomsModel`` (``random_state`` defaults to 0 here, as in scanpy).

    Writes
    ------
    ``obs[f"{key_added}_cell_cluster"]``, ``obs[f"{key_added}_group_cluster"]`` : categorical
        Cell cluster of each cell and group cluster of its group, numbered by size ("0" is the
        largest), as in ``model.summary()``.
    ``obsm[f"{key_added}_cell_probs"]`` : (n_cells, L)
        q(M); column c is cell cluster c, columns past the occupied clusters are empty atoms.
    ``uns[key_added]`` : dict
        ``params`` (estimator parameters), ``group_key``, ``use_rep``, ``covariates`` (the
        columns of x), ``groups`` (table indexed by group label: cluster, probability,
        n_cells), ``group_probs`` (groups x group clusters), ``group_clusters``,
        ``cell_clusters``, ``composition``, ``cell_weights``, ``differential_abundance``,
        ``coclustering`` (tables as in ``Summary``), ``cell_means``, ``elbo``, ``elbo_trace``,
        ``elbo_traces`` (one per restart), ``n_iter``, ``converged``,
        ``group_cluster_index`` / ``cell_cluster_index`` (summary number -> model index).

    Returns
    -------
    The AnnData when ``copy=True``, else None; with ``return_model=True`` the model too (as a
    pair ``(adata_or_None, model)``).
    """
    import pandas as pd

    from ._model import NestedAtomsModel

    if rank_genes not in ("auto", True, False):
        raise ValueError(f"rank_genes must be 'auto', True or False, got {rank_genes!r}.")
    _check_result_keys(adata, group_key, group_covariates, key_added)
    if copy:
        if adata.isbacked:
            raise ValueError("copy=True on a backed AnnData would need its expression matrix "
                             "in memory; use copy=False (results go to the in-memory obs, obsm "
                             "and uns) or adata.to_memory() first.")
        adata = adata.copy()
    Y, cell_groups = _read_inputs(adata, group_key, use_rep)
    labels = pd.unique(cell_groups)
    X = _covariate_table(adata, group_key, group_covariates, labels)
    model_kwargs.setdefault("random_state", 0)
    model = NestedAtomsModel(**model_kwargs).fit(Y, cell_groups, X)
    summ = model.summary()
    write_results(adata, model, summ, key_added, group_key=group_key, use_rep=use_rep,
                  covariates=None if X is None else list(X.columns))
    _rank_genes(adata, key_added, rank_genes)
    out = adata if copy else None
    return (out, model) if return_model else out


def result_obs_keys(key_added):
    """The obs columns :func:`fit` writes."""
    return (f"{key_added}_cell_cluster", f"{key_added}_group_cluster")


def _check_result_keys(adata, group_key, group_covariates, key_added):
    """Refuse a key_added whose results would overwrite the input columns being read."""
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"key_added must be a non-empty string, got {key_added!r}.")
    inputs = [group_key]
    if isinstance(group_covariates, str):
        inputs.append(group_covariates)
    elif group_covariates is not None and not hasattr(group_covariates, "columns"):
        inputs += list(group_covariates)
    # key_added itself too: it names the results (uns[key_added]), and a grouping column of
    # that name reads as one of them
    clash = [c for c in inputs if c in (key_added, *result_obs_keys(key_added))]
    if clash:
        raise ValueError(
            f"adata.obs column(s) {clash} are inputs of this fit but also where its results "
            f"go (key_added={key_added!r} writes {list(result_obs_keys(key_added))}); pass "
            f"another key_added, e.g. key_added='nam2'.")


def write_results(adata, model, summ, key_added, group_key, use_rep, covariates=None):
    """Write a fitted model's results into ``adata`` (the keys documented in :func:`fit`)."""
    import pandas as pd

    L = model.cell_probs_.shape[1]
    rest = np.setdiff1d(np.arange(L), summ.cell_cluster_index)
    column_order = np.concatenate([summ.cell_cluster_index, rest])
    rank = np.empty(L, dtype=np.int64)
    rank[column_order] = np.arange(L)
    cell_labels = rank[model.cell_labels_]
    cats_c = [str(c) for c in range(summ.n_cell_clusters)]
    cats_g = [str(c) for c in range(summ.n_group_clusters)]
    group_of_cell = pd.Index(model.groups_).get_indexer(adata.obs[group_key].to_numpy())
    group_cluster = summ.groups["cluster"].to_numpy()[group_of_cell]
    adata.obs[f"{key_added}_cell_cluster"] = pd.Categorical(
        cell_labels.astype(str), categories=cats_c)
    adata.obs[f"{key_added}_group_cluster"] = pd.Categorical(
        group_cluster.astype(str), categories=cats_g)
    adata.obsm[f"{key_added}_cell_probs"] = model.cell_probs_[:, column_order]

    group_probs = pd.DataFrame(
        model.group_probs_[:, summ.group_cluster_index], index=pd.Index(model.groups_),
        columns=[str(c) for c in range(summ.n_group_clusters)])
    uns = {
        "params": _json_params(model.get_params()),
        "group_key": group_key,
        "use_rep": use_rep,
        "groups": _str_index(summ.groups, "group"),
        "group_probs": _str_index(group_probs, "group"),
        "group_clusters": _str_index(summ.group_clusters),
        "cell_clusters": _str_index(summ.cell_clusters),
        "composition": _str_index(summ.composition),
        "cell_weights": summ.cell_weights,
        "differential_abundance": summ.differential_abundance,
        "coclustering": _str_index(summ.coclustering),
        "cell_means": _str_index(summ.cell_means),
        "elbo": float(model.elbo_),
        "elbo_trace": np.asarray(model.elbo_trace_),
        "elbo_traces": {str(r): np.asarray(t) for r, t in enumerate(model.elbo_traces_)},
        "n_iter": int(model.n_iter_),
        "converged": bool(model.converged_),
        "group_cluster_index": np.asarray(summ.group_cluster_index),
        "cell_cluster_index": np.asarray(summ.cell_cluster_index),
    }
    if covariates is not None:
        uns["covariates"] = [str(c) for c in covariates]
    if model.group_prior_scale_ is not None:    # h5ad stores no None: absent without x
        uns["group_prior_scale"] = float(model.group_prior_scale_)
    adata.uns[key_added] = uns


def _rank_genes(adata, key_added, mode):
    """Marker genes per cell cluster through scanpy, when asked for and possible."""
    if mode is False:
        return
    try:
        import scanpy as sc
    except ImportError:
        if mode is True:
            raise ImportError('rank_genes=True needs scanpy: pip install "nestedatoms[scanpy]"'
                              ) from None
        return
    reason = None
    if adata.isbacked:
        reason = "the AnnData is backed (ranking genes would load its expression matrix)"
    elif adata.X is None or adata.n_vars == 0:
        reason = "the AnnData carries no expression matrix"
    elif adata.obs[f"{key_added}_cell_cluster"].nunique() < 2:
        reason = "there is only one cell cluster"
    if reason is not None:
        if mode is True:
            raise ValueError(f"cannot rank marker genes: {reason}.")
        return
    sc.tl.rank_genes_groups(adata, groupby=f"{key_added}_cell_cluster",
                            key_added=f"{key_added}_markers")
