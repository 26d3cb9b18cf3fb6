"""The estimator API: scikit-learn protocol, predict / predict_proba / predict_groups, score."""

import numpy as np
import pandas as pd
import pytest

import nestedatoms as na
from nestedatoms._backend import get_backend
from nestedatoms._metrics import adjusted_rand_index
from nestedatoms._steps import elbo_terms, update_cells


def _sim(seed=3, n_groups=24):
    # well separated, so the Bayes classifier is (near) perfect and recovery is checkable
    return na.simulate(n_groups=n_groups, cells_per_group=60, n_group_clusters=2,
                       n_cell_clusters=3, n_group_features=3, n_cell_features=3, lam_x=0.02,
                       lam_y=0.05, random_state=seed)


@pytest.fixture(scope="module")
def sim():
    return _sim()


@pytest.fixture(scope="module")
def split(sim):
    """Fit on the first 18 individuals; the last 6 are held out as new groups."""
    train_groups = sim.group_names[:18]
    cell_in = np.isin(sim.groups, train_groups)
    model = na.NestedAtomsModel(n_group_clusters=6, n_cell_clusters=6, n_init=2, tol=1e-10,
                                random_state=0).fit(sim.Y[cell_in], sim.groups[cell_in],
                                                    sim.X[:18])
    return model, cell_in


def test_sklearn_protocol_and_clone():
    sklearn_base = pytest.importorskip("sklearn.base")
    model = na.NestedAtomsModel(n_group_clusters=5, tol=1e-4)
    params = model.get_params()
    assert params["n_group_clusters"] == 5 and params["tol"] == 1e-4
    clone = sklearn_base.clone(model)
    assert clone.get_params() == params and clone is not model
    assert model.set_params(n_cell_clusters=7) is model and model.n_cell_clusters == 7
    with pytest.raises(ValueError, match="invalid parameter"):
        model.set_params(n_clusters=3)
    assert "n_group_clusters=5" in repr(model)


def test_unfitted_model_says_so():
    with pytest.raises(AttributeError, match="not fitted"):
        na.NestedAtomsModel().predict(np.zeros((3, 2)))


def test_predict_known_groups_is_the_fixed_point(split, sim):
    """At convergence one more cell step reproduces the fitted q(M)."""
    model, cell_in = split
    assert model.converged_
    proba = model.predict_proba(sim.Y[cell_in], sim.groups[cell_in])
    np.testing.assert_allclose(proba, model.cell_probs_, atol=1e-6)
    np.testing.assert_array_equal(model.predict(sim.Y[cell_in], sim.groups[cell_in]),
                                  model.cell_labels_)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_new_groups_are_recovered(split, sim):
    """Held-out individuals land in the cluster of their true cluster-mates (vs Bayes)."""
    model, cell_in = split
    bayes_groups, bayes_cells = sim.bayes_labels()
    new = ~cell_in
    X_new = pd.DataFrame(sim.X, index=sim.group_names)     # extra (training) rows are ignored
    pred_groups = model.predict_groups(sim.Y[new], sim.groups[new], X_new)
    assert list(pred_groups.index) == list(sim.group_names[18:])
    all_groups = np.concatenate([model.group_labels_, pred_groups.to_numpy()])
    assert adjusted_rand_index(bayes_groups, all_groups) == pytest.approx(1.0)
    # the array form of X (one row per new group) gives the same answer
    proba = model.predict_group_proba(sim.Y[new], sim.groups[new], sim.X[18:])
    np.testing.assert_allclose(proba.to_numpy().sum(axis=1), 1.0)
    np.testing.assert_array_equal(np.argmax(proba.to_numpy(), axis=1), pred_groups.to_numpy())
    # new cells: as good as the training cells against the Bayes classifier
    cells = model.predict(sim.Y[new], sim.groups[new], X_new)
    ari_new = adjusted_rand_index(bayes_cells[new], cells)
    ari_train = adjusted_rand_index(bayes_cells[cell_in], model.cell_labels_)
    assert ari_new >= ari_train - 0.02


