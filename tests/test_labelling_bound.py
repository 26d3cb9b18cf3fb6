"""The labelling-aware bound (SPEC 6b, docs/labelling_bound.md), checked by brute force.

* every ELBO_sigma against an explicit relabelling of the state with the exact stick / alpha
  updates of ``_steps`` run to convergence;
* each closed-form Bhattacharyya coefficient against numerical integration / Monte Carlo, and
  the Kolchinsky-Tracey entropy bound against the numerically integrated entropy of a mixture;
* the bound <= log p(X, Y), with log p(X, Y) computed exactly on tiny problems by enumerating
  every (S, M) with every continuous parameter integrated out (concentrations fixed);
* identical components earn nothing, well separated ones log m!; never below the ELBO.
"""

import itertools
import math

import numpy as np
import pytest
from scipy import integrate, stats
from scipy.special import betaln, logsumexp, multigammaln

import nestedatoms as na
from nestedatoms import _labelling_bound as lb
from nestedatoms._backend import get_backend
from nestedatoms._data import prepare_data
from nestedatoms._fit import run_cavi
from nestedatoms._init import state_from_labels
from nestedatoms._steps import elbo, update_alpha, update_group_sticks


@pytest.fixture(params=("numpy", "cpp"))
def be(request):
    return get_backend(request.param)


def _problem(Y, groups, X, K, L, fixed=True, **kw):
    kwargs = dict(n_group_clusters=K, n_cell_clusters=L, prior="reference",
                  learn_group_prior_scale=False, donor_concentration=float("inf"))
    if fixed:
        kwargs.update(group_concentration=0.8, cell_concentration=1.2)
    kwargs.update(kw)
    return na.NestedAtomsModel(**kwargs)._problem(prepare_data(Y, groups, X))


def _converged(be, prob, cell_labels, group_labels):
    st = state_from_labels(be, prob, np.asarray(cell_labels), np.asarray(group_labels))
    return run_cavi(be, prob, st, max_iter=2000, tol=1e-12).state


def _separated_problem(K=3, J=3, cells=2, fixed=True, sizes=None, seed=0):
    """J groups in J // (J / T) well separated x clusters; 1-d x and y for enumeration."""
    rng = np.random.default_rng(seed)
    T = K if sizes is None else len(sizes)
    labels = np.repeat(np.arange(T), sizes) if sizes is not None else np.arange(J) % T
    J = labels.size
    X = (labels * 12.0 - 12.0)[:, None] + 0.1 * rng.standard_normal((J, 1))
    groups = np.repeat(np.arange(J), cells)
    cl = np.tile(np.arange(cells) % 2, J)
    Y = (cl * 8.0 - 4.0)[:, None] + 0.3 * rng.standard_normal((J * cells, 1))
    prob = _problem(Y, groups, X, K=K, L=2, fixed=fixed)
    return prob, labels, cl


# ---------------------------------------------------------------------------------------------
# (1) brute force: every ELBO_sigma from an explicit relabelling with the exact updates
# ---------------------------------------------------------------------------------------------
def _explicit_relabelled_elbo(be, prob, st, perm):
    return elbo(be, prob, _explicit_relabelled_state(be, prob, st, perm))


def _explicit_relabelled_state(be, prob, st, perm):
    new = st.copy()
    new.rho = np.ascontiguousarray(st.rho[:, perm])
    new.u_a = np.ascontiguousarray(st.u_a[:, perm])
    new.u_b = np.ascontiguousarray(st.u_b[:, perm])
    new.mx, new.lamx, new.Wx, new.nux = (st.mx[perm], st.lamx[perm], st.Wx[perm],
                                         st.nux[perm])
    prev = -np.inf
    for _ in range(5000):
        update_group_sticks(be, prob, new)
        update_alpha(be, prob, new)
        cur = elbo(be, prob, new)
        assert cur >= prev - 1e-9 * abs(cur)          # each update is coordinate ascent
        if cur - prev < 1e-13 * abs(cur):
            break
        prev = cur
    update_group_sticks(be, prob, new)
    return new


