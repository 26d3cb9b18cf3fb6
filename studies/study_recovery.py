"""Recovery study: NAM against CAM and a two-stage baseline on data drawn from the model.

Grid (issue 6, item 2): separation lam in {0.01, 0.1, 0.5} (lam_x = lam_y = lam; smaller is
better separated), J in {12, 100}, n_j in {100, 1000}, true numbers of individual clusters T
and of cell clusters L in {3, 6} (all four combinations), 10 replicates each; plus the "same
composition" scenario, in which two individual clusters share one cell-type composition and
differ only in x, so the compositions alone cannot separate them.

Methods:
* ``NAM``: ``NestedAtomsModel`` with its defaults (n_init=3; the x prior's width learned);
* ``NAM n_init=1``: one start;
* ``NAM fixed x width``: the defaults with ``learn_group_prior_scale=False``, the x prior held
  as set (the default until the width was learned; ``studies/STUDY.md`` section 1);
* ``CAM``: the same estimator with x dropped (X=None);
* ``two-stage``: scikit-learn's ``BayesianGaussianMixture`` (Dirichlet process, 30 components)
  on the cells, then ``KMeans`` on each individual's cell-cluster composition joined with its
  standardised x.  KMeans is given the true number of individual clusters (a favour to the
  baseline: NAM has to find it).

Cells are judged against the Bayes classifier under the true parameters
(``Simulation.bayes_labels``), reported as ``cell_ari_bayes`` beside each method's cell ARI.

Usage::

    python studies/study_recovery.py             # reduced grid: n_j = 100, T = L, 3 replicates
    python studies/study_recovery.py --full      # the whole grid, 10 replicates (hours)
    python studies/study_recovery.py --full --reps 3 --n-j 1000 --J 12   # one slice of it
    python studies/study_recovery.py --summarise # tables and figure from the runs CSV only
    python studies/study_recovery.py --toy 10    # the published toy design, seeds 0..9
    python studies/study_recovery.py --prior-check 10   # truth vs merges under x-prior variants
    python studies/study_recovery.py --prior-ablation 10   # default fits under x-prior variants
    python studies/study_recovery.py --misses    # why each grid miss at lam <= 0.1 happened
    python studies/study_recovery.py --ceiling   # the exact posterior mode at J = 12 (minutes)
    python studies/study_recovery.py --ceiling-ablation   # what keeps NAM from it at T = 6
    python studies/study_recovery.py --ceiling-priors   # the mode with NAM's priors swapped in
    python studies/study_recovery.py --ceiling-priors --summarise   # its table from its CSV
    python studies/study_recovery.py --ordering-check   # misses against the labelling gap
    python studies/study_recovery.py --prior-scale-eb   # the learned x width with its cap lifted
    python studies/study_recovery.py --unequal-widths   # the learned width, unequal widths
    python studies/study_recovery.py --quick   # every analysis at its smallest (CI smoke run)

``--toy`` fits the published toy design (``simulate(random_state=seed)``) with the defaults
and writes ``studies/results/toy_design.md``: individual and cell ARI, the Bayes classifier's
cell ARI, the exact posterior mode of the individual partition, and NAM's ELBO from the fit's
answer minus that from the truth and from the mode (>= 0: the model scores the fit's answer at
least as high, so no better search would change it).

The ceiling analyses (``--ceiling``, ``--ceiling-ablation``, ``--ceiling-priors``,
``--ordering-check``) live in ``study_ceiling.py``; the exact posterior pieces they use are
public, in ``nestedatoms.diagnostics``.

``--n-j``, ``--J``, ``--lam``, ``--tied`` / ``--untied`` restrict the grid, so that slices can
run in separate processes (they append to the same CSV, one short line per write).
Each finished fit is appended to ``studies/results/recovery_runs.csv`` at once (a rerun skips
the rows already there), so the study can be stopped and resumed; the summary is
``studies/results/recovery_summary.md`` and the figure ``studies/results/recovery.png``.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import sys
import time
import warnings

import numpy as np

from nestedatoms.diagnostics import MAX_GROUPS

HERE = os.path.dirname(os.path.abspath(__file__))
# A smoke run (--quick) writes here instead of results/ (see rerun_in_scratch).
RESULTS_ENV = "NESTEDATOMS_STUDY_RESULTS"
RESULTS = os.environ.get(RESULTS_ENV) or os.path.join(HERE, "results")
RUNS_CSV = os.path.join(RESULTS, "recovery_runs.csv")
FIELDS = ["scenario", "lam", "J", "n_j", "T", "L", "rep", "method", "group_ari", "cell_ari",
          "cell_ari_bayes", "group_ari_bayes", "n_groups_found", "n_cells_found", "seconds"]
METHODS = ("NAM", "NAM n_init=1", "CAM", "two-stage", "NAM fixed x width")
# margins within this many nats count as ties: CAVI to tol = 1e-9 on ELBOs of order 1e4-1e6
TIE_NATS = 0.01


def rerun_in_scratch(script, argv) -> int:
    """Run ``script argv`` again in a fresh interpreter whose results folder (RESULTS_ENV) is a
    temporary one, removed afterwards: a smoke run never overwrites the study's results."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nestedatoms-study-") as scratch:
        return subprocess.call([sys.executable, script, *argv],
                               env={**os.environ, RESULTS_ENV: scratch})


