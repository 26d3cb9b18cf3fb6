"""Special functions and closed-form expectations against scipy and independent computations.

Both backends are tested: the NumPy reference (which delegates to scipy) and the C++ core (which
has its own digamma).  The Normal-Wishart expectations are checked against quantities computed by
other routes: scipy.stats distributions, numerical derivatives, Monte Carlo averages.
"""

import numpy as np
import pytest
import scipy.special as sp
import scipy.stats as st

from nestedatoms import _core as core
from nestedatoms import reference as ref

DIGAMMA_ROOT = 1.4616321449683622  # the positive zero of psi


class Backend:
    """The common surface of a backend, with the special functions under one name."""

    def __init__(self, module, digamma, lgamma):
        self.module, self.digamma, self.lgamma = module, digamma, lgamma

    def __getattr__(self, name):
        return getattr(self.module, name)

    def __repr__(self):
        return self.module.NAME


BACKENDS = [Backend(ref, ref.digamma, ref.lgamma), Backend(core, core.digamma, core.lgamma)]


@pytest.fixture(params=BACKENDS, ids=repr)
def be(request):
    return request.param


def max_rel_err(actual, desired):
    return float(np.max(np.abs(actual - desired) / np.abs(desired)))


# ------------------------------------------------------------------------------------------------
# digamma, lgamma
# ------------------------------------------------------------------------------------------------
def test_digamma_positive_range(be):
    x = np.logspace(-8, 8, 200_001)
    assert max_rel_err(be.digamma(x), sp.digamma(x)) < 1e-13


def test_digamma_near_its_root(be):
    # psi -> 0 at the root: the relative error must stay small there too.
    h = np.concatenate([-np.logspace(-12, np.log10(0.4), 2000), np.logspace(-12, np.log10(0.4), 2000)])
    x = DIGAMMA_ROOT + h
    assert max_rel_err(be.digamma(x), sp.digamma(x)) < 1e-13


def test_digamma_negative_non_integers(be):
    rng = np.random.default_rng(0)
    x = -rng.uniform(0.0, 50.0, size=20_000)
    x = x[np.abs(x - np.round(x)) > 1e-6]
    # Well-conditioned points (halfway between poles, where pi cot(pi x) = 0): relative 1e-13.
    half = -np.arange(0, 60) - 0.5
    assert max_rel_err(be.digamma(half), sp.digamma(half)) < 1e-13
    # Elsewhere psi(x) = psi(1 - x) - pi cot(pi x) cancels near the zeros of psi; scipy itself is
    # only accurate relative to the size of those two terms (it rounds pi x before reducing it),
    # so compare on that scale; test_digamma_negative_against_high_precision is the tight check.
    scale = np.abs(sp.digamma(1.0 - x)) + np.abs(np.pi / np.tan(np.pi * x))
    assert np.max(np.abs(be.digamma(x) - sp.digamma(x)) / scale) < 1e-11


def test_digamma_negative_against_high_precision():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    rng = np.random.default_rng(1)
    x = np.concatenate([-rng.uniform(0.0, 30.0, size=400), rng.uniform(0.0, 30.0, size=200)])
    exact = np.array([float(mpmath.digamma(mpmath.mpf(float(t)))) for t in x])
    got = core.digamma(x)
    scale = np.maximum(np.abs(exact), np.abs(sp.digamma(1.0 - np.minimum(x, 0.0))))
    assert np.max(np.abs(got - exact) / scale) < 1e-14
    well = np.abs(exact) > 0.1
    assert max_rel_err(got[well], exact[well]) < 1e-13


def test_digamma_poles_and_non_finite_follow_scipy(be):
    x = np.array([0.0, -0.0, -1.0, -7.0, np.inf, -np.inf, np.nan, 1e-300, 1e300])
    np.testing.assert_array_equal(be.digamma(x), sp.digamma(x))


def test_special_functions_accept_scalars_and_any_shape(be):
    assert isinstance(be.digamma(2.5), float)
    np.testing.assert_allclose(be.digamma(2.5), sp.digamma(2.5), rtol=1e-15)
    np.testing.assert_allclose(be.lgamma(2.5), sp.gammaln(2.5), rtol=1e-15)
    x = np.linspace(0.1, 9.0, 24).reshape(2, 3, 4)
    assert be.digamma(x).shape == (2, 3, 4)
    assert be.lgamma(x).shape == (2, 3, 4)
    np.testing.assert_allclose(be.digamma(x), sp.digamma(x), rtol=1e-14)


def test_lgamma(be):
    x = np.concatenate([np.logspace(-8, 8, 20_001), -np.linspace(0.01, 20.0, 1000) - 0.5e-3])
    want = sp.gammaln(x)
    # relative where lgamma is away from its zeros at 1 and 2, absolute near them
    np.testing.assert_allclose(be.lgamma(x), want, rtol=1e-13, atol=1e-15)


