"""``nestedatoms.show_config()``: what this installation runs on.

Which instruction-set build of the C++ core is used (and why), OpenMP and thread counts, the
Eigen version, and the BLAS numpy uses (as threadpoolctl sees it).  Useful in bug reports and to
check that a benchmark ran the fast path.
"""

from __future__ import annotations

import os
import platform
import sys

__all__ = ["show_config", "config"]


def config() -> dict:
    """The build and runtime configuration as a nested dict (what ``show_config`` prints)."""
    import numpy as np

    from . import __version__
    from ._backend import (ISA_ENV, ISA_MODULES, available_cpus, available_isas, core_module,
                           resolve_n_threads)

    info = {
        "nestedatoms": {"version": __version__, "python": sys.version.split()[0],
                        "platform": platform.platform(), "machine": platform.machine(),
                        "cpu_count": os.cpu_count(), "available_cpus": available_cpus()},
    }
    core = {"built": False}
    try:
        usable = available_isas()
        forced = os.environ.get(ISA_ENV) or None
        try:
            module = core_module()
            core.update(built=True, isa=module.ISA, module=module.__name__,
                        selected_by=f"${ISA_ENV}" if forced else "best available")
            build = module.build_info()
            core.update(compiler=build["compiler"], eigen=build["eigen_version"],
                        simd=build["simd_flags"], native=build["native"],
                        openmp=build["openmp"], openmp_version=build.get("openmp_version"),
                        openmp_max_threads=module.max_threads(), cell_block=build["cell_block"])
        except (ImportError, ValueError) as exc:
            core.update(built=bool(usable), error=str(exc))
        core["installed_isas"] = [isa for isa in ISA_MODULES if isa in usable]
        if usable:
            from . import _core

            core["cpu_features"] = sorted(k for k, v in _core.cpu_features().items() if v)
    except ImportError as exc:  # no compiled core at all
        core["error"] = str(exc)
    info["core"] = core
    info["threads"] = {"n_threads=None resolves to": resolve_n_threads(None),
                       "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    blas = []
    try:
        from threadpoolctl import threadpool_info

        for lib in threadpool_info():
            blas.append({k: lib.get(k) for k in ("user_api", "internal_api", "version",
                                                 "architecture", "threading_layer",
                                                 "num_threads", "filepath")
                         if lib.get(k) is not None})
    except Exception as exc:  # threadpoolctl is a dependency, but never fail a diagnostic
        blas.append({"error": str(exc)})
    info["numpy"] = {"version": np.__version__, "threadpools": blas,
                     "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}
    return info


def show_config(file=None) -> dict:
    """Print the build and runtime configuration; also return it as a dict.

    Examples
    --------
    >>> import nestedatoms
    >>> cfg = nestedatoms.show_config()  # doctest: +SKIP
    core: isa = avx512 (nestedatoms._core_avx512, best available) ...
    """
    info = config()
    out = file if file is not None else sys.stdout
    for section, values in info.items():
        print(f"{section}:", file=out)
        for key, value in values.items():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                print(f"    {key}:", file=out)
                for item in value:
                    print("        " + ", ".join(f"{k}={v}" for k, v in item.items()), file=out)
            else:
                print(f"    {key:28s} {value}", file=out)
    return info
