"""The caller's data is never modified (issue 5.5): arrays, lists, pandas objects and AnnData,
except for the result keys that ``tl.fit`` documents.  Each test compares deep copies taken
before the call, bit for bit, including dtypes, memory flags, index and categories."""

import copy

import numpy as np
import pandas as pd
import pytest

import nestedatoms as na

FAST = dict(n_group_clusters=3, n_cell_clusters=4, n_init=2, max_iter=15, random_state=0)


@pytest.fixture(scope="module")
def sim():
    return na.simulate(n_groups=6, cells_per_group=20, n_cell_features=3, n_group_features=2,
                       random_state=2)


def assert_array_untouched(before, after):
    assert type(before) is type(after)
    assert before.dtype == after.dtype and before.shape == after.shape
    assert before.flags.c_contiguous == after.flags.c_contiguous
    assert before.flags.f_contiguous == after.flags.f_contiguous
    np.testing.assert_array_equal(before, after)


def snapshot_array(a):
    out = np.array(a, copy=True, order="K")
    assert out.flags.c_contiguous == a.flags.c_contiguous or a.ndim < 2
    return out


@pytest.mark.parametrize("layout", ["C", "F", "float32", "readonly"])
def test_numpy_inputs_untouched(sim, layout):
    Y, X, groups = sim.Y.copy(), sim.X.copy(), np.asarray(sim.groups).copy()
    if layout == "F":
        Y, X = np.asfortranarray(Y), np.asfortranarray(X)
    elif layout == "float32":
        Y, X = Y.astype(np.float32), X.astype(np.float32)
    elif layout == "readonly":
        for a in (Y, X, groups):
            a.flags.writeable = False
    before = [snapshot_array(a) for a in (Y, X, groups)]
    writeable = [a.flags.writeable for a in (Y, X, groups)]
    model = na.NestedAtomsModel(**FAST).fit(Y, groups, X)
    for b, a in zip(before, (Y, X, groups)):
        assert_array_untouched(b, a)
    assert [a.flags.writeable for a in (Y, X, groups)] == writeable
    # nothing the model holds aliases the caller's memory, so changing it cannot reach back
    for held in vars(model.problem_.data).values():
        if isinstance(held, np.ndarray):
            for a in (Y, X, groups):
                assert not np.shares_memory(held, a)
    for name in ("predict_proba", "score_samples"):
        if hasattr(model, name):                  # new-data methods (issue 3) too
            getattr(model, name)(Y, groups)
            for b, a in zip(before, (Y, X, groups)):
                assert_array_untouched(b, a)


def test_lists_untouched(sim):
    Y, groups = sim.Y.tolist(), list(sim.groups)
    X = sim.X.tolist()
    before = copy.deepcopy((Y, groups, X))
    na.NestedAtomsModel(**FAST).fit(Y, groups, X)
    assert (Y, groups, X) == before


def test_pandas_inputs_untouched(sim):
    labels = pd.unique(pd.Series(sim.groups))
    Ydf = pd.DataFrame(sim.Y, columns=["pc1", "pc2", "pc3"],
                       index=pd.Index([f"cell{i}" for i in range(sim.Y.shape[0])]))
    # categorical groups whose category order differs from the sorted labels, and an
    # unused category
    groups = pd.Series(pd.Categorical(sim.groups, categories=list(labels[::-1]) + ["unused"]),
                       index=Ydf.index, name="donor")
    # X rows in an order unlike the sorted labels, with an int column
    Xdf = pd.DataFrame(sim.X, index=pd.Index(sorted(labels)[::-1], name="donor"),
                       columns=["g1", "g2"])
    Xdf["batch"] = np.arange(len(Xdf), dtype=np.int64)
    before = (Ydf.copy(deep=True), groups.copy(deep=True), Xdf.copy(deep=True))
    model = na.NestedAtomsModel(**FAST).fit(Ydf, groups, Xdf)
    pd.testing.assert_frame_equal(Ydf, before[0], check_exact=True)
    pd.testing.assert_series_equal(groups, before[1], check_exact=True)
    assert list(groups.cat.categories) == list(before[1].cat.categories)
    pd.testing.assert_frame_equal(Xdf, before[2], check_exact=True)
    assert np.all(np.isfinite(model.cell_probs_))


