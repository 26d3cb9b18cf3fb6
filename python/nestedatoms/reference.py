"""Pure-NumPy reference backend: every step of model sections 4-6, written to be read.

This module is the oracle the C++ core (``nestedatoms._core``) is tested against and the
baseline it is benchmarked against.  Both backends expose the same functions with the same
arguments and the same results; the fitting loop (``_fit.py``) only ever calls them through a
backend object, so either can drive a fit.

Conventions shared by both backends
-----------------------------------
* All arrays are float64 and C-contiguous (the data layer guarantees it).
* Cells are sorted by group; ``offsets`` (J + 1,) int64 delimits group j's cells as
  ``offsets[j]:offsets[j + 1]`` (every group has at least one cell).
* Weighted sufficient statistics are kept about a fixed ``centre`` (the data mean) for
  numerical stability: ``n[g] = sum_i w_ig``, ``s1[g] = sum_i w_ig (z_i - c)``,
  ``s2[g] = sum_i w_ig (z_i - c)(z_i - c)'``.
* Stick parameters are stored as (G - 1, C) arrays: column c holds the G - 1 free sticks of
  the c-th stick-breaking process (C = 1 for the group weights pi, C = K for the cell weights
  omega_.k).  The last stick is fixed at 1 and has no parameters.
* Normal-Wishart factors are (m (G, D), lam (G,), W (G, D, D), nu (G,)) with
  E[Lambda] = nu W.  Priors are (m0 (D,), lam0, W0inv (D, D), nu0).
"""

from __future__ import annotations

import numpy as np
from scipy import special as _sp
from scipy.special import betaln, entr, gammaln, logsumexp

NAME = "numpy"
LOG_2PI = np.log(2.0 * np.pi)


# --------------------------------------------------------------------------------------------
# Special functions (model section 7)
# --------------------------------------------------------------------------------------------
def digamma(x):
    """Digamma psi(x), elementwise."""
    return _sp.digamma(np.asarray(x, dtype=np.float64))


def lgamma(x):
    """log Gamma(x), elementwise."""
    return gammaln(np.asarray(x, dtype=np.float64))


def _g(a, b):
    """g(a, b) = psi(a) - psi(a + b) = E log v for v ~ Beta(a, b)."""
    return digamma(a) - digamma(a + b)


# --------------------------------------------------------------------------------------------
# Stick-breaking weights (model section 4, 5.3-5.6)
# --------------------------------------------------------------------------------------------
def expected_log_stick_weights(a, b):
    """E log of stick-breaking weights: (G - 1, C) Beta parameters -> (G, C).

    E log w_g = [g < G] g(a_g, b_g) + sum_{t < g} g(b_t, a_t), the last stick being 1.
    """
    G = a.shape[0] + 1
    out = np.zeros((G, a.shape[1]))
    out[:-1] += _g(a, b)
    out[1:] += np.cumsum(_g(b, a), axis=0)
    return out


def update_sticks(counts, concentration):
    """Beta posteriors of the free sticks from expected counts (G, C).

    a_g = 1 + counts_g, b_g = concentration + sum_{t > g} counts_t, for g < G.
    """
    tail = np.cumsum(counts[::-1], axis=0)[::-1]  # tail[g] = sum_{t >= g} counts_t
    a = 1.0 + counts[:-1]
    b = concentration + tail[1:]
    return np.ascontiguousarray(a), np.ascontiguousarray(b)


def update_concentration(prior_shape, prior_rate, a, b):
    """Gamma posterior (shape, rate) of a DP concentration from its sticks' Beta factors."""
    return prior_shape + a.size, prior_rate - float(np.sum(_g(b, a)))


def stick_prior_term(a, b, e_conc, elog_conc):
    """E log p(sticks | concentration) = n log-conc + (E conc - 1) sum g(b, a)."""
    return a.size * elog_conc + (e_conc - 1.0) * float(np.sum(_g(b, a)))


def beta_entropy(a, b):
    """Sum of the entropies of Beta(a, b) factors."""
    return float(np.sum(betaln(a, b) - (a - 1.0) * _g(a, b) - (b - 1.0) * _g(b, a)))


def gamma_expectations(shape, rate):
    """(E x, E log x) for x ~ Gamma(shape, rate)."""
    return shape / rate, float(digamma(shape)) - np.log(rate)


