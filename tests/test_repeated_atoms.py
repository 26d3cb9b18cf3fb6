"""Atoms whose W is bit for bit the previous atom's (the empty atoms at their prior, most of L on
small data) reuse its factorisation in the core.  That must change no bit: every per-atom figure
equals the same atom computed on its own, and a sum over atoms equals the sum of the atoms
computed one at a time."""

import numpy as np
import pytest

from nestedatoms._backend import core_module


def _atoms(rng, D=6):
    """Five atoms: 0, 1-3 the same W (1 and 3 with other m, lam, nu), 4 its own."""
    A = rng.normal(size=(D, D))
    W_shared = A @ A.T / D + np.eye(D)
    B = rng.normal(size=(D, D))
    W = np.stack([np.eye(D) * 0.5, W_shared, W_shared, W_shared, B @ B.T / D + np.eye(D)])
    m = rng.normal(size=(5, D))
    lam = np.array([1.0, 2.0, 2.0, 3.0, 0.5])
    nu = np.array([D + 1.0, D + 2.0, D + 2.0, D + 7.5, D + 3.0])
    return m, lam, W, nu


def _one(arrays, g):
    return tuple(a[g:g + 1] for a in arrays)


@pytest.mark.parametrize("name", ["nw_entropy", "expected_logdet", "log_wishart_norm"])
def test_a_repeated_w_gives_what_the_atom_gives_alone(name):
    core = core_module()
    m, lam, W, nu = _atoms(np.random.default_rng(0))
    fn = getattr(core, name)
    if name == "nw_entropy":
        total = fn(m, lam, W, nu)
        alone = 0.0
        for g in range(5):
            alone += fn(*_one((m, lam, W, nu), g))
        assert total == alone
    else:
        got = fn(W, nu)
        for g in range(5):
            assert got[g] == fn(W[g:g + 1], nu[g:g + 1])[0]


def test_the_prior_term_and_the_loglik_sum_the_atoms_alone():
    core = core_module()
    rng = np.random.default_rng(1)
    m, lam, W, nu = _atoms(rng)
    D = m.shape[1]
    prior = (rng.normal(size=D), 0.3, np.eye(D) * 1.5, D + 4.0)
    n = np.array([3.0, 0.0, 5.0, 2.5, 1.0])
    s1 = rng.normal(size=(5, D))
    s2 = np.stack([np.eye(D) * k for k in (1.0, 0.0, 2.0, 3.0, 0.5)])
    centre = rng.normal(size=D)
    prior_alone = loglik_alone = 0.0
    for g in range(5):
        prior_alone += core.nw_prior_term(*_one((m, lam, W, nu), g), *prior)
        loglik_alone += core.nw_loglik_from_stats(*_one((n, s1, s2), g), centre,
                                                  *_one((m, lam, W, nu), g))
    assert core.nw_prior_term(m, lam, W, nu, *prior) == prior_alone
    assert core.nw_loglik_from_stats(n, s1, s2, centre, m, lam, W, nu) == loglik_alone


def test_the_cell_steps_expected_loglik_of_a_repeated_atom_is_its_own():
    core = core_module()
    rng = np.random.default_rng(2)
    m, lam, W, nu = _atoms(rng)
    Z = rng.normal(size=(40, m.shape[1]))
    got = core.expected_loglik(Z, m, lam, W, nu)
    for g in range(5):
        np.testing.assert_array_equal(got[:, g], core.expected_loglik(Z, *_one((m, lam, W, nu),
                                                                              g))[:, 0])


# ---------------------------------------------------------------------------------------------
# Repeated statistics (the posterior and the merge scores), the diagonal family's terms, and the
# cell steps, which fold repeated atoms into one column of the logits product and skip the
# columns of xi that are exactly 0 in the statistics product.
# ---------------------------------------------------------------------------------------------

def _stats_with_repeats(rng, D, diagonal):
    """Six atoms' statistics: 0 its own, 1 = 2 (occupied), 3 = 4 = 5 empty (exactly 0)."""
    n = np.array([4.0, 7.5, 7.5, 0.0, 0.0, 0.0])
    s1 = rng.normal(size=(6, D))
    s1[2] = s1[1]
    s1[3:] = 0.0
    if diagonal:
        s2 = rng.uniform(1.0, 3.0, size=(6, D)) * n[:, None]
    else:
        s2 = np.stack([(lambda A: A @ A.T + k * np.eye(D))(rng.normal(size=(D, D)))
                       for k in n])
    s2[2] = s2[1]
    s2[3:] = 0.0
    return n, s1, s2