# ------------------------------------------------------------------------------------------------
# Wishart and Normal-Wishart expectations
# ------------------------------------------------------------------------------------------------
def random_wishart(seed, D, G=3):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(G, D, D))
    W = A @ np.swapaxes(A, 1, 2) / D + 0.2 * np.eye(D)
    nu = D - 1.0 + rng.uniform(0.3, 30.0, size=G)
    return np.ascontiguousarray(W), nu


@pytest.mark.parametrize("D", [1, 2, 5])
def test_expected_logdet_is_the_derivative_of_the_log_normaliser(be, D):
    # E log|Lambda| = D log 2 + log|W| + d/da log Gamma_D(a) at a = nu / 2: differentiate scipy's
    # multivariate log-gamma numerically instead of summing digammas.
    W, nu = random_wishart(D, D)
    h = 1e-5
    dmgl = np.array([(sp.multigammaln(n / 2 + h, D) - sp.multigammaln(n / 2 - h, D)) / (2 * h)
                     for n in nu])
    want = D * np.log(2.0) + np.linalg.slogdet(W)[1] + dmgl
    np.testing.assert_allclose(be.expected_logdet(W, nu), want, rtol=1e-7, atol=1e-7)


def test_expected_logdet_monte_carlo(be):
    W, nu = random_wishart(0, 3, G=1)
    draws = st.wishart(df=nu[0], scale=W[0]).rvs(size=40_000, random_state=1)
    logdets = np.linalg.slogdet(draws)[1]
    se = logdets.std() / np.sqrt(logdets.size)
    assert abs(be.expected_logdet(W, nu)[0] - logdets.mean()) < 5 * se


@pytest.mark.parametrize("D", [1, 2, 4])
def test_wishart_normaliser_and_entropy_match_scipy(be, D):
    W, nu = random_wishart(10 + D, D)
    elogdet = be.expected_logdet(W, nu)
    log_b = be.log_wishart_norm(W, nu)
    # B_W is the normaliser of scipy's density: logpdf = log B + (nu - D - 1)/2 log|X| - tr(W^-1 X)/2
    X = W[0] * nu[0]
    want_logpdf = (log_b[0] + 0.5 * (nu[0] - D - 1) * np.linalg.slogdet(X)[1]
                   - 0.5 * np.trace(np.linalg.solve(W[0], X)))
    np.testing.assert_allclose(st.wishart(df=nu[0], scale=W[0]).logpdf(X), want_logpdf,
                               rtol=1e-10)
    # SPEC 6: H_W = -log B - (nu - D - 1)/2 E log|Lambda| + nu D / 2
    h_w = -log_b - 0.5 * (nu - D - 1.0) * elogdet + 0.5 * nu * D
    want = [st.wishart(df=n, scale=w).entropy() for w, n in zip(W, nu)]
    np.testing.assert_allclose(h_w, want, rtol=1e-10)


@pytest.mark.parametrize("D", [1, 3])
def test_normal_wishart_entropy(be, D):
    # H[q(mu, Lambda)] = E_q(Lambda) H[N(m, (lam Lambda)^-1)] + H_W, each from scipy.
    W, nu = random_wishart(20 + D, D)
    rng = np.random.default_rng(D)
    m = rng.normal(size=(W.shape[0], D))
    lam = rng.uniform(0.01, 30.0, size=W.shape[0])
    elogdet = be.expected_logdet(W, nu)
    gauss = 0.5 * D * (1.0 + np.log(2 * np.pi)) - 0.5 * D * np.log(lam) - 0.5 * elogdet
    want = sum(g + st.wishart(df=n, scale=w).entropy() for g, w, n in zip(gauss, W, nu))
    np.testing.assert_allclose(be.nw_entropy(m, lam, W, nu), want, rtol=1e-10)


@pytest.mark.parametrize("D", [1, 3])
def test_expected_loglik_closed_form(be, D):
    # SPEC 4, evaluated directly (explicit inverse-free quadratic form, no Cholesky).
    W, nu = random_wishart(30 + D, D)
    rng = np.random.default_rng(D)
    G = W.shape[0]
    m = rng.normal(size=(G, D))
    lam = rng.uniform(0.1, 10.0, size=G)
    Z = rng.normal(scale=2.0, size=(50, D))
    elogdet = (sum(sp.digamma((nu + 1 - d) / 2) for d in range(1, D + 1)) + D * np.log(2)
               + np.linalg.slogdet(W)[1])
    diff = Z[:, None, :] - m[None, :, :]
    quad = np.einsum("ngd,gde,nge->ng", diff, W, diff)
    want = 0.5 * elogdet - 0.5 * D * np.log(2 * np.pi) - 0.5 * (D / lam + nu * quad)
    np.testing.assert_allclose(be.expected_loglik(Z, m, lam, W, nu), want, rtol=1e-11)