def test_local_steps_never_lower_the_local_elbo(split, sim):
    """Each group step and each cell step is exact coordinate ascent on the local ELBO."""
    model, cell_in = split
    new = ~cell_in
    res = model._local(sim.Y[new], sim.groups[new], sim.X[18:])
    assert res.converged and len(res.trace) >= 3
    trace = np.asarray(res.trace)
    assert np.all(np.diff(trace) >= -1e-10 * np.abs(trace[1:]))
    # a mix of known and new groups: known rows keep their fitted q(S) exactly
    mixed = np.isin(sim.groups, sim.group_names[15:21])
    res = model._local(sim.Y[mixed], sim.groups[mixed], sim.X[18:21])
    np.testing.assert_array_equal(res.known, [True, True, True, False, False, False])
    np.testing.assert_array_equal(res.rho[:3], model.group_probs_[15:18])
    assert np.all(np.diff(res.trace) >= -1e-10 * np.abs(np.asarray(res.trace[1:])))


def test_renamed_training_group_gets_its_own_cluster(split, sim):
    """A training individual presented as a new group is assigned where it was fitted."""
    model, cell_in = split
    j = 4
    mask = sim.groups == sim.group_names[j]
    renamed = np.full(mask.sum(), "someone-new")
    pred = model.predict_groups(sim.Y[mask], renamed, sim.X[j:j + 1])
    assert pred["someone-new"] == model.group_labels_[j]


def test_new_group_needs_x_and_groups(split, sim):
    model, cell_in = split
    new = ~cell_in
    with pytest.raises(ValueError, match="X is required"):
        model.predict(sim.Y[new], sim.groups[new])
    with pytest.raises(ValueError, match="groups is None"):
        model.predict(sim.Y[new], X=sim.X[18:])
    with pytest.raises(ValueError, match="features"):
        model.predict(sim.Y[new][:, :2], sim.groups[new], sim.X[18:])
    with pytest.raises(ValueError, match="rows"):
        model.predict(sim.Y[new], sim.groups[new], sim.X[18:20])


def _elog_sticks(a, b):
    """E log of stick-breaking weights from Beta(a, b) sticks (G - 1, C) -> (G, C), scipy."""
    from scipy.special import digamma

    elog_v = digamma(a) - digamma(a + b)
    elog_1mv = digamma(b) - digamma(a + b)
    C = a.shape[1]
    head = np.vstack([elog_v, np.zeros((1, C))])
    tail = np.vstack([np.zeros((1, C)), np.cumsum(elog_1mv, axis=0)])
    return head + tail


def _expected_gaussian_loglik(Y, m, lam, W, nu):
    """E_q log N(y | mu, Lambda^-1) under Normal-Wishart factors, from scipy's digamma."""
    from scipy.special import digamma

    D = Y.shape[1]
    out = np.empty((Y.shape[0], m.shape[0]))
    for l in range(m.shape[0]):
        elogdet = (digamma((nu[l] + 1 - np.arange(1, D + 1)) / 2).sum() + D * np.log(2)
                   + np.linalg.slogdet(W[l])[1])
        d = Y - m[l]
        out[:, l] = 0.5 * (elogdet - D * np.log(2 * np.pi) - D / lam[l]
                           - nu[l] * np.einsum("ni,ij,nj->n", d, W[l], d))
    return out


def test_predict_without_groups_treats_each_cell_as_a_new_individual(split, sim):
    """groups=None on a multi-group model: each cell is a new individual with x unknown.

    Independent check: the returned q(M) must be a fixed point of that two-factor local
    problem, rho_k ~ exp(E log pi_k + sum_l xi_l E log w_lk) and
    xi_l ~ exp(sum_k rho_k E log w_lk + E log N(y | theta_l)), with every expectation
    recomputed here from scipy's digamma rather than the backend.
    """
    from scipy.special import softmax

    model, cell_in = split
    st = model.state_
    Y = sim.Y[~cell_in]
    xi = model.predict_proba(Y)
    elog_pi = _elog_sticks(st.v_a, st.v_b)[:, 0]
    elog_w = _elog_sticks(st.u_a, st.u_b)                              # (L, K)
    ell = _expected_gaussian_loglik(Y, st.my, st.lamy, st.Wy, st.nuy)  # (n, L)
    rho = softmax(elog_pi[None, :] + xi @ elog_w, axis=1)
    np.testing.assert_allclose(xi, softmax(rho @ elog_w.T + ell, axis=1), atol=1e-6)
    # the population-level labels still find the cells' clusters (well separated data)
    bayes_cells = sim.bayes_labels()[1][~cell_in]
    assert adjusted_rand_index(bayes_cells, model.predict(Y)) > 0.9
    # order of the rows does not matter: each cell is on its own
    perm = np.random.default_rng(0).permutation(Y.shape[0])
    np.testing.assert_allclose(model.predict_proba(Y[perm]), xi[perm], atol=1e-12)


