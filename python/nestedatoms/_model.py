"""``NestedAtomsModel``: the scikit-learn-style estimator around the fitting loop."""

from __future__ import annotations

import inspect

import numpy as np

from ._backend import get_backend, resolve_n_threads
from ._data import check_constant_columns, prepare_data
from ._fit import fit_restarts
from ._batches import dask_batch_size, in_memory_summary, plan_batches
from ._dask import is_dask_array
from .moves import moves_for
from ._atoms import FULL, resolve_cell_prior, y_family
from ._state import ConcentrationPrior, Problem, resolve_nw_prior
from ._steps import expected_stick_weights
from ._validation import (check_data_size, check_dimension, check_estimator_params,
                          check_memory)

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
        Normal-Wishart prior preset for both layers (see the model's section 2: 'Prior defaults').
    group_prior, cell_prior : dict, optional
        Overrides of the x / y Normal-Wishart priors with scikit-learn's names:
        ``mean_prior`` (m0), ``mean_precision_prior`` (lam0), ``degrees_of_freedom_prior``
        (nu0), ``covariance_prior`` (W0^-1; for ``covariance_type="diag"`` a scalar or a
        (p,) diagonal, and nu0 = 2 a0 > 0: see docs/diag.md).
    covariance_type : {"full", "diag"}, default "full"
        The cell clusters' covariances: "full" (Normal-Wishart atoms, a p x p precision per
        cluster; a sweep costs O(N L p^2)) or "diag" (Normal-Gamma atoms, a precision per
        dimension; O(N L p), for many features such as genes).  The group clusters' (x)
        covariances are always full.
    group_concentration, cell_concentration : float, optional
        Fix alpha / beta at this value; None learns it under ``concentration_prior``.
    concentration_prior : (shape, rate), default (0.1, 0.1)
        Gamma prior on alpha and beta when learned.
    n_init : int, default 3
        Number of restarts; the run with the highest ELBO is kept.
    max_iter : int, default 500
        Maximum number of CAVI sweeps per restart.
    tol : float, default 1e-6
        Stop when |Delta ELBO| / |ELBO| < tol and no move changed the state: a *relative*
        change of the whole ELBO, unlike scikit-learn's ``GaussianMixture``, whose ``tol``
        bounds the absolute change of the per-sample bound.  0 runs exactly ``max_iter``
        sweeps.
    random_state : int, numpy Generator or None
        Seed for reproducible restarts.
    n_threads : int or None
        Threads for the C++ core: None uses OMP_NUM_THREADS or all CPUs, -1 all, -2 all but one.
    backend : {"cpp", "numpy"}, default "cpp"
        The compiled core or the pure-NumPy reference (same results, slower).
    verbose : int, default 0
        1: a tqdm progress bar per restart (sweeps, current ELBO) on stderr; 2: also print
        the ELBO of every sweep.
    copy : bool, default True
        False: when Y is already float64, C-contiguous and its cells are grouped by individual
        in sorted label order (as after concatenating per-donor AnnData objects), the model
        keeps a read-only view of Y instead of a group-sorted copy, saving N x p x 8 bytes.
        Y itself is never written; do not change it in place before ``resume``/``save``.
        Any other Y is copied as usual.
    learn_group_prior_scale : {"auto", True, False}, default "auto"
        Learn how narrow the individual clusters are: the x prior's width (E[Sigma], with
        the spread of the cluster means kept) is multiplied by a factor f in [e^-8, 1]
        chosen to maximise the ELBO (empirical Bayes) for the partition reached each time
        the sweeps converge; the sweeps then resume under it, until it settles.
        ``group_prior_scale_`` reports it.  Never broader than the prior as set, since a
        broader prior is confounded with merging.  It matters where individual clusters are
        much tighter than the prior expects (well-separated x, few individuals per
        cluster); elsewhere f stays 1 (measured by the recovery study).  "auto" learns it for
        the default x prior (``prior="empirical"`` with no, or an empty, ``group_prior``) and
        holds a prior you chose (``"reference"``, the published setting, or an override)
        exactly as set; True learns it for any x prior; False never.  No effect without X.
    donor_concentration : "auto", float > 0 or numpy.inf, default "auto"
        How much individuals vary around their cluster's cell-type composition: individual j
        of cluster k is taken to have its own composition ~ Dirichlet(c omega_.k), so its
        n_j cells weigh as n_j (1 + c) / (n_j + c) cells of evidence about omega_.k (the
        composition terms are tempered by zeta_j = (1 + c) / (n_j + c)).  Without this,
        individuals with hundreds of cells that vary around their group become clusters of
        their own.  "auto" learns c at each convergence from the Dirichlet-multinomial
        evidence of the partition reached (infinite where the data show no variation);
        a number holds c fixed; ``numpy.inf`` is the Nested Atoms Model exactly.
        ``donor_concentration_`` reports the value in use (docs: "Donors vary").
    cell_resolution : float, default 1.0
        How fine the cell clusters are: the cell prior expects clusters ``cell_resolution``
        times narrower (in standard deviation) than its volume rule does, i.e. its scale
        matrix W0^-1 is divided by ``cell_resolution**2``.  Above 1 gives more, tighter cell
        clusters (useful with many dimensions and few cells per cluster, where the prior
        weighs as much as the data); below 1 fewer.  An explicit ``covariance_prior`` in
        ``cell_prior`` takes precedence.
    batch_size : int or None, default None
        Cells per batch: every pass over the cells runs batch by batch, each batch a run of
        whole individuals (the fewest batches of at most this many cells, in group order, as
        even as whole individuals allow; an individual larger than this is a batch of its
        own), and the batches' sums are added in batch order.  The plan depends on the data
        and this number only, so a fit gives the same bits whatever the number of threads or
        dask workers.  None: one batch for an in-memory Y (the fit as it always was); for a
        dask array Y one batch up to 262144 cells, else at least 24 batches of 32768 to 262144
        cells, so that they spread evenly over workers (52917 cells for 1.27 M cells;
        ``problem_.batch_size`` is the number used).  Pass the same number to compare a dask
        fit with an in-memory one bit for bit.  With more than one batch the merges and the
        split of cell atoms run batch by batch, in memory as on dask, so the two stay equal
        (docs/scale-out.md).

    Attributes
    ----------
    groups_ : ndarray (J,)
        The group labels, sorted; every per-group result follows this order.
    group_labels_, group_probs_ : ndarray (J,), (J, K)
        Each group's cluster (argmax of q(S)) and q(S) itself.
    cell_labels_, cell_probs_ : ndarray (N,), (N, L)
        Each cell's cluster and q(M), in the caller's cell order (``cell_probs_`` is
        computed on first access).
    group_weights_, cell_weights_ : ndarray (K,), (L, K)
        E[pi] and E[omega]: the group clusters' weights and each group cluster's expected
        cell-cluster composition.
    group_means_, group_covariances_ : ndarray (K, q), (K, q, q) or None
        E[mu^x], E[Sigma^x] of the group clusters (None without X).
    cell_means_, cell_covariances_ : ndarray (L, p), (L, p, p)
        E[mu^y], E[Sigma^y] of the cell clusters; with ``covariance_type="diag"``
        ``cell_covariances_`` is (L, p), the diagonal E[sigma_d^2] (scikit-learn's shape).
    elbo_, elbo_trace_, elbo_traces_ : float, ndarray, list of ndarray
        The final ELBO of the kept restart, its trace, and every restart's trace.
    best_restart_, n_iter_, converged_ : int, int, bool
        Which restart was kept, its sweeps, and whether ``tol`` (not ``max_iter``) ended it.
    group_prior_scale_ : float or None
        The learned factor f of the x prior's width (None without X).
    donor_concentration_ : float
        The donor concentration c in use (inf: the Nested Atoms Model exactly).
    timings_, moves_ : dict, list of dict
        Seconds per phase of the fit and the moves that changed it (restart, sweep, gain).
    n_features_in_ : int
        p, the number of cell features.
    problem_, state_
        The data, priors and variational state (for ``resume``, ``save`` and the backends).

    Examples
    --------
    >>> import nestedatoms as na
    >>> sim = na.simulate(random_state=0)
    >>> model = na.NestedAtomsModel(random_state=0).fit(sim.Y, sim.groups, sim.X)
    >>> na.adjusted_rand_index(sim.group_truth, model.group_labels_)
    1.0
    """

    def __init__(self, *, n_group_clusters=30, n_cell_clusters=30, prior="empirical",
                 group_prior=None, cell_prior=None, covariance_type="full",
                 group_concentration=None,
                 cell_concentration=None, concentration_prior=(0.1, 0.1), n_init=3,
                 max_iter=500, tol=1e-6, random_state=None, n_threads=None, backend="cpp",
                 verbose=0, copy=True, learn_group_prior_scale="auto",
                 donor_concentration="auto", cell_resolution=1.0, batch_size=None):
        self.n_group_clusters = n_group_clusters
        self.n_cell_clusters = n_cell_clusters
        self.prior = prior
        self.group_prior = group_prior
        self.cell_prior = cell_prior
        self.covariance_type = covariance_type
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
        self.copy = copy
        self.learn_group_prior_scale = learn_group_prior_scale
        self.donor_concentration = donor_concentration
        self.cell_resolution = cell_resolution
        self.batch_size = batch_size

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

    def _problem(self, data, batch_size=None, y_summary=None) -> Problem:
        K, L = int(self.n_group_clusters), int(self.n_cell_clusters)
        x_prior = (None if data.X is None
                   else resolve_nw_prior(data.X, K, self.prior, self.group_prior,
                                         name="group_prior", layer="groups"))
        return Problem(
            data=data, K=K, L=L,
            y_prior=resolve_cell_prior(data.Y, L, self.prior, self.cell_prior,
                                       self.covariance_type, name="cell_prior",
                                       resolution=float(self.cell_resolution),
                                       summary=y_summary),
            x_prior=x_prior,
            alpha_prior=self._concentration(self.group_concentration, "group_concentration"),
            beta_prior=self._concentration(self.cell_concentration, "cell_concentration"),
            learn_group_prior_scale=self._learns_group_prior_scale(),
            learn_donor_concentration=isinstance(self.donor_concentration, str),
            donor_concentration=(float("inf") if isinstance(self.donor_concentration, str)
                                 else float(self.donor_concentration)),
            batch_size=batch_size, y_summary=y_summary,
        )

    def _learns_group_prior_scale(self) -> bool:
        # "auto": the learned width refines the data-scaled default (section 2 leaves that
        # default to the quality study); a prior the user chose is theirs to keep
        if isinstance(self.learn_group_prior_scale, str):        # "auto" (validated)
            return self.prior == "empirical" and not self.group_prior   # None or {}
        return bool(self.learn_group_prior_scale)

    def fit(self, Y, groups=None, X=None, y=None, *, init_group_labels=None,
            init_cell_labels=None):
        """Fit the model.

        Parameters
        ----------
        Y : array-like (N, p)
            Cells (for example expression principal components).
        groups : array-like (N,), optional
            Group (individual) label of each cell, any hashable type; None puts all cells in
            one group (a Dirichlet-process mixture of the rows).
        X : array-like (J, q) or pandas.DataFrame, optional
            Group features: the vector x_j that groups are *clustered by* (with their cells'
            make-up), e.g. genotype principal components; not what you want to adjust for
            (sex, batch, age), since clusters will separate groups by it.  One row per group
            in the order of the sorted unique labels, or a DataFrame indexed by label (rows of
            groups without cells are ignored).  None fits the common atoms model (CAM).
        y : ignored
            Present for scikit-learn compatibility.
        init_group_labels : array-like (J,) or pandas.Series, optional
            A starting partition of the individuals, used instead of k-means by the first
            restart (the others start as usual): one label per individual in the order of
            ``groups_`` (the sorted unique labels, as for an array X), or a Series indexed by
            group label (extra rows ignored).  Any hashable labels, at most
            ``n_group_clusters`` distinct; NaN / None marks an individual with no label, which
            joins the nearest labelled cluster.  The sweeps and moves then run as usual: a
            start, not a constraint.
        init_cell_labels : array-like (N,), optional
            Likewise for the cells (for example leiden clusters), one per row of Y, at most
            ``n_cell_clusters`` distinct; cells with NaN / None join the nearest labelled
            cluster mean in y.

        Returns
        -------
        self
        """
        self._check_params()
        be = get_backend(self.backend)
        batch_size = None if self.batch_size is None else int(self.batch_size)
        data = None
        if is_dask_array(Y):
            data = self._dask_data(Y, groups, X, batch_size, init_group_labels,
                                   init_cell_labels)
            if data is None:       # one batch: read it, and fit in memory (same plan)
                Y = Y.compute()
            else:
                batch_size = dask_batch_size(data.n_cells) if batch_size is None else batch_size
        if data is None:
            # Refuse a fit that cannot fit in memory before copying anything (Y's shape is
            # known without converting it); checked again below once the data is validated.
            shape = _shape_of(Y)
            if shape is not None:
                check_memory(shape[0], shape[1], int(self.n_cell_clusters), int(self.n_init),
                             self.backend)
            data = prepare_data(Y, groups, X, copy=bool(self.copy))
            check_constant_columns(data.Y, "Y", getattr(Y, "columns", None))
        if data.X is not None:
            check_constant_columns(data.X, "X", getattr(X, "columns", None))
        plan = plan_batches(data.offsets, batch_size)
        # one batch: the data's summaries as they always were; more: batch by batch, as a
        # dask fit computes them (same bits)
        summary = getattr(data, "summary", None)
        if summary is None and plan.n_batches > 1:
            summary = in_memory_summary(data.Y, plan)
        prob = self._problem(data, batch_size, summary)
        n_threads = resolve_n_threads(self.n_threads)
        check_data_size(data.n_cells, data.n_groups, prob.L)
        check_dimension(data.Y.shape[1], y_family(prob).name)
        if isinstance(data.Y, np.ndarray):
            check_memory(data.n_cells, data.Y.shape[1], prob.L, int(self.n_init), self.backend)
            init_state = self._known_start(prob, init_group_labels, init_cell_labels)
        else:
            from ._dask import initial_state as init_state
        with self._blas_limits(n_threads), self._progress(int(self.n_init)) as callback:
            best, runs = fit_restarts(be, prob, int(self.n_init), int(self.max_iter),
                                      float(self.tol), self.random_state, n_threads,
                                      moves=moves_for(prob), init_state=init_state,
                                      callback=callback, on_phase=callback.phase)
        self._set_results(prob, best, runs)
        self._warn_unconverged(best)
        return self

    def _dask_data(self, Y, groups, X, batch_size, init_group_labels, init_cell_labels):
        """The cells of a dask Y, validated and summarised on the workers (``_dask``); None
        when the batch plan has one batch."""
        from ._dask import prepare_dask_data

        if init_group_labels is not None or init_cell_labels is not None:
            raise ValueError("init_group_labels / init_cell_labels are not supported with a "
                             "dask array Y; fit without them, or pass Y.compute().")
        return prepare_dask_data(Y, groups, X,
                                 dask_batch_size(Y.shape[0]) if batch_size is None else batch_size,
                                 self.backend, self.n_threads)

    @staticmethod
    def _known_start(prob, init_group_labels, init_cell_labels):
        """``init_state`` for fit_restarts: the first restart from the given labels."""
        if init_group_labels is None and init_cell_labels is None:
            return None
        from ._init import initial_state
        from ._init_labels import cell_label_codes, group_label_codes, state_from_known

        data = prob.data
        group_codes = (None if init_group_labels is None
                       else group_label_codes(init_group_labels, data.groups, prob.K))
        cell_codes = (None if init_cell_labels is None
                      else cell_label_codes(init_cell_labels, data.n_cells, prob.L)[data.order])
        calls = []

        def init_state(be, prob, rng):
            calls.append(1)
            if len(calls) == 1:
                return state_from_known(be, prob, rng, group_codes, cell_codes)
            return initial_state(be, prob, rng)

        return init_state

    def _warn_unconverged(self, run):
        """ConvergenceWarning when max_iter, not tol, ended the kept run (tol = 0 asks for
        exactly max_iter sweeps; an interrupted fit has warned already)."""
        if run.converged or getattr(run, "interrupted", False) or float(self.tol) == 0.0:
            return
        import warnings

        from .exceptions import ConvergenceWarning

        warnings.warn(
            f"the fit stopped at max_iter={int(self.max_iter)} sweeps before the relative ELBO "
            f"change fell below tol={self.tol:g} (converged_ = False); raise max_iter, or "
            f"continue with model.resume().", ConvergenceWarning, stacklevel=3)

    def _blas_limits(self, n_threads):
        from ._blas import blas_threads

        # The C++ core parallelises itself: keep BLAS to one thread so nothing
        # oversubscribes; the NumPy backend gets its threads through BLAS instead.
        return blas_threads(1 if self.backend == "cpp" else n_threads)

    def _progress(self, n_init, max_iter=None):
        """verbose >= 1: a tqdm bar per restart; verbose >= 2: also print every sweep's ELBO."""
        from ._progress import FitProgress

        verbose = int(self.verbose or 0)
        # tl.fit sets _progress_delay (not a parameter) so that its default bar shows only
        # for restarts that run longer than a few seconds.
        return FitProgress(n_init, int(self.max_iter if max_iter is None else max_iter),
                           enabled=verbose >= 1, print_sweeps=verbose >= 2,
                           delay=getattr(self, "_progress_delay", 0.0))

    def _set_results(self, prob: Problem, best, runs):
        st, data = best.state, prob.data
        self.problem_ = prob
        self.state_ = st
        self.groups_ = data.groups
        self.n_features_in_ = data.Y.shape[1]
        self.group_probs_ = st.rho.copy()
        self.group_labels_ = np.argmax(st.rho, axis=1)
        # cell_probs_ is derived from state_.xi on first access (see the property): the fit
        # does not hold a second N x L array just to return it.
        self.__dict__.pop("_cell_probs", None)
        # with the cells on dask workers, xi is recomputed there by a last map
        labels = (np.argmax(st.xi, axis=1) if isinstance(st.xi, np.ndarray)
                  else st.xi.labels(prob))
        self.cell_labels_ = data.to_caller_order(labels)
        if hasattr(data, "release_cells"):      # cells kept on dask workers: the fit is over
            data.release_cells()
        self.group_weights_ = expected_stick_weights(st.v_a, st.v_b)[:, 0]
        self.cell_weights_ = expected_stick_weights(st.u_a, st.u_b)
        self.cell_means_ = st.my.copy()
        self.cell_covariances_ = _sound_covariances(y_family(prob).expected_covariances,
                                                    st.Wy, st.nuy)
        if prob.has_x:
            self.group_means_ = st.mx.copy()
            self.group_covariances_ = _sound_covariances(_expected_covariances, st.Wx, st.nux)
            self.group_prior_scale_ = float(st.group_prior_scale)
        else:
            self.group_means_ = None
            self.group_covariances_ = None
            self.group_prior_scale_ = None
        self.donor_concentration_ = float(st.donor_concentration)
        self.elbo_ = best.elbo
        self.elbo_trace_ = np.asarray(best.trace)
        self.elbo_traces_ = [np.asarray(r.trace) for r in runs]
        self.best_restart_ = next(i for i, r in enumerate(runs) if r is best)
        # where the time went, summed over restarts (seconds per phase), and every move that
        # changed the state, with its restart, sweep and ELBO gain
        timings = {}
        for r in runs:
            for phase, seconds in r.timings.items():
                timings[phase] = timings.get(phase, 0.0) + seconds
        self.timings_ = dict(sorted(timings.items(), key=lambda kv: -kv[1]))
        self.moves_ = [dict(restart=i, **m) for i, r in enumerate(runs) for m in r.moves]
        if self.verbose >= 2:
            total = sum(self.timings_.values())
            print("time per phase (s, all restarts): " + ", ".join(
                f"{k} {v:.3g} ({100 * v / total:.0f}%)" for k, v in self.timings_.items()))
        self.n_iter_ = best.n_iter
        self.converged_ = best.converged

    # ------------------------------------------------------------------ labelling-aware bound
    def labelling_bound(self, max_orders: int = 720):
        """The labelling-aware lower bound on log p(X, Y) (model section 6b).

        ``elbo_`` scores one labelling of the occupied individual clusters; this bound is the
        ELBO of a mixture over their relabellings (group sticks and alpha re-optimised per
        order), its entropy bounded below with pairwise Bhattacharyya overlaps, so clusters
        that overlap earn nothing and m well-separated ones up to log m!.  Always >=
        ``elbo_``.  Returns a ``LabellingBound`` (``value``, ``elbo``, ``bonus``,
        ``n_orders``, ``weights``, ...).  All m! orders up to m = 6 occupied clusters, a
        documented subset above (``max_orders``).  Reported beside the ELBO; the fit itself
        still compares partitions by ``elbo_``.
        """
        from ._labelling_bound import labelling_bound_of

        return labelling_bound_of(self, max_orders=max_orders)

    # ------------------------------------------------------------------ cell probabilities
    @property
    def cell_probs_(self):
        """(N, L) posterior cell-cluster probabilities xi, rows in the caller's cell order.

        Computed from ``state_.xi`` (kept in the group-sorted layout) on first access and then
        cached, so a fit only holds this second N x L float64 array (8 N L bytes; 305 MB for
        1.27 million cells and L = 30) if it is asked for.  ``cell_labels_`` never needs it.
        """
        cached = self.__dict__.get("_cell_probs")
        if cached is not None:
            return cached
        if "state_" not in self.__dict__ or "problem_" not in self.__dict__:
            raise AttributeError("'NestedAtomsModel' object has no attribute 'cell_probs_' "
                                 "(not fitted yet; call fit first)")
        xi = self.state_.xi
        # cells on dask workers: a lazy dask array, computed (8 N L bytes) only when asked
        probs = (self.problem_.data.to_caller_order(xi) if isinstance(xi, np.ndarray)
                 else xi.probs(self.problem_))
        self.__dict__["_cell_probs"] = probs
        return probs

    @cell_probs_.setter
    def cell_probs_(self, value):
        self.__dict__["_cell_probs"] = value

    # ------------------------------------------------------------------ resuming
    def resume(self, n_iter=None):
        """Continue the kept run for up to ``n_iter`` more sweeps (default ``max_iter``).

        The run goes on from ``state_`` with the same moves and ``tol`` as ``fit``, on the
        training data the model holds (also after ``load``), so ``fit(max_iter=a)`` followed
        by ``resume(b)`` with ``tol=0`` reproduces ``fit(max_iter=a + b)`` bit for bit.  With
        ``tol > 0`` the costly moves of a run that has not converged are tried every 50
        sweeps counted from the start of each call, so the two may differ there.  The priors
        are those ``fit`` resolved (``problem_``), including whether the x prior's width is
        learned: ``set_params`` after ``fit`` does not change them; refit for that.
        ``elbo_trace_``, ``elbo_traces_[best_restart_]``, ``n_iter_`` (the total) and every
        fitted attribute are updated.  Returns self.
        """
        from ._fit import run_cavi

        self._check_fitted()
        n_iter = int(self.max_iter if n_iter is None else n_iter)
        if n_iter < 1:
            raise ValueError(f"n_iter must be an integer >= 1, got {n_iter!r}.")
        be = get_backend(self.backend)
        n_threads = resolve_n_threads(self.n_threads)
        prob, st = self.problem_, self.state_.copy()
        with self._blas_limits(n_threads), self._progress(1, n_iter) as progress:
            run = run_cavi(be, prob, st, n_iter, float(self.tol), n_threads,
                           moves=moves_for(prob),
                           callback=lambda it, value: progress(0, it, value),
                           on_phase=lambda name: progress.phase(0, name))
        traces = [np.asarray(t) for t in self.elbo_traces_]
        best = self.best_restart_
        run.trace = list(traces[best]) + list(run.trace)
        run.n_iter = self.n_iter_ + run.n_iter
        runs = [_Run(t) for t in traces]
        runs[best] = run
        self._set_results(prob, run, runs)
        self.best_restart_ = best
        self._warn_unconverged(run)
        return self

    # ------------------------------------------------------------------ new data
    def _check_fitted(self):
        if not hasattr(self, "state_"):
            raise AttributeError(  # scikit-learn's NotFittedError is an AttributeError too
                "this NestedAtomsModel is not fitted yet; call fit(Y, groups, X) first.")

    def _local(self, Y, groups=None, X=None, with_scores=False):
        from ._predict import local_fit

        self._check_fitted()
        be = get_backend(self.backend)
        n_threads = resolve_n_threads(self.n_threads)
        # Overflow for extreme rows is detected on the results (NumericalError), not left
        # to NumPy's RuntimeWarnings.
        with self._blas_limits(n_threads), np.errstate(over="ignore", invalid="ignore"):
            return local_fit(be, self.problem_, self.state_, self.groups_, Y, groups, X,
                             n_threads=n_threads, with_scores=with_scores)

    def predict_proba(self, Y, groups=None, X=None):
        """q(M) of new cells, (N, L), with the global factors held fixed.

        Cells of a group seen in training use that group's fitted q(S).  Cells of a new group
        (a label not in ``groups_``) need that group's features in ``X`` when the model was
        fit with X: a DataFrame indexed by group label (other rows are ignored) or an array
        with one row per new group in sorted label order.  The new groups' q(S) and their
        cells' q(M) are then optimised together (cell and group steps alternate to
        convergence).

        Without ``groups``, a model fit on one group puts the cells in it; a model fit on
        several treats each cell as an individual of its own, not seen in training, whose x
        is unknown: the population-level prediction (scikit-learn's ``predict(Y)``), which
        mixes the group clusters' compositions.  Cells of a known individual are placed more
        sharply with its label, since they then use its fitted composition.
        """
        return self._local(Y, groups, X).xi

    def predict(self, Y, groups=None, X=None):
        """Cell-cluster label (argmax of :meth:`predict_proba`) of each new cell, (N,)."""
        return np.argmax(self.predict_proba(Y, groups, X), axis=1)

    def predict_group_proba(self, Y, groups, X=None):
        """q(S) of the groups in ``groups``: a DataFrame (groups x K) indexed by group label.

        Known groups keep their fitted rows; new groups are fit from their cells ``Y`` and
        their features ``X`` with the global factors held fixed (see :meth:`predict_proba`).
        """
        import pandas as pd

        res = self._local(Y, groups, X)
        return pd.DataFrame(res.rho, index=pd.Index(res.groups, name="group"),
                            columns=pd.RangeIndex(res.rho.shape[1], name="group_cluster"))

    def predict_groups(self, Y, groups, X=None):
        """Group-cluster label of each group in ``groups``: a Series indexed by group label."""
        proba = self.predict_group_proba(Y, groups, X)
        return _series(np.argmax(proba.to_numpy(), axis=1), proba.index, "group_cluster")

    def score_samples(self, Y, groups=None, X=None):
        """Per-cell local ELBO, (N,): log sum_l exp(ell_l(y_i) + sum_k rho_jk E log omega_lk).

        This is cell i's contribution to the ELBO with the global factors fixed and q(M_i) at
        its optimum, i.e. E_q[log p(y_i, M_i | S_j, theta^y, u)] + H[q(M_i)], a lower bound on
        the cell's log predictive density under q.  Higher is better.  The group-level terms of
        new groups (x likelihood, q(S) prior and entropy) are not included.
        """
        return self._local(Y, groups, X, with_scores=True).cell_score

    def score(self, Y, groups=None, X=None, y=None):
        """Mean of :meth:`score_samples` over the cells (scikit-learn's convention)."""
        return float(np.mean(self.score_samples(Y, groups, X)))

    # ------------------------------------------------------------------ results
    def summary(self, n_samples=4000, level=0.95, random_state=0):
        """Posterior summaries (:class:`nestedatoms.Summary`): weights with credible
        intervals, compositions, co-clustering of individuals, atoms, differential abundance.

        Credible intervals are Monte Carlo (``n_samples`` draws of the Beta sticks); clusters
        are renumbered by size (largest first); see ``Summary`` for every table.
        """
        from ._summary import summarize

        self._check_fitted()
        return summarize(self, n_samples=n_samples, level=level, random_state=random_state)

    def differential_abundance(self, conditions, reference=None, n_samples=4000, level=0.95,
                               random_state=0):
        """Difference in expected cell-cluster composition between conditions of individuals.

        Parameters
        ----------
        conditions : mapping, pandas Series or array-like
            The condition (e.g. "case" / "control") of each individual: a dict or Series keyed
            by group label (individuals not in it, or with a missing value, are left out), or
            an array aligned with ``groups_``.
        reference : optional
            A condition: each other condition is compared with it (other - reference).  None
            compares every pair (a - b, a before b in sorted order).
        n_samples, level, random_state
            Monte Carlo draws from q, credible level, seed.

        Returns
        -------
        DataFrame, one row per (comparison, cell cluster), cell clusters numbered as in
        ``summary()``: ``condition_a``, ``condition_b``, ``n_a``, ``n_b`` (individuals),
        ``mean_a``, ``mean_b`` (posterior mean of the condition's expected share of the cell
        cluster), ``difference`` (of a minus b) with its equal-tailed interval ``lower`` /
        ``upper``, ``prob_greater`` = P(share_a > share_b), ``observed_a`` / ``observed_b``
        (mean per-individual share under q(M), descriptive) and ``differs`` (the interval
        excludes 0).  Draws: S_j from q(S_j) for every individual and omega from the Beta
        sticks of q(u), averaged per condition (``nestedatoms._abundance``).
        """
        import pandas as pd

        from ._abundance import condition_differences
        from ._summary import _order_by_size

        self._check_fitted()
        labels = pd.Index(self.groups_)
        if isinstance(conditions, (dict, pd.Series)):
            cond = pd.Series(conditions)
            if cond.index.has_duplicates:
                raise ValueError("conditions has duplicate group labels; give one per group.")
            if not labels.isin(cond.index).any():
                raise ValueError(f"conditions has no entry for any fitted group (e.g. "
                                 f"{labels[:5].tolist()}); key it by the group labels.")
            cond = cond.reindex(labels)
        else:
            values = np.asarray(conditions, dtype=object)
            if values.ndim != 1 or values.shape[0] != labels.size:
                raise ValueError(f"conditions must have one entry per fitted group "
                                 f"({labels.size}, in the order of groups_), got shape "
                                 f"{values.shape}; or pass a dict/Series keyed by label.")
            cond = pd.Series(values, index=labels)
        st = self.state_
        cell_index = _order_by_size(np.bincount(self.cell_labels_, minlength=st.L), st.y_n)
        sizes = np.maximum(self.problem_.data.group_sizes, 1)
        observed = st.N_jl[:, cell_index] / sizes[:, None]
        return condition_differences(st.rho, st.u_a, st.u_b, cond, cell_index,
                                     observed=observed, reference=reference,
                                     n_samples=n_samples, level=level,
                                     random_state=random_state)

    def save(self, path):
        """Write the fitted model to ``path`` (``.npz``; open format, no pickle; see
        ``nestedatoms._io``).  The file holds the training data, so a loaded model can resume."""
        from ._io import save_model

        save_model(self, path)

    @classmethod
    def load(cls, path):
        """Read a model written by :meth:`save`; every fitted attribute is bitwise equal."""
        from ._io import load_model

        return load_model(cls, path)


class _Run:
    """A finished restart that only contributes its trace after a resume."""

    def __init__(self, trace):
        self.trace = trace
        self.timings, self.moves = {}, []     # spent before the resume, not logged again


def _shape_of(a):
    """(rows, columns) of a 2-D array-like without converting it, or None if unknown."""
    shape = getattr(a, "shape", None)
    if shape is None or len(shape) != 2:
        return None
    try:
        return int(shape[0]), int(shape[1])
    except (TypeError, ValueError):
        return None


def _series(values, index, name):
    import pandas as pd

    return pd.Series(values, index=index, name=name)


def _expected_covariances(W, nu):
    """E[Sigma] = E[Lambda^-1] = W^-1 / (nu - D - 1) (finite for nu > D + 1)."""
    return FULL.expected_covariances(W, nu)


def _sound_covariances(expected, W, nu):
    """``expected(W, nu)`` (E[Sigma] per cluster), or a NumericalError that says what to
    change where a W is numerically singular: its inverse then fails, or comes out with a
    variance <= 0 or infinite (a fuzz draw: 25 identical cells at ~1e8 under
    prior='reference', made for standardised data, gave a covariance with a negative
    variance).  NaN, where the expectation is infinite (few degrees of freedom), is kept."""
    from ._fit import _explain_singular

    try:
        cov = expected(W, nu)
    except np.linalg.LinAlgError as exc:
        raise _explain_singular(exc) from exc
    variances = cov if cov.ndim == 2 else np.diagonal(cov, axis1=1, axis2=2)
    if np.any(variances <= 0.0) or np.any(np.isinf(variances)):
        raise _explain_singular(ValueError("the expected covariance has a variance <= 0"))
    return cov


def _same(a, b):
    try:
        return bool(a == b) if not isinstance(a, np.ndarray) else False
    except Exception:
        return False
