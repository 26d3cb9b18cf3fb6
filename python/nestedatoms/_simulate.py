"""Synthetic nested data drawn from the model itself (model section 8), with the truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Simulation", "simulate", "simulate_cohort"]

# Atom precisions are drawn from Wishart(dim + ATOM_DF_EXTRA, I) (model section 8)
ATOM_DF_EXTRA = 5


@dataclass
class Simulation:
    """A simulated cohort and the parameters that generated it.

    Y (N, p) cells, ``groups`` (N,) the group label of each cell, X (J, q) one row per group in
    the order of ``group_names`` (the sorted unique labels); ``group_truth`` (J,) and
    ``cell_truth`` (N,) the true cluster labels; the remaining fields are the true weights and
    atoms (means and precision matrices).
    """

    Y: np.ndarray
    groups: np.ndarray
    X: np.ndarray
    group_names: np.ndarray
    group_truth: np.ndarray
    cell_truth: np.ndarray
    group_weights: np.ndarray      # (T,) pi
    cell_weights: np.ndarray       # (L_true, T) omega
    x_means: np.ndarray
    x_precisions: np.ndarray
    y_means: np.ndarray
    y_precisions: np.ndarray
    # the generating hyperparameters (model section 8), for the exact partition posterior
    alpha0_x: float = 25.0
    alpha0_y: float = 25.0
    lam_x: float = 0.1
    lam_y: float = 0.1
    compositions_shared: bool = False      # set by with_shared_composition


    def _gaussian_logpdf(self, Z, means, precisions):
        from scipy.stats import multivariate_normal

        return np.column_stack([
            multivariate_normal(mean=m, cov=np.linalg.inv(P)).logpdf(Z).reshape(-1)
            for m, P in zip(means, precisions)
        ])

    def bayes_posteriors(self):
        """Exact posteriors P(S_j | data) (J, T) and P(M_ji | data) (N, L_true) under the truth.

        The cell posterior marginalises the group's cluster, so it is the best any method can
        do: its argmax is the Bayes classifier that recovery is judged against.
        """
        from scipy.special import logsumexp

        log_omega = np.log(self.cell_weights)                    # (L, T)
        ly = self._gaussian_logpdf(self.Y, self.y_means, self.y_precisions)     # (N, L)
        lx = self._gaussian_logpdf(self.X, self.x_means, self.x_precisions)     # (J, T)
        # per cell and candidate group cluster k: log sum_l omega_lk N(y | l)
        joint = ly[:, :, None] + log_omega[None, :, :]             # (N, L, T)
        per_cell = logsumexp(joint, axis=1)                        # (N, T)
        codes = np.searchsorted(self.group_names, self.groups)
        J = self.X.shape[0]
        log_s = np.log(self.group_weights)[None, :] + lx
        np.add.at(log_s, codes, per_cell)
        post_s = np.exp(log_s - logsumexp(log_s, axis=1, keepdims=True))  # (J, T)
        cond_m = np.exp(joint - per_cell[:, None, :])              # P(M = l | S = k, y)
        post_m = np.einsum("nlk,nk->nl", cond_m, post_s[codes])
        assert post_s.shape[0] == J
        return post_s, post_m

    def bayes_labels(self):
        """(group labels, cell labels) of the Bayes classifier under the true parameters."""
        post_s, post_m = self.bayes_posteriors()
        return np.argmax(post_s, axis=1), np.argmax(post_m, axis=1)

    def group_partition_posterior(self):
        """The exact posterior over partitions of the individuals under the model that drew
        them, every parameter integrated out and the cells' true labels given.

        :func:`bayes_labels` knows the true parameters, so it places even a one-individual
        cluster correctly; this is the ceiling for a method that must learn them (it is still
        told T, alpha0 and lam, and it bounds the chance of exact recovery, not every ARI).
        Returns a ``PartitionPosterior``: ``map_labels`` (the posterior mode), ``log_prob_map`` and
        ``log_prob_truth``.  Exact by enumeration, so J is limited to 14.
        """
        from ._partition_posterior import partition_posterior

        if self.compositions_shared:
            raise ValueError("group_partition_posterior assumes each group cluster drew its own "
                             "composition; this Simulation comes from "
                             "with_shared_composition, whose cells were redrawn outside that "
                             "model.  Use the Simulation it was made from.")
        return partition_posterior(self.X, self._cell_type_counts(), self.group_truth,
                                   T=self.group_weights.shape[0], alpha0_x=self.alpha0_x,
                                   alpha0_y=self.alpha0_y, lam_x=self.lam_x,
                                   nu0=self.X.shape[1] + ATOM_DF_EXTRA)

    def with_shared_composition(self, random_state=None) -> "Simulation":
        """A copy whose cells are redrawn so that every group shares group cluster 0's
        cell-type composition: the group clusters then differ only in x, and no method that
        ignores x can separate them.  X, the atoms and the group labels are kept."""
        import dataclasses

        rng = np.random.default_rng(random_state)
        omega = self.cell_weights[:, 0]
        sizes = np.bincount(np.searchsorted(self.group_names, self.groups),
                            minlength=self.X.shape[0])
        M = np.concatenate([rng.choice(omega.size, size=n, p=omega) for n in sizes])
        Y = np.empty_like(self.Y)
        for l in range(omega.size):
            idx = np.nonzero(M == l)[0]
            Y[idx] = rng.multivariate_normal(self.y_means[l], np.linalg.inv(self.y_precisions[l]),
                                             size=idx.size)
        weights = np.repeat(omega[:, None], self.cell_weights.shape[1], axis=1)
        return dataclasses.replace(self, Y=Y, cell_truth=M, cell_weights=weights,
                                   compositions_shared=True)

    def _cell_type_counts(self):
        """(J, L_true) each group's number of cells of each true cell type."""
        codes = np.searchsorted(self.group_names, self.groups)
        counts = np.zeros((self.X.shape[0], self.cell_weights.shape[0]))
        np.add.at(counts, (codes, self.cell_truth), 1.0)
        return counts

    def covariate_table(self, prefix="x"):
        """X as a DataFrame indexed by group label, columns ``{prefix}0, {prefix}1, ...``."""
        import pandas as pd

        return pd.DataFrame(self.X, index=pd.Index(self.group_names, name="group"),
                            columns=[f"{prefix}{d}" for d in range(self.X.shape[1])])

    def to_anndata(self, group_key="donor_id", use_rep="X_pca", covariate_prefix="x"):
        """The cohort as an AnnData (no expression matrix), truth included.

        ``obsm[use_rep]`` = Y; ``obs``: ``group_key`` (categorical), the group covariates as
        columns ``{covariate_prefix}0, ...`` (constant within each group), ``true_cell_cluster``
        and ``true_group_cluster``; ``uns["truth"]``: the true weights and atoms, the
        covariate table and each group's true cluster.
        """
        import anndata
        import pandas as pd

        codes = np.searchsorted(self.group_names, self.groups)
        cov = self.covariate_table(covariate_prefix)
        obs = pd.DataFrame({group_key: pd.Categorical(self.groups,
                                                      categories=self.group_names)},
                           index=pd.Index([f"cell{i}" for i in range(self.Y.shape[0])]))
        for col in cov.columns:
            obs[col] = cov[col].to_numpy()[codes]
        obs["true_cell_cluster"] = pd.Categorical(self.cell_truth.astype(str))
        obs["true_group_cluster"] = pd.Categorical(self.group_truth[codes].astype(str))
        adata = anndata.AnnData(obs=obs)
        adata.obsm[use_rep] = self.Y.copy()
        adata.uns["truth"] = {
            "group_weights": self.group_weights, "cell_weights": self.cell_weights,
            "x_means": self.x_means, "x_precisions": self.x_precisions,
            "y_means": self.y_means, "y_precisions": self.y_precisions,
            "group_covariates": cov,
            "group_clusters": pd.DataFrame({"true_group_cluster": self.group_truth},
                                           index=cov.index),
        }
        return adata


