"""Saving and loading fitted models in an open format (no pickle).

A model file is a NumPy ``.npz`` archive (a zip of ``.npy`` arrays, readable from any language
with an ``.npy`` reader) holding

* ``metadata.json`` (stored as a uint8 array of UTF-8 bytes): the format name and version, the
  package version, the estimator's parameters, the scalar parts of the priors and of the
  variational state, and the scalar fitted attributes;
* ``data/*``: the training data in the fit's group-sorted layout (``Y``, ``offsets``, ``X``,
  ``groups``, ``order``), which is what lets a loaded model resume fitting;
* ``prior/*``: the Normal-Wishart prior arrays (m0, W0^-1) of each layer and the data centres
  (with diagonal cell atoms, ``covariance_type="diag"``, the cells' W0^-1 is its (p,)
  diagonal, as are the state's ``Wy`` and ``y_s2`` and ``cell_covariances_``: (L, p));
* ``state/*``: every array of the variational state (model section 3) and its cached statistics;
* ``fitted/*``: the fitted attributes ending in ``_`` and every restart's ELBO trace
  (``cell_probs_`` is ``state/xi`` put back in the caller's cell order, so it is not stored).

Every float is stored in binary (arrays) or as a shortest round-trip decimal (JSON), so a
loaded model is bitwise identical to the saved one.
"""

from __future__ import annotations

import json
import numbers
import os
from dataclasses import MISSING, fields

import numpy as np

from ._atomic import atomic_path
from ._data import NestedData
from .exceptions import ModelFileError
from ._atoms import family_named, y_family
from ._state import ConcentrationPrior, NWPrior, Problem, State

