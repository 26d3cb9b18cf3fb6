"""Initialisation: a starting partition of cells and groups, turned into a full state.

Cells are seeded by k-means++ on y (Lloyd iterations on a subsample, then every cell assigned
to its nearest centre).  Groups are seeded by k-means++ on a feature vector that joins each
group's cell-cluster composition with its standardised x, so that both sources of signal the
model uses shape the first partition.  The state is then completed by the global blocks, so the
first sweep starts from exact coordinate-ascent optima of everything but the partition.
"""

from __future__ import annotations

import warnings

import numpy as np

from ._atoms import y_family
from ._batches import add_in_order
from ._state import Problem, State
from ._steps import GLOBAL_BLOCKS, composition_weights

__all__ = ["kmeans_labels", "state_from_labels", "initial_state"]

_MAX_KMEANS_POINTS = 20000
_VQ_CHUNK = 65536
_STATS_ROWS = 32768


def kmeans_labels(Z: np.ndarray, k: int, rng: np.random.Generator, n_iter: int = 25,
                  max_points: int = _MAX_KMEANS_POINTS, rows: np.ndarray | None = None
                  ) -> np.ndarray:
    """k-means++ then Lloyd on (a subsample of) Z; labels for every row, renumbered by size.

    ``rows``: cluster ``Z[rows]`` instead (the same labels) without gathering a copy of it.
    """
    n = Z.shape[0] if rows is None else rows.shape[0]
    k = int(min(k, n))
    if k <= 1:
        return np.zeros(n, dtype=np.int64)

    def take(idx):
        return Z[idx] if rows is None else Z[rows[idx]]

    if n <= max_points:
        sub = Z if rows is None else Z[rows]
    else:
        sub = take(kmeans_sample(n, max_points, rng))
    ref, centres = kmeans_centres(sub, k, rng, n_iter)
    labels = np.empty(n, dtype=np.int64)
    for start in range(0, n, _VQ_CHUNK):      # a chunk at a time: no N x p copy of Z
        labels[start:start + _VQ_CHUNK] = nearest_centre(
            take(slice(start, start + _VQ_CHUNK)), ref, centres)
    return relabel_by_size(labels)


