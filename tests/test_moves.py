"""Each move repairs a constructed bad start: two true clusters started merged, or one true
cluster started split, at both levels.  The truth comes from the simulator; a repair means the
partition after the move equals the true one (ARI 1) and the ELBO rose."""

import copy

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score as ari

import nestedatoms as na
from nestedatoms._data import prepare_data
from nestedatoms._init import kmeans_labels, state_from_labels
from nestedatoms.moves import (adjusted_partition_equal, agglomerate_cell_atoms, merge_cell_atoms,
                                merge_group_clusters, optimise_groups, search_group_partition,
                                split_cell_atoms)
from nestedatoms._steps import elbo


def _separated(seed=0, **kwargs):
    """Well separated clusters at both levels, so the true partition is the clear optimum."""
    args = dict(n_groups=30, cells_per_group=40, n_group_clusters=3, n_cell_clusters=3,
                n_group_features=2, n_cell_features=2, lam_x=0.005, lam_y=0.005,
                alpha0_x=1e6, random_state=seed)
    args.update(kwargs)
    sim = na.simulate(**args)
    model = na.NestedAtomsModel(n_group_clusters=6, n_cell_clusters=6)
    prob = model._problem(prepare_data(sim.Y, sim.groups, sim.X))
    return sim, prob, sim.cell_truth[prob.data.order]


def _cell_labels(st):
    return st.xi.argmax(axis=1)


def test_split_cell_atoms_separates_two_atoms_started_merged(backend):
    sim, prob, cells = _separated(seed=1)
    start = np.where(cells == 1, 0, cells)              # true atoms 0 and 1 share one label
    st = state_from_labels(backend, prob, start, sim.group_truth)
    before = elbo(backend, prob, st)
    assert split_cell_atoms(backend, prob, st)
    assert elbo(backend, prob, st) > before
    assert ari(cells, _cell_labels(st)) == 1.0
    np.testing.assert_allclose(st.y_n, st.xi.sum(axis=0), rtol=1e-9, atol=1e-8)
    np.testing.assert_allclose(
        st.N_jl, np.add.reduceat(st.xi, prob.offsets[:-1], axis=0), rtol=1e-9, atol=1e-8)
    _, s1, s2 = backend.weighted_stats(prob.Y, st.xi, prob.y_centre)
    np.testing.assert_allclose(st.y_s1, s1, rtol=1e-9, atol=1e-8)
    np.testing.assert_allclose(st.y_s2, s2, rtol=1e-9, atol=1e-8)


def test_local_cell_update_is_the_cell_step_on_those_cells(backend):
    """The split move's local update of q(M) equals the cell step on the same cells, keeps the
    cached statistics exact, and (C++ core) keeps xi sparse: no responsibility below e^-600 of
    its cell's largest and no subnormal number, which x86 processes ~100x slower.  Atoms three
    times tighter than fitted spread the log-likelihood gaps over hundreds of nats, so a plain
    exp() would leave such numbers (it did, before the update went through the cell step)."""
    from nestedatoms.moves.split_atoms import _local_cell_sweep
    from nestedatoms._steps import update_cells

    sim, prob, cells = _separated(seed=1)
    st = state_from_labels(backend, prob, cells, sim.group_truth)
    st.Wy = st.Wy * 3.0
    reference = copy.deepcopy(st)
    update_cells(backend, prob, reference)
    _local_cell_sweep(backend, prob, st, np.arange(prob.Y.shape[0]))
    np.testing.assert_allclose(st.xi, reference.xi, rtol=1e-12, atol=1e-300)
    for name in ("y_n", "y_s1", "y_s2", "N_jl"):
        np.testing.assert_allclose(getattr(st, name), getattr(reference, name), rtol=1e-9,
                                   atol=1e-8, err_msg=name)
    assert st.H_xi == pytest.approx(reference.H_xi, rel=1e-9)
    if backend.NAME == "cpp":
        assert np.all((st.xi == 0.0) | (st.xi >= np.finfo(np.float64).tiny))
        row_max = np.broadcast_to(st.xi.max(axis=1, keepdims=True), st.xi.shape)
        kept = st.xi > 0.0
        assert np.all(np.log(st.xi[kept]) - np.log(row_max[kept]) >= -600.0 - 1e-9)
        assert (st.xi == 0.0).any()       # the cut did take effect here


