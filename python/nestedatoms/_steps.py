"""The CAVI blocks (model section 5) and the ELBO (section 6), written once over any backend.

Each block replaces one set of variational factors by its exact coordinate-ascent optimum
given all the others, so none of them can lower the ELBO; tests check this block by block.
"""

from __future__ import annotations

import math

import numpy as np

from ._atoms import y_atoms, y_family
from ._batches import batched_cell_step, weighted_entropy  # noqa: F401 (re-exported)
from ._state import ConcentrationPrior, NWPrior, Problem, State

__all__ = ["composition_weights", "composition_counts", "scale_rows", "tempered", "group_weights",
           "cell_weights", "weighted_entropy", "weighted_y_stats", "BLOCKS", "sweep", "elbo",
           "elbo_terms", "concentration_expectations",
           "expected_stick_weights", "effective_x_prior", "best_group_prior_scale"]


def concentration_expectations(be, prior: ConcentrationPrior, shape: float, rate: float):
    """(E c, E log c) for a learned Gamma factor, or the fixed value."""
    if prior.fixed is not None:
        return float(prior.fixed), float(np.log(prior.fixed))
    return be.gamma_expectations(shape, rate)


def _elog_pi(be, st: State) -> np.ndarray:
    return be.expected_log_stick_weights(st.v_a, st.v_b)[:, 0]


def _elog_omega(be, st: State) -> np.ndarray:
    return be.expected_log_stick_weights(st.u_a, st.u_b)


def _ell_x(be, prob: Problem, st: State) -> np.ndarray:
    if not prob.has_x:
        return np.zeros((prob.data.n_groups, st.K))
    return be.expected_loglik(prob.X, st.mx, st.lamx, st.Wx, st.nux)


# ---------------------------------------------------------------------------------------------
# Donor-level variation: the tempered objective (model section 2b, "Donors vary")
# ---------------------------------------------------------------------------------------------
def composition_weights(sizes: np.ndarray, concentration: float):
    """zeta_j = (1 + c) / (n_j + c), or None for c = inf (NAM exactly, every zeta_j = 1).

    If donor j's composition is Dirichlet(c omega_k) around its cluster's, its n_j cells carry
    the evidence about omega_k of (1 + c) n_j / (n_j + c) independent draws (the
    Dirichlet-multinomial's variance inflation).  The objective counts each donor's cells with
    that weight: its y terms, its composition terms and the entropy of its q(M) are all
    multiplied by zeta_j (tempering the composition term alone would reward duplicate atoms:
    the entropy of a cell split between two copies of an atom would gain log 2 where the
    composition term loses only zeta_j log 2).  One cell keeps weight 1; c -> inf gives NAM.
    """
    c = float(concentration)
    if not np.isfinite(c):
        return None
    return (1.0 + c) / (np.asarray(sizes, dtype=np.float64) + c)


def group_weights(prob: Problem, st: State):
    """zeta (J,) of the state, or None (all 1)."""
    return composition_weights(prob.data.group_sizes, st.donor_concentration)


def cell_weights(prob: Problem, st: State, rows=None):
    """zeta_j of each (group-sorted) cell, or of the given rows; None when all are 1."""
    zeta = group_weights(prob, st)
    if zeta is None:
        return None
    w = np.repeat(zeta, prob.data.group_sizes)
    return w if rows is None else w[rows]


def scale_rows(per_group: np.ndarray, zeta) -> np.ndarray:
    """``per_group`` (J, .) with row j times zeta_j; the array itself when zeta is None."""
    return per_group if zeta is None else np.ascontiguousarray(per_group * zeta[:, None])


def tempered(prob: Problem, st: State, per_group: np.ndarray) -> np.ndarray:
    """``per_group`` with row j times the state's zeta_j (see ``scale_rows``)."""
    return scale_rows(per_group, group_weights(prob, st))


def composition_counts(prob: Problem, st: State) -> np.ndarray:
    """The tempered counts zeta_j N_jl that enter q(S), the cell sticks and the ELBO."""
    return tempered(prob, st, st.N_jl)


