"""Does the labelling-aware bound (SPEC 6b) change which partition of the individuals wins?

Three designs (docs/labelling_bound.md, "Evaluation"):

* toy:   the published toy design, simulate(random_state=s), s = 0..9;
* grid:  the grid cell where the single-labelling ELBO costs the truth,
         simulate(n_groups=12, cells_per_group=100, n_group_clusters=6, n_cell_clusters=3,
         lam_x=0.01, lam_y=0.01, random_state=r);
* donor: a cohort with donor variation, simulate(n_groups=24, cells_per_group=400,
         n_group_clusters=3, n_cell_clusters=6, n_cell_features=10, alpha0_x=1000,
         donor_concentration=100, random_state=s), fitted with X=None.

toy / grid: the default fit, then the fit's partition and the true one are both scored the
same way (hard labels -> plain CAVI sweeps to tol 1e-9, the x prior's width learned at
convergence as in a fit: ``nestedatoms.diagnostics.score_partition``) by the
single-labelling ELBO and by the labelling bound.

donor: the default fit (donor_concentration="auto"), the NAM fit (donor_concentration=inf) and
a split of the default's partition (each cluster cut in two by 2-means on the compositions);
every partition scored under the auto fit's c (the objective the default maximises) and under
NAM (c = inf), by ELBO and by bound.

    python studies/study_labelling_bound.py toy grid donor donor-held [--seeds 10] [--donor-seeds 5]
    python studies/study_labelling_bound.py --quick    # toy, toy-split, donor-held; one seed

'toy-split' / 'grid-split': the fit's partition against a split of it (q(S) held), on data
without donor variation.
'donor-held' scores each partition with q(S) held at it (the other blocks swept), as a split
move proposes it; 'donor' lets the sweeps move from it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import nestedatoms as na
from nestedatoms.diagnostics import group_features, kmeans_labels, problem_with, score_partition

adjusted_rand_index = na.adjusted_rand_index


def score(be_name, prob, cell_labels, group_labels):
    """The labelling bound (its ``elbo`` beside it) at the CAVI optimum reached from a hard
    partition, cells in the caller's order."""
    return score_partition(prob, cell_labels, group_labels, backend=be_name).bound


def score_held(be_name, prob, cell_labels, group_labels):
    """Like ``score`` but q(S) held at the hard partition (every other block swept to
    convergence): the ELBO and bound of that partition even where it is not a fixed point of
    the full sweeps (as a split move proposes it)."""
    return score_partition(prob, cell_labels, group_labels, hold_groups=True,
                           backend=be_name).bound


def sim_of(design, seed):
    if design == "toy":
        return na.simulate(random_state=seed)
    if design == "grid":
        return na.simulate(n_groups=12, cells_per_group=100, n_group_clusters=6,
                           n_cell_clusters=3, lam_x=0.01, lam_y=0.01, random_state=seed)
    return na.simulate(n_groups=24, cells_per_group=400, n_group_clusters=3, n_cell_clusters=6,
                       n_cell_features=10, alpha0_x=1000, donor_concentration=100,
                       random_state=seed)


def fitted(design, seed, be_name):
    """The design's data set for ``seed`` and the default fit of it."""
    sim = sim_of(design, seed)
    return sim, na.NestedAtomsModel(random_state=seed, backend=be_name).fit(sim.Y, sim.groups,
                                                                           sim.X)


def split_check(design, seeds, be_name="cpp"):
    """Data without donor variation: does the bound prefer a split of the fit's partition
    (each cluster cut in two by 2-means on the joint group features), q(S) held at each?"""
    print(f"\n== {design}: the fit's partition vs a split of it, q(S) held, by ELBO and bound ==")
    print("seed  m_fit m_split  dELBO(split-fit)  dBound(split-fit)  bonus fit/split")
    n_elbo = n_bound = 0
    for s in seeds:
        t0 = time.time()
        sim, model = fitted(design, s, be_name)
        prob = model.problem_
        cells = model.cell_labels_
        split_g = split_partition(model.state_.N_jl, model.group_labels_,
                                  np.random.default_rng(s), features=group_features(model))
        ra = score_held(be_name, prob, cells, model.group_labels_)
        rb = score_held(be_name, prob, cells, split_g)
        de, db = rb.elbo - ra.elbo, rb.value - ra.value
        n_elbo += de > 0
        n_bound += db > 0
        print(f"{s:4d}  {ra.n_occupied:5d} {rb.n_occupied:7d}  {de:16.3f}  {db:17.3f}  "
              f"{ra.bonus:.2f}/{rb.bonus:.2f}  ({time.time() - t0:.0f} s)", flush=True)
    print(f"{design}: the split wins by ELBO in {n_elbo}, by bound in {n_bound} of {len(seeds)}")


