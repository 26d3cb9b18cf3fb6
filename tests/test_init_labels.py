"""fit(..., init_group_labels=, init_cell_labels=): start the first restart from known labels."""

import numpy as np
import pandas as pd
import pytest

import nestedatoms as na
from nestedatoms._backend import get_backend
from nestedatoms._init import relabel_by_size, state_from_labels
from nestedatoms._steps import elbo
from nestedatoms._validation import InvalidParameterError


def ari(a, b):
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(a, b)


@pytest.fixture(scope="module")
def toy():
    return na.simulate(random_state=0)


def _truth_start_elbo(model, sim):
    """The ELBO of the state the truth builds (what the fit starts from)."""
    prob = model.problem_
    be = get_backend("cpp")
    st = state_from_labels(be, prob, relabel_by_size(sim.cell_truth)[prob.data.order],
                           relabel_by_size(sim.group_truth))
    return elbo(be, prob, st)


def test_from_the_truth_ends_at_least_at_the_truth(toy):
    m = na.NestedAtomsModel(n_init=1, random_state=0)
    m.fit(toy.Y, toy.groups, toy.X, init_group_labels=toy.group_truth,
          init_cell_labels=toy.cell_truth)
    start = _truth_start_elbo(m, toy)
    assert m.elbo_ >= start - 1e-9 * abs(start)
    assert m.elbo_trace_[0] >= start - 1e-9 * abs(start)
    assert ari(toy.group_truth, m.group_labels_) == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_from_garbage_it_recovers(toy, seed):
    rng = np.random.default_rng(seed)
    default = na.NestedAtomsModel(n_init=1, random_state=0).fit(toy.Y, toy.groups, toy.X)
    m = na.NestedAtomsModel(n_init=1, random_state=0)
    m.fit(toy.Y, toy.groups, toy.X, init_group_labels=rng.integers(0, 5, size=12),
          init_cell_labels=rng.integers(0, 9, size=toy.Y.shape[0]))
    assert ari(toy.group_truth, m.group_labels_) == ari(toy.group_truth,
                                                       default.group_labels_) == 1.0
    assert ari(toy.cell_truth, m.cell_labels_) > 0.95


def test_the_start_is_used_and_only_by_the_first_restart(toy):
    """Labels that k-means would never give (one cluster for everything) change the first
    restart's first sweep; the second restart is the default's second restart (sweep for
    sweep, until one of them stops where its first restart's sweeps had settled, before the
    costly moves the other runs there: the two first restarts differ, so they may stop it at
    different sweeps)."""
    plain = na.NestedAtomsModel(n_init=2, random_state=3).fit(toy.Y, toy.groups, toy.X)
    seeded = na.NestedAtomsModel(n_init=2, random_state=3)
    seeded.fit(toy.Y, toy.groups, toy.X, init_group_labels=np.zeros(12, dtype=int))
    assert seeded.elbo_traces_[0][0] != plain.elbo_traces_[0][0]
    n = min(len(seeded.elbo_traces_[1]), len(plain.elbo_traces_[1])) - 1
    assert n >= 3
    np.testing.assert_array_equal(seeded.elbo_traces_[1][:n], plain.elbo_traces_[1][:n])


def test_series_is_matched_by_label_not_by_position(toy):
    """A shuffled Series with extra rows gives exactly the start its sorted array gives."""
    names = np.unique(toy.groups)
    s = pd.Series(toy.group_truth, index=names).iloc[::-1]
    s = pd.concat([s, pd.Series([7], index=["not_a_group"])])
    a = na.NestedAtomsModel(n_init=1, random_state=0, max_iter=1, tol=0)
    a.fit(toy.Y, toy.groups, toy.X, init_group_labels=s)
    b = na.NestedAtomsModel(n_init=1, random_state=0, max_iter=1, tol=0)
    b.fit(toy.Y, toy.groups, toy.X, init_group_labels=toy.group_truth)
    assert a.elbo_trace_[0] == b.elbo_trace_[0]


