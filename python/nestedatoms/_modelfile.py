"""Reading a model file as untrusted input: every check happens before anything is built.

:func:`read_model_file` returns the metadata and the arrays of a file written by
``_io.save_model`` only once all of this holds, and otherwise raises
:class:`~nestedatoms.exceptions.ModelFileError` naming the file and the problem:

1. the zip structure: readable, no duplicate or unknown entry names, a bounded number of
   entries, and no entry whose declared size exceeds what its compressed size can expand to
   (deflate cannot exceed ~1032:1) or, all together, the memory available;
2. the metadata: UTF-8 JSON of bounded size with no duplicate keys or NaN, the format name, a
   format version that is an int (not a bool) this version reads, and every field of the
   right type and domain;
3. every array, from its ``.npy`` header before its data is read: a plain numeric dtype
   (never object, so never pickle), the shape the metadata implies, and a byte count that
   matches its entry;
4. the content: finite floats, responsibilities that are distributions, a cell order that is
   a permutation, group offsets that partition the cells, unique group labels of one
   supported type, positive-definite scale matrices, consistent fitted attributes.

Anything else that goes wrong while reading (a CRC mismatch, a truncated stream, a
decompression error) is turned into the same ``ModelFileError``, so callers catch one type.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from .exceptions import ModelFileError

__all__ = ["read_model_file", "MAX_METADATA_BYTES", "MAX_ENTRIES"]

MAX_METADATA_BYTES = 64 * 2**20
MAX_ENTRIES = 100_000
# Deflate expands at most ~1032:1; anything declaring more is not what np.savez wrote.
_MAX_DEFLATE_RATIO = 1100
_NPY_HEADER_SLACK = 2**16

_STATE_SCALARS = ("alpha_shape", "alpha_rate", "beta_shape", "beta_rate", "H_xi", "H_rho",
                  "group_prior_scale", "donor_concentration")
_FITTED_FLOAT = ("group_probs_", "group_weights_", "cell_weights_", "cell_means_",
                 "cell_covariances_", "group_means_", "group_covariances_", "elbo_trace_")
_FITTED_INT = ("group_labels_", "cell_labels_")


class _Bad(Exception):
    """Internal: one problem found; becomes a ModelFileError with the path."""


def _need(cond, problem: str):
    if not cond:
        raise _Bad(problem)


# --------------------------------------------------------------------------- metadata
def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _Bad("metadata.json repeats a key")
    return dict(pairs)


def _no_constant(name):
    raise _Bad(f"metadata.json holds {name}, which JSON does not allow")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and np.isfinite(v)


# Keys renamed since format version 1 was first written (old name -> new name), by section:
# the x prior's width had several internal names before it took the parameter's.
_RENAMED = {"problem": {"learn_x_prior_scale": "learn_group_prior_scale"},
            "state_scalars": {"x_prior_scale": "group_prior_scale"}}


def _rename_old_keys(meta) -> None:
    """Read a file written under the old key names as under the new ones (a file holding
    both is refused: it is not what any release wrote)."""
    if not isinstance(meta, dict):
        return                                  # _check_meta says what is wrong
    for section, renames in _RENAMED.items():
        part = meta.get(section)
        if not isinstance(part, dict):
            continue
        for old, new in renames.items():
            if old in part:
                _need(new not in part, f"{section} holds both {old!r} and {new!r}")
                part[new] = part.pop(old)


def _check_meta(meta, format_name: str, format_version: int) -> None:
    _need(isinstance(meta, dict), "metadata.json is not a JSON object")
    _need(meta.get("format") == format_name,
          f"its format is {meta.get('format')!r}, not {format_name!r}")
    version = meta.get("format_version")
    _need(_is_int(version) and version >= 1,
          f"format_version {version!r} is not a valid version (an integer >= 1)")
    if version > format_version:
        raise _Bad(f"it uses model format version {version}, newer than this nestedatoms "
                   f"reads ({format_version}); upgrade nestedatoms (pip install -U "
                   f"nestedatoms)")
    for key, kind in (("params", dict), ("problem", dict), ("state_scalars", dict),
                      ("fitted", dict)):
        _need(isinstance(meta.get(key), kind), f"metadata field {key!r} is missing or not a "
                                               f"{kind.__name__}")
    pm = meta["problem"]
    for key in ("K", "L"):
        _need(_is_int(pm.get(key)) and pm[key] >= 1, f"problem.{key} is not an integer >= 1")
    _need(isinstance(pm.get("has_x"), bool), "problem.has_x is not true/false")
    _need(isinstance(pm.get("learn_group_prior_scale", False), bool),
          "problem.learn_group_prior_scale is not true/false")
    layers = ("y", "x") if pm["has_x"] else ("y",)
    for layer in layers:
        nw = pm.get(f"{layer}_prior")
        _need(isinstance(nw, dict) and _is_num(nw.get("lam0")) and nw["lam0"] > 0
              and _is_num(nw.get("nu0")), f"problem.{layer}_prior is not a valid prior")
    _need(pm["has_x"] or pm.get("x_prior") is None, "problem.x_prior is set but has_x is false")
    covariance_type = pm.get("covariance_type", "full")     # absent: written before "diag"
    _need(covariance_type in ("full", "diag"),
          f"problem.covariance_type {covariance_type!r} is neither 'full' nor 'diag'")
    _need(covariance_type == "full" or version >= 2,
          "problem.covariance_type is 'diag' in a format_version 1 file")
    params_type = meta["params"].get("covariance_type", "full")
    _need(params_type == covariance_type,
          f"params.covariance_type {params_type!r} disagrees with problem.covariance_type "
          f"{covariance_type!r}")
    for name in ("alpha_prior", "beta_prior"):
        c = pm.get(name)
        _need(isinstance(c, dict) and set(c) == {"shape", "rate", "fixed"},
              f"problem.{name} is not a (shape, rate, fixed) record")
        _need(_is_num(c["shape"]) and c["shape"] > 0 and _is_num(c["rate"]) and c["rate"] > 0
              and (c["fixed"] is None or (_is_num(c["fixed"]) and c["fixed"] > 0)),
              f"problem.{name} holds a value out of its domain")
    sc = meta["state_scalars"]
    _need(set(sc) <= set(_STATE_SCALARS), f"state_scalars has unknown keys "
                                          f"{sorted(set(sc) - set(_STATE_SCALARS))[:5]}")
    for name in _STATE_SCALARS[:6]:
        _need(_is_num(sc.get(name)), f"state_scalars.{name} is missing or not a finite number")
    for name in _STATE_SCALARS[:4]:
        _need(sc[name] > 0, f"state_scalars.{name} must be > 0")
    for name in ("group_prior_scale", "donor_concentration"):     # absent: their defaults
        if name in sc:
            _need(_is_num(sc[name]) and sc[name] > 0,
                  f"state_scalars.{name} must be a finite number > 0")
    _need(isinstance(pm.get("learn_donor_concentration", False), bool),
          "problem.learn_donor_concentration is not true/false")
    c = pm.get("donor_concentration")
    _need(c is None or (_is_num(c) and c > 0),
          "problem.donor_concentration is neither null (infinite) nor a number > 0")
    log = meta.get("log", {})
    _need(isinstance(log, dict), "log is not a record of timings and moves")
    timings, moves = log.get("timings_", {}), log.get("moves_", [])
    _need(isinstance(timings, dict)
          and all(isinstance(k, str) and _is_num(v) for k, v in timings.items()),
          "log.timings_ is not a table of seconds per phase")
    _need(isinstance(moves, list)
          and all(isinstance(m, dict) and _is_int(m.get("sweep")) and _is_int(m.get("restart", 0))
                  and isinstance(m.get("move"), str)
                  and (m.get("gain") is None or _is_num(m.get("gain"))) for m in moves),
          "log.moves_ is not a list of move records")
    fit = meta["fitted"]
    _need(_is_int(fit.get("n_features_in_")), "fitted.n_features_in_ is not an integer")
    _need(_is_num(fit.get("elbo_")), "fitted.elbo_ is not a finite number")
    _need(_is_int(fit.get("n_iter_")) and fit["n_iter_"] >= 0,
          "fitted.n_iter_ is not an integer >= 0")
    _need(isinstance(fit.get("converged_"), bool), "fitted.converged_ is not true/false")
    n_restarts = meta.get("n_restarts")
    _need(_is_int(n_restarts) and 1 <= n_restarts <= MAX_ENTRIES,
          f"n_restarts {n_restarts!r} is not an integer in [1, {MAX_ENTRIES}]")
    _need(_is_int(fit.get("best_restart_")) and 0 <= fit["best_restart_"] < n_restarts,
          "fitted.best_restart_ is not the index of a restart")
    groups = meta.get("groups_json")
    if groups is not None:
        _need(isinstance(groups, list), "groups_json is neither null nor a list")
        _need(all(isinstance(g, (str, int, float)) for g in groups),
              "groups_json holds a label that is not a string or a number")


# --------------------------------------------------------------------------- arrays
def _diagonal(meta) -> bool:
    """Whether the file's cell atoms are diagonal (checked by _check_meta)."""
    return meta["problem"].get("covariance_type", "full") == "diag"


