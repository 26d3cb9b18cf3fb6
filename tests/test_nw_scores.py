"""``nw_scores``, the merge moves' score of proposed atoms: per atom, the Normal-Wishart part of
the ELBO at the atom's posterior, i.e. the composition nw_posterior -> loglik + prior term +
entropy, one atom at a time.  The core computes it as the atom's log evidence (one Cholesky
per atom instead of the three terms' factorisations): equal to the composition to rounding."""

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
        np.testing.assert_allclose(got[g], want, rtol=1e-12, atol=1e-9)


def test_the_core_matches_the_reference():
    rng = np.random.default_rng(1)
    n, s1, s2, centre = _stats(rng, 7, 4)
    prior = (rng.normal(size=4), 0.5, np.eye(4) * 0.7, 9.0)
    np.testing.assert_allclose(core_module().nw_scores(n, s1, s2, centre, *prior),
                               ref.nw_scores(n, s1, s2, centre, *prior), rtol=1e-9)


def test_the_log_evidence_form_holds_at_scale():
    """The core's log-evidence form against the reference's three terms where they are large
    and far from the prior (D = 30, thousands of weighted cells, an offset centre)."""
    rng = np.random.default_rng(2)
    D = 30
    Z = rng.normal(size=(3000, D)) * rng.uniform(0.1, 5.0, size=D) + 7.0
    w = rng.dirichlet(np.ones(6) * 0.3, size=3000) * 1.7
    n, s1, s2 = ref.weighted_stats(Z, w, Z.mean(axis=0))
    prior = (np.zeros(D), 0.01, np.diag(rng.uniform(0.5, 2.0, D)), D + 5.0)
    np.testing.assert_allclose(core_module().nw_scores(n, s1, s2, Z.mean(axis=0), *prior),
                               ref.nw_scores(n, s1, s2, Z.mean(axis=0), *prior), rtol=1e-11)
