"""Degenerate data fits without NaN, warning where it should (issue 5.2).

For every case: the fit finishes, every fitted float array (and every array of the kept
variational state) is finite, q(S) and q(M) rows are distributions, and the ELBO trace never
falls (SPEC 5: no block update and no move may lower it).
"""

import warnings

import numpy as np
import pytest

import nestedatoms as na
from nestedatoms._state import resolve_nw_prior
from conftest import trace_steps_under_one_objective

FAST = dict(n_group_clusters=3, n_cell_clusters=4, n_init=2, max_iter=30, random_state=0)


def fit(Y, groups=None, X=None, backend="cpp", **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = na.NestedAtomsModel(**{**FAST, "backend": backend, **kw}).fit(Y, groups, X)
    model.caught_warnings_for_test = [str(w.message) for w in caught]
    return model


def assert_sound(model):
    """Finite fitted arrays, normalised responsibilities, a non-decreasing ELBO."""
    assert np.all(np.isfinite(model.cell_probs_))       # may be a property, not in vars
    for name, value in vars(model).items():
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), name
    for name, value in vars(model.state_).items():
        if isinstance(value, np.ndarray):
            assert np.all(np.isfinite(value)), f"state_.{name}"
        elif isinstance(value, float) and name != "donor_concentration":  # inf: NAM exactly
            assert np.isfinite(value), f"state_.{name}"
    np.testing.assert_allclose(model.cell_probs_.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(model.group_probs_.sum(axis=1), 1.0, rtol=1e-12)
    assert np.all(model.cell_probs_ >= 0) and np.all(model.group_probs_ >= 0)
    steps, keep = trace_steps_under_one_objective(model)     # c may change the objective
    scale = np.abs(np.asarray(model.elbo_trace_[1:]))
    assert np.all(steps[keep] >= -1e-9 * scale[keep]), "ELBO decreased"
    assert np.isfinite(model.elbo_) and model.elbo_ == model.elbo_trace_[-1]


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(5)


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
def test_single_group_is_a_dp_mixture(rng, backend):
    Y = np.vstack([rng.normal(size=(30, 2)), rng.normal(size=(30, 2)) + 6])
    model = fit(Y, backend=backend)
    assert_sound(model)
    assert model.group_probs_.shape == (1, 3)
    assert model.group_means_ is None
    # two well-separated blobs: the DP mixture finds them
    assert len(np.unique(model.cell_labels_)) == 2
    with_x = fit(Y, np.zeros(60), rng.normal(size=(1, 2)), backend=backend)
    assert_sound(with_x)


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
def test_one_cell_per_group(rng, backend):
    Y, X = rng.normal(size=(25, 3)), rng.normal(size=(25, 2))
    assert_sound(fit(Y, np.arange(25), X, backend=backend))


def test_groups_of_one_cell_next_to_groups_of_ten_thousand(rng):
    sizes = [10_000, 1, 1, 10_000, 1]
    groups = np.repeat(np.arange(len(sizes)), sizes)
    Y = rng.normal(size=(groups.size, 2)) + groups[:, None]
    model = fit(Y, groups, rng.normal(size=(len(sizes), 2)), n_init=1)
    assert_sound(model)
    assert model.cell_probs_.shape == (groups.size, 4)


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
def test_identical_cells_and_identical_covariates(backend):
    groups = np.repeat(np.arange(4), 5)
    model = fit(np.full((20, 3), 7.5), groups, np.ones((4, 2)), backend=backend)
    assert_sound(model)
    np.testing.assert_allclose(model.cell_means_[model.cell_labels_[0]], 7.5, rtol=1e-6)


def test_identical_cells_get_a_positive_definite_empirical_prior():
    for Z in (np.full((10, 3), 2.0), np.zeros((1, 3))):
        prior = resolve_nw_prior(Z, 4, "empirical", None)
        np.linalg.cholesky(prior.W0inv)         # positive definite: the ridge / fallback
        assert np.all(np.isfinite(prior.W0inv)) and np.all(prior.m0 == Z[0])


def test_constant_columns_get_a_ridge_not_a_singular_prior(rng):
    Y = rng.normal(size=(40, 3))
    Y[:, 1] = -3.0
    X = rng.normal(size=(4, 3))
    X[:, 0] = 1.0
    prior = resolve_nw_prior(Y, 4, "empirical", None)
    assert np.linalg.eigvalsh(prior.W0inv).min() > 0
    # a constant column beside varying ones is refused by fit (issue 18: it biases the fit
    # towards fewer clusters); where nothing varies the fit goes ahead
    with pytest.raises(ValueError, match=r"Y has 1 constant column\(s\) \(Y\[:, 1\]"):
        fit(Y, np.repeat(np.arange(4), 10), X)
    with pytest.raises(ValueError, match=r"X has 1 constant column\(s\) \(X\[:, 0\]"):
        fit(np.delete(Y, 1, axis=1), np.repeat(np.arange(4), 10), X)
    assert_sound(fit(np.full((40, 2), -3.0), np.repeat(np.arange(4), 10), np.ones((4, 2))))


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
def test_one_feature_each(rng, backend):
    groups = np.repeat(np.arange(6), 8)
    model = fit(rng.normal(size=(48, 1)), groups, rng.normal(size=(6, 1)), backend=backend)
    assert_sound(model)
    assert model.cell_covariances_.shape == (4, 1, 1)
    assert model.group_covariances_.shape == (3, 1, 1)


def test_truncation_above_the_counts_warns_only_for_cells(rng):
    Y, groups, X = rng.normal(size=(6, 2)), np.array([0, 0, 1, 1, 2, 2]), rng.normal(size=(3, 2))
    model = fit(Y, groups, X, n_group_clusters=10, n_cell_clusters=12)
    assert_sound(model)
    assert any("n_cell_clusters=12 exceeds the number of cells (6)" in w
               for w in model.caught_warnings_for_test)
    # K > J is the normal case (default K = 30, a dozen donors): no warning for it
    assert not any("n_group_clusters" in w for w in model.caught_warnings_for_test)
    quiet = fit(Y, groups, X, n_group_clusters=10, n_cell_clusters=6)
    # (only the ConvergenceWarning of the short max_iter)
    assert not [w for w in quiet.caught_warnings_for_test if "before the relative ELBO" not in w]


@pytest.mark.parametrize("N", [1, 2])
def test_one_or_two_cells_in_total(rng, N):
    model = fit(rng.normal(size=(N, 2)), n_cell_clusters=1 if N == 1 else 2)
    assert_sound(model)


# ---------------------------------------------------------------------------- dtypes and layout
@pytest.fixture(scope="module")
def base(rng):
    groups = np.repeat(np.arange(5), 12)
    Y = rng.normal(size=(60, 4)) * 3
    X = rng.normal(size=(5, 2))
    ref = fit(Y, groups, X)
    return Y, groups, X, ref


@pytest.mark.parametrize("layout", ["fortran", "strided", "reversed", "readonly"])
def test_memory_layout_does_not_change_the_fit(base, layout):
    Y, groups, X, ref = base
    if layout == "fortran":
        Yl, Xl = np.asfortranarray(Y), np.asfortranarray(X)
    elif layout == "strided":
        Yl, Xl = np.repeat(Y, 3, axis=1)[:, ::3], np.repeat(X, 2, axis=1)[:, ::2]
    elif layout == "reversed":
        Yl, Xl = Y[::-1][::-1], X[:, ::-1][:, ::-1]
    else:
        Yl, Xl = Y.copy(), X.copy()
        Yl.flags.writeable = Xl.flags.writeable = False
    if layout in ("fortran", "strided"):
        assert not Yl.flags.c_contiguous and not Xl.flags.c_contiguous
    model = fit(Yl, groups, Xl)
    np.testing.assert_array_equal(model.cell_probs_, ref.cell_probs_)
    np.testing.assert_array_equal(model.group_probs_, ref.group_probs_)
    assert model.elbo_ == ref.elbo_


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.int32, np.uint8, np.bool_])
def test_other_dtypes_fit_as_their_float64_values(base, dtype):
    Y, groups, X, _ = base
    Yd = (Y > 0) if dtype is np.bool_ else (np.abs(Y) * 10).astype(dtype)
    Xd = (X > 0) if dtype is np.bool_ else (np.abs(X) * 10).astype(dtype)
    model = fit(Yd, groups, Xd)
    assert_sound(model)
    as_float = fit(Yd.astype(np.float64), groups, Xd.astype(np.float64))
    np.testing.assert_array_equal(model.cell_probs_, as_float.cell_probs_)
    assert model.elbo_ == as_float.elbo_


def test_a_numerically_singular_posterior_scale_is_explained_not_returned():
    """A fuzz draw: 25 identical cells at ~1e8 under prior='reference' (made for standardised
    data).  The posterior scale matrix is the prior's plus a rank-one term 1e16 times larger,
    singular in float64: its inverse came out with a negative variance (or, with other
    rounding, failed in LAPACK).  The fit must say what to change, not return it."""
    from nestedatoms.exceptions import NumericalError

    Y = np.tile([-2.91037691e7, -7.20560016e7, -1.32003027e8, 5.89271946e7], (25, 1))
    groups = np.array([2, 5, 3, 4] + [0] * 9 + [1] * 12)
    X = np.array([[3.1e-4], [-1.6e-3], [-8.7e-4], [6.4e-4], [2.0e-4], [3.3e-5]])
    model = na.NestedAtomsModel(
        n_group_clusters=1, n_cell_clusters=1, n_init=1, max_iter=1, tol=0.0, random_state=0,
        prior="reference", cell_prior={"degrees_of_freedom_prior": 4.0,
                                       "mean_precision_prior": 1.0, "covariance_prior": 1.0})
    with pytest.raises(NumericalError, match="Standardise Y"):
        model.fit(Y, groups, X)