def _expected_entries(meta) -> dict:
    """Entry name -> (dtype kinds allowed, shape with symbolic N, J, p, q)."""
    pm = meta["problem"]
    K, L, has_x = pm["K"], pm["L"], pm["has_x"]
    f, i = "f", "i"
    # the cell atoms' W, s2, W0^-1 and E[Sigma]: matrices, or their diagonals ("diag")
    atom = ("p", "p") if _diagonal(meta) is False else ("p",)
    e = {
        "data/Y": (f, ("N", "p")), "data/offsets": (i, ("J+1",)), "data/order": (i, ("N",)),
        "prior/y_m0": (f, ("p",)), "prior/y_W0inv": (f, atom),
        "prior/y_centre": (f, ("p",)),
        "state/rho": (f, ("J", K)), "state/xi": (f, ("N", L)),
        "state/v_a": (f, (K - 1, 1)), "state/v_b": (f, (K - 1, 1)),
        "state/u_a": (f, (L - 1, K)), "state/u_b": (f, (L - 1, K)),
        "state/my": (f, (L, "p")), "state/lamy": (f, (L,)), "state/Wy": (f, (L, *atom)),
        "state/nuy": (f, (L,)), "state/N_jl": (f, ("J", L)), "state/y_n": (f, (L,)),
        "state/y_s1": (f, (L, "p")), "state/y_s2": (f, (L, *atom)),
        "fitted/group_probs_": (f, ("J", K)), "fitted/group_labels_": (i, ("J",)),
        "fitted/cell_labels_": (i, ("N",)), "fitted/group_weights_": (f, (K,)),
        "fitted/cell_weights_": (f, (L, K)), "fitted/cell_means_": (f, (L, "p")),
        "fitted/cell_covariances_": (f, (L, *atom)),
        "fitted/elbo_trace_": (f, (meta["fitted"]["n_iter_"],)),
    }
    if has_x:
        e.update({
            "data/X": (f, ("J", "q")), "prior/x_m0": (f, ("q",)),
            "prior/x_W0inv": (f, ("q", "q")), "prior/x_centre": (f, ("q",)),
            "state/mx": (f, (K, "q")), "state/lamx": (f, (K,)),
            "state/Wx": (f, (K, "q", "q")), "state/nux": (f, (K,)),
            "fitted/group_means_": (f, (K, "q")),
            "fitted/group_covariances_": (f, (K, "q", "q")),
        })
    if meta.get("groups_json") is None:
        e["data/groups"] = ("iufbU", ("J",))
    for r in range(meta["n_restarts"]):
        e[f"fitted/elbo_traces_/{r}"] = (f, ("T",))
    return e