def _brute_log_bc(prob, s1, s2):
    """log BC of two whole states, every factor of SPEC 3 compared (shared ones give 0)."""
    t = float(np.sum(lb.log_bc_categorical(s1.rho, s2.rho)))
    t += float(np.sum(lb.log_bc_categorical(s1.xi, s2.xi)))
    t += float(np.sum(lb.log_bc_beta(s1.v_a, s1.v_b, s2.v_a, s2.v_b)))
    t += float(np.sum(lb.log_bc_beta(s1.u_a, s1.u_b, s2.u_a, s2.u_b)))
    for p, q in (("x", "x"), ("y", "y")):
        for k in range(getattr(s1, "m" + p).shape[0]):
            t += lb.log_bc_normal_wishart(
                *(getattr(s1, n + p)[k] for n in ("m", "lam", "W", "nu")),
                *(getattr(s2, n + q)[k] for n in ("m", "lam", "W", "nu")))
    if prob.alpha_prior.fixed is None:
        t += lb.log_bc_gamma(s1.alpha_shape, s1.alpha_rate, s2.alpha_shape, s2.alpha_rate)
    if prob.beta_prior.fixed is None:
        t += lb.log_bc_gamma(s1.beta_shape, s1.beta_rate, s2.beta_shape, s2.beta_rate)
    return t


@pytest.mark.parametrize("fixed", [True, False])
def test_pairwise_overlaps_by_brute_force(be, fixed):
    """Every entry of the log BC matrix against the product over ALL factors of two explicitly
    relabelled states: catches a factor left out (which would only loosen the bound) and the
    rho entries outside the occupied clusters (leaving them out would inflate it)."""
    prob, labels, cl = _separated_problem(K=4, J=6, cells=3, sizes=[3, 2, 1], fixed=fixed)
    st = _converged(be, prob, cl, labels)
    rng = np.random.default_rng(4)
    # soft and overlapping: rows mixed, some mass on the unoccupied cluster (R_4 = 0.3)
    rho = 0.6 * st.rho + 0.35 * rng.dirichlet(np.ones(3), size=6) @ np.eye(4)[:3]
    rho[:, 3] = 0.05
    st.rho = rho / rho.sum(axis=1, keepdims=True)
    from nestedatoms._steps import GLOBAL_BLOCKS

    for _, update in GLOBAL_BLOCKS:
        update(be, prob, st)
    res = lb.labelling_bound(be, prob, st)
    assert res.n_occupied == 3 and res.n_orders == 6
    comps = []
    for order in res.orders:
        perm = np.arange(4)
        perm[res.occupied] = res.occupied[order]
        comps.append(_explicit_relabelled_state(be, prob, st, perm))
    brute = np.array([[_brute_log_bc(prob, a, b) for b in comps] for a in comps])
    np.testing.assert_allclose(res.log_bc, brute, atol=1e-8)
    assert np.all(brute[~np.eye(6, dtype=bool)] < -1e-3)       # every factor matters here
    assert res.elbo <= res.value < logsumexp(res.elbos)


@pytest.mark.parametrize("K,fixed", [(2, False), (3, False), (3, True), (4, False)])
def test_elbo_of_every_order_by_brute_force(be, K, fixed):
    prob, labels, cl = _separated_problem(K=K, J=6 if K < 4 else 7, cells=3, fixed=fixed,
                                          sizes=[3, 2, 1] if K == 3 else None)
    st = _converged(be, prob, cl, labels % K if K < 4 else np.minimum(labels, 2))
    res = lb.labelling_bound(be, prob, st)
    m = res.n_occupied
    assert m == min(K, 3) and res.n_orders == math.factorial(m) and res.exhaustive
    seen = set()
    for order, e in zip(res.orders, res.elbos):
        perm = np.arange(K)
        perm[res.occupied] = res.occupied[order]
        seen.add(tuple(perm))
        assert e == pytest.approx(_explicit_relabelled_elbo(be, prob, st, perm), abs=1e-7)
    assert len(seen) == math.factorial(m)
    # the order matters (the stick-breaking prior is not exchangeable): unequal sizes give
    # unequal ELBO_sigma
    if K == 3:
        assert np.ptp(res.elbos) > 0.1