def weighted_y_stats(be, prob: Problem, xi_cols: np.ndarray, weights, rows=None):
    """(n, s1, s2) of the given xi columns over all cells (or ``rows``), cells weighted."""
    Y = prob.Y if rows is None else prob.Y[rows]
    w = xi_cols if weights is None else xi_cols * weights[:, None]
    return y_family(prob).stats(be, Y, np.ascontiguousarray(w), prob.y_centre)


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------
def update_cells(be, prob: Problem, st: State, n_threads: int = 1) -> None:
    """q(M): xi, and with it N_jl, the y statistics and the entropy of q(M) (one pass).

    Under donor variation each donor's terms are all weighted by zeta_j, so zeta_j cancels from
    the update of xi itself and weights only the statistics and the entropy.  The cells are
    visited batch by batch (``prob.batches``) and their statistics added in batch order.
    """
    if not isinstance(st.xi, np.ndarray):      # cells on dask workers (``_dask``)
        st.xi, (st.N_jl, st.y_n, st.y_s1, st.y_s2, st.H_xi) = st.xi.cell_step(
            be, prob, st, n_threads)
        return
    st.N_jl, st.y_n, st.y_s1, st.y_s2, st.H_xi = batched_cell_step(
        be, prob.Y, prob.offsets, prob.batches, st.rho, _elog_omega(be, st), st.my, st.lamy,
        st.Wy, st.nuy, prob.y_centre, st.xi, n_threads, group_weights(prob, st),
        y_family(prob))


def update_groups(be, prob: Problem, st: State, n_threads: int = 1) -> None:
    """q(S): rho (the composition evidence of group j tempered by zeta_j)."""
    st.H_rho = be.group_step(composition_counts(prob, st), _elog_pi(be, st),
                             _elog_omega(be, st), _ell_x(be, prob, st), st.rho)


def update_group_sticks(be, prob: Problem, st: State, n_threads: int = 1) -> None:
    """q(v_k): a_k = 1 + R_k, b_k = E alpha + sum_{r>k} R_r."""
    e_alpha, _ = concentration_expectations(be, prob.alpha_prior, st.alpha_shape, st.alpha_rate)
    R = st.rho.sum(axis=0)[:, None]
    st.v_a, st.v_b = be.update_sticks(np.ascontiguousarray(R), e_alpha)


def update_cell_sticks(be, prob: Problem, st: State, n_threads: int = 1) -> None:
    """q(u_lk): a_lk = 1 + Q_lk, b_lk = E beta + sum_{t>l} Q_tk, Q = (zeta N)' rho."""
    e_beta, _ = concentration_expectations(be, prob.beta_prior, st.beta_shape, st.beta_rate)
    Q = composition_counts(prob, st).T @ st.rho
    st.u_a, st.u_b = be.update_sticks(np.ascontiguousarray(Q), e_beta)


def update_alpha(be, prob: Problem, st: State, n_threads: int = 1) -> None:
    """q(alpha) (nothing to do when alpha is fixed)."""
    if prob.alpha_prior.fixed is None:
        st.alpha_shape, st.alpha_rate = be.update_concentration(
            prob.alpha_prior.shape, prob.alpha_prior.rate, st.v_a, st.v_b)


def update_beta(be, prob: Problem, st: State, n_threads: int = 1) -> None:
    """q(beta), one concentration shared by every k (nothing to do when fixed)."""
    if prob.beta_prior.fixed is None:
        st.beta_shape, st.beta_rate = be.update_concentration(
            prob.beta_prior.shape, prob.beta_prior.rate, st.u_a, st.u_b)