# ------------------------------------------------------------------------------ scenarios
def grid(full: bool, n_js=None, Js=None, lams=None, ties=(True, False)):
    """(scenario, lam, J, n_j, T, L) cells of the grid: T individual and L cell clusters.

    The reduced grid (``full=False``) keeps n_j = 100 and T = L; the filters restrict either.
    """
    lams = lams or (0.01, 0.1, 0.5)
    Js = Js or (12, 100)
    n_js = n_js or ((100, 1000) if full else (100,))
    ties = ties if full else (True,)
    for lam, J, n_j, T, L in itertools.product(lams, Js, n_js, (3, 6), (3, 6)):
        if (T == L) in ties:
            yield ("model", lam, J, n_j, T, L)
    if 0.1 in lams and True in ties:
        for J, n_j in itertools.product(Js, n_js):
            yield ("same-composition", 0.1, J, n_j, 2, 2)


def make_data(scenario, lam, J, n_j, T, L, rep):
    import nestedatoms as na

    seed = 1000 * rep + 7
    sim = na.simulate(n_groups=J, cells_per_group=n_j, n_group_clusters=T, n_cell_clusters=L,
                      lam_x=lam, lam_y=lam, random_state=seed)
    if scenario == "same-composition":
        sim = sim.with_shared_composition(12345)
    return sim, seed


# ------------------------------------------------------------------------------ methods
# restarts of a "NAM" fit: the estimator's default (the smoke run uses 1)
N_INIT = 3


def fit_nam_model(sim, seed, n_init=None, use_x=True, **options):
    import nestedatoms as na

    model = na.NestedAtomsModel(n_init=N_INIT if n_init is None else n_init,
                                random_state=seed, n_threads=1, **options)
    return model.fit(sim.Y, sim.groups, sim.X if use_x else None)


def fit_nam(sim, seed, n_init=None, use_x=True, **options):
    model = fit_nam_model(sim, seed, n_init, use_x, **options)
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
    if method == "NAM fixed x width":
        return fit_nam(sim, seed, learn_group_prior_scale=False)
    raise ValueError(method)


# ------------------------------------------------------------------------------ driver
def done_keys():
    if not os.path.exists(RUNS_CSV):
        return set()
    with open(RUNS_CSV) as fh:
        # rows written before L was its own column have L = T
        return {(r["scenario"], float(r["lam"]), int(r["J"]), int(r["n_j"]), int(r["T"]),
                 int(r.get("L") or r["T"]), int(r["rep"]), r["method"])
                for r in csv.DictReader(fh)}


