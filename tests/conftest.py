"""Shared fixtures: both backends, and small random problems of every flavour."""

import numpy as np
import pytest

import nestedatoms as na
from nestedatoms._backend import get_backend
from nestedatoms._data import prepare_data
from nestedatoms._init import state_from_labels

BACKEND_NAMES = ("numpy", "cpp")


@pytest.fixture(params=BACKEND_NAMES)
def backend(request):
    """Each backend module in turn (the C++ core must be built: a missing build fails)."""
    return get_backend(request.param)


def make_problem(kind="nam", seed=0, K=4, L=5, n_groups=6, fixed=False, **model_kwargs):
    """A small simulated problem: 'nam' (x given), 'cam' (no x) or 'flat' (K = 1, one group)."""
    sim = na.simulate(n_groups=n_groups, cells_per_group=np.arange(n_groups) * 7 + 3,
                      n_group_clusters=2, n_cell_clusters=3, n_group_features=3,
                      n_cell_features=2, random_state=seed)
    if kind == "flat":
        K, groups, X = 1, None, None
    else:
        groups, X = sim.groups, (sim.X if kind == "nam" else None)
    kwargs = dict(n_group_clusters=K, n_cell_clusters=L, **model_kwargs)
    if fixed:
        kwargs.update(group_concentration=0.7, cell_concentration=1.3)
    model = na.NestedAtomsModel(**kwargs)
    return model._problem(prepare_data(sim.Y, groups, X))


def split_on_three_batches(be, prob, st, n_threads=1):
    """The batched split move (``moves.split_atoms_batched``) on the problem's cells cut into
    three batches (fewer if there are fewer individuals): the move a fit with several batches
    runs, for the tests of every move."""
    import copy

    from nestedatoms._batches import plan_batches
    from nestedatoms.moves import split_cell_atoms_batched

    prob = copy.copy(prob)
    prob.batches = plan_batches(prob.offsets, -(-int(prob.offsets[-1]) // 3))
    assert prob.batches.n_batches == min(3, prob.offsets.shape[0] - 1)
    return split_cell_atoms_batched(be, prob, st, n_threads)


def random_state_for(be, prob, seed=0):
    """A state from a random hard partition (every factor then at its block optimum)."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(prob.L, size=prob.data.n_cells)
    groups = rng.integers(prob.K, size=prob.data.n_groups)
    return state_from_labels(be, prob, cells, groups)



def trace_steps_under_one_objective(model):
    """The steps of a fit's ELBO trace, and a mask of those that compare two sweeps under the
    same objective.  The learned donor concentration changes the objective itself: the step
    into the sweep where it moved compares two objectives (trace[s - 1] is the first under the
    new c), so monotonicity is asserted on the other steps only."""
    steps = np.diff(np.asarray(model.elbo_trace_))
    changed = [m["sweep"] for m in model.moves_
               if m["move"] == "learn_donor_variation" and m["restart"] == model.best_restart_]
    keep = np.ones(steps.size, bool)
    keep[[s - 2 for s in changed if 0 <= s - 2 < steps.size]] = False
    return steps, keep
