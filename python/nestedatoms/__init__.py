"""nestedatoms: cluster individuals and their cells together with the Nested Atoms Model.

The heavy lifting lives in a C++ core (``nestedatoms._core``); a pure-NumPy reference backend
(``nestedatoms.reference``) implements the same steps and serves as the test oracle.
"""

from ._model import NestedAtomsModel
from ._simulate import Simulation, simulate

__version__ = "0.1.0"

__all__ = ["NestedAtomsModel", "Simulation", "simulate", "__version__"]
