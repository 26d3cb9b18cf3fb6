"""Choosing a backend and a thread count.

A backend is a module exposing the step functions of ``reference.py``: the pure-NumPy
reference itself (``"numpy"``) or the compiled core (``"cpp"``).
"""

from __future__ import annotations

import os

__all__ = ["get_backend", "resolve_n_threads", "BACKENDS"]

BACKENDS = ("cpp", "numpy")


def get_backend(name: str):
    """The backend module called ``name``."""
    if name == "numpy":
        from . import reference

        return reference
    if name == "cpp":
        try:
            from . import _core
        except ImportError as exc:  # pragma: no cover - only without a compiled build
            raise ImportError(
                "the C++ core nestedatoms._core is not built; reinstall with "
                "`pip install .` (a C++17 compiler is needed) or pass backend='numpy'."
            ) from exc
        return _core
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}.")


def resolve_n_threads(n_threads) -> int:
    """scikit-learn's rule: None -> OMP_NUM_THREADS or all CPUs; -1 all; -2 all but one; ...

    A count above the number of CPUs is capped at it: the work is CPU-bound, so more threads
    only oversubscribe, and an absurd count would make OpenMP fail to create its threads.
    """
    from ._validation import InvalidParameterError

    n_cpus = os.cpu_count() or 1
    if n_threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        try:
            return min(n_cpus, max(1, int(env.split(",")[0])))
        except ValueError:
            return n_cpus
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int,)) and not (
            hasattr(n_threads, "__index__")):
        raise InvalidParameterError(
            f"n_threads must be an int or None, got {n_threads!r} of type "
            f"{type(n_threads).__name__}; use None (all cores), a positive count, or a "
            f"negative count (-1 = all cores, -2 = all but one).")
    n_threads = int(n_threads)
    if n_threads == 0:
        raise InvalidParameterError(
            "n_threads=0 is invalid; use None (all cores), a positive count, or a negative "
            "count (-1 = all cores, -2 = all but one).")
    if n_threads < 0:
        return max(1, n_cpus + 1 + n_threads)
    return min(n_threads, n_cpus)
