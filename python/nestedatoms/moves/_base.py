"""What every move shares: the Move object, snapshots of the state, the cheap refresh and the
acceptance rule."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .._state import Problem, State
from .._steps import GLOBAL_BLOCKS, update_groups

# When a move runs (see ``Move.when``).
EVERY_SWEEP = "every_sweep"
AT_CONVERGENCE = "at_convergence"
_WHEN = (EVERY_SWEEP, AT_CONVERGENCE)

# A proposal must beat the current ELBO by this relative margin, so rounding noise never
# flips a decision back and forth.
MIN_RELATIVE_GAIN = 1e-10


@dataclass(frozen=True)
class Move:
    """A move between sweeps.

    Parameters
    ----------
    name : str
        How the fit's ``moves_`` log and ``timings_`` name it.
    attempt : callable
        ``attempt(be, prob, state, n_threads) -> bool``: proposes a change of ``state`` (in
        place), keeps it only if the ELBO rises (or, for a move that changes a setting of the
        objective, as its docstring says) and returns whether the state changed.
    when : {"every_sweep", "at_convergence"}
        ``"every_sweep"``: cheap, tried after every sweep.  ``"at_convergence"``: costly (a
        search, a split), tried when the sweeps have converged (or every ``_STALL_PERIOD``
        sweeps of a run that creeps); the sweeps resume if it fired.
    reads_settled_partition : bool, default False
        With ``"at_convergence"``: skipped in a round where a costly move before it changed
        the state, because it estimates something from the partition itself (the donor
        concentration), which must be the one the sweeps settle on, not a search's proposal
        before the sweeps have refined it; it is tried again when they settle.  Such a
        move changes the state at most ``_fit.MAX_SETTLED_READINGS`` times in a run, so a
        cycle between two partitions and two objectives cannot keep the run from converging.
    knows_elbo : bool, default False
        ``attempt`` also takes ``elbo_now=``, the ELBO of the state it is given, which the
        fit has at hand after every sweep and move; it then does not evaluate it again (on
        small data one ELBO costs about as much as a cheap move's proposal).  Called
        without it, the attempt evaluates the ELBO itself.
    """

    name: str
    attempt: Callable[..., bool]
    when: str = EVERY_SWEEP
    reads_settled_partition: bool = False
    knows_elbo: bool = False

    def __post_init__(self):
        if self.when not in _WHEN:
            raise ValueError(f"Move.when must be one of {_WHEN}, got {self.when!r}.")

    def __call__(self, be, prob: Problem, st: State, n_threads: int = 1,
                 elbo_now: float | None = None) -> bool:
        """Try the move; ``elbo_now``: the ELBO of ``st`` when the caller has it."""
        if self.knows_elbo and elbo_now is not None:
            return bool(self.attempt(be, prob, st, n_threads, elbo_now=elbo_now))
        return bool(self.attempt(be, prob, st, n_threads))


def snapshot(st: State) -> State:
    """A copy of the state sharing ``xi`` (the one large array, which moves restore by hand)."""
    new = copy.copy(st)
    for name, value in vars(st).items():
        if isinstance(value, np.ndarray) and name != "xi":
            setattr(new, name, value.copy())
    return new


def restore(st: State, saved: State) -> None:
    """Put a ``snapshot`` back (all but ``xi``)."""
    for name, value in vars(saved).items():
        if name != "xi":
            setattr(st, name, value)


def refresh_without_cells(be, prob: Problem, st: State, n_threads: int = 1) -> None:
    """Re-optimise every factor but q(M): global blocks, q(S), global blocks again.  The second
    pass leaves out q(theta^y): it reads only the y statistics, which q(S) does not change, so
    it would recompute the same bits (a 30-atom posterior, after every proposed split and
    accepted merge)."""
    for _, update in GLOBAL_BLOCKS:
        update(be, prob, st, n_threads)
    update_groups(be, prob, st, n_threads)
    for name, update in GLOBAL_BLOCKS:
        if name != "y_atoms":
            update(be, prob, st, n_threads)


def gain_ok(new: float, old: float) -> bool:
    """Whether ``new`` beats ``old`` by more than rounding (``MIN_RELATIVE_GAIN``)."""
    return new > old + MIN_RELATIVE_GAIN * abs(old)
