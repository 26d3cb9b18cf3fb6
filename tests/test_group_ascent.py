"""The group-only coordinate ascent of the group search (``group_ascent`` of either backend).

Checked against independent truths: the block-by-block ascent through ``_steps`` (the fit's own
blocks, as the search ran before it moved into the core), the ELBO of ``_steps.elbo`` (its
group-level part plus the terms the cells fix), coordinate ascent's monotonicity, the C++ core
against the NumPy twin, and bitwise equality for any number of threads.
"""

import numpy as np
import pytest
from conftest import make_problem, random_state_for

from nestedatoms import reference as ref
from nestedatoms._backend import core_module
from nestedatoms._group_ascent import (apply_group_factors, cell_level_elbo,
                                       concentration_factors, group_ascent)
from nestedatoms._steps import GLOBAL_BLOCKS, elbo, update_groups

KINDS = [("nam", False), ("nam", True), ("cam", False), ("cam", True)]


def _problem_and_state(be, kind, fixed, seed=0, **kw):
    prob = make_problem(kind, seed=seed, fixed=fixed, **kw)
    return prob, random_state_for(be, prob, seed)


def _random_rhos(prob, n, seed):
    rng = np.random.default_rng(seed)
    return [rng.dirichlet(np.ones(prob.K) * 0.5, size=prob.data.n_groups) for _ in range(n)]


def _blockwise_ascent(be, prob, st, max_iter, tol):
    """The group-only ascent written with the fit's blocks (the search's loop before the core
    ran it): a pass of the global blocks, then q(S) and the group-level blocks until rho
    settles."""
    for _, update in GLOBAL_BLOCKS:
        update(be, prob, st)
    group_level = [b for b in GLOBAL_BLOCKS if b[0] != "y_atoms"]
    for _ in range(max_iter):
        old = st.rho.copy()
        update_groups(be, prob, st)
        for _, update in group_level:
            update(be, prob, st)
        if np.max(np.abs(st.rho - old)) < tol:
            break


@pytest.mark.parametrize("kind,fixed", KINDS)
def test_the_ascent_is_the_fits_blocks_one_after_another(backend, kind, fixed):
    prob, st = _problem_and_state(ref, kind, fixed, seed=1)
    st.group_prior_scale = 0.3 if kind == "nam" else 1.0
    start = _random_rhos(prob, 1, seed=2)[0]
    st.rho = start.copy()
    expected = st.copy()
    _blockwise_ascent(ref, prob, expected, max_iter=40, tol=1e-9)
    result, = group_ascent(backend, prob, st, [start], [st.group_prior_scale],
                           [concentration_factors(st)], max_iter=40, tol=1e-9)
    got = st.copy()
    apply_group_factors(got, result)
    for name in ("rho", "v_a", "v_b", "u_a", "u_b", "mx", "lamx", "Wx", "nux"):
        if getattr(expected, name) is None:
            assert getattr(got, name) is None
            continue
        np.testing.assert_allclose(getattr(got, name), getattr(expected, name), rtol=1e-9,
                                   atol=1e-10, err_msg=name)
    for name in ("alpha_shape", "alpha_rate", "beta_shape", "beta_rate", "H_rho"):
        np.testing.assert_allclose(getattr(got, name), getattr(expected, name), rtol=1e-10,
                                   atol=1e-12)
    # the returned group-level part plus the cells' terms is the ELBO of _steps
    total = cell_level_elbo(backend, prob, got) + result["elbo"]
    np.testing.assert_allclose(total, elbo(ref, prob, expected), rtol=1e-11)


@pytest.mark.parametrize("kind,fixed", KINDS)
def test_the_core_matches_the_numpy_twin(kind, fixed):
    core = core_module()
    prob, st = _problem_and_state(ref, kind, fixed, seed=3, K=5, L=6, n_groups=9)
    rhos = _random_rhos(prob, 4, seed=4)
    widths = [1.0, 0.5, 0.05, 1.0]
    conc = [concentration_factors(st)] * 4
    got = group_ascent(core, prob, st, rhos, widths, conc, max_iter=30, tol=1e-8)
    want = group_ascent(ref, prob, st, rhos, widths, conc, max_iter=30, tol=1e-8)
    for g, w in zip(got, want):
        assert g["n_iter"] == w["n_iter"]
        assert set(g) == set(w)
        for key, value in w.items():
            if value is None:
                assert g[key] is None
            else:
                np.testing.assert_allclose(g[key], value, rtol=1e-9, atol=1e-10, err_msg=key)


