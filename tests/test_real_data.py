"""Real nested data: the CyTOF files that ship inside the cytonormpy wheel (studies/cytonorm_data.py).

Six whole-blood samples: the same two control samples (Control_1, Control_2) on each of three
plates, 1000 events each, arcsinh(x/5) of 20 lineage markers, hand-gated into major blood
lineages.  Skipped unless cytonormpy is installed (``pip install cytonormpy``; it is located,
never imported).  The numbers behind the thresholds are in studies/results/real_data.md.

No test imports a study: the study measures (``python studies/study_real_data.py --checks
FILE``, one subprocess for the module) and the thresholds are held here.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

STUDY = os.path.join(os.path.dirname(__file__), os.pardir, "studies", "study_real_data.py")
SKIPPED = 3            # the study's exit status when the data are absent

if importlib.util.find_spec("cytonormpy") is None:
    pytest.skip("the real-data example needs cytonormpy (pip install cytonormpy)",
                allow_module_level=True)
if not os.path.isfile(STUDY):
    pytest.skip("the studies are not part of this tree (an sdist leaves them out)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    path = tmp_path_factory.mktemp("real_data") / "checks.json"
    proc = subprocess.run([sys.executable, STUDY, "--checks", str(path)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode == SKIPPED:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout[-3000:]
    with open(path) as fh:
        return json.load(fh)


def test_packaged_data_is_the_nested_design(checks):
    """6 samples x 1000 events: two controls on each of three plates; gates sensible."""
    assert checks["shape"] == [6000, checks["n_lineage_markers"]]
    assert checks["finite_nonnegative"]
    counts = checks["events_per_batch_control"]
    assert len(counts) == 6 and all(c == 1000 for c in counts)
    frac = checks["lineage_fraction"]
    # Whole blood: granulocytes are the majority, then T cells.
    assert 0.45 < frac["Granulocytes"] < 0.6 and 0.2 < frac["T cells"] < 0.35
    # The reproducible difference between the two controls: ~3x the NK cells in Control_2.
    assert max(checks["nk_control_1"]) < min(checks["nk_control_2"])


def test_default_fit_finds_the_lineages_and_keeps_controls_together(checks):
    """Default model on 500 events per sample: cell clusters agree with the hand gates, the
    granulocytes form one pure cluster, and the plates' copies of a control share a donor
    cluster (the samples are never split by plate)."""
    fit = checks["default"]
    # Measured 0.73-0.79 (gates) and 0.71-0.79 (lineages) over subsamples and seeds.
    assert fit["ari_gates"] >= 0.6
    assert fit["ari_lineage"] >= 0.6
    assert fit["granulocyte_cluster_purity"] >= 0.85          # measured 0.93
    assert fit["granulocytes_in_their_cluster"] >= 0.8        # measured 0.93
    assert fit["donor_clusters_per_control"] == [1, 1]
    assert fit["donor_concentration"] > 0


def test_exact_nam_separates_the_two_controls(checks):
    """With no donor variation (c = inf) the full data's six samples fall into exactly two
    donor clusters, Control_1 and Control_2, whatever the plate."""
    assert checks["exact"]["ari_controls"] == 1.0
    assert checks["exact"]["ari_gates"] >= 0.6
