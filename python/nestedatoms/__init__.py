"""nestedatoms: cluster individuals and their cells together with the Nested Atoms Model.

The heavy lifting lives in a C++ core (``nestedatoms._core``); a pure-NumPy reference backend
(``nestedatoms.reference``) implements the same steps and serves as the test oracle.

"Model section N" in the docstrings is section N of the model's mathematics, written out in
``docs/model.md`` of the source distribution (the model, every update and the full ELBO).
"""

from ._model import NestedAtomsModel
from .exceptions import (ConvergenceWarning, FitInterruptedWarning, InvalidParameterError,
                         ModelFileError, NumericalError)
from ._simulate import Simulation, simulate, simulate_cohort

__version__ = "0.1.0"

__all__ = ["NestedAtomsModel", "Simulation", "Summary", "simulate", "simulate_cohort", "tl",
           "pl", "show_config", "__version__", "exceptions", "InvalidParameterError",
           "NumericalError", "ModelFileError", "ConvergenceWarning", "FitInterruptedWarning",
           "adjusted_rand_index", "diagnostics", "write_sorted_zarr"]

# ``tl`` (AnnData) and ``pl`` (matplotlib) load on first use, so ``import nestedatoms`` stays
# light and works without the optional extras; so does ``diagnostics`` (the study's tools).
_LAZY = {"tl": ".tl", "pl": ".pl", "Summary": "._summary", "show_config": "._config",
         "adjusted_rand_index": "._metrics", "diagnostics": ".diagnostics",
         "write_sorted_zarr": "._dask"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name], __name__)
        value = module if name in ("tl", "pl", "diagnostics") else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nestedatoms' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
