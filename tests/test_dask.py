"""Fitting a dask array Y on dask workers: the same bits as in memory (model section 7)."""

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import nestedatoms as na

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
pytest.importorskip("zarr")

BATCH = 700
FIT = dict(random_state=3, n_init=2, max_iter=10, tol=0, batch_size=BATCH)
STATE = ("rho", "N_jl", "y_n", "y_s1", "y_s2", "H_xi", "H_rho", "my", "lamy", "Wy", "nuy", "mx",
         "lamx", "Wx", "nux", "u_a", "u_b", "v_a", "v_b", "alpha_shape", "alpha_rate",
         "beta_shape", "beta_rate", "group_prior_scale", "donor_concentration")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A small cohort written once to zarr, sorted by donor, and its in-memory fit."""
    sim = na.simulate_cohort(n_groups=40, median_cells=80, n_cell_clusters=5,
                             random_state=11)
    path = tmp_path_factory.mktemp("dask") / "cells.zarr"
    Y, groups = na.write_sorted_zarr(sim.Y, sim.groups, path, chunk_rows=512)
    Y_mem = np.asarray(Y.compute())
    reference = na.NestedAtomsModel(**FIT).fit(Y_mem, groups, sim.X)
    assert reference.problem_.batches.n_batches >= 4
    return sim, path, groups, reference


def _zarr_cells(path):
    return da.from_zarr(str(path), component="Y")


def _assert_same_bits(model, reference):
    assert np.array_equal(model.elbo_trace_, reference.elbo_trace_)
    for a, b in zip(model.elbo_traces_, reference.elbo_traces_):
        assert np.array_equal(a, b)
    for name in STATE:
        x, y = getattr(model.state_, name), getattr(reference.state_, name)
        assert np.array_equal(np.asarray(x), np.asarray(y)), name
    assert np.array_equal(model.cell_labels_, reference.cell_labels_)
    assert np.array_equal(model.group_probs_, reference.group_probs_)
    assert np.array_equal(np.asarray(model.cell_probs_.compute()), reference.cell_probs_)


@pytest.fixture(scope="module", params=[1, 2, 3])
def client(request):
    with distributed.LocalCluster(n_workers=request.param, threads_per_worker=1,
                                  processes=True, dashboard_address=":0") as cluster:
        with distributed.Client(cluster) as c:
            yield c


def test_workers_give_the_in_memory_bits(cohort, client):
    sim, path, groups, reference = cohort
    model = na.NestedAtomsModel(**FIT).fit(_zarr_cells(path), groups, sim.X)
    assert isinstance(model.state_.xi, na._dask.WorkerXi)     # xi never came to the driver
    _assert_same_bits(model, reference)
    trace = model.elbo_trace_
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:]))


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """Three well separated cell types in a zarr store, and an in-memory problem with the
    batch plan a dask fit uses, started with two of the types in one atom."""
    from nestedatoms._batches import in_memory_summary, plan_batches
    from nestedatoms._data import prepare_data

    sim = na.simulate(n_groups=30, cells_per_group=40, n_group_clusters=3, n_cell_clusters=3,
                      n_group_features=2, n_cell_features=2, lam_x=0.005, lam_y=0.005,
                      alpha0_x=1e6, random_state=1)
    path = tmp_path_factory.mktemp("split") / "cells.zarr"
    Y, groups = na.write_sorted_zarr(sim.Y, sim.groups, path, chunk_rows=256)
    model = na.NestedAtomsModel(n_group_clusters=6, n_cell_clusters=6, batch_size=300)
    data = prepare_data(np.asarray(Y.compute()), groups, sim.X)
    prob = model._problem(data, 300, in_memory_summary(data.Y, plan_batches(data.offsets, 300)))
    truth = sim.cell_truth[np.argsort(sim.groups, kind="stable")]
    start = np.where(truth == 1, 0, truth)
    return sim, path, groups, model, prob, truth, start


def test_split_on_workers_gives_the_in_memory_bits(merged, client):
    """An atom covering two cell types is split on the workers (``split_atoms_batched``) with
    the bits of the in-memory move over the same batches, for 1, 2 and 3 workers."""
    from sklearn.metrics import adjusted_rand_score as ari

    from nestedatoms._backend import get_backend
    from nestedatoms._dask import prepare_dask_data
    from nestedatoms._init import state_from_labels
    from nestedatoms._steps import elbo, update_cells
    from nestedatoms.moves import split_cell_atoms_batched

    sim, path, groups, model, prob, truth, start = merged
    data = prepare_dask_data(_zarr_cells(path), groups, sim.X, 300, "cpp", 1)
    on_dask = model._problem(data, 300, data.summary)
    assert on_dask.batches.n_batches == prob.batches.n_batches == 4
    be = get_backend("cpp")
    st = state_from_labels(be, prob, start, sim.group_truth)
    st_d = st.copy()
    st_d.xi = na._dask.WorkerXi(*st.xi.shape)
    update_cells(be, prob, st)
    update_cells(be, on_dask, st_d)
    before = elbo(be, prob, st)
    assert ari(truth, st.xi.argmax(axis=1)) < 0.9
    assert split_cell_atoms_batched(be, prob, st)
    assert split_cell_atoms_batched(be, on_dask, st_d)
    assert isinstance(st_d.xi, na._dask.WorkerXi)
    assert elbo(be, prob, st) > before
    assert ari(truth, st.xi.argmax(axis=1)) == 1.0
    for name in STATE:
        assert np.array_equal(np.asarray(getattr(st, name)), np.asarray(getattr(st_d, name))), name
    assert np.array_equal(st_d.xi.labels(on_dask), st.xi.argmax(axis=1))
    assert np.array_equal(np.asarray(st_d.xi.probs(on_dask).compute()), st.xi)


def test_cells_kept_on_their_workers_change_no_bit(cohort, client, monkeypatch):
    """The cells fit the workers' memory many times over, so each batch is read once and
    kept on one worker, the batches spread evenly, and every pass runs where its rows are;
    the bits are the in-memory fit's, as they are when reading the store every pass."""
    import dask

    from nestedatoms._kept_cells import KeptCells

    sim, path, groups, reference = cohort
    seen, holders = [], []
    original = na._dask.DaskData.map

    def watched(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        seen.append(self._kept)
        if self._kept:
            holders[:] = [client.who_has(self._kept.blocks)]
        return result

    monkeypatch.setattr(na._dask.DaskData, "map", watched)
    model = na.NestedAtomsModel(**FIT).fit(_zarr_cells(path), groups, sim.X)
    _assert_same_bits(model, reference)
    assert seen and all(isinstance(k, KeptCells) for k in seen)
    assert model.problem_.data._kept is None            # let go at the end of the fit
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    # every batch on one worker only: no task ran away from its rows and fetched them
    assert all(len(w) == 1 for w in holders[0].values())
    per_worker = np.bincount([workers.index(w[0]) for w in holders[0].values()],
                             minlength=len(workers))
    assert per_worker.sum() == reference.problem_.batches.n_batches
    assert per_worker.max() - per_worker.min() <= 1
    if len(workers) == 2:       # the store read every pass (the setting off): the same bits
        seen.clear()
        with dask.config.set({"nestedatoms.keep-cells": False}):
            off = na.NestedAtomsModel(**FIT).fit(_zarr_cells(path), groups, sim.X)
        assert seen and not any(seen)
        _assert_same_bits(off, reference)


def test_kept_batches_run_per_worker_thread_in_batch_order():
    from nestedatoms._kept_cells import _tasks_per_thread

    holders = {"b0": ("w1",), "b1": ("w2",), "b2": ("w1",), "b3": (), "b4": ("w1",),
               "b5": ("w1", "w2"), "b6": ("w2",)}
    keys = [f"b{i}" for i in range(7)]
    tasks = _tasks_per_thread(holders, keys, {"w1": 2, "w2": 1})
    # w1's batches in batch order, in two runs (two threads); w2's in one; an unheld batch
    # (its worker died: dask reads it again) alone and anywhere
    assert sorted((tuple(run), w) for run, w in tasks) == sorted(
        [((0, 2), "w1"), ((4, 5), "w1"), ((1, 6), "w2"), ((3,), None)])
    assert sorted(b for run, _ in tasks for b in run) == list(range(7))


def test_keep_cells_setting(client):
    import dask

    from nestedatoms._kept_cells import KEEP_FRACTION, _workers_memory, keep_cells

    memory = _workers_memory(client)
    assert 0 < memory <= na._kept_cells._host_memory()
    assert keep_cells(int(KEEP_FRACTION * memory), client)
    assert not keep_cells(int(KEEP_FRACTION * memory) + 1, client)
    with dask.config.set({"nestedatoms.keep-cells": True}):
        assert keep_cells(10 * memory, client)
    with dask.config.set({"nestedatoms.keep-cells": "false"}):
        assert not keep_cells(1, client)
    with dask.config.set({"nestedatoms.keep-cells": "sometimes"}), \
            pytest.raises(ValueError, match="keep-cells"):
        keep_cells(1, client)


def test_a_worker_killed_mid_fit_gives_the_same_bits(cohort, monkeypatch):
    sim, path, groups, reference = cohort
    calls = []
    original = na._dask.DaskData.map

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as c:
        pids = c.run(os.getpid)
        victim = sorted(pids.values())[0]

        def map_and_kill(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 8:       # a few sweeps in: kill a worker while tasks run
                threading.Timer(0.02, os.kill, (victim, signal.SIGKILL)).start()
            return original(self, *args, **kwargs)

        monkeypatch.setattr(na._dask.DaskData, "map", map_and_kill)
        model = na.NestedAtomsModel(**FIT).fit(_zarr_cells(path), groups, sim.X)
        assert victim not in c.run(os.getpid).values()      # it did die (the nanny restarted it)
    _assert_same_bits(model, reference)


@pytest.mark.filterwarnings("ignore::nestedatoms.ConvergenceWarning")   # 52 sweeps, on purpose
def test_threaded_scheduler_moves_and_default_batch_size(cohort):
    """No client: dask's local scheduler.  A longer run, so that the moves that run at
    convergence (or every 50 sweeps) fire on the dask path too.  A dask Y within one batch
    is read and fit in memory, so it equals the in-memory default fit."""
    sim, path, groups, _ = cohort
    params = {**FIT, "n_init": 1, "max_iter": 52, "tol": 1e-5}
    Y = _zarr_cells(path)
    on_dask = na.NestedAtomsModel(**params).fit(Y, groups, sim.X)
    in_memory = na.NestedAtomsModel(**params).fit(np.asarray(Y.compute()), groups, sim.X)
    fired = {m["move"] for m in on_dask.moves_}
    assert {"sort_clusters", "merge_cell_atoms", "search_group_partition"} <= fired
    assert on_dask.moves_ == in_memory.moves_
    _assert_same_bits(on_dask, in_memory)
    # resume maps over the same store; predict needs only the global factors
    _assert_same_bits(on_dask.resume(2), in_memory.resume(2))
    new = np.asarray(Y[:50].compute())
    assert np.array_equal(on_dask.predict_proba(new, groups[:50]),
                          in_memory.predict_proba(new, groups[:50]))
    params = {**FIT, "batch_size": None, "n_init": 1, "max_iter": 3}
    whole = na.NestedAtomsModel(**params).fit(Y, groups, sim.X)
    mem = na.NestedAtomsModel(**params).fit(np.asarray(Y.compute()), groups, sim.X)
    assert isinstance(whole.state_.xi, np.ndarray)
    assert np.array_equal(whole.elbo_trace_, mem.elbo_trace_)


def test_unsorted_cells_are_refused_with_the_fix(cohort):
    sim = cohort[0]
    Y = da.from_array(sim.Y, chunks=(500, -1))
    groups = np.asarray(sim.groups)
    shuffled = np.random.default_rng(0).permutation(groups.size)
    with pytest.raises(ValueError, match="write_sorted_zarr"):
        na.NestedAtomsModel(**FIT).fit(Y[shuffled], groups[shuffled], sim.X)


def test_bad_values_are_refused(cohort):
    sim, path, groups, _ = cohort
    Y = _zarr_cells(path).copy()
    bad = da.where(da.arange(Y.shape[0])[:, None] == 5, np.nan, Y)
    with pytest.raises(ValueError, match="NaN or infinite.*row\\(s\\) \\[5\\]"):
        na.NestedAtomsModel(**FIT).fit(bad, groups, sim.X)
    const = da.concatenate([Y, da.ones((Y.shape[0], 1), chunks=(Y.chunks[0], 1))], axis=1)
    with pytest.raises(ValueError, match="constant column"):
        na.NestedAtomsModel(**FIT).fit(const, groups, sim.X)


def test_import_stays_light():
    code = "import sys, nestedatoms; print(sorted(m for m in ('dask', 'zarr', 'distributed') " \
           "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def _anndata_store(cohort, tmp_path):
    ad = pytest.importorskip("anndata")
    import pandas as pd

    sim, path, groups, _ = cohort
    Y = np.asarray(_zarr_cells(path).compute())
    obs = pd.DataFrame({"donor_id": pd.Categorical(groups)},
                       index=[f"cell{i}" for i in range(groups.size)])
    adata = ad.AnnData(obs=obs, obsm={"X_pca": Y})
    adata.write_zarr(tmp_path / "cells.h5ad.zarr")
    return ad, adata, tmp_path / "cells.h5ad.zarr"


def _same_results(lazy, memory):
    assert lazy.obs.equals(memory.obs)
    assert np.array_equal(np.asarray(lazy.obsm["nam_cell_probs"].compute()),
                          memory.obsm["nam_cell_probs"])
    assert np.array_equal(lazy.uns["nam"]["elbo_trace"], memory.uns["nam"]["elbo_trace"])
    assert lazy.uns["nam"]["groups"].equals(memory.uns["nam"]["groups"])


TL = dict(batch_size=BATCH, n_init=1, max_iter=6, tol=0, verbose=0)


def test_tl_fit_on_an_anndata_with_a_dask_representation(cohort, tmp_path):
    ad, memory, store = _anndata_store(cohort, tmp_path)
    import zarr

    root = zarr.open_group(str(store), mode="r")
    lazy = ad.AnnData(obs=ad.io.read_elem(root["obs"]),
                      obsm={"X_pca": ad.experimental.read_elem_lazy(root["obsm"]["X_pca"])})
    assert hasattr(lazy.obsm["X_pca"], "dask")
    na.tl.fit(lazy, **TL)
    na.tl.fit(memory, **TL)
    _same_results(lazy, memory)


def test_tl_fit_on_read_lazy(cohort, tmp_path):
    pytest.importorskip("xarray")
    ad, memory, store = _anndata_store(cohort, tmp_path)
    lazy = ad.experimental.read_lazy(str(store))
    na.tl.fit(lazy, **TL)
    na.tl.fit(memory, **TL)
    _same_results(lazy, memory)


def test_cli_fit_on_a_scheduler_address(cohort, tmp_path):
    ad, adata, _ = _anndata_store(cohort, tmp_path)
    from nestedatoms.cli import main

    source = tmp_path / "cells.h5ad"
    adata.write_h5ad(source)
    common = ["fit", str(source), "--group-key", "donor_id", "--batch-size", str(BATCH),
              "--n-init", "1", "--max-iter", "6", "--tol", "0", "--quiet", "--no-rank-genes"]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        assert main(common[:2] + [str(tmp_path / "dask.h5ad")] + common[2:]
                    + ["--scheduler", cluster.scheduler_address]) == 0
    assert main(common[:2] + [str(tmp_path / "memory.h5ad")] + common[2:]) == 0
    on_dask, in_memory = (ad.read_h5ad(tmp_path / f"{n}.h5ad") for n in ("dask", "memory"))
    assert on_dask.obs.equals(in_memory.obs)
    assert np.array_equal(on_dask.obsm["nam_cell_probs"], in_memory.obsm["nam_cell_probs"])
    assert np.array_equal(on_dask.uns["nam"]["elbo_trace"], in_memory.uns["nam"]["elbo_trace"])


@pytest.mark.filterwarnings("ignore::nestedatoms.ConvergenceWarning")
def test_task_heap_guard_nests_and_restores(monkeypatch):
    """The guard that lets glibc keep freed memory while a task runs (under the nanny's
    MALLOC_TRIM_THRESHOLD_) counts nested tasks, puts the settings back when the last one
    ends, and changes no result."""
    from nestedatoms._backend import get_backend
    from nestedatoms._dask import _heap_kept, _heap_users

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    sim = na.simulate(n_groups=6, cells_per_group=50, random_state=1)
    model = na.NestedAtomsModel(random_state=0, n_init=1, max_iter=3).fit(sim.Y, sim.groups)
    be, prob, st = get_backend("cpp"), model.problem_, model.state_
    from nestedatoms._steps import _elog_omega

    def step():
        xi = np.empty_like(st.xi)
        stats = be.cell_step(prob.Y, prob.offsets, st.rho, _elog_omega(be, st), st.my, st.lamy,
                             st.Wy, st.nuy, prob.y_centre, xi, 1, None)
        return xi, stats

    plain = step()
    with _heap_kept():
        with _heap_kept():
            assert _heap_users[0] == 2 or _heap_users[0] == 0     # 0 without glibc
            guarded = step()
        assert _heap_users[0] in (0, 1)
    assert _heap_users[0] == 0
    assert np.array_equal(plain[0], guarded[0])
    assert all(np.array_equal(a, b) for a, b in zip(plain[1], guarded[1]))

