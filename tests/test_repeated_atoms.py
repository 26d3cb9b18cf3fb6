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
