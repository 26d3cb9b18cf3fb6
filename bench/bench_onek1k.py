"""One OneK1K-shaped fit in this process: sweep time, fit time, peak memory (JSON on stdout).

Run by bench/run.py in a fresh interpreter, so that the peak resident memory is that of one fit
(simulation of the data included: the data are the user's, the rest is the fit's).
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
    ap.add_argument("--labels-only", action="store_true",
                    help="store_cell_probs=False: keep labels, not the (N, L) probabilities")
    args = ap.parse_args()

    import numpy as np
    from threadpoolctl import threadpool_limits

    import nestedatoms as na
    from nestedatoms._backend import get_backend
    from nestedatoms._steps import elbo, sweep

    t0 = time.perf_counter()
    sim = bc.simulate_cohort(args.groups, args.cells, args.p, args.q)
    Y, groups, X = sim.Y, sim.groups, sim.X
    del sim
    t_sim = time.perf_counter() - t0
    rss_data = bc.peak_rss_mb()

    kw = dict(n_group_clusters=args.K, n_cell_clusters=args.L, n_init=1, random_state=0,
              n_threads=args.threads, max_iter=args.max_iter, tol=args.tol)
    if args.labels_only:
        kw["store_cell_probs"] = False
    model = na.NestedAtomsModel(**kw)
    trace_times = []
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
        threads=args.threads, simulate_s=t_sim, fit_s=t_fit, n_iter=int(model.n_iter_),
        converged=bool(model.converged_), sweep_best_s=min(sweep_times),
        sweep_median_s=float(np.median(sweep_times)), elbo_s=float(np.median(elbo_times)),
        peak_rss_data_mb=rss_data, peak_rss_mb=rss_fit, isa=be.ISA, trace_len=len(trace_times))))


if __name__ == "__main__":
    main()