__all__ = ["save_model", "load_model", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "nestedatoms-model"
# The newest version this module reads.  Version 2 added diagonal cell atoms: a file with them
# is written as version 2, so that a release that cannot read them says "upgrade" instead of
# failing on their shapes; a file with full cell atoms is still written as version 1.
FORMAT_VERSION = 2

# cell_probs_ is not stored: the model derives it from state/xi (the same N x L array, in the
# group-sorted order), so storing both would double the file for nothing.
_FITTED_ARRAYS = ("group_probs_", "group_labels_", "cell_labels_",
                  "group_weights_", "cell_weights_", "cell_means_", "cell_covariances_",
                  "group_means_", "group_covariances_", "elbo_trace_")
_FITTED_SCALARS = ("n_features_in_", "elbo_", "n_iter_", "converged_", "best_restart_")


def _json_safe(value):
    """Parameters as JSON: arrays become lists; anything else JSON cannot hold becomes None."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):         # not a bool, nor Integral: else it became None
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        # JSON has no inf (and load refuses it): the one infinite parameter,
        # donor_concentration=inf (NAM exactly), is stored as null and read back as inf
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return None


def _labels_to_store(groups: np.ndarray):
    """Group labels as an array np.load reads without pickle, or as a JSON list."""
    if groups.dtype != object:
        return groups, None
    as_list = [g.item() if isinstance(g, np.generic) else g for g in groups.tolist()]
    try:
        json.dumps(as_list)
    except TypeError:
        raise TypeError(
            "cannot save group labels of type "
            f"{sorted({type(g).__name__ for g in as_list})}: use str or int labels."
        ) from None
    return None, as_list


def save_model(model, path) -> None:
    """Write a fitted ``NestedAtomsModel`` to ``path`` (``.npz`` is appended if missing)."""
    from . import __version__

    if not hasattr(model, "state_"):
        raise ValueError("this NestedAtomsModel is not fitted yet; call fit before save.")
    prob: Problem = model.problem_
    st: State = model.state_
    data = prob.data
    if not isinstance(data.Y, np.ndarray):
        raise ValueError(
            "this model was fit on a dask array: its cells stay in their store and xi on the "
            "workers, while a model file holds both (8 N (p + L) bytes). Keep the fitted "
            "attributes instead (nestedatoms.tl.fit writes them into the AnnData), or save a "
            "model fit in memory.")
    arrays = {}
    arrays["data/Y"] = data.Y
    arrays["data/offsets"] = data.offsets
    arrays["data/order"] = data.order
    if data.X is not None:
        arrays["data/X"] = data.X
    stored_groups, json_groups = _labels_to_store(data.groups)
    if stored_groups is not None:
        arrays["data/groups"] = stored_groups
    arrays["prior/y_m0"] = prob.y_prior.m0
    arrays["prior/y_W0inv"] = prob.y_prior.W0inv
    arrays["prior/y_centre"] = prob.y_centre
    if prob.has_x:
        arrays["prior/x_m0"] = prob.x_prior.m0
        arrays["prior/x_W0inv"] = prob.x_prior.W0inv
        arrays["prior/x_centre"] = prob.x_centre
    state_scalars = {}
    for f in fields(State):
        value = getattr(st, f.name)
        if isinstance(value, np.ndarray):
            arrays[f"state/{f.name}"] = value
        elif value is not None and np.isfinite(value):
            state_scalars[f.name] = float(value)
        # else: an infinite donor_concentration (NAM exactly) is its field's default
    for name in _FITTED_ARRAYS:
        value = getattr(model, name)
        if value is not None:
            arrays[f"fitted/{name}"] = np.asarray(value)
    for r, trace in enumerate(model.elbo_traces_):
        arrays[f"fitted/elbo_traces_/{r}"] = np.asarray(trace)

    def nw(prior):
        return {"lam0": prior.lam0, "nu0": prior.nu0}

    def conc(prior):
        return {"shape": prior.shape, "rate": prior.rate, "fixed": prior.fixed}

    meta = {
        "format": FORMAT_NAME,
        "format_version": 1 if y_family(prob).name == "full" else 2,
        "nestedatoms_version": __version__,
        "params": _json_safe(model.get_params()),
        "problem": {
            "K": prob.K, "L": prob.L, "has_x": prob.has_x, "batch_size": prob.batch_size,
            "y_prior": nw(prob.y_prior),
            **({} if y_family(prob).name == "full"
               else {"covariance_type": y_family(prob).name}),
            "x_prior": nw(prob.x_prior) if prob.has_x else None,
            "alpha_prior": conc(prob.alpha_prior),
            "beta_prior": conc(prob.beta_prior),
            "learn_group_prior_scale": bool(prob.learn_group_prior_scale),
            "learn_donor_concentration": bool(prob.learn_donor_concentration),
            # JSON has no inf: NAM exactly (c = inf) is stored as null
            "donor_concentration": (None if np.isinf(prob.donor_concentration)
                                    else float(prob.donor_concentration)),
        },
        "groups_json": json_groups,
        "state_scalars": state_scalars,
        "fitted": {name: _json_safe(getattr(model, name)) for name in _FITTED_SCALARS},
        # how the fit went: seconds per phase and the moves that changed it
        "log": {"timings_": _json_safe(getattr(model, "timings_", {})),
                "moves_": _json_safe(getattr(model, "moves_", []))},
        "n_restarts": len(model.elbo_traces_),
    }
    arrays["metadata.json"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    # Written beside the destination and renamed over it: an interrupted save leaves the
    # previous file intact (see _atomic).
    with atomic_path(model_path(path), suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def model_path(path) -> str:
    """Where :func:`save_model` writes ``path``: ``.npz`` is appended if missing (as
    ``np.savez`` does)."""
    path = os.fspath(path)
    return path if path.endswith(".npz") else path + ".npz"


def _restore_params(cls, params: dict) -> dict:
    """JSON turned tuples into lists: give back tuples where the default is a tuple."""
    import inspect

    defaults = {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()}
    out = {}
    for key, value in params.items():
        if key not in defaults:
            continue
        if isinstance(value, list) and isinstance(defaults[key], tuple):
            value = tuple(value)
        out[key] = value
    return out


def load_model(cls, path):
    """Read a model written by :func:`save_model`; returns a fitted ``cls`` instance."""
    from ._modelfile import read_model_file

    path = os.fspath(path)
    if not os.path.exists(path) and os.path.exists(path + ".npz"):
        path = path + ".npz"
    # Everything is checked (structure, metadata, every array's dtype, shape and content)
    # before anything below is built; a damaged or foreign file raises ModelFileError.
    meta, arr = read_model_file(path, FORMAT_NAME, FORMAT_VERSION)
    pm = meta["problem"]
    if meta["groups_json"] is not None:
        groups = np.empty(len(meta["groups_json"]), dtype=object)
        groups[:] = meta["groups_json"]
    else:
        groups = arr["data/groups"]
    data = NestedData(Y=arr["data/Y"], offsets=arr["data/offsets"], X=arr.get("data/X"),
                      groups=groups, order=arr["data/order"])

    def nw(layer, prior_type=NWPrior):
        return prior_type(m0=arr[f"prior/{layer}_m0"], lam0=pm[f"{layer}_prior"]["lam0"],
                          W0inv=arr[f"prior/{layer}_W0inv"], nu0=pm[f"{layer}_prior"]["nu0"])

    # files written before diagonal atoms existed have full ones
    family = family_named(pm.get("covariance_type", "full"))
    prob = Problem(data=data, K=pm["K"], L=pm["L"], y_prior=nw("y", family.prior_type),
                   x_prior=nw("x") if pm["has_x"] else None,
                   alpha_prior=ConcentrationPrior(**pm["alpha_prior"]),
                   beta_prior=ConcentrationPrior(**pm["beta_prior"]),
                   learn_group_prior_scale=bool(pm.get("learn_group_prior_scale", False)),
                   learn_donor_concentration=bool(pm.get("learn_donor_concentration", False)),
                   donor_concentration=_concentration_from_json(pm.get("donor_concentration")),
                   batch_size=pm.get("batch_size"))
    # The centres are a deterministic function of the data, but keep the saved bits anyway.
    prob.y_centre = arr["prior/y_centre"]
    if pm["has_x"]:
        prob.x_centre = arr["prior/x_centre"]
    state_kwargs = {}
    for f in fields(State):
        key = f"state/{f.name}"
        if key in arr:
            state_kwargs[f.name] = arr[key]
        elif f.name in meta["state_scalars"] or f.default is MISSING:
            state_kwargs[f.name] = meta["state_scalars"].get(f.name)
        # else: a field newer than the file (group_prior_scale) keeps its default
    st = State(**state_kwargs)

    params = dict(meta["params"])
    # files written before the option existed were fitted with the x prior as set; the
    # constructor's default ("auto", which learns it for the default prior) would misdescribe
    # them
    params.setdefault("learn_group_prior_scale", False)
    # likewise, files from before donor variation were fitted as NAM exactly
    if params.get("donor_concentration") != "auto":
        params["donor_concentration"] = _concentration_from_json(
            params.get("donor_concentration"))
    model = cls(**_restore_params(cls, params))
    try:
        from ._validation import check_estimator_params

        check_estimator_params(model)
    except ValueError as exc:            # InvalidParameterError
        raise ModelFileError(path, f"its estimator parameters are invalid: {exc}") from None
    model.problem_ = prob
    model.state_ = st
    model.groups_ = data.groups
    for name in _FITTED_ARRAYS:
        setattr(model, name, arr.get(f"fitted/{name}"))
    for name in _FITTED_SCALARS:
        setattr(model, name, meta["fitted"][name])
    model.elbo_traces_ = [arr[f"fitted/elbo_traces_/{r}"] for r in range(meta["n_restarts"])]
    model.group_prior_scale_ = float(st.group_prior_scale) if prob.has_x else None
    model.donor_concentration_ = float(st.donor_concentration)
    log = meta.get("log") or {}           # absent from files written before it existed
    model.timings_ = dict(log.get("timings_", {}))
    model.moves_ = [dict(m) for m in log.get("moves_", [])]
    return model


def _concentration_from_json(value) -> float:
    """A donor concentration as stored (null or absent: inf, NAM exactly)."""
    return float("inf") if value is None else float(value)
