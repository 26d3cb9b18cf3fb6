"""Diagonal cell atoms against full ones (covariance_type, docs/diag.md): JSON on stdout.

* ``--what sweep``: one CAVI sweep + ELBO of the same data and the same starting partition,
  with ``covariance_type="diag"`` and ``"full"``, interleaved in one process, at each ``--p``;
  the ratio full / diag is the figure (the machine may be shared: both sides see its load).
* ``--what pbmc``: scanpy's ``pbmc68k_reduced`` with ``use_rep="X"`` (700 cells, 765 scaled
  genes) fitted as a flat mixture (``tl.fit`` without donors is one group): what diag finds
  (clusters, ARI against ``bulk_labels`` and ``louvain``) and how long it takes, beside
  ``X_pca`` (50 PCs) with full covariances.  Needs scanpy (the test extra installs it).

    python bench/bench_diag.py --what sweep --p 30 200
    python bench/bench_diag.py --what pbmc [--full-on-genes]

``--full-on-genes`` also fits full covariances on the 765 genes (slow: issue 22 measured 211 s).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import bench_common as bc


def sweep_problem(covariance_type, data, L, K, labels, groups):
    """A problem and the state of one hard partition, for the given family."""
    import nestedatoms as na
    from nestedatoms._backend import get_backend
    from nestedatoms._init import state_from_labels

    prob = na.NestedAtomsModel(n_group_clusters=K, n_cell_clusters=L,
                               covariance_type=covariance_type)._problem(data)
    be = get_backend("cpp")
    return be, prob, state_from_labels(be, prob, labels, groups)


def sweeps(args):
    import numpy as np
    from threadpoolctl import threadpool_limits

    from nestedatoms._data import prepare_data
    from nestedatoms._steps import elbo, sweep

    out = {"what": "sweep", "cells": args.cells, "groups": args.groups, "L": args.L,
           "K": args.K, "threads": args.threads, "p": {}}
    for p in args.p:
        sim = bc.simulate_cohort(args.groups, args.cells, p, 3, seed=0)
        data = prepare_data(sim.Y, sim.groups, None)
        rng = np.random.default_rng(0)
        labels = rng.integers(args.L, size=data.n_cells)
        groups = rng.integers(args.K, size=data.n_groups)
        runs = {t: sweep_problem(t, data, args.L, args.K, labels, groups)
                for t in ("diag", "full")}

        def one(t, runs=runs):
            be, prob, st = runs[t]

            def run():
                sweep(be, prob, st, args.threads)
                elbo(be, prob, st)
            return run

        times = {"diag": [], "full": []}
        with threadpool_limits(limits=1, user_api="blas"):
            for _ in range(args.repeat):            # interleaved: the load hits both
                for t in ("diag", "full"):
                    times[t].append(bc.best_time(one(t), 1)[0])
        best = {t: min(v) for t, v in times.items()}
        ratios = [f / d for f, d in zip(times["full"], times["diag"])]
        out["p"][p] = {"diag_sweep_s": best["diag"], "full_sweep_s": best["full"],
                       "full_over_diag": best["full"] / best["diag"],
                       "median_ratio": float(np.median(ratios))}
    return out


def pbmc(args):
    import numpy as np
    import scanpy as sc

    import nestedatoms as na

    adata = sc.datasets.pbmc68k_reduced()
    adata.obs["all"] = "one"                     # one group: a flat mixture of the cells
    out = {"what": "pbmc", "cells": adata.n_obs, "genes": adata.n_vars, "fits": []}
    cases = [("X", "diag"), ("X_pca", "full"), ("X_pca", "diag")]
    if args.full_on_genes:
        cases.append(("X", "full"))
    for rep, kind in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # the high-dimension warning of full on X
            t0 = time.perf_counter()
            res, model = na.tl.fit(adata, group_key="all", use_rep=rep, covariance_type=kind,
                                   copy=True, return_model=True, rank_genes=False, verbose=0,
                                   n_threads=args.threads, random_state=0)
            seconds = time.perf_counter() - t0
        labels = res.obs["nam_cell_cluster"].astype(str).to_numpy()
        out["fits"].append({
            "use_rep": rep, "covariance_type": kind, "dims": int(res.obsm[rep].shape[1])
            if rep != "X" else int(adata.n_vars),
            "seconds": seconds, "sweeps": int(model.n_iter_),
            "restarts": len(model.elbo_traces_), "cell_clusters": int(len(np.unique(labels))),
            "ari_bulk_labels": na.adjusted_rand_index(adata.obs["bulk_labels"].to_numpy(),
                                                      labels),
            "ari_louvain": na.adjusted_rand_index(adata.obs["louvain"].to_numpy(), labels),
            "cluster_sizes": sorted(np.unique(labels, return_counts=True)[1].tolist(),
                                    reverse=True)})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--what", choices=["sweep", "pbmc"], required=True)
    ap.add_argument("--p", type=int, nargs="+", default=[30, 200])
    ap.add_argument("--cells", type=int, default=50_000)
    ap.add_argument("--groups", type=int, default=50)
    ap.add_argument("--L", type=int, default=30)
    ap.add_argument("--K", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--full-on-genes", action="store_true")
    args = ap.parse_args()
    result = sweeps(args) if args.what == "sweep" else pbmc(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