def gamma_prior_term(prior_shape, prior_rate, shape, rate):
    """E_q log Gamma(x | prior_shape, prior_rate) for q = Gamma(shape, rate)."""
    e, elog = gamma_expectations(shape, rate)
    return (prior_shape * np.log(prior_rate) - gammaln(prior_shape)
            + (prior_shape - 1.0) * elog - prior_rate * e)


def gamma_entropy(shape, rate):
    """Entropy of Gamma(shape, rate)."""
    _, elog = gamma_expectations(shape, rate)
    return -(shape * np.log(rate) - gammaln(shape) + (shape - 1.0) * elog - shape)


def categorical_entropy(r):
    """-sum r log r with 0 log 0 = 0."""
    return float(np.sum(entr(r)))


# --------------------------------------------------------------------------------------------
# Normal-Wishart factors (model section 4, 5.7, 6)
# --------------------------------------------------------------------------------------------
def _logdet_spd(A):
    """log|A| of symmetric positive-definite matrices (..., D, D), through Cholesky."""
    Lc = np.linalg.cholesky(A)
    return 2.0 * np.sum(np.log(np.diagonal(Lc, axis1=-2, axis2=-1)), axis=-1)


def expected_logdet(W, nu):
    """E log|Lambda| for Lambda ~ Wishart(W, nu), per atom: (G,)."""
    D = W.shape[-1]
    d = np.arange(1, D + 1)
    return (np.sum(digamma((nu[:, None] + 1.0 - d) / 2.0), axis=1)
            + D * np.log(2.0) + _logdet_spd(W))


def log_wishart_norm(W, nu):
    """log B_W(W, nu), per atom."""
    D = W.shape[-1]
    d = np.arange(1, D + 1)
    return (-0.5 * nu * _logdet_spd(W) - 0.5 * nu * D * np.log(2.0)
            - 0.25 * D * (D - 1) * np.log(np.pi)
            - np.sum(gammaln((nu[:, None] + 1.0 - d) / 2.0), axis=1))


def expected_loglik(Z, m, lam, W, nu):
    """ell_g(z) = E log N(z | mu_g, Lambda_g^-1) for every row of Z and atom g: (n, G)."""
    n, D = Z.shape
    G = m.shape[0]
    elogdet = expected_logdet(W, nu)
    out = np.empty((n, G))
    for g in range(G):
        U = np.linalg.cholesky(W[g])  # W = U U', so (z - m)' W (z - m) = |(z - m) U|^2
        quad = np.sum(((Z - m[g]) @ U) ** 2, axis=1)
        out[:, g] = 0.5 * elogdet[g] - 0.5 * D * LOG_2PI - 0.5 * (D / lam[g] + nu[g] * quad)
    return out


def weighted_stats(Z, w, centre):
    """Weighted sufficient statistics (n (G,), s1 (G, D), s2 (G, D, D)) about ``centre``."""
    Zc = Z - centre
    n = w.sum(axis=0)
    s1 = w.T @ Zc
    s2 = np.einsum("ig,id,ie->gde", w, Zc, Zc)
    return n, s1, s2


def nw_posterior(n, s1, s2, centre, m0, lam0, W0inv, nu0):
    """Normal-Wishart posteriors from weighted statistics (Bishop PRML 10.60-10.63).

    A cluster with n = 0 gets exactly the prior.
    """
    G, D = s1.shape
    m = np.empty((G, D))
    lam = np.empty(G)
    W = np.empty((G, D, D))
    nu = np.empty(G)
    W0 = np.linalg.inv(W0inv)
    for g in range(G):
        if n[g] <= 0.0:
            m[g], lam[g], W[g], nu[g] = m0, lam0, W0, nu0
            continue
        xbar_c = s1[g] / n[g]                      # weighted mean, centred
        C = s2[g] - np.outer(s1[g], xbar_c)        # scatter about the weighted mean
        diff = xbar_c - (m0 - centre)
        Winv = W0inv + C + (lam0 * n[g] / (lam0 + n[g])) * np.outer(diff, diff)
        lam[g] = lam0 + n[g]
        m[g] = centre + (lam0 * (m0 - centre) + s1[g]) / lam[g]
        nu[g] = nu0 + n[g]
        Wg = np.linalg.inv(0.5 * (Winv + Winv.T))
        W[g] = 0.5 * (Wg + Wg.T)
    return m, lam, W, nu


