"""Group labels: which are accepted, how they are ordered, and how new ones are matched.

The rules (the documentation's "Group labels" section, under Reliability):

* a label is a string, an integer, a float or a bool (NumPy scalars included); every label
  of one call has the same one of these four kinds.  Mixed kinds are refused, because Python
  equates ``1``, ``1.0`` and ``True`` (they would silently merge into one group) while ``1``
  and ``"1"`` stay apart; tuples, bytes, None and other objects are refused too (convert them,
  e.g. ``groups.astype(str)``);
* a missing label (None, NaN, pandas NA) is refused;
* the unique labels are ordered by value (numbers numerically, strings by code point), and
  that is the order of the rows of an array ``X``, of ``groups_`` and of ``group_probs_``.  A
  pandas Categorical is matched by its values, in this same order, whatever the order of its
  categories (unused categories have no cells and no row);
* new labels given to ``predict`` & co. must be of the kind the model was fit with.
"""

from __future__ import annotations

import numpy as np

__all__ = ["factorize_labels", "label_kind", "check_same_kind"]

_KIND_OF_INFERRED = {"string": "str", "integer": "int", "floating": "float", "boolean": "bool"}
_KIND_OF_DTYPE = {"U": "str", "i": "int", "u": "int", "f": "float", "b": "bool"}


def _values(groups):
    """The labels as a 1-D NumPy array of their values (a Categorical by its values)."""
    import pandas as pd

    if isinstance(groups, (pd.Series, pd.Index, pd.Categorical)) or hasattr(groups, "to_numpy"):
        # a Categorical becomes its values (ints stay ints), never its codes
        values = np.asarray(groups)
    elif isinstance(groups, (list, tuple)):
        # an object array of the entries themselves: np.asarray would turn tuple labels into
        # a 2-D array and mixed lists into strings
        values = np.empty(len(groups), dtype=object)
        values[:] = list(groups) if not any(isinstance(g, (list, tuple)) for g in groups) \
            else [_Opaque(g) for g in groups]
    else:
        values = np.asarray(groups)
    return values


class _Opaque:
    """A tuple or list label, kept as one entry so it can be named in the refusal."""

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return repr(self.value)


def label_kind(values: np.ndarray, name: str = "groups") -> str:
    """'str', 'int', 'float' or 'bool' for labels without missing values, else a
    ValueError saying what to do."""
    import pandas as pd

    kind = _KIND_OF_DTYPE.get(values.dtype.kind)
    if kind is not None:
        return kind
    if values.dtype.kind == "S":
        raise ValueError(f"{name} holds bytes labels; decode them to str first "
                         f"(e.g. np.char.decode({name}) or [g.decode() for g in {name}]).")
    if values.dtype != object:
        raise ValueError(f"{name} must hold strings or numbers, got dtype {values.dtype}; "
                         f"convert them, e.g. {name}.astype(str).")
    inferred = pd.api.types.infer_dtype(values, skipna=False)
    kind = _KIND_OF_INFERRED.get(inferred)
    if kind is not None:
        return kind
    types = sorted({type(v.value if isinstance(v, _Opaque) else v).__name__
                    for v in values[:100000]})
    if inferred.startswith("mixed") and all(t in ("int", "float", "bool", "str") or
                                            t.startswith(("int", "uint", "float", "bool",
                                                          "str"))
                                            for t in types):
        raise ValueError(
            f"{name} mixes label types {types}: Python treats 1, 1.0 and True as one label "
            f"but 1 and '1' as two, so mixed labels are ambiguous. Convert them to one type, "
            f"e.g. {name} = [str(g) for g in {name}] (or pandas .astype(str)).")
    raise ValueError(
        f"{name} labels must be strings or numbers (all of one type), got {types}; convert "
        f"them, e.g. {name} = [str(g) for g in {name}] (tuples: '-'.join(map(str, g))).")


def factorize_labels(groups, n_cells: int, name: str = "groups"):
    """Integer codes (N,) and the unique labels (J,) in sorted order (see module docstring)."""
    import pandas as pd

    values = _values(groups)
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per cell), got shape {values.shape}.")
    if len(values) != n_cells:
        raise ValueError(
            f"{name} has {len(values)} labels but Y has {n_cells} rows; give exactly one "
            f"group label per cell.")
    missing = np.asarray(pd.isna(values), dtype=bool) if values.dtype.kind in "fO" else None
    if missing is not None and missing.any():
        bad = np.nonzero(missing)[0]
        raise ValueError(
            f"{name} has {bad.size} missing label(s) (NaN/None), at cell(s) "
            f"{bad[:10].tolist()}; every cell needs a group label.")
    kind = label_kind(values, name)
    if values.dtype == object and kind != "str":
        try:    # one NumPy dtype per kind, so the labels come back as plain numbers
            values = values.astype({"int": np.int64, "float": np.float64, "bool": bool}[kind])
        except OverflowError:
            pass    # integers beyond int64 stay Python ints
    codes, uniques = pd.factorize(values, sort=True)
    uniques = np.asarray(uniques)
    if uniques.dtype == object and kind == "str":
        uniques = np.array([str(u) for u in uniques], dtype=object)    # np.str_ -> str
    return codes.astype(np.int64), uniques


def check_same_kind(fitted: np.ndarray, new: np.ndarray, name: str = "groups") -> None:
    """Refuse new labels of another kind than the model's (1 would not find '1')."""
    a, b = label_kind(fitted, "groups_"), label_kind(new, name)
    if a != b:
        raise ValueError(
            f"{name} holds {b} labels but the model was fit with {a} labels (groups_ = "
            f"{fitted[:3].tolist()}...); pass labels of the same type, e.g. "
            f"{'[str(g) for g in groups]' if a == 'str' else f'labels converted to {a}'}.")
