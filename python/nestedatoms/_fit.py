"""The fitting loop: restarts, CAVI sweeps, moves between sweeps, convergence.

Backend-agnostic (in the spirit of scikit-learn's ``mixture/_base.py``): it only calls the
blocks of ``_steps.py``, which call the backend.  Moves are :class:`nestedatoms.moves.Move`
objects run between sweeps (``Move.when`` says when); each must keep the ELBO from falling and
return whether it changed the state.

Interrupts: Ctrl-C (KeyboardInterrupt) may arrive anywhere, e.g. after the cell step has
rewritten xi but before the statistics derived from it are stored, which would leave the live
state inconsistent.  So each run keeps a checkpoint of its last complete sweep and, when
interrupted, returns a state built from it instead, marked ``interrupted`` and not converged,
after a warning.  The checkpoint copies every factor but xi (all of them J-, K- or L-sized,
copied into preallocated buffers with SIGINT deferred during the copy); xi (N x L, as large as
Y) is not kept: on an interrupt it is recomputed from the checkpoint's factors by one cell step,
which also recomputes the statistics derived from it.  The cell step is the exact optimum of
q(M) given the other factors, so that state's ELBO is at least the checkpoint's.  This lets the
fit stop at once however long a sweep takes, without a second N x L array (issue 21).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import signal
import threading
import time
import warnings
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ._init import initial_state, relabel_by_size, state_from_labels
from .moves import AT_CONVERGENCE, move_named
from ._state import Problem, State
from ._steps import BLOCKS, elbo, sweep, update_cells
# public home: nestedatoms.exceptions; these names are kept for old imports
from .exceptions import FitInterruptedWarning, NumericalError

__all__ = ["RunResult", "run_cavi", "fit_restarts", "restart_rngs", "FitInterruptedWarning",
           "NumericalError"]


def _is_singular_posterior(exc: Exception) -> bool:
    return isinstance(exc, np.linalg.LinAlgError) or "positive definite" in str(exc)


def _explain_singular(exc: Exception) -> NumericalError:
    # W^-1 = W0^-1 + C + c (xbar - m0)(xbar - m0)' is positive definite in exact arithmetic;
    # in float64 it stops being so when the data's spread or offset dwarfs the prior's scale
    # by ~1e16 in some direction, e.g. prior='reference' (made for standardised data) on raw
    # values, or a covariance_prior far smaller than the data's spread.
    return NumericalError(
        f"a cluster's posterior scale matrix became numerically singular ({exc}): the data are "
        f"too large or too far from the prior mean for the prior's scale. Standardise Y (and "
        f"X), use prior='empirical' (scaled to the data), or widen covariance_prior / move "
        f"mean_prior in cell_prior or group_prior.")


@dataclass
class RunResult:
    """One CAVI run from one start.

    ``state`` is None for a restart that lost to a better one (each state holds an N x L
    array; only the best is kept).  ``interrupted``: stopped by KeyboardInterrupt, in which
    case ``state`` holds the last complete sweep's factors with q(M) recomputed from them by one
    cell step (an ELBO no lower) and ``converged`` is False.
    """

    state: State | None
    elbo: float
    trace: list = field(default_factory=list)   # ELBO after each sweep
    n_iter: int = 0
    converged: bool = False
    seed: int | None = None
    interrupted: bool = False
    # seconds per phase ("init", "cells", "groups", ..., "elbo", "move:<name>") and one
    # record per move that changed the state: {"sweep", "move", "gain"} (gain: ELBO change)
    timings: dict = field(default_factory=lambda: defaultdict(float))
    moves: list = field(default_factory=list)
    # ended when its sweeps settled on what an earlier restart found (fit_restarts)
    stopped_as_duplicate: bool = False


@contextmanager
def _sigint_deferred():
    """Hold back SIGINT for the duration of the block, then deliver it.

    Only the main thread receives signals and may set handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    received = []
    try:
        signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    except (ValueError, TypeError):  # e.g. an embedded interpreter without signal support
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if previous is signal.default_int_handler or previous is None:
                raise KeyboardInterrupt
            if previous == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)     # the default action, now it may run
            elif callable(previous):
                previous(signal.SIGINT, None)
            # SIG_IGN: the signal was to be ignored anyway


