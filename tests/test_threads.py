"""Choosing the instruction-set build at import, show_config, and the C++ core's threading.

The ISA builds are checked against the NumPy reference in test_core_vs_reference.py; here: the
selection rules, the report of what runs, and that threads never change a fit.
"""

import io
import os
import subprocess
import sys

import numpy as np
import pytest

import nestedatoms as na
from nestedatoms._backend import (ISA_ENV, ISA_FEATURES, ISA_MODULES, available_isas,
                                  core_module, get_backend)

ISAS = available_isas()


def run_python(code, **env):
    full = dict(os.environ)
    full.pop(ISA_ENV, None)
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full, timeout=120)


def test_the_default_is_the_best_build_the_cpu_supports():
    import nestedatoms._core as baseline

    features = baseline.cpu_features()
    supported = [isa for isa in ISA_MODULES
                 if all(features.get(f, False) for f in ISA_FEATURES[isa])]
    assert ISAS == [isa for isa in supported if isa in ISAS]  # never one the CPU lacks
    out = run_python("from nestedatoms._backend import get_backend; print(get_backend('cpp').ISA)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ISAS[-1]


@pytest.mark.parametrize("isa", ISAS)
def test_the_environment_variable_forces_a_build(isa):
    out = run_python("from nestedatoms._backend import get_backend; print(get_backend('cpp').ISA)",
                     **{ISA_ENV: isa})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == isa


def test_an_unknown_isa_is_refused_with_the_choices():
    out = run_python("from nestedatoms._backend import get_backend; get_backend('cpp')",
                     **{ISA_ENV: "sse9"})
    assert out.returncode != 0
    assert "NESTEDATOMS_ISA='sse9'" in out.stderr and "avx512" in out.stderr
    with pytest.raises(ValueError, match="not an instruction set"):
        core_module("sse9")


def test_show_config_reports_the_build_that_runs():
    buf = io.StringIO()
    info = na.show_config(file=buf)
    text = buf.getvalue()
    be = get_backend("cpp")
    assert info["core"]["isa"] == be.ISA and info["core"]["module"] == be.__name__
    assert info["core"]["eigen"].startswith("3.4")
    assert info["core"]["openmp"] == be.openmp_enabled()
    assert info["core"]["installed_isas"] == ISAS
    assert be.ISA in text and "openmp" in text and "threadpools" in text
    # numpy's BLAS as threadpoolctl sees it
    from threadpoolctl import threadpool_info

    apis = {lib["internal_api"] for lib in threadpool_info() if lib["user_api"] == "blas"}
    assert {b.get("internal_api") for b in info["numpy"]["threadpools"]} >= apis
    assert "show_config" in na.__all__


def test_show_config_names_the_forced_build():
    out = run_python("import nestedatoms as na; c = na.show_config(); print(c['core']['isa'], "
                     "c['core']['selected_by'])", **{ISA_ENV: "baseline"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == f"baseline ${ISA_ENV}"


def test_a_fit_is_bitwise_identical_for_any_thread_count():
    # ~22k cells: enough blocks that the core really runs 2 threads (see kMinBlocksPerThread)
    sim = na.simulate(n_groups=6, cells_per_group=[3000, 5, 7000, 400, 2600, 9000],
                      random_state=2)
    fits = [na.NestedAtomsModel(n_group_clusters=3, n_cell_clusters=6, n_init=1, max_iter=15,
                                random_state=0, n_threads=t).fit(sim.Y, sim.groups, sim.X)
            for t in (1, 2, -1)]
    for other in fits[1:]:
        assert other.elbo_ == fits[0].elbo_
        np.testing.assert_array_equal(other.cell_probs_, fits[0].cell_probs_)
        np.testing.assert_array_equal(other.elbo_trace_, fits[0].elbo_trace_)


def test_cell_probs_are_derived_lazily_from_the_state():
    sim = na.simulate(n_groups=4, cells_per_group=50, random_state=1)
    perm = np.random.default_rng(0).permutation(sim.Y.shape[0])
    model = na.NestedAtomsModel(n_group_clusters=3, n_cell_clusters=4, n_init=1, max_iter=10,
                                random_state=0).fit(sim.Y[perm], sim.groups[perm], sim.X)
    assert "_cell_probs" not in vars(model)  # the fit holds no second N x L array
    probs = model.cell_probs_
    assert probs is model.cell_probs_  # cached after the first access
    np.testing.assert_array_equal(probs, model.problem_.data.to_caller_order(model.state_.xi))
    np.testing.assert_array_equal(model.cell_labels_, np.argmax(probs, axis=1))
    with pytest.raises(AttributeError, match="not fitted"):
        na.NestedAtomsModel().cell_probs_
