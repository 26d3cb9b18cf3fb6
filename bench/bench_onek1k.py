"""One OneK1K-shaped fit in this process: sweep time, fit time, peak memory (JSON on stdout).

Run by bench/run.py in fresh interpreters: one simulates the cohort and saves it (--make-data),
another loads it (--data) and fits, so the peak resident memory is that of the data plus one
fit.  Without --data the cohort is simulated in-process (then the simulation's peak counts).
"""

from __future__ import annotations

import argparse
import json
import time

import bench_common as bc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=bc.ONEK1K["n_groups"])
    ap.add_argument("--cells", type=int, default=bc.ONEK1K["n_cells"])
    ap.add_argument("--p", type=int, default=bc.ONEK1K["p"])
    ap.add_argument("--q", type=int, default=bc.ONEK1K["q"])
    ap.add_argument("--K", type=int, default=bc.ONEK1K["K"])
    ap.add_argument("--L", type=int, default=bc.ONEK1K["L"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-iter", type=int, default=1000)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--sweeps", type=int, default=3, help="sweeps timed on their own")
    ap.add_argument("--fixed-group-prior-width", action="store_true",
                    help="hold the x prior's width as set (learn_group_prior_scale=False), to "
                         "measure what learning it costs")
    ap.add_argument("--make-data", metavar="PATH",
                    help="only simulate the cohort and save it to PATH (.npz), then exit")
    ap.add_argument("--data", metavar="PATH",
                    help="fit the cohort saved by --make-data (so the peak memory is the fit's)")
    args = ap.parse_args()

    import numpy as np
    from threadpoolctl import threadpool_limits

    import nestedatoms as na
    from nestedatoms._backend import get_backend
    from nestedatoms._steps import elbo, sweep

    t0 = time.perf_counter()
    if args.data:
        with np.load(args.data) as saved:
            Y, groups, X = saved["Y"], saved["groups"], saved["X"]
    else:
        sim = bc.simulate_cohort(args.groups, args.cells, args.p, args.q)
        # integer labels (as a user's codes would be), one row of X per individual
        Y, X = sim.Y, sim.X
        groups = np.repeat(np.arange(args.groups), bc.cohort_sizes(args.groups, args.cells))
        del sim
        if args.make_data:
            np.savez(args.make_data, Y=Y, groups=groups, X=X)
            print(json.dumps({"saved": args.make_data, "n_cells": int(Y.shape[0])}))
            return
    t_sim = time.perf_counter() - t0
    rss_data = bc.peak_rss_mb()

    # copy=False: the cells arrive grouped by individual (as a concatenation of per-donor
    # AnnData objects does), so the model keeps a read-only view of Y instead of a sorted copy.
    kw = dict(n_group_clusters=args.K, n_cell_clusters=args.L, n_init=1, random_state=0,
              n_threads=args.threads, max_iter=args.max_iter, tol=args.tol, copy=False)
    if args.fixed_group_prior_width:
        kw["learn_group_prior_scale"] = False
    model = na.NestedAtomsModel(**kw)
    t0 = time.perf_counter()
    model.fit(Y, groups, X)
    t_fit = time.perf_counter() - t0
    rss_fit = bc.peak_rss_mb()

    # Sweeps on their own, from the fitted state (the work per sweep does not depend on it).
    be = get_backend("cpp")
    prob, st = model.problem_, model.state_
    sweep_times, elbo_times = [], []
    with threadpool_limits(limits=1, user_api="blas"):
        for _ in range(args.sweeps):
            t0 = time.perf_counter()
            sweep(be, prob, st, args.threads)
            t1 = time.perf_counter()
            elbo(be, prob, st)
            sweep_times.append(t1 - t0)
            elbo_times.append(time.perf_counter() - t1)
    print(json.dumps(dict(
        n_cells=int(Y.shape[0]), n_groups=args.groups, p=args.p, q=args.q, K=args.K, L=args.L,
        threads=args.threads, fit_s=t_fit, n_iter=int(model.n_iter_),
        converged=bool(model.converged_), group_prior_scale=model.group_prior_scale_,
        sweep_best_s=min(sweep_times),
        sweep_median_s=float(np.median(sweep_times)), elbo_s=float(np.median(elbo_times)),
        peak_rss_data_mb=rss_data, peak_rss_mb=rss_fit, isa=be.ISA,
        data_s=t_sim)))


if __name__ == "__main__":
    main()
