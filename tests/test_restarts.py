"""Restarts that reach what an earlier restart found stop there (issue 21, item 1), and the
fit's result is what it would have been with every restart run in full: the same partitions,
and an ELBO within the fit's own tolerance (a restart stopped where an earlier one settled on
the way could have ended a few 1e-5 nats higher at the same partition, the difference between
two runs stopped by tol)."""

import numpy as np
import pytest

import nestedatoms as na
from nestedatoms import _fit
from nestedatoms._backend import get_backend
from nestedatoms._data import prepare_data
from nestedatoms.moves import DEFAULT_MOVES


def restarts(sim, stop, monkeypatch, n_init=3):
    monkeypatch.setattr(_fit, "STOP_DUPLICATE_RESTARTS", stop)
    model = na.NestedAtomsModel(random_state=0)
    prob = model._problem(prepare_data(sim.Y, sim.groups, sim.X))
    return _fit.fit_restarts(get_backend("cpp"), prob, n_init, 500, 1e-6, 0, 1,
                             moves=DEFAULT_MOVES)


def test_a_restart_that_reaches_an_earlier_partition_stops_and_changes_nothing(monkeypatch):
    sim = na.simulate(random_state=0)            # every restart ends at the same partition
    best_full, runs_full = restarts(sim, False, monkeypatch)
    best, runs = restarts(sim, True, monkeypatch)
    stopped = [r.stopped_as_duplicate for r in runs]
    assert not stopped[0] and any(stopped[1:])
    assert not any(r.stopped_as_duplicate for r in runs_full)
    for run, full in zip(runs, runs_full):
        if run.stopped_as_duplicate:
            # it stopped where the full run settled, before the costly moves ran again, and
            # never above the run that found the partition first
            assert run.converged and run.n_iter <= full.n_iter
            assert run.elbo <= runs[0].elbo and run.state is None
            assert run.timings["move:search_group_partition"] < (
                full.timings["move:search_group_partition"])
        else:
            assert run.trace == full.trace
    assert best.elbo == pytest.approx(best_full.elbo, rel=1e-6, abs=0)
    np.testing.assert_array_equal(best.state.rho.argmax(axis=1),
                                  best_full.state.rho.argmax(axis=1))
    np.testing.assert_array_equal(best.state.xi.argmax(axis=1),
                                  best_full.state.xi.argmax(axis=1))


@pytest.mark.parametrize("seed", [1, 4])
def test_the_estimator_gives_the_same_fit_either_way(seed, monkeypatch):
    sim = na.simulate(n_groups=12, cells_per_group=60, random_state=seed)
    fits = []
    for stop in (False, True):
        monkeypatch.setattr(_fit, "STOP_DUPLICATE_RESTARTS", stop)
        fits.append(na.NestedAtomsModel(random_state=seed).fit(sim.Y, sim.groups, sim.X))
    assert fits[0].elbo_ == pytest.approx(fits[1].elbo_, rel=1e-6, abs=0)
    np.testing.assert_array_equal(fits[0].cell_labels_, fits[1].cell_labels_)
    np.testing.assert_array_equal(fits[0].group_labels_, fits[1].group_labels_)


def test_the_duplicate_test_compares_partitions_not_labels():
    from nestedatoms._state import State

    finished = _fit._FinishedPartitions()
    st = State.__new__(State)
    st.rho = np.eye(3)[[0, 0, 1, 2]]
    st.xi = np.eye(4)[[3, 1, 1, 0, 2]]
    finished.add(st, -10.0)
    renamed = State.__new__(State)
    renamed.rho = np.eye(3)[[2, 2, 0, 1]]                 # same partition, other labels
    renamed.xi = np.eye(4)[[0, 2, 2, 1, 3]]
    assert finished(renamed, -10.5) and finished(renamed, -10.0)
    assert not finished(renamed, -9.0)                    # higher: let it run on
    other = State.__new__(State)
    other.rho, other.xi = np.eye(3)[[0, 1, 1, 2]], renamed.xi
    assert not finished(other, -11.0)


def test_a_settled_point_counts_for_later_restarts_only():
    """Where a restart's sweeps settled on the way (and tried the costly moves), later restarts
    stop at an ELBO no higher; the restart itself never stops there (a move that fired may bring
    it back), and an interrupted restart's settled points are not counted."""
    from nestedatoms._state import State

    finished = _fit._FinishedPartitions()
    st = State.__new__(State)
    st.rho = np.eye(3)[[0, 0, 1, 2]]
    st.xi = np.eye(4)[[3, 1, 1, 0, 2]]
    finished.passing(st, -10.0)
    assert not finished(st, -11.0)           # the running restart: not yet
    finished.run_done(completed=False)
    assert not finished(st, -11.0)           # interrupted: never
    finished.passing(st, -10.0)
    finished.run_done(completed=True)
    assert finished(st, -10.0) and not finished(st, -9.0)


