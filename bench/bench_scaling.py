"""How the default fit's time grows with each size of the problem: N (cells), J (individuals),
K and L (the truncations of the individual and cell clusters) and p (the cell features), one at
a time around a base cohort; the log-log slope of the fit time per axis (issue 21).

Each point is one default fit (``NestedAtomsModel(random_state=0, n_threads=THREADS,
copy=False)``; K, L set on their axes) of a ``bench_common.simulate_cohort`` cohort (4
individual clusters, 12 cell clusters, q = 10) in a fresh interpreter, reported with
``timings_`` (the cell step's share) and the partitions found.  The slope is the least-squares
fit of log(fit seconds) on log(size) over the axis' points.  JSON on stdout.

    python bench/bench_scaling.py                       # every axis, base N = 200,000, J = 200
    python bench/bench_scaling.py --axes J K --threads 2
    python bench/bench_scaling.py --point '{"J": 200, "N": 200000, "K": 30, "L": 30, "p": 30}'
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import bench_common as bc

BASE = dict(N=200_000, J=200, K=30, L=30, p=30)
AXES = dict(N=[50_000, 200_000, 800_000], J=[50, 200, 800], K=[10, 30, 90], L=[10, 30, 90],
            p=[10, 30, 60])


def point(size: dict, threads: int) -> dict:
    """One default fit at ``size`` in this process."""
    import nestedatoms as na

    sim = bc.simulate_cohort(size["J"], size["N"], size["p"], bc.ONEK1K["q"])
    groups = np.repeat(np.arange(size["J"]), bc.cohort_sizes(size["J"], size["N"]))
    model = na.NestedAtomsModel(random_state=0, n_threads=threads, copy=False,
                                n_group_clusters=size["K"], n_cell_clusters=size["L"])
    start = time.perf_counter()
    model.fit(sim.Y, groups, sim.X)
    seconds = time.perf_counter() - start
    return dict(size=size, fit_s=round(seconds, 3),
                cells_share=round(model.timings_.get("cells", 0.0) / seconds, 3),
                sweeps=int(sum(len(t) for t in model.elbo_traces_)),
                n_group_clusters=int(np.unique(model.group_labels_).size),
                n_cell_clusters=int(np.unique(model.cell_labels_).size),
                timings={k: round(v, 3) for k, v in sorted(model.timings_.items(),
                                                           key=lambda kv: -kv[1])[:6]})


def slope(sizes, seconds) -> float:
    """Least-squares slope of log(seconds) on log(sizes)."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--axes", nargs="+", choices=list(AXES), default=list(AXES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--point", help="fit one size (JSON) in this process and print it")
    args = ap.parse_args()
    if args.point:
        print(json.dumps(point(json.loads(args.point), args.threads)))
        return
    done, table, slopes = {}, [], {}
    for axis in args.axes:
        rows = []
        for value in AXES[axis]:
            size = dict(BASE, **{axis: value})
            key = json.dumps(size, sort_keys=True)
            if key not in done:     # the base point is shared by every axis
                done[key] = bc.run_json(["bench_scaling.py", "--point", key,
                                         "--threads", str(args.threads)], timeout=3600)
            rows.append(done[key])
        slopes[axis] = round(slope([r["size"][axis] for r in rows], [r["fit_s"] for r in rows]), 3)
        table.append({"axis": axis, "points": rows, "slope": slopes[axis]})
    print(json.dumps({"threads": args.threads, "base": BASE, "slopes": slopes, "table": table}))


if __name__ == "__main__":
    main()
