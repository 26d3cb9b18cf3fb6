"""The fit reports where its time went (timings_) and which moves changed it (moves_)."""

import time

import numpy as np

import nestedatoms as na
from nestedatoms._steps import BLOCKS


def test_timings_and_moves_describe_the_fit(capsys):
    sim = na.simulate(random_state=1)
    start = time.perf_counter()
    m = na.NestedAtomsModel(random_state=0, n_init=2, verbose=2).fit(sim.Y, sim.groups, sim.X)
    wall = time.perf_counter() - start
    names = {name for name, _ in BLOCKS}
    assert names | {"init", "elbo"} <= set(m.timings_)
    assert all(v >= 0 for v in m.timings_.values())
    assert sum(m.timings_.values()) <= wall        # phases are parts of the fit, not more
    assert any(k.startswith("move:") for k in m.timings_)
    assert "time per phase" in capsys.readouterr().out
    # every logged move raised the ELBO (the donor concentration may change the objective)
    assert m.moves_ and {"restart", "sweep", "move", "gain"} <= set(m.moves_[0])
    for rec in m.moves_:
        if rec["move"] != "learn_donor_variation":
            assert rec["gain"] > 0, rec
    assert {r["restart"] for r in m.moves_} <= {0, 1}
    # the best restart's gains are steps of its trace: each one lands inside a sweep's change
    best = [r for r in m.moves_ if r["restart"] == m.best_restart_]
    trace = np.concatenate([[-np.inf], m.elbo_trace_])
    for rec in best:
        assert trace[rec["sweep"]] - trace[rec["sweep"] - 1] >= rec["gain"] - 1e-9 * abs(
            trace[rec["sweep"]])
