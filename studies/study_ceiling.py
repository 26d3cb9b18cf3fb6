"""The exact posterior mode of the individual partition as the study's ceiling at J = 12, and
what separates NAM's fits from it (``studies/STUDY.md`` section 4).  Run through
``study_recovery.py`` (``--ceiling``, ``--ceiling-ablation``, ``--ceiling-priors``,
``--ordering-check``); it shares that script's grid, data and results files.
"""

from __future__ import annotations

import itertools
import os

import numpy as np

from study_recovery import (METHODS, RESULTS, RUNS_CSV, converged_elbo, fit_nam_model, grid,
                            make_data, markdown_table, simulator_prior)


CEILING_CSV = os.path.join(RESULTS, "ceiling_runs.csv")


def ceiling(cells=None, n_rep=10):
    """The ceiling on the J = 12 grid: the exact posterior mode of the individual partition
    under the model that drew the data (parameters integrated out, the cells' true labels
    given; ``Simulation.group_partition_posterior``), the Bayes answer under 0-1 loss for a
    method that has to learn the parameters, against every method's rows.

    Writes ``studies/results/ceiling_runs.csv`` (one row per data set) and
    ``studies/results/ceiling_summary.md`` (medians per grid cell beside each method's).  The
    same-composition scenario is left out: its cells are redrawn outside the model, so the
    model's posterior is not its ceiling.
    """
    from sklearn.metrics import adjusted_rand_score as ari

    import pandas as pd

    rows = []
    for scenario, lam, J, n_j, T, L in cells or grid(True, Js=(12,)):
        if scenario != "model":
            continue
        for rep in range(n_rep):
            sim, _ = make_data(scenario, lam, J, n_j, T, L, rep)
            post = sim.group_partition_posterior()
            rows.append(dict(scenario=scenario, lam=lam, J=J, n_j=n_j, T=T, L=L, rep=rep,
                             mode_ari=ari(sim.group_truth, post.map_labels),
                             p_mode=np.exp(post.log_prob_map),
                             p_truth=np.exp(post.log_prob_truth)))
    ceil = pd.DataFrame(rows)
    ceil.to_csv(CEILING_CSV, index=False)
    keys = ["scenario", "lam", "J", "n_j", "T", "L"]
    out = (ceil.assign(truth_is_mode=ceil.mode_ari > 1 - 1e-12).groupby(keys)
           .agg(reps=("rep", "nunique"), mode_ari=("mode_ari", "median"),
                truth_is_mode=("truth_is_mode", "sum"), p_truth=("p_truth", "median"))
           .reset_index())
    joined = pd.read_csv(RUNS_CSV).merge(ceil, on=keys + ["rep"])
    joined["reaches"] = joined.group_ari >= joined.mode_ari - 1e-9
    for method in METHODS:
        per_cell = (joined[joined.method == method].groupby(keys)
                    .agg(**{method: ("group_ari", "median"),
                            f"{method} reaches": ("reaches", "sum")}))
        out = out.merge(per_cell.reset_index(), on=keys, how="left")
    with open(os.path.join(RESULTS, "ceiling_summary.md"), "w") as fh:
        fh.write("J = 12 grid (scenario \"model\", 10 replicates a cell): the exact posterior "
                 "mode of the individual partition under the model that drew the data "
                 "(`python studies/study_recovery.py --ceiling`; parameters integrated out, the "
                 "cells' true labels given: it also knows T, alpha0 and lam, more than any method "
                 "is told).  `mode_ari`: "
                 "its median individual ARI; `truth_is_mode`: replicates where the truth is "
                 "the mode; `p_truth`: median posterior probability of the truth; method "
                 "columns: median individual ARI; `reaches`: replicates where the method's "
                 "ARI is at least the mode's.\n\n")
        fh.write(markdown_table(out))
    print(out.to_string(index=False))


