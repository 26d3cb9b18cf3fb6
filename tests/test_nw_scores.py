"""``nw_scores``, the merge moves' score of proposed atoms: per atom, the Normal-Wishart part of
the ELBO at the atom's posterior, i.e. the composition nw_posterior -> loglik + prior term +
entropy, one atom at a time; the core bit for bit as that composition through the core."""

import numpy as np

from nestedatoms import reference as ref
from nestedatoms._backend import core_module


def _stats(rng, G, D):
    Z = rng.normal(size=(200, D))
    w = rng.dirichlet(np.ones(G), size=200) * rng.uniform(0.5, 2.0, size=(200, 1))
    return ref.weighted_stats(Z, w, Z.mean(axis=0)) + (Z.mean(axis=0),)


def test_each_score_is_the_three_terms_at_the_posterior(backend):
    rng = np.random.default_rng(0)
    n, s1, s2, centre = _stats(rng, 5, 3)
    n[2] = 0.0                                   # an empty atom: its prior
    s1[2], s2[2] = 0.0, 0.0
    prior = (np.zeros(3), 0.1, np.eye(3) * 2.0, 6.0)
    got = backend.nw_scores(n, s1, s2, centre, *prior)
    assert got.shape == (5,)
    for g in range(5):
        stats = (n[g:g + 1], s1[g:g + 1], s2[g:g + 1])
        q = backend.nw_posterior(*stats, centre, *prior)
        want = (backend.nw_loglik_from_stats(*stats, centre, *q)
                + backend.nw_prior_term(*q, *prior) + backend.nw_entropy(*q))
        if backend.NAME == "cpp":
            assert got[g] == want                # the same functions, so the same bits
        else:
            np.testing.assert_allclose(got[g], want, rtol=1e-12)


def test_the_core_matches_the_reference():
    rng = np.random.default_rng(1)
    n, s1, s2, centre = _stats(rng, 7, 4)
    prior = (rng.normal(size=4), 0.5, np.eye(4) * 0.7, 9.0)
    np.testing.assert_allclose(core_module().nw_scores(n, s1, s2, centre, *prior),
                               ref.nw_scores(n, s1, s2, centre, *prior), rtol=1e-9)
