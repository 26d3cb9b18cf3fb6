"""The ELBO against an independent truth: with one cluster at each level the variational
family contains the exact posterior, so the converged ELBO equals the log marginal likelihood
of a Normal-Wishart model, which has a closed form (Murphy 2007, eq. 266)."""

import numpy as np
import pytest
from scipy.special import multigammaln

import nestedatoms as na


def log_evidence_nw(Z, m0, lam0, W0inv, nu0):
    n, D = Z.shape
    zbar = Z.mean(axis=0)
    S = (Z - zbar).T @ (Z - zbar)
    lam_n, nu_n = lam0 + n, nu0 + n
    Wn_inv = W0inv + S + lam0 * n / lam_n * np.outer(zbar - m0, zbar - m0)
    logdet = lambda A: np.linalg.slogdet(A)[1]
    return (-0.5 * n * D * np.log(np.pi) + multigammaln(nu_n / 2, D) - multigammaln(nu0 / 2, D)
            + 0.5 * nu0 * logdet(W0inv) - 0.5 * nu_n * logdet(Wn_inv)
            + 0.5 * D * np.log(lam0 / lam_n))


@pytest.mark.parametrize("backend", ["numpy", "cpp"])
@pytest.mark.parametrize("with_x", [False, True])
def test_single_cluster_elbo_is_the_log_evidence(backend, with_x):
    rng = np.random.default_rng(5)
    Y = rng.normal(size=(80, 3)) @ rng.normal(size=(3, 3)) + 2.0
    groups = np.repeat(np.arange(8), 10)
    X = rng.normal(size=(8, 2)) if with_x else None
    model = na.NestedAtomsModel(n_group_clusters=1, n_cell_clusters=1, n_init=1, max_iter=5,
                                tol=0, backend=backend, random_state=0).fit(Y, groups, X)
    prob = model.problem_
    expected = log_evidence_nw(Y, prob.y_prior.m0, prob.y_prior.lam0, prob.y_prior.W0inv,
                               prob.y_prior.nu0)
    if with_x:
        px = prob.x_prior
        expected += log_evidence_nw(X, px.m0, px.lam0, px.W0inv, px.nu0)
    assert model.elbo_ == pytest.approx(expected, rel=1e-10)
