"""Issue 18, "nothing lost, nothing silently wrong": a hostile user's inputs, class by class.

1. constant columns of any magnitude; 2. atomic writes; 3. untrusted model files (fuzzed);
4. group labels and their alignment with X; 5. no NaN passed off as a result; 6. the command
line's safety (tests/test_cli.py has the process-level ones); 7. AnnData; 8. public exceptions
and warnings; 9. memory refused before copying.

Every random case is seeded, so CI runs the same cases every time.
"""

import io
import json
import os
import zipfile

import numpy as np
import pytest

import nestedatoms as na
from nestedatoms.exceptions import ModelFileError

FAST = dict(n_group_clusters=3, n_cell_clusters=4, n_init=1, max_iter=15, tol=0,
            random_state=0)


def _small_sim(seed=0, n_groups=6):
    return na.simulate(n_groups=n_groups, cells_per_group=np.arange(n_groups) % 3 * 4 + 6,
                       n_group_clusters=2, n_cell_clusters=3, n_group_features=2,
                       n_cell_features=2, random_state=seed)


# =========================================================================================
# 3. Untrusted model files
# =========================================================================================
@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    sim = _small_sim()
    model = na.NestedAtomsModel(**FAST).fit(sim.Y, sim.groups, sim.X)
    path = tmp_path_factory.mktemp("model") / "m.npz"
    model.save(path)
    return path, path.read_bytes(), model


