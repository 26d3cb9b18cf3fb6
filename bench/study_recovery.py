"""Recovery study: NAM against CAM and a two-stage baseline on data drawn from the model.

Grid (issue 6, item 2): separation lam in {0.01, 0.1, 0.5} (lam_x = lam_y = lam; smaller is
better separated), J in {12, 100}, n_j in {100, 1000}, true numbers of individual and cell
clusters in {3, 6} (both levels), 10 replicates each; plus the "same composition" scenario, in
which two individual clusters share one cell-type composition and differ only in x, so the
compositions alone cannot separate them.

Methods:
* ``NAM``: ``NestedAtomsModel`` with its defaults (n_init=3);
* ``NAM n_init=1``: one start;
* ``CAM``: the same estimator with x dropped (X=None);
* ``two-stage``: scikit-learn's ``BayesianGaussianMixture`` (Dirichlet process, 30 components)
  on the cells, then ``KMeans`` on each individual's cell-cluster composition joined with its
  standardised x.  KMeans is given the true number of individual clusters (a favour to the
  baseline: NAM has to find it).

Cells are judged against the Bayes classifier under the true parameters
(``Simulation.bayes_labels``), reported as ``cell_ari_bayes`` beside each method's cell ARI.

Usage::

    python bench/study_recovery.py             # reduced grid: n_j = 100, 3 replicates
    python bench/study_recovery.py --full      # the whole grid, 10 replicates (hours)
    python bench/study_recovery.py --summarise # tables and figure from the runs CSV only
    python bench/study_recovery.py --toy 10    # the published toy design, seeds 0..9
    python bench/study_recovery.py --prior-check 10   # truth vs merges under x-prior variants

``--toy`` fits the published toy design (``simulate(random_state=seed)``) with the defaults
and writes ``bench/results/toy_design.md``: individual and cell ARI, the Bayes classifier's
cell ARI, and the ELBO of the fit minus that of CAVI started at the true partition (>= 0: the
fit found a partition the model scores at least as high as the truth).

Each finished fit is appended to ``bench/results/recovery_runs.csv`` at once (a rerun skips
the rows already there), so the study can be stopped and resumed; the summary is
``bench/results/recovery_summary.md`` and the figure ``bench/results/recovery.png``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import os
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
RUNS_CSV = os.path.join(RESULTS, "recovery_runs.csv")
FIELDS = ["scenario", "lam", "J", "n_j", "T", "rep", "method", "group_ari", "cell_ari",
          "cell_ari_bayes", "group_ari_bayes", "n_groups_found", "n_cells_found", "seconds"]
METHODS = ("NAM", "NAM n_init=1", "CAM", "two-stage")


# ------------------------------------------------------------------------------ scenarios
def grid(full: bool):
    """(scenario, lam, J, n_j, T) cells of the grid; T is the number of clusters at both levels."""
    lams = (0.01, 0.1, 0.5)
    Js = (12, 100)
    njs = (100, 1000) if full else (100,)
    Ts = (3, 6)
    for lam, J, n_j, T in itertools.product(lams, Js, njs, Ts):
        yield ("model", lam, J, n_j, T)
    for J, n_j in itertools.product(Js, njs):
        yield ("same-composition", 0.1, J, n_j, 2)


def same_composition(sim):
    """The simulation redrawn so that every individual cluster has cluster 0's composition."""
    rng = np.random.default_rng(12345)
    omega = np.repeat(sim.cell_weights[:, :1], sim.cell_weights.shape[1], axis=1)
    codes = np.searchsorted(sim.group_names, sim.groups)
    sizes = np.bincount(codes)
    Lt = omega.shape[0]
    M = np.concatenate([rng.choice(Lt, size=n, p=omega[:, 0]) for n in sizes])
    Y = np.empty_like(sim.Y)
    for l in range(Lt):
        idx = np.nonzero(M == l)[0]
        Y[idx] = rng.multivariate_normal(sim.y_means[l], np.linalg.inv(sim.y_precisions[l]),
                                         size=idx.size)
    return dataclasses.replace(sim, Y=Y, cell_truth=M, cell_weights=omega)


def make_data(scenario, lam, J, n_j, T, rep):
    import nestedatoms as na

    seed = 1000 * rep + 7
    sim = na.simulate(n_groups=J, cells_per_group=n_j, n_group_clusters=T, n_cell_clusters=T,
                      lam_x=lam, lam_y=lam, random_state=seed)
    if scenario == "same-composition":
        sim = same_composition(sim)
    return sim, seed


