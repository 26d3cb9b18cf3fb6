"""The fitting loop: restarts, CAVI sweeps, moves between sweeps, convergence.

Backend-agnostic (in the spirit of scikit-learn's ``mixture/_base.py``): it only calls the
blocks of ``_steps.py``, which call the backend.  Moves are callables
``move(be, prob, state, n_threads) -> bool`` run after each sweep; each must keep the ELBO from
falling and return whether it changed the state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._init import initial_state
from ._state import Problem, State
from ._steps import elbo, sweep

__all__ = ["RunResult", "run_cavi", "fit_restarts", "restart_rngs"]


@dataclass
class RunResult:
    """One CAVI run from one start."""

    state: State
    elbo: float
    trace: list = field(default_factory=list)   # ELBO after each sweep
    n_iter: int = 0
    converged: bool = False
    seed: int | None = None


def run_cavi(be, prob: Problem, st: State, max_iter: int, tol: float, n_threads: int = 1,
             moves=(), callback=None) -> RunResult:
    """Sweep until the relative ELBO change falls below ``tol`` (tol = 0: exactly max_iter).

    ``callback(iteration, elbo)`` is called after every sweep.
    """
    prev = elbo(be, prob, st)
    result = RunResult(state=st, elbo=prev)
    for it in range(1, max_iter + 1):
        sweep(be, prob, st, n_threads)
        moved = False
        for move in moves:
            moved |= bool(move(be, prob, st, n_threads))
        cur = elbo(be, prob, st)
        result.trace.append(cur)
        result.n_iter = it
        result.elbo = cur
        if callback is not None:
            callback(it, cur)
        if tol > 0 and not moved and abs(cur - prev) <= tol * abs(cur):
            result.converged = True
            break
        prev = cur
    return result


def restart_rngs(random_state, n_init: int):
    """Independent, reproducible generators for the restarts, and the seed of each."""
    if isinstance(random_state, np.random.Generator):
        random_state = int(random_state.integers(2**63))
    elif isinstance(random_state, np.random.RandomState):
        random_state = int(random_state.randint(2**31))
    root = np.random.SeedSequence(random_state)
    children = root.spawn(n_init)
    return [np.random.default_rng(c) for c in children], [
        int(c.generate_state(1)[0]) for c in children]


def fit_restarts(be, prob: Problem, n_init: int, max_iter: int, tol: float, random_state,
                 n_threads: int = 1, moves=(), init_state=None, callback=None):
    """Run ``n_init`` starts; return the run with the highest final ELBO, and all runs.

    ``init_state(be, prob, rng) -> State`` overrides the default initialisation.
    """
    make_state = init_state or initial_state
    rngs, seeds = restart_rngs(random_state, n_init)
    runs = []
    for r, (rng, seed) in enumerate(zip(rngs, seeds)):
        st = make_state(be, prob, rng)
        cb = None if callback is None else (lambda it, value, r=r: callback(r, it, value))
        run = run_cavi(be, prob, st, max_iter, tol, n_threads, moves=moves, callback=cb)
        run.seed = seed
        runs.append(run)
    best = max(runs, key=lambda run: run.elbo)
    return best, runs