def test_expected_loglik_monte_carlo(be):
    D = 2
    W, nu = random_wishart(40, D, G=1)
    m, lam = np.array([[0.3, -1.0]]), np.array([2.5])
    z = np.array([[1.0, 0.5]])
    rng = np.random.default_rng(2)
    Lams = st.wishart(df=nu[0], scale=W[0]).rvs(size=40_000, random_state=3)
    covs = np.linalg.inv(lam[0] * Lams)
    mus = m[0] + np.einsum("sde,se->sd", np.linalg.cholesky(covs), rng.normal(size=(40_000, D)))
    d = z[0] - mus
    loglik = (0.5 * np.linalg.slogdet(Lams)[1] - 0.5 * D * np.log(2 * np.pi)
              - 0.5 * np.einsum("sd,sde,se->s", d, Lams, d))
    se = loglik.std() / np.sqrt(loglik.size)
    assert abs(be.expected_loglik(z, m, lam, W, nu)[0, 0] - loglik.mean()) < 5 * se


def test_nw_loglik_from_stats_equals_the_weighted_sum_of_expected_logliks(be):
    W, nu = random_wishart(50, 3)
    rng = np.random.default_rng(5)
    G = W.shape[0]
    m, lam = rng.normal(size=(G, 3)), rng.uniform(0.5, 5.0, size=G)
    Z = rng.normal(size=(200, 3)) + 4.0
    w = rng.dirichlet(np.ones(G), size=200)
    centre = Z.mean(axis=0)
    n, s1, s2 = be.weighted_stats(Z, w, centre)
    want = float(np.sum(w * be.expected_loglik(Z, m, lam, W, nu)))
    np.testing.assert_allclose(be.nw_loglik_from_stats(n, s1, s2, centre, m, lam, W, nu), want,
                               rtol=1e-11)


# ------------------------------------------------------------------------------------------------
# Gamma and Beta factors
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,rate", [(0.1, 0.1), (1.0, 3.0), (7.5, 0.2), (1e4, 3e3)])
def test_gamma_terms(be, shape, rate):
    dist = st.gamma(a=shape, scale=1.0 / rate)
    # (the formula of SPEC 6 cancels terms of size ~shape: relative 1e-10 for shape = 1e4)
    np.testing.assert_allclose(be.gamma_entropy(shape, rate), dist.entropy(), rtol=1e-10,
                               atol=1e-13)
    e, elog = be.gamma_expectations(shape, rate)
    np.testing.assert_allclose(e, dist.mean(), rtol=1e-14)
    np.testing.assert_allclose(elog, sp.digamma(shape) - np.log(rate), rtol=1e-13)
    # E_q log p(x) under a Gamma(0.3, 2.0) prior, by numerical integration (where the
    # integrand is smooth enough for quadrature)
    if shape < 1.0:
        return
    prior = st.gamma(a=0.3, scale=1.0 / 2.0)
    lo, hi = dist.ppf(1e-14), dist.ppf(1.0 - 1e-14)
    want = dist.expect(prior.logpdf, lb=lo, ub=hi, epsabs=1e-11, epsrel=1e-11)
    np.testing.assert_allclose(be.gamma_prior_term(0.3, 2.0, shape, rate), want, rtol=1e-7)


def test_beta_entropy(be):
    a = np.array([1.0, 2.0, 0.5, 30.0, 1.0, 250.0, 1e3, 1e5, 1.0])
    b = np.array([1.0, 5.0, 0.5, 2.0, 1e3, 250.0, 2e3, 1e5, 1e6])
    want = np.array([st.beta(x, y).entropy() for x, y in zip(a, b)])
    for i in range(a.size):
        np.testing.assert_allclose(be.beta_entropy(a[i:i + 1], b[i:i + 1]), want[i], rtol=1e-9,
                                   atol=1e-10)
    np.testing.assert_allclose(be.beta_entropy(a, b), want.sum(), rtol=1e-9)


def test_stick_expectations_are_beta_expectations(be):
    # E log v = psi(a) - psi(a + b) for v ~ Beta(a, b): check against scipy's numerical mean.
    a, b = np.array([[2.0], [7.0]]), np.array([[3.0], [0.4]])
    e = be.expected_log_stick_weights(a, b)
    elog_v = [st.beta(x, y).expect(np.log) for x, y in zip(a[:, 0], b[:, 0])]
    elog_1mv = [st.beta(y, x).expect(np.log) for x, y in zip(a[:, 0], b[:, 0])]  # 1 - v
    want = [elog_v[0], elog_1mv[0] + elog_v[1], elog_1mv[0] + elog_1mv[1]]
    np.testing.assert_allclose(e[:, 0], want, rtol=1e-8)