def _joint_sticks_and_concentration(be, prior: ConcentrationPrior, counts: np.ndarray,
                                    shape: float, rate: float):
    """The joint optimum of one stick layer q(w) and its learned concentration q(c), the
    counts (and everything else) held: (a, b, shape, rate).

    Why: most of the sticks are empty (K = L = 30 by default, a few occupied), and each empty
    stick's Beta(1, E c + tail) feeds E log(1 - w) back into q(c); alternating the two
    updates is a fixed-point iteration whose contraction factor is close to n / (n + prior
    shape), about 0.9 on the published toy design, so the sweeps crept by a few hundredths of
    a nat each for dozens of sweeps before converging.  The joint optimum is the fixed point
    e = E c of  e = S / (r0 - sum E log(1 - w(e))),  w(e) the sticks' update at E c = e: a
    scalar root, found by bracketing the plain iteration's direction and Brent's method.

    The candidate is kept only where the terms that depend on (q(w), q(c)) beat those of one
    plain coordinate pass (sticks, then c), so this never does worse than that pass, and
    hence never lowers the ELBO.  ``counts`` (G, C) are also what multiplies E log w in the
    ELBO (log p(S) for the group sticks, log p(M) for the cell sticks).
    """
    from scipy.optimize import brentq

    plain_a, plain_b = be.update_sticks(counts, shape / rate)
    plain = (plain_a, plain_b) + tuple(be.update_concentration(prior.shape, prior.rate,
                                                               plain_a, plain_b))
    tail = np.cumsum(counts[::-1], axis=0)[::-1][1:]       # sum_{t > g} counts_t
    A = 1.0 + counts[:-1]
    S = prior.shape + A.size

    def log_step(x):
        """log of the concentration's mean after one plain pass from E c = e^x, minus x."""
        e = np.exp(x)
        r = prior.rate + float(np.sum(be.digamma(A + e + tail) - be.digamma(e + tail)))
        return np.log(S / r) - x if r > 0 else -np.inf

    x0 = np.log(plain[2] / plain[3])       # the plain pass's E c, one step along already
    f0 = log_step(x0)
    if not np.isfinite(f0) or f0 == 0.0:
        return plain
    # the plain iteration moves monotonically toward the root: step further the same way,
    # doubling, until the sign changes (within e^+-30 of the data's scale)
    step, x1 = f0, x0
    for _ in range(40):
        x1 = x0 + step
        f1 = log_step(x1)
        if not np.isfinite(f1) or abs(x1) > 60.0:
            return plain
        if np.sign(f1) != np.sign(f0):
            break
        x0, f0, step = x1, f1, 2.0 * step
    else:
        return plain
    root = brentq(log_step, min(x0, x1), max(x0, x1), xtol=1e-12, rtol=1e-12)
    joint_a, joint_b = be.update_sticks(counts, float(np.exp(root)))
    joint = (joint_a, joint_b) + tuple(be.update_concentration(prior.shape, prior.rate,
                                                               joint_a, joint_b))

    def value(f):
        fa, fb, fshape, frate = f
        e_c, elog_c = be.gamma_expectations(fshape, frate)
        return (float(np.sum(counts * be.expected_log_stick_weights(fa, fb)))
                + be.stick_prior_term(fa, fb, e_c, elog_c) + be.beta_entropy(fa, fb)
                + be.gamma_prior_term(prior.shape, prior.rate, fshape, frate)
                + be.gamma_entropy(fshape, frate))

    return joint if value(joint) >= value(plain) else plain


def update_concentrations(be, prob: Problem, st: State, n_threads: int = 1) -> None:
    """q(v), q(alpha) and q(u), q(beta), each pair at its joint optimum given q(S) and q(M)
    (see ``_joint_sticks_and_concentration``); nothing for a fixed concentration, where the
    sticks' block alone is already exact."""
    if prob.alpha_prior.fixed is None:
        R = np.ascontiguousarray(st.rho.sum(axis=0)[:, None])
        st.v_a, st.v_b, st.alpha_shape, st.alpha_rate = _joint_sticks_and_concentration(
            be, prob.alpha_prior, R, st.alpha_shape, st.alpha_rate)
    if prob.beta_prior.fixed is None:
        Q = np.ascontiguousarray(composition_counts(prob, st).T @ st.rho)
        st.u_a, st.u_b, st.beta_shape, st.beta_rate = _joint_sticks_and_concentration(
            be, prob.beta_prior, Q, st.beta_shape, st.beta_rate)


def effective_x_prior(prob: Problem, st: State) -> NWPrior:
    """The x prior in use: the problem's, with its width scaled by the state's f.

    f multiplies W0^-1 and lam0 together, so E[Sigma] scales by f while the spread of the
    atom means, E[Sigma] / lam0, stays as set.
    """
    f = float(st.group_prior_scale)
    return prob.x_prior if f == 1.0 else _widened(prob.x_prior, f)