# ---------------------------------------------------------------------------------------------
# Closed-form Bhattacharyya coefficients against integration
# ---------------------------------------------------------------------------------------------
def test_bc_beta_gamma_categorical_by_quadrature():
    for a1, b1, a2, b2 in [(2.0, 3.0, 2.5, 1.5), (1.0, 7.0, 30.0, 2.0), (5.0, 5.0, 5.0, 5.0)]:
        num = integrate.quad(lambda x: np.sqrt(stats.beta.pdf(x, a1, b1)
                                               * stats.beta.pdf(x, a2, b2)), 0, 1,
                             limit=200)[0]
        assert lb.log_bc_beta(a1, b1, a2, b2) == pytest.approx(np.log(num), abs=1e-7)
    for s1, r1, s2, r2 in [(2.0, 3.0, 4.0, 1.5), (0.7, 0.2, 12.0, 5.0)]:
        num = integrate.quad(lambda x: np.sqrt(stats.gamma.pdf(x, s1, scale=1 / r1)
                                               * stats.gamma.pdf(x, s2, scale=1 / r2)),
                             0, np.inf, limit=200)[0]
        assert lb.log_bc_gamma(s1, r1, s2, r2) == pytest.approx(np.log(num), abs=1e-6)
    p, q = np.array([0.2, 0.5, 0.3]), np.array([0.6, 0.1, 0.3])
    assert lb.log_bc_categorical(p, q) == pytest.approx(np.log(np.sum(np.sqrt(p * q))))


def _nw_logpdf(mu, Lam, m, lam, W, nu):
    D = m.size
    return (stats.multivariate_normal.logpdf(mu, m, np.linalg.inv(lam * Lam))
            + stats.wishart.logpdf(Lam, df=nu, scale=W) if D > 1 else
            stats.norm.logpdf(mu[0], m[0], 1 / np.sqrt(lam * Lam[0, 0]))
            + stats.gamma.logpdf(Lam[0, 0], nu / 2, scale=2 * W[0, 0]))


def _nw_logpdf_many(mu, Lam, m, lam, W, nu):
    """log NW(mu, Lam | m, lam, W, nu) for stacks mu (n, D), Lam (n, D, D)."""
    D = m.size
    _, logdet = np.linalg.slogdet(Lam)
    dm = mu - m
    quad = np.einsum("nd,nde,ne->n", dm, Lam, dm)
    log_bw = (-0.5 * nu * np.linalg.slogdet(W)[1] - 0.5 * nu * D * np.log(2)
              - multigammaln(nu / 2, D))
    return (0.5 * D * np.log(lam / (2 * np.pi)) + 0.5 * logdet - 0.5 * lam * quad
            + log_bw + 0.5 * (nu - D - 1) * logdet
            - 0.5 * np.einsum("de,ned->n", np.linalg.inv(W), Lam))


def test_nw_logpdf_helper_against_scipy():
    m, lam, W, nu = np.array([0.0, 1.0]), 3.0, np.array([[0.6, 0.1], [0.1, 0.3]]), 8.0
    mu, Lam = np.array([0.3, 0.5]), np.array([[2.0, 0.3], [0.3, 1.5]])
    assert _nw_logpdf_many(mu[None], Lam[None], m, lam, W, nu)[0] == pytest.approx(
        _nw_logpdf(mu, Lam, m, lam, W, nu))


def test_bc_normal_wishart_by_quadrature_in_1d():
    # D = 1: integrate sqrt(p1 p2) over (mu, Lambda) on a fine grid (Simpson)
    a = (np.array([0.3]), 4.0, np.array([[0.5]]), 7.0)
    b = (np.array([1.1]), 9.0, np.array([[0.2]]), 12.0)
    mu = np.linspace(-4.0, 6.0, 1201)
    lam_ = np.linspace(1e-6, 30.0, 1201)
    MU, LA = np.meshgrid(mu, lam_, indexing="ij")
    M, Lm = MU.reshape(-1, 1), LA.reshape(-1, 1, 1)
    f = np.exp(0.5 * (_nw_logpdf_many(M, Lm, *a) + _nw_logpdf_many(M, Lm, *b)))
    num = integrate.simpson(integrate.simpson(f.reshape(MU.shape), x=lam_, axis=1), x=mu)
    assert lb.log_bc_normal_wishart(*a, *b) == pytest.approx(np.log(num), abs=1e-6)
    assert lb.log_bc_normal_wishart(*a, *a) == pytest.approx(0.0, abs=1e-12)