def test_local_cell_update_of_a_subset_keeps_the_rest_and_the_statistics(backend):
    """On a subset (groups left out, one group partly, one whole), the updated rows are the
    cell step's, every other row is untouched, and the cached statistics describe the new xi."""
    from nestedatoms.moves.split_atoms import _local_cell_sweep
    from nestedatoms._steps import update_cells

    sim, prob, cells = _separated(seed=1)
    wrong = np.random.default_rng(0).random(cells.size) < 0.2
    start = np.where(wrong, (cells + 1) % 3, cells)    # a fifth of the cells mislabelled,
    st = state_from_labels(backend, prob, start, sim.group_truth)   # so their xi moves
    reference = copy.deepcopy(st)
    update_cells(backend, prob, reference)
    off = prob.offsets
    rows = np.concatenate([np.arange(off[10], off[11], 2),            # part of group 10
                           np.arange(off[12], off[13]),               # all of group 12
                           np.arange(off[20] + 1, off[21], 3)])       # groups 0-9 absent
    untouched = np.setdiff1d(np.arange(prob.Y.shape[0]), rows)
    before = st.xi[untouched].copy()
    _local_cell_sweep(backend, prob, st, rows)
    np.testing.assert_allclose(st.xi[rows], reference.xi[rows], rtol=1e-12, atol=1e-300)
    np.testing.assert_array_equal(st.xi[untouched], before)
    assert np.abs(st.xi[rows] - _one_hot(start[rows], st.xi.shape[1])).max() > 0.5
    n, s1, s2 = backend.weighted_stats(prob.Y, st.xi, prob.y_centre)
    for name, value in (("y_n", n), ("y_s1", s1), ("y_s2", s2),
                        ("N_jl", np.add.reduceat(st.xi, off[:-1], axis=0))):
        np.testing.assert_allclose(getattr(st, name), value, rtol=1e-9, atol=1e-8,
                                   err_msg=name)
    assert st.H_xi == pytest.approx(backend.categorical_entropy(st.xi), rel=1e-9)


def _one_hot(labels, width):
    return np.eye(width)[labels]


def test_merge_cell_atoms_joins_one_atom_started_split(backend):
    sim, prob, cells = _separated(seed=2)
    rng = np.random.default_rng(0)
    start = cells.copy()
    half = (cells == 0) & (rng.random(cells.size) < 0.5)
    start[half] = 4                                      # true atom 0 cut at random in two
    st = state_from_labels(backend, prob, start, sim.group_truth)
    before = elbo(backend, prob, st)
    assert merge_cell_atoms(backend, prob, st)
    assert elbo(backend, prob, st) > before
    assert ari(cells, _cell_labels(st)) == 1.0


def test_agglomerate_cell_atoms_joins_every_piece_of_each_atom_at_once(backend):
    sim, prob, cells = _separated(seed=4, cells_per_group=100)
    rng = np.random.default_rng(0)
    start = np.empty_like(cells)
    for t in range(3):                                   # each true atom cut by k-means in 2
        idx = np.flatnonzero(cells == t)
        start[idx] = 2 * t + kmeans_labels(prob.Y[idx], 2, rng)
    st = state_from_labels(backend, prob, start, sim.group_truth)
    before = elbo(backend, prob, st)
    assert agglomerate_cell_atoms(backend, prob, st)
    assert elbo(backend, prob, st) > before
    assert ari(cells, _cell_labels(st)) == 1.0           # all three merges in one move
    np.testing.assert_allclose(st.y_n, st.xi.sum(axis=0), rtol=1e-9, atol=1e-8)
    np.testing.assert_allclose(
        st.N_jl, np.add.reduceat(st.xi, prob.offsets[:-1], axis=0), rtol=1e-9, atol=1e-8)


def test_agglomerate_cell_atoms_leaves_the_true_atoms_alone(backend):
    sim, prob, cells = _separated(seed=4, cells_per_group=100)
    st = state_from_labels(backend, prob, cells, sim.group_truth)
    before = elbo(backend, prob, st)
    assert not agglomerate_cell_atoms(backend, prob, st)
    assert elbo(backend, prob, st) == before