def _read_header(zf, info):
    """(shape, fortran_order, dtype, header_bytes) of an .npy entry, data not read."""
    with zf.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        _need(version in ((1, 0), (2, 0), (3, 0)), f"{info.filename} has .npy version "
                                                  f"{version}")
        reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        try:
            shape, fortran, dtype = reader(fp, max_header_size=10000)
        except TypeError:                       # NumPy < 1.24 has no max_header_size
            shape, fortran, dtype = reader(fp)
        return shape, fortran, dtype, fp.tell()


def _bind_shape(name, declared, expected, dims):
    """Match a declared shape to its expected one, binding N, J, p, q, T on first sight."""
    _need(len(declared) == len(expected),
          f"{name} has {len(declared)} dimension(s), expected {len(expected)}")
    for got, want in zip(declared, expected):
        if isinstance(want, int):
            _need(got == want, f"{name} has shape {declared}, expected {expected}")
            continue
        if want == "T":                # each restart's trace has its own length
            continue
        key, extra = (want[:-2], 1) if want.endswith("+1") else (want, 0)
        value = got - extra
        if key in dims:
            _need(dims[key] == value, f"{name} has shape {declared}, which disagrees with "
                                      f"{key} = {dims[key]} of the other arrays")
        else:
            _need(value >= 1, f"{name} has shape {declared}: {key} must be >= 1")
            dims[key] = value


