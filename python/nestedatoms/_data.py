"""Input validation and the one canonical data layout every backend trusts.

Cells are sorted by group (stable), so each group's cells form a contiguous range
``offsets[j]:offsets[j + 1]``; ``order`` maps the sorted layout back to the caller's order.
Everything is copied to float64, C-contiguous arrays here, once: the caller's arrays are never
modified and nothing below this module re-checks them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._labels import factorize_labels

__all__ = ["NestedData", "prepare_data", "as_float_matrix", "check_constant_columns",
           "exact_column_means"]


class GroupLayout:
    """What follows from ``offsets`` (group j's cells are rows offsets[j]:offsets[j + 1]):
    shared by the in-memory data and the dask stand-in (``_dask.DaskData``)."""

    offsets: np.ndarray

    @property
    def n_cells(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_groups(self) -> int:
        return self.offsets.shape[0] - 1

    @property
    def group_sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def cell_group(self) -> np.ndarray:
        """Group index of every (sorted) cell."""
        return np.repeat(np.arange(self.n_groups), self.group_sizes)


@dataclass(frozen=True)
class NestedData(GroupLayout):
    """Validated, group-sorted data.

    Attributes
    ----------
    Y : (N, p) cells, sorted by group.
    offsets : (J + 1,) int64, group j's cells are ``Y[offsets[j]:offsets[j + 1]]``.
    X : (J, q) group-level features aligned with ``groups``, or None (CAM).
    groups : (J,) the unique group labels, in the order of all group-level rows.
    order : (N,) int64, ``Y = Y_caller[order]``.
    """

    Y: np.ndarray
    offsets: np.ndarray
    X: np.ndarray | None
    groups: np.ndarray
    order: np.ndarray


    def to_caller_order(self, per_cell: np.ndarray) -> np.ndarray:
        """Rows of a per-cell array, from the sorted layout back to the caller's order."""
        out = np.empty_like(per_cell)
        out[self.order] = per_cell
        return out


def _is_sparse(a) -> bool:
    return hasattr(a, "tocsr") and hasattr(a, "nnz")


# Centred values beyond this magnitude overflow when squared and summed over many rows (the
# scatter matrices, k-means distances); values spread less than the reciprocal underflow.  Seen
# in practice: scipy's k-means++ seeding crashes the interpreter on data scaled by 1e200.
_MAX_SPREAD = 1e100
_MIN_SPREAD = 1e-100
_MAX_OFFSET_TO_SPREAD = 1e10


def as_float_matrix(a, name: str, copy: bool = True) -> np.ndarray:
    """``a`` as a float64, C-contiguous 2-D array, with a clear error for bad input.

    With ``copy=True`` the result is always a new array; with ``copy=False`` it may be ``a``
    itself when ``a`` is already float64 and C-contiguous (the caller must then copy before
    writing to it).  Object arrays are converted when every entry is a number.
    """
    if _is_sparse(a):
        raise TypeError(
            f"{name} is a scipy sparse matrix; nestedatoms needs a dense, low-dimensional "
            f"representation. Pass principal components instead (for AnnData, "
            f"adata.obsm['X_pca'])."
        )
    if hasattr(a, "to_numpy") and not isinstance(a, np.ndarray):
        a = a.to_numpy()
    arr = np.asarray(a)
    if np.iscomplexobj(arr):
        # scikit-learn's wording ("Complex data not supported"), which its checks look for
        raise ValueError(f"{name} is complex: Complex data not supported; pass real-valued "
                         f"data (e.g. np.abs({name}) or its real and imaginary parts as "
                         f"columns).")
    if arr.dtype == object:
        # Lists of numbers, or DataFrames of mixed numeric types, arrive as object arrays.
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{name} must be numeric, but an entry could not be converted to a number "
                f"({exc}); convert it with np.asarray({name}, dtype=float) after removing "
                f"non-numeric columns."
            ) from None
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(
            f"{name} must be numeric, got dtype {arr.dtype}; convert it with "
            f"np.asarray({name}, dtype=float) after removing non-numeric columns."
        )
    if arr.ndim == 1:
        # "reshape your data": scikit-learn's wording, which its estimator checks look for
        raise ValueError(
            f"{name} must be 2-D (rows x features), got a 1-D array of length {arr.shape[0]}. "
            f"Reshape your data with {name}.reshape(-1, 1) if it is a single feature."
        )
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows x features), got shape {arr.shape}.")
    # Same wording as scikit-learn's check_array, which its estimator checks look for.
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: 0 sample(s) (shape={arr.shape}) while a minimum "
                         f"of 1 is required; it needs at least one row.")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} is empty: 0 feature(s) (shape={arr.shape}) while a minimum "
                         f"of 1 is required; it needs at least one column.")
    # One conversion: no copy here when the caller asked for none and a is already float64 C.
    out = np.array(arr, dtype=np.float64, order="C", copy=True if copy else None)
    # the column ranges, which _check_spread needs, also tell whether every value is finite
    # (max and min propagate NaN and keep infinities): one pass less over the data and no
    # N x p mask unless something is wrong (a OneK1K-sized Y spent 0.5 s here)
    hi, lo = out.max(axis=0), out.min(axis=0)
    if not (np.isfinite(hi).all() and np.isfinite(lo).all()):
        bad = ~np.isfinite(out)
        rows = np.unique(np.nonzero(bad)[0])
        raise ValueError(
            f"{name} contains {int(bad.sum())} NaN or infinite value(s), in row(s) "
            f"{rows[:10].tolist()}{' ...' if rows.size > 10 else ''}; remove or impute them "
            f"before fitting."
        )
    _check_spread(out, name, hi, lo)
    return out