def test_bc_normal_wishart_by_monte_carlo_in_2d():
    rng = np.random.default_rng(1)
    a = (np.array([0.0, 1.0]), 3.0, np.array([[0.6, 0.1], [0.1, 0.3]]), 8.0)
    b = (np.array([0.4, 0.7]), 5.0, np.array([[0.4, -0.05], [-0.05, 0.5]]), 10.0)
    n = 200000
    Lams = stats.wishart.rvs(df=a[3], scale=a[2], size=n, random_state=rng)
    chol = np.linalg.cholesky(np.linalg.inv(a[1] * Lams))
    mus = a[0] + np.einsum("nde,ne->nd", chol, rng.standard_normal((n, 2)))
    logr = 0.5 * (_nw_logpdf_many(mus, Lams, *b) - _nw_logpdf_many(mus, Lams, *a))
    # BC = E_a sqrt(p_b / p_a)
    est = logsumexp(logr) - np.log(n)
    se = np.std(np.exp(logr - est)) / np.sqrt(n)
    assert lb.log_bc_normal_wishart(*a, *b) == pytest.approx(est, abs=5 * se + 1e-4)
    assert se < 0.01


# ---------------------------------------------------------------------------------------------
# (2a) the Kolchinsky-Tracey bound against the numerical entropy of small mixtures
# ---------------------------------------------------------------------------------------------
def test_mixture_entropy_bound_against_numerical_entropy():
    rng = np.random.default_rng(3)
    for trial in range(6):
        n = 3
        cats = rng.dirichlet(np.full(3, 0.3 if trial % 2 else 3.0), size=n)
        ab = rng.uniform(0.8, 12.0 if trial < 3 else 3.0, size=(n, 2))
        w = rng.dirichlet(np.ones(n))

        def mix(c, x):
            return sum(w[i] * cats[i, c] * stats.beta.pdf(x, *ab[i]) for i in range(n))

        H = 0.0
        for c in range(3):
            H -= integrate.quad(lambda x: (lambda p: p * np.log(p) if p > 0 else 0.0)(
                mix(c, x)), 0, 1, limit=400)[0]
        Hi = np.array([stats.beta(*ab[i]).entropy() + stats.entropy(cats[i])
                       for i in range(n)])
        log_bc = np.array([[lb.log_bc_categorical(cats[i], cats[j])
                            + lb.log_bc_beta(*ab[i], *ab[j]) for j in range(n)]
                           for i in range(n)])
        bound = lb.mixture_entropy_bound(w, Hi, log_bc)
        assert bound <= H + 1e-7
        assert bound >= w @ Hi - 1e-12            # never below the average (BC <= 1)
        # the bound without the overlaps (Hi + mixing entropy) is an upper bound instead
        assert H <= w @ Hi + stats.entropy(w) + 1e-7


# ---------------------------------------------------------------------------------------------
# (2b) the bound <= log p(X, Y), enumerated exactly on tiny problems
# ---------------------------------------------------------------------------------------------
def _nw_log_marginal(Z, m0, lam0, W0inv, nu0):
    n, D = Z.shape
    if n == 0:
        return 0.0
    zbar = Z.mean(axis=0)
    C = (Z - zbar).T @ (Z - zbar)
    Tn = W0inv + C + lam0 * n / (lam0 + n) * np.outer(zbar - m0, zbar - m0)
    return float(-0.5 * n * D * np.log(np.pi) + multigammaln((nu0 + n) / 2, D)
                 - multigammaln(nu0 / 2, D) + 0.5 * nu0 * np.linalg.slogdet(W0inv)[1]
                 - 0.5 * (nu0 + n) * np.linalg.slogdet(Tn)[1]
                 + 0.5 * D * np.log(lam0 / (lam0 + n)))