def truth_vs_fit(design, seeds, be_name="cpp"):
    print(f"\n== {design}: fit vs truth, scored by single ELBO and by labelling bound ==")
    print("seed  ARI   m_fit m_true  dELBO(truth-fit)  dBound(truth-fit)  bonus_fit bonus_truth"
          "  ELBO prefers / bound prefers")
    rows = []
    for s in seeds:
        t0 = time.time()
        sim, model = fitted(design, s, be_name)
        prob = model.problem_
        truth_g = np.asarray(sim.group_truth)
        truth_c = np.asarray(sim.cell_truth)
        fit_g = model.group_labels_
        fit_c = model.cell_labels_
        ari = adjusted_rand_index(truth_g, fit_g)
        if ari == 1.0:
            rf = model.labelling_bound()
            rows.append((s, ari, None))
            print(f"{s:4d}  {ari:.2f}  {rf.n_occupied:5d}   same partition; bonus of the fit "
                  f"{rf.bonus:.3f} (log m! = {rf.log_m_factorial:.3f}; {rf.n_orders} orders, "
                  f"{time.time() - t0:.0f} s)")
            continue
        rf = score(be_name, prob, fit_c, fit_g)
        rt = score(be_name, prob, truth_c, truth_g)
        d_e, d_b = rt.elbo - rf.elbo, rt.value - rf.value
        pe = "truth" if d_e > 0 else "fit"
        pb = "truth" if d_b > 0 else "fit"
        rows.append((s, ari, (d_e, d_b, rf.bonus, rt.bonus, rf.n_occupied, rt.n_occupied)))
        print(f"{s:4d}  {ari:.2f}  {rf.n_occupied:5d} {rt.n_occupied:6d}  {d_e:16.3f}  "
              f"{d_b:17.3f}  {rf.bonus:9.3f} {rt.bonus:11.3f}  {pe:>5s} / {pb:<5s}"
              f"  ({time.time() - t0:.0f} s)")
    diff = [r for r in rows if r[2] is not None]
    flips = sum(1 for r in diff if r[2][0] <= 0 < r[2][1])
    back = sum(1 for r in diff if r[2][1] <= 0 < r[2][0])
    print(f"{design}: {len(diff)} of {len(rows)} fits differ from the truth; the bound prefers "
          f"the truth where the ELBO does not in {flips}; the reverse in {back}")
    return rows


def split_partition(N_jl, labels, rng, features=None):
    """Each cluster of ``labels`` with >= 2 individuals cut in two by 2-means on the
    individuals' compositions N_jl / n_j (the over-split that donor variation invites), or on
    ``features``."""
    comp = N_jl / N_jl.sum(axis=1, keepdims=True) if features is None else features
    out = np.asarray(labels).copy()
    nxt = out.max() + 1
    for k in np.unique(labels):
        idx = np.nonzero(labels == k)[0]
        if idx.size < 2:
            continue
        sub = kmeans_labels(comp[idx], 2, rng)
        if np.unique(sub).size == 2:
            out[idx[sub == 1]] = nxt
            nxt += 1
    return out


def donor(seeds, be_name="cpp", held=False):
    scorer = score_held if held else score
    print("q(S) held at each hard partition" if held else "each partition scored from its "
          "hard labels by free CAVI sweeps")
    print("\n== donor: the auto fit's partition (robust) vs over-split ones, scored under the "
          "auto fit's c and under NAM (c = inf) ==")
    print("'split': each cluster of the auto fit cut in two by 2-means on the compositions; "
          "'nam': the partition of the NAM fit (donor_concentration=inf).")
    print("'truth': the true partition of the individuals (with the auto fit's cells).")
    print("d = alternative - auto (positive: the alternative wins)")
    for s in seeds:
        t0 = time.time()
        sim = sim_of("donor", s)
        auto = na.NestedAtomsModel(random_state=s, backend=be_name).fit(sim.Y, sim.groups)
        nam = na.NestedAtomsModel(random_state=s, backend=be_name,
                                  donor_concentration=np.inf).fit(sim.Y, sim.groups)
        c = float(auto.donor_concentration_)
        truth_g = np.asarray(sim.group_truth)
        cells_auto = auto.cell_labels_
        split_g = split_partition(auto.state_.N_jl, auto.group_labels_,
                                  np.random.default_rng(s))
        ari_auto = adjusted_rand_index(truth_g, auto.group_labels_)
        print(f"seed {s}: c_auto = {c:.1f}; ARI auto {ari_auto:.2f}, "
              f"nam {adjusted_rand_index(truth_g, nam.group_labels_):.2f}, "
              f"split {adjusted_rand_index(truth_g, split_g):.2f} ({time.time() - t0:.0f} s)")
        for name, conc in (("c_auto", c), ("NAM", np.inf)):
            prob = problem_with(auto, donor_concentration=conc)
            ra = scorer(be_name, prob, cells_auto, auto.group_labels_)
            for alt, (cells, groups) in (("nam", (nam.cell_labels_, nam.group_labels_)),
                                         ("split", (cells_auto, split_g)),
                                         ("truth", (cells_auto, truth_g))):
                rb = scorer(be_name, prob, cells, groups)
                de, db = rb.elbo - ra.elbo, rb.value - ra.value
                print(f"   under {name:6s} {alt:5s}: m {ra.n_occupied} -> {rb.n_occupied}  "
                      f"dELBO {de:9.3f}  dBound {db:9.3f}  bonus {ra.bonus:.2f} -> "
                      f"{rb.bonus:.2f}  ELBO prefers {'alt' if de > 0 else 'auto'}, bound "
                      f"prefers {'alt' if db > 0 else 'auto'}")
        print(f"   ({time.time() - t0:.0f} s)", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("designs", nargs="*", default=["toy", "grid", "donor"])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--seed-start", type=int, default=0)
    ap.add_argument("--donor-seeds", type=int, default=5)
    ap.add_argument("--backend", default="cpp")
    ap.add_argument("--quick", action="store_true",
                    help="toy, toy-split and donor-held on one seed each (CI smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.designs, args.seeds, args.donor_seeds = ["toy", "toy-split", "donor-held"], 1, 1
    for d in args.designs:
        if d in ("toy-split", "grid-split"):
            split_check(d.split("-")[0], range(args.seed_start, args.seed_start + args.seeds),
                        args.backend)
        elif d in ("donor", "donor-held"):
            donor(range(args.seed_start, args.seed_start + args.donor_seeds), args.backend,
                  held=(d == "donor-held"))
        else:
            truth_vs_fit(d, range(args.seed_start, args.seed_start + args.seeds), args.backend)


if __name__ == "__main__":
    main()