@pytest.fixture
def adata(sim):
    anndata = pytest.importorskip("anndata")
    rng = np.random.default_rng(0)
    n = sim.Y.shape[0]
    obs = pd.DataFrame({"donor_id": pd.Categorical(sim.groups),
                        "age": np.repeat(np.arange(6) * 10.0, 20),
                        "qc": rng.normal(size=n)},
                       index=[f"c{i}" for i in range(n)])
    ad = anndata.AnnData(X=rng.poisson(2.0, size=(n, 8)).astype(np.float32), obs=obs,
                         var=pd.DataFrame(index=[f"g{i}" for i in range(8)]))
    ad.obsm["X_pca"] = sim.Y.copy()
    ad.layers["counts"] = ad.X.copy()
    ad.uns["existing"] = {"keep": np.arange(3)}
    return ad


def _adata_parts(ad):
    return dict(X=ad.X.copy(), obs=ad.obs.copy(deep=True), var=ad.var.copy(deep=True),
                obsm={k: np.array(v, copy=True) for k, v in ad.obsm.items()},
                layers={k: np.array(v, copy=True) for k, v in ad.layers.items()},
                uns=copy.deepcopy(dict(ad.uns)), obs_names=list(ad.obs_names))


def _assert_adata_unchanged_except(ad, before, new_obs=(), new_obsm=(), new_uns=()):
    np.testing.assert_array_equal(ad.X, before["X"])
    assert ad.X.dtype == before["X"].dtype
    assert list(ad.obs_names) == before["obs_names"]
    assert set(ad.obs.columns) == set(before["obs"].columns) | set(new_obs)
    pd.testing.assert_frame_equal(ad.obs[list(before["obs"].columns)], before["obs"],
                                  check_exact=True)
    pd.testing.assert_frame_equal(ad.var, before["var"], check_exact=True)
    assert set(ad.obsm.keys()) == set(before["obsm"]) | set(new_obsm)
    for k, v in before["obsm"].items():
        assert_array_untouched(v, np.asarray(ad.obsm[k]))
    assert set(ad.layers.keys()) == set(before["layers"])
    for k, v in before["layers"].items():
        np.testing.assert_array_equal(ad.layers[k], v)
    assert set(ad.uns.keys()) <= set(before["uns"]) | set(new_uns)
    np.testing.assert_array_equal(ad.uns["existing"]["keep"], before["uns"]["existing"]["keep"])


def test_anndata_changed_only_at_the_documented_keys(adata):
    tl = pytest.importorskip("nestedatoms.tl")
    before = _adata_parts(adata)
    tl.fit(adata, group_key="donor_id", group_features="age", rank_genes=False, **FAST)
    _assert_adata_unchanged_except(adata, before,
                                   new_obs=("nam_cell_cluster", "nam_group_cluster"),
                                   new_obsm=("nam_cell_probs",), new_uns=("nam",))
    assert "nam" in adata.uns and "nam_cell_probs" in adata.obsm


def test_anndata_copy_leaves_the_original_alone(adata):
    tl = pytest.importorskip("nestedatoms.tl")
    before = _adata_parts(adata)
    out = tl.fit(adata, group_key="donor_id", copy=True, rank_genes=False, **FAST)
    _assert_adata_unchanged_except(adata, before)
    assert "nam_cell_cluster" in out.obs and "nam_cell_cluster" not in adata.obs


def test_copy_false_keeps_a_read_only_view_of_sorted_cells_and_changes_no_result():
    sim = na.simulate(n_groups=5, cells_per_group=[40, 10, 70, 25, 55], random_state=3)
    Y = np.ascontiguousarray(sim.Y)           # grouped by individual, labels sorted
    before = Y.copy()
    kw = dict(n_group_clusters=3, n_cell_clusters=5, n_init=1, max_iter=20, random_state=0)
    copied = na.NestedAtomsModel(**kw).fit(Y, sim.groups, sim.X)
    viewed = na.NestedAtomsModel(copy=False, **kw).fit(Y, sim.groups, sim.X)
    assert np.shares_memory(viewed.problem_.Y, Y)
    assert not np.shares_memory(copied.problem_.Y, Y)
    assert not viewed.problem_.Y.flags.writeable
    assert Y.flags.writeable                  # the caller's array keeps its own flags
    np.testing.assert_array_equal(Y, before)
    np.testing.assert_array_equal(viewed.cell_probs_, copied.cell_probs_)
    assert viewed.elbo_ == copied.elbo_
    # cells not grouped in label order: copy=False still copies (the layout needs sorting)
    perm = np.random.default_rng(0).permutation(Y.shape[0])
    shuffled = np.ascontiguousarray(Y[perm])
    m = na.NestedAtomsModel(copy=False, **kw).fit(shuffled, sim.groups[perm], sim.X)
    assert not np.shares_memory(m.problem_.Y, shuffled)