# --------------------------------------------------------------------------- content
def _check_content(meta, arr, dims) -> None:
    N, J, p = dims["N"], dims["J"], dims["p"]
    pm = meta["problem"]
    K, L = pm["K"], pm["L"]
    for name, a in arr.items():
        if a.dtype.kind == "f" and not name.endswith("_covariances_"):
            # E[Sigma] is NaN by design where nu <= D + 1; everything else is finite
            _need(np.isfinite(a).all(), f"{name} holds NaN or infinite values")
    offsets = arr["data/offsets"]
    _need(offsets[0] == 0 and offsets[-1] == N and np.all(np.diff(offsets) >= 1),
          "data/offsets does not split the cells into non-empty groups")
    order = arr["data/order"]
    _need(np.all((order >= 0) & (order < N)) and
          np.all(np.bincount(order, minlength=N) == 1),
          "data/order is not a permutation of the cells (an index repeats or is missing)")
    for name in ("state/rho", "state/xi", "fitted/group_probs_"):
        a = arr[name]
        _need(np.all(a >= 0) and np.allclose(a.sum(axis=1), 1.0, rtol=0, atol=1e-6),
              f"{name} has rows that are not probability distributions")
    _need(np.array_equal(arr["fitted/group_probs_"], arr["state/rho"]),
          "fitted/group_probs_ disagrees with state/rho")
    for name, top in (("fitted/group_labels_", K), ("fitted/cell_labels_", L)):
        _need(np.all((arr[name] >= 0) & (arr[name] < top)), f"{name} holds a cluster index "
                                                            f"outside [0, {top})")
    for name in ("state/v_a", "state/v_b", "state/u_a", "state/u_b", "state/lamy",
                 "state/nuy", "state/y_n") + (("state/lamx", "state/nux") if pm["has_x"]
                                              else ()):
        _need(np.all(arr[name] >= 0) if name == "state/y_n" else np.all(arr[name] > 0),
              f"{name} holds values out of their domain")
    _need(np.all(arr["state/N_jl"] >= -1e-9), "state/N_jl holds negative counts")
    pd_sets = []
    if _diagonal(meta):
        # one-dimensional Wisharts (Gammas): every scale and degree of freedom positive
        for name in ("prior/y_W0inv", "state/Wy"):
            _need(np.all(arr[name] > 0), f"{name} holds values that are not > 0")
        _need(np.all(arr["state/nuy"] > 0), "state/nuy is not > 0")
        _need(meta["problem"]["y_prior"]["nu0"] > 0, "problem.y_prior.nu0 is not > 0")
    else:
        pd_sets += [("prior/y_W0inv", p), ("state/Wy", p)]
        _need(np.all(arr["state/nuy"] > p - 1), "state/nuy is not above p - 1")
    if pm["has_x"]:
        pd_sets += [("prior/x_W0inv", dims["q"]), ("state/Wx", dims["q"])]
    for name, D in pd_sets:
        a = arr[name].reshape(-1, D, D)
        _need(np.allclose(a, np.swapaxes(a, 1, 2), rtol=1e-8, atol=0),
              f"{name} is not symmetric")
        try:
            np.linalg.cholesky(a)
        except np.linalg.LinAlgError:
            raise _Bad(f"{name} is not positive definite") from None
    _need(meta["fitted"]["n_features_in_"] == p,
          f"fitted.n_features_in_ = {meta['fitted']['n_features_in_']} but Y has {p} columns")
    best = meta["fitted"]["best_restart_"]
    _need(np.array_equal(arr[f"fitted/elbo_traces_/{best}"], arr["fitted/elbo_trace_"]),
          "fitted/elbo_trace_ is not the trace of the best restart")
    trace = arr["fitted/elbo_trace_"]
    _need(trace.size == 0 or trace[-1] == meta["fitted"]["elbo_"],
          "fitted.elbo_ is not the last value of elbo_trace_")
    groups = arr.get("data/groups")
    if groups is None:
        _need(len(meta["groups_json"]) == J,
              f"groups_json has {len(meta['groups_json'])} labels for {J} groups")
        labels = meta["groups_json"]
        kinds = {type(g) for g in labels}
        _need(len(kinds) <= 1, "groups_json mixes label types")
    else:
        labels = groups.tolist()
    _need(len(set(labels)) == J and not any(isinstance(g, float) and g != g for g in labels),
          "the group labels are not unique")


