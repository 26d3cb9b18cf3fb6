"""learn_group_prior_scale: the width of the x prior chosen by maximising the ELBO (empirical
Bayes over one factor f <= 1, at convergence), checked against the ELBO itself, between
backends, through save/load, and on data sets where it recovers the individual clusters the
fixed-width prior merges, or where learning it too early would trap the fit.  The width is
learned by default for the default x prior ("auto"), and a prior the user chose is held as
set unless ``learn_group_prior_scale=True``."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score as ari

import nestedatoms as na
from nestedatoms._backend import get_backend
from nestedatoms._steps import (_x_bound_at_scale, _XBoundCurves, best_group_prior_scale,
                                best_group_prior_scales, elbo,
                                update_x_atoms)

from conftest import make_problem, random_state_for


def _elbo_at_scale(be, prob, st, f):
    """The full ELBO with the width fixed at f and q(theta^x) at its optimum."""
    trial = st.copy()
    trial.group_prior_scale = f
    update_x_atoms(be, prob, trial)
    return elbo(be, prob, trial)


@pytest.mark.parametrize("log_f", [-1.7, -0.4, 0.6, 2.3])
def test_closed_form_moves_with_the_elbo(backend, log_f):
    """The width search's closed form (the x part of the ELBO at the optimal q(theta^x), as
    Normal-Wishart normalisers) changes exactly as the backend's full ELBO (SPEC 6) does
    when the width changes and q(theta^x) is re-optimised, everything else held."""
    prob = make_problem("nam", seed=5, learn_group_prior_scale=True)
    st = random_state_for(backend, prob, 5)
    stats = backend.weighted_stats(prob.X, st.rho, prob.x_centre)
    expected = (_x_bound_at_scale(backend, prob, stats, log_f)
                - _x_bound_at_scale(backend, prob, stats, 0.0))
    got = _elbo_at_scale(backend, prob, st, np.exp(log_f)) - _elbo_at_scale(backend, prob, st, 1.0)
    assert got == pytest.approx(expected, abs=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_width_searchs_curve_is_the_closed_form(backend, seed):
    """The width search evaluates the closed form through one eigendecomposition per cluster
    (``_XBoundCurves``, several candidates at once); it must give each candidate's
    Normal-Wishart posterior value at every width, for soft and hard q(S) (empty clusters,
    one-member clusters with no scatter)."""
    prob = make_problem("nam", seed=seed, learn_group_prior_scale=True)
    rng = np.random.default_rng(seed)
    J = prob.data.n_groups
    rhos = [rng.dirichlet(np.full(prob.K, 0.4), size=J),
            np.eye(prob.K)[rng.integers(0, 2, J)],
            np.eye(prob.K)[np.arange(J) % prob.K]]
    curves = _XBoundCurves(prob, backend.weighted_stats(prob.X, np.hstack(rhos), prob.x_centre),
                           len(rhos))
    grid = np.array([-8.0, -2.5, -0.3, 0.0])
    on_grid = curves(np.tile(grid, (len(rhos), 1)))
    for c, rho in enumerate(rhos):
        stats = backend.weighted_stats(prob.X, np.ascontiguousarray(rho), prob.x_centre)
        for g, log_f in enumerate(grid):
            expected = _x_bound_at_scale(backend, prob, stats, log_f)
            assert on_grid[c, g] == pytest.approx(expected, rel=1e-10)
            one_each = curves(np.full(len(rhos), log_f))
            assert one_each[c] == pytest.approx(expected, rel=1e-10)


def test_widths_of_several_candidates_are_each_candidates_own(backend):
    """The group search learns the widths of all its candidates in one call; each must be
    the width learned for that candidate alone."""
    prob = make_problem("nam", seed=3, learn_group_prior_scale=True)
    rng = np.random.default_rng(3)
    J = prob.data.n_groups
    states = [random_state_for(backend, prob, s) for s in range(4)]
    states[1].rho = np.ascontiguousarray(np.eye(prob.K)[rng.integers(0, 3, J)])
    states[2].group_prior_scale = 0.01
    together = best_group_prior_scales(backend, prob, [s.rho for s in states],
                                       [s.group_prior_scale for s in states])
    for st, f in zip(states, together):
        assert f == pytest.approx(best_group_prior_scale(backend, prob, st), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learned_width_maximises_the_elbo(backend, seed):
    """The learned f beats its neighbours on a fine grid of the full ELBO (SPEC 6, computed
    by the backend, not by the closed form the search uses), within [e^-8, 1]."""
    prob = make_problem("nam", seed=seed, learn_group_prior_scale=True)
    st = random_state_for(backend, prob, seed)
    f = best_group_prior_scale(backend, prob, st)
    at = _elbo_at_scale(backend, prob, st, f)
    grid = np.exp(np.linspace(-8.0, 0.0, 161))
    best_on_grid = max(_elbo_at_scale(backend, prob, st, g) for g in grid)
    assert at >= best_on_grid - 1e-6
    for g in (f * 0.98, min(f * 1.02, 1.0)):
        assert at >= _elbo_at_scale(backend, prob, st, g) - 1e-9


def test_backends_learn_the_same_width():
    prob = make_problem("nam", seed=4, learn_group_prior_scale=True)
    scales = []
    for name in ("cpp", "numpy"):
        be = get_backend(name)
        scales.append(best_group_prior_scale(be, prob, random_state_for(be, prob, 4)))
    assert scales[0] == pytest.approx(scales[1], rel=1e-9)


def test_width_never_exceeds_the_prior_as_set():
    """Data whose clusters are broader than the prior expects: the ELBO would widen it, the
    cap keeps f = 1 exactly, and the fit equals the fixed-width fit."""
    sim = na.simulate(random_state=0, lam_x=0.1)
    wide = dict(covariance_prior=1e-3 * np.eye(sim.X.shape[1]))
    kwargs = dict(n_init=1, random_state=0, n_threads=1, group_prior=wide)
    learned = na.NestedAtomsModel(learn_group_prior_scale=True, **kwargs).fit(
        sim.Y, sim.groups, sim.X)
    fixed = na.NestedAtomsModel(learn_group_prior_scale=False, **kwargs).fit(
        sim.Y, sim.groups, sim.X)
    assert learned.group_prior_scale_ == 1.0
    assert learned.elbo_ == pytest.approx(fixed.elbo_, rel=1e-12)


def test_learned_width_recovers_tight_clusters_the_fixed_width_merges():
    """Six well-separated individual clusters among 12 individuals (lam = 0.01): the
    fixed-width prior expects clusters far broader than these and merges two of them; learning the width
    (f well below 1) recovers the truth, which the exact posterior under the model that drew
    the data also puts first."""
    sim = na.simulate(n_groups=12, cells_per_group=100, n_group_clusters=6, n_cell_clusters=3,
                      lam_x=0.01, lam_y=0.01, random_state=4007)
    assert ari(sim.group_truth, sim.group_partition_posterior().map_labels) == 1.0
    kwargs = dict(n_init=3, random_state=4007, n_threads=1)
    fixed = na.NestedAtomsModel(learn_group_prior_scale=False, **kwargs).fit(
        sim.Y, sim.groups, sim.X)
    learned = na.NestedAtomsModel(**kwargs).fit(sim.Y, sim.groups, sim.X)    # the default
    assert learned.problem_.learn_group_prior_scale      # "auto" learns it for this prior
    assert ari(sim.group_truth, fixed.group_labels_) < 1.0
    assert ari(sim.group_truth, learned.group_labels_) == 1.0
    assert learned.group_prior_scale_ < 0.5
    trace = learned.elbo_trace_
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:]))


def test_width_is_learned_from_a_converged_partition_not_from_the_start():
    """Overlapping clusters (lam = 0.5, J = 12): the start splits the individuals into
    singletons, which say nothing about the width. Learned from them, f fell to its lower
    bound, where the prior forbids every merge, and the fit ended as twelve singletons (ARI 0,
    52 nats below the fixed width). Learned at convergence, it does no worse than the fixed
    width."""
    sim = na.simulate(n_groups=12, cells_per_group=100, n_group_clusters=3, n_cell_clusters=3,
                      lam_x=0.5, lam_y=0.5, random_state=7)
    kwargs = dict(n_init=1, random_state=7, n_threads=1)
    fixed = na.NestedAtomsModel(learn_group_prior_scale=False, **kwargs).fit(
        sim.Y, sim.groups, sim.X)
    learned = na.NestedAtomsModel(learn_group_prior_scale=True, **kwargs).fit(
        sim.Y, sim.groups, sim.X)
    assert learned.elbo_ >= fixed.elbo_ - 1e-9 * abs(fixed.elbo_)
    assert ari(sim.group_truth, learned.group_labels_) >= ari(sim.group_truth,
                                                              fixed.group_labels_)
    assert len(np.unique(learned.group_labels_)) < 12


@pytest.mark.parametrize("param, saved", [(True, True), ("auto", "auto"),
                                          (np.True_, True)])   # numpy's bool: JSON has none
def test_width_survives_save_and_load(tmp_path, param, saved):
    sim = na.simulate(n_groups=12, cells_per_group=40, n_group_clusters=4, lam_x=0.01,
                      random_state=3)
    model = na.NestedAtomsModel(n_init=1, random_state=0, n_threads=1,
                                learn_group_prior_scale=param).fit(sim.Y, sim.groups, sim.X)
    assert model.group_prior_scale_ < 1.0
    model.save(tmp_path / "m.nam")
    back = na.NestedAtomsModel.load(tmp_path / "m.nam")
    assert back.group_prior_scale_ == model.group_prior_scale_
    assert back.problem_.learn_group_prior_scale
    assert back.get_params()["learn_group_prior_scale"] == saved
    assert type(back.get_params()["learn_group_prior_scale"]) is type(saved)
    from sklearn.base import clone

    clone(back).fit(sim.Y, sim.groups, sim.X)              # the reloaded parameters validate


def test_cam_and_bad_values():
    sim = na.simulate(n_groups=6, cells_per_group=30, random_state=1)
    cam = na.NestedAtomsModel(n_init=1, random_state=0, learn_group_prior_scale=True).fit(
        sim.Y, sim.groups)
    assert cam.group_prior_scale_ is None
    for bad in ("yes", "AUTO", None, 0, 1, 1.0):
        with pytest.raises(ValueError,
                           match='learn_group_prior_scale must be "auto", True or False'):
            na.NestedAtomsModel(learn_group_prior_scale=bad).fit(sim.Y, sim.groups, sim.X)


def test_a_file_saved_before_the_option_loads_with_the_prior_as_set(tmp_path):
    """Files written before learn_group_prior_scale existed have no width in their state or
    problem: they load with f = 1 and the option off, and resume as before."""
    import json

    sim = na.simulate(n_groups=8, cells_per_group=30, random_state=2)
    model = na.NestedAtomsModel(n_init=1, random_state=0, n_threads=1,
                                learn_group_prior_scale=False).fit(
        sim.Y, sim.groups, sim.X)
    model.save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as arrays:
        contents = {k: arrays[k] for k in arrays.files}
    meta = json.loads(contents["metadata.json"].tobytes())
    del meta["state_scalars"]["group_prior_scale"]
    del meta["problem"]["learn_group_prior_scale"]
    del meta["params"]["learn_group_prior_scale"]
    contents["metadata.json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "old.npz", **contents)
    old = na.NestedAtomsModel.load(tmp_path / "old.npz")
    assert old.state_.group_prior_scale == 1.0 and old.group_prior_scale_ == 1.0
    assert not old.problem_.learn_group_prior_scale and old.learn_group_prior_scale is False
    assert old.elbo_ == model.elbo_
    old.resume(n_iter=2)
    assert old.elbo_ >= model.elbo_ - 1e-9 * abs(model.elbo_)


def test_files_written_under_the_old_names_of_the_width_load_the_same(tmp_path):
    """Files written before the x prior's width took the parameter's name everywhere
    (state 'x_prior_scale', problem 'learn_x_prior_scale') load as the same model."""
    import json

    sim = na.simulate(n_groups=8, cells_per_group=30, lam_x=0.01, random_state=3)
    model = na.NestedAtomsModel(n_init=1, random_state=0, n_threads=1).fit(
        sim.Y, sim.groups, sim.X)
    assert model.problem_.learn_group_prior_scale
    model.save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as arrays:
        contents = {k: arrays[k] for k in arrays.files}
    meta = json.loads(contents["metadata.json"].tobytes())
    meta["state_scalars"]["x_prior_scale"] = meta["state_scalars"].pop("group_prior_scale")
    meta["problem"]["learn_x_prior_scale"] = meta["problem"].pop("learn_group_prior_scale")
    contents["metadata.json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "old.npz", **contents)
    old = na.NestedAtomsModel.load(tmp_path / "old.npz")
    assert old.group_prior_scale_ == model.group_prior_scale_
    assert old.problem_.learn_group_prior_scale and old.elbo_ == model.elbo_
    # both names at once is no file any release wrote
    meta["state_scalars"]["group_prior_scale"] = meta["state_scalars"]["x_prior_scale"]
    contents["metadata.json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "both.npz", **contents)
    with pytest.raises(na.ModelFileError, match="both 'x_prior_scale' and 'group_prior_scale'"):
        na.NestedAtomsModel.load(tmp_path / "both.npz")


@pytest.mark.parametrize("log_f, covariance_prior", [(2.0, 1e-3), (-9.0, 1e3)])
def test_a_width_outside_the_bounds_is_kept_unless_beaten(backend, log_f, covariance_prior):
    """A state whose f lies outside [e^-8, 1] (a hand-edited file, a study that lifted the
    cap) is not clipped into a worse value: learning the width still never lowers the ELBO."""
    from nestedatoms.moves import learn_group_prior_scale

    prob = make_problem("nam", seed=1, learn_group_prior_scale=True,
                        group_prior={"covariance_prior": covariance_prior})
    st = random_state_for(backend, prob, 1)
    st.group_prior_scale = float(np.exp(log_f))
    update_x_atoms(backend, prob, st)
    before = elbo(backend, prob, st)
    learn_group_prior_scale(backend, prob, st)
    assert elbo(backend, prob, st) >= before - 1e-9 * abs(before)


def test_a_partition_is_scored_at_its_own_width():
    """``elbo_from_labels`` (the margins of the study) scores a partition as the fit does:
    at the width that maximises its ELBO.  Checked against CAVI from the same labels at each
    width of a grid, run separately: the score is the grid's maximum, up to its spacing."""
    import dataclasses

    from nestedatoms._fit import elbo_from_labels, run_cavi
    from nestedatoms._init import relabel_by_size, state_from_labels

    sim = na.simulate(n_groups=12, cells_per_group=100, n_group_clusters=6, n_cell_clusters=3,
                      lam_x=0.01, lam_y=0.01, random_state=4007)
    prob = na.NestedAtomsModel(n_init=1, random_state=0, n_threads=1).fit(
        sim.Y, sim.groups, sim.X).problem_
    assert prob.learn_group_prior_scale
    be = get_backend("cpp")
    cells = relabel_by_size(sim.cell_truth)[prob.data.order]
    groups = relabel_by_size(sim.group_truth)
    on_grid = []
    for f in np.exp(np.linspace(-4.0, 0.0, 41)):
        st = state_from_labels(be, prob, cells, groups)
        st.group_prior_scale = f
        on_grid.append(run_cavi(be, prob, st, max_iter=1000, tol=1e-9).elbo)
    score = elbo_from_labels(be, prob, sim.cell_truth, sim.group_truth)
    assert max(on_grid) - 1e-6 * abs(score) <= score <= max(on_grid) + 0.05
    assert int(np.argmax(on_grid)) not in (0, 40)        # the best width is inside the grid
    fixed = dataclasses.replace(prob, learn_group_prior_scale=False)
    assert score > elbo_from_labels(be, fixed, sim.cell_truth, sim.group_truth) + 1.0
    assert on_grid[-1] == pytest.approx(elbo_from_labels(be, fixed, sim.cell_truth,
                                                         sim.group_truth), rel=1e-9)


