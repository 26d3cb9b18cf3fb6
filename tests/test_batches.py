"""The batch plan (model section 7): batches of whole individuals, sums in batch order."""

import copy

import numpy as np
import pytest

import nestedatoms as na
from nestedatoms._backend import get_backend
from nestedatoms._init import state_from_labels
from nestedatoms._steps import elbo, update_cells, weighted_entropy
from nestedatoms._batches import batched_entropies_of_sums, in_memory_summary, plan_batches
from nestedatoms.moves import merge_cell_atoms, moves_for
from nestedatoms._data import exact_column_means, prepare_data
from nestedatoms._state import sample_covariance


def _cohort(seed=0, n_groups=24):
    return na.simulate(n_groups=n_groups, cells_per_group=list(range(30, 30 + 5 * n_groups, 5)),
                       random_state=seed)


def test_plan_keeps_individuals_whole_and_evens_the_batches():
    sizes = np.array([5, 3, 9, 1, 4, 4, 2, 12, 1])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    plan = plan_batches(offsets, 8)
    assert plan.groups[0] == 0 and plan.groups[-1] == sizes.size
    assert np.array_equal(plan.rows, offsets[plan.groups])
    assert np.all(np.diff(plan.groups) >= 1)
    # an individual larger than the batch size is a batch of its own
    for j in np.nonzero(sizes > 8)[0]:
        assert j in plan.groups and j + 1 in plan.groups
    assert plan_batches(offsets, None).n_batches == 1
    assert plan_batches(offsets, int(offsets[-1])).n_batches == 1