def _widened(p: NWPrior, f: float) -> NWPrior:
    return NWPrior(m0=p.m0, lam0=p.lam0 * f, W0inv=p.W0inv * f, nu0=p.nu0)


# log f is learned in [_LOG_SCALE_MIN, _LOG_SCALE_MAX]: never broader than the prior as set
# (a broader prior is confounded with merging: merged clusters are broad, and a broad prior
# makes merges cheap, so the ELBO rewards the pair; the recovery study lifted the cap to
# measure this), down to e^-8 of its width.
_LOG_SCALE_MIN, _LOG_SCALE_MAX = -8.0, 0.0


def _x_bound_at_scale(be, prob: Problem, stats, log_f: float,
                      logdet_W0inv: float | None = None) -> float:
    """The x part of the ELBO at the optimal q(theta^x) for the current q(S), with the prior's
    width times exp(log_f), up to a constant: sum_k log Z(posterior_k) - K log Z(prior), Z the
    Normal-Wishart normaliser (terms that do not depend on f dropped).

    A cluster that holds nothing (n_k = 0) has its prior as posterior and adds exactly 0, so
    only the occupied ones are computed (a few of K = 30 in a typical search candidate).
    ``logdet_W0inv``: log|W0^-1| of the problem's x prior, when the caller has it.
    """
    base = prob.x_prior
    p = _widened(base, float(np.exp(log_f)))
    n, s1, s2 = _occupied_stats(stats)
    _, lam, W, nu = be.nw_posterior(n, s1, s2, prob.x_centre, p.m0, p.lam0, p.W0inv, p.nu0)
    D = p.dim
    sign, logdet_W = np.linalg.slogdet(W)
    if np.any(sign <= 0):       # a numerically singular posterior scores nothing
        return -np.inf
    if logdet_W0inv is None:
        logdet_W0inv = float(np.linalg.slogdet(base.W0inv)[1])
    # log|f W0^-1| = log|W0^-1| + D log f
    posterior = float(np.sum(0.5 * nu * logdet_W - 0.5 * D * np.log(lam)))
    prior = -0.5 * p.nu0 * (logdet_W0inv + D * log_f) - 0.5 * D * np.log(p.lam0)
    return posterior - W.shape[0] * prior


def _occupied_stats(stats):
    """(n, s1, s2) of the clusters with n > 0."""
    n, s1, s2 = stats
    keep = n > 0
    if keep.all():
        return n, s1, s2
    return n[keep], np.ascontiguousarray(s1[keep]), np.ascontiguousarray(s2[keep])


_NEGLIGIBLE_MASS = 1e-12