class _Checkpoint:
    """The factors of the last complete state of a run but xi, refreshed in place after every
    sweep; ``restored`` rebuilds a complete state from them (see the module docstring).

    An xi that is not an array (kept on dask workers, ``_dask.WorkerXi``) is immutable and
    small, and is kept by reference: it restores exactly.
    """

    def __init__(self, st: State, value: float):
        self.state = copy.deepcopy(_without_xi(st))
        self.xi_kept = not isinstance(st.xi, np.ndarray)
        self.elbo = value
        self.n_iter = 0

    def save(self, st: State, value: float, n_iter: int) -> None:
        with _sigint_deferred():
            for name, cur in vars(st).items():
                old = getattr(self.state, name)
                if name == "xi" and isinstance(cur, np.ndarray):
                    self.xi_kept = False
                    self.state.xi = None
                elif (isinstance(cur, np.ndarray) and isinstance(old, np.ndarray)
                        and old.shape == cur.shape and old.dtype == cur.dtype):
                    np.copyto(old, cur)          # no new allocation in the steady state
                elif isinstance(cur, np.ndarray):
                    setattr(self.state, name, cur.copy())
                else:
                    setattr(self.state, name, cur)
                    if name == "xi":
                        self.xi_kept = True
            self.elbo, self.n_iter = value, n_iter

    def restored(self, be, prob: Problem, live: State, n_threads: int) -> tuple[State, float]:
        """(state, ELBO): the checkpoint, with xi recomputed by a cell step unless kept.

        ``live``'s xi (the interrupted run's, in whatever partial state) is reused as the
        buffer when it is an array of the right shape, so no N x L array is allocated here.
        SIGINT is deferred meanwhile: a second Ctrl-C cannot leave this half done.
        """
        st = self.state
        if self.xi_kept:
            return st, self.elbo
        shape = (prob.Y.shape[0], st.N_jl.shape[1])
        xi = live.xi
        if not (isinstance(xi, np.ndarray) and xi.shape == shape and xi.dtype == np.float64
                and xi.flags.c_contiguous and xi.flags.writeable):
            xi = np.empty(shape)
        st.xi = xi
        with _sigint_deferred():
            update_cells(be, prob, st, n_threads)
            value = elbo(be, prob, st)
        return st, float(value)


def _without_xi(st: State) -> State:
    """A shallow copy of the state with xi left out (None), for copying the rest."""
    light = copy.copy(st)
    if isinstance(st.xi, np.ndarray):
        light.xi = None
    return light


class _Phases:
    """Times every block and move of a run into ``result.timings`` and logs the moves that
    fired with their ELBO gain into ``result.moves`` (one perf_counter pair per call)."""

    def __init__(self, result: RunResult, on_phase=None):
        self.timings, self.moves = result.timings, result.moves
        self.on_phase = on_phase
        self.blocks = tuple((name, self._timed(name, update)) for name, update in BLOCKS)

    def _timed(self, name, update):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return update(*args, **kwargs)
            finally:
                self.timings[name] += time.perf_counter() - start
        return timed

    def sweep(self, be, prob, st, n_threads):
        # through the module's ``sweep`` (one place to hook a sweep, as the tests do)
        sweep(be, prob, st, n_threads, self.blocks)

    def elbo(self, be, prob, st):
        start = time.perf_counter()
        value = elbo(be, prob, st)
        self.timings["elbo"] += time.perf_counter() - start
        return value

    def move(self, move, be, prob, st, n_threads, it, before):
        """Run one move; returns (fired, ELBO after: ``before`` when it did not fire)."""
        name = move.name
        if self.on_phase is not None and move.when == AT_CONVERGENCE:
            self.on_phase(name)     # the costly moves can take a while: say which one runs
        start = time.perf_counter()
        fired = bool(move(be, prob, st, n_threads, elbo_now=before))
        self.timings[f"move:{name}"] += time.perf_counter() - start
        if not fired:
            return False, before
        after = self.elbo(be, prob, st)
        self.moves.append({"sweep": it, "move": name, "gain": after - before})
        return True, after


def _finite_elbo(value: float, it: int) -> float:
    """The ELBO, or a NumericalError: a NaN or infinite ELBO is never passed off as a result
    (both backends; NumPy would otherwise only warn and carry NaN through every sweep)."""
    if not np.isfinite(value):
        raise NumericalError(
            f"the ELBO became {value} after {it} sweep(s): float64 cannot carry this fit. "
            f"Standardise Y (and X) (each column to mean 0, variance 1), use prior='empirical' "
            f"(scaled to the data), or widen covariance_prior in cell_prior / group_prior.")
    return float(value)


