"""Posterior summaries of a fitted model: the tables a biologist reads.

Clusters are renumbered by size: group (individual) cluster 0 holds the most groups, cell
cluster 0 the most cells, counting hard (argmax) assignments; only occupied clusters are
listed.  ``group_cluster_index`` / ``cell_cluster_index`` map each summary number back to the
model's internal index (the columns of ``group_probs_`` / ``cell_probs_``).

Credible intervals are equal-tailed Monte Carlo intervals from independent draws of the Beta
sticks of q(v) and q(u) (model section 3), turned into weights by stick breaking; point values
are the exact posterior means E[pi], E[omega].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Summary", "summarize"]


@dataclass
class Summary:
    """Posterior summary of a fitted ``NestedAtomsModel`` (``model.summary()``).

    Attributes
    ----------
    n_group_clusters, n_cell_clusters : int
        Occupied clusters (at least one group / cell assigned by argmax).
    group_cluster_index, cell_cluster_index : ndarray
        Internal index of summary cluster c is ``group_cluster_index[c]``.
    groups : DataFrame, indexed by group label
        ``cluster`` (summary number), ``probability`` (q(S) of that cluster), ``n_cells``.
    group_clusters : DataFrame, one row per occupied group cluster
        ``n_groups``, ``expected_groups`` (sum of q(S)), ``n_cells``, ``weight`` (E pi) with
        ``weight_lower`` / ``weight_upper``.
    cell_clusters : DataFrame, one row per occupied cell cluster
        ``n_cells``, ``expected_cells`` (sum of q(M)), ``fraction`` of all cells.
    composition : DataFrame (group clusters x cell clusters)
        Expected fraction of each group cluster's cells in each cell cluster
        (Q_lk / sum_l Q_lk with Q = N' rho); rows sum to 1 up to cells in unlisted atoms.
    cell_weights : DataFrame, long format
        ``group_cluster``, ``cell_cluster``, ``weight`` (E omega_lk), ``lower``, ``upper``.
    differential_abundance : DataFrame, long format
        For each pair of group clusters (a < b) and cell cluster: ``difference`` =
        E[omega_la - omega_lb], its interval ``lower`` / ``upper``, ``prob_greater`` =
        P(omega_la > omega_lb), and ``differs`` (the interval excludes 0).
    coclustering : DataFrame (groups x groups)
        P(S_j = S_j') = sum_k rho_jk rho_j'k under q (1 on the diagonal), in ``group_order``.
    group_order : ndarray
        Group labels in the leaf order of an average-linkage tree on 1 - P (with optimal leaf
        ordering up to 400 groups), so similar individuals sit together.
    cell_means, group_means : DataFrame
        E[mu] of each occupied atom (``group_means`` is None without X).
    cell_covariances, group_covariances : ndarray (clusters, D, D)
        E[Sigma] of each occupied atom (``cell_covariances`` is (clusters, p), the diagonals,
        for a model fit with ``covariance_type="diag"``).
    level, n_samples : credible level and Monte Carlo draws used.
    """

    n_group_clusters: int
    n_cell_clusters: int
    group_cluster_index: np.ndarray
    cell_cluster_index: np.ndarray
    groups: object
    group_clusters: object
    cell_clusters: object
    composition: object
    cell_weights: object
    differential_abundance: object
    coclustering: object
    group_order: np.ndarray
    cell_means: object
    cell_covariances: np.ndarray
    group_means: object
    group_covariances: np.ndarray | None
    level: float
    n_samples: int

    def table(self):
        """One row per group cluster: sizes, weight with interval, and its composition."""
        comp = self.composition.add_prefix("cell_cluster_")
        return self.group_clusters.join(comp)

    def significant_differences(self):
        """The rows of ``differential_abundance`` whose interval excludes 0."""
        da = self.differential_abundance
        return da[da["differs"]].reset_index(drop=True)

    def __str__(self):
        import pandas as pd

        pct = int(round(100 * self.level))
        lines = [
            f"Nested Atoms Model summary: {len(self.groups)} groups in {self.n_group_clusters} "
            f"group cluster(s), {int(self.cell_clusters['n_cells'].sum())} cells in "
            f"{self.n_cell_clusters} cell cluster(s) ({pct}% intervals from "
            f"{self.n_samples} draws).",
            "",
            "Group clusters (weight = E[pi]):",
        ]
        with pd.option_context("display.width", 120, "display.max_columns", 20,
                               "display.precision", 3):
            lines.append(self.group_clusters.to_string())
            lines += ["", "Composition (fraction of each group cluster's cells):",
                      self.composition.to_string()]
            sig = self.significant_differences()
            sig = sig.reindex(sig["difference"].abs().sort_values(ascending=False).index)
            lines += ["", f"Differential abundance: {len(sig)} of "
                          f"{len(self.differential_abundance)} (pair, cell cluster) differences "
                          f"exclude 0 at {pct}%."]
            if len(sig):
                lines.append("Largest:")
                lines.append(sig.head(10).to_string(index=False))
                if len(sig) > 10:
                    lines.append(f"... ({len(sig) - 10} more; see .differential_abundance)")
        return "\n".join(lines)

    def _repr_html_(self):  # pragma: no cover - notebooks only
        return "<pre>" + str(self).replace("&", "&amp;").replace("<", "&lt;") + "</pre>"


def _order_by_size(hard_counts: np.ndarray, soft_counts: np.ndarray) -> np.ndarray:
    """Internal indices of the occupied clusters, largest first (ties: larger soft count)."""
    occupied = np.nonzero(hard_counts > 0)[0]
    keys = np.lexsort((-soft_counts[occupied], -hard_counts[occupied]))
    return occupied[keys]


def _stick_draws(rng, a: np.ndarray, b: np.ndarray, n_samples: int) -> np.ndarray:
    """Weights from ``n_samples`` draws of Beta(a, b) sticks: (G - 1, C) -> (S, G, C)."""
    v = rng.beta(a, b, size=(n_samples,) + a.shape)
    S, _, C = v.shape
    w = np.ones((S, a.shape[0] + 1, C))
    w[:, :-1] = v
    w[:, 1:] *= np.cumprod(1.0 - v, axis=1)
    return w


def _interval(draws: np.ndarray, level: float, axis=0):
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=axis)
    return lo, hi


# scipy's optimal leaf ordering grows about cubically (2 s for 500 groups, 21 s for 1,000 on
# this machine); above this many groups the plain dendrogram order is used.
_MAX_OPTIMAL_LEAF_ORDERING = 400


def _coclustering_order(P: np.ndarray) -> np.ndarray:
    """Leaf order of an average-linkage tree on 1 - P (optimal leaf ordering up to
    ``_MAX_OPTIMAL_LEAF_ORDERING`` groups)."""
    from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering
    from scipy.spatial.distance import squareform

    J = P.shape[0]
    if J < 3:
        return np.arange(J)
    D = np.clip(1.0 - P, 0.0, None)
    np.fill_diagonal(D, 0.0)
    condensed = squareform(0.5 * (D + D.T), checks=False)
    Z = linkage(condensed, method="average")
    if J <= _MAX_OPTIMAL_LEAF_ORDERING:
        Z = optimal_leaf_ordering(Z, condensed)
    return leaves_list(Z)


def summarize(model, n_samples: int = 4000, level: float = 0.95, random_state=0) -> Summary:
    """Build the :class:`Summary` of a fitted model."""
    import pandas as pd

    if not (0.0 < float(level) < 1.0):
        raise ValueError(f"level must be in (0, 1), got {level!r}.")
    n_samples = int(n_samples)
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples!r}.")
    rng = np.random.default_rng(random_state)
    st, prob = model.state_, model.problem_
    data = prob.data
    K, L = st.K, st.L
    labels = pd.Index(model.groups_, name="group")

    group_hard = np.bincount(model.group_labels_, minlength=K)
    cell_hard = np.bincount(model.cell_labels_, minlength=L)
    R = st.rho.sum(axis=0)
    gk = _order_by_size(group_hard, R)
    cl = _order_by_size(cell_hard, st.y_n)
    g_rank = np.full(K, -1)
    g_rank[gk] = np.arange(gk.size)
    c_rank = np.full(L, -1)
    c_rank[cl] = np.arange(cl.size)
    g_names = pd.RangeIndex(gk.size, name="group_cluster")
    c_names = pd.RangeIndex(cl.size, name="cell_cluster")

    sizes = data.group_sizes
    groups = pd.DataFrame({
        "cluster": g_rank[model.group_labels_],
        "probability": st.rho[np.arange(st.rho.shape[0]), model.group_labels_],
        "n_cells": sizes,
    }, index=labels)

    # Weights: exact means, Monte Carlo intervals.
    pi_draws = _stick_draws(rng, st.v_a, st.v_b, n_samples)[:, :, 0]         # (S, K)
    pi_lo, pi_hi = _interval(pi_draws[:, gk], level)
    Q = st.N_jl.T @ st.rho                                                     # (L, K)
    cells_per_k = np.bincount(model.group_labels_, weights=sizes, minlength=K)
    group_clusters = pd.DataFrame({
        "internal_index": gk,
        "n_groups": group_hard[gk],
        "expected_groups": R[gk],
        "n_cells": cells_per_k[gk].astype(np.int64),
        "weight": model.group_weights_[gk],
        "weight_lower": pi_lo,
        "weight_upper": pi_hi,
    }, index=g_names)
    cell_clusters = pd.DataFrame({
        "internal_index": cl,
        "n_cells": cell_hard[cl],
        "expected_cells": st.y_n[cl],
        "fraction": cell_hard[cl] / cell_hard.sum(),
    }, index=c_names)

    comp = Q[np.ix_(cl, gk)] / np.maximum(Q[:, gk].sum(axis=0), 1e-300)
    composition = pd.DataFrame(comp.T, index=g_names, columns=c_names)

    omega_draws = _stick_draws(rng, st.u_a[:, gk], st.u_b[:, gk], n_samples)[:, cl, :]
    om_lo, om_hi = _interval(omega_draws, level)                               # (Lo, Ko)
    e_omega = model.cell_weights_[np.ix_(cl, gk)]
    kk, ll = np.meshgrid(np.arange(gk.size), np.arange(cl.size), indexing="ij")
    cell_weights = pd.DataFrame({
        "group_cluster": kk.ravel(), "cell_cluster": ll.ravel(),
        "weight": e_omega.T.ravel(), "lower": om_lo.T.ravel(), "upper": om_hi.T.ravel(),
    })

    rows = []
    for a in range(gk.size):
        for b in range(a + 1, gk.size):
            diff = omega_draws[:, :, a] - omega_draws[:, :, b]                  # (S, Lo)
            lo, hi = _interval(diff, level)
            for l in range(cl.size):
                rows.append((a, b, l, e_omega[l, a] - e_omega[l, b], lo[l], hi[l],
                             float(np.mean(diff[:, l] > 0))))
    da = pd.DataFrame(rows, columns=["group_cluster_a", "group_cluster_b", "cell_cluster",
                                     "difference", "lower", "upper", "prob_greater"])
    da["differs"] = (da["lower"] > 0) | (da["upper"] < 0)

    P = st.rho @ st.rho.T
    np.fill_diagonal(P, 1.0)
    order = _coclustering_order(P)
    ordered = labels[order]
    coclustering = pd.DataFrame(P[np.ix_(order, order)], index=ordered,
                                columns=pd.Index(ordered, name="group"))

    p = st.my.shape[1]
    cell_means = pd.DataFrame(model.cell_means_[cl], index=c_names,
                              columns=[f"y{d}" for d in range(p)])
    if prob.has_x:
        q = st.mx.shape[1]
        group_means = pd.DataFrame(model.group_means_[gk], index=g_names,
                                   columns=[f"x{d}" for d in range(q)])
        group_covariances = model.group_covariances_[gk]
    else:
        group_means, group_covariances = None, None
    return Summary(
        n_group_clusters=int(gk.size), n_cell_clusters=int(cl.size),
        group_cluster_index=gk, cell_cluster_index=cl, groups=groups,
        group_clusters=group_clusters, cell_clusters=cell_clusters, composition=composition,
        cell_weights=cell_weights, differential_abundance=da, coclustering=coclustering,
        group_order=np.asarray(ordered), cell_means=cell_means,
        cell_covariances=model.cell_covariances_[cl], group_means=group_means,
        group_covariances=group_covariances, level=float(level), n_samples=n_samples,
    )
