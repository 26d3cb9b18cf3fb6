"""Restarts that stop when they reach what an earlier restart found (issue 21, item 1).

A restart whose sweeps settle on the partition (both levels) an earlier restart ended with, or
settled on along the way, at an ELBO no higher, stops before the costly moves
(``_fit.STOP_DUPLICATE_RESTARTS``).  This
compares default fits with the stop and without it, interleaved in one process on the same
data (so a shared machine's load hits both alike): the fit time, and whether the result (the
ELBO, both partitions) is identical.

    python bench/bench_restarts.py            # 6 toy seeds + 4 cohorts with donor variation
    python bench/bench_restarts.py --quick    # 2 toy seeds (a smoke run)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import nestedatoms as na
from nestedatoms import _fit


def data_sets(quick: bool):
    for seed in range(2 if quick else 6):
        yield f"toy seed {seed}", na.simulate(random_state=seed), seed
    if quick:
        return
    for seed in range(4):                  # donors that vary: the default learns c
        sim = na.simulate(n_groups=24, cells_per_group=400, n_group_clusters=3,
                          n_cell_clusters=6, donor_concentration=100.0, random_state=seed)
        yield f"24 x 400, c = 100, seed {seed}", sim, seed


def fit(sim, seed, stop):
    _fit.STOP_DUPLICATE_RESTARTS = stop
    start = time.perf_counter()
    model = na.NestedAtomsModel(random_state=seed).fit(sim.Y, sim.groups, sim.X)
    return time.perf_counter() - start, model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    rows, totals, identical, same_partitions = [], np.zeros(2), 0, 0
    for name, sim, seed in data_sets(args.quick):
        (t_off, off), (t_on, on) = fit(sim, seed, False), fit(sim, seed, True)
        partitions = (np.array_equal(off.group_labels_, on.group_labels_)
                      and np.array_equal(off.cell_labels_, on.cell_labels_))
        same = off.elbo_ == on.elbo_ and partitions
        identical += same
        same_partitions += partitions
        totals += (t_off, t_on)
        result = ("identical" if same else
                  f"{'same' if partitions else 'other'} partitions, ELBO {off.elbo_:.6f} -> "
                  f"{on.elbo_:.6f} ({on.elbo_ - off.elbo_:+.2e})")
        rows.append(f"| {name} | {t_off:.2f} | {t_on:.2f} | {t_off / t_on:.2f} | {result} |")
    _fit.STOP_DUPLICATE_RESTARTS = True
    print("| data | s, every restart in full | s, duplicates stopped | ratio | result |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"| all {len(rows)} | {totals[0]:.1f} | {totals[1]:.1f} | "
          f"{totals[0] / totals[1]:.2f} | {identical} of {len(rows)} identical, {same_partitions} "
          f"with the same partitions |")


if __name__ == "__main__":
    main()