def _draw_atoms(rng, n_atoms, dim, lam, df):
    """Lambda ~ Wishart(df, I), mu ~ N(0, (lam Lambda)^-1)."""
    from scipy.stats import wishart

    precisions = np.array([np.atleast_2d(wishart(df=df, scale=np.eye(dim)).rvs(random_state=rng))
                           for _ in range(n_atoms)])
    means = np.array([rng.multivariate_normal(np.zeros(dim), np.linalg.inv(lam * P))
                      for P in precisions])
    return means, precisions


def simulate(n_groups=12, cells_per_group=100, n_group_clusters=3, n_cell_clusters=3,
             n_group_features=5, n_cell_features=5, alpha0_x=25.0, alpha0_y=25.0,
             lam_x=0.1, lam_y=0.1, donor_concentration=None, donor_shift=0.0,
             random_state=None) -> Simulation:
    """Draw a cohort from the Nested Atoms Model (model section 8), optionally departing from
    it as real cohorts do.

    The defaults are the published toy design: J = 12 groups of 100 cells, 3 group clusters,
    3 cell clusters, q = p = 5, alpha0 = 25, lam = 0.1 (smaller lam separates atoms more).

    Parameters
    ----------
    n_groups : int
        Number of groups (individuals) J.
    cells_per_group : int or sequence of int
        Cells per group: one number for all, or one per group.
    n_group_clusters, n_cell_clusters : int
        True numbers T of group clusters and L_true of cell clusters.
    n_group_features, n_cell_features : int
        Dimensions q of x and p of y.
    alpha0_x, alpha0_y : float
        Group-cluster weights ~ Dir(alpha0_x / T); each group cluster's cell-cluster weights
        ~ Dir(alpha0_y / L_true).
    lam_x, lam_y : float
        Atom means ~ N(0, (lam Lambda)^-1) with Lambda ~ Wishart(dim + 5, I).
    donor_concentration : float or None
        Donor-level variation of composition: None (NAM) gives every group of cluster k the
        composition omega_.k; a number c draws each group's own composition
        ~ Dirichlet(c omega_.k) (smaller c, more variation; real cohorts: tens to hundreds).
    donor_shift : float
        Donor-level expression shifts within a cell type: each group's mean of cell type l is
        moved by a draw from N(0, donor_shift^2 Sigma_l) (0: none; 0.5: half a cluster's
        spread).  ``cell_truth`` stays the type.
    random_state : int or None

    Returns
    -------
    Simulation
    """
    rng = np.random.default_rng(random_state)
    J, T, Lt = int(n_groups), int(n_group_clusters), int(n_cell_clusters)
    q, p = int(n_group_features), int(n_cell_features)
    sizes = np.broadcast_to(np.asarray(cells_per_group, dtype=np.int64), (J,)).copy()
    if (sizes < 1).any():
        raise ValueError("cells_per_group must be >= 1 for every group.")
    pi = rng.dirichlet(np.full(T, alpha0_x / T))
    omega = np.column_stack([rng.dirichlet(np.full(Lt, alpha0_y / Lt)) for _ in range(T)])
    x_means, x_prec = _draw_atoms(rng, T, q, lam_x, q + ATOM_DF_EXTRA)
    y_means, y_prec = _draw_atoms(rng, Lt, p, lam_y, p + ATOM_DF_EXTRA)
    S = rng.choice(T, size=J, p=pi)
    X = np.array([rng.multivariate_normal(x_means[k], np.linalg.inv(x_prec[k])) for k in S])
    if donor_concentration is None:
        donor_omega = omega[:, S]
    else:
        c = float(donor_concentration)
        if not c > 0:
            raise ValueError(f"donor_concentration must be > 0 or None, got "
                             f"{donor_concentration!r}.")
        # a floor keeps every Dirichlet parameter positive when a type has weight ~0
        donor_omega = np.column_stack([rng.dirichlet(np.maximum(c * omega[:, k], 1e-12))
                                       for k in S])
    M = np.concatenate([rng.choice(Lt, size=n, p=donor_omega[:, j])
                        for j, n in enumerate(sizes)])
    Y = np.empty((M.size, p))
    for l in range(Lt):
        idx = np.nonzero(M == l)[0]
        Y[idx] = rng.multivariate_normal(y_means[l], np.linalg.inv(y_prec[l]), size=idx.size)
    if donor_shift:
        cell_donor = np.repeat(np.arange(J), sizes)
        for l in range(Lt):
            shifts = rng.multivariate_normal(np.zeros(p), donor_shift ** 2
                                             * np.linalg.inv(y_prec[l]), size=J)
            idx = np.nonzero(M == l)[0]
            Y[idx] += shifts[cell_donor[idx]]
    width = len(str(J - 1))
    names = np.array([f"ind{j:0{width}d}" for j in range(J)])
    return Simulation(Y=Y, groups=np.repeat(names, sizes), X=X, group_names=names,
                      group_truth=S, cell_truth=M, group_weights=pi, cell_weights=omega,
                      x_means=x_means, x_precisions=x_prec, y_means=y_means,
                      y_precisions=y_prec, alpha0_x=float(alpha0_x),
                      alpha0_y=float(alpha0_y), lam_x=float(lam_x), lam_y=float(lam_y))


