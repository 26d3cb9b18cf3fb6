"""The dask fit against the in-memory fit (issue 19): same bits, sweep time, memory, scaling.

Not a timed test: figures are ratios measured in the same run (the machine may be shared), in
JSON on stdout.  Steps:

  python bench/bench_dask.py make --out /tmp/onek1k.zarr --copies 1     # 1x OneK1K (1.27 M)
  python bench/bench_dask.py make --out /tmp/onek1k3.zarr --copies 3    # 3x (3.8 M cells)
  python bench/bench_dask.py compare --store /tmp/onek1k.zarr           # dask vs in memory
  python bench/bench_dask.py sweeps --store /tmp/onek1k3.zarr --workers 2

``make`` simulates one OneK1K-shaped cohort (982 donors, 1.27 M cells, p = 30, q = 10) and
writes it ``--copies`` times, each copy with its own donor labels, to a zarr store sorted by
donor: a k-times larger cohort with the same per-donor structure (the copies repeat cells, which
changes nothing in the work per sweep).

``compare``: a short fit (``--iters`` sweeps, tol = 0, one restart) in memory and on a
``--workers`` LocalCluster (processes, one thread each), with the same batch size; checks the
ELBO traces and global factors are bitwise equal, then times ``--sweeps`` sweeps on each and
reports the ratio.  ``sweeps``: the dask sweep alone (no in-memory fit), for scaling with N and
workers.  Both report the time of a map that only reads the batches (read) beside the sweep,
and the peak resident memory of the driver plus the workers (sum of RSS, sampled).
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
    parts = [da.from_array(Y, chunks=(1 << 16, -1)) for _ in range(args.copies)]
    da.to_zarr(da.concatenate(parts).rechunk((1 << 16, -1)), root.store, component="Y",
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


def _time_sweeps(model, n, threads):
    from threadpoolctl import threadpool_limits

    from nestedatoms._backend import get_backend
    from nestedatoms._steps import sweep

    be = get_backend("cpp")
    st = model.state_.copy()
    times = []
    with threadpool_limits(limits=1, user_api="blas"):
        for _ in range(n):
            t0 = time.perf_counter()
            sweep(be, model.problem_, st, threads)
            times.append(time.perf_counter() - t0)
    return times


def _time_reads(model, n):
    data = model.problem_.data
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        data.map(_read_only)
        times.append(time.perf_counter() - t0)
    return times


def _model(args, **kw):
    import nestedatoms as na

    params = dict(n_group_clusters=bc.ONEK1K["K"], n_cell_clusters=bc.ONEK1K["L"], n_init=1,
                  random_state=0, max_iter=args.iters, tol=0.0, batch_size=args.batch_size)
    params.update(kw)
    return na.NestedAtomsModel(**params)


def _cluster(workers):
    import distributed

    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", memory_limit=0)
    return cluster, distributed.Client(cluster)


def _dask_run(args, Y, groups, X, workers):
    cluster, client = _cluster(workers)
    try:
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            model = _model(args).fit(Y, groups, X)
            fit_s = time.perf_counter() - t0
            sweeps = _time_sweeps(model, args.sweeps, 1)
            reads = _time_reads(model, args.sweeps)
        return model, dict(workers=workers, fit_s=fit_s, sweep_s=float(np.median(sweeps)),
                           sweep_best_s=min(sweeps), read_s=float(np.median(reads)),
                           peak_rss_driver_plus_workers_mb=mem.peak_mb,
                           n_batches=int(model.problem_.batches.n_batches))
    finally:
        client.close()
        cluster.close()


def compare(args):
    Y, groups, X = _load(args.store)
    model_d, dask_stats = _dask_run(args, Y, groups, X, args.workers)
    Ym = np.asarray(Y.compute())
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        model_m = _model(args, n_threads=args.workers).fit(Ym, groups, X)
        fit_s = time.perf_counter() - t0
        sweeps = _time_sweeps(model_m, args.sweeps, args.workers)
    names = ("rho", "N_jl", "y_n", "y_s1", "y_s2", "my", "Wy", "nuy", "u_a", "v_a", "mx", "Wx")
    same = (np.array_equal(model_d.elbo_trace_, model_m.elbo_trace_)
            and all(np.array_equal(getattr(model_d.state_, n), getattr(model_m.state_, n))
                    for n in names)
            and np.array_equal(model_d.cell_labels_, model_m.cell_labels_))
    mem_stats = dict(threads=args.workers, fit_s=fit_s, sweep_s=float(np.median(sweeps)),
                     sweep_best_s=min(sweeps), peak_rss_mb=mem.peak_mb)
    print(json.dumps(dict(
        n_cells=int(Y.shape[0]), n_groups=int(np.unique(groups).size), batch_size=args.batch_size,
        iters=args.iters, same_bits=bool(same), dask=dask_stats, memory=mem_stats,
        sweep_ratio_dask_over_memory=dask_stats["sweep_s"] / mem_stats["sweep_s"],
        load_avg=os.getloadavg())))


def sweeps(args):
    Y, groups, X = _load(args.store)
    _, stats = _dask_run(args, Y, groups, X, args.workers)
    print(json.dumps(dict(n_cells=int(Y.shape[0]), n_groups=int(np.unique(groups).size),
                          batch_size=args.batch_size, iters=args.iters, dask=stats,
                          load_avg=os.getloadavg())))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    m.add_argument("--copies", type=int, default=1)
    m.add_argument("--compress", action="store_true",
                   help="zarr's default zstd (off: as nestedatoms.write_sorted_zarr writes)")
    for name in ("compare", "sweeps"):
        c = sub.add_parser(name)
        c.add_argument("--store", required=True)
        c.add_argument("--workers", type=int, default=2)
        c.add_argument("--batch-size", type=int, default=1 << 18)
        c.add_argument("--iters", type=int, default=5, help="sweeps of the fit (tol = 0)")
        c.add_argument("--sweeps", type=int, default=3, help="sweeps timed after the fit")
    args = ap.parse_args()
    {"make": make, "compare": compare, "sweeps": sweeps}[args.cmd](args)


if __name__ == "__main__":
    main()
