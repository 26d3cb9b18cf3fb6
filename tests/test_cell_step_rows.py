"""The cell step of a subset of the cells (``cell_step_rows``, the split move's local sweeps):
the core against its NumPy twin, the change it returns against the full statistics recomputed
from xi, and bitwise equality for any number of threads."""

import numpy as np
import pytest
from scipy.special import entr
from conftest import make_problem, random_state_for

from nestedatoms import reference as ref
from nestedatoms._backend import core_module


def _call(be, prob, st, rows, xi, n_threads=1, weighted=False):
    zeta = np.linspace(0.5, 1.5, prob.data.n_groups) if weighted else None
    return be.cell_step_rows(prob.Y, prob.offsets, rows, st.rho,
                             be.expected_log_stick_weights(st.u_a, st.u_b), st.my, st.lamy,
                             st.Wy, st.nuy, prob.y_centre, xi, n_threads, zeta)


def _rows(prob, seed):
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(prob.data.n_cells, size=prob.data.n_cells // 3, replace=False))


@pytest.mark.parametrize("weighted", [False, True])
def test_the_core_matches_the_numpy_twin(weighted):
    core = core_module()
    prob = make_problem("nam", seed=2, n_groups=8)
    st = random_state_for(ref, prob, seed=3)
    rows = _rows(prob, 4)
    xi_c, xi_r = st.xi.copy(), st.xi.copy()
    got = _call(core, prob, st, rows, xi_c, weighted=weighted)
    want = _call(ref, prob, st, rows, xi_r, weighted=weighted)
    np.testing.assert_allclose(xi_c, xi_r, rtol=1e-12, atol=1e-300)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("weighted", [False, True])
def test_the_change_is_the_statistics_of_the_new_xi_minus_the_old(backend, weighted):
    prob = make_problem("nam", seed=5, n_groups=8)
    st = random_state_for(ref, prob, seed=6)
    zeta = np.linspace(0.5, 1.5, prob.data.n_groups) if weighted else None
    w_cells = None if zeta is None else np.repeat(zeta, prob.data.group_sizes)

    def stats(xi):
        n, s1, s2 = ref.weighted_stats(prob.Y, xi if w_cells is None else xi * w_cells[:, None],
                                       prob.y_centre)
        per_cell = entr(xi).sum(axis=1)
        ent = float(per_cell.sum() if w_cells is None else w_cells @ per_cell)
        return np.add.reduceat(xi, prob.offsets[:-1], axis=0), n, s1, s2, ent

    rows = _rows(prob, 7)
    xi = st.xi.copy()
    old = stats(xi)
    change = _call(backend, prob, st, rows, xi, weighted=weighted)
    new = stats(xi)
    untouched = np.setdiff1d(np.arange(prob.data.n_cells), rows)
    np.testing.assert_array_equal(xi[untouched], st.xi[untouched])
    assert np.abs(xi[rows] - st.xi[rows]).max() > 0.1          # the rows did move
    for c, a, b in zip(change, new, old):
        np.testing.assert_allclose(c, np.asarray(a) - np.asarray(b), rtol=1e-9, atol=1e-8)


def test_bitwise_identical_for_any_thread_count():
    core = core_module()
    prob = make_problem("nam", seed=8, n_groups=30)
    st = random_state_for(ref, prob, seed=9)
    # enough rows for several blocks of cells and for a second thread to be used
    Y = np.repeat(prob.Y, 60, axis=0)
    sizes = np.repeat(prob.data.group_sizes, 1) * 60
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    order = np.argsort(np.repeat(np.arange(prob.data.n_cells), 60), kind="stable")
    Y = np.ascontiguousarray(Y[order])
    xi0 = np.ascontiguousarray(np.repeat(st.xi, 60, axis=0)[order])
    rows = np.sort(np.random.default_rng(1).choice(Y.shape[0], Y.shape[0] // 2, replace=False))
    elog_omega = core.expected_log_stick_weights(st.u_a, st.u_b)
    out = []
    for n_threads in (1, 2):
        xi = xi0.copy()
        res = core.cell_step_rows(Y, offsets, rows, st.rho, elog_omega, st.my, st.lamy, st.Wy,
                                  st.nuy, prob.y_centre, xi, n_threads)
        out.append((xi, res))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    for a, b in zip(out[0][1], out[1][1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rows,message", [
    (np.array([3, 2]), "increasing"),
    (np.array([1, 1]), "increasing"),
    (np.array([-1]), "rows must index"),
    (np.array([10 ** 9]), "rows must index"),
    (np.array([0.5]), "integer"),
])
def test_the_core_refuses_bad_rows(rows, message):
    core = core_module()
    prob = make_problem("nam", seed=0)
    st = random_state_for(ref, prob, seed=0)
    xi = st.xi.copy()
    with pytest.raises(ValueError, match=message):
        _call(core, prob, st, rows, xi)
    np.testing.assert_array_equal(xi, st.xi)          # refused before anything is written