def simulate_cohort(n_groups=200, median_cells=150, cells_sd=0.6, min_cells=20,
                    n_group_clusters=4, n_cell_clusters=8, n_group_features=5,
                    n_cell_features=10, alpha0_x=25.0, alpha0_y=25.0, lam_x=0.1, lam_y=0.1,
                    random_state=None) -> Simulation:
    """A OneK1K-shaped cohort: many individuals with a variable number of cells each.

    Cells per individual are log-normal (median ``median_cells``, log-sd ``cells_sd``, at least
    ``min_cells``), as in single-cell cohorts such as OneK1K (~1,000 donors, a few hundred to a
    few thousand cells each); x plays genotype principal components (q = 5) and y expression
    principal components (p = 10) of ``n_cell_clusters`` cell types.  Everything else is
    :func:`simulate` (model section 8).
    """
    rng = np.random.default_rng(random_state)
    sizes = np.maximum(np.round(rng.lognormal(np.log(median_cells), cells_sd, int(n_groups))),
                       min_cells).astype(np.int64)
    seed = int(rng.integers(2**63))
    return simulate(n_groups=n_groups, cells_per_group=sizes,
                    n_group_clusters=n_group_clusters, n_cell_clusters=n_cell_clusters,
                    n_group_features=n_group_features, n_cell_features=n_cell_features,
                    alpha0_x=alpha0_x, alpha0_y=alpha0_y, lam_x=lam_x, lam_y=lam_y,
                    random_state=seed)
