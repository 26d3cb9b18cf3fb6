"""K = 1 with a fixed concentration is a truncated DP Gaussian mixture: it must agree with
scikit-learn's BayesianGaussianMixture given the same priors (scikit-learn leaves its last
stick free, so the truncation is made generous enough that the last components carry no mass)."""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from sklearn.mixture import BayesianGaussianMixture
from sklearn.metrics import adjusted_rand_score as ari

import nestedatoms as na


@pytest.mark.parametrize("backend", ["numpy", "cpp"])
def test_flat_fit_matches_bayesian_gaussian_mixture(backend):
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [12.0, 0.0], [0.0, 12.0]])
    truth = rng.integers(3, size=600)
    Y = centres[truth] + rng.normal(size=(600, 2)) @ np.array([[1.0, 0.3], [0.0, 0.8]])
    beta, L = 1.0, 8
    model = na.NestedAtomsModel(n_group_clusters=1, n_cell_clusters=L, cell_concentration=beta,
                                n_init=1, max_iter=1000, tol=1e-12, random_state=0,
                                backend=backend).fit(Y)
    prior = model.problem_.y_prior
    bgm = BayesianGaussianMixture(
        n_components=L, covariance_type="full", weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=beta, mean_precision_prior=prior.lam0,
        mean_prior=prior.m0, degrees_of_freedom_prior=prior.nu0,
        covariance_prior=prior.W0inv, reg_covar=0.0, max_iter=2000, tol=1e-10,
        random_state=0).fit(Y)
    ours, theirs = model.cell_labels_, bgm.predict(Y)
    assert ari(ours, theirs) == 1.0 and ari(ours, truth) == 1.0
    occ_ours = np.nonzero(np.bincount(ours, minlength=L))[0]
    occ_theirs = np.nonzero(np.bincount(theirs, minlength=L))[0]
    assert occ_ours.size == occ_theirs.size == 3
    dist = ((model.cell_means_[occ_ours, None] - bgm.means_[None, occ_theirs]) ** 2).sum(-1)
    r, c = linear_sum_assignment(dist)
    a, b = occ_ours[r], occ_theirs[c]
    st = model.state_
    np.testing.assert_allclose(model.cell_means_[a], bgm.means_[b], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(st.nuy[a], bgm.degrees_of_freedom_[b], rtol=1e-6)
    np.testing.assert_allclose(st.nuy[a, None, None] * st.Wy[a], bgm.precisions_[b], rtol=1e-5)