def test_the_group_search_scores_each_candidate_at_its_own_width(backend):
    """Two true individual clusters merged, the width learned for that merged partition (too
    broad for the truth).  The search re-learns the width for each candidate, so it finds the
    truth, which scores higher at its own width; scored at the merged partition's width, as
    the search once did, no candidate beats the merge on this data set (lam = 0.01, replicate
    4 of the J = 12, n_j = 100, T = L = 6 grid cell, a search miss of studies/STUDY.md).  The
    x atoms are left optimal under the kept width, and a search from the truth then changes
    nothing, the width included."""
    from nestedatoms._data import prepare_data
    from nestedatoms._fit import run_cavi
    from nestedatoms._init import relabel_by_size, state_from_labels
    from nestedatoms.moves import move_named, search_group_partition

    sim = na.simulate(n_groups=12, cells_per_group=100, n_group_clusters=6, n_cell_clusters=6,
                      lam_x=0.01, lam_y=0.01, random_state=4007)
    truth = sim.group_truth
    merged = np.where(truth == 1, 2, truth)     # the partition the fixed width returns
    prob = na.NestedAtomsModel()._problem(prepare_data(sim.Y, sim.groups, sim.X))
    assert prob.learn_group_prior_scale
    st = state_from_labels(backend, prob, relabel_by_size(sim.cell_truth)[prob.data.order],
                           relabel_by_size(merged))
    st = run_cavi(backend, prob, st, max_iter=1000, tol=1e-9,
                  moves=(move_named("learn_group_prior_scale"),)).state
    assert ari(truth, st.rho.argmax(axis=1)) < 1.0
    merged_width, before = st.group_prior_scale, elbo(backend, prob, st)
    assert search_group_partition(backend, prob, st)
    assert ari(truth, st.rho.argmax(axis=1)) == 1.0
    assert st.group_prior_scale < 0.8 * merged_width          # kept with its own, tighter width
    after = elbo(backend, prob, st)
    assert after > before + 0.1
    consistent = st.copy()                 # q(theta^x) is already optimal under the new width
    update_x_atoms(backend, prob, consistent)
    assert elbo(backend, prob, consistent) == pytest.approx(after, rel=1e-12)

    # from the truth at its own width, the search finds nothing better and leaves every part
    # of the state, the width included, exactly as it was
    saved = st.copy()
    assert not search_group_partition(backend, prob, st)
    assert st.group_prior_scale == saved.group_prior_scale
    for name, value in vars(saved).items():
        np.testing.assert_array_equal(getattr(st, name), value, err_msg=name)