def _settled(cur: float, prev: float, tol: float, moved: bool) -> bool:
    """The convergence test: no move fired and |Delta ELBO| <= tol |ELBO| (a *relative* test,
    unlike scikit-learn's mixtures, whose ``tol`` bounds the absolute change per sample)."""
    return not moved and abs(cur - prev) <= tol * abs(cur)


# Sweeps between tries of the costly moves in a run that has not converged yet.
# A move that reads the settled partition to set the objective (the donor concentration) may
# change it this many times in a run, then the objective is held: with a few donors, a
# partition too fine to show variation and the coarser one its estimate leads to can send c
# back and forth (finite, infinite, finite, ...) and the run would never converge.
MAX_SETTLED_READINGS = 4
_STALL_PERIOD = 50


def run_cavi(be, prob: Problem, st: State, max_iter: int, tol: float, n_threads: int = 1,
             moves=(), callback=None, on_phase=None, duplicate=None) -> RunResult:
    """Sweep until the relative ELBO change falls below ``tol`` (tol = 0: exactly max_iter).

    ``callback(iteration, elbo)`` is called after every sweep; ``on_phase(name)`` before each
    costly (at-convergence) move, so a progress display can say which one runs.
    ``duplicate(state, elbo) -> bool``: asked when the sweeps settle, before the costly moves;
    True ends the run there (``stopped_as_duplicate``), as a restart that has reached what an
    earlier one found (see ``fit_restarts``).  On
    KeyboardInterrupt the run ends with the state of its last complete sweep (see the module
    docstring) and a :class:`FitInterruptedWarning`; an interrupt before the first ELBO is
    evaluated propagates.
    """
    prev = _finite_elbo(elbo(be, prob, st), 0)
    result = RunResult(state=st, elbo=prev)
    checkpoint = _Checkpoint(st, prev)
    # Moves marked ``at_convergence`` are costly (a search or a split): they run only once the
    # sweeps have converged, and the sweeps resume if one of them raised the ELBO.
    final_moves = [m for m in moves if m.when == AT_CONVERGENCE]
    moves = [m for m in moves if m.when != AT_CONVERGENCE]
    phases = _Phases(result, on_phase)
    readings = defaultdict(int)     # changes made by each move that reads the partition
    try:
        for it in range(1, max_iter + 1):
            phases.sweep(be, prob, st, n_threads)
            moved = False
            cur = _finite_elbo(phases.elbo(be, prob, st), it)
            for move in moves:
                fired, cur = phases.move(move, be, prob, st, n_threads, it, cur)
                moved |= fired
            cur = _finite_elbo(cur, it)
            settled = _settled(cur, prev, tol, moved)
            stop = settled and duplicate is not None and duplicate(st, cur)
            # A run that creeps (heavily overlapping clusters can gain a few nats a sweep for
            # hundreds of sweeps) would never reach the costly moves: try them every
            # _STALL_PERIOD sweeps as well.  They only ever raise the ELBO.
            if final_moves and tol > 0 and not stop and (settled or it % _STALL_PERIOD == 0):
                if settled and duplicate is not None and hasattr(duplicate, "passing"):
                    duplicate.passing(st, cur)   # where this run tries the costly moves
                changed = False             # by a costly move of this round
                for move in final_moves:
                    if move.reads_settled_partition and (
                            changed or readings[move.name] >= MAX_SETTLED_READINGS):
                        continue
                    fired, cur = phases.move(move, be, prob, st, n_threads, it, cur)
                    changed |= fired
                    moved |= fired
                    if fired and move.reads_settled_partition:
                        readings[move.name] += 1
                cur = _finite_elbo(cur, it)
            # The trace grows before the checkpoint moves on, so an interrupt between the two
            # only trims the trace back to the checkpoint (trace and n_iter always agree).
            result.trace.append(cur)
            checkpoint.save(st, cur, it)
            result.n_iter = it
            result.elbo = cur
            if callback is not None:
                callback(it, cur)
            if stop:
                result.converged = result.stopped_as_duplicate = True
                break
            if tol > 0 and _settled(cur, prev, tol, moved):
                result.converged = True
                break
            prev = cur
    except KeyboardInterrupt:
        result.state, result.elbo = checkpoint.restored(be, prob, st, n_threads)
        result.n_iter = checkpoint.n_iter
        del result.trace[checkpoint.n_iter:]
        result.converged, result.interrupted = False, True
        warnings.warn(
            f"fit interrupted (KeyboardInterrupt) after {checkpoint.n_iter} complete sweep(s); "
            f"keeping the state of the last complete one (ELBO {result.elbo:.6g}, its cells "
            f"updated once more). The model is consistent but not converged "
            f"(converged_ = False).",
            FitInterruptedWarning, stacklevel=2)
    return result