def test_nw_log_marginal_by_candidate_formula():
    # p(Z) = p(Z | theta) p(theta) / p(theta | Z) at any theta
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((4, 2))
    m0, lam0, W0inv, nu0 = np.zeros(2), 0.5, np.eye(2) * 2.0, 5.0
    n = 4
    zbar = Z.mean(0)
    C = (Z - zbar).T @ (Z - zbar)
    Wn = np.linalg.inv(W0inv + C + lam0 * n / (lam0 + n) * np.outer(zbar - m0, zbar - m0))
    mn = (lam0 * m0 + n * zbar) / (lam0 + n)
    mu, Lam = np.array([0.2, -0.1]), np.array([[1.5, 0.2], [0.2, 0.8]])
    lhs = (stats.multivariate_normal.logpdf(Z, mu, np.linalg.inv(Lam)).sum()
           + _nw_logpdf(mu, Lam, m0, lam0, np.linalg.inv(W0inv), nu0)
           - _nw_logpdf(mu, Lam, mn, lam0 + n, Wn, nu0 + n))
    assert _nw_log_marginal(Z, m0, lam0, W0inv, nu0) == pytest.approx(lhs, abs=1e-9)


def _log_sticks_marginal(counts, conc):
    """log E prod_g w_g^{counts_g} under truncated stick-breaking, columns independent."""
    counts = np.asarray(counts, float)
    tail = np.cumsum(counts[::-1], axis=0)[::-1]
    return np.sum(betaln(1.0 + counts[:-1], conc + tail[1:]) - betaln(1.0, conc), axis=0)


def exact_log_evidence(prob):
    """log p(X, Y) by enumerating every (S, M), atoms and sticks integrated (fixed concs)."""
    alpha, beta = prob.alpha_prior.fixed, prob.beta_prior.fixed
    assert alpha is not None and beta is not None
    K, L = prob.K, prob.L
    X, Y, off = prob.X, prob.Y, prob.offsets
    J, N = prob.data.n_groups, prob.data.n_cells
    px, py = prob.x_prior, prob.y_prior
    cell_group = np.repeat(np.arange(J), np.diff(off))
    Ms = np.array(list(itertools.product(range(L), repeat=N)))
    ylog = np.array([sum(_nw_log_marginal(Y[M == l], py.m0, py.lam0, py.W0inv, py.nu0)
                         for l in range(L)) for M in Ms])
    Njl = np.zeros((len(Ms), J, L))
    for i, M in enumerate(Ms):
        np.add.at(Njl[i], (cell_group, M), 1.0)
    total = []
    for S in itertools.product(range(K), repeat=J):
        S = np.array(S)
        R = np.bincount(S, minlength=K)[:, None]
        lp = _log_sticks_marginal(R, alpha)[0]
        lp += sum(_nw_log_marginal(X[S == k], px.m0, px.lam0, px.W0inv, px.nu0)
                  for k in range(K))
        onehot = np.eye(K)[S]                                       # (J, K)
        Q = np.einsum("njl,jk->nlk", Njl, onehot)                  # (nM, L, K)
        lm = np.array([_log_sticks_marginal(q, beta).sum() for q in Q])
        total.append(lp + logsumexp(lm + ylog))
    return float(logsumexp(total))