def test_cam_predict_without_groups_equals_one_new_group_per_cell():
    sim = _sim(seed=5)
    model = na.NestedAtomsModel(n_group_clusters=4, n_cell_clusters=5, n_init=1,
                                random_state=0).fit(sim.Y, sim.groups)
    Y = sim.Y[:50]
    labels = np.array([f"new-{i:03d}" for i in range(50)])
    np.testing.assert_array_equal(model.predict_proba(Y), model.predict_proba(Y, labels))


def test_score_samples_equals_the_elbo_cell_terms(split, sim):
    """sum_i score_i (logsumexp form) = E log p(Y|M) + E log p(M|S) + H[q(M)] after a cell
    step with the fitted globals (closed form from the sufficient statistics)."""
    model, cell_in = split
    scores = model.score_samples(sim.Y[cell_in], sim.groups[cell_in])
    be = get_backend(model.backend)
    st = model.state_.copy()
    update_cells(be, model.problem_, st)
    t = elbo_terms(be, model.problem_, st)
    assert scores.sum() == pytest.approx(t["loglik_y"] + t["log_p_M"] + t["H_M"], rel=1e-10)
    assert model.score(sim.Y[cell_in], sim.groups[cell_in]) == pytest.approx(scores.mean())
    # data far from every atom scores lower
    far = model.score(sim.Y[cell_in] + 10.0, sim.groups[cell_in])
    assert far < model.score(sim.Y[cell_in], sim.groups[cell_in])


def test_cam_places_new_groups_by_their_cells():
    """Without x, held-out individuals are placed by their cells' composition alone."""
    sim = na.simulate(n_groups=24, cells_per_group=60, n_group_clusters=2, n_cell_clusters=3,
                      n_group_features=3, n_cell_features=3, alpha0_y=1.5, lam_y=0.05,
                      random_state=1)   # compositions 0.05/0.56/0.39 vs 0.50/0.42/0.08
    train = np.isin(sim.groups, sim.group_names[:18])
    model = na.NestedAtomsModel(n_group_clusters=6, n_cell_clusters=6, n_init=1,
                                random_state=0).fit(sim.Y[train], sim.groups[train])
    pred = model.predict_groups(sim.Y[~train], sim.groups[~train])
    bayes_groups, _ = sim.bayes_labels()
    both = np.concatenate([model.group_labels_, pred.to_numpy()])
    assert np.unique(bayes_groups[18:]).size == 2          # both clusters are held out
    assert adjusted_rand_index(bayes_groups, both) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="without group features"):
        model.predict(sim.Y[~train], sim.groups[~train], sim.X[18:])


def test_flat_model_predicts_without_groups():
    sim = _sim(seed=5, n_groups=4)
    model = na.NestedAtomsModel(n_group_clusters=1, n_cell_clusters=6, n_init=1,
                                random_state=0).fit(sim.Y)
    labels = model.predict(sim.Y[:50])
    np.testing.assert_array_equal(labels, model.cell_labels_[:50])


def test_verbose_shows_a_progress_bar(capsys):
    sim = _sim(seed=1, n_groups=6)
    na.NestedAtomsModel(n_group_clusters=3, n_cell_clusters=4, n_init=2, max_iter=5, tol=0,
                        random_state=0, verbose=1).fit(sim.Y, sim.groups, sim.X)
    err = capsys.readouterr().err
    assert "restart 1/2" in err and "restart 2/2" in err and "5/5" in err


def test_the_progress_bar_names_the_costly_move_that_runs(capsys):
    # converging runs reach the at-convergence moves: the bar says which one runs
    sim = _sim(seed=1, n_groups=6)
    model = na.NestedAtomsModel(n_group_clusters=3, n_cell_clusters=4, n_init=1,
                                random_state=0, verbose=1).fit(sim.Y, sim.groups, sim.X)
    err = capsys.readouterr().err
    assert model.timings_["move:search_group_partition"] > 0
    assert "search group partition" in err and "split cell atoms" in err


def test_phases_before_a_restart_has_a_bar_are_ignored():
    import io

    from nestedatoms._progress import FitProgress

    out = io.StringIO()
    with FitProgress(2, 10, file=out) as progress:
        progress.phase(0, "search_group_partition")      # no bar yet: nothing to show
        progress(0, 1, -5.0)
        progress.phase(1, "split_cell_atoms")            # another restart's: ignored
        progress.phase(0, "split_cell_atoms")
    assert "split cell atoms" in out.getvalue() and "search group" not in out.getvalue()
