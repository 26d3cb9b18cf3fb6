"""The studies (studies/) stand outside the package: they use its public API and
``nestedatoms.diagnostics`` only, and no test imports a study or a benchmark.  That the studies
still run is CI's job (``python studies/run.py --quick`` in .ci/run), not the test suite's:
their smallest settings take minutes."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
STUDIES = os.path.join(ROOT, "studies")

pytestmark = pytest.mark.skipif(not os.path.isdir(STUDIES),
                                reason="the studies are not part of this tree (an sdist)")

PRIVATE = re.compile(r"nestedatoms\._|from\s+nestedatoms\s+import\s+(\(\s*)?_")
SYS_PATH = re.compile(r"sys\.path\s*(\.\s*(insert|append|extend)|\+?=)")


def _python_files(folder):
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".py"))


def test_studies_use_only_the_public_api():
    offenders = []
    for path in _python_files(STUDIES):
        with open(path) as fh:
            for number, line in enumerate(fh, start=1):
                if PRIVATE.search(line) or SYS_PATH.search(line):
                    offenders.append(f"{os.path.basename(path)}:{number}: {line.strip()}")
    assert not offenders, ("studies import private names or edit sys.path (use the public "
                           "API and nestedatoms.diagnostics):\n" + "\n".join(offenders))


def test_no_test_imports_a_study_or_a_benchmark():
    scripts = {os.path.splitext(os.path.basename(p))[0]
               for folder in (STUDIES, os.path.join(ROOT, "bench"))
               for p in _python_files(folder)}
    importing = re.compile(r"^\s*(from|import)\s+(" + "|".join(sorted(scripts)) + r")\b")
    offenders = []
    for path in _python_files(os.path.dirname(os.path.abspath(__file__))):
        with open(path) as fh:
            for number, line in enumerate(fh, start=1):
                if importing.search(line) or SYS_PATH.search(line):
                    offenders.append(f"{os.path.basename(path)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_smoke_runner_knows_every_study():
    """Every study script has an entry in studies/run.py (so CI runs it)."""
    out = subprocess.run([sys.executable, os.path.join(STUDIES, "run.py"), "--list"],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    listed = set(re.findall(r"studies/(study_\w+\.py)", out))
    scripts = {os.path.basename(p) for p in _python_files(STUDIES)
               if os.path.basename(p).startswith("study_")}
    # study_ceiling and study_prior_scale run inside study_recovery --quick
    assert scripts - listed == {"study_ceiling.py", "study_prior_scale.py"}
