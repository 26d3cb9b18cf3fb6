"""The ``nestedatoms`` command line: ``fit``, ``simulate`` and ``demo``.

  nestedatoms demo [--outdir DIR]                      simulate a cohort, fit it, report, plot
  nestedatoms simulate out.h5ad [--n-groups J ...]     write a synthetic cohort, truth included
  nestedatoms fit in.h5ad out.h5ad --group-key KEY --use-rep REP [--covariates FILE]
                                   [--summary table.tsv] [--model model.npz] [--plots DIR]
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
    g.add_argument("--n-init", type=int, default=n_init, help=f"restarts (default {n_init})")
    g.add_argument("--max-iter", type=int, default=500)
    g.add_argument("--tol", type=float, default=1e-6)
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--backend", choices=("cpp", "numpy"), default="cpp")
    g.add_argument("--threads", type=int, default=None,
                   help="threads (default: OMP_NUM_THREADS or all CPUs; -1 all, -2 all but one)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def _model_kwargs(args) -> dict:
    return dict(n_group_clusters=args.n_group_clusters, n_cell_clusters=args.n_cell_clusters,
                prior=args.prior, learn_group_prior_scale=args.learn_group_prior_scale,
                n_init=args.n_init, max_iter=args.max_iter, tol=args.tol,
                random_state=args.seed, backend=args.backend, n_threads=args.threads,
                verbose=0 if args.quiet else 1)


def _read_table(path):
    """A covariate table from CSV or TSV (by extension), first column = group label."""
    import pandas as pd

    if not os.path.exists(path):
        raise FileNotFoundError(f"covariate file {path!r} does not exist.")
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


def _plots(model, summary, outdir, coords=None):
    """Write the PNGs, or say why not (matplotlib is an optional extra)."""
    try:
        from .pl import save_all
        paths = save_all(model, outdir, coords=coords, summary=summary)
    except ImportError as exc:
        print(f"Plots skipped: {exc}")
        return []
    print("Plots written: " + ", ".join(paths))
    return paths


# ------------------------------------------------------------------------------- fit
def _fit(args) -> int:
    import pandas as pd

    from . import tl

    if not os.path.exists(args.input):
        raise FileNotFoundError(f"input file {args.input!r} does not exist.")
    model_file = None if args.model is None else model_path(args.model)
    outputs = [("output", args.output)]
    if args.summary:
        outputs.append(("--summary", args.summary))
    if model_file:
        outputs.append(("--model", model_file))
    if args.plots:
        outputs += [("--plots (folder created)", p) for p in plot_paths(args.plots)]
    check_outputs(outputs, args.force)          # before the input is even read
    adata = _read_h5ad(args.input, backed="r" if args.backed else None)
    covariates = None
    if args.covariates:
        if args.group_key not in adata.obs.columns:
            raise KeyError(f"--group-key {args.group_key!r} is not a column of obs; available: "
                           f"{list(adata.obs.columns)[:20]}.")
        covariates = _match_labels(_read_table(args.covariates),
                                   pd.unique(adata.obs[args.group_key].to_numpy()))
    elif args.covariate_columns:
        covariates = list(args.covariate_columns)
    start = time.perf_counter()
    with _interrupt_noted() as interrupted:
        _, model = tl.fit(adata, group_key=args.group_key, use_rep=args.use_rep,
                          group_covariates=covariates, key_added=args.key_added,
                          rank_genes=False if args.no_rank_genes else "auto",
                          return_model=True, **_model_kwargs(args))
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
    with atomic_path(args.output, suffix=".h5ad") as tmp:
        adata.write_h5ad(tmp)   # a backed input's X is copied across from disk
    print(f"Results written to {args.output} (obs/obsm/uns keys '{args.key_added}...').")
    if args.summary:
        sep = "," if args.summary.lower().endswith(".csv") else "\t"
        with atomic_path(args.summary) as tmp:
            summary.table().to_csv(tmp, sep=sep)
        print(f"Summary table written to {args.summary}.")
    if model_file:
        model.save(model_file)
        print(f"Model saved to {model_file} (nestedatoms.NestedAtomsModel.load reads it).")
    if args.plots:
        _plots(model, summary, args.plots)
    return 0


# ------------------------------------------------------------------------------- simulate
def _simulate(args) -> int:
    from ._simulate import simulate_cohort

    outputs = [("output", args.output)]
    if args.covariates_out:
        outputs.append(("--covariates-out", args.covariates_out))
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
          f"= group, obs x0..x{sim.X.shape[1] - 1} = group covariates, obs true_cell_cluster / "
          f"true_group_cluster and uns['truth'] = the truth.")
    if args.covariates_out:
        sep = "," if args.covariates_out.lower().endswith(".csv") else "\t"
        with atomic_path(args.covariates_out) as tmp:
            sim.covariate_table().to_csv(tmp, sep=sep)
        print(f"Group covariates written to {args.covariates_out}.")
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
        _plots(model, summary, args.outdir)
    return 0


# ------------------------------------------------------------------------------- main
def _parser():
    parser = argparse.ArgumentParser(
        prog="nestedatoms", description="Cluster individuals and their cells with the Nested "
        "Atoms Model.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2])
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
    sim.add_argument("--covariates-out", default=None,
                     help="also write the group covariates as CSV/TSV")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--force", action="store_true", help="replace existing output files")
    sim.set_defaults(func=_simulate)

    fit = sub.add_parser("fit", help="fit an .h5ad and write the results into a new .h5ad")
    fit.add_argument("input", help="input .h5ad")
    fit.add_argument("output", help="output .h5ad (the input plus the results)")
    fit.add_argument("--group-key", required=True, help="obs column of the group labels")
    fit.add_argument("--use-rep", default="X_pca", help="obsm key of the cell representation")
    cov = fit.add_mutually_exclusive_group()
    cov.add_argument("--covariates", default=None,
                     help="CSV/TSV of group covariates, first column = group label")
    cov.add_argument("--covariate-columns", nargs="+", default=None, metavar="COLUMN",
                     help="obs columns constant within each group, used as covariates")
    fit.add_argument("--key-added", default="nam")
    fit.add_argument("--summary", default=None, help="write the group-cluster table (TSV/CSV)")
    fit.add_argument("--model", default=None, help="also save the model (.npz)")
    fit.add_argument("--plots", default=None, metavar="DIR", help="write the PNG plots here")
    fit.add_argument("--backed", action="store_true",
                     help="read the input backed (its X stays on disk)")
    fit.add_argument("--no-rank-genes", action="store_true",
                     help="skip scanpy marker genes even when possible")
    fit.add_argument("--force", action="store_true",
                     help="replace existing output files (each is written beside and renamed "
                          "over the old one once complete, so even the input is safe)")
    _model_options(fit)
    fit.set_defaults(func=_fit)
    return parser


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