def ceiling_ablation(lams=(0.01, 0.1), J=12, n_j=100, T=6, L=3, n_rep=10):
    """What keeps NAM from the posterior mode where it misses most (J = 12, T = 6): default
    fits (``n_init = 1``), the same with the x prior's width held as set, with the
    simulator's own atom priors for x and y (held as set: they are the truth), and with alpha
    also fixed at the simulator's alpha0_x.  Writes
    ``studies/results/ceiling_ablation.md``."""
    from sklearn.metrics import adjusted_rand_score as ari

    import nestedatoms as na

    import pandas as pd

    rows = []
    for lam, rep in itertools.product(lams, range(n_rep)):
        sim, seed = make_data("model", lam, J, n_j, T, L, rep)
        true_atoms = dict(group_prior=simulator_prior(sim.X.shape[1], lam),
                          cell_prior=simulator_prior(sim.Y.shape[1], lam),
                          learn_group_prior_scale=False)
        variants = {"default": {}, "fixed x width": dict(learn_group_prior_scale=False),
                    "true atom priors": true_atoms,
                    "true atom priors, alpha = alpha0_x": dict(
                        true_atoms, group_concentration=sim.alpha0_x)}
        row = dict(lam=lam, rep=rep, mode=ari(sim.group_truth,
                                              sim.group_partition_posterior().map_labels))
        for name, kwargs in variants.items():
            model = na.NestedAtomsModel(n_init=1, random_state=seed, n_threads=1, **kwargs)
            model.fit(sim.Y, sim.groups, sim.X)
            row[name] = ari(sim.group_truth, model.group_labels_)
        rows.append(row)
        print(row, flush=True)
    table = pd.DataFrame(rows)
    with open(os.path.join(RESULTS, "ceiling_ablation.md"), "w") as fh:
        fh.write(f"J = {J}, n_j = {n_j}, T = {T}, L = {L} (`python studies/study_recovery.py "
                 f"--ceiling-ablation`): individual ARI of the posterior mode under the model "
                 f"that drew the data (`mode`; told T, alpha0, lam and the cells' true "
                 f"labels) and of NAM fits (`n_init = 1`) with the default "
                 f"priors (the x prior's width learned), with the x prior's width held as set "
                 f"(`fixed x width`), with the simulator's atom priors NW(0, lam, I, D + 5) for "
                 f"x and y (held as set), and with alpha also fixed at alpha0_x = 25.\n\n")
        fh.write(markdown_table(table))
        fh.write("\nReplicates with ARI 1, per lam: "
                 + "; ".join(f"lam = {lam}: " + ", ".join(
                     f"{name} {int((part[name] > 1 - 1e-12).sum())}"
                     for name in table.columns[2:])
                     for lam, part in table.groupby("lam")) + ".\n")
    print(table.to_string(index=False))


def ceiling_priors(lams=(0.01, 0.1), J=12, T=6, n_js=(100, 1000), Ls=(3, 6), n_rep=10):
    """Which of NAM's priors moves the exact posterior mode off the truth where NAM misses
    (J = 12, T = 6): the mode with NAM's partition, composition and x priors swapped in for the
    generating model's, one at a time and all together
    (``nestedatoms.diagnostics.modes_with_nam_priors``), beside NAM's default fits from the
    runs CSV.  Writes ``studies/results/ceiling_priors.md`` and ``ceiling_priors_runs.csv``."""
    from sklearn.metrics import adjusted_rand_score as ari

    import nestedatoms as na
    from nestedatoms.diagnostics import modes_with_nam_priors, x_prior_for

    import pandas as pd

    K = na.NestedAtomsModel().n_group_clusters
    rows = []
    for lam, n_j, L, rep in itertools.product(lams, n_js, Ls, range(n_rep)):
        sim, _ = make_data("model", lam, J, n_j, T, L, rep)
        nam_x = x_prior_for(sim.X, K)
        modes = modes_with_nam_priors(sim, nam_x, profile_group_prior_scale=True)
        rows.append(dict(lam=lam, n_j=n_j, L=L, rep=rep,
                         **{name: ari(sim.group_truth, post.map_labels)
                            for name, post in modes.items()},
                         **{PROFILED_WIDTH: modes[PROFILED].group_prior_scale}))
        print(rows[-1], flush=True)
    pd.DataFrame(rows).to_csv(CEILING_PRIORS_CSV, index=False)
    summarise_ceiling_priors(J, T)


