"""Semi-synthetic cohort from real cells: scanpy's bundled ``pbmc68k_reduced`` (700 PBMCs).

Design (in the spirit of the MrVI paper's semi-synthetic PBMC cohort): J synthetic individuals
fall into T genotype clusters; an individual's genotype vector x_j (q = 5) is its cluster's
centre plus N(0, I) noise (centres ~ N(0, sep^2 I)); each genotype cluster has its own cell-type
composition (Dirichlet(2) over the data set's ``bulk_labels`` cell types), and an individual's
n_j cells are drawn, with replacement, from the real cells of each type in those proportions.
The cells' features are the data set's first 10 principal components (``obsm["X_pca"]``).

Reported, per method and replicate: ARI of the individual clusters against the genotype
clusters, and ARI of the cell clusters against the data set's cell-type labels
(``bulk_labels``, FACS-sorted types) and its ``louvain`` clusters.  Methods as in
``study_recovery.py``: NAM (defaults), NAM n_init=1, CAM (x dropped), two-stage
(BayesianGaussianMixture, then KMeans given the true T).

Nothing is downloaded: the data set ships inside the scanpy wheel.

Usage::

    python studies/study_semisynthetic.py            # 3 replicates, J = 30, n_j = 60
    python studies/study_semisynthetic.py --reps 10
    python studies/study_semisynthetic.py --quick     # one replicate, J = 12 (CI smoke run)

Without scanpy (``pip install scanpy``: the data ship in its wheel) the script says so and
exits with status 3, which ``studies/run.py`` reports as a skip.

Writes ``studies/results/semisynthetic_runs.csv`` (one row per fit, appended as it goes) and
``studies/results/semisynthetic_summary.md``.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import sys
import time

import numpy as np

from study_recovery import METHODS, RESULTS, RESULTS_ENV, markdown_table, rerun_in_scratch

RUNS_CSV = os.path.join(RESULTS, "semisynthetic_runs.csv")
FIELDS = ["rep", "method", "group_ari", "cell_ari_bulk_labels", "cell_ari_louvain",
          "n_groups_found", "n_cells_found", "seconds"]


def load_cells(n_pcs=10):
    import warnings

    import scanpy as sc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = sc.datasets.pbmc68k_reduced()
    Y = np.asarray(adata.obsm["X_pca"][:, :n_pcs], dtype=np.float64)
    types = np.asarray(adata.obs["bulk_labels"].astype(str))
    louvain = np.asarray(adata.obs["louvain"].astype(str))
    return Y, types, louvain


def make_cohort(Y, types, rep, J=30, T=3, n_j=60, q=5, sep=3.0, donor_concentration=None):
    rng = np.random.default_rng(100 + rep)
    names = np.unique(types)
    by_type = [np.nonzero(types == t)[0] for t in names]
    truth = np.arange(J) % T
    rng.shuffle(truth)
    centres = rng.normal(scale=sep, size=(T, q))
    X = centres[truth] + rng.normal(size=(J, q))
    compositions = rng.dirichlet(np.full(names.size, 2.0), size=T)
    rows, groups = [], []
    for j in range(J):
        own = compositions[truth[j]]
        if donor_concentration is not None:      # the donor varies around its cluster
            own = rng.dirichlet(np.maximum(donor_concentration * own, 1e-12))
        counts = rng.multinomial(n_j, own)
        for t, c in enumerate(counts):
            rows.append(rng.choice(by_type[t], size=c, replace=True))
        groups.append(np.full(n_j, f"ind{j:02d}"))
    rows = np.concatenate(rows)
    return Y[rows], np.concatenate(groups), X, truth, rows


def main(argv=None):
    from sklearn.metrics import adjusted_rand_score as ari

    from study_recovery import run_method

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--donor-concentration", type=float, default=None,
                        help="donors vary: each one's composition ~ Dirichlet(c x its "
                             "cluster's); with it the design is J = 24, n_j = 400 and the runs "
                             "go to semisynthetic_donors_*")
    parser.add_argument("--quick", action="store_true",
                        help="one replicate of a J = 12, n_j = 30 cohort, written to a "
                             "temporary folder (CI smoke run)")
    args = parser.parse_args(argv)
    if args.quick and not os.environ.get(RESULTS_ENV):
        return rerun_in_scratch(__file__, sys.argv[1:] if argv is None else argv)
    if importlib.util.find_spec("scanpy") is None:
        print("skipped: this study's cells ship inside scanpy: pip install scanpy")
        return 3
    global RUNS_CSV
    summary_name, title = "semisynthetic_summary.md", (
        "pbmc68k_reduced semi-synthetic cohort (J = 30, T = 3 genotype clusters, n_j = 60, "
        "10 PCs); medians over replicates.")
    design = dict(J=12, n_j=30) if args.quick else {}
    if args.donor_concentration is not None:
        c = args.donor_concentration
        design = dict(dict(J=24, n_j=400, donor_concentration=c), **design)
        RUNS_CSV = os.path.join(RESULTS, f"semisynthetic_donors_c{c:g}_runs.csv")
        summary_name = f"semisynthetic_donors_c{c:g}_summary.md"
        title = (f"pbmc68k_reduced semi-synthetic cohort with donor variation (J = 24, T = 3 "
                 f"genotype clusters, n_j = 400, each donor's composition ~ Dirichlet({c:g} x "
                 f"its cluster's), 10 PCs); medians over replicates.")
    Y_all, types, louvain = load_cells()
    os.makedirs(RESULTS, exist_ok=True)
    done = set()
    if os.path.exists(RUNS_CSV):
        with open(RUNS_CSV) as fh:
            done = {(int(r["rep"]), r["method"]) for r in csv.DictReader(fh)}
    new_file = not os.path.exists(RUNS_CSV)
    with open(RUNS_CSV, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        for rep in range(1 if args.quick else args.reps):
            Y, groups, X, truth, rows = make_cohort(Y_all, types, rep, **design)

            class Cohort:  # the fields run_method reads
                pass
            sim = Cohort()
            sim.Y, sim.groups, sim.X = Y, groups, X
            sim.group_names = np.unique(groups)
            for method in METHODS:
                if (rep, method) in done:
                    continue
                start = time.perf_counter()
                g, c = run_method(method, sim, 1000 + rep, int(truth.max() + 1))
                row = dict(rep=rep, method=method, group_ari=ari(truth, g),
                           cell_ari_bulk_labels=ari(types[rows], c),
                           cell_ari_louvain=ari(louvain[rows], c),
                           n_groups_found=len(np.unique(g)), n_cells_found=len(np.unique(c)),
                           seconds=time.perf_counter() - start)
                writer.writerow(row)
                fh.flush()
                print(row, flush=True)
    import pandas as pd

    runs = pd.read_csv(RUNS_CSV)
    table = (runs.groupby("method", sort=False)
             .agg(reps=("rep", "nunique"), group_ari=("group_ari", "median"),
                  cell_ari_bulk_labels=("cell_ari_bulk_labels", "median"),
                  cell_ari_louvain=("cell_ari_louvain", "median"),
                  n_groups_found=("n_groups_found", "median"),
                  n_cells_found=("n_cells_found", "median"), seconds=("seconds", "median"))
             .reset_index())
    with open(os.path.join(RESULTS, summary_name), "w") as fh:
        fh.write(title + "\n\n")
        fh.write(markdown_table(table))
    print(table.to_string(index=False))


if __name__ == "__main__":
    sys.exit(main())
