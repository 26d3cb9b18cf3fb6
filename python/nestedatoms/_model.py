"""``NestedAtomsModel``: the scikit-learn-style estimator around the fitting loop."""

from __future__ import annotations

import inspect
import numbers

import numpy as np

from ._backend import BACKENDS, get_backend, resolve_n_threads
from ._data import prepare_data
from ._fit import fit_restarts
from ._moves import DEFAULT_MOVES
from ._state import ConcentrationPrior, Problem, resolve_nw_prior
from ._steps import expected_stick_weights
from ._validation import check_data_size, check_estimator_params, check_memory

__all__ = ["NestedAtomsModel"]


class NestedAtomsModel:
    """Nested Atoms Model: cluster groups (individuals) and their observations (cells) jointly.

    Groups are clustered by a group-level vector x_j and by the make-up of their cells; cells
    are clustered by y_ji into clusters ("atoms") shared by every group cluster.  Fit by
    coordinate-ascent variational inference on truncated stick-breaking priors.

    Parameters
    ----------
    n_group_clusters : int, default 30
        Truncation level K for group (individual) clusters.
    n_cell_clusters : int, default 30
        Truncation level L for cell clusters.
    prior : {"empirical", "reference"}, default "empirical"
        Normal-Wishart prior preset for both layers (see SPEC section 2).
    group_prior, cell_prior : dict, optional
        Overrides of the x / y Normal-Wishart priors with scikit-learn's names:
        ``mean_prior`` (m0), ``mean_precision_prior`` (lam0), ``degrees_of_freedom_prior``
        (nu0), ``covariance_prior`` (W0^-1).
    group_concentration, cell_concentration : float, optional
        Fix alpha / beta at this value; None learns it under ``concentration_prior``.
    concentration_prior : (shape, rate), default (0.1, 0.1)
        Gamma prior on alpha and beta when learned.
    n_init : int, default 3
        Number of restarts; the run with the highest ELBO is kept.
    max_iter : int, default 500
        Maximum number of CAVI sweeps per restart.
    tol : float, default 1e-6
        Stop when |Delta ELBO| / |ELBO| < tol; 0 runs exactly ``max_iter`` sweeps.
    random_state : int, numpy Generator or None
        Seed for reproducible restarts.
    n_threads : int or None
        Threads for the C++ core: None uses OMP_NUM_THREADS or all CPUs, -1 all, -2 all but one.
    backend : {"cpp", "numpy"}, default "cpp"
        The compiled core or the pure-NumPy reference (same results, slower).
    verbose : int, default 0
        Print the ELBO of each sweep when > 0.
    """

    def __init__(self, n_group_clusters=30, n_cell_clusters=30, prior="empirical",
                 group_prior=None, cell_prior=None, group_concentration=None,
                 cell_concentration=None, concentration_prior=(0.1, 0.1), n_init=3,
                 max_iter=500, tol=1e-6, random_state=None, n_threads=None, backend="cpp",
                 verbose=0):
        self.n_group_clusters = n_group_clusters
        self.n_cell_clusters = n_cell_clusters
        self.prior = prior
        self.group_prior = group_prior
        self.cell_prior = cell_prior
        self.group_concentration = group_concentration
        self.cell_concentration = cell_concentration
        self.concentration_prior = concentration_prior
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.n_threads = n_threads
        self.backend = backend
        self.verbose = verbose

    # ------------------------------------------------------------------ scikit-learn protocol
    @classmethod
    def _get_param_names(cls):
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep=True):
        """Parameters of this estimator (scikit-learn protocol)."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        """Set parameters (scikit-learn protocol); returns self."""
        valid = self._get_param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"invalid parameter {key!r} for NestedAtomsModel; "
                                 f"valid parameters are {valid}.")
            setattr(self, key, value)
        return self

    def __sklearn_tags__(self):
        """scikit-learn's estimator tags: a clusterer of the rows of Y, no target needed.

        Written out rather than inherited from ``sklearn.base.BaseEstimator`` so that
        scikit-learn stays an optional (test) dependency: only scikit-learn calls this.
        """
        from sklearn.utils import InputTags, Tags, TargetTags

        return Tags(estimator_type="clusterer", target_tags=TargetTags(required=False),
                    input_tags=InputTags(allow_nan=False, sparse=False))

    @property
    def labels_(self):
        """Cell-cluster label of each row of Y, i.e. ``cell_labels_`` (scikit-learn's
        clusterer name)."""
        try:
            return self.cell_labels_
        except AttributeError:
            raise AttributeError("labels_ is set by fit; this NestedAtomsModel is not "
                                 "fitted yet.") from None

    def fit_predict(self, Y, groups=None, X=None, y=None):
        """Fit, then return ``labels_`` (the cell-cluster label of each row of Y)."""
        return self.fit(Y, groups, X).labels_

    def __repr__(self):
        defaults = {p.name: p.default
                    for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = [f"{k}={v!r}" for k, v in self.get_params().items()
                   if not _same(v, defaults.get(k))]
        return f"{type(self).__name__}({', '.join(changed)})"

    # ------------------------------------------------------------------ fitting
    def _check_params(self):
        """Every constructor parameter, checked in fit (scikit-learn's convention)."""
        check_estimator_params(self)

    def _concentration(self, fixed, name) -> ConcentrationPrior:
        # Values were checked by _check_params (Gamma shape and rate > 0, fixed value > 0).
        shape, rate = (float(v) for v in self.concentration_prior)
        return ConcentrationPrior(shape=shape, rate=rate,
                                  fixed=None if fixed is None else float(fixed))

    def _problem(self, data) -> Problem:
        K, L = int(self.n_group_clusters), int(self.n_cell_clusters)
        x_prior = (None if data.X is None
                   else resolve_nw_prior(data.X, K, self.prior, self.group_prior,
                                         name="group_prior"))
        return Problem(
            data=data, K=K, L=L,
            y_prior=resolve_nw_prior(data.Y, L, self.prior, self.cell_prior,
                                     name="cell_prior"),
            x_prior=x_prior,
            alpha_prior=self._concentration(self.group_concentration, "group_concentration"),
            beta_prior=self._concentration(self.cell_concentration, "cell_concentration"),
        )

    def fit(self, Y, groups=None, X=None, y=None):
        """Fit the model.

        Parameters
        ----------
        Y : array-like (N, p)
            Cells (for example expression principal components).
        groups : array-like (N,), optional
            Group (individual) label of each cell, any hashable type; None puts all cells in
            one group (a Dirichlet-process mixture of the rows).
        X : array-like (J, q) or pandas.DataFrame, optional
            Group-level covariates, one row per group in the order of the sorted unique labels,
            or a DataFrame indexed by label.  None fits the common atoms model (CAM).
        y : ignored
            Present for scikit-learn compatibility.

        Returns
        -------
        self
        """
        self._check_params()
        be = get_backend(self.backend)
        data = prepare_data(Y, groups, X)
        prob = self._problem(data)
        n_threads = resolve_n_threads(self.n_threads)
        check_data_size(data.n_cells, data.n_groups, prob.L)
        check_memory(data.n_cells, data.Y.shape[1], prob.L, int(self.n_init), self.backend)
        callback = None
        if self.verbose:
            def callback(restart, it, value):
                print(f"[nestedatoms] restart {restart} sweep {it}: ELBO {value:.6f}")
        from threadpoolctl import threadpool_limits

        # The C++ core parallelises itself: keep BLAS to one thread so nothing
        # oversubscribes; the NumPy backend gets its threads through BLAS instead.
        blas_threads = 1 if self.backend == "cpp" else n_threads
        with threadpool_limits(limits=blas_threads, user_api="blas"):
            best, runs = fit_restarts(be, prob, int(self.n_init), int(self.max_iter),
                                      float(self.tol), self.random_state, n_threads,
                                      moves=DEFAULT_MOVES, callback=callback)
        self._set_results(prob, best, runs)
        return self

    def _set_results(self, prob: Problem, best, runs):
        st, data = best.state, prob.data
        self.problem_ = prob
        self.state_ = st
        self.groups_ = data.groups
        self.n_features_in_ = data.Y.shape[1]
        self.group_probs_ = st.rho.copy()
        self.group_labels_ = np.argmax(st.rho, axis=1)
        self.cell_probs_ = data.to_caller_order(st.xi)
        self.cell_labels_ = np.argmax(self.cell_probs_, axis=1)
        self.group_weights_ = expected_stick_weights(st.v_a, st.v_b)[:, 0]
        self.cell_weights_ = expected_stick_weights(st.u_a, st.u_b)
        self.cell_means_ = st.my.copy()
        self.cell_covariances_ = _expected_covariances(st.Wy, st.nuy)
        if prob.has_x:
            self.group_means_ = st.mx.copy()
            self.group_covariances_ = _expected_covariances(st.Wx, st.nux)
        else:
            self.group_means_ = None
            self.group_covariances_ = None
        self.elbo_ = best.elbo
        self.elbo_trace_ = np.asarray(best.trace)
        self.elbo_traces_ = [np.asarray(r.trace) for r in runs]
        self.n_iter_ = best.n_iter
        self.converged_ = best.converged


def _expected_covariances(W, nu):
    """E[Sigma] = E[Lambda^-1] = W^-1 / (nu - D - 1) (finite for nu > D + 1)."""
    D = W.shape[-1]
    denom = np.where(nu > D + 1, nu - D - 1.0, np.nan)
    return np.linalg.inv(W) / denom[:, None, None]


def _same(a, b):
    try:
        return bool(a == b) if not isinstance(a, np.ndarray) else False
    except Exception:
        return False
