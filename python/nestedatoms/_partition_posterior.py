"""The exact posterior over partitions of a few individuals under the simulator's model.

``Simulation.bayes_labels`` is given the true parameters (means, covariances, weights), so on
individuals it scores perfectly even where a cluster holds one individual and no method that
has to learn the parameters could find it.  A fairer ceiling is the posterior of the partition
itself under the model that drew the data, every cluster's parameters integrated out (the
hyperparameters T, alpha0_x, alpha0_y and lam_x are still given, as are the cells' labels):

    p(S | X, M) ∝ p(S | alpha0_x) p(X | S) p(M | S),

* p(S): group-cluster weights pi ~ Dir(alpha0_x / T) integrated out (Dirichlet-multinomial);
* p(X | S): each cluster's x atom ~ NW(0, lam_x, I, nu0 = q + 5) integrated out (Normal-Wishart
  marginal likelihood, Murphy 2007 eq. 266);
* p(M | S): each cluster's cell-type weights omega_.k ~ Dir(alpha0_y / L) integrated out, given
  the cells' true labels M (so this ceiling also knows every cell's type: it is optimistic).

Every factor is a product over the blocks of the partition, except the count of ways to label
b blocks with T cluster names (T! / (T - b)!), so the best partition and the normaliser come
from a dynamic programme over subsets of individuals (O(3^J T)); J is therefore capped.  The
mode is the Bayes answer under 0-1 loss: it bounds the chance of exact recovery, not the ARI
of every data set.  Valid only for a ``Simulation`` drawn by ``simulate`` as it stands (not,
for example, one whose cells were redrawn with other compositions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln, logsumexp, multigammaln

from ._init import relabel_by_first_appearance

__all__ = ["PartitionPosterior", "partition_posterior", "posterior_from_scores",
           "nw_log_marginal", "subset_members"]

MAX_GROUPS = 14        # 3^14 T subset pairs: seconds; every further individual triples it


@dataclass(frozen=True)
class PartitionPosterior:
    """The exact posterior over partitions of the individuals (see module docstring).

    ``map_labels``: the posterior mode (J,), blocks numbered by first appearance;
    ``log_prob_map`` and ``log_prob_truth``: log posterior probabilities of that partition and
    of the true one (both <= 0; equal when the truth is the mode); ``log_evidence``: the log
    normaliser, log p(X, M) under the given hyperparameters (for choosing them by evidence).
    """

    map_labels: np.ndarray
    log_prob_map: float
    log_prob_truth: float
    log_evidence: float


def nw_log_marginal(X: np.ndarray, members: np.ndarray, lam0: float, nu0: float,
                    W0inv: np.ndarray, m0: np.ndarray) -> np.ndarray:
    """The Normal-Wishart marginal likelihood of sets of individuals, each set one cluster.

    Parameters
    ----------
    X : ndarray (J, q)
        The individuals' vectors.
    members : ndarray (n_sets, J) of bool
        Which individuals each set holds.
    lam0, nu0, W0inv, m0 : float, float, ndarray (q, q), ndarray (q,)
        The prior NW(m0, lam0, W0, nu0), W0 given by its inverse.

    Returns
    -------
    ndarray (n_sets,)
        log p(x_B) of each set B, the atom integrated out (Murphy 2007, eq. 266).
    """
    n_sets, q = members.shape[0], X.shape[1]
    Z = X - m0
    weights = members.astype(np.float64)
    n = weights.sum(axis=1)
    sx = weights @ Z                                                  # (n_sets, q)
    sxx = (weights @ np.einsum("ja,jb->jab", Z, Z).reshape(len(Z), q * q)).reshape(n_sets, q, q)
    # W_n^-1 = W0^-1 + C + lam0 n / (lam0 + n) (xbar - m0)(xbar - m0)'
    #        = W0^-1 + sum z z' - (sum z)(sum z)' / (lam0 + n)
    Wn_inv = W0inv + sxx - np.einsum("sa,sb->sab", sx, sx) / (lam0 + n)[:, None, None]
    _, logdet_n = np.linalg.slogdet(Wn_inv)
    _, logdet_0 = np.linalg.slogdet(W0inv)
    nu_n = nu0 + n
    return (-0.5 * n * q * np.log(np.pi) + 0.5 * q * (np.log(lam0) - np.log(lam0 + n))
            + np.array([multigammaln(v / 2.0, q) for v in nu_n]) - multigammaln(nu0 / 2.0, q)
            + 0.5 * nu0 * logdet_0 - 0.5 * nu_n * logdet_n)


def _dirichlet_multinomial(counts: np.ndarray, a: float) -> np.ndarray:
    """log p(one sequence with these category counts) under symmetric Dir(a), rows of counts."""
    n_cat = counts.shape[1]
    return (gammaln(n_cat * a) - gammaln(n_cat * a + counts.sum(axis=1))
            + (gammaln(a + counts) - gammaln(a)).sum(axis=1))


def subset_members(J: int) -> np.ndarray:
    """Membership of every non-empty subset of J individuals.

    Parameters
    ----------
    J : int

    Returns
    -------
    ndarray (2**J - 1, J) of bool
        Row m - 1 is the subset whose bit mask is m.
    """
    masks = np.arange(1, 2 ** J)
    return ((masks[:, None] >> np.arange(J)) & 1).astype(bool)


def _block_scores(X, counts, T, alpha0_x, alpha0_y, lam_x, nu0):
    """Score of every non-empty subset of individuals as one block, indexed by bit mask."""
    q = X.shape[1]
    members = subset_members(X.shape[0])
    a_x = alpha0_x / T
    sizes = members.sum(axis=1)
    score = (nw_log_marginal(X, members, lam_x, nu0, np.eye(q), np.zeros(q))
             + _dirichlet_multinomial(members.astype(np.float64) @ counts,
                                      alpha0_y / counts.shape[1])
             + gammaln(a_x + sizes) - gammaln(a_x))
    return np.concatenate([[0.0], score])


def _subsets_with_lowest_bit(mask: int) -> np.ndarray:
    low = mask & -mask
    bits = [1 << i for i in range((mask ^ low).bit_length()) if (mask ^ low) >> i & 1]
    if not bits:
        return np.array([low])
    picks = (np.arange(2 ** len(bits))[:, None] >> np.arange(len(bits))) & 1
    return picks @ np.array(bits) + low


def partition_posterior(X: np.ndarray, counts: np.ndarray, truth: np.ndarray, T: int,
                        alpha0_x: float, alpha0_y: float, lam_x: float,
                        nu0: float) -> PartitionPosterior:
    """Exact posterior over partitions of the J individuals (module docstring).

    X (J, q) group vectors; counts (J, L) each individual's cells per true cell type;
    truth (J,) true cluster labels; T, alpha0_x, alpha0_y, lam_x as in ``simulate``; the x
    atoms ~ NW(0, lam_x, I, nu0).
    """
    X = np.asarray(X, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    _check_size(X.shape[0])
    block = _block_scores(X, counts, T, alpha0_x, alpha0_y, lam_x, nu0)
    # labelling b blocks with distinct names out of T, times the Dirichlet normaliser
    b = np.arange(1, T + 1)
    label_term = np.concatenate([[-np.inf], gammaln(T + 1) - gammaln(T + 1 - b)
                                 + gammaln(alpha0_x) - gammaln(alpha0_x + X.shape[0])])
    return posterior_from_scores(block, label_term, truth)


def _check_size(J: int) -> None:
    if J > MAX_GROUPS:
        raise ValueError(f"the exact partition posterior enumerates subsets of the individuals "
                         f"and is limited to J <= {MAX_GROUPS}; got J = {J}.")


def posterior_from_scores(block: np.ndarray, label_term: np.ndarray,
                          truth: np.ndarray) -> PartitionPosterior:
    """The mode and the normaliser of p(S) ∝ exp(label_term[b] + sum of block[B] over the b
    blocks B of S), for any prior and likelihood that factor so.

    ``block`` (2^J,): the score of each subset of the J individuals as one block, by bit mask
    (entry 0 unused); ``label_term`` (b_max + 1,): the part that depends only on the number of
    blocks (-inf where b is impossible; b_max caps it).  Dynamic programme over subsets.
    """
    J = int(np.log2(block.shape[0]))
    _check_size(J)
    T = label_term.shape[0] - 1
    full = 2 ** J - 1
    # best[m, b] / total[m, b]: max / logsumexp over partitions of the set m into b blocks
    best = np.full((full + 1, T + 1), -np.inf)
    total = np.full((full + 1, T + 1), -np.inf)
    choice = np.zeros((full + 1, T + 1), dtype=np.int64)
    best[0, 0] = total[0, 0] = 0.0
    for mask in range(1, full + 1):
        subs = _subsets_with_lowest_bit(mask)
        rest = mask ^ subs
        cand = block[subs][:, None] + best[rest, :-1]                 # (n_subs, T)
        arg = np.argmax(cand, axis=0)
        best[mask, 1:] = cand[arg, np.arange(T)]
        choice[mask, 1:] = subs[arg]
        total[mask, 1:] = logsumexp(block[subs][:, None] + total[rest, :-1], axis=0)
    log_z = logsumexp(total[full] + label_term)
    b_best = int(np.argmax(best[full] + label_term))
    labels = np.empty(J, dtype=np.int64)
    mask, b = full, b_best
    while mask:
        sub = int(choice[mask, b])
        labels[(sub >> np.arange(J)) & 1 == 1] = b_best - b
        mask, b = mask ^ sub, b - 1
    truth = np.asarray(truth)
    truth_blocks = [int(((truth == k).astype(np.int64) << np.arange(J)).sum())
                    for k in np.unique(truth)]
    log_truth = block[truth_blocks].sum() + label_term[len(truth_blocks)]
    return PartitionPosterior(map_labels=relabel_by_first_appearance(labels),
                              log_prob_map=float(best[full, b_best] + label_term[b_best] - log_z),
                              log_prob_truth=float(log_truth - log_z),
                              log_evidence=float(log_z))
