"""Fit the Nested Atoms Model on an AnnData, scanpy style (``nestedatoms.tl.fit``).

Only ``adata.obsm[use_rep]`` and ``adata.obs`` are read, so a backed (on-disk) AnnData with a
large expression matrix works without loading it.  The caller's AnnData is modified only at the
documented result keys (or not at all with ``copy=True``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["fit", "predict", "differential_abundance", "CategoricalGroupFeatureWarning"]


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


class CategoricalGroupFeatureWarning(UserWarning):
    """A non-numeric column was one-hot encoded into the group features x."""


def _resolve_alias(new, old, new_name, old_name, owner="nestedatoms.tl.fit"):
    """The value of a renamed argument, with a FutureWarning when the old name is used."""
    import warnings

    if old is None:
        return new
    if new is not None:
        raise TypeError(f"{owner} got both {new_name} and its deprecated alias {old_name}; "
                        f"pass {new_name} only.")
    warnings.warn(f"{old_name} is deprecated and will be removed in the next release; use "
                  f"{new_name} (the same thing: the features individuals are clustered by).",
                  FutureWarning, stacklevel=3)
    return old


def _group_feature_table(adata, group_key, group_features, labels):
    """Group features x as a numeric DataFrame indexed by group label, or None.

    Rule for a table with rows of groups that have no cells (shared with the estimator's
    ``fit`` and ``predict``): those rows are ignored.
    """
    import pandas as pd

    if group_features is None:
        return None
    if isinstance(group_features, pd.DataFrame):
        table = group_features
        if table.index.has_duplicates:
            dup = table.index[table.index.duplicated()].unique().tolist()
            raise ValueError(f"group_features has duplicate index labels {dup[:10]}; give one "
                             f"row per group.")
        missing = pd.Index(labels).difference(table.index)
        if len(missing):
            raise ValueError(
                f"group_features has no row for group(s) {missing.tolist()[:10]} of "
                f"adata.obs[{group_key!r}]; index it by the group labels."
            )
        # rows of groups without cells are ignored; by position (boolean labels are no mask)
        table = table.iloc[table.index.get_indexer(pd.Index(labels))]
    else:
        columns = [group_features] if isinstance(group_features, str) else list(
            group_features)
        absent = [c for c in columns if c not in adata.obs.columns]
        if absent:
            raise KeyError(f"group_features column(s) {absent} are not in adata.obs.")
        obs = adata.obs[[group_key] + columns]
        n_values = obs.groupby(group_key, observed=True)[columns].nunique(dropna=False)
        varying = [c for c in columns if (n_values[c] > 1).any()]
        if varying:
            raise ValueError(
                f"group_features column(s) {varying} vary within a group of {group_key!r}; "
                f"a group feature must be constant over each group's cells."
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
            f"group_features column(s) {cols} are missing (NaN) for group(s) "
            f"{table.index[bad].tolist()[:10]}; fill them in, or drop those groups' cells.")
    if other:
        import warnings

        # pandas does the encoding: one indicator column per level.
        dummies = pd.get_dummies(table[other].astype("category"), dtype=float)
        warnings.warn(
            f"group_features column(s) {other} are categorical and were one-hot encoded into "
            f"{dummies.shape[1]} indicator column(s) {list(dummies.columns)[:8]}. The model "
            f"clusters individuals by these features, so individuals will tend to split by "
            f"these categories (e.g. sex, batch). If you meant to adjust for them, leave them "
            f"out of group_features; pass only continuous, comparable features such as "
            f"genotype principal components.", CategoricalGroupFeatureWarning, stacklevel=3)
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


def fit(adata, *, group_key="donor_id", use_rep="X_pca", group_features=None, key_added="nam",
        copy=False, rank_genes="auto", return_model=False, group_covariates=None,
        init_group_labels=None, init_cell_labels=None, model_file=None, **model_kwargs):
    """Cluster individuals and their cells with the Nested Atoms Model.

    Parameters
    ----------
    adata : AnnData
        Cells in rows; may be backed (only ``obsm[use_rep]`` and ``obs`` are read), or read
        lazily (``anndata.experimental.read_lazy``, or any AnnData whose ``obsm[use_rep]``
        is a dask array, cells sorted by ``group_key``): the fit then runs on dask (the
        active scheduler; see ``NestedAtomsModel.batch_size``), ``obs`` is read into memory
        and ``obsm[f"{key_added}_cell_probs"]`` is a lazy dask array.
    group_key : str
        ``obs`` column holding each cell's group (individual, donor) label.
    use_rep : str
        ``obsm`` key of the cell representation y (e.g. "X_pca", "X_scVI").  The cell
        clusters have full covariances, so keep it low-dimensional (a warning is raised above
        50 dimensions: run ``sc.pp.pca`` and pass ``use_rep="X_pca"``), or pass
        ``covariance_type="diag"`` (diagonal covariances, linear in the dimension; for
        ``use_rep="X"`` on genes, see docs/diag.md).
    group_features : DataFrame, str or list of str, optional
        The group-level vector x that individuals are **clustered by**, together with the
        make-up of their cells.  Put here continuous, comparable features you want donors
        grouped by, such as genotype principal components.  Do not put here what you want to
        *adjust for* (sex, batch, age, unless you mean to cluster on it): the model makes
        clusters that separate donors by these features.  A DataFrame indexed by group label
        (rows of groups without cells are ignored), or ``obs`` column(s) constant within each
        group.  Non-numeric columns become one indicator column per level, with a
        ``CategoricalGroupFeatureWarning``.  None (default) clusters donors by their cell
        make-up alone (the common atoms model).
    key_added : str
        Prefix of every result key.
    copy : bool
        Return a modified copy instead of writing into ``adata``.
    rank_genes : {"auto", True, False}
        Marker genes per cell cluster with ``scanpy.tl.rank_genes_groups`` (written to
        ``uns[f"{key_added}_markers"]``).  "auto": when scanpy is installed and the AnnData is
        in memory with a non-empty ``X``; True: require it.
    return_model : bool
        Also return the fitted ``NestedAtomsModel`` (for ``tl.predict``, ``save``, plots).
    group_covariates : deprecated
        The former name of ``group_features`` (FutureWarning; removed in the next release).
    init_group_labels : str or pandas.Series, optional
        Start the first restart from known donor labels: an ``obs`` column constant within
        each group (e.g. a clinical group), or a Series indexed by group label.  NaN: no label.
    init_cell_labels : str or array-like, optional
        Start from known cell labels: an ``obs`` column (e.g. "leiden") or one label per cell.
        Both as in :meth:`NestedAtomsModel.fit`: a start, not a constraint.
    model_file : str or path, optional
        Also save the fitted model there (``model.save``, atomically; an existing file is
        replaced) and record its path in ``uns[key_added]["model_file"]``, so that
        :func:`predict` can map new data onto this AnnData (the AnnData itself holds the
        results, not the variational state the mapping needs).
    **model_kwargs
        Passed to ``NestedAtomsModel`` (``random_state`` defaults to 0 here, as in scanpy).
        ``verbose`` defaults to 1 here: a progress bar appears when a restart runs longer
        than a few seconds (``verbose=0`` hides it).

    Writes
    ------
    ``obs[f"{key_added}_cell_cluster"]``, ``obs[f"{key_added}_group_cluster"]`` : categorical
        Cell cluster of each cell and group cluster of its group, numbered by size ("0" is the
        largest), as in ``model.summary()``.
    ``obsm[f"{key_added}_cell_probs"]`` : (n_cells, n occupied cell clusters)
        q(M) restricted to the occupied cell clusters: column c is cell cluster c;
        ``uns[key_added]["cell_cluster_index"][c]`` is its index in the model.
    ``uns[key_added]`` : dict
        ``params`` (estimator parameters), ``group_key``, ``use_rep``, ``group_features`` (the
        columns of x), ``groups`` (table indexed by group label: cluster, probability,
        n_cells), ``group_probs`` (groups x group clusters), ``group_clusters``,
        ``cell_clusters``, ``composition``, ``cell_weights``, ``differential_abundance``,
        ``coclustering`` (tables as in ``Summary``), ``cell_means``, ``elbo``, ``elbo_trace``,
        ``elbo_traces`` (one per restart), ``best_restart``, ``n_iter``, ``converged``,
        ``group_cluster_index`` / ``cell_cluster_index`` (summary number -> model index),
        ``posterior`` (q(S) and the Beta sticks of q(u), in model indices, read by
        :func:`differential_abundance`).

    Returns
    -------
    As scanpy: None, or the modified copy with ``copy=True``.  With ``return_model=True``:
    the model (``copy=False``), or ``(adata_copy, model)`` (``copy=True``).
    """
    import pandas as pd

    from ._model import NestedAtomsModel

    group_features = _resolve_alias(group_features, group_covariates, "group_features",
                                    "group_covariates")
    if rank_genes not in ("auto", True, False):
        raise ValueError(f"rank_genes must be 'auto', True or False, got {rank_genes!r}.")
    if not isinstance(adata.obs, pd.DataFrame):
        # A lazily read AnnData (anndata.experimental.read_lazy): its obs, one row per cell,
        # is read into memory (the fit needs every cell's group, and the results are written
        # there); obsm[use_rep] stays a dask array and the fit runs on dask (``_dask``).
        adata.obs = adata.obs.to_memory()
    _check_result_keys(adata, group_key, group_features, key_added)
    if copy:
        if adata.isbacked:
            raise ValueError("copy=True on a backed AnnData would need its expression matrix "
                             "in memory; use copy=False (results go to the in-memory obs, obsm "
                             "and uns) or adata.to_memory() first.")
        adata = adata.copy()
    Y, cell_groups = _read_inputs(adata, group_key, use_rep)
    labels = pd.unique(cell_groups)
    X = _group_feature_table(adata, group_key, group_features, labels)
    model_kwargs.setdefault("random_state", 0)
    delayed_progress = "verbose" not in model_kwargs
    model_kwargs.setdefault("verbose", 1)
    model = NestedAtomsModel(**model_kwargs)
    if delayed_progress:
        # Not a parameter (get_params is unchanged): the bar shows only for slow restarts.
        model._progress_delay = PROGRESS_DELAY_SECONDS
    model.fit(Y, cell_groups, X,
              init_group_labels=_group_start(adata, group_key, init_group_labels),
              init_cell_labels=(adata.obs[init_cell_labels].to_numpy(dtype=object)
                                if isinstance(init_cell_labels, str) else init_cell_labels))
    summ = model.summary()
    write_results(adata, model, summ, key_added, group_key=group_key, use_rep=use_rep,
                  group_features=None if X is None else list(X.columns))
    if model_file is not None:
        import os

        model.save(model_file)
        adata.uns[key_added]["model_file"] = os.path.abspath(os.fspath(model_file))
    _rank_genes(adata, key_added, rank_genes)
    if return_model:
        return (adata, model) if copy else model
    return adata if copy else None


def _group_start(adata, group_key, init_group_labels):
    """``init_group_labels`` as a Series indexed by group label (an obs column is read once
    per group and must be constant within it)."""
    import pandas as pd

    if not isinstance(init_group_labels, str):
        return init_group_labels
    if init_group_labels not in adata.obs:
        raise KeyError(f"init_group_labels={init_group_labels!r} is not an obs column; give "
                       f"a column constant within each {group_key!r}, or a pandas Series "
                       f"indexed by group label.")
    frame = pd.DataFrame({"g": adata.obs[group_key].to_numpy(dtype=object),
                          "v": adata.obs[init_group_labels].to_numpy(dtype=object)})
    distinct = frame.dropna().groupby("g")["v"].nunique()
    varying = distinct.index[distinct.to_numpy() > 1].tolist()
    if varying:
        raise ValueError(f"obs column {init_group_labels!r} varies within group(s) "
                         f"{varying[:10]}; a group's starting label must be one value.")
    return frame.groupby("g")["v"].first()


# tl.fit's progress bar appears once a restart has run this long (tqdm's ``delay``).
PROGRESS_DELAY_SECONDS = 3.0


def result_obs_keys(key_added):
    """The obs columns :func:`fit` writes."""
    return (f"{key_added}_cell_cluster", f"{key_added}_group_cluster")


def _check_result_keys(adata, group_key, group_features, key_added):
    """Refuse a key_added whose results would overwrite the input columns being read."""
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"key_added must be a non-empty string, got {key_added!r}.")
    inputs = [group_key]
    if isinstance(group_features, str):
        inputs.append(group_features)
    elif group_features is not None and not hasattr(group_features, "columns"):
        inputs += list(group_features)
    # key_added itself too: it names the results (uns[key_added]), and a grouping column of
    # that name reads as one of them
    clash = [c for c in inputs if c in (key_added, *result_obs_keys(key_added))]
    if clash:
        raise ValueError(
            f"adata.obs column(s) {clash} are inputs of this fit but also where its results "
            f"go (key_added={key_added!r} writes {list(result_obs_keys(key_added))}); pass "
            f"another key_added, e.g. key_added='nam2'.")


def write_results(adata, model, summ, key_added, group_key, use_rep, group_features=None):
    """Write a fitted model's results into ``adata`` (the keys documented in :func:`fit`)."""
    import pandas as pd

    L = model.cell_probs_.shape[1]
    rank = np.full(L, -1, dtype=np.int64)
    rank[summ.cell_cluster_index] = np.arange(summ.n_cell_clusters)
    cell_labels = rank[model.cell_labels_]        # every argmax label is an occupied cluster
    cats_c = [str(c) for c in range(summ.n_cell_clusters)]
    cats_g = [str(c) for c in range(summ.n_group_clusters)]
    group_of_cell = pd.Index(model.groups_).get_indexer(adata.obs[group_key].to_numpy())
    group_cluster = summ.groups["cluster"].to_numpy()[group_of_cell]
    adata.obs[f"{key_added}_cell_cluster"] = pd.Categorical(
        cell_labels.astype(str), categories=cats_c)
    adata.obs[f"{key_added}_group_cluster"] = pd.Categorical(
        group_cluster.astype(str), categories=cats_g)
    # Only the occupied clusters: the empty atoms of the truncation carry no information.
    # (A fit on dask gives a lazy dask array, written as one: 8 N L bytes need not fit.)
    probs = model.cell_probs_[:, summ.cell_cluster_index]
    adata.obsm[f"{key_added}_cell_probs"] = (
        probs if not isinstance(probs, np.ndarray) and hasattr(probs, "chunks")
        else np.ascontiguousarray(probs))

    group_probs = pd.DataFrame(
        model.group_probs_[:, summ.group_cluster_index], index=pd.Index(model.groups_),
        columns=[str(c) for c in range(summ.n_group_clusters)])
    st = model.state_
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
        "best_restart": int(model.best_restart_),
        "n_iter": int(model.n_iter_),
        "converged": bool(model.converged_),
        "group_cluster_index": np.asarray(summ.group_cluster_index),
        "cell_cluster_index": np.asarray(summ.cell_cluster_index),
        # What differential_abundance needs to draw from q without the model: q(S) of every
        # group (rows in the order of uns["groups"]) and the Beta sticks of q(u), all in the
        # model's internal cluster indices.
        "posterior": {"group_probs": np.asarray(st.rho, dtype=float).copy(),
                      "cell_sticks_a": np.asarray(st.u_a, dtype=float).copy(),
                      "cell_sticks_b": np.asarray(st.u_b, dtype=float).copy()},
    }
    if group_features is not None:
        uns["group_features"] = [str(c) for c in group_features]
    if model.group_prior_scale_ is not None:    # h5ad stores no None: absent without x
        uns["group_prior_scale"] = float(model.group_prior_scale_)
    # inf: NAM exactly (the donors showed no variation beyond chance)
    uns["donor_concentration"] = float(getattr(model, "donor_concentration_", np.inf))
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
    elif hasattr(adata.X, "chunks") and not isinstance(adata.X, np.ndarray):
        reason = "the expression matrix is a lazy dask array (ranking genes would load it)"
    elif adata.obs[f"{key_added}_cell_cluster"].nunique() < 2:
        reason = "there is only one cell cluster"
    if reason is not None:
        if mode is True:
            raise ValueError(f"cannot rank marker genes: {reason}.")
        return
    sc.tl.rank_genes_groups(adata, groupby=f"{key_added}_cell_cluster",
                            key_added=f"{key_added}_markers")


