"""Save / load: exact round trips in an open format, and resuming a fit from a file."""

import json
import zipfile
from dataclasses import fields

import numpy as np
import pytest

import nestedatoms as na
from nestedatoms._state import State


def _sim(seed=0):
    return na.simulate(n_groups=8, cells_per_group=np.arange(8) * 5 + 20, n_group_clusters=2,
                       n_cell_clusters=3, n_group_features=2, n_cell_features=3,
                       random_state=seed)


def _assert_identical(a, b):
    """Every fitted attribute, the state and the problem bitwise equal."""
    np.testing.assert_array_equal(a.cell_probs_, b.cell_probs_)   # derived from state_.xi
    for name, value in vars(a).items():
        other = getattr(b, name)
        if name in ("problem_", "state_"):
            continue
        if isinstance(value, np.ndarray):
            assert other.dtype == value.dtype, name
            np.testing.assert_array_equal(other, value, err_msg=name)
        elif isinstance(value, list) and value and isinstance(value[0], np.ndarray):
            assert len(other) == len(value)
            for x, y in zip(value, other):
                np.testing.assert_array_equal(x, y, err_msg=name)
        else:
            assert other == value, name
    for f in fields(State):
        x, y = getattr(a.state_, f.name), getattr(b.state_, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and np.array_equal(x, y), f.name
        else:
            assert x == y, f.name
    pa, pb = a.problem_, b.problem_
    for name in ("Y", "X", "offsets", "order", "groups"):
        x, y = getattr(pa.data, name), getattr(pb.data, name)
        assert (x is None and y is None) or np.array_equal(x, y), name
    for layer in ("y_prior", "x_prior"):
        x, y = getattr(pa, layer), getattr(pb, layer)
        if x is None:
            assert y is None
            continue
        assert x.lam0 == y.lam0 and x.nu0 == y.nu0
        assert np.array_equal(x.m0, y.m0) and np.array_equal(x.W0inv, y.W0inv)
    assert pa.alpha_prior == pb.alpha_prior and pa.beta_prior == pb.beta_prior
    assert np.array_equal(pa.y_centre, pb.y_centre)
    assert (pa.K, pa.L) == (pb.K, pb.L)


@pytest.mark.parametrize("kind", ["nam", "cam_fixed", "flat"])
def test_round_trip_is_exact(tmp_path, kind):
    sim = _sim()
    kwargs = dict(n_group_clusters=4, n_cell_clusters=5, n_init=2, max_iter=30,
                  random_state=1)
    if kind == "cam_fixed":
        kwargs.update(group_concentration=0.5, cell_concentration=2.0)
        args = (sim.Y, sim.groups.astype(object))     # object labels go through JSON
    elif kind == "flat":
        args = (sim.Y,)
    else:
        args = (sim.Y, sim.groups, sim.X)
    model = na.NestedAtomsModel(**kwargs).fit(*args)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = na.NestedAtomsModel.load(path)
    _assert_identical(model, loaded)
    assert loaded.get_params() == model.get_params()
    groups = args[1] if len(args) > 1 else None
    np.testing.assert_array_equal(loaded.predict_proba(sim.Y, groups),
                                  model.predict_proba(sim.Y, groups))


def test_file_is_open_format(tmp_path):
    """A plain zip of .npy arrays plus JSON metadata: readable without pickle."""
    model = na.NestedAtomsModel(n_group_clusters=3, n_cell_clusters=4, n_init=1,
                                max_iter=5, random_state=0).fit(*(lambda s: (s.Y, s.groups,
                                                                             s.X))(_sim()))
    path = tmp_path / "m.npz"
    model.save(path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    assert "metadata.json.npy" in names and "state/xi.npy" in names
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(npz["metadata.json"].tobytes().decode())
        assert all(npz[k].dtype != object for k in npz.files)
        np.testing.assert_array_equal(npz["fitted/group_probs_"], model.group_probs_)
        np.testing.assert_array_equal(npz["state/xi"][np.argsort(npz["data/order"])],
                                      model.cell_probs_)
    assert meta["format"] == "nestedatoms-model" and meta["format_version"] == 1
    assert meta["params"]["n_cell_clusters"] == 4
    # the suffix is optional on load, as numpy adds it on save
    model.save(tmp_path / "plain")
    assert na.NestedAtomsModel.load(tmp_path / "plain").elbo_ == model.elbo_


def test_bad_files_are_refused(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(na.ModelFileError, match="junk.npz: not a valid nestedatoms model file: "
                                                "it could not be read"):
        na.NestedAtomsModel.load(junk)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.arange(3))
    with pytest.raises(na.ModelFileError, match="no metadata.json"):
        na.NestedAtomsModel.load(other)
    future = tmp_path / "future.npz"
    meta = {"format": "nestedatoms-model", "format_version": 99}
    np.savez(future, **{"metadata.json": np.frombuffer(json.dumps(meta).encode(), np.uint8)})
    with pytest.raises(na.ModelFileError, match="newer"):
        na.NestedAtomsModel.load(future)
    with pytest.raises(ValueError, match="not fitted"):
        na.NestedAtomsModel().save(tmp_path / "x.npz")


def test_resume_after_load_reproduces_an_uninterrupted_fit(tmp_path):
    """fit(max_iter=20) == fit(max_iter=10) -> save -> load -> resume(10), bit for bit."""
    sim = _sim(seed=2)
    kwargs = dict(n_group_clusters=4, n_cell_clusters=5, n_init=2, tol=0, random_state=3)
    full = na.NestedAtomsModel(max_iter=20, **kwargs).fit(sim.Y, sim.groups, sim.X)
    half = na.NestedAtomsModel(max_iter=10, **kwargs).fit(sim.Y, sim.groups, sim.X)
    half.save(tmp_path / "half.npz")
    resumed = na.NestedAtomsModel.load(tmp_path / "half.npz").resume(10)
    assert full.best_restart_ == resumed.best_restart_
    np.testing.assert_array_equal(resumed.elbo_trace_, full.elbo_trace_)
    assert resumed.n_iter_ == full.n_iter_ == 20
    np.testing.assert_array_equal(resumed.cell_probs_, full.cell_probs_)
    np.testing.assert_array_equal(resumed.group_probs_, full.group_probs_)
    assert np.all(np.diff(resumed.elbo_trace_) >= -1e-9 * np.abs(resumed.elbo_trace_[1:]))
    with pytest.raises(ValueError, match="n_iter"):
        resumed.resume(0)
