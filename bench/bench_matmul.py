"""numpy's float64 matrix-multiply throughput (the hardware reference): JSON on stdout.

bench/run.py runs this in a fresh interpreter with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE
unset (so OpenBLAS picks its kernel for this CPU) and once with the environment as set.
"""

from __future__ import annotations

import argparse
import json

import bench_common as bc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    rng = np.random.default_rng(0)
    a, b = rng.random((args.n, args.n)), rng.random((args.n, args.n))
    out = np.empty_like(a)
    flops = 2.0 * args.n**3
    blas = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"
            and "numpy" in str(lib.get("filepath", "numpy"))]  # numpy's own, not scipy's
    result = {"n": args.n, "gflops": {}, "gflops_median": {},
              "blas": [{k: lib.get(k) for k in ("internal_api", "version", "architecture")}
                       for lib in blas]}
    for t in args.threads:
        with threadpool_limits(limits=t, user_api="blas"):
            np.matmul(a, b, out=out)  # warm-up
            best, med = bc.best_time(lambda: np.matmul(a, b, out=out), args.repeat)
        result["gflops"][str(t)] = flops / best / 1e9
        result["gflops_median"][str(t)] = flops / med / 1e9
    print(json.dumps(result))


if __name__ == "__main__":
    main()