def _check_spread(a: np.ndarray, name: str, hi: np.ndarray, lo: np.ndarray) -> None:
    """Refuse values whose squares overflow or underflow float64 (see _MAX_SPREAD), and
    columns whose offset leaves too few significant digits for their variation (``hi``,
    ``lo``: a's column maxima and minima).

    Spreads are column ranges (max - min), so an exactly constant column has none, whatever
    rounding its mean carries.
    """
    col_range = hi - lo
    spread = float(np.max(col_range))
    if not np.isfinite(spread) or spread > _MAX_SPREAD:
        raise ValueError(
            f"{name} has values spread over {spread:.3g}, too large to square in float64; "
            f"rescale it (e.g. standardise each column) before fitting."
        )
    if 0.0 < spread < _MIN_SPREAD:
        raise ValueError(
            f"{name} has values spread over only {spread:.3g}, too small to square in "
            f"float64; rescale it (e.g. standardise each column) before fitting."
        )
    # The cluster means are stored in the data's own coordinates, so each carries an error of
    # ~1e-16 |offset|; against a variation 1e10 times smaller that error is 1e-6 of a
    # cluster's width and the ELBO is no longer computed to the precision coordinate ascent
    # needs (found by the fuzz tests: values near -1e6 varying by 1e-7 made the ELBO fall).
    varying = col_range > 0
    if varying.any():
        offset = np.maximum(np.abs(hi), np.abs(lo))
        ratio = offset[varying] / col_range[varying]
        worst = int(np.argmax(ratio))
        if ratio[worst] > _MAX_OFFSET_TO_SPREAD:
            col = int(np.nonzero(varying)[0][worst])
            raise ValueError(
                f"{name}[:, {col}] varies by only {col_range[col]:.3g} around "
                f"{a[0, col]:.6g}: float64 keeps too few significant digits of that variation "
                f"to fit it. Centre {name} first ({name} - {name}.mean(axis=0)), or "
                f"standardise its columns."
            )


def exact_column_means(a: np.ndarray) -> np.ndarray:
    """Column means, exact for constant columns (their value, not a rounded sum / n).

    The data are centred by these means; a constant column must centre to exactly 0, or the
    rounding of a large constant (1e20: an error of ~1e4) becomes a spurious variation.
    """
    means = a.mean(axis=0)
    if a.shape[0]:
        first = a[0]
        constant = np.all(a == first, axis=0)
        means[constant] = first[constant]
    return means