# ------------------------------------------------------------------------------ methods
def fit_nam(sim, seed, n_init=3, use_x=True):
    import nestedatoms as na

    model = na.NestedAtomsModel(n_init=n_init, random_state=seed, n_threads=1)
    model.fit(sim.Y, sim.groups, sim.X if use_x else None)
    return model.group_labels_, model.cell_labels_


def fit_two_stage(sim, seed, T):
    from sklearn.cluster import KMeans
    from sklearn.mixture import BayesianGaussianMixture

    bgm = BayesianGaussianMixture(n_components=30, max_iter=500, random_state=seed,
                                  weight_concentration_prior_type="dirichlet_process")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # convergence warnings: we report what it gives
        cells = bgm.fit_predict(sim.Y)
    codes = np.searchsorted(sim.group_names, sim.groups)
    counts = np.zeros((sim.X.shape[0], 30))
    np.add.at(counts, (codes, cells), 1.0)
    comp = counts / counts.sum(axis=1, keepdims=True)
    sd = sim.X.std(axis=0)
    sd[sd == 0] = 1.0
    xs = (sim.X - sim.X.mean(axis=0)) / sd
    feats = np.hstack([comp / max(np.sqrt(comp.var(axis=0).sum()), 1e-12),
                       xs / np.sqrt(xs.shape[1])])
    groups = KMeans(n_clusters=T, n_init=10, random_state=seed).fit_predict(feats)
    return groups, cells


def run_method(method, sim, seed, T):
    if method == "NAM":
        return fit_nam(sim, seed)
    if method == "NAM n_init=1":
        return fit_nam(sim, seed, n_init=1)
    if method == "CAM":
        return fit_nam(sim, seed, use_x=False)
    if method == "two-stage":
        return fit_two_stage(sim, seed, T)
    raise ValueError(method)


# ------------------------------------------------------------------------------ driver
def done_keys():
    if not os.path.exists(RUNS_CSV):
        return set()
    with open(RUNS_CSV) as fh:
        return {(r["scenario"], float(r["lam"]), int(r["J"]), int(r["n_j"]), int(r["T"]),
                 int(r["rep"]), r["method"]) for r in csv.DictReader(fh)}


def run(full: bool, n_rep: int, methods):
    from sklearn.metrics import adjusted_rand_score as ari

    os.makedirs(RESULTS, exist_ok=True)
    done = done_keys()
    new_file = not os.path.exists(RUNS_CSV)
    with open(RUNS_CSV, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        for rep in range(n_rep):                 # replicates outermost: every cell gets data
            for scenario, lam, J, n_j, T in grid(full):
                todo = [m for m in methods
                        if (scenario, lam, J, n_j, T, rep, m) not in done]
                if not todo:
                    continue
                sim, seed = make_data(scenario, lam, J, n_j, T, rep)
                bayes_groups, bayes_cells = sim.bayes_labels()
                for method in todo:
                    start = time.perf_counter()
                    groups, cells = run_method(method, sim, seed, T)
                    seconds = time.perf_counter() - start
                    row = dict(scenario=scenario, lam=lam, J=J, n_j=n_j, T=T, rep=rep,
                               method=method,
                               group_ari=ari(sim.group_truth, groups),
                               cell_ari=ari(sim.cell_truth, cells),
                               cell_ari_bayes=ari(sim.cell_truth, bayes_cells),
                               group_ari_bayes=ari(sim.group_truth, bayes_groups),
                               n_groups_found=len(np.unique(groups)),
                               n_cells_found=len(np.unique(cells)), seconds=seconds)
                    writer.writerow(row)
                    fh.flush()
                    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in row.items()), flush=True)