class _XBoundCurves:
    """``_x_bound_at_scale`` as a function of log f for fixed statistics, for C candidate
    partitions at once: each evaluation is a few vector operations over all their clusters (the
    width search evaluates it ~50 times per partition, and the group search scores ~100
    partitions per call; one partition at a time, the Python calls cost most of a small fit).

    Per occupied cluster the posterior scale is W^-1(f) = f W0^-1 + C + c(f) d d' with C the
    scatter about the cluster's mean, d its mean minus m0 and c(f) = f lam0 n / (f lam0 + n).
    With W0^-1 = R R' and R^-1 C R^-T = Q diag(mu) Q' (once), log|W^-1(f)| =
    log|W0^-1| + sum_i log(f + mu_i) + log(1 + c(f) sum_i z_i^2 / (f + mu_i)), z = Q' R^-1 d
    (the determinant lemma): the same value as the Normal-Wishart posterior's, without a matrix
    per evaluation.

    ``stats``: (n, s1, s2) of the candidates' clusters side by side, candidate c's K clusters at
    [c K, (c + 1) K) (``weighted_stats`` of the candidates' rho side by side).

    A cluster adds O(n) to the curve (its posterior tends to its prior), so clusters holding
    less than ``_NEGLIGIBLE_MASS`` individuals are left out: together they move the curve by
    less than ~1e-10 nats, far below the width's own tolerance, while a group ascent's soft
    rho leaves every one of the K = 30 clusters some mass (~1e-20 and below) and they were
    four fifths of the search's clusters.
    """

    def __init__(self, prob: Problem, stats, n_candidates: int):
        p = prob.x_prior
        n_all = stats[0]
        owner = np.repeat(np.arange(n_candidates), n_all.shape[0] // n_candidates)
        keep = n_all > _NEGLIGIBLE_MASS
        n = n_all[keep]
        s1, s2 = np.ascontiguousarray(stats[1][keep]), np.ascontiguousarray(stats[2][keep])
        owner = owner[keep]
        # sums over each candidate's clusters as one product: member[c, t] = 1 if t is c's
        self.member = np.zeros((n_candidates, owner.size))
        self.member[owner, np.arange(owner.size)] = 1.0
        self.owner = owner
        self.counts = self.member.sum(axis=1)
        mean = s1 / n[:, None]                               # about the centre
        C = s2 - s1[:, :, None] * mean[:, None, :]
        d = mean - (p.m0 - prob.x_centre)
        R = np.linalg.cholesky(p.W0inv)
        R_inv = np.linalg.inv(R)
        white = R_inv @ (0.5 * (C + np.swapaxes(C, 1, 2))) @ R_inv.T
        self.mu, Q = np.linalg.eigh(white)
        self.z2 = np.einsum("kji,kj->ki", Q, d @ R_inv.T) ** 2
        self.n, self.nu = n, p.nu0 + n
        self.logdet_W0inv = 2.0 * float(np.sum(np.log(np.diag(R))))
        self.lam0, self.nu0, self.D = p.lam0, p.nu0, p.dim
        self.n_candidates = n_candidates

    def __call__(self, log_f) -> np.ndarray:
        """The curve of each candidate at its log f: ``log_f`` (C,) or (C, G), the same shape
        back; -inf where a posterior is numerically singular."""
        log_f = np.asarray(log_f, dtype=float)
        grid = log_f.reshape(self.n_candidates, -1)              # (C, G)
        f = np.exp(grid)[self.owner]                              # (T, G), per cluster
        shifted = self.mu[:, None, :] + f[:, :, None]             # (T, G, D)
        lam = self.n[:, None] + f * self.lam0                     # (T, G)
        rank_one = (self.z2[:, None, :] / shifted).sum(axis=2)
        rank_one *= (f * self.lam0) * self.n[:, None] / lam
        rank_one += 1.0
        singular = (shifted.min(axis=2) <= 0.0) | (rank_one <= 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            logdet_Winv = np.log(shifted).sum(axis=2) + np.log(rank_one) + self.logdet_W0inv
            cluster = -0.5 * self.nu[:, None] * logdet_Winv - 0.5 * self.D * np.log(lam)
        singular |= ~np.isfinite(cluster)
        posterior = self.member @ np.where(singular, 0.0, cluster)
        prior = (-0.5 * self.nu0 * (self.logdet_W0inv + self.D * grid)
                 - 0.5 * self.D * np.log(self.lam0 * np.exp(grid)))
        value = posterior - self.counts[:, None] * prior
        value[(self.member @ singular) > 0] = -np.inf
        return value.reshape(log_f.shape)


# The width search: a grid over [_LOG_SCALE_MIN, _LOG_SCALE_MAX], then a golden-section search
# between the best grid point's neighbours down to _WIDTH_XTOL in log f.  The ELBO is flat at
# its maximum only to second order and its curvature grows with J: at 982 individuals a width
# 1e-3 off its optimum (Brent's tolerance before) cost 1e-6 nats of the fit's ELBO; 1e-7 costs
# none a double can show, for ~20 more vectorised evaluations.
_WIDTH_GRID_STEP = 0.25
_WIDTH_XTOL = 1e-7
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def best_group_prior_scales(be, prob: Problem, rhos, currents) -> np.ndarray:
    """``best_group_prior_scale`` for C candidate q(S) at once: (C,) widths, candidate c's
    maximising the ELBO over f in [e^-8, 1] with its rho held and q(theta^x) at its optimum.

    Every candidate's curve is evaluated on a grid of log f (step 1/4), and the best grid
    point's bracket is narrowed by golden sections, all candidates in the same vector
    operations; the grid's ends and each candidate's ``currents[c]`` (even outside the bounds,
    e.g. from a file) are candidates too, so the ELBO cannot fall below that of the current f.
    A grid first, unlike a local search from the middle, finds the best of several local
    maxima to within a grid step.
    """
    C = len(rhos)
    curves = _XBoundCurves(prob, be.weighted_stats(prob.X, np.ascontiguousarray(np.hstack(rhos)),
                                                   prob.x_centre), C)
    low, high = _LOG_SCALE_MIN, _LOG_SCALE_MAX
    grid = np.arange(low, high + 0.5 * _WIDTH_GRID_STEP, _WIDTH_GRID_STEP)
    on_grid = curves(np.broadcast_to(grid, (C, grid.size)))
    best = np.argmax(on_grid, axis=1)               # the first of equal values
    a = grid[np.maximum(best - 1, 0)]
    b = grid[np.minimum(best + 1, grid.size - 1)]
    # golden sections, vectorised over the candidates: keep the better inner point's side
    x1, x2 = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    v1, v2 = curves(x1), curves(x2)
    while np.max(b - a) > _WIDTH_XTOL:
        left = v1 >= v2                              # the maximum lies in [a, x2]
        b = np.where(left, x2, b)
        a = np.where(left, a, x1)
        x1_new = np.where(left, b - _GOLDEN * (b - a), x2)
        x2_new = np.where(left, x1, a + _GOLDEN * (b - a))
        x1, x2 = x1_new, x2_new
        fresh = curves(np.where(left, x1, x2))
        v1, v2 = np.where(left, fresh, v2), np.where(left, v1, fresh)
    refined = np.where(v1 >= v2, x1, x2)
    current = np.array([np.log(c) if c > 0 else -np.inf for c in currents], dtype=float)
    # candidates in order (first of equal values wins): refined, the ends, the current width
    options = np.column_stack([refined, np.full(C, low), np.full(C, high),
                               np.where(np.isfinite(current), current, low)])
    values = np.column_stack([curves(options[:, k]) for k in range(options.shape[1])])
    return np.exp(options[np.arange(C), np.argmax(values, axis=1)])


def best_group_prior_scale(be, prob: Problem, st: State) -> float:
    """A maximiser of the ELBO over f in [e^-8, 1] (see ``_LOG_SCALE_MAX``), q(S) held and
    q(theta^x) at its optimum (``best_group_prior_scales`` for the one state)."""
    return float(best_group_prior_scales(be, prob, [st.rho], [st.group_prior_scale])[0])


def update_x_atoms(be, prob: Problem, st: State, n_threads: int = 1) -> None:
    """q(theta^x_k) from the rho-weighted statistics of x (absent for CAM), under the x prior
    in use (``effective_x_prior``)."""
    if not prob.has_x:
        return
    p = effective_x_prior(prob, st)
    n, s1, s2 = be.weighted_stats(prob.X, st.rho, prob.x_centre)
    st.mx, st.lamx, st.Wx, st.nux = be.nw_posterior(n, s1, s2, prob.x_centre,
                                                    p.m0, p.lam0, p.W0inv, p.nu0)


def update_y_atoms(be, prob: Problem, st: State, n_threads: int = 1, rows=None) -> None:
    """q(theta^y_l) from the xi-weighted statistics cached by the cell step; with ``rows``,
    only those atoms (the others' statistics unchanged since their last update)."""
    if rows is None:
        st.my, st.lamy, st.Wy, st.nuy = y_family(prob).posterior(
            be, (st.y_n, st.y_s1, st.y_s2), prob.y_centre, prob.y_prior)
        return
    rows = np.asarray(rows)
    new = y_family(prob).posterior(
        be, (st.y_n[rows], st.y_s1[rows], st.y_s2[rows]), prob.y_centre, prob.y_prior)
    for name, value in zip(("my", "lamy", "Wy", "nuy"), new):
        arr = getattr(st, name).copy()      # copied: snapshots may share the old array
        arr[rows] = value
        setattr(st, name, arr)


# One sweep visits the blocks in this order; any order is valid coordinate ascent.
BLOCKS = (
    ("cells", update_cells),
    ("groups", update_groups),
    ("group_sticks", update_group_sticks),
    ("cell_sticks", update_cell_sticks),
    ("alpha", update_alpha),
    ("beta", update_beta),
    ("concentrations", update_concentrations),
    ("x_atoms", update_x_atoms),
    ("y_atoms", update_y_atoms),
)

# The blocks after q(S) that the moves' refresh and the group ascent (``group_ascent`` in the
# core) run: one plain pass, without the joint concentration solve the sweep adds.
GLOBAL_BLOCKS = tuple(b for b in BLOCKS[2:] if b[0] != "concentrations")


def sweep(be, prob: Problem, st: State, n_threads: int = 1, blocks=BLOCKS) -> None:
    """One CAVI sweep: every block once, in order."""
    for _, update in blocks:
        update(be, prob, st, n_threads)


# ---------------------------------------------------------------------------------------------
# ELBO
# ---------------------------------------------------------------------------------------------
def elbo_terms(be, prob: Problem, st: State) -> dict:
    """Every term of model section 6, all constants kept (entropies carry an ``H_`` prefix)."""
    t = {}
    elog_pi, elog_omega = _elog_pi(be, st), _elog_omega(be, st)
    family, atoms = y_family(prob), y_atoms(st)
    t["loglik_y"] = family.loglik(be, (st.y_n, st.y_s1, st.y_s2), prob.y_centre, atoms)
    if prob.has_x:
        px = effective_x_prior(prob, st)
        n, s1, s2 = be.weighted_stats(prob.X, st.rho, prob.x_centre)
        t["loglik_x"] = be.nw_loglik_from_stats(n, s1, s2, prob.x_centre,
                                                st.mx, st.lamx, st.Wx, st.nux)
        t["log_p_theta_x"] = be.nw_prior_term(st.mx, st.lamx, st.Wx, st.nux,
                                              px.m0, px.lam0, px.W0inv, px.nu0)
        t["H_theta_x"] = be.nw_entropy(st.mx, st.lamx, st.Wx, st.nux)
    t["log_p_theta_y"] = family.prior_term(be, atoms, prob.y_prior)
    t["H_theta_y"] = family.entropy(be, atoms)
    t["log_p_S"] = float(st.rho.sum(axis=0) @ elog_pi)
    t["log_p_M"] = float(np.sum((composition_counts(prob, st).T @ st.rho) * elog_omega))
    e_a, elog_a = concentration_expectations(be, prob.alpha_prior, st.alpha_shape,
                                             st.alpha_rate)
    e_b, elog_b = concentration_expectations(be, prob.beta_prior, st.beta_shape, st.beta_rate)
    t["log_p_v"] = be.stick_prior_term(st.v_a, st.v_b, e_a, elog_a)
    t["log_p_u"] = be.stick_prior_term(st.u_a, st.u_b, e_b, elog_b)
    t["H_v"] = be.beta_entropy(st.v_a, st.v_b)
    t["H_u"] = be.beta_entropy(st.u_a, st.u_b)
    for name, prior, shape, rate in (("alpha", prob.alpha_prior, st.alpha_shape, st.alpha_rate),
                                     ("beta", prob.beta_prior, st.beta_shape, st.beta_rate)):
        if prior.fixed is None:
            t[f"log_p_{name}"] = be.gamma_prior_term(prior.shape, prior.rate, shape, rate)
            t[f"H_{name}"] = be.gamma_entropy(shape, rate)
    t["H_S"] = st.H_rho
    t["H_M"] = st.H_xi
    return {k: float(v) for k, v in t.items()}


def elbo(be, prob: Problem, st: State) -> float:
    """The evidence lower bound of the current state."""
    return float(sum(elbo_terms(be, prob, st).values()))


# ---------------------------------------------------------------------------------------------
# Posterior means of the weights (for results; not part of the fit)
# ---------------------------------------------------------------------------------------------
def expected_stick_weights(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """E[w] for stick-breaking weights with independent Beta sticks: (G - 1, C) -> (G, C)."""
    ev = a / (a + b)
    G = a.shape[0] + 1
    out = np.ones((G, a.shape[1]))
    out[:-1] = ev
    out[1:] *= np.cumprod(1.0 - ev, axis=0)
    return out