def test_the_best_restart_keeps_its_xi_packed_meanwhile_and_gets_it_back_exactly(monkeypatch):
    """While later restarts run, the best one's xi is kept as its nonzero entries (issue 21:
    one N x L array in memory, not two); the fit returns it as it was, bit for bit.  Packing
    pays where clusters are well separated, so that most responsibilities are exactly 0 (the
    cell step stores those below e^-600 of a cell's largest as 0): 30 features here (on the
    published toy design's 2, xi is dense and stays an array)."""
    sim = na.simulate(n_cell_features=30, n_group_features=10, n_groups=20,
                      cells_per_group=100, random_state=0)
    model = na.NestedAtomsModel(random_state=0)
    prob = model._problem(prepare_data(sim.Y, sim.groups, sim.X))
    seen = []
    real_run = _fit.run_cavi

    def run_and_look(be, prob, st, *args, **kwargs):
        seen.append([r.state.xi for r in kept if r.state is not None])
        run = real_run(be, prob, st, *args, **kwargs)
        kept.append(run)
        finals[id(run)] = run.state.xi.copy()
        return run

    kept, finals = [], {}
    monkeypatch.setattr(_fit, "run_cavi", run_and_look)
    best, runs = _fit.fit_restarts(get_backend("cpp"), prob, 3, 500, 1e-6, 0, 1,
                                   moves=DEFAULT_MOVES)
    # each later restart ran while the best so far held a packed xi, far smaller than xi
    for held in seen[1:]:
        assert len(held) == 1
        packed = held[0]
        assert isinstance(packed, _fit._PackedXi)
        assert packed.nbytes < 0.5 * 8 * np.prod(packed.shape)
    assert isinstance(best.state.xi, np.ndarray) and best.state.xi.flags.writeable
    np.testing.assert_array_equal(best.state.xi, finals[id(best)])


def test_packing_xi_is_exact_on_any_values():
    rng = np.random.default_rng(0)
    xi = rng.random((257, 7))
    xi[xi < 0.8] = 0.0
    xi[0, 0] = 5e-324                      # the smallest subnormal is kept, not dropped
    packed = _fit._PackedXi(xi)
    np.testing.assert_array_equal(packed.unpacked(), xi)
    assert packed.unpacked().dtype == np.float64


def test_a_later_start_writes_into_an_earlier_restarts_xi_and_changes_nothing(monkeypatch):
    """A default start reuses the xi array of a restart that no longer needs it (first
    touching a fresh N x L array was most of a OneK1K restart's start); the fit is bit for
    bit the one where every start allocates its own (a buffer still held by a kept state
    would corrupt that state, and the best restart's xi with it)."""
    sim = na.simulate(random_state=3)
    model = na.NestedAtomsModel(random_state=3)
    prob = model._problem(prepare_data(sim.Y, sim.groups, sim.X))
    given = []
    real_start = _fit.initial_state

    def start(be, prob, rng, xi_buffer=None, **kw):
        given.append(xi_buffer)
        return real_start(be, prob, rng, xi_buffer=xi_buffer, **kw)

    monkeypatch.setattr(_fit, "STOP_DUPLICATE_RESTARTS", False)   # every restart runs in full
    monkeypatch.setattr(_fit, "initial_state", start)
    best, runs = _fit.fit_restarts(get_backend("cpp"), prob, 3, 500, 1e-6, 0, 1,
                                   moves=DEFAULT_MOVES)
    assert given[0] is None and any(b is not None for b in given[1:])
    monkeypatch.setattr(_fit, "_reusable_xi", lambda xi, prob: None)
    given.clear()
    fresh_best, fresh_runs = _fit.fit_restarts(get_backend("cpp"), prob, 3, 500, 1e-6, 0, 1,
                                               moves=DEFAULT_MOVES)
    assert all(b is None for b in given)
    assert [r.trace for r in runs] == [r.trace for r in fresh_runs]
    np.testing.assert_array_equal(best.state.xi, fresh_best.state.xi)
    np.testing.assert_array_equal(best.state.rho, fresh_best.state.rho)