# ------------------------------------------------------------------------------ conditions
def _per_group(adata, group_key, column, what):
    """One value of ``obs[column]`` per group (checked constant), as a Series by str label."""
    import pandas as pd

    if column not in adata.obs.columns:
        raise KeyError(f"{what} {column!r} is not a column of adata.obs; available columns: "
                       f"{list(adata.obs.columns)[:20]}.")
    obs = adata.obs[[group_key, column]]
    n_values = obs.groupby(group_key, observed=True)[column].nunique(dropna=True)
    varying = n_values.index[n_values > 1].tolist()
    if varying:
        raise ValueError(f"adata.obs[{column!r}] varies within group(s) {varying[:10]} of "
                         f"{group_key!r}; a {what} must be constant over each group's cells.")
    values = obs.groupby(group_key, observed=True)[column].first()
    values.index = pd.Index([str(g) for g in values.index])
    return values


def _fit_results(adata, key):
    if key not in adata.uns or not isinstance(adata.uns[key], dict):
        raise KeyError(f"adata.uns[{key!r}] not found: run nestedatoms.tl.fit(adata, "
                       f"key_added={key!r}) first (or pass key= the key_added you used).")
    return adata.uns[key]


def differential_abundance(adata, condition_key, *, key="nam", reference=None, n_samples=4000,
                           level=0.95, random_state=0, key_added=None):
    """Difference in expected cell-cluster composition between your donor conditions.

    For each cell cluster found by :func:`fit`, the posterior of the difference between two
    conditions (e.g. case - control) in the expected share of that cluster, averaged over each
    condition's individuals.  The uncertainty is propagated from the variational posterior:
    each of ``n_samples`` draws takes every individual's cluster from q(S_j) and the clusters'
    compositions omega from the Beta sticks of q(u) (not a test on point estimates).  Because
    NAM shares a composition within each individual cluster, a difference appears when the
    conditions are distributed differently over the individual clusters; ``observed_a`` /
    ``observed_b`` give the plain mean per-individual shares (under q(M)) for comparison.

    Parameters
    ----------
    adata : AnnData
        Written by :func:`fit` (reads ``uns[key]``, ``obs`` and ``obsm[f"{key}_cell_probs"]``).
    condition_key : str
        ``obs`` column holding each donor's condition, constant within a donor; donors with a
        missing value are left out.
    key : str
        The ``key_added`` of :func:`fit`.
    reference : optional
        A condition to compare every other one with (other - reference); None: every pair
        (a - b, a before b in the category or sorted order).
    n_samples, level, random_state
        Monte Carlo draws, credible level, seed.
    key_added : str, optional
        Where the result goes in ``uns``; default ``f"{key}_abundance"``.

    Returns
    -------
    The table (also written to ``uns[key_added]["table"]``), one row per (comparison, cell
    cluster); columns as in :meth:`NestedAtomsModel.differential_abundance`.
    """
    import pandas as pd

    from ._abundance import condition_differences

    res = _fit_results(adata, key)
    if "posterior" not in res:
        raise KeyError(f"adata.uns[{key!r}] has no 'posterior' (written by tl.fit of "
                       f"nestedatoms >= 0.2); refit with nestedatoms.tl.fit.")
    group_key = res["group_key"]
    post = res["posterior"]
    labels = pd.Index([str(g) for g in res["groups"].index])
    per_group = _per_group(adata, group_key, condition_key, "condition_key")
    cond = per_group.reindex(labels)
    cell_index = np.asarray(res["cell_cluster_index"])
    probs = np.asarray(adata.obsm[f"{key}_cell_probs"])
    if probs.shape[1] != cell_index.size:      # a file written before empty columns were cut
        probs = probs[:, cell_index]
    cell_group = pd.Index(labels).get_indexer(adata.obs[group_key].astype(str).to_numpy())
    sums = np.zeros((labels.size, probs.shape[1]))
    np.add.at(sums, cell_group, probs)
    observed = sums / np.maximum(np.bincount(cell_group, minlength=labels.size), 1)[:, None]
    table = condition_differences(post["group_probs"], post["cell_sticks_a"],
                                  post["cell_sticks_b"], cond, cell_index, observed=observed,
                                  reference=reference, n_samples=n_samples, level=level,
                                  random_state=random_state)
    table["condition_a"] = table["condition_a"].astype(str)
    table["condition_b"] = table["condition_b"].astype(str)
    out = {"table": table, "condition_key": condition_key, "key": key,
           "level": float(level), "n_samples": int(n_samples)}
    if reference is not None:
        out["reference"] = str(reference)
    adata.uns[key_added or f"{key}_abundance"] = out
    return table


