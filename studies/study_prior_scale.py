"""Why the learned width of the x prior is capped at the prior as set, and what it does to
individual clusters of unequal widths (``NestedAtomsModel(learn_group_prior_scale=...)``,
``studies/STUDY.md`` section 1).  Run through ``study_recovery.py --prior-scale-eb`` and
``--unequal-widths``; it shares that script's grid, data and results.

The option multiplies the x prior's E[Sigma] by a factor f chosen to maximise the ELBO
(empirical Bayes), f <= 1.  This study refits the J = 12, n_j = 100 grid with the cap lifted
(f up to e^8) and sets the result beside the grid's rows for the fixed width (`NAM fixed x
width`, f = 1) and for the capped default (`NAM`), so that the cap's effect is measured, not
assumed.
"""

from __future__ import annotations

import itertools
import os

from nestedatoms.diagnostics import uncapped_group_prior_scale
from study_recovery import RESULTS, RUNS_CSV, fit_nam_model, make_data, markdown_table

# the grid's method names of the two fits this study compares with: the width held at the
# prior as set (the baseline of "better" / "worse"), and learned with the cap (the default)
FIXED, CAPPED = "NAM fixed x width", "NAM"
UNCAPPED_CSV = os.path.join(RESULTS, "prior_scale_eb_runs.csv")


def rose_fell(new, base):
    """Per data set, whether the ARI ``new`` rose / fell against ``base`` beyond rounding."""
    return new > base + 1e-9, new < base - 1e-9


def prior_scale_eb(lams=(0.01, 0.1, 0.5), J=12, n_j=100, shapes=((3, 3), (3, 6), (6, 3), (6, 6)),
                   n_rep=10):
    """Uncapped fits of the model data at J = ``J``, n_j = ``n_j`` (``prior_scale_eb_runs.csv``),
    then the summary against the grid's fixed-width and capped (default) rows."""
    from sklearn.metrics import adjusted_rand_score as ari

    import pandas as pd

    rows = []
    for lam, (T, L), rep in itertools.product(lams, shapes, range(n_rep)):
        sim, seed = make_data("model", lam, J, n_j, T, L, rep)
        with uncapped_group_prior_scale(8.0):
            model = fit_nam_model(sim, seed, learn_group_prior_scale=True)
        rows.append(dict(lam=lam, T=T, L=L, rep=rep,
                         uncapped=ari(sim.group_truth, model.group_labels_),
                         uncapped_scale=model.group_prior_scale_))
        print(rows[-1], flush=True)
    pd.DataFrame(rows).to_csv(UNCAPPED_CSV, index=False)
    summarise_prior_scale_eb(J, n_j)


def summarise_prior_scale_eb(J=12, n_j=100):
    """``prior_scale_eb.md`` from the uncapped fits and the grid's rows (rerun when the grid
    has grown: ``study_recovery.py --prior-scale-eb --summarise``)."""
    import pandas as pd

    runs = pd.read_csv(UNCAPPED_CSV)
    keys = ["lam", "T", "L", "rep"]
    grid = pd.read_csv(RUNS_CSV)
    grid = grid[(grid.scenario == "model") & (grid.J == J) & (grid.n_j == n_j)]
    for method in (FIXED, CAPPED):
        part = grid[grid.method == method][keys + ["group_ari"]]
        runs = runs.merge(part.rename(columns={"group_ari": method}), on=keys, how="left")
    columns = dict(reps=("rep", "nunique"))
    for name in (FIXED, CAPPED, "uncapped"):
        columns[name] = (name, "median")
        if name != FIXED:
            runs[f"{name} better"], runs[f"{name} worse"] = rose_fell(runs[name], runs[FIXED])
            columns[f"{name} better"] = (f"{name} better", "sum")
            columns[f"{name} worse"] = (f"{name} worse", "sum")
    columns["uncapped f median"] = ("uncapped_scale", "median")
    summary = runs.groupby(["lam", "T", "L"]).agg(**columns).reset_index()
    with open(os.path.join(RESULTS, "prior_scale_eb.md"), "w") as fh:
        fh.write(f"J = {J}, n_j = {n_j}, model data (`python studies/study_recovery.py "
                 f"--prior-scale-eb`): median individual ARI with the x prior held as set "
                 f"(`{FIXED}`, `learn_group_prior_scale=False`), of the default fit (`{CAPPED}`: "
                 f"the x prior's width times a learned f <= 1), and of the same with the cap "
                 f"lifted (`uncapped`: f up to e^8; `uncapped f median` is the f it learns). "
                 f"All `n_init = 3`; the first two are the grid's rows (`recovery_runs.csv`). "
                 f"`better` / `worse`: replicates whose individual ARI rose / fell against the "
                 f"fixed width.\n\n")
        fh.write(markdown_table(summary))
    print(summary.to_string(index=False))