def summarise():
    import pandas as pd

    runs = pd.read_csv(RUNS_CSV)
    keys = ["scenario", "lam", "J", "n_j", "T", "method"]
    table = (runs.groupby(keys, sort=True)
             .agg(reps=("rep", "nunique"), group_ari=("group_ari", "median"),
                  cell_ari=("cell_ari", "median"), cell_ari_bayes=("cell_ari_bayes", "median"),
                  group_ari_bayes=("group_ari_bayes", "median"),
                  seconds=("seconds", "median"))
             .reset_index())
    with open(os.path.join(RESULTS, "recovery_summary.md"), "w") as fh:
        fh.write("Median over replicates (`reps`) of each grid cell; ARI against the truth. "
                 "`cell_ari_bayes` / `group_ari_bayes`: the Bayes classifier under the true "
                 "parameters; `seconds`: median wall time of one fit (1 thread).\n\n")
        fh.write(markdown_table(table))
        fh.write("\n")
    _figure(runs)
    print(table.to_string(index=False))


def markdown_table(df) -> str:
    """A pipe table without optional dependencies (pandas' to_markdown needs tabulate)."""
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, (float, np.floating)) else str(v)
    lines = ["| " + " | ".join(map(str, df.columns)) + " |",
             "|" + "|".join("---" for _ in df.columns) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _figure(runs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = runs[runs.scenario == "model"]
    cells = sorted(model.groupby(["J", "n_j", "T"]).groups)
    fig, axes = plt.subplots(2, len(cells), figsize=(3.2 * len(cells), 6), squeeze=False,
                             sharey=True)
    for c, (J, n_j, T) in enumerate(cells):
        sub = model[(model["J"] == J) & (model["n_j"] == n_j) & (model["T"] == T)]
        for r, level in enumerate(("group_ari", "cell_ari")):
            ax = axes[r, c]
            for method in METHODS:
                med = sub[sub.method == method].groupby("lam")[level].median()
                ax.plot(med.index, med.values, marker="o", label=method)
            if level == "cell_ari":
                med = sub.groupby("lam")["cell_ari_bayes"].median()
                ax.plot(med.index, med.values, "k--", label="Bayes classifier")
            ax.set_xscale("log")
            ax.set_title(f"J={J}, n_j={n_j}, T=L={T}", fontsize=9)
            ax.set_xlabel("lam (separation; smaller = easier)")
            if c == 0:
                ax.set_ylabel("median " + ("individual" if r == 0 else "cell") + " ARI")
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "recovery.png"), dpi=90)


def toy(n_seeds: int):
    from sklearn.metrics import adjusted_rand_score as ari

    import nestedatoms as na
    from nestedatoms._backend import get_backend
    from nestedatoms._fit import run_cavi
    from nestedatoms._init import state_from_labels

    import pandas as pd

    be = get_backend("cpp")
    rows = []
    for seed in range(n_seeds):
        sim = na.simulate(random_state=seed)
        bayes_groups, bayes_cells = sim.bayes_labels()
        start = time.perf_counter()
        model = na.NestedAtomsModel(random_state=seed, n_threads=1).fit(sim.Y, sim.groups,
                                                                        sim.X)
        seconds = time.perf_counter() - start
        prob = model.problem_
        st = state_from_labels(be, prob, sim.cell_truth[prob.data.order], sim.group_truth)
        from_truth = run_cavi(be, prob, st, max_iter=1000, tol=1e-9).elbo
        rows.append(dict(seed=seed, group_ari=ari(sim.group_truth, model.group_labels_),
                         group_ari_bayes=ari(sim.group_truth, bayes_groups),
                         n_groups_found=len(np.unique(model.group_labels_)),
                         cell_ari=ari(sim.cell_truth, model.cell_labels_),
                         cell_ari_bayes=ari(sim.cell_truth, bayes_cells),
                         elbo_fit_minus_truth=model.elbo_ - from_truth, seconds=seconds))
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    with open(os.path.join(RESULTS, "toy_design.md"), "w") as fh:
        fh.write("Published toy design (J = 12, n_j = 100, 3 + 3 clusters, q = p = 5), default "
                 "fit (n_init = 3, 1 thread).  `elbo_fit_minus_truth`: ELBO of the fit minus "
                 "that of CAVI started at the true partition.\n\n")
        fh.write(markdown_table(table))