def nw_loglik_from_stats(n, s1, s2, centre, m, lam, W, nu):
    """E log p(Z | assignments, theta) summed over atoms, from weighted statistics.

    Per atom: 1/2 [n (E log|Lambda| - D/lam - D log 2 pi) - nu sum_i w_i (z_i - m)' W (z_i - m)],
    with sum_i w_i (z_i - m)' W (z_i - m) = tr(s2 W) - 2 s1' W mc + n mc' W mc, mc = m - centre.
    This equals the model's n [tr(S W) + (xbar - m)' W (xbar - m)] without dividing by n.
    """
    D = m.shape[1]
    elogdet = expected_logdet(W, nu)
    total = 0.0
    for g in range(m.shape[0]):
        mc = m[g] - centre
        quad = (np.sum(s2[g] * W[g]) - 2.0 * s1[g] @ W[g] @ mc + n[g] * mc @ W[g] @ mc)
        total += 0.5 * (n[g] * (elogdet[g] - D / lam[g] - D * LOG_2PI) - nu[g] * quad)
    return float(total)


def nw_prior_term(m, lam, W, nu, m0, lam0, W0inv, nu0):
    """E_q log p(theta) summed over atoms (model section 6)."""
    G, D = m.shape
    elogdet = expected_logdet(W, nu)
    log_b0 = log_wishart_norm(np.linalg.inv(W0inv)[None], np.array([nu0]))[0]
    total = 0.0
    for g in range(G):
        dm = m[g] - m0
        total += (0.5 * (D * np.log(lam0 / (2.0 * np.pi)) + elogdet[g] - D * lam0 / lam[g]
                         - lam0 * nu[g] * dm @ W[g] @ dm)
                  + log_b0 + 0.5 * (nu0 - D - 1.0) * elogdet[g]
                  - 0.5 * nu[g] * np.sum(W0inv * W[g]))
    return float(total)


def nw_entropy(m, lam, W, nu):
    """Entropy of the Normal-Wishart factors, summed over atoms (model section 6)."""
    D = m.shape[1]
    elogdet = expected_logdet(W, nu)
    h_wishart = -log_wishart_norm(W, nu) - 0.5 * (nu - D - 1.0) * elogdet + 0.5 * nu * D
    return float(np.sum(-0.5 * elogdet - 0.5 * D * np.log(lam / (2.0 * np.pi))
                        + 0.5 * D + h_wishart))


def nw_scores(n, s1, s2, centre, m0, lam0, W0inv, nu0):
    """Per atom: the NW part of the ELBO (loglik + prior term + entropy) at the atom's posterior
    given its statistics, (G,)."""
    out = np.empty(n.shape[0])
    for g in range(n.shape[0]):
        stats = (n[g:g + 1], s1[g:g + 1], s2[g:g + 1])
        q = nw_posterior(*stats, centre, m0, lam0, W0inv, nu0)
        out[g] = (nw_loglik_from_stats(*stats, centre, *q)
                  + nw_prior_term(*q, m0, lam0, W0inv, nu0) + nw_entropy(*q))
    return out


# --------------------------------------------------------------------------------------------
# Diagonal atoms: Normal-Gamma per dimension (docs/diag.md)
# --------------------------------------------------------------------------------------------
# A diagonal atom is D independent one-dimensional Normal-Wishart factors that share lam and
# nu: tau_d ~ Gamma(nu / 2, rate 1 / (2 W_d)), mu_d | tau_d ~ N(m_d, (lam tau_d)^-1), stored
# as m (G, D), lam (G,), W (G, D), nu (G,), so that E[tau_d] = nu W_d as E[Lambda] = nu W.
# A prior is (m0 (D,), lam0, W0inv (D,), nu0): a0 = nu0 / 2, b0_d = W0inv_d / 2.  Weighted
# statistics keep the diagonal of s2 only: s2[g, d] = sum_i w_ig (z_id - c_d)^2.
def _diag_elog_tau(W, nu):
    """E log tau_gd = psi(nu_g / 2) + log 2 + log W_gd, (G, D)."""
    return digamma(0.5 * nu)[:, None] + np.log(2.0) + np.log(W)


def _log_gamma_norm(W, nu):
    """log B_W(W, nu) of one-dimensional Wisharts (Gammas) elementwise: -(nu/2) log(2 W) -
    lgamma(nu/2)."""
    return -0.5 * nu * np.log(2.0 * W) - gammaln(0.5 * nu)