UNEQUAL_CSV = os.path.join(RESULTS, "prior_scale_unequal_runs.csv")
# standard-deviation factors given to the true individual clusters in turn: 1/3, 1 and 3
# times the simulator's spread, a 81-fold range of variances
WIDTH_FACTORS = (1.0 / 3.0, 1.0, 3.0)


def with_unequal_widths(sim):
    """The simulation's individuals with each true cluster's x spread about its members' mean
    scaled by 1/3, 1 or 3 in turn (cells untouched): clusters of unequal widths, which one
    learned factor on the x prior cannot match (a single width is what the simulator draws)."""
    import types

    import numpy as np

    X = np.array(sim.X, dtype=float)
    for k in np.unique(sim.group_truth):
        members = sim.group_truth == k
        centre = X[members].mean(axis=0)
        X[members] = centre + WIDTH_FACTORS[int(k) % len(WIDTH_FACTORS)] * (X[members] - centre)
    return types.SimpleNamespace(Y=sim.Y, groups=sim.groups, X=X, group_truth=sim.group_truth,
                                 cell_truth=sim.cell_truth)


def fit_learned_and_fixed(data, seed, truth, learned_first: bool = True) -> dict:
    """The default fit (the x width learned, ``learned``) and the same with the width held as
    set (``fixed``) on one data set, one after the other: each one's individual ARI, number of
    clusters and seconds, and the learned width ``f``."""
    import time

    import numpy as np
    from sklearn.metrics import adjusted_rand_score as ari

    row = {}
    order = (("learned", "auto"), ("fixed", False))
    for name, learn in order if learned_first else order[::-1]:
        start = time.perf_counter()
        model = fit_nam_model(data, seed, learn_group_prior_scale=learn)
        row[f"{name} seconds"] = time.perf_counter() - start
        row[name] = ari(truth, model.group_labels_)
        row[f"{name} clusters"] = int(np.unique(model.group_labels_).size)
        if name == "learned":
            row["f"] = model.group_prior_scale_
    return row