# --------------------------------------------------------------------------- reading
def _available_bytes():
    from ._validation import SKIP_MEMORY_CHECK_ENV, available_memory_bytes

    if os.environ.get(SKIP_MEMORY_CHECK_ENV, "").strip().lower() in ("1", "true", "yes"):
        return None
    return available_memory_bytes()


def _read(path, format_name, format_version):
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        _need(len(infos) <= MAX_ENTRIES, f"it has {len(infos)} entries")
        names = [i.filename for i in infos]
        _need(len(set(names)) == len(names), "an entry name repeats")
        for info in infos:
            _need(info.filename.endswith(".npy"), f"entry {info.filename!r} is not .npy")
            _need(info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED),
                  f"entry {info.filename!r} uses an unsupported compression")
            bound = (info.compress_size if info.compress_type == zipfile.ZIP_STORED
                     else _MAX_DEFLATE_RATIO * info.compress_size + _NPY_HEADER_SLACK)
            _need(info.file_size <= bound,
                  f"entry {info.filename!r} declares {info.file_size} bytes, more than its "
                  f"{info.compress_size} compressed bytes can hold")
        total = sum(i.file_size for i in infos)
        avail = _available_bytes()
        _need(avail is None or total <= avail,
              f"its arrays need {total} bytes but only {avail} are available")
        by_name = {i.filename[:-4]: i for i in infos}
        _need("metadata.json" in by_name, "it has no metadata.json entry")
        meta_info = by_name.pop("metadata.json")
        _need(meta_info.file_size <= MAX_METADATA_BYTES, "metadata.json is too large")
        shape, _, dtype, _ = _read_header(zf, meta_info)
        _need(dtype == np.uint8 and len(shape) == 1, "metadata.json is not a byte array")
        with zf.open(meta_info) as fp:
            raw = np.lib.format.read_array(fp, allow_pickle=False)
        meta = json.loads(raw.tobytes().decode("utf-8"),
                          object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
        _rename_old_keys(meta)
        _check_meta(meta, format_name, format_version)

        expected = _expected_entries(meta)
        missing = sorted(set(expected) - set(by_name))
        _need(not missing, f"entries {missing[:5]} are missing")
        unknown = sorted(set(by_name) - set(expected))
        _need(not unknown, f"it has unknown entries {unknown[:5]}")
        dims = {}
        headers = {}
        for name in sorted(expected, key=lambda n: (n != "data/order", n != "data/offsets",
                                                     n != "data/Y", n)):
            info = by_name[name]
            kinds, want = expected[name]
            shape, fortran, dtype, header_len = _read_header(zf, info)
            _need(dtype.kind in kinds and not dtype.hasobject and dtype.fields is None
                  and dtype.subdtype is None,
                  f"{name} has dtype {dtype}, expected kind {kinds!r}")
            if kinds in ("f", "i"):
                _need(dtype.itemsize == 8, f"{name} has dtype {dtype}, expected 64-bit")
            _bind_shape(name, shape, want, dims)
            nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
            _need(header_len + nbytes == info.file_size,
                  f"{name} declares {nbytes} bytes of data but its entry holds "
                  f"{info.file_size - header_len}")
            headers[name] = dtype
        dims.setdefault("q", 0)
        arr = {}
        for name, dtype in headers.items():
            with zf.open(by_name[name]) as fp:
                a = np.lib.format.read_array(fp, allow_pickle=False)
            if dtype.kind in "fi" and not dtype.isnative:
                a = a.astype(dtype.newbyteorder("="))
            arr[name] = np.ascontiguousarray(a)
    _check_content(meta, arr, dims)
    return meta, arr


def read_model_file(path, format_name: str, format_version: int):
    """The validated ``(metadata, arrays)`` of a model file, or a ModelFileError.

    A path that does not exist or cannot be opened raises the usual ``OSError``
    (``FileNotFoundError``, ``PermissionError``, ``IsADirectoryError``): it is not a damaged
    file.
    """
    path = os.fspath(path)
    with open(path, "rb"):        # OSErrors about the path itself propagate as they are
        pass
    try:
        return _read(path, format_name, format_version)
    except _Bad as exc:
        raise ModelFileError(path, str(exc)) from None
    except ModelFileError:
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:   # noqa: BLE001 - CRC, truncation, zlib, JSON, recursion, ...
        raise ModelFileError(path, f"it could not be read ({type(exc).__name__}: "
                                   f"{exc})"[:500]) from exc