def elbo_from_labels(be, prob: Problem, cell_labels: np.ndarray, group_labels: np.ndarray,
                     max_iter: int = 1000, tol: float = 1e-9) -> float:
    """NAM's ELBO at the CAVI optimum reached from a hard partition, labels in the caller's
    order: plain sweeps, and no move but the width's when the problem learns it, so it scores
    the basin of that start.

    Meant for comparing partitions, with every side of a comparison computed here: a fit
    stops at its own ``tol`` (1e-6 by default, some 0.2 nats short of this on the published
    toy design), so its ``elbo_`` against a tighter run would be a margin of stopping rules.

    Where the problem learns the x prior's width, each partition is scored at its own width
    (the width move runs at convergence, as in a fit): the objective the fit maximises is the
    ELBO at the best width, so scoring two partitions at one width would compare them under
    a prior neither fit uses.
    """
    return run_from_labels(be, prob, cell_labels, group_labels, max_iter, tol).elbo


def run_from_labels(be, prob: Problem, cell_labels: np.ndarray, group_labels: np.ndarray,
                    max_iter: int = 1000, tol: float = 1e-9) -> RunResult:
    """The run behind ``elbo_from_labels``, its state kept (for the labelling bound of the
    partition it reaches, or the partition itself)."""
    # numbered by size, as the fit numbers them: the stick-breaking prior depends on the
    # order, so equal partitions must also be equally numbered
    st = state_from_labels(be, prob, relabel_by_size(np.asarray(cell_labels))[prob.data.order],
                           relabel_by_size(np.asarray(group_labels)))
    moves = (move_named("learn_group_prior_scale"),) if prob.learn_group_prior_scale else ()
    return run_cavi(be, prob, st, max_iter=max_iter, tol=tol, moves=moves)


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


def _with_fixed_concentration(prob: Problem, concentration: float) -> Problem:
    """A shallow copy of the problem that holds the donor concentration at ``concentration``
    (the data and priors are shared, not copied)."""
    fixed = copy.copy(prob)
    fixed.learn_donor_concentration = False
    fixed.donor_concentration = float(concentration)
    return fixed


# A restart whose sweeps settle on the partition (both levels) an earlier restart ended with,
# at an ELBO no higher, stops there: from the same partition the costly moves would retrace
# the earlier restart's path (on a OneK1K-shaped cohort the two extra restarts cost 68% of
# the fit for the same partition).  It can never be the kept run (its ELBO is not higher), so
# the result changes only where continuing would have found something better.  The same holds
# for a partition where an earlier restart's sweeps settled on the way (and tried the costly
# moves, which took it on to its end): on the published toy design restarts settle first on
# the same partition before the group search moves them, and each ran the search again from
# there (a third of a fit's time once the sweeps were fast).  Off here to measure that (the
# benchmark of restarts in the source repository).
STOP_DUPLICATE_RESTARTS = True


def _digest_by_first_appearance(digest, labels: np.ndarray, width: int,
                                rows: int = 1 << 16) -> None:
    """Feed ``labels`` (integers in [0, width)) renumbered by first appearance into
    ``digest``, a slab at a time (no N-sized temporaries besides the labels: this runs while
    two restarts' xi are held, at the fit's memory peak)."""
    first = np.full(width, labels.shape[0], dtype=np.int64)
    for l in np.flatnonzero(np.bincount(labels, minlength=width)):
        first[l] = int(np.argmax(labels == l))
    rank = np.argsort(np.argsort(first, kind="stable"), kind="stable").astype(np.int64)
    for start in range(0, labels.shape[0], rows):
        digest.update(rank[labels[start:start + rows]].tobytes())