def _entries(raw: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _zip(entries: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _from_npy(data: bytes):
    return np.load(io.BytesIO(data), allow_pickle=False)


def _meta(entries):
    return json.loads(_from_npy(entries["metadata.json.npy"]).tobytes())


def _with_meta(entries, meta=None, raw_json=None):
    out = dict(entries)
    text = raw_json if raw_json is not None else json.dumps(meta).encode()
    out["metadata.json.npy"] = _npy(np.frombuffer(text, dtype=np.uint8))
    return out


def _same_model(a, b) -> bool:
    """Loaded back exactly (what a harmless byte flip, e.g. in a timestamp, must give)."""
    for name in ("cell_probs_", "group_probs_", "cell_means_", "elbo_trace_"):
        if not np.array_equal(getattr(a, name), getattr(b, name)):
            return False
    return (a.elbo_ == b.elbo_ and np.array_equal(a.problem_.data.Y, b.problem_.data.Y)
            and np.array_equal(a.problem_.data.order, b.problem_.data.order))


def _load_bytes(tmp_path, raw, name="x.npz"):
    path = tmp_path / name
    path.write_bytes(raw)
    return na.NestedAtomsModel.load(path)


def test_valid_file_loads(model_file, tmp_path):
    path, raw, model = model_file
    assert _same_model(_load_bytes(tmp_path, raw), model)


N_FLIPS = 1500


def test_fuzz_byte_flips(model_file, tmp_path):
    """Random byte changes: each either raises ModelFileError or loads the same model."""
    _, raw, model = model_file
    rng = np.random.default_rng(18)
    outcomes = {"refused": 0, "same": 0}
    for case in range(N_FLIPS):
        data = bytearray(raw)
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(len(data)))
            data[pos] = (data[pos] + int(rng.integers(1, 256))) % 256
        try:
            loaded = _load_bytes(tmp_path, bytes(data))
        except ModelFileError as exc:
            assert str(tmp_path / "x.npz") in str(exc)
            outcomes["refused"] += 1
        else:
            assert _same_model(loaded, model), f"case {case} loaded a different model"
            outcomes["same"] += 1
    assert outcomes["refused"] > N_FLIPS // 2, outcomes


def test_fuzz_truncations(model_file, tmp_path):
    """Every truncation (about 300 lengths, with the first and last bytes in full) is
    refused with ModelFileError."""
    _, raw, _ = model_file
    lengths = sorted(set(range(0, 64)) | set(range(64, len(raw), max(1, len(raw) // 200)))
                     | set(range(len(raw) - 64, len(raw))))
    for n in lengths:
        with pytest.raises(ModelFileError):
            _load_bytes(tmp_path, raw[:n])


def _edits():
    """(name, function entries -> entries, expected message fragment)."""
    def meta_edit(**changes):
        def f(e):
            meta = _meta(e)
            for key, value in changes.items():
                target = meta
                *path, last = key.split(".")
                for part in path:
                    target = target[part]
                target[last] = value
            return _with_meta(e, meta)
        return f

    def array_edit(name, fn):
        def f(e):
            out = dict(e)
            out[name + ".npy"] = _npy(fn(_from_npy(e[name + ".npy"])))
            return out
        return f

    def drop(name):
        return lambda e: {k: v for k, v in e.items() if k != name + ".npy"}

    def add(name, a):
        return lambda e: {**e, name + ".npy": _npy(a)}

    def shuffle_dup(order):
        o = order.copy()
        o[1] = o[0]
        return o

    def bad_header(name, descr, shape):
        # an .npy header declaring ~8 GB in front of a few bytes
        def f(e):
            out = dict(e)
            hdr = b"{'descr': %s, 'fortran_order': False, 'shape': %s, }" % (
                repr(descr).encode(), repr(shape).encode())
            hdr = hdr + b" " * (118 - len(hdr)) + b"\n"
            out[name + ".npy"] = (b"\x93NUMPY\x01\x00" + len(hdr).to_bytes(2, "little") + hdr
                                  + b"\0" * 64)
            return out
        return f

    def deep_json(e):
        return _with_meta(e, raw_json=b"[" * 100000 + b"]" * 100000)

    cases = [
        ("version 0", meta_edit(format_version=0), "format_version 0"),
        ("version -1", meta_edit(format_version=-1), "format_version -1"),
        ("version True", meta_edit(format_version=True), "format_version True"),
        ("version 1.0", meta_edit(format_version=1.0), "format_version 1.0"),
        ("version '1'", meta_edit(format_version="1"), "format_version '1'"),
        ("version 2", meta_edit(format_version=2), "newer"),
        ("foreign format", meta_edit(format="something-else"), "format"),
        ("K disagrees", meta_edit(**{"problem.K": 7}), "shape"),
        ("L zero", meta_edit(**{"problem.L": 0}), "problem.L"),
        ("has_x false", meta_edit(**{"problem.has_x": False}), "x_prior"),
        ("lam0 negative", meta_edit(**{"problem.y_prior.lam0": -1.0}), "y_prior"),
        ("alpha shape 0", meta_edit(**{"problem.alpha_prior.shape": 0}), "alpha_prior"),
        ("state scalar str", meta_edit(**{"state_scalars.alpha_rate": "x"}), "alpha_rate"),
        ("best restart out", meta_edit(**{"fitted.best_restart_": 5}), "best_restart_"),
        ("n_restarts huge", meta_edit(n_restarts=10**9), "n_restarts"),
        ("n_iter wrong", meta_edit(**{"fitted.n_iter_": 3}), "elbo_trace_"),
        ("n_features wrong", meta_edit(**{"fitted.n_features_in_": 9}), "n_features_in_"),
        ("elbo wrong", meta_edit(**{"fitted.elbo_": 1.0}), "elbo_"),
        ("params invalid", meta_edit(**{"params.n_init": -3}), "parameters are invalid"),
        ("params n_threads", meta_edit(**{"params.n_threads": "many"}), "parameters"),
        ("groups_json nested", meta_edit(groups_json=[[1, 2]] * 6), "groups_json"),
        ("not an object", lambda e: _with_meta(e, raw_json=b"[1, 2]"), "JSON object"),
        ("json NaN", lambda e: _with_meta(e, raw_json=b'{"format": NaN}'), "NaN"),
        ("duplicate key", lambda e: _with_meta(
            e, raw_json=b'{"format": "nestedatoms-model", "format": "x"}'), "repeats a key"),
        ("not utf-8", lambda e: _with_meta(e, raw_json=b"\xff\xfe{}"), "could not be read"),
        ("deep nesting", deep_json, "could not be read"),
        ("duplicate order", array_edit("data/order", shuffle_dup), "permutation"),
        ("order out of range", array_edit("data/order", lambda o: o + 1), "permutation"),
        ("offsets wrong", array_edit("data/offsets", lambda o: o[::-1].copy()), "offsets"),
        ("Y shape", array_edit("data/Y", lambda a: a[:-1]), "shape"),
        ("Y int", array_edit("data/Y", lambda a: a.astype(np.int64)), "dtype"),
        ("Y float32", array_edit("data/Y", lambda a: a.astype(np.float32)), "64-bit"),
        ("Y 3-D", array_edit("data/Y", lambda a: a[None]), "dimension"),
        ("xi NaN", array_edit("state/xi", lambda a: np.where(a > 0.5, np.nan, a)), "NaN"),
        ("xi not normalised", array_edit("state/xi", lambda a: a * 2), "distributions"),
        ("rho negative", array_edit("state/rho", lambda a: -a), "distributions"),
        ("Wy not PD", array_edit("state/Wy", lambda a: -a), "positive definite"),
        ("Wy asymmetric", array_edit("state/Wy", lambda a: a + np.triu(np.ones(a.shape[1:]),
                                                                       1)), "symmetric"),
        ("nuy small", array_edit("state/nuy", lambda a: a * 0 + 0.5), "nuy"),
        ("labels out of range", array_edit("fitted/cell_labels_", lambda a: a + 100),
         "cell_labels_"),
        ("group labels repeat", array_edit("data/groups", lambda a: np.repeat(a[:1], a.size)),
         "unique"),
        ("groups complex", array_edit("data/groups", lambda a: np.arange(a.size) + 1j),
         "dtype"),
        ("group_probs differ", array_edit("fitted/group_probs_", lambda a: a[::-1].copy()),
         "group_probs_"),
        ("missing xi", drop("state/xi"), "missing"),
        ("missing metadata", drop("metadata.json"), "metadata.json"),
        ("unknown entry", add("evil", np.arange(3)), "unknown"),
        ("not npy", lambda e: {**e, "readme.txt": b"hi"}, ".npy"),
        ("huge Y header", bad_header("data/Y", "<f8", (10**9, 1)), "disagrees with N"),
        ("huge order header", bad_header("data/order", "<i8", (10**9,)), "bytes of data"),
        ("object header", bad_header("data/Y", "|O", (60, 2)), "dtype"),
        ("structured header", bad_header("data/Y", [("a", "<f8")], (60, 2)), "dtype"),
    ]
    return cases


EDITS = _edits()


@pytest.mark.parametrize("name,edit,fragment", EDITS, ids=[c[0] for c in EDITS])
def test_structural_edits_are_refused(model_file, tmp_path, name, edit, fragment):
    _, raw, _ = model_file
    edited = _zip(edit(_entries(raw)))
    with pytest.raises(ModelFileError, match=None) as info:
        _load_bytes(tmp_path, edited)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "x.npz") + ": not a valid nestedatoms model"), \
        message
    assert fragment in message, message
    assert isinstance(info.value, ValueError) and info.value.path == str(tmp_path / "x.npz")


def test_rezipped_unchanged_file_still_loads(model_file, tmp_path):
    """The edit machinery itself leaves a valid file valid (so the refusals above are the
    edits' doing)."""
    _, raw, model = model_file
    assert _same_model(_load_bytes(tmp_path, _zip(_entries(raw))), model)


def test_declared_sizes_are_checked_before_allocation(model_file, tmp_path):
    """A zip entry declaring far more bytes than its compressed size can hold is refused
    before any of it is read, without allocating it."""
    import tracemalloc

    _, raw, _ = model_file
    entries = _entries(raw)
    # a genuine 400 MB stream of zeros deflates to ~400 kB: consistent ratio, but the
    # header's shape disagrees with the metadata, so it is refused from the header alone
    hdr_shape = (50_000_000,)
    bomb = _npy(np.zeros(1))[:0]     # placeholder, built by hand below
    hdr = (b"{'descr': '<f8', 'fortran_order': False, 'shape': %r, }" % (hdr_shape,))
    hdr = hdr + b" " * (118 - len(hdr)) + b"\n"
    bomb = b"\x93NUMPY\x01\x00" + len(hdr).to_bytes(2, "little") + hdr
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, v in entries.items():
            if k != "state/y_n.npy":
                zf.writestr(k, v)
        with zf.open("state/y_n.npy", "w", force_zip64=True) as fp:
            fp.write(bomb)
            chunk = b"\0" * 2**20
            for _ in range(400):
                fp.write(chunk)
    path = tmp_path / "bomb.npz"
    path.write_bytes(buf.getvalue())
    assert path.stat().st_size < 5e6
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="shape"):
            na.NestedAtomsModel.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6, peak


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        na.NestedAtomsModel.load(tmp_path / "nothing.npz")
