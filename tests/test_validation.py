"""Bad input gets a clear exception naming the argument, the problem and the fix (issue 5.1).

Each case asserts the exception type and that the message names the offending argument and
says what to do; nothing here may crash, hang or return NaN.
"""

import os

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import nestedatoms as na
from nestedatoms import _validation
from nestedatoms._backend import resolve_n_threads
from nestedatoms._validation import InvalidParameterError, estimate_fit_bytes

FAST = dict(n_group_clusters=3, n_cell_clusters=4, n_init=1, max_iter=20, random_state=0)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    Y = rng.normal(size=(40, 3))
    groups = np.repeat(np.array(["d", "a", "c", "b"]), 10)
    X = rng.normal(size=(4, 2))           # rows follow the sorted labels a, b, c, d
    return Y, groups, X


def fit(Y, groups=None, X=None, **kw):
    return na.NestedAtomsModel(**{**FAST, **kw}).fit(Y, groups, X)


# ---------------------------------------------------------------------------------- data
@pytest.mark.parametrize("name", ["Y", "X"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_with_their_rows(data, name, bad):
    Y, groups, X = (a.copy() if isinstance(a, np.ndarray) else a for a in data)
    target = Y if name == "Y" else X
    target[2, 1] = bad
    with pytest.raises(ValueError, match=rf"{name} contains 1 NaN or infinite value\(s\), in "
                                         rf"row\(s\) \[2\]; remove or impute"):
        fit(Y, groups, X)


@pytest.mark.parametrize("Y, msg", [
    (np.zeros(10), r"Y must be 2-D .* got a 1-D array of length 10. Reshape your data with "
            r"Y.reshape\(-1, 1\)"),
    (np.zeros((2, 3, 4)), r"Y must be 2-D \(rows x features\), got shape \(2, 3, 4\)"),
    (np.zeros((0, 3)), r"Y is empty: 0 sample\(s\)"),
    (np.zeros((5, 0)), r"Y is empty: 0 feature\(s\)"),
])
def test_wrong_dimensions_of_Y(Y, msg):
    with pytest.raises(ValueError, match=msg):
        fit(Y)


def test_mismatched_lengths(data):
    Y, groups, X = data
    with pytest.raises(ValueError, match=r"groups has 39 labels but Y has 40 rows; give exactly "
                                         r"one group label per cell"):
        fit(Y, groups[:-1], X)
    with pytest.raises(ValueError, match=r"X has 3 rows but the cells belong to 4 groups; X "
                                         r"must have one row per group"):
        fit(Y, groups, X[:3])
    with pytest.raises(ValueError, match=r"groups must be 1-D"):
        fit(Y, groups.reshape(4, 10), X)


def test_dataframe_X_names_missing_extra_and_duplicate_labels(data):
    Y, groups, X = data
    Xdf = pd.DataFrame(X, index=["a", "b", "c", "d"])
    model = fit(Y, groups, Xdf)                     # aligned by label: accepted
    assert np.isfinite(model.elbo_)
    with pytest.raises(ValueError, match=r"X has no row for group label\(s\) \['c'\] that the "
                                         r"cells carry; add their group features"):
        fit(Y, groups, Xdf.drop(index="c"))
    # rows of groups without cells are ignored, as by predict and tl.fit (one rule)
    extra = pd.concat([pd.DataFrame([[1e6, -1e6]], index=["zz"]), Xdf])
    assert fit(Y, groups, extra).elbo_ == model.elbo_
    dup = pd.concat([Xdf, Xdf.loc[["b"]]])
    with pytest.raises(ValueError, match=r"X has duplicate index labels \['b'\]; give one row "
                                         r"per group"):
        fit(Y, groups, dup)


def test_missing_group_labels_are_named(data):
    Y, _, _ = data
    groups = np.array(["a", None] * 20, dtype=object)
    with pytest.raises(ValueError, match=r"groups has 20 missing label\(s\).*every cell needs a "
                                         r"group label"):
        fit(Y, groups)


def test_non_numeric_dtypes(data):
    Y, groups, X = data
    with pytest.raises(TypeError, match=r"Y must be numeric, got dtype <U"):
        fit(Y.astype(str), groups, X)
    obj = Y.astype(object)
    obj[3, 0] = "not a number"
    with pytest.raises(TypeError, match=r"Y must be numeric, but an entry could not be "
                                        r"converted.*np.asarray\(Y, dtype=float\)"):
        fit(obj, groups, X)
    Xdf = pd.DataFrame({"pc1": X[:, 0], "sex": ["f", "m", "f", "m"]}, index=list("abcd"))
    with pytest.raises(TypeError, match=r"X must be numeric"):
        fit(Y, groups, Xdf)
    with pytest.raises(ValueError, match=r"Y is complex: Complex data not supported"):
        fit(Y + 1j, groups, X)


def test_object_arrays_of_numbers_fit_like_floats(data):
    Y, groups, X = data
    a = fit(Y, groups, X)
    b = fit(Y.astype(object), groups, X.tolist())
    np.testing.assert_array_equal(a.cell_probs_, b.cell_probs_)


def test_sparse_input_asks_for_a_dense_representation(data):
    Y, groups, X = data
    for make in (sp.csr_matrix, sp.csr_array):
        with pytest.raises(TypeError, match=r"Y is a scipy sparse matrix.*principal "
                                            r"components.*X_pca"):
            fit(make(Y), groups, X)
        with pytest.raises(TypeError, match=r"X is a scipy sparse matrix"):
            fit(Y, groups, make(X))


@pytest.mark.parametrize("scale, word", [(1e200, "too large"), (1e-200, "too small")])
def test_data_too_spread_or_too_flat_for_float64_is_refused(data, scale, word):
    # scipy's k-means++ seeding segfaulted on data scaled by 1e200 before this check
    Y, groups, X = data
    with pytest.raises(ValueError, match=rf"Y has values spread over .*{word} to square in "
                                         rf"float64; rescale it"):
        fit(Y * scale, groups, X)


# ---------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("param", ["n_group_clusters", "n_cell_clusters", "n_init", "max_iter"])
@pytest.mark.parametrize("value", [0, -3, 2.5, True, "5", None])
def test_counts_must_be_positive_integers(data, param, value):
    with pytest.raises(InvalidParameterError, match=rf"{param} must be an integer >= 1"):
        fit(*data, **{param: value})


@pytest.mark.parametrize("param, value, msg", [
    ("tol", -1e-3, r"tol must be a finite number >= 0, got -0.001. Use e.g. 1e-6"),
    ("tol", np.nan, r"tol must be a finite number >= 0"),
    ("tol", "1e-6", r"tol must be a finite number >= 0, got '1e-6' of type str"),
    ("n_threads", 0, r"n_threads=0 is invalid; use None \(all cores\)"),
    ("n_threads", 1.5, r"n_threads must be an int or None, got 1.5"),
    ("n_threads", "2", r"n_threads must be an int or None"),
    ("backend", "gpu", r"backend must be one of \('cpp', 'numpy'\), got 'gpu'"),
    ("prior", "flat", r"prior must be 'empirical' .* or 'reference'"),
    ("random_state", -1, r"random_state must be a non-negative int"),
    ("random_state", "seed", r"random_state must be None, a non-negative int"),
    ("verbose", -1, r"verbose must be an integer >= 0"),
    ("group_prior", "wide", r"group_prior must be None or a dict of prior overrides"),
    ("group_concentration", 0.0, r"group_concentration must be a finite number > 0, got 0.0. "
                                 r"Use None to learn it"),
    ("cell_concentration", np.inf, r"cell_concentration must be a finite number > 0"),
    ("concentration_prior", (0.0, 1.0), r"concentration_prior\[0\] \(the Gamma shape\) must be "
                                        r"a finite number > 0"),
    ("concentration_prior", (1.0, -2.0), r"concentration_prior\[1\] \(the Gamma rate\)"),
    ("concentration_prior", (1.0,), r"concentration_prior must be a \(shape, rate\) pair"),
    ("concentration_prior", "ab", r"concentration_prior must be a \(shape, rate\) pair"),
])
def test_invalid_parameters(data, param, value, msg):
    with pytest.raises(InvalidParameterError, match=msg) as info:
        fit(*data, **{param: value})
    # scikit-learn's convention: either exception type catches it
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)


def test_parameters_are_checked_in_fit_not_in_init(data):
    model = na.NestedAtomsModel(n_cell_clusters=-1, tol="x")     # no error yet
    assert model.get_params()["n_cell_clusters"] == -1
    with pytest.raises(InvalidParameterError):
        model.fit(data[0])


def test_thread_counts_follow_scikit_learn_and_are_capped():
    from nestedatoms._backend import available_cpus

    n_cpus = available_cpus()
    assert 1 <= n_cpus <= os.cpu_count()
    assert resolve_n_threads(-1) == n_cpus
    assert resolve_n_threads(1) == 1
    assert resolve_n_threads(10**6) == n_cpus   # an absurd count must not reach OpenMP


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux affinity masks")
def test_thread_counts_respect_the_affinity_mask(monkeypatch):
    # taskset / a cpuset gives the process one CPU: os.cpu_count() would still say all
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert resolve_n_threads(None) == 1
    assert resolve_n_threads(-1) == 1
    assert resolve_n_threads(8) == 1


# ---------------------------------------------------------------------------------- priors
@pytest.mark.parametrize("layer, D", [("cell_prior", 3), ("group_prior", 2)])
@pytest.mark.parametrize("override, msg", [
    ({"degrees_of_freedom_prior": "D-1"}, r"\['degrees_of_freedom_prior'\] \(nu0\) must be > "
                                          r"D - 1 = {Dm1} .* the default is D \+ 5"),
    ({"degrees_of_freedom_prior": -5.0}, r"\['degrees_of_freedom_prior'\] \(nu0\) must be >"),
    ({"mean_precision_prior": 0.0}, r"\['mean_precision_prior'\] \(lam0\) must be a finite "
                                    r"number > 0, got 0.0; the default is 0.01"),
    ({"mean_precision_prior": np.nan}, r"\['mean_precision_prior'\] \(lam0\)"),
    ({"covariance_prior": -1.0}, r"\['covariance_prior'\] must be positive definite, but its "
                                 r"smallest eigenvalue is -1; add a ridge"),
    ({"covariance_prior": "diag0"}, r"\['covariance_prior'\] must be positive definite"),
    ({"covariance_prior": "nonsym"}, r"\['covariance_prior'\] must be symmetric"),
    ({"covariance_prior": np.eye(5)}, r"\['covariance_prior'\] must be a scalar, a \({D},\) "
                                      r"diagonal or a \({D}, {D}\) matrix, got shape \(5, 5\)"),
    ({"mean_prior": np.zeros(7)}, r"\['mean_prior'\] must be a scalar or have shape \({D},\)"),
    ({"mean_prior": "origin"}, r"values must be numbers or numeric arrays"),
    ({"precision": 1.0}, r"unknown {layer} key 'precision'"),
])
def test_prior_hyperparameters_out_of_domain(data, layer, D, override, msg):
    value = next(iter(override.values()))
    key = next(iter(override))
    if isinstance(value, str) and value == "D-1":
        value = D - 1.0                     # the boundary itself is outside the domain
    elif isinstance(value, str) and value == "diag0":
        value = np.diag([1.0] * (D - 1) + [0.0])
    elif isinstance(value, str) and value == "nonsym":
        value = np.eye(D)
        value[0, 1] = 0.5
    override = {key: value}
    with pytest.raises(ValueError, match=msg.format(D=D, Dm1=D - 1, layer=layer)) as info:
        fit(*data, **{layer: override})
    assert layer in str(info.value)


def test_priors_just_inside_their_domain_fit(data):
    model = fit(*data, cell_prior={"degrees_of_freedom_prior": 2.0 + 1e-9,
                                   "mean_precision_prior": 1e-12,
                                   "covariance_prior": [1.0, 2.0, 3.0]})
    assert np.isfinite(model.elbo_) and np.all(np.isfinite(model.cell_probs_))


# ---------------------------------------------------------------------------------- memory
def test_memory_estimate_counts_the_n_by_l_arrays():
    N, p, L = 1000, 7, 13
    one = 8 * N * L
    cpp = estimate_fit_bytes(N, p, L, n_init=3, backend="cpp")
    # state xi, best restart, cell_probs_, one scratch buffer (the checkpoint keeps no xi);
    # two copies of Y
    assert cpp["total"] == 4 * one + 2 * 8 * N * p
    assert estimate_fit_bytes(N, p, L, n_init=1, backend="cpp")["total"] == cpp["total"] - one
    assert estimate_fit_bytes(N, p, L, n_init=3, backend="numpy")["total"] == (
        cpp["total"] + 4 * one)


@pytest.mark.parametrize("backend, n_init", [("cpp", 1), ("cpp", 2), ("numpy", 1)])
def test_memory_estimate_is_close_to_the_measured_peak(backend, n_init):
    """tracemalloc sees every NumPy allocation (not the C++ core's internal scratch, which is
    O(block size)): the estimate must neither refuse fits that fit nor let through fits that
    do not."""
    import tracemalloc

    rng = np.random.default_rng(1)
    N, p, L = 8000, 3, 20
    Y, groups = rng.normal(size=(N, p)), rng.integers(10, size=N)
    kw = dict(n_group_clusters=3, n_cell_clusters=L, n_init=n_init, max_iter=3, tol=0,
              random_state=0, backend=backend)
    na.NestedAtomsModel(**{**kw, "max_iter": 1}).fit(Y[:500], groups[:500])  # lazy imports
    tracemalloc.start()
    try:
        na.NestedAtomsModel(**kw).fit(Y, groups)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    ratio = peak / estimate_fit_bytes(N, p, L, n_init, backend)["total"]
    assert 0.4 < ratio < 1.5, ratio


def test_fit_larger_than_memory_is_refused_before_allocating(data, monkeypatch):
    Y, groups, X = data
    monkeypatch.setattr(_validation, "available_memory_bytes", lambda: 3500)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the fit started although memory was short")

    monkeypatch.setattr("nestedatoms._model.fit_restarts", must_not_run)
    need = estimate_fit_bytes(40, 3, 4, 1, "cpp")["total"]
    with pytest.raises(MemoryError, match=rf"this fit needs about {need / 1e3:.1f} kB but only "
                                          rf"3.5 kB is available.*N x L = 40 x 4 float64.*"
                                          rf"Reduce n_cell_clusters \(at most 1 would fit\), or "
                                          rf"fit a subsample"):
        fit(Y, groups, X)
    # the suggestion is right: L = 1 fits in 3.5 kB, L = 2 does not
    assert estimate_fit_bytes(40, 3, 1, 1, "cpp")["total"] <= 3500
    assert estimate_fit_bytes(40, 3, 2, 1, "cpp")["total"] > 3500
    monkeypatch.setattr(_validation, "available_memory_bytes", lambda: 1000)
    with pytest.raises(MemoryError, match=r"is available.*\)\. Fit a subsample of the cells"):
        fit(Y, groups, X)
    monkeypatch.setenv(_validation.SKIP_MEMORY_CHECK_ENV, "1")
    with pytest.raises(AssertionError, match="the fit started"):
        fit(Y, groups, X)


def test_available_memory_is_read_from_the_system():
    avail = _validation.available_memory_bytes()
    assert avail is not None and 0 < avail
    if hasattr(os, "sysconf"):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        assert avail <= total


def test_variation_lost_in_the_offset_is_refused_and_so_are_constant_columns(data):
    # values near -1e6 varying by 1e-7 made the ELBO fall (found by tests/test_fuzz.py)
    Y, groups, X = data
    with pytest.raises(ValueError, match=r"Y\[:, 1\] varies by only .* float64 keeps too few "
                                         r"significant digits.*Centre Y first"):
        fit(np.column_stack([Y[:, 0], -1e6 + 1e-7 * Y[:, 1]]), groups, X)
    assert np.isfinite(fit(np.column_stack([Y[:, 0], -1e6 + Y[:, 1]]), groups, X).elbo_)
    # an exactly constant column beside a varying one is refused with its own message (it
    # biases the fit, issue 18); identical cells, whose means carry rounding, fit
    const = np.column_stack([Y[:, 0], np.full(len(Y), 1.2573022093393e-07)])
    with pytest.raises(ValueError, match=r"constant column\(s\) \(Y\[:, 1\]"):
        fit(const, groups, X)
    assert np.isfinite(fit(np.full_like(Y, 3e-120), groups, X).elbo_)