@pytest.mark.parametrize("move", [search_group_partition, merge_group_clusters])
def test_group_moves_join_one_group_cluster_started_split(backend, move):
    sim, prob, cells = _separated(seed=3)
    start = sim.group_truth.copy()
    members = np.nonzero(start == start[0])[0]
    start[members[::2]] = 5                              # one true cluster cut in two
    st = state_from_labels(backend, prob, cells, start)
    assert ari(sim.group_truth, st.rho.argmax(axis=1)) < 1.0
    before = elbo(backend, prob, st)
    assert move(backend, prob, st)
    assert elbo(backend, prob, st) > before
    assert ari(sim.group_truth, st.rho.argmax(axis=1)) == 1.0


def test_search_group_partition_separates_two_group_clusters_started_merged(backend):
    sim, prob, cells = _separated(seed=0)
    truth = sim.group_truth
    start = np.where(truth == truth[-1], truth[0], truth)   # two true clusters merged
    assert np.unique(start).size == 2
    st = state_from_labels(backend, prob, cells, start)
    optimise_groups(backend, prob, st)
    assert ari(truth, st.rho.argmax(axis=1)) < 1.0
    before = elbo(backend, prob, st)
    assert search_group_partition(backend, prob, st)
    assert elbo(backend, prob, st) > before
    assert ari(truth, st.rho.argmax(axis=1)) == 1.0


def test_search_group_partition_finds_clusters_that_only_x_separates(backend):
    """Two individual clusters share one composition and differ only in x.  k-means on the
    joint features (composition and x) splits by composition noise on this seed, and the
    search from one cluster stays there; the candidates from x alone find the truth."""
    sim = na.simulate(n_groups=12, cells_per_group=1000, n_group_clusters=2, n_cell_clusters=2,
                      lam_x=0.1, lam_y=0.1, random_state=10).with_shared_composition(10)
    prob = na.NestedAtomsModel()._problem(prepare_data(sim.Y, sim.groups, sim.X))
    st = state_from_labels(backend, prob, sim.cell_truth[prob.data.order],
                           np.zeros(12, dtype=int))
    optimise_groups(backend, prob, st)
    assert ari(sim.group_truth, st.rho.argmax(axis=1)) == 0.0
    before = elbo(backend, prob, st)
    assert search_group_partition(backend, prob, st)
    assert elbo(backend, prob, st) > before
    assert ari(sim.group_truth, st.rho.argmax(axis=1)) == 1.0


def test_search_group_partition_leaves_an_optimal_partition_alone(backend):
    sim, prob, cells = _separated(seed=0)
    st = state_from_labels(backend, prob, cells, sim.group_truth)
    optimise_groups(backend, prob, st)
    before = elbo(backend, prob, st)
    rho = st.rho.copy()
    assert not search_group_partition(backend, prob, st)
    assert elbo(backend, prob, st) == before
    np.testing.assert_array_equal(st.rho, rho)


def test_partition_equality_ignores_label_names():
    assert adjusted_partition_equal(np.array([0, 0, 1, 2]), np.array([5, 5, 3, 1]))
    assert not adjusted_partition_equal(np.array([0, 0, 1, 2]), np.array([5, 5, 3, 3]))
    assert not adjusted_partition_equal(np.array([0, 0, 1, 1]), np.array([5, 4, 3, 3]))


def test_partition_equality_agrees_with_a_perfect_rand_index():
    """Against an independent truth: two labelings define one partition exactly when their
    adjusted Rand index is 1 (random labelings, relabelled copies and one-point edits)."""
    rng = np.random.default_rng(0)
    for _ in range(500):
        n, k = int(rng.integers(2, 15)), int(rng.integers(1, 6))
        a = rng.integers(0, k, n)
        b = rng.permutation(10)[a]
        if rng.random() < 0.5:
            b[rng.integers(n)] = rng.integers(0, 10)
        same = ari(a, b) == pytest.approx(1.0, abs=1e-12)
        assert adjusted_partition_equal(a, b) == same