def test_string_labels_and_missing_cells(toy):
    """Any hashable labels; a cell with NaN joins the nearest labelled mean in y (checked by
    brute force), and the fit from such a start recovers the truth."""
    from nestedatoms._init_labels import _fill_nearest

    cells = np.array([f"type{c}" for c in toy.cell_truth], dtype=object)
    holes = cells.copy()
    holes[::3] = np.nan
    codes = pd.factorize(pd.Series(holes))[0]
    filled = _fill_nearest(toy.Y, codes)
    means = {c: toy.Y[codes == c].mean(axis=0) for c in np.unique(codes[codes >= 0])}
    for i in np.nonzero(codes < 0)[0]:
        want = min(means, key=lambda c: np.sum((toy.Y[i] - means[c]) ** 2))
        assert filled[i] == want
    assert np.array_equal(filled[codes >= 0], codes[codes >= 0])
    m = na.NestedAtomsModel(n_init=1, random_state=0)
    m.fit(toy.Y, toy.groups, toy.X, init_cell_labels=holes, init_group_labels=toy.group_truth)
    assert ari(toy.group_truth, m.group_labels_) == 1.0
    assert ari(toy.cell_truth, m.cell_labels_) > 0.99


def test_caller_order_is_respected(toy):
    """Shuffling the cells (and their labels alike) gives the same start."""
    perm = np.random.default_rng(0).permutation(toy.Y.shape[0])
    kw = dict(n_init=1, random_state=0, max_iter=1, tol=0)
    a = na.NestedAtomsModel(**kw).fit(toy.Y, toy.groups, toy.X,
                                      init_cell_labels=toy.cell_truth)
    b = na.NestedAtomsModel(**kw).fit(toy.Y[perm], toy.groups[perm], toy.X,
                                      init_cell_labels=toy.cell_truth[perm])
    np.testing.assert_allclose(a.elbo_trace_[0], b.elbo_trace_[0], rtol=1e-10)


@pytest.mark.parametrize("kwargs, match", [
    (dict(init_group_labels=np.zeros(5)), "12 groups"),
    (dict(init_cell_labels=np.zeros(7)), "one\nlabel per cell|rows"),
    (dict(init_group_labels=np.arange(12)), "n_group_clusters"),
    (dict(init_cell_labels=np.arange(1200)), "n_cell_clusters"),
    (dict(init_group_labels=pd.Series([0, 1], index=["ind00", "ind01"])), "no entry"),
])
def test_bad_labels_are_refused(toy, kwargs, match):
    m = na.NestedAtomsModel(n_group_clusters=10, n_cell_clusters=10, n_init=1)
    with pytest.raises(InvalidParameterError, match=match):
        m.fit(toy.Y, toy.groups, toy.X, **kwargs)


def test_tl_fit_reads_the_starting_labels_from_obs(toy):
    """Column names in obs give the same start as the arrays they hold."""
    adata = toy.to_anndata()
    adata.obs["start_cell"] = toy.cell_truth.astype(str)
    adata.obs["start_group"] = adata.obs["true_group_cluster"].astype(str)
    model = na.tl.fit(adata, init_group_labels="start_group", init_cell_labels="start_cell",
                      return_model=True, n_init=1, max_iter=1, tol=0, verbose=0,
                      rank_genes=False)
    direct = na.NestedAtomsModel(n_init=1, max_iter=1, tol=0, random_state=0)
    direct.fit(toy.Y, toy.groups, None, init_group_labels=toy.group_truth,
               init_cell_labels=toy.cell_truth)
    assert model.elbo_trace_[0] == direct.elbo_trace_[0]
    assert np.isinf(adata.uns["nam"]["donor_concentration"])
    adata.obs.loc[adata.obs.index[0], "start_group"] = "elsewhere"
    with pytest.raises(ValueError, match="varies within group"):
        na.tl.fit(adata, init_group_labels="start_group", n_init=1, verbose=0,
                  rank_genes=False)
