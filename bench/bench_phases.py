"""One default fit in this process, reported by the package's own phase timings (JSON on stdout).

The figures are ``model.timings_`` (seconds per phase: blocks, ELBO evaluations, each move) and
``model.moves_``; the partition is reported as a digest of the group and cell labels (renumbered
by first appearance), so two builds' fits can be checked for the same result.

    python bench/bench_phases.py --data cohort.npz --n-init 1        # a --make-data cohort
    python bench/bench_phases.py --toy                               # the published toy design
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

import numpy as np

from bench_common import peak_rss_mb


def _digest(labels) -> str:
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    renumber = np.empty(order.size, dtype=np.int64)
    renumber[order] = np.arange(order.size)
    _, inverse = np.unique(labels, return_inverse=True)
    return hashlib.sha1(renumber[inverse].astype(np.int64).tobytes()).hexdigest()[:12]


def main():
    ap = argparse.ArgumentParser()
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="PATH", help="a cohort saved by bench_onek1k --make-data")
    src.add_argument("--toy", action="store_true", help="nestedatoms.simulate's toy design")
    ap.add_argument("--n-init", type=int, default=None, help="restarts (default: the model's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--K", type=int, default=None)
    ap.add_argument("--L", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import nestedatoms as na

    if args.toy:
        sim = na.simulate(random_state=args.seed)
        Y, groups, X = sim.Y, sim.groups, sim.X
    else:
        with np.load(args.data) as saved:
            Y, groups, X = saved["Y"], saved["groups"], saved["X"]
    kw = dict(random_state=args.seed, n_threads=args.threads)
    if not args.toy:
        kw["copy"] = False
    for name, value in (("n_init", args.n_init), ("n_group_clusters", args.K),
                        ("n_cell_clusters", args.L)):
        if value is not None:
            kw[name] = value
    model = na.NestedAtomsModel(**kw)
    t0 = time.perf_counter()
    model.fit(Y, groups, X)
    fit_s = time.perf_counter() - t0
    print(json.dumps(dict(
        fit_s=fit_s, elbo=float(model.elbo_), peak_rss_mb=peak_rss_mb(),
        load_average=[round(x, 2) for x in os.getloadavg()], n_iter=int(model.n_iter_),
        best_restart=int(model.best_restart_),
        group_partition=_digest(model.group_labels_), cell_partition=_digest(model.cell_labels_),
        n_group_clusters=int(np.unique(model.group_labels_).size),
        n_cell_clusters=int(np.unique(model.cell_labels_).size),
        timings={k: round(v, 4) for k, v in model.timings_.items()},
        moves=[{k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in m.items()}
               for m in model.moves_])))


if __name__ == "__main__":
    main()