CEILING_PRIORS_CSV = os.path.join(RESULTS, "ceiling_priors_runs.csv")
PROFILED = "all three NAM priors, x width profiled"
PROFILED_WIDTH = "profiled x width"


def summarise_ceiling_priors(J=12, T=6):
    """``studies/results/ceiling_priors.md`` from ``ceiling_priors_runs.csv`` and the runs CSV."""
    import pandas as pd

    table = pd.read_csv(CEILING_PRIORS_CSV)
    keys = ["lam", "n_j", "L"]
    names = [c for c in table.columns if c not in keys + ["rep", PROFILED_WIDTH]]
    runs = pd.read_csv(RUNS_CSV)
    runs = runs[(runs.scenario == "model") & (runs.J == J) & (runs["T"] == T)]
    # each fit beside the exact mode of (nearly) its own model: NAM's priors, true cells; the
    # default learns the x width, so its mode profiles the width; the fixed-width fit's holds it
    fits = {"NAM fit": ("NAM", PROFILED),
            "NAM fit, fixed x width": ("NAM fixed x width", "all three NAM priors")}
    joined = table
    for column, (method, _) in fits.items():
        part = runs[runs.method == method].rename(columns={"group_ari": column})
        joined = joined.merge(part[keys + ["rep", column]], on=keys + ["rep"], how="left")
    groups = [joined[k] for k in keys]
    exact = (joined[names + list(fits)] > 1 - 1e-12).groupby(groups).sum()
    for column, (_, own) in fits.items():
        exact[f"{column} = its mode's ARI"] = ((joined[column] - joined[own]).abs()
                                               < 1e-9).groupby(groups).sum()
    medians = joined.groupby(keys)[names + list(fits) + [PROFILED_WIDTH]].median()
    with open(os.path.join(RESULTS, "ceiling_priors.md"), "w") as fh:
        fh.write(f"J = {J}, T = {T} (`python studies/study_recovery.py --ceiling-priors`): the "
                 "exact posterior mode of the individual partition, the cells' true labels "
                 "given, under the generating model and with NAM's own priors swapped in "
                 "(`nestedatoms.diagnostics.modes_with_nam_priors`: a Dirichlet process with "
                 "alpha ~ "
                 "Gamma(0.1, 0.1) integrated out; stick-breaking compositions with beta at its "
                 "type-II MAP; NAM's data-scaled x prior at its width as set), and with all "
                 f"three and the x prior's width f profiled (`{PROFILED}`: the joint mode over "
                 "the partition and f on a grid of log f in [-8, 0], step 1/4, beta as under "
                 f"all three; `{PROFILED_WIDTH}`: that f), beside NAM's default fits (`NAM "
                 "fit`, the width learned) and its fits with the width held as set (`NAM fit, "
                 "fixed x width`), from the runs CSV.\n\nReplicates (of 10) whose partition is "
                 "the truth, and (last columns) where each fit has the ARI of the mode of its "
                 f"own surrogate (the default: `{PROFILED}`; the fixed width: `all three NAM "
                 "priors`):\n\n")
        fh.write(markdown_table(exact.reset_index()))
        fh.write("\nMedian individual ARI:\n\n")
        fh.write(markdown_table(medians.reset_index()))
    print(exact.to_string())
    print(medians.to_string())


