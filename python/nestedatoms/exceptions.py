"""Every exception and warning nestedatoms raises on purpose, in one public place.

Catch these by their public names (``nestedatoms.InvalidParameterError`` or
``nestedatoms.exceptions.InvalidParameterError``); the older private paths
(``nestedatoms._validation.InvalidParameterError``, ``nestedatoms._fit.NumericalError``, ...)
name the same classes and keep working.

This module imports nothing heavy (no scikit-learn, no pandas), so ``import nestedatoms`` stays
light.
"""

from __future__ import annotations

__all__ = ["InvalidParameterError", "NumericalError", "ModelFileError",
           "ConvergenceWarning", "FitInterruptedWarning"]


class InvalidParameterError(ValueError, TypeError):
    """A parameter of the wrong type or out of its domain.

    Subclasses both ValueError and TypeError (as scikit-learn's exception of the same name
    does), so code catching either keeps working whichever of the two problems it is.
    """


class NumericalError(ValueError):
    """float64 cannot carry the computation: a posterior became numerically singular, the
    ELBO stopped being finite, or a result for new data (an extreme row) would be NaN.

    The message says which, and what to change (usually: standardise the data).
    """


class ModelFileError(ValueError):
    """A file that ``NestedAtomsModel.load`` refuses: damaged, truncated, tampered with, of
    another format, of an unsupported format version, or declaring arrays too large to read.

    The message starts with the file's path and names the problem.  ``path`` holds the path.
    """

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: not a valid nestedatoms model file: {problem}")

    def __reduce__(self):           # picklable with its two arguments (multiprocessing)
        return (type(self), (self.path, self.problem))


class ConvergenceWarning(UserWarning):
    """A fit stopped at ``max_iter`` sweeps before the ELBO settled to ``tol``.

    nestedatoms' own class (scikit-learn is not a dependency), named and used as
    scikit-learn's ``sklearn.exceptions.ConvergenceWarning``: filter it by this class.
    """


class FitInterruptedWarning(UserWarning):
    """A fit was stopped by KeyboardInterrupt; the model holds the best complete state."""