def _prior(rng, D, diagonal):
    W0inv = np.full(D, 1.7) if diagonal else np.eye(D) * 1.7 + 0.1
    return rng.normal(size=D), 0.3, W0inv, D + 4.0


@pytest.mark.parametrize("diagonal", [False, True])
@pytest.mark.parametrize("kind", ["posterior", "scores"])
def test_repeated_statistics_give_what_the_atom_gives_alone(kind, diagonal):
    core = core_module()
    rng = np.random.default_rng(3)
    D = 5
    n, s1, s2 = _stats_with_repeats(rng, D, diagonal)
    centre, prior = rng.normal(size=D), _prior(rng, D, diagonal)
    fn = getattr(core, ("diag_" if diagonal else "nw_") + kind)
    got = fn(n, s1, s2, centre, *prior)
    for g in range(6):
        alone = fn(*_one((n, s1, s2), g), centre, *prior)
        if kind == "scores":
            assert got[g] == alone[0]
        else:
            for a, b in zip(got, alone):
                np.testing.assert_array_equal(a[g], b[0])


def test_the_diagonal_terms_sum_the_atoms_alone():
    core = core_module()
    rng = np.random.default_rng(4)
    D = 5
    n, s1, s2 = _stats_with_repeats(rng, D, diagonal=True)
    centre, prior = rng.normal(size=D), _prior(rng, D, diagonal=True)
    atoms = core.diag_posterior(n, s1, s2, centre, *prior)     # 1 = 2 and 3 = 4 = 5 repeat
    entropy = prior_term = loglik = 0.0
    for g in range(6):
        one = _one(atoms, g)
        entropy += core.diag_entropy(*one)
        prior_term += core.diag_prior_term(*one, *prior)
        loglik += core.diag_loglik_from_stats(*_one((n, s1, s2), g), centre, *one)
    assert core.diag_entropy(*atoms) == entropy
    assert core.diag_prior_term(*atoms, *prior) == prior_term
    assert core.diag_loglik_from_stats(n, s1, s2, centre, *atoms) == loglik


def _cells_with_repeated_atoms(diagonal, copies=1):
    """A cell step's arguments with L = 8 atoms: 0 and 1 from a random partition, 2 a copy of 1,
    3-5 exactly at the prior (empty), 6 = 7 so far from the cells that their responsibilities
    are exactly 0; rows of E log omega equal where the atoms are equal, so that equal atoms
    must get equal responsibilities.  ``copies`` > 1 repeats every cell (for threads)."""
    from conftest import make_problem, random_state_for

    from nestedatoms import reference as ref

    prob = make_problem("nam", seed=2, n_groups=8, L=8,
                        covariance_type="diag" if diagonal else "full")
    st = random_state_for(ref, prob, seed=3)
    pr = prob.y_prior
    m, lam, W, nu = (a.copy() for a in (st.my, st.lamy, st.Wy, st.nuy))
    posterior = ref.diag_posterior if diagonal else ref.nw_posterior
    empty = posterior(np.zeros(1), np.zeros((1,) + m.shape[1:]), np.zeros((1,) + W.shape[1:]),
                      prob.y_centre, pr.m0, pr.lam0, pr.W0inv, pr.nu0)
    for a, e in zip((m, lam, W, nu), empty):
        a[2] = a[1]
        a[3:6] = e[0]
        a[6:8] = a[0]
    m[6:8] += 1e4
    elog_omega = ref.expected_log_stick_weights(st.u_a, st.u_b).copy()
    elog_omega[2] = elog_omega[1]
    elog_omega[3:6] = elog_omega[3]
    elog_omega[7] = elog_omega[6]
    Y, offsets, rho = prob.Y, prob.offsets, st.rho
    if copies > 1:          # every cell `copies` times, in its own group
        order = np.argsort(np.repeat(np.arange(Y.shape[0]), copies), kind="stable")
        Y = np.ascontiguousarray(np.repeat(Y, copies, axis=0)[order])
        offsets = (offsets * copies).astype(np.int64)
    return dict(Y=Y, offsets=offsets, rho=rho, elog_omega=elog_omega, atoms=(m, lam, W, nu),
                centre=prob.y_centre, xi=np.repeat(st.xi, copies, axis=0)[
                    np.argsort(np.repeat(np.arange(st.xi.shape[0]), copies), kind="stable")])


