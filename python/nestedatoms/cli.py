"""The ``nestedatoms`` command line: ``fit``, ``predict``, ``simulate`` and ``demo``.

  nestedatoms demo [--outdir DIR]                      simulate a cohort, fit it, report, plot
  nestedatoms simulate out.h5ad [--n-groups J ...]     write a synthetic cohort, truth included
  nestedatoms fit in.h5ad out.h5ad --group-key KEY --use-rep REP [--group-features FILE]
                                   [--summary table.tsv] [--model model.npz] [--plots DIR]
                                   [--condition-key COLUMN]
  nestedatoms predict new.h5ad model.npz out.h5ad --group-key KEY --use-rep REP
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from contextlib import contextmanager

from ._atomic import atomic_path
from ._io import model_path
from ._outputs import check_outputs
from .pl import plot_paths

__all__ = ["main"]


# ------------------------------------------------------------------------------- helpers
def _model_options(parser, n_init=3):
    g = parser.add_argument_group("model")
    g.add_argument("--n-group-clusters", type=int, default=30, metavar="K",
                   help="truncation level K for group clusters (default 30)")
    g.add_argument("--n-cell-clusters", type=int, default=30, metavar="L",
                   help="truncation level L for cell clusters (default 30)")
    g.add_argument("--prior", choices=("empirical", "reference"), default="empirical")
    g.add_argument("--learn-group-prior-scale", action=argparse.BooleanOptionalAction,
                   default="auto",
                   help="learn how narrow the individual clusters are (the x prior's width "
                        "times a factor <= 1, by maximising the ELBO); default: for the "
                        "empirical prior only; --no-learn-group-prior-scale holds the x "
                        "prior as set")
    g.add_argument("--cell-resolution", type=float, default=1.0, metavar="R",
                   help="how fine the cell clusters are: the cell prior expects clusters R "
                        "times narrower than its default (default 1; try 2-3 on 50 PCs)")
    g.add_argument("--covariance-type", choices=("full", "diag"), default="full",
                   help="the cell clusters' covariances: full (default) or diag (diagonal: "
                        "linear in the number of features, for many genes)")
    g.add_argument("--n-init", type=int, default=n_init, help=f"restarts (default {n_init})")
    g.add_argument("--max-iter", type=int, default=500)
    g.add_argument("--tol", type=float, default=1e-6)
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--backend", choices=("cpp", "numpy"), default="cpp")
    g.add_argument("--threads", type=int, default=None,
                   help="threads (default: OMP_NUM_THREADS or all CPUs; -1 all, -2 all but one)")
    g.add_argument("--batch-size", type=int, default=None, metavar="CELLS",
                   help="cells per batch of whole individuals (default: one batch in memory, "
                        "262144 with --scheduler); the same number gives the same bits in "
                        "memory and on any number of dask workers")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def _model_kwargs(args) -> dict:
    return dict(n_group_clusters=args.n_group_clusters, n_cell_clusters=args.n_cell_clusters,
                prior=args.prior, learn_group_prior_scale=args.learn_group_prior_scale,
                cell_resolution=args.cell_resolution, covariance_type=args.covariance_type,
                n_init=args.n_init, max_iter=args.max_iter, tol=args.tol,
                random_state=args.seed, backend=args.backend, n_threads=args.threads,
                batch_size=args.batch_size, verbose=0 if args.quiet else 1)


def _read_table(path):
    """A group-feature table from CSV or TSV (by extension), first column = group label."""
    import pandas as pd

    if not os.path.exists(path):
        raise FileNotFoundError(f"group-feature file {path!r} does not exist.")
    lower = path.lower()
    sep = "," if lower.endswith(".csv") or lower.endswith(".csv.gz") else "\t"
    # the labels stay text ("1.5", "01" are not numbers); _match_labels maps them to obs
    return pd.read_csv(path, sep=sep, index_col=0, converters={0: str})


def _match_labels(table, obs_labels):
    """Re-index a table read from text (labels parsed as str or int) by the obs labels."""
    lookup = {str(label): label for label in obs_labels}
    table = table.copy()
    table.index = [lookup.get(str(label), label) for label in table.index]
    return table


def _read_h5ad(path, backed=None):
    """anndata.read_h5ad, with an error that names the file (h5py's does not say which)."""
    import anndata

    try:
        return anndata.read_h5ad(path, backed=backed)
    except OSError as exc:
        first = " ".join(str(exc).split())[:200]
        raise OSError(f"cannot read {path!r} as an .h5ad file ({first}).") from None


@contextmanager
def _interrupt_noted():
    """Yield a list that is non-empty once the fit inside reported a KeyboardInterrupt
    (FitInterruptedWarning); other warnings are shown as usual."""
    from .exceptions import FitInterruptedWarning

    interrupted = []
    with warnings.catch_warnings():
        previous = warnings.showwarning
        warnings.simplefilter("always", FitInterruptedWarning)

        def show(message, category, *rest, **kwargs):
            if issubclass(category, FitInterruptedWarning):
                interrupted.append(str(message))
            else:
                previous(message, category, *rest, **kwargs)

        warnings.showwarning = show          # catch_warnings restores it on exit
        yield interrupted


def _plots(data, outdir, summary=None, basis=None):
    """Write the PNGs, or say why not (matplotlib is an optional extra)."""
    try:
        from .pl import save_all
        paths = save_all(data, outdir, summary=summary, basis=basis)
    except ImportError as exc:
        print(f"Plots skipped: {exc}")
        return []
    print("Plots written: " + ", ".join(paths))
    return paths


# ------------------------------------------------------------------------------- fit
def _deprecated_option(args, old, new, dest_old, dest_new):
    """Move a deprecated option's value to its new name, with a warning on stderr."""
    value = getattr(args, dest_old, None)
    if value is not None:
        print(f"nestedatoms {args.command}: warning: {old} is deprecated and will be removed "
              f"in the next release; use {new}.", file=sys.stderr)
        setattr(args, dest_new, value)


def _group_features_arg(args, adata):
    """The --group-features file (as a table keyed by the obs labels) or column names."""
    import pandas as pd

    _deprecated_option(args, "--covariates", "--group-features", "covariates",
                       "group_features")
    _deprecated_option(args, "--covariate-columns", "--group-feature-columns",
                       "covariate_columns", "group_feature_columns")
    if args.group_features:
        if args.group_key not in adata.obs.columns:
            raise KeyError(f"--group-key {args.group_key!r} is not a column of obs; available: "
                           f"{list(adata.obs.columns)[:20]}.")
        return _match_labels(_read_table(args.group_features),
                             pd.unique(adata.obs[args.group_key].to_numpy()))
    if args.group_feature_columns:
        return list(args.group_feature_columns)
    return None


def _check_basis(args, adata):
    """Refuse a --basis the file does not have before fitting, not after."""
    if args.plots and args.basis and args.basis not in adata.obsm:
        raise KeyError(f"--basis {args.basis!r} is not in obsm (keys: {list(adata.obsm.keys())}); "
                       f"compute it first (e.g. sc.tl.umap) or leave --basis out to use "
                       f"X_umap when present, else the first two PCs of y.")


def _summary_paths(path):
    """The group-cluster table's path and the per-donor table's next to it."""
    root, ext = os.path.splitext(path)
    return path, f"{root}_groups{ext}"


@contextmanager
def _scheduler(address):
    """A dask.distributed Client connected to ``address`` for the duration (dask's convention:
    the fit and every dask computation inside run on it), or nothing without an address."""
    if address is None:
        yield
        return
    try:
        from distributed import Client
    except ImportError:
        raise ImportError('--scheduler needs dask.distributed: pip install "nestedatoms[dask]"'
                          ) from None
    with Client(address) as client:
        print(f"Running on the dask scheduler at {client.scheduler.address} "
              f"({len(client.scheduler_info()['workers'])} workers).")
        yield


def _lazy_representation(path, key):
    """obsm[key] of an .h5ad file as a dask array that each worker reads from the file itself
    (the workers must see ``path``)."""
    import anndata
    import h5py

    f = h5py.File(path, "r")
    if key not in f.get("obsm", {}):
        return None
    dataset = f["obsm"][key]
    return anndata.experimental.read_elem_lazy(dataset, chunks=(1 << 16, dataset.shape[1]))


def _fit(args) -> int:
    if args.scheduler and args.model:
        raise ValueError("--model cannot be used with --scheduler: a model fit on dask keeps "
                         "its cells on disk and xi on the workers, and a model file holds both; "
                         "the results are written into the output .h5ad.")
    with _scheduler(args.scheduler):
        return _fit_on(args)


def _fit_on(args) -> int:
    import pandas as pd  # noqa: F401  (kept for the table helpers)

    from . import tl

    if not os.path.exists(args.input):
        raise FileNotFoundError(f"input file {args.input!r} does not exist.")
    model_file = None if args.model is None else model_path(args.model)
    outputs = [("output", args.output)]
    if args.summary:
        outputs += [("--summary", p) for p in _summary_paths(args.summary)]
    if model_file:
        outputs.append(("--model", model_file))
    if args.plots:
        outputs += [("--plots (folder created)", p) for p in plot_paths(args.plots)]
        if args.condition_key:              # save_all adds the abundance plot then
            outputs.append(("--plots (folder created)",
                            os.path.join(args.plots, "nestedatoms_abundance.png")))
    check_outputs(outputs, args.force)          # before the input is even read
    adata = _read_h5ad(args.input, backed="r" if args.backed else None)
    if args.scheduler:
        lazy = _lazy_representation(args.input, args.use_rep)
        if lazy is not None:      # else tl.fit names the missing key
            adata.obsm[args.use_rep] = lazy
    group_features = _group_features_arg(args, adata)
    _check_basis(args, adata)
    start = time.perf_counter()
    with _interrupt_noted() as interrupted:
        model = tl.fit(adata, group_key=args.group_key, use_rep=args.use_rep,
                       group_features=group_features, key_added=args.key_added,
                       rank_genes=False if args.no_rank_genes else "auto", return_model=True,
                       **_model_kwargs(args))
    seconds = time.perf_counter() - start
    if interrupted:
        # an unconverged state is no answer: nothing is written under the final names
        print(f"nestedatoms fit: interrupted after {model.n_iter_} sweep(s) of the kept run; "
              f"nothing written (the fit had not converged).", file=sys.stderr)
        return 130
    summary = model.summary()
    status = ("converged" if model.converged_
              else "NOT converged: interrupted, or raise --max-iter")
    print(f"Fit {model.problem_.data.n_cells} cells of {len(model.groups_)} groups in "
          f"{seconds:.1f} s ({model.n_iter_} sweeps, ELBO {model.elbo_:.6g}, {status}).")
    print(summary)
    if args.condition_key:
        table = tl.differential_abundance(adata, condition_key=args.condition_key,
                                          key=args.key_added, reference=args.reference)
        _print_abundance(table, args.condition_key)
    if model_file:
        # recorded, so `nestedatoms predict` and tl.predict accept the output as the reference
        adata.uns[args.key_added]["model_file"] = os.path.abspath(model_file)
    with atomic_path(args.output, suffix=".h5ad") as tmp:
        adata.write_h5ad(tmp)   # a backed input's X is copied across from disk
    print(f"Results written to {args.output} (obs/obsm/uns keys '{args.key_added}...').")
    if args.summary:
        sep = "," if args.summary.lower().endswith(".csv") else "\t"
        clusters_path, groups_path = _summary_paths(args.summary)
        with atomic_path(clusters_path) as tmp:
            summary.table().to_csv(tmp, sep=sep)
        with atomic_path(groups_path) as tmp:
            summary.groups.to_csv(tmp, sep=sep)
        print(f"Summary tables written to {clusters_path} (one row per group cluster) and "
              f"{groups_path} (each group's cluster).")
    if model_file:
        model.save(model_file)
        print(f"Model saved to {model_file} (nestedatoms.NestedAtomsModel.load reads it).")
    if args.plots:
        _plots(adata, args.plots, basis=args.basis)
    return 0


def _print_abundance(table, condition_key):
    import pandas as pd

    cols = ["condition_a", "condition_b", "cell_cluster", "mean_a", "mean_b", "difference",
            "lower", "upper", "differs"]
    print(f"\nDifferential abundance between the conditions of {condition_key!r} "
          f"(posterior from q; {int(table['differs'].sum())} of {len(table)} intervals "
          f"exclude 0):")
    with pd.option_context("display.width", 120, "display.precision", 3):
        print(table[cols].to_string(index=False))


# ------------------------------------------------------------------------------- predict
def _predict(args) -> int:
    from . import tl

    for path, what in ((args.input, "input file"), (args.model, "model file")):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{what} {path!r} does not exist.")
    outputs = [("output", args.output)]
    if args.plots:
        outputs += [("--plots (folder created)", p) for p in plot_paths(args.plots)
                    if p.endswith(("donors.png", "cells.png"))]    # what predict draws
    check_outputs(outputs, args.force)          # before the input is even read
    adata = _read_h5ad(args.input)
    group_features = _group_features_arg(args, adata)
    _check_basis(args, adata)
    model = args.model
    if model.lower().endswith(".h5ad"):      # a reference written by `fit --model`
        model = _read_h5ad(model)
    tl.predict(adata, model, group_key=args.group_key, use_rep=args.use_rep,
               group_features=group_features, key_added=args.key_added,
               reference_key=args.reference_key)
    groups = adata.uns[args.key_added]["groups"]
    print(f"Mapped {adata.n_obs} cells of {len(groups)} groups ({int((~groups['known']).sum())} "
          f"not seen in training) onto {args.model}.")
    import pandas as pd

    with pd.option_context("display.width", 120, "display.precision", 3):
        print(groups.to_string())
    with atomic_path(args.output, suffix=".h5ad") as tmp:
        adata.write_h5ad(tmp)
    print(f"Results written to {args.output} (obs/obsm/uns keys '{args.key_added}...').")
    if args.plots:
        _plots(adata, args.plots, basis=args.basis)
    return 0


# ------------------------------------------------------------------------------- simulate
def _simulate(args) -> int:
    from ._simulate import simulate_cohort

    _deprecated_option(args, "--covariates-out", "--group-features-out", "covariates_out",
                       "group_features_out")
    outputs = [("output", args.output)]
    if args.group_features_out:
        outputs.append(("--group-features-out", args.group_features_out))
    check_outputs(outputs, args.force)

    sim = simulate_cohort(n_groups=args.n_groups, median_cells=args.median_cells,
                          n_group_clusters=args.true_group_clusters,
                          n_cell_clusters=args.true_cell_clusters,
                          n_group_features=args.n_group_features,
                          n_cell_features=args.n_cell_features, lam_x=args.lam_x,
                          lam_y=args.lam_y, random_state=args.seed)
    adata = sim.to_anndata(group_key=args.group_key, use_rep=args.use_rep)
    with atomic_path(args.output, suffix=".h5ad") as tmp:
        adata.write_h5ad(tmp)
    print(f"Wrote {args.output}: {adata.n_obs} cells of {args.n_groups} groups; "
          f"obsm[{args.use_rep!r}] = y ({sim.Y.shape[1]} features), obs[{args.group_key!r}] "
          f"= group, obs x0..x{sim.X.shape[1] - 1} = group features, obs true_cell_cluster / "
          f"true_group_cluster and uns['truth'] = the truth.")
    if args.group_features_out:
        sep = "," if args.group_features_out.lower().endswith(".csv") else "\t"
        with atomic_path(args.group_features_out) as tmp:
            sim.covariate_table().to_csv(tmp, sep=sep)
        print(f"Group features written to {args.group_features_out}.")
    return 0


# ------------------------------------------------------------------------------- demo
def _demo(args) -> int:
    import numpy as np

    from . import NestedAtomsModel
    from ._metrics import adjusted_rand_index as ari
    from ._simulate import simulate_cohort

    if not args.no_plots:
        check_outputs([("--outdir (folder created)", p) for p in plot_paths(args.outdir)],
                      args.force)
    # lam_y = 1 lets the cell types overlap a little, as expression clusters do, so the
    # Bayes classifier itself is below 1 and the comparison with it means something.
    sim = simulate_cohort(n_groups=args.n_groups, median_cells=args.median_cells, lam_y=1.0,
                          random_state=args.seed)
    sizes = np.bincount(np.searchsorted(sim.group_names, sim.groups))
    T = sim.group_weights.size
    print("nestedatoms demo: a simulated cohort shaped like OneK1K (many donors, a variable "
          "number of cells each)")
    print(f"  {sim.X.shape[0]} individuals, {sim.Y.shape[0]:,} cells ({sizes.min()}-"
          f"{sizes.max()} per individual, median {int(np.median(sizes))}); x = "
          f"{sim.X.shape[1]} genotype-like PCs per individual, y = {sim.Y.shape[1]} "
          f"expression-like PCs per cell")
    print(f"  truth: {np.unique(sim.group_truth).size} individual clusters (of {T} drawn), "
          f"{np.unique(sim.cell_truth).size} cell clusters (seed {args.seed})")
    kwargs = _model_kwargs(args)
    start = time.perf_counter()
    with _interrupt_noted() as interrupted:
        model = NestedAtomsModel(**kwargs).fit(sim.Y, sim.groups, sim.X)
    seconds = time.perf_counter() - start
    if interrupted:
        print("nestedatoms demo: interrupted; nothing written.", file=sys.stderr)
        return 130
    print(f"Fit in {seconds:.1f} s: {args.n_init} restarts, {model.n_iter_} sweeps in the "
          f"kept one, ELBO {model.elbo_:.6g}, backend={args.backend}.")
    bayes_g, bayes_c = sim.bayes_labels()
    print("Recovery (adjusted Rand index; the Bayes classifier under the true parameters is "
          "the best any method can do):")
    for name, truth, found, bayes in (("individuals", sim.group_truth, model.group_labels_,
                                       bayes_g),
                                      ("cells", sim.cell_truth, model.cell_labels_, bayes_c)):
        print(f"  {name:<12} ARI vs truth {ari(truth, found):.3f} (Bayes classifier "
              f"{ari(truth, bayes):.3f}); ARI vs Bayes classifier {ari(bayes, found):.3f}; "
              f"{np.unique(found).size} clusters found, {np.unique(truth).size} true")
    summary = model.summary()
    print()
    print(summary)
    print()
    if args.no_plots:
        print("Plots skipped (--no-plots).")
    else:
        _plots(model, args.outdir, summary=summary)
    return 0


# ------------------------------------------------------------------------------- main
def _parser():
    parser = argparse.ArgumentParser(
        prog="nestedatoms", description="Cluster individuals and their cells with the Nested "
        "Atoms Model.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2])
    from . import __version__

    parser.add_argument("--version", action="version", version=f"nestedatoms {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="simulate a OneK1K-shaped cohort, fit it, report "
                          "recovery, write plots")
    demo.add_argument("--outdir", default=".", help="folder for the PNG plots (default: here)")
    demo.add_argument("--n-groups", type=int, default=400, help="individuals (default 400)")
    demo.add_argument("--median-cells", type=float, default=200,
                      help="median cells per individual (default 200)")
    demo.add_argument("--no-plots", action="store_true")
    demo.add_argument("--force", action="store_true", help="replace existing plot files")
    _model_options(demo)
    demo.set_defaults(func=_demo)

    sim = sub.add_parser("simulate", help="write a synthetic cohort as .h5ad, truth included")
    sim.add_argument("output", help="output .h5ad")
    sim.add_argument("--n-groups", type=int, default=200)
    sim.add_argument("--median-cells", type=float, default=150)
    sim.add_argument("--true-group-clusters", type=int, default=4)
    sim.add_argument("--true-cell-clusters", type=int, default=8)
    sim.add_argument("--n-group-features", type=int, default=5)
    sim.add_argument("--n-cell-features", type=int, default=10)
    sim.add_argument("--lam-x", type=float, default=0.1,
                     help="atom spread of x: smaller separates clusters more (default 0.1)")
    sim.add_argument("--lam-y", type=float, default=0.1)
    sim.add_argument("--group-key", default="donor_id")
    sim.add_argument("--use-rep", default="X_pca")
    sim.add_argument("--group-features-out", default=None,
                     help="also write the group features (x) as CSV/TSV")
    sim.add_argument("--covariates-out", default=None,
                     help="deprecated alias of --group-features-out")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--force", action="store_true", help="replace existing output files")
    sim.set_defaults(func=_simulate)

    fit = sub.add_parser("fit", help="fit an .h5ad and write the results into a new .h5ad")
    fit.add_argument("input", help="input .h5ad")
    fit.add_argument("output", help="output .h5ad (the input plus the results)")
    fit.add_argument("--group-key", required=True, help="obs column of the group labels")
    fit.add_argument("--use-rep", default="X_pca", help="obsm key of the cell representation")
    _group_feature_options(fit)
    fit.add_argument("--key-added", default="nam")
    fit.add_argument("--summary", default=None,
                     help="write the group-cluster table (TSV/CSV) and, next to it with "
                          "'_groups' added to the name, each group's cluster")
    fit.add_argument("--model", default=None, help="also save the model (.npz)")
    fit.add_argument("--plots", default=None, metavar="DIR", help="write the PNG plots here")
    fit.add_argument("--basis", default=None, metavar="OBSM_KEY",
                     help="obsm key of the 2-D cell coordinates for the plots (default: "
                          "X_umap when present, else the first two PCs of y)")
    fit.add_argument("--condition-key", default=None, metavar="COLUMN",
                     help="obs column of each donor's condition (e.g. case/control): also "
                          "compute the differential abundance between the conditions")
    fit.add_argument("--reference", default=None,
                     help="with --condition-key: the condition the others are compared with")
    fit.add_argument("--backed", action="store_true",
                     help="read the input backed (its X stays on disk)")
    fit.add_argument("--scheduler", default=None, metavar="ADDRESS",
                     help="fit on the dask.distributed scheduler at ADDRESS (e.g. "
                          "tcp://10.0.0.1:8786): the workers read obsm[use-rep] from the input "
                          "file (they must see its path; cells sorted by group), the driver "
                          "holds only per-individual state (nestedatoms[dask]; "
                          "docs/scale-out.md)")
    fit.add_argument("--no-rank-genes", action="store_true",
                     help="skip scanpy marker genes even when possible")
    fit.add_argument("--force", action="store_true",
                     help="replace existing output files (each is written beside and renamed "
                          "over the old one once complete, so even the input is safe)")
    _model_options(fit)
    fit.set_defaults(func=_fit)

    pred = sub.add_parser("predict", help="map new cells and donors onto a saved model")
    pred.add_argument("input", help="input .h5ad of the new cells")
    pred.add_argument("model", help="model file written by `nestedatoms fit --model`, or the "
                      ".h5ad that `nestedatoms fit ... --model FILE` wrote (it records FILE)")
    pred.add_argument("output", help="output .h5ad (the input plus the mapped clusters)")
    pred.add_argument("--group-key", required=True, help="obs column of the group labels")
    pred.add_argument("--use-rep", default="X_pca",
                      help="obsm key of the cell representation (as for the fit)")
    _group_feature_options(pred)
    pred.add_argument("--key-added", default="nam")
    pred.add_argument("--reference-key", default="nam",
                      help="with a reference .h5ad: the --key-added of its fit")
    pred.add_argument("--plots", default=None, metavar="DIR", help="write the cell and donor "
                      "plots here")
    pred.add_argument("--basis", default=None, metavar="OBSM_KEY",
                      help="obsm key of the 2-D cell coordinates for the plots")
    pred.add_argument("--force", action="store_true",
                      help="replace existing output files (otherwise they are refused)")
    pred.set_defaults(func=_predict)
    return parser


def _group_feature_options(parser):
    feats = parser.add_mutually_exclusive_group()
    feats.add_argument("--group-features", default=None, metavar="FILE",
                       help="CSV/TSV of the features donors are clustered by (e.g. genotype "
                            "PCs; not sex, batch or age), first column = group label")
    feats.add_argument("--group-feature-columns", nargs="+", default=None, metavar="COLUMN",
                       help="obs columns constant within each group, used as group features")
    feats.add_argument("--covariates", default=None, help="deprecated alias of "
                       "--group-features")
    feats.add_argument("--covariate-columns", nargs="+", default=None, metavar="COLUMN",
                       help="deprecated alias of --group-feature-columns")


def main(argv=None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("nestedatoms: interrupted; files being written were left as they were.",
              file=sys.stderr)
        return 130
    except (OSError, KeyError, ValueError, TypeError, ImportError, MemoryError) as exc:
        # one line, whatever the exception (h5py's messages span several)
        message = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, KeyError) and message.startswith(("'", '"')):
            message = message[1:-1]
        print(f"nestedatoms {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