def check_constant_columns(a: np.ndarray, name: str, columns=None) -> None:
    """Refuse a column that is exactly constant over >= 2 rows beside columns that vary.

    A constant feature carries no information, yet it does not leave the fit alone: its zero
    scatter lets the Wishart posterior of every cluster concentrate in that direction, a
    reward that grows with the cluster's size, so it pulls the fit towards merging clusters
    (a constant column of Y collapsed a fit with three clear cell clusters into one).  Data
    in which nothing varies (identical cells, one group) are not refused: there is nothing
    to drop, and the fit is the single cluster it should be.
    """
    if a.shape[0] < 2:
        return
    constant = np.all(a == a[0], axis=0)
    if constant.any() and not constant.all():
        idx = np.nonzero(constant)[0]
        keep = np.nonzero(~constant)[0]
        names = ([repr(columns[i]) for i in idx] if columns is not None
                 else [f"{name}[:, {i}]" for i in idx])
        keep_txt = (f"{name}[:, {keep.tolist()}]" if columns is None
                    else f"{name}[{[columns[i] for i in keep]!r}]")
        raise ValueError(
            f"{name} has {idx.size} constant column(s) ({', '.join(names[:10])}"
            f"{' ...' if idx.size > 10 else ''}; e.g. every row is {a[0, idx[0]]:.6g}): a "
            f"constant feature carries no information but biases the fit towards fewer "
            f"clusters. Drop it: {keep_txt}.")


def _factorize_groups(groups, n_cells: int):
    """Integer codes (N,) and unique labels (J,) in sorted order (rules: ``_labels``)."""
    if groups is None:
        return np.zeros(n_cells, dtype=np.int64), np.array([0])
    return factorize_labels(groups, n_cells)


def _align_X(X, groups: np.ndarray) -> np.ndarray:
    """X as a (J, q) float64 matrix whose rows follow ``groups``."""
    import pandas as pd

    if isinstance(X, pd.DataFrame):
        if X.index.has_duplicates:
            dup = X.index[X.index.duplicated()].unique().tolist()
            raise ValueError(f"X has duplicate index labels {dup[:10]}; give one row per group.")
        labels = pd.Index(groups)
        missing = labels.difference(X.index)
        if len(missing):
            raise ValueError(
                f"X has no row for group label(s) {missing.tolist()[:10]} that the cells carry; "
                f"add their group features to X (indexed by group label)."
            )
        # One rule with predict and tl.fit: rows of groups without cells are ignored (a
        # cohort-wide table can serve any subset of its individuals).  By position: .loc
        # with boolean labels would be a mask, not a lookup.
        return as_float_matrix(X.iloc[X.index.get_indexer(labels)], "X")
    Xa = as_float_matrix(X, "X")
    if Xa.shape[0] != groups.shape[0]:
        raise ValueError(
            f"X has {Xa.shape[0]} rows but the cells belong to {groups.shape[0]} groups; X must "
            f"have one row per group, in the order of the sorted unique group labels, or be a "
            f"pandas DataFrame indexed by group label."
        )
    return Xa


def prepare_data(Y, groups=None, X=None, copy: bool = True) -> NestedData:
    """Validate the inputs and build the group-sorted layout (inputs untouched).

    ``copy=False`` keeps a read-only view of Y instead of a copy when Y is already float64,
    C-contiguous and sorted by group (the cells are the largest input: N x p x 8 bytes).
    """
    # No copy in the conversion: the group sort below makes the one copy of the cells.
    Ya = as_float_matrix(Y, "Y", copy=False)
    codes, uniques = _factorize_groups(groups, Ya.shape[0])
    order = np.argsort(codes, kind="stable").astype(np.int64)
    sizes = np.bincount(codes, minlength=uniques.shape[0])
    offsets = np.zeros(uniques.shape[0] + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    Xa = None if X is None else _align_X(X, uniques)
    if not copy and Ya is Y and bool(np.all(codes[1:] >= codes[:-1])):
        Ys = Y.view()
        Ys.flags.writeable = False   # we never write Y; the view makes sure of it
    else:
        Ys = np.ascontiguousarray(Ya[order])
    return NestedData(Y=Ys, offsets=offsets, X=Xa, groups=uniques, order=order)