def run(full: bool, n_rep: int, methods, cells=None, **filters):
    from sklearn.metrics import adjusted_rand_score as ari

    os.makedirs(RESULTS, exist_ok=True)
    done = done_keys()
    new_file = not os.path.exists(RUNS_CSV)
    with open(RUNS_CSV, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        for rep in range(n_rep):                 # replicates outermost: every cell gets data
            for scenario, lam, J, n_j, T, L in cells or grid(full, **filters):
                todo = [m for m in methods
                        if (scenario, lam, J, n_j, T, L, rep, m) not in done]
                if not todo:
                    continue
                sim, seed = make_data(scenario, lam, J, n_j, T, L, rep)
                bayes_groups, bayes_cells = sim.bayes_labels()
                for method in todo:
                    start = time.perf_counter()
                    groups, cells = run_method(method, sim, seed, T)
                    seconds = time.perf_counter() - start
                    row = dict(scenario=scenario, lam=lam, J=J, n_j=n_j, T=T, L=L, rep=rep,
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
    keys = ["scenario", "lam", "J", "n_j", "T", "L", "method"]
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
    """recovery.png (individual ARI) and recovery_cells.png (cell ARI): rows J x n_j, columns
    the numbers of true clusters (T, L), median over replicates against lam."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = runs[runs.scenario == "model"]
    rows = sorted(model.groupby(["J", "n_j"]).groups)
    cols = sorted(model.groupby(["T", "L"]).groups)
    for level, bayes, name in (("group_ari", "group_ari_bayes", "recovery.png"),
                               ("cell_ari", "cell_ari_bayes", "recovery_cells.png")):
        fig, axes = plt.subplots(len(rows), len(cols), figsize=(3.0 * len(cols),
                                                                 2.6 * len(rows)),
                                 squeeze=False, sharex=True, sharey=True)
        for r, (J, n_j) in enumerate(rows):
            for c, (T, L) in enumerate(cols):
                ax = axes[r, c]
                sub = model[(model["J"] == J) & (model["n_j"] == n_j) & (model["T"] == T)
                            & (model["L"] == L)]
                for method in METHODS:
                    med = sub[sub.method == method].groupby("lam")[level].median()
                    # the default on top: the variants often coincide with it
                    top = method == "NAM"
                    ax.plot(med.index, med.values, marker="o", label=method,
                            zorder=3 if top else 2, lw=2.2 if top else 1.2,
                            ms=6 if top else 4)
                med = sub.groupby("lam")[bayes].median()
                ax.plot(med.index, med.values, "k--", label="Bayes classifier")
                # replicates per (method, lam): methods may differ (costly baselines)
                reps = sub.groupby(["method", "lam"])["rep"].nunique()
                span = (f"{reps.min()}-{reps.max()}" if len(reps) and reps.min() < reps.max()
                        else f"{reps.max() if len(reps) else 0}")
                ax.set_title(f"J={J}, n_j={n_j}, T={T}, L={L} ({span} reps)", fontsize=8)
                ax.set_xscale("log")
                if r == len(rows) - 1:
                    ax.set_xlabel("lam (smaller = better separated)")
                if c == 0:
                    ax.set_ylabel("median " + ("individual" if level == "group_ari"
                                               else "cell") + " ARI")
        axes[0, 0].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(os.path.join(RESULTS, name), dpi=80)
        plt.close(fig)


def simulator_prior(dim, lam):
    """The simulator's atom prior NW(0, lam, I, dim + 5) (model section 8) as estimator
    overrides."""
    from nestedatoms.diagnostics import simulator_atom_prior

    prior = simulator_atom_prior(dim, lam)
    return dict(mean_prior=0.0, mean_precision_prior=prior.lam0, covariance_prior=prior.W0inv,
                degrees_of_freedom_prior=prior.nu0)


def simulator_problem(prob, sim, lam=0.1):
    """``prob`` with both atom priors replaced by the simulator's own (model section 8):
    NW(0, lam, I, D + 5).  NAM's own partition and composition priors (Dirichlet process,
    stick-breaking) stay: for the model that drew the data in full see
    ``Simulation.group_partition_posterior``.
    """
    from nestedatoms.diagnostics import problem_with, simulator_atom_prior

    # the true prior, not a width fitted to the data
    return problem_with(prob, x_prior=simulator_atom_prior(sim.X.shape[1], lam),
                        y_prior=simulator_atom_prior(sim.Y.shape[1], lam),
                        learn_group_prior_scale=False)


def converged_elbo(problem, cells, groups):
    """NAM's ELBO from CAVI run to tol = 1e-9 from hard labels (``elbo_from_labels``): every
    side of a comparison goes through here, so that no margin comes from one run stopping
    earlier than another."""
    from nestedatoms.diagnostics import elbo_from_labels

    return elbo_from_labels(problem, cells, groups)


def margins_against_truth(model, sim, lam=0.1, mode_labels=None):
    """How far a fitted ``model``'s answer is from being beaten by the truth, in nats.

    Returns ``(fit_minus_truth, sim_prior_fit_minus_truth, fit_minus_mode)``:

    * the ELBO of CAVI started at the fit's labels minus that of CAVI started at the true ones,
      under the fit's own (default) priors (>= 0: the model scores the fit's answer at least as
      high, so no search can be blamed);
    * the fit's individual partition against the true one, both from the true cells, under
      the simulator's atom priors (> 0: NAM with the true atom priors also prefers the fit's
      partition);
    * if ``mode_labels`` (the exact posterior mode of the individual partition, from
      ``Simulation.group_partition_posterior``) is given, the same as the first with the mode
      in place of the truth, from the true cells (> 0: NAM's own objective prefers the fit's
      answer to the mode); else NaN.
    """
    prob = model.problem_
    from_fit = converged_elbo(prob, model.cell_labels_, model.group_labels_)
    from_truth = converged_elbo(prob, sim.cell_truth, sim.group_truth)
    from_mode = (np.nan if mode_labels is None
                 else converged_elbo(prob, sim.cell_truth, mode_labels))
    sim_prob = simulator_problem(prob, sim, lam)
    # the true cells in both, so that only the individual partitions are compared
    sim_margin = (converged_elbo(sim_prob, sim.cell_truth, model.group_labels_)
                  - converged_elbo(sim_prob, sim.cell_truth, sim.group_truth))
    return from_fit - from_truth, sim_margin, from_fit - from_mode


def grid_misses(max_lam: float = 0.1, max_group_ari: float = 1.0):
    """Every default NAM fit of the grid at lam <= ``max_lam`` that misses a target (individual
    ARI below 1, or cell ARI more than 0.01 below the Bayes classifier's), refitted and judged
    by ``margins_against_truth``: is the miss the model's answer or the search's fault?
    (``max_group_ari`` above 1 takes every fit: the smoke run's.)"""
    from sklearn.metrics import adjusted_rand_score as ari

    import pandas as pd

    runs = pd.read_csv(RUNS_CSV)
    nam = runs[(runs.method == "NAM") & (runs.lam <= max_lam)]
    missed = nam[(nam.group_ari < max_group_ari) | (nam.cell_ari < nam.cell_ari_bayes - 0.01)]
    rows = []
    for r in missed.sort_values(["n_j", "J", "T", "L", "lam", "rep"]).itertuples(index=False):
        sim, seed = make_data(r.scenario, r.lam, r.J, r.n_j, r.T, r.L, r.rep)
        model = fit_nam_model(sim, seed)
        group_ari = ari(sim.group_truth, model.group_labels_)
        # the exact mode exists where J is small and the data come from the model itself
        mode = (sim.group_partition_posterior().map_labels
                if r.scenario == "model" and r.J <= MAX_GROUPS else None)
        fit_minus_truth, sim_margin, fit_minus_mode = margins_against_truth(
            model, sim, r.lam, mode)
        rows.append(dict(scenario=r.scenario, lam=r.lam, J=r.J, n_j=r.n_j, T=r.T, L=r.L,
                         rep=r.rep, group_ari=group_ari,
                         mode_ari=np.nan if mode is None else ari(sim.group_truth, mode),
                         cell_ari_minus_bayes=ari(sim.cell_truth, model.cell_labels_)
                         - r.cell_ari_bayes,
                         n_groups_found=len(np.unique(model.group_labels_)),
                         elbo_fit_minus_truth=fit_minus_truth,
                         elbo_fit_minus_mode=fit_minus_mode,
                         sim_prior_fit_minus_truth=sim_margin,
                         verdict=miss_verdict(fit_minus_truth, fit_minus_mode)))
        if abs(group_ari - r.group_ari) > 1e-9:       # the fits are deterministic at 1 thread
            rows[-1]["verdict"] += f" (CSV had ARI {r.group_ari:.3f})"
        print(rows[-1], flush=True)
    write_grid_misses(pd.DataFrame(rows), max_lam)


def miss_verdict(fit_minus_truth, fit_minus_mode=np.nan):
    """A search miss when NAM's own objective scores the truth or the exact mode higher than
    the fit (beyond a tie); else the model's answer.  A missing mode (NaN) never counts."""
    beaten = fit_minus_truth < -TIE_NATS or fit_minus_mode < -TIE_NATS
    return "search miss" if beaten else "model's answer"


def write_grid_misses(table, max_lam):
    with open(os.path.join(RESULTS, "grid_misses.md"), "w") as fh:
        fh.write(f"Every default NAM fit of the grid at lam <= {max_lam} with individual ARI "
                 "below 1 or cell ARI more than 0.01 below the Bayes classifier's, refitted "
                 "(`python studies/study_recovery.py --misses`).  Every ELBO below is of CAVI "
                 "run to tol = 1e-9 from hard labels, so that no margin comes from one run "
                 "stopping earlier than another.  `elbo_fit_minus_truth`: from the fit's "
                 "labels minus from the true ones, default priors.  `mode_ari`, "
                 "`elbo_fit_minus_mode`: the exact posterior mode of the individual partition "
                 "under the model that drew the data (J = 12, scenario \"model\" only; "
                 "`Simulation.group_partition_posterior`), and the fit minus CAVI from the "
                 "true cells and that partition, default priors.  `verdict`: \"model's "
                 "answer\" when NAM's objective scores the fit at least as high as both the "
                 f"truth and the mode (ties within {TIE_NATS} nats); \"search miss\" when it "
                 "scores either higher.  "
                 "`sim_prior_fit_minus_truth`: the fit's individual partition against the true "
                 "one, both from the true cells, under the simulator's atom priors "
                 "NW(0, lam, I, D + 5) with NAM's own partition and composition priors (> 0: "
                 "NAM with the true atom priors also prefers the fit's partition).\n\n")
        if len(table):
            counts = table.verdict.str.startswith("model").sum()
            sim_margin = table.sim_prior_fit_minus_truth
            fh.write(f"{counts} of {len(table)} misses are the model's answer; "
                     f"{len(table) - counts} are search misses; "
                     f"{int((sim_margin > TIE_NATS).sum())} are also preferred by the "
                     f"simulator's atom priors by more than {TIE_NATS} nats "
                     f"({int((sim_margin.abs() <= TIE_NATS).sum())} more are ties).\n\n")
            fh.write(markdown_table(table))


def toy(n_seeds: int):
    """The published toy design with the defaults, and why a seed is missed when it is.

    Besides the ARIs, each row says whether NAM's objective or its search decides the answer
    (``margins_against_truth``): ``elbo_fit_minus_truth`` and ``elbo_fit_minus_mode`` (default
    priors; > 0: the model scores the fit's partition higher than the truth, or than the exact
    posterior mode), ``sim_prior_fit_minus_truth`` (the fit's individual partition against
    the true one, both with the true cells, under the simulator's atom priors; > 0 means NAM
    with the true atom priors also prefers the fit's partition), the exact posterior mode under
    the model that drew the data (``group_ari_mode``), the size of the smallest true
    individual cluster, and the two-stage baseline told the true number of clusters.
    """
    from sklearn.metrics import adjusted_rand_score as ari

    import nestedatoms as na
    from nestedatoms.diagnostics import same_partition

    import pandas as pd

    rows = []
    for seed in range(n_seeds):
        sim = na.simulate(random_state=seed)
        bayes_groups, bayes_cells = sim.bayes_labels()
        start = time.perf_counter()
        model = fit_nam_model(sim, seed)
        seconds = time.perf_counter() - start
        mode = sim.group_partition_posterior()
        fit_minus_truth, sim_margin, fit_minus_mode = margins_against_truth(
            model, sim, mode_labels=mode.map_labels)
        two_stage_groups, _ = fit_two_stage(sim, seed, int(sim.group_truth.max()) + 1)
        start = time.perf_counter()
        fixed = fit_nam_model(sim, seed, learn_group_prior_scale=False)
        fixed_seconds = time.perf_counter() - start
        rows.append(dict(seed=seed, group_ari=ari(sim.group_truth, model.group_labels_),
                         group_ari_bayes=ari(sim.group_truth, bayes_groups),
                         group_ari_mode=ari(sim.group_truth, mode.map_labels),
                         p_truth=np.exp(mode.log_prob_truth),
                         fit_is_mode=same_partition(model.group_labels_, mode.map_labels),
                         n_groups_found=len(np.unique(model.group_labels_)),
                         smallest_true_cluster=int(np.bincount(sim.group_truth).min()),
                         cell_ari=ari(sim.cell_truth, model.cell_labels_),
                         cell_ari_bayes=ari(sim.cell_truth, bayes_cells),
                         elbo_fit_minus_truth=fit_minus_truth,
                         elbo_fit_minus_mode=fit_minus_mode,
                         sim_prior_fit_minus_truth=sim_margin,
                         two_stage_group_ari=ari(sim.group_truth, two_stage_groups),
                         learned_width=model.group_prior_scale_,
                         donor_concentration=model.donor_concentration_,
                         fixed_width_group_ari=ari(sim.group_truth, fixed.group_labels_),
                         seconds=seconds, fixed_width_seconds=fixed_seconds))
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    with open(os.path.join(RESULTS, "toy_design.md"), "w") as fh:
        fh.write("Published toy design (J = 12, n_j = 100, 3 + 3 clusters, q = p = 5), default "
                 "fit (n_init = 3, 1 thread).  ELBOs are of CAVI run to tol = 1e-9 from hard "
                 "labels, default priors unless said.  `elbo_fit_minus_truth`: from the fit's "
                 "labels minus from the true ones (> 0: the model prefers the fit's answer).  "
                 "`elbo_fit_minus_mode`: from the fit's labels minus from the true cells and "
                 "the exact posterior mode described below (> 0: the model prefers the fit's "
                 "answer to the mode; about 0 where the fit is the mode).  "
                 "`sim_prior_fit_minus_truth`: under the simulator's atom priors "
                 "NW(0, 0.1, I, D + 5), CAVI from the true cells with the fit's individual "
                 "partition minus CAVI from the true cells with the true one (0: same "
                 "partition; > 0: NAM with the true atom priors also prefers the fit's "
                 "individual partition).  `group_ari_mode`: the exact posterior mode of the "
                 "individual partition under the model that drew the data, parameters "
                 "integrated out and the cells' true labels given "
                 "(`Simulation.group_partition_posterior`; told T, alpha0 and lam), the Bayes "
                 "answer under 0-1 loss for a method that has to learn the means and "
                 "covariances; `p_truth`: that posterior's probability of the "
                 "true partition; `fit_is_mode`: the fit returned that partition.  "
                 "`smallest_true_cluster`: individuals in the smallest true "
                 "cluster.  `two_stage_group_ari`: the two-stage baseline told T = 3.  "
                 "`learned_width`: the factor (<= 1) on the x prior's width that the default "
                 "fit learned.  `donor_concentration`: the donors' concentration the "
                 "default fit learned (inf: no variation beyond chance, NAM exactly).  "
                 "`fixed_width_group_ari`: the same fit with "
                 "`learn_group_prior_scale=False` (the x prior held as set), in "
                 "`fixed_width_seconds` (the default fit: `seconds`, the two run one after "
                 "the other in the same process).\n\n")
        fh.write(markdown_table(table))


def two_means_splits(X, groups):
    """Each true cluster of two or more individuals split in two by 2-means on x."""
    from nestedatoms.diagnostics import kmeans_labels

    rng = np.random.default_rng(0)
    T = int(groups.max()) + 1
    for t in range(T):
        idx = np.flatnonzero(groups == t)
        if idx.size < 2:
            continue
        half = kmeans_labels(X[idx], 2, rng) if idx.size > 2 else np.array([0, 1])
        split = groups.copy()
        split[idx[half == 1]] = T
        if np.unique(split).size == T + 1:
            yield split


def prior_check(n_seeds: int, variants=None):
    """At the true cells, CAVI from the true individual partition against CAVI from every merge
    of two true clusters and every 2-means split of one, under each x prior: how often does
    the truth score highest, neither merged nor over-split?"""
    import nestedatoms as na
    from nestedatoms.diagnostics import (problem_for, problem_with, same_partition,
                                         score_partition, x_prior_for)

    names = variants or PRIOR_CHECK_VARIANTS
    wins = {name: 0 for name in names}
    lines = []
    for seed in range(n_seeds):
        sim = na.simulate(random_state=seed)
        T = int(sim.group_truth.max()) + 1
        K = na.NestedAtomsModel().n_group_clusters
        overrides = x_prior_ablation_variants(sim.X, K)
        for name in names:
            # each prior as set: the width is not learned (plain CAVI below runs no move)
            prob = problem_with(
                problem_for(na.NestedAtomsModel(learn_group_prior_scale=False), sim.Y,
                            sim.groups, sim.X),
                x_prior=x_prior_for(sim.X, K, overrides[name]))

            # labels numbered by size, as elbo_from_labels numbers them (before the move to
            # studies/ this check started CAVI from the labels as given)
            def converged(groups, prob=prob, cells=sim.cell_truth):
                score = score_partition(prob, cells, groups, bound=False)
                return score.elbo, score.group_labels

            truth, truth_groups = converged(sim.group_truth)
            starts = [np.where(sim.group_truth == b, a, sim.group_truth)
                      for a, b in itertools.combinations(range(T), 2)]
            starts += list(two_means_splits(sim.X, sim.group_truth))
            # a rival start that CAVI carries back to the true partition is no rival
            rivals = [value for value, groups in map(converged, starts)
                      if not same_partition(groups, truth_groups)]
            margin = truth - max(rivals) if rivals else np.inf
            wins[name] += margin > 0
            verdict = "every rival returns to the truth" if not rivals else f"{margin:.1f}"
            lines.append(f"| {seed} | {name} | {verdict} |")
            print(lines[-1], flush=True)
    with open(os.path.join(RESULTS, "prior_check.md"), "w") as fh:
        fh.write("Published toy design, true cells fixed: converged ELBO from the true individual "
                 "partition minus the best converged ELBO from a merge of two true clusters or "
                 "a 2-means split of one on x (> 0: the truth scores highest; a start that CAVI "
                 "carries back to the true partition is left out), for each x prior "
                 "(K = 30, q = 5, nu0 = q + 5).\n\n")
        fh.write("| x prior | seeds where the truth wins |\n|---|---|\n")
        for name, count in wins.items():
            fh.write(f"| {name} | {count} / {n_seeds} |\n")
        fh.write("\n| seed | x prior | truth minus best rival (nats) |\n|---|---|---|\n")
        fh.write("\n".join(lines) + "\n")


def x_prior_ablation_variants(X, K):
    """group_prior overrides for the default-fit ablation of studies/STUDY.md section 1."""
    q = X.shape[1]
    cov = np.atleast_2d(np.cov(X, rowvar=False))
    share, nu0 = K ** (-2.0 / q), q + 5.0

    def prior(shape, factor=1.0, nu=nu0, keep_spread=True, **extra):
        out = dict(covariance_prior=(nu - q - 1) * shape * share * factor,
                   degrees_of_freedom_prior=nu,
                   mean_precision_prior=share * (factor if keep_spread else 1.0))
        out.update(extra)
        return out

    diag, iso = np.diag(np.diag(cov)), np.trace(cov) / q * np.eye(q)
    return {
        "published formula: nu0 Cov / K^(2/q), lam0 = 0.01": dict(
            covariance_prior=nu0 * cov * share, mean_precision_prior=0.01),
        "first default: full Cov, E[Sigma] = Cov / K^(2/q), lam0 = K^(-2/q)": prior(cov),
        "full Cov, x 0.5": prior(cov, 0.5),
        "isotropic (tr Cov / q) I, x 0.5": prior(iso, 0.5),
        "diagonal, x 1": prior(diag),
        "**default: diagonal, x 0.5**": {},
        "diagonal, x 0.25 (default before the group search tried x alone)": prior(diag, 0.25),
        "diagonal, x 0.125": prior(diag, 0.125),
        "default but lam0 = 1 / K^(2/q) (means spread 2x narrower)": prior(
            diag, 0.5, keep_spread=False),
        "default but nu0 = q + 3": prior(diag, 0.5, nu=q + 3.0),
        "default but nu0 = q + 15": prior(diag, 0.5, nu=q + 15.0),
        "the \"reference\" preset: NW(0, 0.01, I, q + 5)": dict(
            mean_prior=0.0, mean_precision_prior=0.01, covariance_prior=np.eye(q),
            degrees_of_freedom_prior=nu0),
        "oracle: the simulator's own NW(0, 0.1, I, q + 5)": simulator_prior(q, 0.1),
    }


# The prior check's rows (each costs up to 7 converged CAVI runs per seed).
PRIOR_CHECK_VARIANTS = (
    "published formula: nu0 Cov / K^(2/q), lam0 = 0.01",
    "first default: full Cov, E[Sigma] = Cov / K^(2/q), lam0 = K^(-2/q)",
    "diagonal, x 1",
    "**default: diagonal, x 0.5**",
    "diagonal, x 0.25 (default before the group search tried x alone)",
    "the \"reference\" preset: NW(0, 0.01, I, q + 5)",
    "oracle: the simulator's own NW(0, 0.1, I, q + 5)",
)


def prior_ablation(n_seeds: int, variants=None):
    """Default fits (n_init = 1) on the toy design under each x-prior variant, the width held
    as set (``learn_group_prior_scale=False``): this ablation chose the prior's fixed scale,
    which the learned width then only narrows."""
    from sklearn.metrics import adjusted_rand_score as ari

    import nestedatoms as na

    results = {}
    for seed in range(n_seeds):
        sim = na.simulate(random_state=seed)
        K = na.NestedAtomsModel().n_group_clusters
        for name, overrides in x_prior_ablation_variants(sim.X, K).items():
            if variants is not None and name not in variants:
                continue
            model = na.NestedAtomsModel(n_init=1, random_state=seed, n_threads=1,
                                        group_prior=overrides or None,
                                        learn_group_prior_scale=False)
            model.fit(sim.Y, sim.groups, sim.X)
            score = ari(sim.group_truth, model.group_labels_)
            results.setdefault(name, []).append(score)
            print(f"seed {seed} | {name} | {score:.3f}", flush=True)
    with open(os.path.join(RESULTS, "prior_ablation.md"), "w") as fh:
        fh.write(f"Published toy design, seeds 0-{n_seeds - 1}: default fits (n_init = 1, "
                 f"cell prior as default, `learn_group_prior_scale=False`) under each x prior; "
                 f"individual ARI.  \"x f\": "
                 f"E[Sigma] = f * shape / K^(2/q) with lam0 = f / K^(2/q), so the atom means "
                 f"keep the data's spread (K = 30, q = 5, nu0 = q + 5 unless said).\n\n"
                 f"| x prior | seeds with ARI 1 | median ARI |\n|---|---|---|\n")
        for name, scores in results.items():
            scores = np.asarray(scores)
            fh.write(f"| {name} | {int(np.sum(scores > 1 - 1e-12))} / {len(scores)} | "
                     f"{np.median(scores):.2f} |\n")


# The smoke run's data set: J = 12, T = 6, L = 3 at lam = 0.1, the grid cell the ceiling
# analyses study, with 40 cells an individual instead of 100 to keep CI short.
QUICK_CELL = ("model", 0.1, 12, 40, 6, 3)


def quick():
    """Every analysis of the study (and of study_ceiling / study_prior_scale) at its
    smallest: one data set, one replicate, one seed and one restart a fit, so that a change
    to the package that breaks a study fails CI.  The findings of such a run mean nothing."""
    import study_ceiling
    import study_prior_scale

    global N_INIT
    N_INIT = 1
    _, lam, J, n_j, T, L = QUICK_CELL
    os.makedirs(RESULTS, exist_ok=True)
    steps = [
        ("grid", lambda: run(False, 1, METHODS, cells=[QUICK_CELL])),
        ("summary", summarise),
        ("toy", lambda: toy(1)),
        ("prior check", lambda: prior_check(1, variants=PRIOR_CHECK_VARIANTS[3:4])),
        ("prior ablation", lambda: prior_ablation(1, variants=PRIOR_CHECK_VARIANTS[3:4])),
        ("misses", lambda: grid_misses(max_lam=lam, max_group_ari=1.0 + 1e-9)),
        ("ceiling", lambda: study_ceiling.ceiling(cells=[QUICK_CELL], n_rep=1)),
        ("ceiling ablation", lambda: study_ceiling.ceiling_ablation(lams=(lam,), n_j=n_j,
                                                                    n_rep=1)),
        ("ceiling priors", lambda: study_ceiling.ceiling_priors(lams=(lam,), n_js=(n_j,),
                                                                Ls=(L,), n_rep=1)),
        ("ordering check", lambda: study_ceiling.ordering_check(max_lam=lam,
                                                                only_misses=False)),
        ("prior scale EB", lambda: study_prior_scale.prior_scale_eb(
            lams=(lam,), n_j=n_j, shapes=((T, L),), n_rep=1)),
        ("unequal widths", lambda: study_prior_scale.unequal_widths(
            lams=(lam,), Js=(J,), n_j=n_j, shapes=((T, L),), n_rep=1)),
        ("width timing", lambda: study_prior_scale.width_timing(
            lams=(lam,), Js=(J,), n_j=n_j, shapes=((T, L),), n_rep=1)),
    ]
    for name, step in steps:
        start = time.perf_counter()
        step()
        print(f"## quick: {name} ran in {time.perf_counter() - start:.1f} s", flush=True)


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
    parser.add_argument("--prior-ablation", type=int, default=0, metavar="N",
                        help="only the default-fit x-prior ablation on the toy design")
    parser.add_argument("--misses", action="store_true",
                        help="refit every NAM miss of the grid at lam <= 0.1 and say whether "
                             "the model or the search is to blame")
    parser.add_argument("--ceiling", action="store_true",
                        help="only the exact posterior mode of the individual partition on "
                             "the J = 12 grid, against the methods' rows")
    parser.add_argument("--ceiling-ablation", action="store_true",
                        help="only NAM with the simulator's priors where it misses the mode")
    parser.add_argument("--ceiling-priors", action="store_true",
                        help="only the exact mode with NAM's priors swapped in (x width as set "
                             "and profiled), at J = 12, T = 6")
    parser.add_argument("--ordering-check", action="store_true",
                        help="only NAM's J = 12, T = 6 misses against the labelling gap")
    parser.add_argument("--unequal-widths", action="store_true",
                        help="only the learned x width against the fixed one on individual "
                             "clusters of unequal widths")
    parser.add_argument("--prior-scale-eb", action="store_true",
                        help="only the learned x width with its cap lifted, against the "
                             "capped and the fixed width, on the J = 12 grid")
    parser.add_argument("--width-timing", action="store_true",
                        help="only the time the learned x width costs, paired against the "
                             "fixed width on the same data sets")
    parser.add_argument("--n-j", default=None, help="comma-separated cells per individual")
    parser.add_argument("--J", default=None, help="comma-separated numbers of individuals")
    parser.add_argument("--lam", default=None, help="comma-separated separations")
    tie = parser.add_mutually_exclusive_group()
    tie.add_argument("--tied", action="store_true", help="only T = L (with --full)")
    tie.add_argument("--untied", action="store_true", help="only T != L (with --full)")
    parser.add_argument("--quick", action="store_true",
                        help="every analysis on one small data set (CI smoke run: checks that "
                             f"the study runs, not its findings), written to ${RESULTS_ENV} or "
                             "a temporary folder, never to results/")
    args = parser.parse_args(argv)
    if args.quick:
        if not os.environ.get(RESULTS_ENV):
            return rerun_in_scratch(__file__, sys.argv[1:] if argv is None else argv)
        return quick()
    if args.prior_check:
        os.makedirs(RESULTS, exist_ok=True)
        return prior_check(args.prior_check)
    if args.prior_ablation:
        os.makedirs(RESULTS, exist_ok=True)
        return prior_ablation(args.prior_ablation)
    if args.toy:
        os.makedirs(RESULTS, exist_ok=True)
        return toy(args.toy)
    if args.misses:
        return grid_misses()
    if args.ceiling or args.ceiling_ablation or args.ceiling_priors or args.ordering_check:
        import study_ceiling

        if args.ceiling:
            return study_ceiling.ceiling()
        if args.ceiling_ablation:
            return study_ceiling.ceiling_ablation()
        if args.ceiling_priors:
            if args.summarise:
                return study_ceiling.summarise_ceiling_priors()
            return study_ceiling.ceiling_priors()
        return study_ceiling.ordering_check()
    if args.unequal_widths or args.prior_scale_eb or args.width_timing:
        import study_prior_scale

        study = ("unequal_widths" if args.unequal_widths else
                 "width_timing" if args.width_timing else "prior_scale_eb")
        return getattr(study_prior_scale,
                       f"summarise_{study}" if args.summarise else study)()
    if not args.summarise:
        reps = args.reps or (10 if args.full else 3)
        def values(text, kind):
            return tuple(kind(v) for v in text.split(",")) if text else None
        ties = (True,) if args.tied else (False,) if args.untied else (True, False)
        run(args.full, reps, [m for m in args.methods.split(",") if m],
            n_js=values(args.n_j, int), Js=values(args.J, int), lams=values(args.lam, float),
            ties=ties)
    summarise()


if __name__ == "__main__":
    # run as the module study_ceiling and study_prior_scale import, not as a second copy of it
    # (__main__), so that they share its settings (N_INIT)
    import study_recovery

    sys.exit(study_recovery.main())