class _FinishedPartitions:
    """The partitions finished restarts ended with or settled on along the way (where they
    tried the costly moves), and the best ELBO reached at each."""

    def __init__(self, prob: Problem | None = None):
        self.best: dict = {}
        self.prob = prob
        self.passed: list = []      # (key, ELBO) of the running restart's settled points

    def passing(self, st: State, value: float) -> None:
        """The running restart settled here and tries the costly moves; later restarts (not
        this one: a move that fired may bring it back here) count it once it completes."""
        key = self.key(st)
        if key is not None:
            self.passed.append((key, value))

    def run_done(self, completed: bool) -> None:
        """The running restart ended; its settled points count if it ran to its end."""
        if completed:
            for key, value in self.passed:
                self.best[key] = max(value, self.best.get(key, -np.inf))
        self.passed = []

    def key(self, st: State):
        """A digest of both partitions, each labelled by first appearance (one key per
        partition, whatever the atoms' numbering)."""
        if st.xi is None:
            return None
        # xi kept on dask workers (``_dask.WorkerXi``): its labels by one map over the batches
        labels = (st.xi.argmax(axis=1) if isinstance(st.xi, np.ndarray)
                  else st.xi.labels(self.prob))
        digest = hashlib.sha256()
        _digest_by_first_appearance(digest, st.rho.argmax(axis=1), st.rho.shape[1])
        digest.update(b"|")
        _digest_by_first_appearance(digest, labels, st.xi.shape[1])
        return digest.digest()

    def add(self, st: State, value: float) -> None:
        key = self.key(st)
        if key is not None:
            self.best[key] = max(value, self.best.get(key, -np.inf))

    def __call__(self, st: State, value: float) -> bool:
        if not self.best:
            return False
        key = self.key(st)
        return key in self.best and value <= self.best[key]


class _PackedXi:
    """The xi of the best finished restart while later restarts run: its nonzero entries and
    a bit mask of where they are, restored exactly by ``unpacked``.

    A converged xi is sparse (the cell step stores responsibilities below e^-600 of a cell's
    largest as 0; most cells have one or two nonzero entries), so this holds a few percent of
    its 8 N L bytes: the later restarts' xi does not come on top of a second N x L array (the
    fit's memory peak, and on virtual machines that back memory on first touch, seconds).
    """

    def __init__(self, xi: np.ndarray, mask: np.ndarray | None = None):
        """``mask``: ``xi != 0`` when the caller has it."""
        self.shape = xi.shape
        mask = xi != 0.0 if mask is None else mask
        self.values = xi[mask]
        self.bits = np.packbits(mask, axis=None)

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.bits.nbytes

    def unpacked(self) -> np.ndarray:
        mask = np.unpackbits(self.bits, count=int(np.prod(self.shape))).view(bool)
        xi = np.zeros(self.shape)
        xi[mask.reshape(self.shape)] = self.values
        return xi


# pack only where it saves most of the array (a dense xi early in a fit would not)
_PACK_IF_NONZERO_BELOW = 0.5


def _pack_xi(st: State | None) -> np.ndarray | None:
    """Keep the state's xi packed (``_PackedXi``) when it is a sparse enough array; returns
    the array it replaced (for ``_reusable_xi``), else None."""
    if st is None or not isinstance(st.xi, np.ndarray) or st.xi.size == 0:
        return None
    mask = st.xi != 0.0
    if np.count_nonzero(mask) < _PACK_IF_NONZERO_BELOW * st.xi.size:
        replaced = st.xi
        st.xi = _PackedXi(replaced, mask)
        return replaced
    return None


def _reusable_xi(xi, prob: Problem) -> np.ndarray | None:
    """``xi`` (of a state about to be dropped) if a default start can write its own xi into
    it (``initial_state``'s ``xi_buffer``): an (N, L) float64 array that owns its memory."""
    if (isinstance(xi, np.ndarray) and xi.base is None and xi.dtype == np.float64
            and xi.flags.c_contiguous and xi.flags.writeable
            and xi.shape == (prob.data.n_cells, prob.L)):
        return xi
    return None


def _unpack_xi(st: State | None) -> None:
    if st is not None and isinstance(st.xi, _PackedXi):
        st.xi = st.xi.unpacked()


def _return_freed_memory(prob: Problem) -> None:
    """Give the C heap's free memory back to the OS (glibc's ``malloc_trim``; elsewhere
    nothing).  A run's temporaries of up to tens of MB (slabs, the split move's rows) come
    from the heap once glibc raises its mmap threshold, and stay resident after they are
    freed; the next restart's arrays then add to them at the fit's memory peak (issue 21).
    A fit whose xi is below ``_TRIM_FROM_BYTES`` has no such temporaries, and the trim's walk
    of the heap (~0.3 ms) would be a percent of its time."""
    if 8 * prob.data.n_cells * prob.L < _TRIM_FROM_BYTES:
        return
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