def _tiny(kind, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "separated":         # three far apart x, two cell types
        X = np.array([[-15.0], [0.0], [15.0]]) + 0.1 * rng.standard_normal((3, 1))
        Y = np.array([[-4.0], [4.0]] * 3) + 0.3 * rng.standard_normal((6, 1))
        K = 3
    elif kind == "overlapping":     # three nearly equal individuals
        X = 0.2 * rng.standard_normal((3, 1))
        Y = np.array([[-4.0], [4.0]] * 3) + 0.3 * rng.standard_normal((6, 1))
        K = 3
    else:                           # two far apart pairs... of which one is a singleton
        X = np.array([[-10.0], [-10.3], [10.0]]) + 0.1 * rng.standard_normal((3, 1))
        Y = np.array([[-4.0], [4.0], [-4.0], [4.0], [4.0], [4.1]]) + 0.3 * rng.standard_normal((6, 1))
        K = 2
    groups = np.repeat(np.arange(3), 2)
    return _problem(Y, groups, X, K=K, L=2)


@pytest.mark.parametrize("kind", ["separated", "overlapping", "pairs"])
def test_bound_below_exact_log_evidence(be, kind):
    prob = _tiny(kind)
    logp = exact_log_evidence(prob)
    cells = np.tile([0, 1], 3)
    worst_gap, best_bonus = np.inf, 0.0
    for S in itertools.product(range(prob.K), repeat=3):
        st = _converged(be, prob, cells, np.array(S))
        res = lb.labelling_bound(be, prob, st)
        assert res.elbo <= logp + 1e-8
        assert res.value <= logp + 1e-8, (kind, S, res.value, logp)
        assert res.value >= res.elbo - 1e-10
        worst_gap = min(worst_gap, logp - res.value)
        best_bonus = max(best_bonus, res.bonus)
    if kind == "separated":
        # tight enough that the check can fail: the bound comes within log 2 + 0.01 nats of
        # log p, and earns most of log 3!.  The log 2 left is the labelling of the two cell
        # atoms, which this bound does not permute (SPEC 6b is about individual clusters)
        assert worst_gap < np.log(2) + 0.01
        assert best_bonus > 0.8 * np.log(6)


def test_mixture_entropy_bound_on_random_discrete_mixtures():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        n, d = rng.integers(2, 6), rng.integers(2, 8)
        P = rng.dirichlet(np.full(d, rng.choice([0.1, 1.0, 10.0])), size=n)
        w = rng.dirichlet(np.full(n, rng.choice([0.2, 1.0, 5.0])))
        H = stats.entropy(w @ P)
        Hi = np.array([stats.entropy(q) for q in P])
        log_bc = lb.log_bc_categorical(P[:, None, :], P[None, :, :])
        assert lb.mixture_entropy_bound(w, Hi, log_bc) <= H + 1e-12


def test_overlap_terms_are_needed():
    """Without the overlap terms (BC = 0 between components) the entropy 'bound' is
    sum w_i H_i + H(w), which is an upper bound: for overlapping components it exceeds the
    true entropy of the mixture, so a bound on log p built on it would not be one."""
    w = np.array([0.5, 0.5])
    ab = np.array([[3.0, 4.0], [3.3, 3.8]])
    cats = np.array([[0.5, 0.5], [0.55, 0.45]])

    def mix(c, x):
        return sum(w[i] * cats[i, c] * stats.beta.pdf(x, *ab[i]) for i in range(2))

    H = -sum(integrate.quad(lambda x: mix(c, x) * np.log(mix(c, x)), 0, 1, limit=200)[0]
             for c in range(2))
    Hi = np.array([stats.beta(*ab[i]).entropy() + stats.entropy(cats[i]) for i in range(2)])
    log_bc = np.array([[lb.log_bc_categorical(cats[i], cats[j]) + lb.log_bc_beta(*ab[i], *ab[j])
                        for j in range(2)] for i in range(2)])
    assert w @ Hi + np.log(2) > H + 0.5                     # the naive bonus: invalid
    assert lb.mixture_entropy_bound(w, Hi, log_bc) <= H + 1e-9
    assert lb.mixture_entropy_bound(w, Hi, log_bc) < w @ Hi + 0.01   # ~ no bonus


def test_soft_clusters_earn_less_than_separated_ones(be):
    """Two clusters sharing every individual softly: the bonus grows from 0 (rho rows equal,
    components identical) towards log 2 as the rows harden, and stays below the bound
    without overlaps (logsumexp ELBO_sigma), and below the exact log evidence."""
    from nestedatoms._steps import GLOBAL_BLOCKS

    prob = _tiny("overlapping")
    prob = _problem(prob.data.Y, np.repeat(np.arange(3), 2), prob.data.X, K=2, L=2,
                    group_concentration=1.0)
    logp = exact_log_evidence(prob)
    bonuses = []
    for r in (0.5, 0.6, 0.7, 0.8):      # R_2 = 3 (1 - r) >= 0.5: both occupied
        st = _converged(be, prob, np.tile([0, 1], 3), np.zeros(3, int))
        st.rho = np.tile([r, 1 - r], (3, 1))
        st.H_rho = float(-3 * (r * np.log(r) + (1 - r) * np.log(1 - r)))
        for _, update in GLOBAL_BLOCKS:
            update(be, prob, st)
        res = lb.labelling_bound(be, prob, st)
        assert res.n_orders == 2 and res.value <= logp
        if r > 0.5:
            assert res.value < logsumexp(res.elbos) - 1e-3
        bonuses.append(res.bonus)
    assert bonuses[0] == pytest.approx(0.0, abs=1e-9)
    assert np.all(np.diff(bonuses) > 0) and bonuses[-1] < np.log(2)


# ---------------------------------------------------------------------------------------------
# (3) identical components earn nothing; well separated ones earn log m!
# ---------------------------------------------------------------------------------------------
def test_identical_components_earn_nothing(be):
    prob, labels, cl = _separated_problem(K=3, J=6, cells=3)
    st = _converged(be, prob, cl, labels)
    # make the three occupied clusters identical: equal rho columns, u columns and x atoms
    st.rho = np.full_like(st.rho, 1.0 / 3)
    st.H_rho = float(prob.data.n_groups * np.log(3))
    for name in ("u_a", "u_b"):
        arr = getattr(st, name)
        arr[:] = arr.mean(axis=1, keepdims=True)
    for name in ("mx", "lamx", "Wx", "nux"):
        arr = getattr(st, name)
        arr[:] = arr.mean(axis=0, keepdims=True)
    update_group_sticks(be, prob, st)
    res = lb.labelling_bound(be, prob, st)
    assert res.n_orders == 6
    np.testing.assert_allclose(res.log_bc, 0.0, atol=1e-10)
    assert res.value == pytest.approx(res.elbo, abs=1e-8)


@pytest.mark.parametrize("fixed", [True, False])
def test_separated_equal_clusters_earn_log_m_factorial(be, fixed):
    prob, labels, cl = _separated_problem(K=3, J=6, cells=3, fixed=fixed)   # sizes 2, 2, 2
    st = _converged(be, prob, cl, labels)
    res = lb.labelling_bound(be, prob, st)
    assert res.log_m_factorial == pytest.approx(np.log(6))
    assert np.all(res.log_bc[~np.eye(6, dtype=bool)] < -30)
    assert np.ptp(res.elbos) < 1e-6                  # equal sizes: every order as good
    assert res.value == pytest.approx(res.elbo + np.log(6), abs=1e-6)
    np.testing.assert_allclose(res.weights, 1.0 / 6, atol=1e-6)


@pytest.mark.parametrize("fixed", [True, False])
def test_unequal_separated_clusters_earn_logsumexp(be, fixed):
    # a spare (empty) cluster: with m < K, largest first is the best order; with m = K the
    # last cluster has no stick of its own (v_K = 1) and other orders can do better
    prob, labels, cl = _separated_problem(K=4, J=6, cells=3, sizes=[3, 2, 1], fixed=fixed)
    st = _converged(be, prob, cl, labels)
    res = lb.labelling_bound(be, prob, st)
    assert res.n_occupied == 3
    assert res.elbos[0] == pytest.approx(res.elbos.max())
    assert np.ptp(res.elbos) > 0.1
    assert res.value == pytest.approx(logsumexp(res.elbos), abs=1e-6)
    assert res.elbo < res.value < res.elbo + np.log(6)


# ---------------------------------------------------------------------------------------------
# (4) never below the single-labelling ELBO; the weights; subsets; the model helper
# ---------------------------------------------------------------------------------------------
def test_never_below_elbo_on_random_states(be):
    rng = np.random.default_rng(5)
    prob, labels, cl = _separated_problem(K=4, J=8, cells=3, fixed=False)
    for _ in range(5):
        st = state_from_labels(be, prob, rng.integers(2, size=cl.size),
                               rng.integers(4, size=labels.size))
        st = run_cavi(be, prob, st, max_iter=3, tol=0.0).state
        before = st.copy()
        res = lb.labelling_bound(be, prob, st)
        for name, value in vars(before).items():          # the state is left as it was
            np.testing.assert_array_equal(getattr(st, name), value)
        assert res.value >= res.elbo - 1e-10
        assert np.all(res.log_bc <= 1e-12)
        assert res.weights.sum() == pytest.approx(1.0) and np.all(res.weights >= 0)


def test_optimise_weights_beats_simple_choices():
    rng = np.random.default_rng(2)
    for _ in range(5):
        n = 6
        E = rng.normal(0, 1.5, n)
        A = rng.normal(size=(n, 3))
        d2 = ((A[:, None] - A[None]) ** 2).sum(-1)
        log_bc = -d2
        w, val = lb.optimise_weights(E, log_bc)
        for cand in (np.eye(n)[0], np.full(n, 1 / n), rng.dirichlet(np.ones(n), 20)):
            for c in np.atleast_2d(cand):
                assert val >= c @ E - lb._overlap(c, log_bc) - 1e-9
        assert val == pytest.approx(w @ E - lb._overlap(w, log_bc))


def test_subset_of_orders():
    orders, exhaustive = lb.candidate_orders(7, max_orders=720)
    assert not exhaustive and orders.shape[1] == 7
    assert len({tuple(o) for o in orders}) == len(orders) == 1 + 21 + 70
    assert np.array_equal(orders[0], np.arange(7))
    for o in orders:
        assert sorted(o) == list(range(7))
    orders, exhaustive = lb.candidate_orders(4, max_orders=10)
    assert not exhaustive and len(orders) == 10


def test_labelling_bound_of_a_fitted_model():
    sim = na.simulate(n_groups=6, cells_per_group=20, random_state=0)
    model = na.NestedAtomsModel(n_group_clusters=4, n_cell_clusters=4, n_init=1,
                                backend="numpy", random_state=0).fit(sim.Y, sim.groups, sim.X)
    res = lb.labelling_bound_of(model)
    assert res.elbo == pytest.approx(elbo(get_backend("numpy"), model.problem_, model.state_))
    assert res.value >= res.elbo
    assert res.n_orders == math.factorial(res.n_occupied)


@pytest.mark.parametrize("kind", ["flat", "cam"])
def test_degenerate_cases(be, kind):
    """K = 1 (one order: the bound is the ELBO), no x (CAM), and no occupied cluster."""
    from conftest import make_problem

    prob = make_problem(kind, K=3)
    groups = np.zeros(prob.data.n_groups, int) if kind == "flat" else \
        np.arange(prob.data.n_groups) % 2
    st = _converged(be, prob, np.arange(prob.data.n_cells) % prob.L, groups)
    res = lb.labelling_bound(be, prob, st)
    assert res.value >= res.elbo - 1e-10
    if kind == "flat":
        assert res.n_orders == 1 and res.value == pytest.approx(res.elbo, abs=1e-6)
    if kind == "cam":
        assert res.n_occupied >= 1 and res.n_orders == math.factorial(res.n_occupied)
    # no occupied cluster at all (every R_k <= 1/2): one (empty) order
    res0 = lb.labelling_bound(be, prob, st, min_occupancy=1e9)
    assert res0.n_occupied == 0 and res0.n_orders == 1
    assert res0.value >= res0.elbo - 1e-10


def test_estimator_method_reports_the_bound():
    import nestedatoms as na

    sim = na.simulate(random_state=0)
    m = na.NestedAtomsModel(random_state=0, n_init=1).fit(sim.Y, sim.groups, sim.X)
    b = m.labelling_bound()
    assert b.value >= m.elbo_ - 1e-9 * abs(m.elbo_)
    assert b.elbo == pytest.approx(m.elbo_, rel=1e-12)
    assert 0.0 < b.bonus <= np.log(6) + 1e-9      # 3 separated clusters: at most log 3!
