"""The ``nestedatoms`` command line."""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["main"]


def _demo(args) -> int:
    import numpy as np

    from . import NestedAtomsModel, simulate
    from ._metrics import adjusted_rand_index

    sim = simulate(random_state=args.seed)
    bayes_groups, bayes_cells = sim.bayes_labels()
    print(f"Simulated the published toy design: {sim.X.shape[0]} individuals, "
          f"{sim.Y.shape[0]} cells (seed {args.seed}).")
    start = time.perf_counter()
    model = NestedAtomsModel(random_state=args.seed, backend=args.backend).fit(
        sim.Y, sim.groups, sim.X)
    seconds = time.perf_counter() - start
    print(f"Fit in {seconds:.2f} s ({model.n_iter_} sweeps, backend={args.backend}), "
          f"ELBO {model.elbo_:.2f}.")
    print(f"  individuals: ARI {adjusted_rand_index(sim.group_truth, model.group_labels_):.3f} "
          f"(Bayes classifier {adjusted_rand_index(sim.group_truth, bayes_groups):.3f}), "
          f"{np.unique(model.group_labels_).size} clusters")
    print(f"  cells:       ARI {adjusted_rand_index(sim.cell_truth, model.cell_labels_):.3f} "
          f"(Bayes classifier {adjusted_rand_index(sim.cell_truth, bayes_cells):.3f}), "
          f"{np.unique(model.cell_labels_).size} clusters")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="nestedatoms", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="simulate a cohort, fit it and report recovery")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--backend", choices=("cpp", "numpy"), default="cpp")
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