def fit_pairs(lams, Js, n_j, shapes, n_rep, path, prepare=None, alternate=False) -> None:
    """``fit_learned_and_fixed`` on every model data set of the grid slice (``prepare``, if
    given, transforms each simulation first; ``alternate``: swap which fit runs first from one
    data set to the next), one row per data set written to ``path``."""
    import pandas as pd

    rows = []
    settings = itertools.product(lams, Js, shapes, range(n_rep))
    for i, (lam, J, (T, L), rep) in enumerate(settings):
        sim, seed = make_data("model", lam, J, n_j, T, L, rep)
        data = prepare(sim) if prepare else sim
        row = dict(lam=lam, J=J, n_j=n_j, T=T, L=L, rep=rep)
        row.update(fit_learned_and_fixed(data, seed, sim.group_truth,
                                         learned_first=not alternate or i % 2 == 0))
        rows.append(row)
        print(rows[-1], flush=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def unequal_widths(lams=(0.01, 0.1), Js=(12, 100), n_j=100, shapes=((3, 3), (6, 3)),
                   n_rep=5):
    """The learned width (the default) against the width held as set, on individual clusters
    of unequal widths (``with_unequal_widths``): does a width learned from the tight clusters
    split the broad ones?  Writes ``prior_scale_unequal_runs.csv`` and
    ``prior_scale_unequal.md``."""
    fit_pairs(lams, Js, n_j, shapes, n_rep, UNEQUAL_CSV, prepare=with_unequal_widths)
    summarise_unequal_widths()


def summarise_unequal_widths():
    """``prior_scale_unequal.md`` from ``prior_scale_unequal_runs.csv``."""
    import pandas as pd

    runs = pd.read_csv(UNEQUAL_CSV)
    runs["better"], runs["worse"] = rose_fell(runs.learned, runs.fixed)
    runs["more clusters"] = runs["learned clusters"] > runs["fixed clusters"]
    summary = (runs.groupby(["lam", "J", "T", "L"])
               .agg(reps=("rep", "nunique"), learned=("learned", "median"),
                    fixed=("fixed", "median"), better=("better", "sum"),
                    worse=("worse", "sum"), more_clusters=("more clusters", "sum"),
                    f_median=("f", "median"))
               .reset_index())
    with open(os.path.join(RESULTS, "prior_scale_unequal.md"), "w") as fh:
        fh.write("Individual clusters of unequal widths (`python studies/study_recovery.py "
                 "--unequal-widths`): model data (n_j = 100) whose true individual clusters "
                 "have their x spread scaled by 1/3, 1 and 3 in turn (variances over an "
                 "81-fold range; cells untouched). Median individual ARI of the default fit "
                 "(`learned`: the x prior's width learned) and of the same with the width held "
                 "as set (`fixed`), `n_init = 3`; `better` / `worse`: replicates whose ARI "
                 "rose / fell with the learned width; `more_clusters`: replicates where it "
                 "found more individual clusters; `f_median`: the width it learned.\n\n")
        fh.write(markdown_table(summary))
        fh.write(f"\nOver all {len(runs)} data sets: {int(runs.better.sum())} better, "
                 f"{int(runs.worse.sum())} worse, {int(runs['more clusters'].sum())} with more "
                 f"clusters.\n")
    print(summary.to_string(index=False))


TIMING_CSV = os.path.join(RESULTS, "prior_scale_timing_runs.csv")


def width_timing(lams=(0.01, 0.1), Js=(12, 100), n_j=100, shapes=((3, 3), (6, 3), (3, 6)),
                 n_rep=3):
    """What the learned width costs in time: the default fit and the same with the width held
    as set, back to back on each data set, their order alternating between data sets so that
    neither always runs first on a warm or a loaded machine.  The grid's time columns come from
    runs made at different times beside other work; these ratios are paired.  Writes
    ``prior_scale_timing_runs.csv`` and ``prior_scale_timing.md``."""
    fit_pairs(lams, Js, n_j, shapes, n_rep, TIMING_CSV, alternate=True)
    summarise_width_timing()


def summarise_width_timing():
    """``prior_scale_timing.md`` from ``prior_scale_timing_runs.csv``."""
    import pandas as pd

    runs = pd.read_csv(TIMING_CSV)
    runs["ratio"] = runs["learned seconds"] / runs["fixed seconds"]
    runs["better"], runs["worse"] = rose_fell(runs.learned, runs.fixed)
    summary = (runs.groupby(["lam", "J"])
               .agg(data_sets=("rep", "size"), median_ratio=("ratio", "median"),
                    max_ratio=("ratio", "max"), learned_seconds=("learned seconds", "median"),
                    fixed_seconds=("fixed seconds", "median"), f_median=("f", "median"),
                    better=("better", "sum"), worse=("worse", "sum"))
               .reset_index())
    with open(os.path.join(RESULTS, "prior_scale_timing.md"), "w") as fh:
        fh.write("The time the learned x width costs (`python studies/study_recovery.py "
                 "--width-timing`): on model data (n_j = 100; T, L = 3, 3 / 6, 3 / 3, 6; "
                 "replicates 0-2 of the grid), the default fit (width learned) and the same "
                 "with the width held as set, back to back in one process, their order "
                 "alternating; `n_init = 3`, 1 thread.  `median_ratio`, `max_ratio`: learned "
                 "time over fixed time per data set; `f_median`: the learned width; `better` / "
                 "`worse`: data sets whose individual ARI rose / fell with it.\n\n")
        fh.write(markdown_table(summary))
    print(summary.to_string(index=False))
