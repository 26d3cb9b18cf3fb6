"""Starting a fit from known labels (``fit(..., init_group_labels=, init_cell_labels=)``).

The labels build the first restart's state in place of k-means; the usual sweeps and moves then
run, so a start is a suggestion the fit may leave, never a constraint.  Missing labels (NaN,
None, pandas NA) are filled by one k-means assignment step: a cell (individual) without a
label joins the nearest mean of the labelled ones, in y (in the group features k-means uses).
"""

from __future__ import annotations

import numpy as np

from ._state import Problem
from ._validation import InvalidParameterError

__all__ = ["codes_from_labels", "group_label_codes", "cell_label_codes", "state_from_known"]


def _is_missing(values) -> np.ndarray:
    import pandas as pd

    return np.asarray(pd.isna(pd.Series(values, dtype=object)), dtype=bool)


def codes_from_labels(values, width: int, name: str, layer: str, option: str) -> np.ndarray:
    """Codes 0..G-1 for the given labels (-1 where missing), G <= ``width``."""
    values = np.asarray(values, dtype=object).reshape(-1)
    missing = _is_missing(values)
    codes = np.full(values.shape[0], -1, dtype=np.int64)
    if (~missing).any():
        import pandas as pd

        codes[~missing], uniques = pd.factorize(pd.Series(values[~missing], dtype=object),
                                                sort=False)
        if len(uniques) > width:
            raise InvalidParameterError(
                f"{name} has {len(uniques)} distinct labels but the model has room for "
                f"{width} {layer}; raise {option} to at least {len(uniques)}.")
    return codes


def group_label_codes(init_group_labels, groups: np.ndarray, K: int) -> np.ndarray:
    """Codes per group in the model's group order (``groups``: the sorted unique labels).

    A pandas Series is matched by its index (extra rows ignored, every group needed); anything
    else is one label per group in that order.
    """
    import pandas as pd

    if isinstance(init_group_labels, pd.Series):
        index = pd.Index(init_group_labels.index)
        if index.has_duplicates:
            raise InvalidParameterError(
                "init_group_labels has duplicate index entries; give one label per group.")
        absent = [g for g in groups if g not in index]
        if absent:
            raise InvalidParameterError(
                f"init_group_labels has no entry for the group(s) {absent[:10]}; index it by "
                f"every group label (missing labels may be NaN).")
        values = init_group_labels.loc[list(groups)].to_numpy(dtype=object)
    else:
        values = np.asarray(init_group_labels, dtype=object).reshape(-1)
        if values.shape[0] != len(groups):
            raise InvalidParameterError(
                f"init_group_labels has {values.shape[0]} entries but there are {len(groups)} "
                f"groups; give one per group in the order of model.groups_ (the sorted unique "
                f"labels), or a pandas Series indexed by group label.")
    return codes_from_labels(values, K, "init_group_labels", "individual clusters",
                             "n_group_clusters")


def cell_label_codes(init_cell_labels, n_cells: int, L: int) -> np.ndarray:
    """Codes per cell in the caller's order."""
    values = np.asarray(init_cell_labels, dtype=object).reshape(-1)
    if values.shape[0] != n_cells:
        raise InvalidParameterError(
            f"init_cell_labels has {values.shape[0]} entries but Y has {n_cells} rows; give one "
            f"label per cell, in the order of Y.")
    return codes_from_labels(values, L, "init_cell_labels", "cell clusters", "n_cell_clusters")


def _fill_nearest(Z: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Missing codes (-1) become the code of the nearest labelled mean in Z."""
    missing = codes < 0
    if not missing.any():
        return codes
    from scipy.cluster.vq import vq

    present = np.unique(codes[~missing])
    means = np.stack([Z[codes == c].mean(axis=0) for c in present])
    nearest, _ = vq(Z[missing], means, check_finite=False)
    out = codes.copy()
    out[missing] = present[nearest]
    return out


def state_from_known(be, prob: Problem, rng, group_codes=None, cell_codes_sorted=None):
    """The first restart's state: the given labels, k-means for whatever is not given."""
    from ._init import one_hot, group_features, kmeans_labels, relabel_by_size, state_from_labels

    if cell_codes_sorted is None or (cell_codes_sorted < 0).all():
        cells = kmeans_labels(prob.Y, prob.L, rng)
    else:
        cells = relabel_by_size(_fill_nearest(prob.Y, cell_codes_sorted))
    N_jl = np.add.reduceat(one_hot(cells, prob.L), prob.offsets[:-1], axis=0)
    features = group_features(prob, N_jl)
    if group_codes is None or (group_codes < 0).all():
        groups = kmeans_labels(features, prob.K, rng)
    else:
        groups = relabel_by_size(_fill_nearest(features, group_codes))
    # numbered by size, as the fit numbers clusters: the stick-breaking prior depends on the
    # order, so a partition starts the same whatever names its labels had
    return state_from_labels(be, prob, cells, groups)
