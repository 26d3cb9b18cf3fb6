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
    J = rho.shape[0]
    sizes = np.diff(offsets)
    logits = expected_loglik(Y, m, lam, W, nu)
    logits += np.repeat(rho @ elog_omega.T, sizes, axis=0)
    logits -= logsumexp(logits, axis=1, keepdims=True)
    xi_out[...] = np.exp(logits)
    N_jl = np.stack([xi_out[offsets[j]:offsets[j + 1]].sum(axis=0) for j in range(J)])
    if group_weight is None:
        n, s1, s2 = weighted_stats(Y, xi_out, centre)
        return N_jl, n, s1, s2, categorical_entropy(xi_out)
    w_cell = np.repeat(np.asarray(group_weight, dtype=np.float64), sizes)
    n, s1, s2 = weighted_stats(Y, xi_out * w_cell[:, None], centre)
    return N_jl, n, s1, s2, float(np.sum(w_cell[:, None] * entr(xi_out)))


def group_step(N_jl, elog_pi, elog_omega, ell_x, rho_out):
    """Update q(S): rho_jk ∝ exp(E log pi_k + sum_l N_jl E log omega_lk + ell^x_k(x_j)).

    ``ell_x`` is (J, K): the x log-likelihoods, or zeros for CAM.  Writes rho_out and returns
    the entropy -sum rho log rho.
    """
    logits = elog_pi[None, :] + N_jl @ elog_omega + ell_x
    logits -= logsumexp(logits, axis=1, keepdims=True)
    rho_out[...] = np.exp(logits)
    return categorical_entropy(rho_out)
