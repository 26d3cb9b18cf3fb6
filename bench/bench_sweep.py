"""Per-sweep time of the C++ core against the NumPy reference and scikit-learn: JSON on stdout.

* ``--what reference``: one CAVI sweep (every block, then the ELBO as the fit loop does) of the
  same state with backend "cpp" and backend "numpy", for each thread count (numpy's BLAS gets the
  threads for the reference, the core's OpenMP for cpp), interleaved.
* ``--what sklearn``: the flat problem (K = 1, one group): our sweep against one iteration
  (E step + M step) of scikit-learn's BayesianGaussianMixture (full covariances, Dirichlet
  process, same truncation L), both with the same thread count, interleaved.
"""

from __future__ import annotations

import argparse
import json
import warnings

import bench_common as bc


def sweep_fn(be, prob, st, threads):
    from nestedatoms._steps import elbo, sweep

    def run():
        sweep(be, prob, st, threads)
        elbo(be, prob, st)
    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--what", choices=["reference", "sklearn"], required=True)
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--groups", type=int, default=100)
    ap.add_argument("--p", type=int, default=30)
    ap.add_argument("--L", type=int, default=30)
    ap.add_argument("--K", type=int, default=30)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import numpy as np
    from threadpoolctl import threadpool_limits

    from bench_kernel import cell_step_problem
    from nestedatoms._backend import get_backend

    flat = args.what == "sklearn"
    be, prob, st, _ = cell_step_problem(args.cells, args.p, args.L, 1 if flat else args.K,
                                        1 if flat else args.groups)
    result = {"what": args.what, "cells": prob.data.n_cells, "p": args.p, "L": args.L,
              "K": prob.K, "groups": prob.data.n_groups, "isa": be.ISA, "threads": {}}
    if flat:
        from sklearn.mixture import BayesianGaussianMixture

        bgm = BayesianGaussianMixture(
            n_components=args.L, covariance_type="full",
            weight_concentration_prior_type="dirichlet_process", max_iter=1,
            init_params="random", random_state=0)
        Y = prob.Y
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning after one iteration
            bgm.fit(Y)

        def other(threads):
            def run():
                _, log_resp = bgm._e_step(Y)
                bgm._m_step(Y, log_resp)
            return run
        other_name = "sklearn_iteration_s"
    else:
        ref = get_backend("numpy")
        st_ref = st.copy()

        def other(threads):
            return sweep_fn(ref, prob, st_ref, threads)
        other_name = "numpy_sweep_s"
    for t in args.threads:
        ours, theirs = [], []
        # The core gets the threads through OpenMP (BLAS held to one thread, as in a fit);
        # numpy and scikit-learn through BLAS.
        for _ in range(args.repeat):
            with threadpool_limits(limits=1, user_api="blas"):
                ours.append(bc.best_time(sweep_fn(be, prob, st, t), 1)[0])
            with threadpool_limits(limits=t, user_api="blas"):
                theirs.append(bc.best_time(other(t), 1)[0])
        ours, theirs = np.array(ours), np.array(theirs)
        result["threads"][str(t)] = {
            "cpp_sweep_s": float(ours.min()), other_name: float(theirs.min()),
            "speedup": float(theirs.min() / ours.min()),
            "speedup_median": float(np.median(theirs / ours))}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