# ------------------------------------------------------------------------------ new data
def _as_model(model_or_path, reference_key="nam"):
    import os

    from ._model import NestedAtomsModel

    if isinstance(model_or_path, NestedAtomsModel):
        model_or_path._check_fitted()
        return model_or_path
    if isinstance(model_or_path, (str, os.PathLike)):
        return NestedAtomsModel.load(model_or_path)
    if hasattr(model_or_path, "obs") and hasattr(model_or_path, "uns"):
        return _model_of_reference(model_or_path, reference_key)
    raise TypeError(f"expected a fitted NestedAtomsModel or the path of a saved one, got "
                    f"{type(model_or_path).__name__}.")


def _model_of_reference(adata_ref, key):
    """The model a reference AnnData points to: ``tl.fit(..., model_file=PATH)`` records
    PATH in ``uns[key]["model_file"]`` (the AnnData holds results, not the state)."""
    from ._model import NestedAtomsModel

    fitted = adata_ref.uns.get(key)
    if not isinstance(fitted, dict):
        raise ValueError(f"the reference AnnData has no fit under uns[{key!r}]; fit it with "
                         f"nestedatoms.tl.fit(adata_ref, ..., key_added={key!r}, "
                         f"model_file='model.npz'), or pass reference_key=.")
    path = fitted.get("model_file")
    if path is None:
        raise ValueError(
            f"the reference AnnData holds the fit's results (uns[{key!r}]) but not the model "
            f"that mapping needs; fit it with nestedatoms.tl.fit(adata_ref, ..., "
            f"model_file='model.npz'), which records the file, or pass the model itself "
            f"(tl.fit(..., return_model=True)) or a file written by model.save(path).")
    path = str(path)
    try:
        return NestedAtomsModel.load(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"the reference AnnData's model file {path!r} (uns[{key!r}]['model_file']) does "
            f"not exist; pass the model or its file to tl.predict instead.") from exc


