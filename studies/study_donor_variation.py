"""Donors that vary around their cluster: how many donor clusters the fit finds, before and after.

Each data set: J donors in 3 clusters that differ in composition only (CAM: no x), 6 cell types
(p = 10), each donor's composition ~ Dirichlet(c x its cluster's) (c = inf: NAM exactly).  Two
fits per data set, both with the package's defaults otherwise (but one restart): NAM exactly
(``donor_concentration=numpy.inf``, the old default) and the learned concentration ("auto", the
default).  Reports per setting the median donor ARI, the median number of donor clusters and
the median learned c.  Uses only the public API (and ``nestedatoms.diagnostics``).

    python studies/study_donor_variation.py           # the grid (about 40 min on 2 idle cores)
    python studies/study_donor_variation.py --quick   # one small setting (CI smoke run)
    python studies/study_donor_variation.py --explain # why the default merges at 24 x 1000, c = 100
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import nestedatoms as na
from nestedatoms.diagnostics import bayes_donor_labels, problem_with, score_partition


ari = na.adjusted_rand_index
# A smoke run (--quick) writes here instead of results/ (study_recovery.rerun_in_scratch).
RESULTS = (os.environ.get("NESTEDATOMS_STUDY_RESULTS")
           or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))


# One restart per fit (the default has 3): the grid is large, and both methods get the same.
N_INIT = 1


def one(concentration, cells, donors, rep, alpha0_y=25.0):
    sim = na.simulate(n_groups=donors, cells_per_group=cells, n_group_clusters=3,
                      n_cell_clusters=6, n_cell_features=10, alpha0_x=1000.0, alpha0_y=alpha0_y,
                      donor_concentration=None if np.isinf(concentration) else concentration,
                      random_state=1000 * rep + donors + cells)
    bayes = ari(sim.group_truth, bayes_donor_labels(sim, concentration))
    rows = []
    for name, setting in (("NAM exactly (before)", np.inf), ("learned c (default)", "auto")):
        t = time.perf_counter()
        m = na.NestedAtomsModel(random_state=rep, n_init=N_INIT, donor_concentration=setting)
        m.fit(sim.Y, sim.groups, None)
        seconds = time.perf_counter() - t
        rows.append(dict(c=concentration, cells=cells, donors=donors, alpha0_y=alpha0_y,
                         rep=rep, method=name,
                         donor_ari=ari(sim.group_truth, m.group_labels_),
                         cell_ari=ari(sim.cell_truth, m.cell_labels_),
                         clusters=len(np.unique(m.group_labels_)),
                         true_clusters=len(np.unique(sim.group_truth)),
                         c_hat=m.donor_concentration_, bayes_ari=bayes,
                         margin=objective_margin(m, sim), seconds=seconds))
    return rows


def objective_margin(model, sim) -> float:
    """The fit's partition scored against the truth's by the fit's own objective (its c).

    Both partitions are held (q(S) and q(M) fixed at the labels' start, everything else swept
    to convergence, as a move would score them).  Positive: the objective itself prefers what
    the fit returned, so a miss is the model's answer on these data, not a failure of the
    search; negative: the search missed a better partition.
    """
    prob = problem_with(model.problem_, donor_concentration=model.donor_concentration_)

    def score(cells, groups):
        return score_partition(prob, cells, groups, hold_groups=True, bound=False,
                               max_iter=300, tol=1e-8).elbo

    return (score(model.cell_labels_, model.group_labels_)
            - score(sim.cell_truth, sim.group_truth))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="one small setting, then its summary and one data set of --nam-grid "
                         "(CI smoke run)")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the runs as CSV here")
    ap.add_argument("--nam-grid", type=int, default=0, metavar="REPS",
                    help="only: the default against NAM exactly on the recovery study's "
                         "grid (data drawn from NAM itself), REPS replicates per cell")
    ap.add_argument("--explain", action="store_true",
                    help="only: the ELBO terms of the truth against the default's answer and "
                         "one cluster, at 24 donors x 1000 cells, c = 100 (a setting it misses)")
    ap.add_argument("--summarise", metavar="CSV", default=None,
                    help="only write studies/results/donor_variation.md from a runs CSV")
    args = ap.parse_args()
    if args.quick and not os.environ.get("NESTEDATOMS_STUDY_RESULTS"):
        from study_recovery import rerun_in_scratch

        return rerun_in_scratch(__file__, sys.argv[1:])
    if args.summarise:
        return summarise(args.summarise)
    if args.explain:
        return explain()
    if args.nam_grid:
        return nam_grid(args.nam_grid)
    reps = range(args.reps)
    if args.quick:
        grid = [(100.0, 200, 24, 0)]
        args.out = args.out or os.path.join(RESULTS, "donor_variation_quick_runs.csv")
        os.makedirs(RESULTS, exist_ok=True)
    else:
        concentrations = [10.0, 30.0, 100.0, 300.0, np.inf]
        # variation x (cells per donor, donors): 50-2000 cells, 24-96 donors
        shapes = [(50, 24), (200, 24), (1000, 24), (2000, 24), (200, 96)]
        grid = [(c, cells, donors, r) for c in concentrations for cells, donors in shapes
                for r in reps]
        # many donors (slow: the group search grows with J), with and without variation
        grid += [(c, 200, 500, r) for c in (100.0, np.inf) for r in reps]
        # less separated groups: compositions ~ Dir(100 / 6) instead of Dir(25 / 6)
        grid += [(c, 400, 24, r, 100.0) for c in (100.0, np.inf) for r in reps]
    import pandas as pd

    runs, done = [], set()
    if args.out and os.path.exists(args.out):        # resume: keep what was measured
        old = pd.read_csv(args.out)
        runs = old.to_dict("records")
        done = {(float(r["c"]), int(r["cells"]), int(r["donors"]), int(r["rep"]),
                 float(r["alpha0_y"])) for r in runs}
    for setting in grid:
        full = tuple(setting) + ((25.0,) if len(setting) == 4 else ())
        if (float(full[0]), int(full[1]), int(full[2]), int(full[3]), float(full[4])) in done:
            continue
        runs += one(*setting)
        r = runs[-2:]
        print(f"c={setting[0]:g} cells={setting[1]} donors={setting[2]} rep={setting[3]} "
              f"alpha0_y={r[0]['alpha0_y']:g}: "
              + f"Bayes ARI {r[0]['bayes_ari']:.3f} | "
              + " | ".join(f"{x['method']}: ARI {x['donor_ari']:.3f}, {x['clusters']} "
                           f"clusters, c {x['c_hat']:.3g}" for x in r), flush=True)
        if args.out:                 # as it goes: a partial run keeps what it measured
            pd.DataFrame(runs).to_csv(args.out, index=False)
    df = pd.DataFrame(runs)
    table = df.groupby(["alpha0_y", "donors", "cells", "c", "method"]).agg(
        bayes_ari=("bayes_ari", "median"), donor_ari=("donor_ari", "median"),
        clusters=("clusters", "median"),
        true=("true_clusters", "median"), cell_ari=("cell_ari", "median"),
        c_hat=("c_hat", "median")).reset_index()
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if args.quick:
        summarise(args.out)
        nam_grid(1, cells=[("model", 0.1, 12, 40, 3, 3)])


def explain(concentration=100.0, cells=1000, donors=24, rep=0):
    """Which terms of the objective prefer the default's answer to the truth, in a setting
    where the donor Bayes classifier is exact and the default merges two groups."""
    import pandas as pd

    sim = na.simulate(n_groups=donors, cells_per_group=cells, n_group_clusters=3,
                      n_cell_clusters=6, n_cell_features=10, alpha0_x=1000.0, alpha0_y=25.0,
                      donor_concentration=concentration, random_state=1000 * rep + donors + cells)
    m = na.NestedAtomsModel(random_state=rep, n_init=N_INIT).fit(sim.Y, sim.groups, None)
    prob = problem_with(m.problem_, donor_concentration=m.donor_concentration_)
    from_truth = na.NestedAtomsModel(random_state=rep, n_init=N_INIT,
                                     donor_concentration=m.donor_concentration_).fit(
        sim.Y, sim.groups, None, init_group_labels=sim.group_truth,
        init_cell_labels=sim.cell_truth)
    partitions = {"truth": sim.group_truth, "default's answer": m.group_labels_,
                  "one cluster": np.zeros_like(sim.group_truth)}
    terms = {name: score_partition(prob, sim.cell_truth, groups, hold_groups=True,
                                   bound=False, max_iter=500, tol=1e-9).terms
             for name, groups in partitions.items()}
    table = pd.DataFrame(terms)
    table.loc["ELBO"] = table.sum()
    for name in ("default's answer", "one cluster"):
        table[f"truth - {name}"] = table["truth"] - table[name]
    text = (f"Why the default merges groups at {donors} donors x {cells} cells, c = "
            f"{concentration:g} (`python studies/study_donor_variation.py --explain`).  "
            f"Bayes ARI {ari(sim.group_truth, bayes_donor_labels(sim, concentration)):.3f}; "
            f"the default: {len(np.unique(m.group_labels_))} clusters, ARI "
            f"{ari(sim.group_truth, m.group_labels_):.3f}, learned c "
            f"{m.donor_concentration_:.1f}; started from the true labels with c held there: "
            f"{len(np.unique(from_truth.group_labels_))} clusters, ARI "
            f"{ari(sim.group_truth, from_truth.group_labels_):.3f}.  Each partition held "
            f"(cells at their true types, groups at the partition), every other block "
            f"converged; ELBO terms in nats (model section 6).\n\n"
            + "| term | " + " | ".join(table.columns) + " |\n|" + "---|" * (table.shape[1] + 1)
            + "\n" + "\n".join(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |"
                                for name, row in table.iterrows()) + "\n")
    with open(os.path.join(RESULTS, "donor_variation_explain.md"), "w") as fh:
        fh.write(text)
    print(text)


def nam_grid(reps, cells=None):
    """On data drawn from NAM itself (the recovery grid, J = 12 and 100), the default must be
    NAM exactly: c infinite and the same partitions, up to the 1e-3 level of its test."""
    import itertools

    import pandas as pd

    from study_recovery import make_data

    if cells is None:
        cells = [("model", lam, 12, n_j, T, L) for lam, n_j, T, L in
                 itertools.product((0.01, 0.1, 0.5), (100, 1000), (3, 6), (3, 6))]
        cells += [("model", lam, 100, 100, T, L) for lam, T, L in
                  itertools.product((0.01, 0.1, 0.5), (3, 6), (3, 6))]
        cells += [("same-composition", 0.1, J, 100, 2, 2) for J in (12, 100)]
    rows = []
    for cell in cells:
        for rep in range(reps if cell[2] == 12 else 1):
            sim, seed = make_data(*cell, rep)
            fits = {}
            for name, setting in (("nam", np.inf), ("default", "auto")):
                m = na.NestedAtomsModel(random_state=seed, n_init=N_INIT,
                                        donor_concentration=setting)
                fits[name] = m.fit(sim.Y, sim.groups, sim.X)
            same = (na.adjusted_rand_index(fits["nam"].group_labels_,
                                           fits["default"].group_labels_) == 1.0
                    and na.adjusted_rand_index(fits["nam"].cell_labels_,
                                               fits["default"].cell_labels_) == 1.0)
            rows.append(dict(scenario=cell[0], lam=cell[1], J=cell[2], n_j=cell[3], T=cell[4],
                             L=cell[5], rep=rep, c=fits["default"].donor_concentration_,
                             same_partitions=same,
                             ari_nam=ari(sim.group_truth, fits["nam"].group_labels_),
                             ari_default=ari(sim.group_truth, fits["default"].group_labels_)))
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    finite = df[np.isfinite(df.c)]
    text = (f"NAM's own data (the recovery grid's cells: J = 12 with n_j = 100 and 1000, "
            f"{reps} replicate(s) each; J = 100 with n_j = 100, 1 each; lam in 0.01, 0.1, 0.5; "
            f"T, L in 3, 6; and the same-composition scenario), one restart per fit: the "
            f"default against NAM exactly (`python studies/study_donor_variation.py --nam-grid "
            f"{reps}`).\n\n* data sets: {len(df)}\n* the default learned a finite c on: "
            f"{len(finite)}\n* same individual and cell partitions as NAM exactly: "
            f"{int(df.same_partitions.sum())}\n* median individual ARI, NAM exactly / "
            f"default: {df.ari_nam.median():.3f} / {df.ari_default.median():.3f}\n")
    if len(finite):
        text += "\nWhere c was finite:\n\n" + finite.to_string(index=False) + "\n"
    path = os.path.join(RESULTS, "donor_variation_nam_grid.md")
    with open(path, "w") as fh:
        fh.write(text)
    print(text)


def summarise(csv_path):
    """The markdown table: one row per setting, before and after side by side."""
    import pandas as pd

    df = pd.read_csv(csv_path)
    keys = ["alpha0_y", "donors", "cells", "c"]
    out = []
    for key, g in df.groupby(keys, sort=True):
        before = g[g.method.str.startswith("NAM")]
        after = g[g.method.str.startswith("learned")]
        out.append(dict(zip(keys, key), reps=len(after),
                        bayes_ari=g.bayes_ari.median(),
                        clusters_before=before.clusters.median(),
                        ari_before=before.donor_ari.median(),
                        clusters_after=after.clusters.median(),
                        ari_after=after.donor_ari.median(),
                        c_learned=after.c_hat.median(),
                        margin_before=before.margin.median() if "margin" in g else np.nan,
                        margin_after=after.margin.median() if "margin" in g else np.nan,
                        cell_ari_before=before.cell_ari.median(),
                        cell_ari_after=after.cell_ari.median(),
                        seconds_before=before.seconds.median(),
                        seconds_after=after.seconds.median()))
    table = pd.DataFrame(out)
    path = os.path.join(RESULTS, "donor_variation.md")

    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |"
              for row in table.itertuples(index=False)]
    with open(path, "w") as fh:
        fh.write(
            "Donors that vary around their cluster (`python studies/study_donor_variation.py`; "
            "this table: `--summarise studies/results/donor_variation_runs.csv`).  3 true donor "
            "clusters differing in composition only (CAM, no x), 6 cell types, p = 10; each "
            "donor's composition ~ Dirichlet(c x its cluster's), c = inf: NAM exactly; "
            "alpha0_y = 25 (the default separation) or 100 (closer compositions).  "
            "*before*: NAM exactly (`donor_concentration=numpy.inf`); *after*: the default "
            "(learned c); one restart each.  `bayes_ari`: the donor Bayes classifier told the "
            "true compositions, c and weights (the ceiling).  `margin_*`: the fit's "
            "partition minus the truth's, both scored by that fit's own objective (its c; "
            "groups and cells held at the labels, every other block converged): >= 0 means "
            "the objective prefers what the fit returned over the truth, so a miss there is "
            "the model's answer, not the search's failure.  Medians over replicates.\n\n")
        fh.write("\n".join(lines) + "\n")
    print(table.to_string(index=False))


if __name__ == "__main__":
    sys.exit(main())