def test_costly_moves_also_run_when_a_run_stalls(backend):
    """A run that creeps without converging still gets its costly moves every _STALL_PERIOD
    sweeps (and the cheap ones every sweep); a converged run gets them at convergence."""
    from conftest import make_problem, random_state_for
    from nestedatoms._fit import _STALL_PERIOD, run_cavi

    calls = {"cheap": [], "costly": []}

    def cheap(be, prob, st, n_threads=1):
        calls["cheap"].append(len(calls["cheap"]) + 1)
        return False

    def costly(be, prob, st, n_threads=1):
        calls["costly"].append(len(calls["cheap"]))    # the sweep it ran after
        return False

    from nestedatoms.moves import AT_CONVERGENCE, EVERY_SWEEP, Move

    cheap, costly = Move("cheap", cheap, EVERY_SWEEP), Move("costly", costly, AT_CONVERGENCE)
    prob = make_problem("nam", seed=0)
    st = random_state_for(backend, prob, 0)
    n = 2 * _STALL_PERIOD + 3
    # tol far below rounding: the run never counts as converged
    result = run_cavi(backend, prob, st, max_iter=n, tol=1e-300, moves=(cheap, costly))
    assert not result.converged and result.n_iter == n
    assert calls["costly"] == [_STALL_PERIOD, 2 * _STALL_PERIOD]
    assert len(calls["cheap"]) == n

    calls = {"cheap": [], "costly": []}
    st = random_state_for(backend, prob, 0)
    result = run_cavi(backend, prob, st, max_iter=10 * _STALL_PERIOD, tol=1e-6,
                      moves=(cheap, costly))
    assert result.converged and calls["costly"][-1] == result.n_iter


def test_the_default_schedule_is_a_list_of_named_move_objects():
    from nestedatoms.moves import AT_CONVERGENCE, DEFAULT_MOVES, EVERY_SWEEP, Move, move_named

    names = [m.name for m in DEFAULT_MOVES]
    assert len(set(names)) == len(names)
    assert all(isinstance(m, Move) for m in DEFAULT_MOVES)
    # the cheap moves run every sweep, the searches at convergence, c last (see moves/__init__)
    assert {m.name for m in DEFAULT_MOVES if m.when == EVERY_SWEEP} == {
        "merge_cell_atoms", "sort_clusters"}
    assert names[-1] == "learn_donor_variation" and DEFAULT_MOVES[-1].when == AT_CONVERGENCE
    assert move_named("split_cell_atoms") is DEFAULT_MOVES[names.index("split_cell_atoms")]
    with pytest.raises(KeyError, match="default moves are"):
        move_named("teleport")
    with pytest.raises(ValueError, match="when must be one of"):
        Move("x", lambda *a: False, when="sometimes")


@pytest.mark.parametrize("seed", [0, 2])
def test_moves_told_the_elbo_decide_as_moves_that_evaluate_it(seed):
    """The fit hands the moves marked ``knows_elbo`` the ELBO it has at hand instead of their
    evaluating it again; that is the same number, so every fit is bit for bit the one whose
    moves evaluate it themselves (every restart's trace, moves log and state)."""
    import dataclasses

    from nestedatoms import _fit
    from nestedatoms._backend import get_backend
    from nestedatoms.moves import DEFAULT_MOVES

    sim = na.simulate(random_state=seed)
    model = na.NestedAtomsModel(random_state=seed)
    prob = model._problem(prepare_data(sim.Y, sim.groups, sim.X))
    told = [m for m in DEFAULT_MOVES if m.knows_elbo]
    assert {m.name for m in told} >= {"merge_cell_atoms", "split_cell_atoms",
                                      "search_group_partition"}
    evaluating = tuple(dataclasses.replace(m, knows_elbo=False) for m in DEFAULT_MOVES)
    fits = [_fit.fit_restarts(get_backend("cpp"), prob, 3, 500, 1e-6, seed, 1, moves=moves)
            for moves in (DEFAULT_MOVES, evaluating)]
    (best_a, runs_a), (best_b, runs_b) = fits
    assert [r.trace for r in runs_a] == [r.trace for r in runs_b]
    assert [r.moves for r in runs_a] == [r.moves for r in runs_b]
    assert any(m["move"] == "merge_cell_atoms" for r in runs_a for m in r.moves)
    np.testing.assert_array_equal(best_a.state.xi, best_b.state.xi)
    np.testing.assert_array_equal(best_a.state.rho, best_b.state.rho)
