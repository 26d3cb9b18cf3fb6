"""A labelling-aware lower bound on the evidence (model section 6b).

The mean-field ELBO of model section 6 scores one labelling of the occupied individual
clusters.  This module scores the mixture over relabellings

    q_mix = sum_sigma w_sigma q_sigma,

where q_sigma permutes the labels of the occupied group clusters in every factor indexed by
the group cluster (the columns of rho, the x atoms, the columns of cell sticks u_.k) and then
re-optimises the factors whose optimum depends on the order of the labels: the group sticks
q(v) and, when it is learned, q(alpha), alternately to a fixed point.  Nothing else depends on
the order: beta's update sums over every k; q(u_.k) depends on column k of Q = N' rho and on
E beta only; q(theta^x_k) on column k of rho (and the x prior's width f, learned from a sum
over k); the donors' concentration c from a sum over k; q(M) and q(theta^y) are not indexed by
group cluster at all.  So each q_sigma is a coordinate-wise optimum of the same blocks as q
except for q(S), and

    ELBO(q_mix) = sum_sigma w_sigma ELBO(q_sigma) + [H(q_mix) - sum_sigma w_sigma H(q_sigma)].

The bracket is bounded from below with pairwise Bhattacharyya coefficients (Kolchinsky &
Tracey 2017, the Chernoff alpha = 1/2 case):

    H(q_mix) >= sum_i w_i H(q_i) - sum_i w_i log sum_j w_j BC(q_i, q_j),

and for fully factorised q the coefficient is the product of the factors' coefficients, each in
closed form (Categorical, Beta, Gamma, Normal-Wishart; see the helpers below).  The bound

    B(w) = sum_i w_i ELBO_i - sum_i w_i log sum_j w_j BC_ij

is a lower bound on log p(X, Y) for every w on the simplex and every set of orders (so a subset
of the m! orders is as valid as all of them), and B(e_identity) = ELBO_identity >= the ELBO of
the state, so the bound never falls below the single-labelling ELBO.  Clusters that overlap
(soft rho, near atoms) have BC near 1 and earn nothing; well separated ones earn up to log m!.

Under donor variation (finite ``donor_concentration``) the ELBO of model section 6 is the tempered
objective; q(M) is shared by every component, so the same argument bounds the tempered
objective of the mixture, and the bound is then a bound on that objective's optimum (the
tempered evidence), like ``elbo_`` itself.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import betaln, gammaln, logsumexp

from ._state import Problem, State
from ._steps import elbo, update_alpha

__all__ = ["LabellingBound", "labelling_bound", "labelling_bound_of", "relabelled_state",
           "candidate_orders", "log_bc_categorical", "log_bc_beta", "log_bc_gamma",
           "log_bc_normal_wishart", "mixture_entropy_bound", "optimise_weights"]

# A group cluster is occupied (and its label permuted) when it holds this many individuals in
# expectation; leaving a cluster out only shrinks the set of orders, which keeps the bound valid.
MIN_OCCUPANCY = 0.5


@dataclass
class LabellingBound:
    """The labelling-aware bound of a state.

    value : the bound on log p(X, Y) (the tempered evidence under donor variation).
    elbo : the single-labelling ELBO of the state as given (model section 6).
    n_orders : how many orders of the occupied clusters the mixture holds.
    weights : (n_orders,) the mixture weights w (on the simplex).
    log_m_factorial : log m!, the bonus of m well separated clusters of equal weight.
    orders : (n_orders, m) order sigma: position occupied[i] holds old cluster occupied[sigma[i]].
    elbos : (n_orders,) ELBO(q_sigma), sticks and alpha re-optimised for that order.
    log_bc : (n_orders, n_orders) log Bhattacharyya coefficients between the components.
    occupied : the positions of the occupied clusters.
    exhaustive : whether every one of the m! orders is in the mixture.
    """

    value: float
    elbo: float
    n_orders: int
    weights: np.ndarray
    log_m_factorial: float
    orders: np.ndarray = field(repr=False)
    elbos: np.ndarray = field(repr=False)
    log_bc: np.ndarray = field(repr=False)
    occupied: np.ndarray = field(repr=False)
    exhaustive: bool = True

    @property
    def bonus(self) -> float:
        """value - elbo: what the labelling adds to the single-labelling ELBO (>= 0)."""
        return self.value - self.elbo

    @property
    def n_occupied(self) -> int:
        return int(self.occupied.size)


# ---------------------------------------------------------------------------------------------
# Closed-form log Bhattacharyya coefficients, log BC = A((eta1 + eta2)/2) - (A(eta1) + A(eta2))/2
# ---------------------------------------------------------------------------------------------
def log_bc_categorical(p, q):
    """log sum_k sqrt(p_k q_k) over the last axis."""
    with np.errstate(divide="ignore"):
        return np.log(np.sum(np.sqrt(np.asarray(p) * np.asarray(q)), axis=-1))


def log_bc_beta(a1, b1, a2, b2):
    """Beta(a1, b1) vs Beta(a2, b2), elementwise: A(a, b) = log B(a, b)."""
    am, bm = 0.5 * (a1 + a2), 0.5 * (b1 + b2)
    return betaln(am, bm) - 0.5 * (betaln(a1, b1) + betaln(a2, b2))


def log_bc_gamma(s1, r1, s2, r2):
    """Gamma(shape s1, rate r1) vs Gamma(s2, r2): A(s, r) = log Gamma(s) - s log r."""
    def A(s, r):
        return gammaln(s) - s * np.log(r)
    return A(0.5 * (s1 + s2), 0.5 * (r1 + r2)) - 0.5 * (A(s1, r1) + A(s2, r2))


def _nw_log_partition(lam, logdet_W, nu, D):
    """The Normal-Wishart log-partition up to terms linear in the natural parameters:
    -(D/2) log lam + (nu/2) log|W| + sum_d lgamma((nu + 1 - d)/2)."""
    d = np.arange(1, D + 1)
    return (-0.5 * D * np.log(lam) + 0.5 * nu * logdet_W
            + np.sum(gammaln((np.asarray(nu)[..., None] + 1.0 - d) / 2.0), axis=-1))


def log_bc_normal_wishart(m1, lam1, W1, nu1, m2, lam2, W2, nu2):
    """NW(m1, lam1, W1, nu1) vs NW(m2, lam2, W2, nu2) (E Lambda = nu W), one pair.

    Natural parameters (of mu' Lambda mu, Lambda mu, Lambda, log|Lambda|):
    (-lam/2, lam m, -(W^-1 + lam m m')/2, (nu - D)/2).  Their midpoint is the NW with
    lam* = (lam1 + lam2)/2, lam* m* = (lam1 m1 + lam2 m2)/2, nu* = (nu1 + nu2)/2 and
    W*^-1 = (W1^-1 + W2^-1)/2 + lam1 lam2 / (2 (lam1 + lam2)) (m1 - m2)(m1 - m2)'.
    """
    m1, m2 = np.asarray(m1, float), np.asarray(m2, float)
    D = m1.shape[0]
    W1inv, W2inv = np.linalg.inv(W1), np.linalg.inv(W2)
    dm = m1 - m2
    Winv = 0.5 * (W1inv + W2inv) + lam1 * lam2 / (2.0 * (lam1 + lam2)) * np.outer(dm, dm)
    Winv = 0.5 * (Winv + Winv.T)

    def logdet(A):
        return 2.0 * np.sum(np.log(np.diag(np.linalg.cholesky(A))))

    lam, nu = 0.5 * (lam1 + lam2), 0.5 * (nu1 + nu2)
    mid = _nw_log_partition(lam, -logdet(Winv), nu, D)
    a1 = _nw_log_partition(lam1, -logdet(0.5 * (W1inv + W1inv.T)), nu1, D)
    a2 = _nw_log_partition(lam2, -logdet(0.5 * (W2inv + W2inv.T)), nu2, D)
    return float(mid - 0.5 * (a1 + a2))


# ---------------------------------------------------------------------------------------------
# The mixture-entropy bound and its weights
# ---------------------------------------------------------------------------------------------
def mixture_entropy_bound(weights, entropies, log_bc) -> float:
    """Kolchinsky-Tracey lower bound on the entropy of sum_i w_i q_i (log BC pairwise)."""
    w = np.asarray(weights, float)
    return float(w @ np.asarray(entropies, float) - _overlap(w, np.asarray(log_bc, float)))


def _overlap(w, log_bc):
    """sum_i w_i log sum_j w_j BC_ij (components with w_i = 0 contribute 0)."""
    nz = w > 0
    if not np.any(nz):
        return 0.0
    lw = np.log(w[nz])
    inner = logsumexp(log_bc[np.ix_(nz, nz)] + lw[None, :], axis=1)
    return float(w[nz] @ inner)


def _objective(w, E, log_bc):
    return float(w @ E) - _overlap(w, log_bc)


def optimise_weights(E, log_bc, max_iter: int = 500):
    """w on the simplex maximising B(w) = w.E - sum_i w_i log sum_j w_j BC_ij.

    Candidates: the identity vertex (B = E_0), uniform w, w = softmax(E) (the optimum when the
    components do not overlap, B = logsumexp E), and L-BFGS on softmax logits from the best of
    those; the best is returned, so B(w) >= E_0 always.  Any w gives a valid bound.
    """
    from scipy.optimize import minimize

    E = np.asarray(E, float)
    n = E.size
    shift = float(E.max())
    Es = E - shift
    B = np.exp(np.asarray(log_bc, float))
    starts = [np.eye(n)[0], np.full(n, 1.0 / n), np.exp(Es - logsumexp(Es))]
    best_w = max(starts, key=lambda w: _objective(w, Es, log_bc))
    best = _objective(best_w, Es, log_bc)
    if n > 1:
        def loss(z):
            z = z - z.max()
            w = np.exp(z - logsumexp(z))
            Bw = B @ w
            Bw = np.maximum(Bw, 1e-300)
            f = float(w @ Es) - float(w @ np.log(Bw))
            g = Es - np.log(Bw) - B.T @ (w / Bw)
            grad = w * (g - float(w @ g))
            return -f, -grad

        z0 = np.log(np.maximum(best_w, 1e-300))
        z0 = np.maximum(z0, z0.max() - 700.0)
        res = minimize(loss, z0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
        z = res.x - res.x.max()
        w = np.exp(z - logsumexp(z))
        val = _objective(w, Es, log_bc)
        if val > best:
            best_w, best = w, val
    return best_w, best + shift


# ---------------------------------------------------------------------------------------------
# Relabelled components
# ---------------------------------------------------------------------------------------------
def occupied_clusters(st: State, min_occupancy: float = MIN_OCCUPANCY) -> np.ndarray:
    return np.nonzero(st.rho.sum(axis=0) > min_occupancy)[0]


def candidate_orders(m: int, max_orders: int = 720):
    """Orders of m occupied clusters: all m! when m! <= max_orders (identity first); otherwise
    the identity, every transposition, then every 3-cycle, cut at max_orders.  Returns
    (orders (n, m) int, exhaustive)."""
    if m <= 1:
        return np.arange(m, dtype=np.int64).reshape(1, m), True
    if math.factorial(m) <= max_orders:
        return np.array(list(itertools.permutations(range(m))), dtype=np.int64), True
    ident = tuple(range(m))
    orders = [ident]
    for a, b in itertools.combinations(range(m), 2):
        p = list(ident)
        p[a], p[b] = b, a
        orders.append(tuple(p))
    for a, b, c in itertools.combinations(range(m), 3):
        for x, y, z in ((a, b, c), (a, c, b)):        # the two 3-cycles on {a, b, c}
            p = list(ident)
            p[x], p[y], p[z] = y, z, x
            orders.append(tuple(p))
    return np.array(orders[:max(1, max_orders)], dtype=np.int64), False


def full_permutation(K: int, occupied: np.ndarray, order) -> np.ndarray:
    """Permutation of all K positions: position occupied[i] takes cluster occupied[order[i]]."""
    perm = np.arange(K)
    perm[occupied] = occupied[np.asarray(order)]
    return perm


def reoptimise_order_dependent(be, prob: Problem, st: State, max_iter: int = 200,
                               tol: float = 1e-13) -> None:
    """q(v) and q(alpha) by their exact coordinate updates, alternated to a fixed point.

    The alternation is a scalar fixed-point iteration in x = E alpha,
    T(x) = E alpha after q(v) <- optimum given x and q(alpha) <- optimum given q(v); it
    converges linearly and slowly when many sticks are empty, so it is accelerated by Aitken's
    delta-squared (an extrapolated x is only a new starting point: every state it leads to is
    reached by exact coordinate updates, so the ELBO of the result is that of a valid q).
    Ends with q(v) at its optimum given the final q(alpha).
    """
    R = np.ascontiguousarray(st.rho.sum(axis=0)[:, None])
    if prob.alpha_prior.fixed is not None:
        st.v_a, st.v_b = be.update_sticks(R, float(prob.alpha_prior.fixed))
        return

    def T(x):
        st.v_a, st.v_b = be.update_sticks(R, x)
        update_alpha(be, prob, st)
        return st.alpha_shape / st.alpha_rate

    x = st.alpha_shape / st.alpha_rate
    for _ in range(max_iter):
        x1 = T(x)
        x2 = T(x1)
        if abs(x2 - x1) <= tol * abs(x2):
            x = x2
            break
        denom = x2 - 2.0 * x1 + x
        x_acc = x - (x1 - x) ** 2 / denom if denom != 0.0 else x2
        x = x_acc if np.isfinite(x_acc) and x_acc > 0.0 else x2
    T(x)
    st.v_a, st.v_b = be.update_sticks(R, st.alpha_shape / st.alpha_rate)


def relabelled_state(be, prob: Problem, st: State, perm: np.ndarray,
                     reoptimise: bool = True) -> State:
    """q_sigma: every factor indexed by group cluster permuted by ``perm`` (new position k
    holds old cluster perm[k]); q(v), q(alpha) re-optimised.  Shares xi with ``st``."""
    import copy

    new = copy.copy(st)
    new.rho = np.ascontiguousarray(st.rho[:, perm])
    new.u_a = np.ascontiguousarray(st.u_a[:, perm])
    new.u_b = np.ascontiguousarray(st.u_b[:, perm])
    if prob.has_x:
        new.mx, new.lamx = st.mx[perm].copy(), st.lamx[perm].copy()
        new.Wx, new.nux = st.Wx[perm].copy(), st.nux[perm].copy()
    new.v_a, new.v_b = st.v_a.copy(), st.v_b.copy()
    if reoptimise:
        reoptimise_order_dependent(be, prob, new)
    return new


# ---------------------------------------------------------------------------------------------
# Pairwise overlaps of the components
# ---------------------------------------------------------------------------------------------
def _pairwise_log_bc(prob: Problem, st: State, occupied, orders, comps) -> np.ndarray:
    n, m = orders.shape
    out = np.zeros((n, n))
    # rho: row j of q_sigma is row j of rho with the occupied entries permuted; the others
    # are shared and add sum_{k not occupied} rho_jk to every coefficient
    R = st.rho[:, occupied]                                         # (J, m)
    rest = st.rho.sum(axis=1) - R.sum(axis=1)                       # (J,)
    Rp = np.sqrt(R[:, orders])                                      # (J, n, m)
    for i in range(n):
        s = np.einsum("jm,jnm->jn", Rp[:, i], Rp) + rest[:, None]
        with np.errstate(divide="ignore"):
            out[i] += np.log(np.maximum(s, 0.0)).sum(axis=0)
    # cell sticks and x atoms: position by position, a sum of pair terms between old clusters
    Mc = np.zeros((m, m))
    ua, ub = st.u_a[:, occupied], st.u_b[:, occupied]
    if ua.shape[0] > 0:
        Mc += log_bc_beta(ua[:, :, None], ub[:, :, None], ua[:, None, :], ub[:, None, :]).sum(0)
    if prob.has_x:
        for a in range(m):
            for b in range(a + 1, m):
                ka, kb = occupied[a], occupied[b]
                val = log_bc_normal_wishart(st.mx[ka], st.lamx[ka], st.Wx[ka], st.nux[ka],
                                            st.mx[kb], st.lamx[kb], st.Wx[kb], st.nux[kb])
                Mc[a, b] += val
                Mc[b, a] += val
    out += Mc[orders[:, None, :], orders[None, :, :]].sum(axis=2)
    # group sticks and alpha: re-optimised per order, compared directly
    va = np.stack([c.v_a[:, 0] for c in comps])                     # (n, K - 1)
    vb = np.stack([c.v_b[:, 0] for c in comps])
    iu, ju = np.triu_indices(n, 1)
    upper = np.zeros(iu.size)
    if va.shape[1] > 0:
        # log B(a, b) of each component once; only the midpoints are per pair
        lb_own = betaln(va, vb).sum(axis=1)
        for start in range(0, iu.size, 1 << 16):
            i, j = iu[start:start + (1 << 16)], ju[start:start + (1 << 16)]
            upper[start:start + i.size] = betaln(0.5 * (va[i] + va[j]),
                                                 0.5 * (vb[i] + vb[j])).sum(axis=1)
        upper -= 0.5 * (lb_own[iu] + lb_own[ju])
    if prob.alpha_prior.fixed is None:
        s = np.array([c.alpha_shape for c in comps])
        r = np.array([c.alpha_rate for c in comps])
        upper += log_bc_gamma(s[iu], r[iu], s[ju], r[ju])
    out[iu, ju] += upper
    out[ju, iu] += upper
    out = np.minimum(0.5 * (out + out.T), 0.0)                      # BC <= 1; rounding only
    np.fill_diagonal(out, 0.0)
    return out


# ---------------------------------------------------------------------------------------------
def labelling_bound(be, prob: Problem, st: State, max_orders: int = 720,
                    min_occupancy: float = MIN_OCCUPANCY) -> LabellingBound:
    """The labelling-aware bound of ``st`` (which is not modified); see the module docstring.

    ``max_orders``: all m! orders of the m occupied clusters when m! <= max_orders (m <= 6 by
    default), else the documented subset of ``candidate_orders``.
    """
    single = elbo(be, prob, st)
    occupied = occupied_clusters(st, min_occupancy)
    m = int(occupied.size)
    orders, exhaustive = candidate_orders(m, max_orders)
    comps = [relabelled_state(be, prob, st, full_permutation(st.K, occupied, o))
             for o in orders]
    E = np.array([elbo(be, prob, c) for c in comps])
    log_bc = _pairwise_log_bc(prob, st, occupied, orders, comps)
    w, value = optimise_weights(E, log_bc)
    value = max(value, single)     # the state itself is a valid q (its sticks as they are)
    return LabellingBound(value=float(value), elbo=float(single), n_orders=len(orders),
                          weights=w, log_m_factorial=float(math.lgamma(m + 1)),
                          orders=orders, elbos=E, log_bc=log_bc, occupied=occupied,
                          exhaustive=exhaustive)


def labelling_bound_of(model, max_orders: int = 720) -> LabellingBound:
    """The labelling-aware bound of a fitted ``NestedAtomsModel`` (its ``problem_``,
    ``state_`` and backend)."""
    from ._backend import get_backend

    if not hasattr(model, "state_"):
        raise ValueError("the model is not fitted; call fit first.")
    be = get_backend(model.backend)
    return labelling_bound(be, model.problem_, model.state_, max_orders=max_orders)