def diag_expected_loglik(Z, m, lam, W, nu):
    """ell_g(z) = sum_d E log N(z_d | mu_gd, tau_gd^-1) for every row of Z and atom g: (n, G).

    Per dimension: 1/2 [E log tau - log 2 pi - 1/lam - nu W (z - m)^2].
    """
    n, D = Z.shape
    G = m.shape[0]
    elog = _diag_elog_tau(W, nu).sum(axis=1)
    out = np.empty((n, G))
    for g in range(G):
        quad = ((Z - m[g]) ** 2) @ (nu[g] * W[g])
        out[:, g] = 0.5 * elog[g] - 0.5 * D * LOG_2PI - 0.5 * (D / lam[g] + quad)
    return out


def diag_weighted_stats(Z, w, centre):
    """Weighted statistics (n (G,), s1 (G, D), s2 (G, D)) about ``centre``, s2 the diagonal
    sums of squares."""
    Zc = Z - centre
    return w.sum(axis=0), w.T @ Zc, w.T @ (Zc * Zc)


def diag_posterior(n, s1, s2, centre, m0, lam0, W0inv, nu0):
    """Normal-Gamma posteriors from weighted statistics, per dimension the conjugate update
    (Bishop PRML 10.60-10.63 with D = 1).  A cluster with n = 0 gets exactly the prior."""
    G, D = s1.shape
    m = np.empty((G, D))
    lam = np.empty(G)
    W = np.empty((G, D))
    nu = np.empty(G)
    for g in range(G):
        if n[g] <= 0.0:
            m[g], lam[g], W[g], nu[g] = m0, lam0, 1.0 / W0inv, nu0
            continue
        xbar_c = s1[g] / n[g]
        C = s2[g] - s1[g] * xbar_c                 # sum of squares about the weighted mean
        diff = xbar_c - (m0 - centre)
        Winv = W0inv + C + (lam0 * n[g] / (lam0 + n[g])) * diff * diff
        lam[g] = lam0 + n[g]
        m[g] = centre + (lam0 * (m0 - centre) + s1[g]) / lam[g]
        nu[g] = nu0 + n[g]
        W[g] = 1.0 / Winv
    return m, lam, W, nu


def diag_loglik_from_stats(n, s1, s2, centre, m, lam, W, nu):
    """E log p(Z | assignments, theta) summed over diagonal atoms, from weighted statistics:
    per atom 1/2 [n sum_d (E log tau_d - 1/lam - log 2 pi) - nu sum_d W_d (s2_d - 2 s1_d mc_d
    + n mc_d^2)], mc = m - centre."""
    D = m.shape[1]
    elog = _diag_elog_tau(W, nu).sum(axis=1)
    mc = m - centre
    quad = np.sum(W * (s2 - 2.0 * s1 * mc + n[:, None] * mc * mc), axis=1)
    return float(np.sum(0.5 * (n * (elog - D / lam - D * LOG_2PI) - nu * quad)))


def diag_prior_term(m, lam, W, nu, m0, lam0, W0inv, nu0):
    """E_q log p(theta) summed over diagonal atoms: the model's section 6 term with D = 1,
    summed over the dimensions."""
    elog = _diag_elog_tau(W, nu)
    log_b0 = _log_gamma_norm(1.0 / W0inv, nu0)                 # (D,)
    dm = m - m0
    per_dim = (0.5 * (np.log(lam0 / (2.0 * np.pi)) + elog - lam0 / lam[:, None]
                      - lam0 * nu[:, None] * W * dm * dm)
               + log_b0 + 0.5 * (nu0 - 2.0) * elog - 0.5 * nu[:, None] * W0inv * W)
    return float(per_dim.sum())


def diag_entropy(m, lam, W, nu):
    """Entropy of the Normal-Gamma factors, summed over atoms and dimensions."""
    elog = _diag_elog_tau(W, nu)
    nu = nu[:, None]
    h_gamma = -_log_gamma_norm(W, nu) - 0.5 * (nu - 2.0) * elog + 0.5 * nu
    return float(np.sum(-0.5 * elog - 0.5 * np.log(lam / (2.0 * np.pi))[:, None] + 0.5
                        + h_gamma))