def ordering_check(J=12, T=6, max_lam=0.1, only_misses=True):
    """Every default NAM miss at J = 12, T = 6, lam <= ``max_lam``, refitted: NAM's ELBO margin
    of the fit over the truth (``elbo_from_labels`` both) against the labelling gap
    (``nestedatoms.diagnostics.labelling_gap``: how far the ELBO under-counts a
    partition against NAM's exchangeable Dirichlet process), truth minus fit.  Writes
    ``studies/results/ordering_check.md``.  ``only_misses=False`` takes every fit (the smoke
    run's)."""
    from sklearn.metrics import adjusted_rand_score as ari

    from nestedatoms.diagnostics import labelling_gap

    import pandas as pd

    runs = pd.read_csv(RUNS_CSV)
    missed = runs[(runs.method == "NAM") & (runs.scenario == "model") & (runs.J == J)
                  & (runs["T"] == T) & (runs.lam <= max_lam)
                  & ((runs.group_ari < 1.0) | (not only_misses))]
    exact = pd.read_csv(CEILING_PRIORS_CSV).set_index(["lam", "n_j", "L", "rep"])
    rows = []
    for r in missed.sort_values(["lam", "n_j", "L", "rep"]).itertuples(index=False):
        sim, seed = make_data("model", r.lam, J, r.n_j, T, r.L, r.rep)
        model = fit_nam_model(sim, seed)
        st = model.state_
        alpha = st.alpha_shape / st.alpha_rate
        margin = (converged_elbo(model.problem_, model.cell_labels_, model.group_labels_)
                  - converged_elbo(model.problem_, sim.cell_truth, sim.group_truth))
        gap = (labelling_gap(model, sim.cell_truth, sim.group_truth)
               - labelling_gap(model, model.cell_labels_, model.group_labels_))
        rows.append(dict(lam=r.lam, n_j=r.n_j, L=r.L, rep=r.rep,
                         group_ari=ari(sim.group_truth, model.group_labels_),
                         true_clusters=np.unique(sim.group_truth).size,
                         fit_clusters=np.unique(model.group_labels_).size,
                         E_alpha=alpha, elbo_fit_minus_truth=margin,
                         labelling_gap_truth_minus_fit=gap,
                         exact_nam_mode_is_truth=bool(
                             exact.loc[(r.lam, r.n_j, r.L, r.rep), PROFILED] > 1 - 1e-12)))
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    flips = table.labelling_gap_truth_minus_fit > table.elbo_fit_minus_truth
    fewer = table.fit_clusters < table.true_clusters
    with open(os.path.join(RESULTS, "ordering_check.md"), "w") as fh:
        fh.write(f"Every default NAM fit at J = {J}, T = {T}, lam <= {max_lam} (scenario "
                 "\"model\") whose individual ARI is below 1, refitted "
                 "(`python studies/study_recovery.py --ordering-check`).  "
                 "`elbo_fit_minus_truth`: NAM's ELBO from the fit's labels minus from the "
                 "true ones (both by `elbo_from_labels`).  `labelling_gap_truth_minus_fit`: "
                 "log p(partition) under NAM's Dirichlet process, alpha integrated under its "
                 "Gamma(0.1, 0.1) prior, minus SPEC's partition-prior ELBO terms at their "
                 "optimum for the size-sorted hard partition (q(v), q(alpha)), truth minus "
                 "fit: how much more SPEC's single-labelling objective under-counts the truth "
                 "than the fit.  `E_alpha`: the fit's.  `exact_nam_mode_is_truth`: the exact "
                 "posterior mode under all three NAM priors (a surrogate of NAM's model: "
                 "exchangeable partition prior, cells' true labels, the x prior's width "
                 "profiled as the fit learns it) is the truth (`--ceiling-priors`).\n\n")
        fh.write(f"{len(table)} misses; the fit has fewer clusters than the truth in "
                 f"{int(fewer.sum())}; the labelling gap exceeds the ELBO margin in "
                 f"{int(flips.sum())} (of which the exact NAM mode is the truth in "
                 f"{int((flips & table.exact_nam_mode_is_truth).sum())}).\n\n")
        fh.write(markdown_table(table))
    print(table.to_string(index=False))