X_PRIOR_VARIANTS = {
    # name: (W0^-1 as a function of (Cov, nu0, q, K), lam0 as a function of (q, K), m0 = mean?)
    "old: nu0 Cov/K^(2/q), lam0=0.01": (lambda C, nu0, q, K: nu0 * C / K ** (2 / q),
                                        lambda q, K: 0.01, True),
    "exact: (nu0-q-1) Cov/K^(2/q), lam0=0.01": (
        lambda C, nu0, q, K: (nu0 - q - 1) * C / K ** (2 / q), lambda q, K: 0.01, True),
    "exact, lam0=0.1": (lambda C, nu0, q, K: (nu0 - q - 1) * C / K ** (2 / q),
                        lambda q, K: 0.1, True),
    "default: exact, lam0=K^(-2/q)": (lambda C, nu0, q, K: (nu0 - q - 1) * C / K ** (2 / q),
                                      lambda q, K: K ** (-2 / q), True),
    "reference: W0=I, lam0=0.01": (lambda C, nu0, q, K: np.eye(q), lambda q, K: 0.01, False),
    "reference, lam0=0.1": (lambda C, nu0, q, K: np.eye(q), lambda q, K: 0.1, False),
}


def prior_check(n_seeds: int):
    """At the true cells, CAVI from the true individual partition against CAVI from every merge
    of two true clusters, under each x prior: how often does the truth score highest?"""
    import nestedatoms as na
    from nestedatoms._backend import get_backend
    from nestedatoms._data import prepare_data
    from nestedatoms._fit import run_cavi
    from nestedatoms._init import state_from_labels
    from nestedatoms._state import NWPrior, _robust_covariance

    be = get_backend("cpp")
    wins = {name: 0 for name in X_PRIOR_VARIANTS}
    lines = []
    for seed in range(n_seeds):
        sim = na.simulate(random_state=seed)
        data = prepare_data(sim.Y, sim.groups, sim.X)
        cells = sim.cell_truth[data.order]
        T = int(sim.group_truth.max()) + 1
        for name, (w0inv, lam0, centred) in X_PRIOR_VARIANTS.items():
            prob = na.NestedAtomsModel()._problem(data)
            q, K = sim.X.shape[1], prob.K
            nu0 = q + 5.0
            prob.x_prior = NWPrior(m0=sim.X.mean(axis=0) if centred else np.zeros(q),
                                   lam0=lam0(q, K), nu0=nu0,
                                   W0inv=w0inv(_robust_covariance(sim.X), nu0, q, K))

            def converged(groups):
                st = state_from_labels(be, prob, cells, groups)
                return run_cavi(be, prob, st, max_iter=1000, tol=1e-9).elbo

            truth = converged(sim.group_truth)
            merges = [converged(np.where(sim.group_truth == b, a, sim.group_truth))
                      for a, b in itertools.combinations(range(T), 2)]
            margin = truth - max(merges)
            wins[name] += margin > 0
            lines.append(f"| {seed} | {name} | {margin:.1f} |")
            print(lines[-1], flush=True)
    with open(os.path.join(RESULTS, "prior_check.md"), "w") as fh:
        fh.write("Published toy design, true cells fixed: converged ELBO from the true individual "
                 "partition minus the best converged ELBO from a merge of two true clusters "
                 "(> 0: the truth scores highest), for each x prior.\n\n")
        fh.write("| x prior | seeds where the truth wins |\n|---|---|\n")
        for name, count in wins.items():
            fh.write(f"| {name} | {count} / {n_seeds} |\n")
        fh.write("\n| seed | x prior | truth minus best merge (nats) |\n|---|---|---|\n")
        fh.write("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true",
                        help="the whole grid (n_j in {100, 1000}) with 10 replicates")
    parser.add_argument("--reps", type=int, default=None,
                        help="replicates per grid cell (default 3, or 10 with --full)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated subset of: " + ", ".join(METHODS))
    parser.add_argument("--summarise", action="store_true",
                        help="only rebuild the table and figure from the runs CSV")
    parser.add_argument("--toy", type=int, default=0, metavar="N",
                        help="only the published toy design, seeds 0..N-1")
    parser.add_argument("--prior-check", type=int, default=0, metavar="N",
                        help="only the x-prior check on the toy design, seeds 0..N-1")
    args = parser.parse_args(argv)
    if args.prior_check:
        os.makedirs(RESULTS, exist_ok=True)
        return prior_check(args.prior_check)
    if args.toy:
        os.makedirs(RESULTS, exist_ok=True)
        return toy(args.toy)
    if not args.summarise:
        reps = args.reps or (10 if args.full else 3)
        run(args.full, reps, [m for m in args.methods.split(",") if m])
    summarise()


if __name__ == "__main__":
    sys.exit(main())