def test_plan_batches_are_even_within_an_individual():
    """ceil(N / batch_size) batches, each within one individual of N / B cells: a sweep on
    workers waits for the one with the most cells (5 greedy batches on 2 workers: 3 against
    2), so the batches are as even as whole individuals allow."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(20, 200, size=500)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    n = int(offsets[-1])
    for batch_size in (n // 24 + 1, n // 5 + 1, 5000, 1234):
        plan = plan_batches(offsets, batch_size)
        B = -(-n // batch_size)
        assert plan.n_batches == B
        cells = np.diff(plan.rows)
        # each cut is at the boundary nearest k N / B: off by at most half an individual
        assert np.all(np.abs(plan.rows[1:-1] - np.arange(1, B) * n / B) <= sizes.max() / 2)
        assert np.all(np.abs(cells - n / B) <= sizes.max())


def test_dask_default_batch_size():
    from nestedatoms._batches import dask_batch_size

    assert dask_batch_size(1000) == 1000                   # one batch: read and fit in memory
    assert dask_batch_size(1_270_000) == 52917             # OneK1K: 24 batches
    assert dask_batch_size(12_700_000) == 1 << 18          # 10x: batches of at most 262144
    assert dask_batch_size(300_000) == 1 << 15             # at least 32768 cells a batch


def test_summary_by_batches_matches_the_whole():
    sim = _cohort()
    data = prepare_data(sim.Y, sim.groups)
    Y, offsets = data.Y, data.offsets
    summary = in_memory_summary(Y, plan_batches(offsets, 300))
    np.testing.assert_allclose(summary.means, exact_column_means(Y), rtol=0, atol=1e-13)
    np.testing.assert_allclose(summary.cov, sample_covariance(Y), rtol=1e-12, atol=1e-13)


def _fit(sim, batch_size, n_threads, **kw):
    params = dict(random_state=0, n_init=1, max_iter=40, tol=0)
    params.update(kw)
    return na.NestedAtomsModel(batch_size=batch_size, n_threads=n_threads, **params).fit(
        sim.Y, sim.groups, sim.X)


def _assert_same_bits(a, b):
    assert np.array_equal(a.elbo_trace_, b.elbo_trace_)
    for name in ("rho", "xi", "N_jl", "y_n", "y_s1", "y_s2", "my", "Wy", "nuy", "lamy",
                 "mx", "Wx", "u_a", "u_b", "v_a", "v_b"):
        assert np.array_equal(getattr(a.state_, name), getattr(b.state_, name)), name


@pytest.mark.parametrize("batch_size", [None, 400])
def test_same_bits_for_one_and_two_threads(batch_size):
    sim = _cohort(1)
    _assert_same_bits(_fit(sim, batch_size, 1), _fit(sim, batch_size, 2))


def test_default_plan_is_the_unbatched_fit():
    # a batch size above N is one batch: the fit is the one without the parameter, bit for bit
    sim = _cohort(2)
    _assert_same_bits(_fit(sim, None, 1), _fit(sim, sim.Y.shape[0], 1))


def test_several_batches_agree_with_one():
    """The cell step and the start, cut into batches, give the one-batch results to rounding
    (the same sums in another order)."""
    sim = _cohort(3)
    one = _fit(sim, None, 1, max_iter=3)
    prob = copy.copy(one.problem_)
    prob.batches = plan_batches(prob.offsets, 250)
    assert prob.batches.n_batches > 3
    be = get_backend("cpp")
    a, b = one.state_.copy(), one.state_.copy()
    update_cells(be, one.problem_, a)
    update_cells(be, prob, b)
    for name in ("xi", "N_jl", "y_n", "y_s1", "y_s2", "H_xi"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-12, atol=1e-12,
                                   err_msg=name)
    labels = one.state_.xi.argmax(axis=1)
    groups = one.state_.rho.argmax(axis=1)
    s1, s2 = (state_from_labels(be, p, labels, groups) for p in (one.problem_, prob))
    assert elbo(be, prob, s2) == pytest.approx(elbo(be, one.problem_, s1), rel=1e-12)


def _merged_start(seed=1):
    """Three well separated cell types, started with two of them in one atom."""
    sim = na.simulate(n_groups=30, cells_per_group=40, n_group_clusters=3, n_cell_clusters=3,
                      n_group_features=2, n_cell_features=2, lam_x=0.005, lam_y=0.005,
                      alpha0_x=1e6, random_state=seed)
    return sim, np.where(sim.cell_truth == 1, 0, sim.cell_truth)


def test_split_move_runs_on_batches(monkeypatch):
    """With several batches the schedule splits atoms by batches (``split_atoms_batched``):
    a fit started with two cell types in one atom separates them, with the split among its
    moves and a monotone trace; without the split it stays merged (the test can fail)."""
    from sklearn.metrics import adjusted_rand_score as ari

    from nestedatoms.moves import BATCHED_MOVES, split_cell_atoms_batched

    sim, start = _merged_start()
    params = dict(n_group_clusters=6, n_cell_clusters=6, n_init=1, random_state=0)

    def fit(batch_size, **kw):
        return na.NestedAtomsModel(batch_size=batch_size, **params, **kw).fit(
            sim.Y, sim.groups, sim.X, init_cell_labels=start, init_group_labels=sim.group_truth)

    many = fit(300)
    assert many.problem_.batches.n_batches == 4
    schedule = {m.name: m for m in moves_for(many.problem_)}
    assert schedule["split_cell_atoms"].attempt is split_cell_atoms_batched
    assert BATCHED_MOVES == {"split_cell_atoms": split_cell_atoms_batched}
    assert "split_cell_atoms" in {m["move"] for m in many.moves_}
    assert ari(sim.cell_truth, many.cell_labels_) == 1.0
    trace = many.elbo_trace_
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:]))
    _assert_same_bits(many, fit(300, n_threads=2))
    # the premise: without the split the batched fit keeps the two types in one atom
    no_split = tuple(m for m in moves_for(many.problem_) if m.name != "split_cell_atoms")
    monkeypatch.setattr(na._model, "moves_for", lambda prob: no_split)
    assert ari(sim.cell_truth, fit(300).cell_labels_) < 0.9


def test_batched_split_keeps_the_statistics_exact(monkeypatch):
    """The move's state is a full one: the statistics are those of its xi, and the ELBO rose;
    a proposal that does not gain leaves the state as it was, bit for bit."""
    from nestedatoms.moves import split_cell_atoms_batched

    sim, start = _merged_start(2)
    model = na.NestedAtomsModel(n_group_clusters=6, n_cell_clusters=6, batch_size=300)
    data = prepare_data(sim.Y, sim.groups, sim.X)
    prob = model._problem(data, 300, in_memory_summary(data.Y, plan_batches(data.offsets, 300)))
    be = get_backend("cpp")
    st = state_from_labels(be, prob, start[data.order], sim.group_truth)
    update_cells(be, prob, st)
    before = elbo(be, prob, st)
    assert split_cell_atoms_batched(be, prob, st)
    assert elbo(be, prob, st) > before
    n, s1, s2 = be.weighted_stats(prob.Y, st.xi, prob.y_centre)
    np.testing.assert_allclose(st.y_n, n, rtol=1e-9, atol=1e-8)
    np.testing.assert_allclose(st.y_s1, s1, rtol=1e-9, atol=1e-8)
    np.testing.assert_allclose(st.y_s2, s2, rtol=1e-9, atol=1e-8)
    np.testing.assert_allclose(st.N_jl, np.add.reduceat(st.xi, prob.offsets[:-1], axis=0),
                               rtol=1e-9, atol=1e-8)
    # at the separated optimum no split gains: every try is undone, bit for bit
    from nestedatoms.moves import split_atoms_batched

    settled, tries = st.copy(), []
    original = split_atoms_batched._try_split

    def counted(*args, **kwargs):
        tries.append(original(*args, **kwargs))
        return tries[-1]

    monkeypatch.setattr(split_atoms_batched, "_try_split", counted)
    assert not split_cell_atoms_batched(be, prob, st)
    assert len(tries) >= 3 and not any(tries)
    for name in ("xi", "rho", "N_jl", "y_n", "y_s1", "y_s2", "my", "Wy", "u_a", "v_a"):
        assert np.array_equal(getattr(st, name), getattr(settled, name)), name


def test_atom_merges_by_batch_match_the_whole():
    """The batched entropy of xi's columns (the atom merges' pass over the cells) is the
    whole-data entropy to rounding, and a merge accepted by batches is the one-batch merge."""
    sim = _cohort(6)
    one = _fit(sim, None, 1, max_iter=4)
    prob = copy.copy(one.problem_)
    prob.batches = plan_batches(prob.offsets, 250)
    be = get_backend("cpp")
    st = one.state_
    sets = [(0,), (1,), (0, 1), (0, 1, 2)]
    by_batch = batched_entropies_of_sums(be, prob, st.xi, None, sets)
    whole = [weighted_entropy(be, st.xi[:, list(c)].sum(axis=1, keepdims=True), None)
             for c in sets]
    np.testing.assert_allclose(by_batch, whole, rtol=1e-12)
    # an over-split start: both paths merge atoms and reach the same ELBO to rounding
    labels = np.arange(st.xi.shape[0]) % 8
    groups = st.rho.argmax(axis=1)
    a = state_from_labels(be, one.problem_, labels, groups)
    b = state_from_labels(be, prob, labels, groups)
    update_cells(be, one.problem_, a)
    update_cells(be, prob, b)
    assert merge_cell_atoms(be, one.problem_, a) and merge_cell_atoms(be, prob, b)
    assert elbo(be, prob, b) == pytest.approx(elbo(be, one.problem_, a), rel=1e-10)
    np.testing.assert_allclose(b.xi, a.xi, rtol=0, atol=1e-12)


def test_batched_fit_is_monotone():
    sim = _cohort(5)
    model = _fit(sim, 300, 1, max_iter=60)
    trace = model.elbo_trace_
    # moves only raise the ELBO and every block is exact coordinate ascent
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:]))