def diag_scores(n, s1, s2, centre, m0, lam0, W0inv, nu0):
    """Per atom: the Normal-Gamma part of the ELBO (loglik + prior term + entropy) at the
    atom's posterior given its statistics, (G,)."""
    out = np.empty(n.shape[0])
    for g in range(n.shape[0]):
        stats = (n[g:g + 1], s1[g:g + 1], s2[g:g + 1])
        q = diag_posterior(*stats, centre, m0, lam0, W0inv, nu0)
        out[g] = (diag_loglik_from_stats(*stats, centre, *q)
                  + diag_prior_term(*q, m0, lam0, W0inv, nu0) + diag_entropy(*q))
    return out


# --------------------------------------------------------------------------------------------
# Local steps (model section 5.1, 5.2)
# --------------------------------------------------------------------------------------------
def cell_step(Y, offsets, rho, elog_omega, m, lam, W, nu, centre, xi_out, n_threads=1,
              group_weight=None):
    """Update q(M): xi_jil ∝ exp(ell_l(y_ji) + sum_k rho_jk E log omega_lk), written to xi_out.

    Returns the statistics that depend on xi: N_jl (J, L), the weighted y statistics
    (n, s1, s2) about ``centre`` and the entropy -sum xi log xi.  ``group_weight`` (J,),
    optional: each group's cells count with that weight in (n, s1, s2) and the entropy.
    """
    return _cell_step(_FULL, Y, offsets, rho, elog_omega, (m, lam, W, nu), centre, xi_out,
                      group_weight)


def diag_cell_step(Y, offsets, rho, elog_omega, m, lam, W, nu, centre, xi_out, n_threads=1,
                   group_weight=None):
    """``cell_step`` with diagonal atoms: s2 of the statistics is (L, p), the diagonal."""
    return _cell_step(_DIAG, Y, offsets, rho, elog_omega, (m, lam, W, nu), centre, xi_out,
                      group_weight)


def cell_step_rows(Y, offsets, rows, rho, elog_omega, m, lam, W, nu, centre, xi, n_threads=1,
                   group_weight=None):
    """The cell step of the given cells only (``rows``: increasing indices into Y), written
    into the full ``xi`` in place; returns the change it made, (dN_jl, dn, ds1, ds2, dH), to
    the statistics ``cell_step`` returns (dn, ds1, ds2 and dH weighted by ``group_weight``)."""
    return _cell_step_rows(_FULL, Y, offsets, rows, rho, elog_omega, (m, lam, W, nu), centre,
                           xi, group_weight)


def diag_cell_step_rows(Y, offsets, rows, rho, elog_omega, m, lam, W, nu, centre, xi,
                        n_threads=1, group_weight=None):
    """``cell_step_rows`` with diagonal atoms (ds2 is (L, p))."""
    return _cell_step_rows(_DIAG, Y, offsets, rows, rho, elog_omega, (m, lam, W, nu), centre,
                           xi, group_weight)


# The two atom families' log-likelihood and statistics, for the shared cell steps below.
_FULL = (expected_loglik, weighted_stats)
_DIAG = (diag_expected_loglik, diag_weighted_stats)


def _cell_step(family, Y, offsets, rho, elog_omega, atoms, centre, xi_out, group_weight):
    loglik, stats = family
    J = rho.shape[0]
    sizes = np.diff(offsets)
    logits = loglik(Y, *atoms)
    logits += np.repeat(rho @ elog_omega.T, sizes, axis=0)
    logits -= logsumexp(logits, axis=1, keepdims=True)
    xi_out[...] = np.exp(logits)
    N_jl = np.stack([xi_out[offsets[j]:offsets[j + 1]].sum(axis=0) for j in range(J)])
    if group_weight is None:
        n, s1, s2 = stats(Y, xi_out, centre)
        return N_jl, n, s1, s2, categorical_entropy(xi_out)
    w_cell = np.repeat(np.asarray(group_weight, dtype=np.float64), sizes)
    n, s1, s2 = stats(Y, xi_out * w_cell[:, None], centre)
    return N_jl, n, s1, s2, float(np.sum(w_cell[:, None] * entr(xi_out)))