def _cell_step(be, a, diagonal, xi, rows=None, n_threads=1):
    prefix = "diag_" if diagonal else ""
    if rows is None:
        return getattr(be, prefix + "cell_step")(a["Y"], a["offsets"], a["rho"],
                                                 a["elog_omega"], *a["atoms"], a["centre"], xi,
                                                 n_threads)
    return getattr(be, prefix + "cell_step_rows")(a["Y"], a["offsets"], rows, a["rho"],
                                                  a["elog_omega"], *a["atoms"], a["centre"],
                                                  xi, n_threads)


@pytest.mark.parametrize("diagonal", [False, True])
@pytest.mark.parametrize("which", ["all", "rows"])
def test_the_cell_steps_with_repeated_and_empty_atoms_match_the_reference(diagonal, which):
    from nestedatoms import reference as ref

    core = core_module()
    a = _cells_with_repeated_atoms(diagonal)
    N = a["Y"].shape[0]
    rows = None if which == "all" else np.arange(0, N, 2, dtype=np.int64)
    xi_c, xi_r = a["xi"].copy(), a["xi"].copy()
    got = _cell_step(core, a, diagonal, xi_c, rows)
    want = _cell_step(ref, a, diagonal, xi_r, rows)
    np.testing.assert_allclose(xi_c, xi_r, rtol=1e-12, atol=1e-300)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-9)
    # equal atoms (and equal E log omega) get equal responsibilities, bit for bit; the far
    # atoms none at all, and exactly nothing in the statistics
    moved = slice(None) if rows is None else rows
    np.testing.assert_array_equal(xi_c[moved, 2], xi_c[moved, 1])
    np.testing.assert_array_equal(xi_c[moved, 4], xi_c[moved, 3])
    np.testing.assert_array_equal(xi_c[moved, 5], xi_c[moved, 3])
    assert np.all(xi_c[moved, 1] > 0) and np.all(xi_c[moved, 3] > 0)   # not 0 == 0
    assert np.all(xi_c[moved, 6:8] == 0.0)
    N_jl, n, s1, s2 = got[:4]
    if rows is None:
        for stat in (N_jl.T, n, s1, s2):
            assert np.all(stat[6:8] == 0.0)
        # the statistics are those of the xi the step returned (columns skipped or not)
        stats = (ref.diag_weighted_stats if diagonal else ref.weighted_stats)(
            a["Y"], xi_c, a["centre"])
        for g, w in zip((n, s1, s2), stats):
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-9)
        # sums of positive terms, relative to each atom's own size however small (the prior
        # atoms' weights are tiny but not 0)
        diag_s2 = (lambda s: s) if diagonal else (lambda s: np.diagonal(s, axis1=1, axis2=2))
        np.testing.assert_allclose(n, stats[0], rtol=1e-12, atol=0)
        np.testing.assert_allclose(diag_s2(s2), diag_s2(stats[2]), rtol=1e-12, atol=0)


@pytest.mark.parametrize("diagonal", [False, True])
def test_the_cell_steps_with_repeated_atoms_are_bitwise_identical_for_any_thread_count(diagonal):
    core = core_module()
    a = _cells_with_repeated_atoms(diagonal, copies=60)   # > 32 blocks: a second thread runs
    N = a["Y"].shape[0]
    rows = np.sort(np.random.default_rng(1).choice(N, N // 2, replace=False))
    for r in (None, rows):
        out = []
        for n_threads in (1, 2):
            xi = a["xi"].copy()
            out.append((xi, _cell_step(core, a, diagonal, xi, r, n_threads)))
        np.testing.assert_array_equal(out[0][0], out[1][0])
        for x, y in zip(out[0][1], out[1][1]):
            np.testing.assert_array_equal(x, y)