def test_auto_learns_the_width_of_the_default_prior_only():
    """"auto" (the default) refines the data-scaled default prior; a prior the user chose, the
    published "reference" preset or a ``group_prior`` override, is held exactly as set unless
    True asks for the width to be learned anyway."""
    sim = na.simulate(n_groups=12, cells_per_group=100, n_group_clusters=6, n_cell_clusters=3,
                      lam_x=0.01, lam_y=0.01, random_state=4007)
    override = {"degrees_of_freedom_prior": sim.X.shape[1] + 5.0}
    kwargs = dict(n_init=1, random_state=0, n_threads=1)

    def fit(**options):
        return na.NestedAtomsModel(**kwargs, **options).fit(sim.Y, sim.groups, sim.X)

    assert fit().learn_group_prior_scale == "auto"
    assert fit().group_prior_scale_ < 0.5                 # learned: clusters far tighter
    assert fit(group_prior={}).problem_.learn_group_prior_scale      # empty: no override
    for chosen in (dict(prior="reference"), dict(group_prior=override)):
        held = fit(**chosen)
        assert not held.problem_.learn_group_prior_scale and held.group_prior_scale_ == 1.0
        assert held.elbo_ == fit(learn_group_prior_scale=False, **chosen).elbo_
        assert fit(learn_group_prior_scale=True, **chosen).problem_.learn_group_prior_scale
    assert not fit(learn_group_prior_scale=False).problem_.learn_group_prior_scale