def _cell_step_rows(family, Y, offsets, rows, rho, elog_omega, atoms, centre, xi,
                    group_weight):
    rows = np.asarray(rows, dtype=np.int64)
    J, L = rho.shape[0], xi.shape[1]
    groups = np.repeat(np.arange(J), np.diff(offsets))[rows]
    sub_offsets = np.concatenate([[0], np.cumsum(np.bincount(groups, minlength=J))])
    old = xi[rows]
    new = np.empty_like(old)
    _cell_step(family, Y[rows], sub_offsets, rho, elog_omega, atoms, centre, new, None)
    delta = new - old
    w = None if group_weight is None else np.asarray(group_weight, dtype=np.float64)[groups]
    dn, ds1, ds2 = family[1](Y[rows], delta if w is None else delta * w[:, None], centre)
    dN = np.zeros((J, L))
    np.add.at(dN, groups, delta)
    change = entr(new).sum(axis=1) - entr(old).sum(axis=1)
    xi[rows] = new
    return dN, dn, ds1, ds2, float(np.sum(change if w is None else w * change))


def merged_entropy_change(xi, groups, offsets=None, group_weight=None, n_threads=1):
    """Change of -sum xi log xi when each group of xi's columns (a list of column-index
    lists) is summed into one column: (n_groups,).  With ``group_weight`` (J,) and ``offsets``,
    each cell's entropy counts with its group's weight."""
    w = None
    if group_weight is not None:
        w = np.repeat(np.asarray(group_weight, dtype=np.float64), np.diff(offsets))
    out = np.zeros(len(groups))
    for g, cols in enumerate(groups):
        cols = list(cols)
        per_cell = entr(xi[:, cols].sum(axis=1)) - entr(xi[:, cols]).sum(axis=1)
        out[g] = float(per_cell.sum() if w is None else w @ per_cell)
    return out


def group_step(N_jl, elog_pi, elog_omega, ell_x, rho_out):
    """Update q(S): rho_jk ∝ exp(E log pi_k + sum_l N_jl E log omega_lk + ell^x_k(x_j)).

    ``ell_x`` is (J, K): the x log-likelihoods, or zeros for CAM.  Writes rho_out and returns
    the entropy -sum rho log rho.
    """
    logits = elog_pi[None, :] + N_jl @ elog_omega + ell_x
    logits -= logsumexp(logits, axis=1, keepdims=True)
    rho_out[...] = np.exp(logits)
    return categorical_entropy(rho_out)


# --------------------------------------------------------------------------------------------
# Group-only coordinate ascent (cells fixed), for the group search (model sections 5.2-5.6, 6)
# --------------------------------------------------------------------------------------------
def _concentration_means(prior, shape, rate):
    """(E c, E log c): the fixed value (prior = (shape, rate, fixed)) or the Gamma factor's."""
    if prior[2] is not None:
        return float(prior[2]), float(np.log(prior[2]))
    return gamma_expectations(shape, rate)


def group_ascent(counts, rho, conc, x_scale, X, x_centre, x_prior, alpha_prior, beta_prior,
                 max_iter=200, tol=1e-7, n_threads=1):
    """Group-only coordinate ascent, cells held fixed, of B candidates to convergence.

    ``counts`` (J, L): the tempered composition counts zeta_j N_jl.  ``rho`` (B, J, K): each
    candidate's start; ``conc`` (B, 4): its (alpha_shape, alpha_rate, beta_shape, beta_rate);
    ``x_scale`` (B,): its x prior width f (W0inv and lam0 times f).  ``X`` (J, q) with
    ``x_centre`` and ``x_prior`` = (m0, lam0, W0inv, nu0), or None (CAM).  ``alpha_prior``,
    ``beta_prior``: (shape, rate, fixed), fixed None when learned.

    Per candidate: one pass of the group sticks, cell sticks, alpha, beta and x atoms; then q(S)
    and that pass again until max |rho - rho_old| < tol or ``max_iter`` q(S) updates.  Returns
    one dict per candidate with the refined factors (rho, v_a, v_b, u_a, u_b, alpha_shape,
    alpha_rate, beta_shape, beta_rate, mx, lamx, Wx, nux), H_rho, n_iter and ``elbo``: the
    group-level part of the ELBO (every term but the y atoms' and the entropy of q(M)).
    ``n_threads`` is accepted for the core's signature (the candidates run one by one here).
    """
    rho = np.asarray(rho, dtype=np.float64)
    out = []
    for b in range(rho.shape[0]):
        f = dict(rho=rho[b].copy(), alpha_shape=float(conc[b][0]), alpha_rate=float(conc[b][1]),
                 beta_shape=float(conc[b][2]), beta_rate=float(conc[b][3]),
                 mx=None, lamx=None, Wx=None, nux=None)
        prior = None
        if X is not None:
            m0, lam0, W0inv, nu0 = x_prior
            prior = (m0, lam0 * x_scale[b], W0inv * x_scale[b], nu0)
        _ascend_one(f, counts, X, x_centre, prior, alpha_prior, beta_prior, max_iter, tol)
        out.append(f)
    return out


