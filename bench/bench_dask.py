"""The dask fit against the in-memory fit (issue 19): same bits, sweep time, memory, scaling.

Not a timed test: figures are ratios measured in the same run (the machine may be shared), in
JSON on stdout, with the load average.  Steps:

  python bench/bench_dask.py make --out /tmp/onek1k.zarr --copies 1     # 1x OneK1K (1.27 M)
  python bench/bench_dask.py make --out /tmp/onek1k3.zarr --copies 3    # 3x (3.8 M cells)
  python bench/bench_dask.py compare --store /tmp/onek1k.zarr           # dask vs in memory
  python bench/bench_dask.py sweeps --store /tmp/onek1k10.zarr --workers 2 --memory-by-batches

``make`` simulates one OneK1K-shaped cohort (982 donors, 1.27 M cells, p = 30, q = 10) and
writes it ``--copies`` times, each copy with its own donor labels, to a zarr store sorted by
donor: a k-times larger cohort with the same per-donor structure (the copies repeat cells, which
changes nothing in the work per sweep).

``compare``: a short fit (``--iters`` sweeps, tol = 0, one restart) in memory and on a
``--workers`` LocalCluster (processes, one thread each), with the same batch plan (the dask
default for the cohort's size unless ``--batch-size``); checks the ELBO traces and global
factors are bitwise equal, then times ``--sweeps`` sweeps of each from the same state,
**interleaved** (dask, memory, dask, memory, ...: a shared machine's load hits both) and
reports the median of the pairs' ratios and best against best; ``--split`` then times one round
of the batched split move on both from the same state and checks the bits. ``sweeps``: the dask
sweep alone (no in-memory fit), for scaling with N and workers; with ``--memory-by-batches``
the driver also reads the whole Y into memory (8 N p bytes, not the 17 GiB of an in-memory fit
at 10x) and times, interleaved with the dask sweeps, the in-memory sweep over the same batch
plan (the cell step of each batch on ``--workers`` threads with one reused xi buffer, then the
other blocks), and checks the statistics are bitwise those of the dask sweep. Both report the
time of a map that only reads the batches (read) beside the sweep, and the peak resident memory
of the driver plus the workers (sum of RSS, sampled).

``--keep-cells auto|true|false`` sets dask's ``nestedatoms.keep-cells`` for the run (the
cells kept in the workers' memory between passes, ``nestedatoms._kept_cells``; ``auto`` keeps
them when they take at most a tenth of the workers' memory).  Before the timed sweeps the
cells are kept again (the fit lets them go when it ends), so no timed sweep reads the store
when they are kept; ``kept`` in the output says whether they were.

``--allocator glibc`` starts the workers without the nanny's ``MALLOC_TRIM_THRESHOLD_`` (glibc's
defaults, as the driver has); the default ``nanny`` is dask's setting (docs/scale-out.md).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

import numpy as np

import bench_common as bc


class PeakRSS:
    """Peak of the summed resident memory of this process and its children (the workers)."""

    def __init__(self, period=0.1):
        import psutil

        self.me, self.period, self.peak, self._stop = psutil.Process(), period, 0, False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        import psutil

        total = 0
        for p in [self.me] + self.me.children(recursive=True):
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)

    def _run(self):
        while not self._stop:
            self._sample()
            time.sleep(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join()

    @property
    def peak_mb(self):
        return self.peak / 2**20


def make(args):
    import dask.array as da
    import zarr

    sizes = bc.cohort_sizes(bc.ONEK1K["n_groups"], bc.ONEK1K["n_cells"])
    sim = bc.simulate_cohort(bc.ONEK1K["n_groups"], bc.ONEK1K["n_cells"], bc.ONEK1K["p"],
                             bc.ONEK1K["q"])
    Y = np.ascontiguousarray(sim.Y)     # already grouped by donor, in donor order
    J = sizes.size
    root = zarr.open_group(args.out, mode="w")
    parts = [da.from_array(Y, chunks=(args.chunk_rows, -1)) for _ in range(args.copies)]
    da.to_zarr(da.concatenate(parts).rechunk((args.chunk_rows, -1)), root.store, component="Y",
               overwrite=True, **({} if args.compress else {"compressors": None}))
    groups = np.concatenate([np.repeat(np.arange(J) + c * J, sizes) for c in range(args.copies)])
    root.create_array("groups", data=groups.astype(np.int64))
    root.create_array("X", data=np.vstack([sim.X] * args.copies))
    print(json.dumps({"store": args.out, "n_cells": int(groups.size), "n_groups": J * args.copies}))


def _load(store):
    import dask.array as da
    import zarr

    root = zarr.open_group(store, mode="r")
    return da.from_zarr(store, component="Y"), root["groups"][:], root["X"][:]


def _read_only(Yb):
    from nestedatoms._dask import _as_cells

    return _as_cells(Yb).shape[0]


def _sweep_once(model, st, threads):
    from threadpoolctl import threadpool_limits

    from nestedatoms._backend import get_backend
    from nestedatoms._steps import sweep

    with threadpool_limits(limits=1, user_api="blas"):
        t0 = time.perf_counter()
        sweep(get_backend("cpp"), model.problem_, st, threads)
        return time.perf_counter() - t0


def _read_once(model):
    t0 = time.perf_counter()
    model.problem_.data.map(_read_only)
    return time.perf_counter() - t0


def _memory_sweep_by_batches(model, st, Ym, threads, xi):
    """One sweep of the in-memory fit over the batch plan with Y in memory (``Ym``, the
    store's rows): the cell step of each batch on ``threads`` threads into one reused xi
    buffer, then the other blocks.  Returns (seconds, the cell step's statistics)."""
    from threadpoolctl import threadpool_limits

    from nestedatoms._backend import get_backend
    from nestedatoms._batches import combine_cell_stats
    from nestedatoms._steps import BLOCKS, _elog_omega, group_weights

    be, prob = get_backend("cpp"), model.problem_
    plan, offsets = prob.batches, prob.offsets
    with threadpool_limits(limits=1, user_api="blas"):
        t0 = time.perf_counter()
        elog_omega, zeta = _elog_omega(be, st), group_weights(prob, st)
        parts = []
        for b, (g0, g1, r0, r1) in enumerate(plan):
            parts.append(be.cell_step(
                Ym[r0:r1], plan.local_offsets(offsets, b), np.ascontiguousarray(st.rho[g0:g1]),
                elog_omega, st.my, st.lamy, st.Wy, st.nuy, prob.y_centre, xi[:r1 - r0], threads,
                None if zeta is None else np.ascontiguousarray(zeta[g0:g1])))
        stats = combine_cell_stats(parts)
        st.N_jl, st.y_n, st.y_s1, st.y_s2, st.H_xi = stats
        for _, update in BLOCKS[1:]:
            update(be, prob, st, threads)
        return time.perf_counter() - t0, stats


def _model(args, n_cells, **kw):
    import nestedatoms as na
    from nestedatoms._batches import dask_batch_size

    batch_size = args.batch_size or dask_batch_size(n_cells)
    params = dict(n_group_clusters=bc.ONEK1K["K"], n_cell_clusters=bc.ONEK1K["L"], n_init=1,
                  random_state=0, max_iter=args.iters, tol=0.0, batch_size=batch_size)
    params.update(kw)
    return na.NestedAtomsModel(**params)


def _cluster(workers, allocator="nanny"):
    import dask
    import distributed

    config = {}
    if allocator == "glibc":      # the nanny's environment without MALLOC_TRIM_THRESHOLD_
        env = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
        env.pop("MALLOC_TRIM_THRESHOLD_", None)
        config = {"distributed.nanny.pre-spawn-environ": env}
    with dask.config.set(config):
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                           processes=True, dashboard_address=":0",
                                           memory_limit=0)
    return cluster, distributed.Client(cluster)


def _keep_again(model):
    """Keep the cells on the workers again before timing (the fit let them go at its end),
    as a fit's own sweeps have them; whether they are kept."""
    return model.problem_.data.kept() is not None


def _ratios(pairs):
    """Median of the per-pair ratios and best against best, of (numerator, denominator)."""
    return dict(median_ratio=float(np.median([a / b for a, b in pairs])),
                best_ratio=min(a for a, _ in pairs) / min(b for _, b in pairs))


def _same_stats(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def compare(args):
    Y, groups, X = _load(args.store)
    n = int(Y.shape[0])
    cluster, client = _cluster(args.workers, args.allocator)
    try:
        with PeakRSS() as mem_d:
            t0 = time.perf_counter()
            model_d = _model(args, n).fit(Y, groups, X)
            fit_d = time.perf_counter() - t0
        Ym = np.asarray(Y.compute())
        with PeakRSS() as mem_m:
            t0 = time.perf_counter()
            model_m = _model(args, n, n_threads=args.workers).fit(Ym, groups, X)
            fit_m = time.perf_counter() - t0
        names = ("rho", "N_jl", "y_n", "y_s1", "y_s2", "my", "Wy", "nuy", "u_a", "v_a", "mx",
                 "Wx")
        same = (np.array_equal(model_d.elbo_trace_, model_m.elbo_trace_)
                and all(np.array_equal(getattr(model_d.state_, k), getattr(model_m.state_, k))
                        for k in names)
                and np.array_equal(model_d.cell_labels_, model_m.cell_labels_))
        kept = _keep_again(model_d)
        load_before = os.getloadavg()
        st_d, st_m = model_d.state_.copy(), model_m.state_.copy()
        pairs, reads = [], []
        for _ in range(args.sweeps):          # interleaved: dask, memory, dask, memory, ...
            pairs.append((_sweep_once(model_d, st_d, 1), _sweep_once(model_m, st_m,
                                                                     args.workers)))
            reads.append(_read_once(model_d))
        same = same and all(np.array_equal(getattr(st_d, k), getattr(st_m, k)) for k in names)
        split = _split_round(args, model_d, model_m, st_d, st_m, names) if args.split else None
        load_after = os.getloadavg()
    finally:
        client.close()
        cluster.close()
    print(json.dumps(dict(
        n_cells=n, n_groups=int(np.unique(groups).size),
        batch_size=int(model_d.problem_.batch_size),
        n_batches=int(model_d.problem_.batches.n_batches), workers=args.workers,
        allocator=args.allocator, iters=args.iters, same_bits=bool(same),
        keep_cells=args.keep_cells, kept=kept,
        dask=dict(fit_s=fit_d, sweep_s=[a for a, _ in pairs], read_s=reads,
                  peak_rss_driver_plus_workers_mb=mem_d.peak_mb),
        memory=dict(threads=args.workers, fit_s=fit_m, sweep_s=[b for _, b in pairs],
                    peak_rss_mb=mem_m.peak_mb),
        sweep_dask_over_memory=_ratios(pairs), split_round=split,
        load_avg_before=load_before, load_avg_after=load_after)))


def _split_round(args, model_d, model_m, st_d, st_m, names):
    """One round of the batched split move (``moves.split_atoms_batched``) on dask and in
    memory over the same batches, from the same state: seconds, whether it kept a split, the
    number of passes over the cells, and whether the states are bitwise equal after it."""
    from threadpoolctl import threadpool_limits

    import nestedatoms._dask as nd
    from nestedatoms._backend import get_backend
    from nestedatoms.moves import split_cell_atoms_batched

    passes = []
    original = nd.DaskData.map

    def counted(self, *a, **kw):
        passes.append(1)
        return original(self, *a, **kw)

    be, out = get_backend("cpp"), {}
    nd.DaskData.map = counted
    try:
        for name, model, st, threads in (("dask", model_d, st_d, 1),
                                         ("memory", model_m, st_m, args.workers)):
            with threadpool_limits(limits=1, user_api="blas"):
                t0 = time.perf_counter()
                kept = split_cell_atoms_batched(be, model.problem_, st, threads)
                out[name] = dict(seconds=time.perf_counter() - t0, kept_a_split=bool(kept))
    finally:
        nd.DaskData.map = original
    out["dask"]["passes"] = len(passes)
    out["same_bits"] = all(np.array_equal(getattr(st_d, k), getattr(st_m, k)) for k in names)
    return out


def sweeps(args):
    Y, groups, X = _load(args.store)
    n = int(Y.shape[0])
    cluster, client = _cluster(args.workers, args.allocator)
    try:
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            model = _model(args, n).fit(Y, groups, X)
            fit_s = time.perf_counter() - t0
            kept = _keep_again(model)
            load_before = os.getloadavg()
            st = model.state_.copy()
            times, reads = [], []
            for _ in range(args.sweeps):
                times.append(_sweep_once(model, st, 1))
                reads.append(_read_once(model))
        out = dict(fit_s=fit_s, sweep_s=times, sweep_median_s=float(np.median(times)),
                   read_s=reads, peak_rss_driver_plus_workers_mb=mem.peak_mb)
        result = dict(n_cells=n, n_groups=int(np.unique(groups).size),
                      batch_size=int(model.problem_.batch_size),
                      n_batches=int(model.problem_.batches.n_batches), workers=args.workers,
                      allocator=args.allocator, iters=args.iters,
                      keep_cells=args.keep_cells, kept=kept, dask=out)
        if args.memory_by_batches:
            result.update(_against_memory_by_batches(args, model, Y))
        result.update(load_avg_before=load_before, load_avg_after=os.getloadavg())
    finally:
        client.close()
        cluster.close()
    print(json.dumps(result))


def _against_memory_by_batches(args, model, Y):
    """The dask sweep interleaved with the in-memory sweep over the same batches (Y read into
    the driver's memory), from the same state; the states compared bit for bit after every
    pair."""
    import dask.array as da

    Ym = np.empty(Y.shape)
    da.store(Y, Ym, lock=False, scheduler="threads")      # read here, not through the workers
    rows = int(np.max(np.diff(model.problem_.batches.rows)))
    xi = np.empty((rows, model.problem_.L))
    st_d, st_m = model.state_.copy(), model.state_.copy()
    pairs, same = [], True
    names = ("N_jl", "y_n", "y_s1", "y_s2", "H_xi", "rho", "my", "Wy", "u_a", "v_a")
    for _ in range(args.sweeps):              # interleaved, from the same state each time
        t_d = _sweep_once(model, st_d, 1)
        t_m, _ = _memory_sweep_by_batches(model, st_m, Ym, args.workers, xi)
        same = same and _same_stats([getattr(st_d, k) for k in names],
                                    [getattr(st_m, k) for k in names])
        pairs.append((t_d, t_m))
    return dict(memory_by_batches=dict(threads=args.workers, sweep_s=[b for _, b in pairs],
                                       dask_sweep_s=[a for a, _ in pairs],
                                       same_bits=bool(same)),
                sweep_dask_over_memory=_ratios(pairs))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    m.add_argument("--copies", type=int, default=1)
    m.add_argument("--chunk-rows", type=int, default=1 << 14,
                   help="rows per zarr chunk (as nestedatoms.write_sorted_zarr writes)")
    m.add_argument("--compress", action="store_true",
                   help="zarr's default zstd (off: as nestedatoms.write_sorted_zarr writes)")
    for name in ("compare", "sweeps"):
        c = sub.add_parser(name)
        c.add_argument("--store", required=True)
        c.add_argument("--workers", type=int, default=2)
        c.add_argument("--batch-size", type=int, default=None,
                       help="cells per batch (default: the dask default for the cohort)")
        c.add_argument("--allocator", choices=("nanny", "glibc"), default="nanny")
        c.add_argument("--keep-cells", choices=("auto", "true", "false"), default="auto",
                       help="dask config nestedatoms.keep-cells for the run")
        c.add_argument("--iters", type=int, default=5, help="sweeps of the fit (tol = 0)")
        c.add_argument("--sweeps", type=int, default=4, help="sweeps timed after the fit")
    sub.choices["sweeps"].add_argument("--memory-by-batches", action="store_true")
    sub.choices["compare"].add_argument(
        "--split", action="store_true",
        help="after the timed sweeps, one round of the batched split move on both (timed)")
    args = ap.parse_args()
    import dask

    keep = {"auto": "auto", "true": True, "false": False}[getattr(args, "keep_cells", "auto")]
    with dask.config.set({"nestedatoms.keep-cells": keep}):
        {"make": make, "compare": compare, "sweeps": sweeps}[args.cmd](args)


if __name__ == "__main__":
    main()