@pytest.mark.parametrize("kind,fixed", KINDS)
def test_the_elbo_never_falls_along_the_ascent(backend, kind, fixed):
    prob, st = _problem_and_state(ref, kind, fixed, seed=5)
    start = _random_rhos(prob, 1, seed=6)[0]
    st.rho = start
    st.H_rho = ref.categorical_entropy(start)
    cells = cell_level_elbo(backend, prob, st)
    before = elbo(ref, prob, st)
    values = []
    for max_iter in range(12):
        result, = group_ascent(backend, prob, st, [start], [st.group_prior_scale],
                               [concentration_factors(st)], max_iter=max_iter, tol=0.0)
        assert result["n_iter"] == max_iter
        values.append(cells + result["elbo"])
    assert values[0] >= before - 1e-9 * abs(before)
    steps = np.diff(values)
    assert np.all(steps >= -1e-9 * np.abs(values[1:])), steps
    assert values[-1] > values[0]               # and it does climb from a random start


def test_candidates_are_bitwise_identical_for_any_thread_count():
    core = core_module()
    prob, st = _problem_and_state(ref, "nam", False, seed=7, K=6, L=5, n_groups=12)
    rhos = _random_rhos(prob, 7, seed=8)
    widths = [1.0, 0.3, 0.1, 1.0, 0.7, 0.02, 1.0]
    conc = [concentration_factors(st)] * 7
    one = group_ascent(core, prob, st, rhos, widths, conc, n_threads=1)
    two = group_ascent(core, prob, st, rhos, widths, conc, n_threads=2)
    alone = [group_ascent(core, prob, st, [r], [w], [c], n_threads=2)[0]
             for r, w, c in zip(rhos, widths, conc)]
    for a, b, c in zip(one, two, alone):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            np.testing.assert_array_equal(a[key], c[key], err_msg=key)


def test_the_search_accepts_the_same_partition_on_either_backend():
    """The group search from a bad start (two true clusters merged) reaches the same
    partition, width and ELBO whether its ascents run in the core or in NumPy."""
    import nestedatoms as na
    from sklearn.metrics import adjusted_rand_score as ari

    from nestedatoms._data import prepare_data
    from nestedatoms._init import state_from_labels
    from nestedatoms.moves import search_group_partition

    sim = na.simulate(n_groups=24, cells_per_group=30, n_group_clusters=3, n_cell_clusters=3,
                      n_group_features=2, n_cell_features=2, lam_x=0.005, lam_y=0.005,
                      alpha0_x=1e6, random_state=0)
    prob = na.NestedAtomsModel(n_group_clusters=6, n_cell_clusters=6)._problem(
        prepare_data(sim.Y, sim.groups, sim.X))
    truth = sim.group_truth
    start = np.where(truth == truth[-1], truth[0], truth)
    cells = sim.cell_truth[prob.data.order]
    out = {}
    for be in (ref, core_module()):
        st = state_from_labels(be, prob, cells, start)
        assert search_group_partition(be, prob, st)
        out[be.NAME] = (st.rho.argmax(axis=1), st.group_prior_scale, elbo(be, prob, st))
    assert ari(out["numpy"][0], out["cpp"][0]) == 1.0
    assert ari(truth, out["cpp"][0]) == 1.0
    np.testing.assert_allclose(out["cpp"][1], out["numpy"][1], rtol=1e-6)
    np.testing.assert_allclose(out["cpp"][2], out["numpy"][2], rtol=1e-9)


@pytest.mark.parametrize("change,message", [
    (dict(counts=np.ones((3, 4))), "rho must have shape"),
    (dict(counts=np.ones((5, 0))), "counts"),
    (dict(rho=np.ones((2, 4, 3))), "rho"),
    (dict(rho=np.full((2, 5, 3), np.inf)), "rho"),
    (dict(conc=np.ones((2, 3))), "conc"),
    (dict(x_scale=np.array([1.0, -1.0])), "x_scale"),
    (dict(x_scale=np.ones(3)), "x_scale"),
    (dict(counts=np.full((5, 4), np.nan)), "counts"),
    (dict(alpha_prior=(1.0, 1.0, -2.0)), "alpha_prior"),
    (dict(beta_prior=(0.0, 1.0, None)), "beta_prior"),
    (dict(alpha_prior=(1.0, 1.0)), "alpha_prior"),
    (dict(x_prior=None), "x_prior"),
    (dict(X=np.ones((4, 2))), "X"),
    (dict(max_iter=-1), "max_iter"),
])
def test_the_core_refuses_bad_arguments(change, message):
    core = core_module()
    rng = np.random.default_rng(0)
    good = dict(counts=rng.gamma(1.0, 10.0, size=(5, 4)),
                rho=rng.dirichlet(np.ones(3), size=(2, 5)), conc=np.ones((2, 4)),
                x_scale=np.ones(2), X=rng.normal(size=(5, 2)), x_centre=np.zeros(2),
                x_prior=(np.zeros(2), 0.5, np.eye(2), 7.0), alpha_prior=(1.0, 1.0, None),
                beta_prior=(1.0, 1.0, 0.5), max_iter=5, tol=1e-6, n_threads=1)
    assert len(core.group_ascent(**good)) == 2
    with pytest.raises(ValueError, match=message):
        core.group_ascent(**dict(good, **change))