def _group_level_blocks(f, counts, X, x_centre, x_prior, alpha_prior, beta_prior):
    """One pass of the group sticks, cell sticks, alpha, beta and x atoms, in the sweep's order."""
    e_a, _ = _concentration_means(alpha_prior, f["alpha_shape"], f["alpha_rate"])
    f["v_a"], f["v_b"] = update_sticks(f["rho"].sum(axis=0)[:, None], e_a)
    e_b, _ = _concentration_means(beta_prior, f["beta_shape"], f["beta_rate"])
    f["u_a"], f["u_b"] = update_sticks(np.ascontiguousarray(counts.T @ f["rho"]), e_b)
    if alpha_prior[2] is None:
        f["alpha_shape"], f["alpha_rate"] = update_concentration(
            alpha_prior[0], alpha_prior[1], f["v_a"], f["v_b"])
    if beta_prior[2] is None:
        f["beta_shape"], f["beta_rate"] = update_concentration(
            beta_prior[0], beta_prior[1], f["u_a"], f["u_b"])
    if X is not None:
        n, s1, s2 = weighted_stats(X, f["rho"], x_centre)
        f["mx"], f["lamx"], f["Wx"], f["nux"] = nw_posterior(n, s1, s2, x_centre, *x_prior)


def _ascend_one(f, counts, X, x_centre, x_prior, alpha_prior, beta_prior, max_iter, tol):
    """One candidate's ascent, its factors in (and back into) the dict ``f``."""
    J, K = f["rho"].shape
    blocks = (counts, X, x_centre, x_prior, alpha_prior, beta_prior)
    f["H_rho"] = categorical_entropy(f["rho"])
    _group_level_blocks(f, *blocks)
    f["n_iter"] = 0
    for _ in range(max_iter):
        old = f["rho"].copy()
        ell_x = (np.zeros((J, K)) if X is None
                 else expected_loglik(X, f["mx"], f["lamx"], f["Wx"], f["nux"]))
        f["H_rho"] = group_step(counts, expected_log_stick_weights(f["v_a"], f["v_b"])[:, 0],
                                expected_log_stick_weights(f["u_a"], f["u_b"]), ell_x, f["rho"])
        f["n_iter"] += 1
        _group_level_blocks(f, *blocks)
        if np.max(np.abs(f["rho"] - old)) < tol:
            break
    f["elbo"] = _group_elbo(f, *blocks)


def _group_elbo(f, counts, X, x_centre, x_prior, alpha_prior, beta_prior):
    """The group-level terms of the ELBO (model section 6) of one candidate's factors."""
    t = 0.0
    if X is not None:
        n, s1, s2 = weighted_stats(X, f["rho"], x_centre)
        q = (f["mx"], f["lamx"], f["Wx"], f["nux"])
        t += nw_loglik_from_stats(n, s1, s2, x_centre, *q)
        t += nw_prior_term(*q, *x_prior)
        t += nw_entropy(*q)
    elog_pi = expected_log_stick_weights(f["v_a"], f["v_b"])[:, 0]
    elog_omega = expected_log_stick_weights(f["u_a"], f["u_b"])
    t += float(f["rho"].sum(axis=0) @ elog_pi)
    t += float(np.sum((counts.T @ f["rho"]) * elog_omega))
    e_a, elog_a = _concentration_means(alpha_prior, f["alpha_shape"], f["alpha_rate"])
    e_b, elog_b = _concentration_means(beta_prior, f["beta_shape"], f["beta_rate"])
    t += stick_prior_term(f["v_a"], f["v_b"], e_a, elog_a)
    t += stick_prior_term(f["u_a"], f["u_b"], e_b, elog_b)
    t += beta_entropy(f["v_a"], f["v_b"]) + beta_entropy(f["u_a"], f["u_b"])
    for prior, shape, rate in ((alpha_prior, f["alpha_shape"], f["alpha_rate"]),
                               (beta_prior, f["beta_shape"], f["beta_rate"])):
        if prior[2] is None:
            t += gamma_prior_term(prior[0], prior[1], shape, rate) + gamma_entropy(shape, rate)
    return float(t + f["H_rho"])