def _ranks(n, occupied):
    """Summary number of every internal index: the occupied ones in order, then the rest."""
    rank = np.empty(n, dtype=np.int64)
    rest = np.setdiff1d(np.arange(n), occupied)
    rank[np.concatenate([occupied, rest]).astype(np.int64)] = np.arange(n)
    return rank


def predict(adata, model, *, group_key="donor_id", use_rep="X_pca", group_features=None,
            key_added="nam", copy=False, group_covariates=None, reference_key="nam"):
    """Map new cells and new donors onto a fitted model (like ``sc.tl.ingest``).

    The model's global factors stay as fitted; each new cell gets a cell cluster and each
    donor a donor cluster, numbered as in the reference (``model.summary()`` and the
    reference AnnData written by :func:`fit`).  Donors seen in training keep their fitted
    cluster; new donors are placed by their cells and, when the model was fit with group
    features, by theirs.

    Parameters
    ----------
    adata : AnnData
        The new cells, with ``obsm[use_rep]`` in the same representation as the reference
        (e.g. the reference's PCA applied to the new data, as ``sc.tl.ingest`` does).
    model : NestedAtomsModel, path or AnnData
        The fitted model (``tl.fit(..., return_model=True)``), a file from ``model.save``, or
        the reference AnnData of ``tl.fit(..., model_file=PATH)`` (its model is read from the
        file it records in ``uns[reference_key]["model_file"]``).
    group_key, use_rep : str
        As in :func:`fit`, for the new AnnData.
    group_features : DataFrame, str or list of str, optional
        The new donors' group features, as in :func:`fit` (needed for new donors when the
        model was fit with group features; rows of other donors are ignored).
    key_added : str
        Prefix of the written keys.
    copy : bool
        Return a modified copy instead of writing into ``adata``.
    reference_key : str
        With a reference AnnData: the ``key_added`` of its fit.

    Writes
    ------
    ``obs[f"{key_added}_cell_cluster"]``, ``obs[f"{key_added}_group_cluster"]`` (categorical,
    the reference's numbering), ``obsm[f"{key_added}_cell_probs"]`` (q(M), one column per
    cluster of the reference), ``uns[key_added]``: ``groups`` (per donor: ``cluster``,
    ``probability``, ``n_cells``, ``known``), ``group_probs``, ``group_key``, ``use_rep``,
    ``predicted`` (True), ``n_iter`` / ``converged`` of the local updates.

    Returns
    -------
    None, or the modified copy with ``copy=True``.
    """
    import pandas as pd

    from ._summary import _order_by_size

    group_features = _resolve_alias(group_features, group_covariates, "group_features",
                                    "group_covariates", owner="nestedatoms.tl.predict")
    model = _as_model(model, reference_key)
    if copy:
        adata = adata.copy()
    Y, cell_groups = _read_inputs(adata, group_key, use_rep)
    labels = pd.unique(cell_groups)
    X = None
    if group_features is not None and not model.problem_.has_x:
        raise ValueError("the model was fit without group features (donors clustered by their "
                         "cells alone), so new donors are placed by their cells; pass "
                         "group_features=None.")
    if model.problem_.has_x:
        known = pd.Index(model.groups_)
        if group_features is not None:
            X = _group_feature_table(adata, group_key, group_features, labels)
        elif not pd.Index(labels).isin(known).all():
            new = [g for g in labels if g not in known]
            raise ValueError(
                f"the model was fit with group features, so the new donor(s) {new[:10]} need "
                f"theirs: pass group_features (obs columns or a DataFrame indexed by donor), "
                f"the same features as for tl.fit.")
    res = model._local(Y, cell_groups, X)
    st = model.state_
    cell_occ = _order_by_size(np.bincount(model.cell_labels_, minlength=st.L), st.y_n)
    group_occ = _order_by_size(np.bincount(model.group_labels_, minlength=st.K),
                               st.rho.sum(axis=0))
    c_rank, g_rank = _ranks(st.L, cell_occ), _ranks(st.K, group_occ)
    cell_labels = c_rank[np.argmax(res.xi, axis=1)]
    group_labels = g_rank[np.argmax(res.rho, axis=1)]
    n_c = max(cell_occ.size, int(cell_labels.max()) + 1)
    n_g = max(group_occ.size, int(group_labels.max()) + 1)
    c_cols = np.argsort(c_rank)[:n_c]          # internal index of summary numbers 0..n_c-1
    g_cols = np.argsort(g_rank)[:n_g]
    group_index = pd.Index(res.groups)
    of_cell = group_index.get_indexer(cell_groups)
    adata.obs[f"{key_added}_cell_cluster"] = pd.Categorical(
        cell_labels.astype(str), categories=[str(c) for c in range(n_c)])
    adata.obs[f"{key_added}_group_cluster"] = pd.Categorical(
        group_labels[of_cell].astype(str), categories=[str(c) for c in range(n_g)])
    adata.obsm[f"{key_added}_cell_probs"] = np.ascontiguousarray(res.xi[:, c_cols])
    rows = np.arange(res.rho.shape[0])
    groups = pd.DataFrame({
        "cluster": group_labels,
        "probability": res.rho[rows, np.argmax(res.rho, axis=1)],
        "n_cells": np.bincount(of_cell, minlength=group_index.size),
        "known": res.known.astype(bool),
    }, index=pd.Index([str(g) for g in res.groups], name="group"))
    group_probs = pd.DataFrame(res.rho[:, g_cols], index=groups.index,
                               columns=[str(c) for c in range(n_g)])
    adata.uns[key_added] = {
        "predicted": True, "group_key": group_key, "use_rep": use_rep, "groups": groups,
        "group_probs": group_probs, "n_iter": int(res.n_iter),
        "converged": bool(res.converged),
        "cell_cluster_index": c_cols, "group_cluster_index": g_cols,
    }
    return adata if copy else None
