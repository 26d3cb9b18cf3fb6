"""Real nested data: the CyTOF files that ship inside the cytonormpy wheel (studies/cytonorm_data.py).

Six whole-blood samples: the same two control samples (Control_1, Control_2) on each of three
plates, 1000 events each, arcsinh(x/5) of 20 lineage markers, hand-gated into major blood
lineages.  Skipped unless cytonormpy is installed (``pip install cytonormpy``; it is located,
never imported).  The numbers behind the thresholds are in studies/results/real_data.md.
"""

import os
import sys

import numpy as np
import pytest

import nestedatoms as na

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "studies"))
cytonorm_data = pytest.importorskip("cytonorm_data")

try:
    cytonorm_data.resources_dir()
except ImportError:
    pytest.skip("the real-data example needs cytonormpy (pip install cytonormpy)",
                allow_module_level=True)


def _ari(a, b):
    return na.adjusted_rand_index(np.asarray(a).astype(str), np.asarray(b).astype(str))


@pytest.fixture(scope="module")
def data():
    return cytonorm_data.load()


def test_packaged_data_is_the_nested_design(data):
    """6 samples x 1000 events: two controls on each of three plates; gates sensible."""
    obs = data.obs
    assert data.shape == (6000, len(cytonorm_data.LINEAGE))
    assert np.isfinite(data.X).all() and (data.X >= 0).all()
    counts = obs.groupby(["batch", "control"], observed=True).size()
    assert len(counts) == 6 and (counts == 1000).all()
    frac = obs["lineage"].value_counts(normalize=True)
    # Whole blood: granulocytes are the majority, then T cells.
    assert 0.45 < frac["Granulocytes"] < 0.6 and 0.2 < frac["T cells"] < 0.35
    # The reproducible difference between the two controls: ~3x the NK cells in Control_2.
    nk = obs[obs["gate"] == "NK cells"].groupby("sample", observed=True).size()
    c1 = [nk[s] for s in nk.index if s.endswith("Control_1")]
    c2 = [nk[s] for s in nk.index if s.endswith("Control_2")]
    assert max(c1) < min(c2)


def _subsample(data, per_sample, seed):
    rng = np.random.default_rng(seed)
    samples = data.obs["sample"].astype(str).to_numpy()
    idx = np.concatenate([rng.choice(np.flatnonzero(samples == s), per_sample, replace=False)
                          for s in np.unique(samples)])
    return data[np.sort(idx)]


def test_default_fit_finds_the_lineages_and_keeps_controls_together(data):
    """Default model on 500 events per sample: cell clusters agree with the hand gates, the
    granulocytes form one pure cluster, and the plates' copies of a control share a donor
    cluster (the samples are never split by plate)."""
    sub = _subsample(data, 500, seed=0)
    samples = sub.obs["sample"].astype(str).to_numpy()
    model = na.NestedAtomsModel(random_state=0, n_threads=1).fit(sub.X, samples)
    gates = sub.obs["gate"].astype(str).to_numpy()
    lineage = sub.obs["lineage"].astype(str).to_numpy()
    # Measured 0.73-0.79 (gates) and 0.71-0.79 (lineages) over subsamples and seeds.
    assert _ari(gates, model.cell_labels_) >= 0.6
    assert _ari(lineage, model.cell_labels_) >= 0.6
    gran = gates == "Granulocytes"
    main = np.bincount(model.cell_labels_[gran]).argmax()
    in_main = model.cell_labels_ == main
    assert gran[in_main].mean() >= 0.85          # measured 0.93
    assert in_main[gran].mean() >= 0.8           # measured 0.93
    part = dict(zip([str(g) for g in model.groups_], model.group_labels_))
    for control in ("Control_1", "Control_2"):
        assert len({part[s] for s in part if s.endswith(control)}) == 1
    assert model.donor_concentration_ > 0


def test_exact_nam_separates_the_two_controls(data):
    """With no donor variation (c = inf) the full data's six samples fall into exactly two
    donor clusters, Control_1 and Control_2, whatever the plate."""
    samples = data.obs["sample"].astype(str).to_numpy()
    model = na.NestedAtomsModel(random_state=0, n_threads=1, n_init=1,
                                donor_concentration=np.inf).fit(data.X, samples)
    controls = [str(g).split("_", 1)[1] for g in model.groups_]
    assert _ari(controls, model.group_labels_) == 1.0
    assert _ari(data.obs["gate"].astype(str), model.cell_labels_) >= 0.6
