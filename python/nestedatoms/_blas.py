"""BLAS thread limits, with one threadpoolctl controller per process.

``threadpool_limits`` looks up every loaded BLAS/OpenMP library (walking the loaded shared
objects and reading their versions) each time it is entered: ~4 ms, twice per fit, a few
percent of a small fit (issue 21).  The controller does the lookup once; scipy's own BLAS
(wheels ship one beside numpy's) is loaded first so that the controller sees it too.
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def _controller():
    import scipy.linalg  # noqa: F401  (loads scipy's BLAS before the lookup)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def blas_threads(limit: int):
    """A context manager that holds the BLAS libraries at ``limit`` threads, then restores."""
    return _controller().limit(limits=int(limit), user_api="blas")
