"""The estimator's docstring example runs and says what it shows; parameters are keyword-only
(scikit-learn's convention), so adding one can never shift another."""

import doctest

import pytest

import nestedatoms as na
from nestedatoms import _model


def test_docstring_example_runs():
    result = doctest.testmod(_model, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 4 and result.failed == 0


def test_parameters_are_keyword_only():
    with pytest.raises(TypeError):
        na.NestedAtomsModel(5, 5)
    assert na.NestedAtomsModel(n_group_clusters=5).n_group_clusters == 5