_TRIM_FROM_BYTES = 32 << 20


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim     # libc is loaded already: no library search
    except (OSError, AttributeError):            # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def fit_restarts(be, prob: Problem, n_init: int, max_iter: int, tol: float, random_state,
                 n_threads: int = 1, moves=(), init_state=None, callback=None,
                 on_phase=None):
    """Run ``n_init`` starts; return the run with the highest final ELBO, and all runs.

    ``init_state(be, prob, rng) -> State`` overrides the default initialisation.
    ``callback(restart, iteration, elbo)`` after every sweep and ``on_phase(restart, name)``
    before each costly move (see ``run_cavi``).

    Only the best run keeps its state (the others' ``state`` is set to None as soon as they
    are beaten), and while later restarts run it keeps its xi packed (``_PackedXi``: the
    nonzero entries of a sparse xi), so memory holds one N x L array, the running restart's
    (the checkpoint keeps no xi).  On
    KeyboardInterrupt no further restart starts; the best complete run so far is returned
    with ``converged = False`` and ``interrupted = True`` (an interrupt before any run has a
    complete state propagates).

    Where the donor concentration c is learned (``prob.learn_donor_concentration``), the
    first restart learns it and the others run with c fixed at its value: the objective
    depends on c (each donor's terms are weighted by zeta_j(c)), so only runs under one c
    can be compared by their ELBO.

    A restart whose sweeps settle on a partition an earlier restart ended with, at an ELBO
    no higher, stops there (``STOP_DUPLICATE_RESTARTS``; ``stopped_as_duplicate``).
    """
    rngs, seeds = restart_rngs(random_state, n_init)
    runs = []
    best = None
    interrupted = False
    finished = _FinishedPartitions(prob) if STOP_DUPLICATE_RESTARTS else None
    spare = None     # an N x L array no state holds any more: the next default start's xi
    try:
        for r, (rng, seed) in enumerate(zip(rngs, seeds)):
            start = time.perf_counter()
            if init_state is None:
                st = initial_state(be, prob, rng, xi_buffer=spare)
            else:
                st = init_state(be, prob, rng)
            spare = None
            init_seconds = time.perf_counter() - start
            cb = None if callback is None else (lambda it, value, r=r: callback(r, it, value))
            phase = None if on_phase is None else (lambda name, r=r: on_phase(r, name))
            run = run_cavi(be, prob, st, max_iter, tol, n_threads, moves=moves, callback=cb,
                           on_phase=phase, duplicate=finished)
            # only ``run`` may hold the state now: a run that loses frees its xi before the
            # next start allocates one (else three N x L arrays at once)
            del st
            _return_freed_memory(prob)
            if finished is not None and run.converged and not run.stopped_as_duplicate:
                finished.add(run.state, run.elbo)
            if finished is not None:
                finished.run_done(run.converged and not run.interrupted)
            if r == 0 and prob.learn_donor_concentration:
                prob = _with_fixed_concentration(prob, run.state.donor_concentration)
            run.timings["init"] += init_seconds
            run.seed = seed
            runs.append(run)
            if best is None or run.elbo > best.elbo:
                beaten, best = best, run     # best first: an interrupt here keeps a state
                if beaten is not None:
                    spare = _reusable_xi(beaten.state.xi, prob)
                    beaten.state = None
            else:
                spare = _reusable_xi(run.state.xi, prob)
                run.state = None
            if run.interrupted:
                interrupted = True
                break
            if r + 1 < n_init:
                packed_away = _pack_xi(best.state)
                spare = _reusable_xi(packed_away, prob) if spare is None else spare
            else:
                spare = None
            _return_freed_memory(prob)
    except (ValueError, np.linalg.LinAlgError) as exc:
        if _is_singular_posterior(exc):
            raise _explain_singular(exc) from exc
        raise
    except KeyboardInterrupt:
        if best is None:
            raise
        interrupted = True
        warnings.warn(
            f"fit interrupted (KeyboardInterrupt) while starting restart {len(runs) + 1} of "
            f"{n_init}; keeping the best complete run (ELBO {best.elbo:.6g}). The model is "
            f"consistent but not converged (converged_ = False).",
            FitInterruptedWarning, stacklevel=2)
    if best is not None:
        with _sigint_deferred():
            _unpack_xi(best.state)
    if interrupted:
        # The search over restarts was cut short, so the fit as a whole has not converged.
        best.converged, best.interrupted = False, True
    return best, runs
