"""The cell step against numpy's matmul, measured interleaved in one process: JSON on stdout.

Each repeat times numpy's float64 n x n matmul and then one C++ cell step (N cells, p, L), for
every thread count, so both see the same load on a shared machine; the figure is the ratio of
the best times (and the median of the per-repeat ratios).  The cell step's flop count is that of
the dense formulation, 4 N L p^2 (the xi update's quadratic forms and the y statistics, 2 N L p^2
each); the kernel itself does about half of those flops (packed symmetric products), so the
GFLOP/s reported are "dense-equivalent".

bench/run.py runs this with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset, so that OpenBLAS picks
its best kernel for this CPU (the C++ core does not use BLAS).
"""

from __future__ import annotations

import argparse
import json

import bench_common as bc


def cell_step_problem(n_cells, p, L, K, n_groups, seed=0):
    """A realistic cell-step input: simulated cohort, k-means++ initial state."""
    import numpy as np

    import nestedatoms as na
    from nestedatoms._backend import get_backend
    from nestedatoms._data import prepare_data
    from nestedatoms._init import initial_state
    from nestedatoms._steps import _elog_omega

    sim = bc.simulate_cohort(n_groups, n_cells, p, 3, seed=seed)
    model = na.NestedAtomsModel(n_group_clusters=K, n_cell_clusters=L)
    prob = model._problem(prepare_data(sim.Y, sim.groups if n_groups > 1 else None,
                                       sim.X if n_groups > 1 else None))
    be = get_backend("cpp")
    st = initial_state(be, prob, np.random.default_rng(seed))
    args = (prob.Y, prob.offsets, st.rho, _elog_omega(be, st), st.my, st.lamy, st.Wy, st.nuy,
            prob.y_centre, st.xi)
    return be, prob, st, args


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-matmul", type=int, default=2000)
    ap.add_argument("--cells", type=int, default=1_000_000)
    ap.add_argument("--p", type=int, default=30)
    ap.add_argument("--L", type=int, default=30)
    ap.add_argument("--K", type=int, default=30)
    ap.add_argument("--groups", type=int, default=982)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    be, prob, st, step_args = cell_step_problem(args.cells, args.p, args.L, args.K, args.groups)
    rng = np.random.default_rng(0)
    n = args.n_matmul
    a, b = rng.random((n, n)), rng.random((n, n))
    out = np.empty_like(a)
    mm_flops = 2.0 * n**3
    cs_flops = 4.0 * prob.data.n_cells * args.L * args.p**2
    blas = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"
            and "numpy" in str(lib.get("filepath", "numpy"))]  # numpy's own, not scipy's
    result = {"cells": prob.data.n_cells, "p": args.p, "L": args.L, "isa": be.ISA,
              "blas": [{k: lib.get(k) for k in ("internal_api", "version", "architecture")}
                       for lib in blas], "threads": {}}
    for t in args.threads:
        mm, cs = [], []
        with threadpool_limits(limits=t, user_api="blas"):
            np.matmul(a, b, out=out)
            be.cell_step(*step_args, t)  # warm-up
            cores = []
            for _ in range(args.repeat):
                mm.append(bc.best_time(lambda: np.matmul(a, b, out=out), 1)[0])
                cpu0 = bc.cpu_seconds()
                cs.append(bc.best_time(lambda t=t: be.cell_step(*step_args, t), 1)[0])
                # CPU time the process obtained per wall second: on a shared machine the
                # scheduler may give two threads far less than two cores.
                cores.append((bc.cpu_seconds() - cpu0) / cs[-1])
        mm, cs = np.array(mm), np.array(cs)
        result["threads"][str(t)] = {
            "matmul_gflops": mm_flops / mm.min() / 1e9,
            "cell_step_s": float(cs.min()), "cell_step_median_s": float(np.median(cs)),
            "cell_step_gflops": cs_flops / cs.min() / 1e9,
            "fraction_of_matmul": float((cs_flops / cs.min()) / (mm_flops / mm.min())),
            "fraction_median": float(np.median((cs_flops / cs) / (mm_flops / mm))),
            "cores_obtained": float(cores[int(np.argmin(cs))]),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