def kmeans_sample(n: int, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """The rows k-means is run on when there are more than ``max_points``."""
    return rng.choice(n, max_points, replace=False)


def kmeans_centres(sub: np.ndarray, k: int, rng: np.random.Generator, n_iter: int = 25):
    """(ref, centres): k-means++ then Lloyd on the rows of ``sub``, relative to ``ref``.

    scipy's ``kmeans2`` makes the k-means++ start and the first Lloyd iteration; the others
    run here, stopping at the first that leaves the centres exactly as they were (every later
    one would too): the same centres as ``kmeans2`` with ``iter=n_iter``, bit for bit, in a
    few iterations instead of all of them (the group search runs hundreds of these on a few
    dozen rows, where each iteration's overhead was most of the cost).
    """
    from scipy.cluster.vq import kmeans2, vq

    # k-means is translation invariant: work relative to the first row, so that a column
    # that is constant (at 1e170, say) is exactly 0 and cannot overflow the squared
    # distances (scipy's k-means++ crashed the interpreter on such a column).
    ref = sub[0].copy()
    shifted = sub - ref
    # finiteness checked once here, not by kmeans2 and vq in every iteration
    if not np.isfinite(shifted).all():
        raise ValueError("array must not contain infs or NaNs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kmeans2 warns when a cluster empties; harmless here
        centres, _ = kmeans2(shifted, k, iter=min(n_iter, 1), minit="++", seed=rng,
                             check_finite=False)
    for _ in range(n_iter - 1):
        labels, _ = vq(shifted, centres, check_finite=False)
        new = _cluster_means(shifted, labels, centres)
        if np.array_equal(new, centres):
            break
        centres = new
    return ref, centres


def _cluster_means(Z: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """One Lloyd update as scipy's kmeans2 makes it: each centre the mean of its rows, summed
    in row order, an empty cluster's centre left where it was.

    One np.bincount over Z's entries, binned by (label, column): it adds in row order within
    each bin as np.add.at does (the same sums bit for bit) at a fraction of its cost (np.add.at
    was most of the split move's 2-means on 20,000 rows; a bincount per column was most of the
    group search's k-means on a few dozen rows)."""
    k, D = centres.shape
    bins = (labels[:, None] * D + np.arange(D)).ravel()
    sums = np.bincount(bins, weights=np.ascontiguousarray(Z).ravel(),
                       minlength=k * D).reshape(k, D)
    counts = np.bincount(labels, minlength=k)
    out = centres.copy()
    has = counts > 0
    out[has] = sums[has] / counts[has, None]
    return out


def nearest_centre(Z: np.ndarray, ref: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The nearest centre of each row of Z (row by row, so any cut of Z gives the same)."""
    from scipy.cluster.vq import vq

    labels, _ = vq(Z - ref, centres, check_finite=False)
    return labels


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0, 1, ... from the largest cluster down (ties by old label)."""
    counts = np.bincount(labels)
    rank = np.empty_like(counts)
    rank[np.argsort(-counts, kind="stable")] = np.arange(counts.size)
    return rank[labels]


def relabel_by_first_appearance(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0, 1, ... in order of first appearance: one labelling per partition."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse.ravel()]


def one_hot(labels: np.ndarray, width: int, out: np.ndarray | None = None) -> np.ndarray:
    """Hard responsibilities: row i is the indicator of labels[i] among ``width`` columns.
    ``out``: a float64 (len(labels), width) array to write them into (its contents are
    overwritten), else a new one."""
    if out is None:
        out = np.zeros((labels.shape[0], width))
    else:
        out.fill(0.0)
    out[np.arange(labels.shape[0]), labels] = 1.0
    return out


def label_counts(labels: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
    """(J, width): how many cells of each group (cells ``offsets[j]:offsets[j + 1]``) carry
    each label, as float64 (the N_jl of a hard partition; exact integers)."""
    cell_group = np.repeat(np.arange(offsets.size - 1), np.diff(offsets))
    counts = np.bincount(cell_group * width + labels, minlength=(offsets.size - 1) * width)
    return counts.reshape(offsets.size - 1, width).astype(np.float64)


def label_stats(be, Y: np.ndarray, labels: np.ndarray, width: int, weights, centre,
                family):
    """(n, s1, s2) of a hard partition of the rows of Y (rows weighted by ``weights`` (N,) or
    1), about ``centre``: the weighted statistics of its one-hot responsibilities, computed
    label by label on each label's rows (N D^2 work, not N L D^2)."""
    stats = family.fn(be, "stats")
    D = Y.shape[1]
    n, s1 = np.zeros(width), np.zeros((width, D))
    s2 = np.zeros((width,) + family.atom_shape(D))
    order = np.argsort(labels, kind="stable")          # each label's rows in row order
    bounds = np.concatenate(([0], np.cumsum(np.bincount(labels, minlength=width))))
    # a slab of each label's rows at a time: a gathered copy of a large cluster's rows would
    # add to the fit's memory peak (a later restart starts while the best one's xi is kept)
    for l in range(width):
        for start in range(bounds[l], bounds[l + 1], _STATS_ROWS):
            rows = order[start:min(start + _STATS_ROWS, bounds[l + 1])]
            w = (np.ones((rows.size, 1)) if weights is None
                 else np.ascontiguousarray(weights[rows])[:, None])
            n_l, s1_l, s2_l = stats(np.ascontiguousarray(Y[rows]), w, centre)
            n[l] += n_l[0]
            s1[l] += s1_l[0]
            s2[l] += s2_l[0]
    return n, s1, s2


def state_from_labels(be, prob: Problem, cell_labels: np.ndarray,
                      group_labels: np.ndarray, xi_buffer: np.ndarray | None = None) -> State:
    """A complete state whose local factors are the given hard partition (sorted layout).
    ``xi_buffer``: an (N, L) float64 array the state's xi is written into (see
    ``initial_state``), else a new one."""
    K, L = prob.K, prob.L
    cell_labels = np.asarray(cell_labels)
    rho = one_hot(np.asarray(group_labels), K)
    N_jl = label_counts(cell_labels, prob.offsets, L)
    zeta = composition_weights(prob.data.group_sizes, prob.donor_concentration)
    w = None if zeta is None else np.repeat(zeta, prob.data.group_sizes)
    family = y_family(prob)
    # batch by batch, added in batch order (as the dask start, ``_dask.initial_state``)
    parts = [label_stats(be, prob.Y[r0:r1], cell_labels[r0:r1], L,
                         None if w is None else w[r0:r1], prob.y_centre, family)
             for _, _, r0, r1 in prob.batches]
    y_stats = parts[0] if len(parts) == 1 else tuple(
        add_in_order([p[i] for p in parts]) for i in range(3))
    # xi (N x L) last, once the temporaries above are freed: a later restart starts while the
    # best one's xi is kept, and this is then the fit's memory peak
    xi = one_hot(cell_labels, L, out=xi_buffer)
    return state_from_stats(be, prob, xi, rho, N_jl, y_stats)


def state_from_stats(be, prob: Problem, xi, rho: np.ndarray, N_jl: np.ndarray,
                     y_stats) -> State:
    """A complete state from the cells' statistics of a hard partition (N_jl and the
    weighted y statistics about the centre) and q(S); ``xi`` is kept as given (an array, or
    a stand-in for one kept on dask workers)."""
    K, L = prob.K, prob.L
    y_n, y_s1, y_s2 = y_stats
    a, b = prob.alpha_prior, prob.beta_prior
    st = State(
        rho=rho, xi=xi,
        v_a=np.ones((K - 1, 1)), v_b=np.ones((K - 1, 1)),
        u_a=np.ones((L - 1, K)), u_b=np.ones((L - 1, K)),
        alpha_shape=a.shape, alpha_rate=a.rate, beta_shape=b.shape, beta_rate=b.rate,
        my=None, lamy=None, Wy=None, nuy=None, mx=None, lamx=None, Wx=None, nux=None,
        N_jl=np.ascontiguousarray(N_jl), y_n=y_n, y_s1=y_s1, y_s2=y_s2, H_xi=0.0, H_rho=0.0,
        donor_concentration=float(prob.donor_concentration),
    )
    for _, update in GLOBAL_BLOCKS:
        update(be, prob, st)
    return st


def _composition_features(N_jl: np.ndarray) -> np.ndarray:
    comp = N_jl / N_jl.sum(axis=1, keepdims=True)
    return comp / max(np.sqrt(comp.var(axis=0).sum()), 1e-12)


def _x_features(X: np.ndarray) -> np.ndarray:
    from ._data import exact_column_means

    Xc = X - exact_column_means(X)       # a constant column becomes exactly 0
    sd = Xc.std(axis=0)
    sd[sd <= 0.0] = 1.0
    return Xc / sd / np.sqrt(X.shape[1])


def group_features(prob: Problem, N_jl: np.ndarray) -> np.ndarray:
    """Per-group features for seeding: cell-cluster composition, joined with standardised x.

    Each part is scaled to unit total variance, so neither dominates by its units.
    """
    if not prob.has_x:
        return _composition_features(N_jl)
    return np.hstack([_composition_features(N_jl), _x_features(prob.X)])


def group_feature_views(prob: Problem, N_jl: np.ndarray) -> list:
    """The joint group features, then (with x) x alone and the composition alone.

    The joint view is the one to seed with; the single-source views serve the group search,
    because when one source carries no cluster signal its noise can steer k-means on the
    joint features away from the partition the other source shows plainly (two individual
    clusters with the same composition but different x is the textbook case).
    """
    views = [group_features(prob, N_jl)]
    if prob.has_x:
        views += [_x_features(prob.X), _composition_features(N_jl)]
    return views


def initial_state(be, prob: Problem, rng: np.random.Generator,
                  xi_buffer: np.ndarray | None = None) -> State:
    """The default start: k-means++ on cells, then on group features.

    ``xi_buffer``: an (N, L) float64 array nobody else holds (an earlier restart's xi), which
    becomes this state's xi.  On the project's virtual machines, memory a process touches for
    the first time costs 0.9-2.9 s per 305 MB (OneK1K's xi), against 0.1 s to overwrite an
    array already touched: a restart's start spent most of its time filling a fresh xi.
    """
    cell_labels = kmeans_labels(prob.Y, prob.L, rng)
    N_jl = label_counts(cell_labels, prob.offsets, prob.L)
    group_labels = kmeans_labels(group_features(prob, N_jl), prob.K, rng)
    return state_from_labels(be, prob, cell_labels, group_labels, xi_buffer=xi_buffer)
