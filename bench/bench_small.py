"""Small problems (issue 21, item 5): default fits where per-sweep overhead, not the cell step,
decides the time.  JSON on stdout.

* ``toy``: the published toy design (``nestedatoms.simulate``, 1,200 cells, J = 12), the
  default fit per seed: wall time, sweeps summed over the restarts, milliseconds per sweep
  counting everything (initialisation and every move; also pooled over the seeds: all fits'
  time over all their sweeps), the same without the costly moves
  (those run only at convergence: the sweep, its ELBO and the cheap every-sweep moves, the
  figure comparable with one CAVI iteration of code without moves, though it still counts the
  first sweeps' merges from 30 atoms down to a few), one sweep once the partition has settled
  (``ms_per_sweep_steady``: blocks, ELBO and the every-sweep moves, best of 30, from the fitted
  state), and ``timings_``.
* ``pbmc``: scanpy's ``pbmc68k_reduced`` (700 cells, 50 PCs) with the 14 pseudo-donors of
  ``tools/pbmc_pseudodonors.py``: the default fit; and the flat mixture (one group,
  ``NestedAtomsModel().fit(Y)``) against scikit-learn's ``BayesianGaussianMixture`` with its
  defaults (n_components = 30 as our L, full covariances, Dirichlet process), the two
  interleaved, best of ``--repeat``; the defaults' restarts differ (ours 3, scikit-learn's
  1), so the ratio is also given like against like (1 and 1, 3 and 3).

* ``kernels``: the core's per-atom kernels and cell steps on the fitted flat mixture of
  ``pbmc68k_reduced`` (one restart; L = 30 atoms, most of them empty at the prior), each the
  best of ``--repeat`` hot calls: what empty and repeated atoms still cost (issue 21).

``toy`` and ``pbmc`` start with one untimed fit (``warm_up``: the process's one-time costs).

    python bench/bench_small.py --what toy --seeds 0 1 2
    python bench/bench_small.py --what pbmc --repeat 3
    python bench/bench_small.py --what kernels --repeat 50
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np

# phases of ``timings_`` that run only when the sweeps have converged (``Move.when``)
COSTLY = ("move:agglomerate_cell_atoms", "move:split_cell_atoms",
          "move:search_group_partition", "move:learn_group_prior_scale",
          "move:learn_donor_variation")


def fit_report(make_model, *data):
    model = make_model()
    start = time.perf_counter()
    model.fit(*data)
    seconds = time.perf_counter() - start
    sweeps = int(sum(len(t) for t in model.elbo_traces_))
    costly = sum(model.timings_.get(k, 0.0) for k in COSTLY) + model.timings_.get("init", 0.0)
    return model, dict(
        fit_s=round(seconds, 4), sweeps=sweeps, restarts=len(model.elbo_traces_),
        ms_per_sweep_all=round(1e3 * seconds / sweeps, 3),
        ms_per_sweep_without_costly_moves=round(1e3 * (seconds - costly) / sweeps, 3),
        elbo=float(model.elbo_),
        timings={k: round(v, 4) for k, v in model.timings_.items()})


def steady_sweep_ms(model, threads, repeat=30):
    """One sweep as the fit loop runs it once the partition has settled (every block, the
    ELBO, the every-sweep moves), from the fitted state: the figure comparable with one CAVI
    iteration of code without moves.  Best of ``repeat``."""
    from nestedatoms._backend import get_backend
    from nestedatoms._steps import elbo, sweep
    from nestedatoms.moves import EVERY_SWEEP, moves_for

    be, prob, st = get_backend(model.backend), model.problem_, model.state_.copy()
    cheap = [m for m in moves_for(prob) if m.when == EVERY_SWEEP]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        sweep(be, prob, st, threads)
        elbo(be, prob, st)
        for move in cheap:
            move(be, prob, st, threads)
        times.append(time.perf_counter() - start)
    return round(1e3 * min(times), 3)


def warm_up(threads):
    """One untimed fit: the first fit in a process pays one-time costs (imports of the moves'
    scipy modules, threadpoolctl's scan of the loaded libraries), which are not a sweep's.
    On data of its own: the group search keeps k-means partitions by content, so a warm-up
    on a timed seed's data would make that seed's fit faster than a first fit of it."""
    import nestedatoms as na

    sim = na.simulate(random_state=12345)
    na.NestedAtomsModel(random_state=0, n_threads=threads).fit(sim.Y, sim.groups, sim.X)


def toy(seeds, threads):
    import nestedatoms as na

    warm_up(threads)
    out = []
    for seed in seeds:
        sim = na.simulate(random_state=seed)
        model, report = fit_report(
            lambda seed=seed: na.NestedAtomsModel(random_state=seed, n_threads=threads),
            sim.Y, sim.groups, sim.X)
        report.update(seed=seed, n_group_clusters=int(np.unique(model.group_labels_).size),
                      n_cell_clusters=int(np.unique(model.cell_labels_).size),
                      ms_per_sweep_steady=steady_sweep_ms(model, threads))
        out.append(report)
    # the figure over all seeds: every fit's wall time over every fit's sweeps (a seed whose
    # fit converges in few sweeps spreads its moves over few of them)
    pooled = 1e3 * sum(r["fit_s"] for r in out) / sum(r["sweeps"] for r in out)
    return {"seeds": out, "ms_per_sweep_all_pooled": round(pooled, 3),
            "ms_per_sweep_all_range": [min(r["ms_per_sweep_all"] for r in out),
                                       max(r["ms_per_sweep_all"] for r in out)]}


def pbmc(repeat, threads):
    import sys
    import os

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
    from pbmc_pseudodonors import pseudo_donors
    from sklearn.mixture import BayesianGaussianMixture
    from threadpoolctl import threadpool_limits

    import nestedatoms as na

    adata = pseudo_donors()
    Y = np.ascontiguousarray(adata.obsm["X_pca"], dtype=np.float64)
    donors = adata.obs["donor_id"].astype(str).to_numpy()
    result = {"cells": int(Y.shape[0]), "p": int(Y.shape[1]), "threads": threads}
    warm_up(threads)
    _, result["default_fit"] = fit_report(
        lambda: na.NestedAtomsModel(random_state=0, n_threads=threads), Y, donors)
    # (ours, scikit-learn's) restarts: the two defaults (3 and 1), then like against like
    pairings = ((3, 1), (1, 1), (3, 3))
    ours = {n: [] for n in (3, 1)}
    theirs = {n: [] for n in (1, 3)}
    for _ in range(repeat):      # interleaved, so that the machine's load hits both
        for n_init in ours:
            model, report = fit_report(
                lambda n_init=n_init: na.NestedAtomsModel(random_state=0, n_threads=threads,
                                                          n_init=n_init), Y)
            report["n_clusters"] = int(np.unique(model.cell_labels_).size)
            ours[n_init].append(report)
        for n_init in theirs:
            bgm = BayesianGaussianMixture(n_components=30, covariance_type="full",
                                          weight_concentration_prior_type="dirichlet_process",
                                          n_init=n_init, random_state=0)
            with threadpool_limits(limits=threads), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                start = time.perf_counter()
                bgm.fit(Y)
                theirs[n_init].append(dict(fit_s=time.perf_counter() - start,
                                           n_iter=int(bgm.n_iter_),
                                           converged=bool(bgm.converged_),
                                           n_clusters=int(np.unique(bgm.predict(Y)).size)))
    best_ours = {n: min(r, key=lambda x: x["fit_s"]) for n, r in ours.items()}
    best_theirs = {n: min(r, key=lambda x: x["fit_s"]) for n, r in theirs.items()}
    result["flat"] = best_ours[3]
    result["flat_one_restart"] = best_ours[1]
    result["sklearn_bgm"] = best_theirs[1]
    result["sklearn_bgm_three_restarts"] = best_theirs[3]
    result["flat_over_sklearn"] = {
        f"ours n_init={a} / sklearn n_init={b}":
            round(best_ours[a]["fit_s"] / best_theirs[b]["fit_s"], 3) for a, b in pairings}
    return result


def _best_us(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1e6 * min(times), 1)


def kernels(repeat, threads):
    """The core's kernels on the fitted flat mixture of pbmc68k_reduced, in microseconds."""
    import scanpy as sc

    import nestedatoms as na
    from nestedatoms._backend import core_module, get_backend
    from nestedatoms._steps import _elog_omega

    core = core_module()
    Y = np.ascontiguousarray(sc.datasets.pbmc68k_reduced().obsm["X_pca"], dtype=np.float64)
    model = na.NestedAtomsModel(random_state=0, n_threads=threads, n_init=1).fit(Y)
    prob, st = model.problem_, model.state_
    atoms, pr = (st.my, st.lamy, st.Wy, st.nuy), prob.y_prior
    prior = (pr.m0, pr.lam0, pr.W0inv, pr.nu0)
    stats = (st.y_n, st.y_s1, st.y_s2)
    elog_omega = _elog_omega(get_backend("cpp"), st)
    xi = st.xi.copy()

    def cells(n):
        return (np.ascontiguousarray(prob.Y[:n]), np.array([0, n], dtype=np.int64), st.rho,
                elog_omega, *atoms, prob.y_centre, np.ascontiguousarray(xi[:n]), threads)

    rows = np.arange(0, Y.shape[0], 3, dtype=np.int64)
    all_cells, eight_cells = cells(Y.shape[0]), cells(8)
    # the first merge round's pair scores: 30 occupied atoms (as from the k-means start; here
    # random labels), every pair's summed statistics
    labels = np.random.default_rng(0).integers(30, size=Y.shape[0])
    start_stats = core.weighted_stats(prob.Y, np.eye(30)[labels], prob.y_centre)
    pairs = np.triu_indices(30, k=1)
    pair_stats = tuple(np.ascontiguousarray(a[pairs[0]] + a[pairs[1]]) for a in start_stats)
    out = {"cells": int(Y.shape[0]), "p": int(Y.shape[1]), "L": int(st.y_n.shape[0]),
           "occupied": int((st.y_n > 0.5).sum()), "threads": threads, "us": {
        "cell_step": _best_us(lambda: core.cell_step(*all_cells), repeat),
        "cell_step_8_cells": _best_us(lambda: core.cell_step(*eight_cells), repeat),
        f"cell_step_rows_{rows.size}": _best_us(lambda: core.cell_step_rows(
            prob.Y, prob.offsets, rows, st.rho, elog_omega, *atoms, prob.y_centre, xi,
            threads), repeat),
        "nw_posterior": _best_us(lambda: core.nw_posterior(*stats, prob.y_centre, *prior),
                                 repeat),
        "nw_scores": _best_us(lambda: core.nw_scores(*stats, prob.y_centre, *prior), repeat),
        "nw_scores_435_pairs": _best_us(lambda: core.nw_scores(*pair_stats, prob.y_centre,
                                                               *prior), repeat),
        "nw_entropy": _best_us(lambda: core.nw_entropy(*atoms), repeat),
        "nw_prior_term": _best_us(lambda: core.nw_prior_term(*atoms, *prior), repeat),
        "nw_loglik_from_stats": _best_us(lambda: core.nw_loglik_from_stats(
            *stats, prob.y_centre, *atoms), repeat),
    }}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--what", choices=["toy", "pbmc", "kernels"], required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.what == "toy":
        print(json.dumps({"toy": toy(args.seeds, args.threads)}))
    elif args.what == "kernels":
        print(json.dumps({"kernels": kernels(args.repeat, args.threads)}))
    else:
        print(json.dumps({"pbmc": pbmc(args.repeat, args.threads)}))


if __name__ == "__main__":
    main()
