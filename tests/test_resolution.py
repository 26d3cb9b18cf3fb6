"""``cell_resolution``: one knob for how fine the cell clusters are (issue 22, item 6)."""

import numpy as np
import pytest

import nestedatoms as na
from nestedatoms._state import resolve_nw_prior
from nestedatoms._validation import InvalidParameterError


@pytest.mark.parametrize("preset", ["empirical", "reference"])
def test_resolution_divides_the_expected_cluster_width(preset):
    Z = np.random.default_rng(0).normal(size=(200, 4)) * [1.0, 2.0, 3.0, 4.0]
    base = resolve_nw_prior(Z, 10, preset, None)
    fine = resolve_nw_prior(Z, 10, preset, None, resolution=2.0)
    # E[Sigma] = W0^-1 / (nu0 - D - 1): a quarter, i.e. half the standard deviation
    np.testing.assert_allclose(fine.W0inv, base.W0inv / 4.0)
    assert (fine.m0 == base.m0).all() and fine.lam0 == base.lam0 and fine.nu0 == base.nu0
    # an explicit covariance prior is the user's and wins
    own = resolve_nw_prior(Z, 10, preset, {"covariance_prior": 3.0}, resolution=2.0)
    np.testing.assert_allclose(own.W0inv, 3.0 * np.eye(4))


def test_resolution_reaches_the_fit_and_is_checked():
    Y = np.random.default_rng(1).normal(size=(150, 3))
    kw = dict(n_cell_clusters=4, n_init=1, max_iter=3, random_state=0)
    base = na.NestedAtomsModel(**kw).fit(Y)
    fine = na.NestedAtomsModel(cell_resolution=3.0, **kw).fit(Y)
    np.testing.assert_allclose(fine.problem_.y_prior.W0inv, base.problem_.y_prior.W0inv / 9.0)
    for bad in (0, -1.0, np.nan, "2"):
        with pytest.raises(InvalidParameterError, match="cell_resolution"):
            na.NestedAtomsModel(cell_resolution=bad, **kw).fit(Y)


def test_higher_resolution_finds_finer_cell_clusters_while_the_prior_is_broader_than_them():
    # 8 cell types of 40 cells in 10 dimensions (unit spread, centres spread by 2): the default
    # prior expects clusters about 11 times wider in variance than they are, and with
    # nu0 = D + 5 = 15 pseudo-cells against 40 real ones that merges types.  Narrower prior
    # clusters (cell_resolution 0.5 -> 1 -> 2, expected variance 44 -> 11 -> 2.7) find more of
    # them, and better.  (Past the clusters' true spread, at r = 4 here, every cluster pays
    # for being wider than expected and the count falls again: see docs/walkthrough.md.)
    from nestedatoms._metrics import adjusted_rand_index as ari

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(8, 10)) * 2.0
    Y = np.vstack([c + rng.normal(size=(40, 10)) for c in centres])
    truth = np.repeat(np.arange(8), 40)
    found, scores = [], []
    for r in (0.5, 1.0, 2.0):
        model = na.NestedAtomsModel(n_cell_clusters=15, n_init=1, cell_resolution=r,
                                    random_state=0).fit(Y)
        found.append(np.unique(model.cell_labels_).size)
        scores.append(ari(truth, model.cell_labels_))
    assert found[0] < found[1] < found[2] <= 8, found
    assert scores[0] < scores[1] < scores[2], scores


def test_cli_passes_the_resolution(tmp_path):
    anndata = pytest.importorskip("anndata")
    from nestedatoms.cli import main

    sim_path, out = tmp_path / "sim.h5ad", tmp_path / "out.h5ad"
    assert main(["simulate", str(sim_path), "--n-groups", "10", "--median-cells", "20",
                 "--n-cell-features", "2"]) == 0
    assert main(["fit", str(sim_path), str(out), "--group-key", "donor_id", "--n-init", "1",
                 "--max-iter", "3", "--quiet", "--cell-resolution", "2.5"]) == 0
    assert anndata.read_h5ad(out).uns["nam"]["params"]["cell_resolution"] == 2.5
