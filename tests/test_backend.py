"""Both backends conform to the Backend protocol: every function, under one name, with the
protocol's argument names (so a call by keyword means the same on either)."""

import inspect
import re

import pytest

from nestedatoms import reference
from nestedatoms._backend import Backend, backend_functions, core_module


def protocol_arguments(name):
    params = list(inspect.signature(getattr(Backend, name)).parameters)
    return params[1:]                                  # without self


def reference_arguments(name):
    return list(inspect.signature(getattr(reference, name)).parameters)


def core_arguments(core, name):
    # pybind11 writes the signature as the docstring's first line: name(a: T, b: T = ...) -> R
    first = getattr(core, name).__doc__.splitlines()[0]
    inside = first[first.index("(") + 1:first.rindex(") ->")]
    return re.findall(r"(?:^|, )(\w+):", inside)


def test_the_protocol_lists_the_step_functions():
    names = backend_functions()
    assert {"cell_step", "group_step", "nw_posterior", "digamma", "lgamma"} <= set(names)
    assert "NAME" not in names


@pytest.mark.parametrize("name", backend_functions())
def test_the_reference_conforms(name):
    assert protocol_arguments(name) == reference_arguments(name)


@pytest.mark.parametrize("name", backend_functions())
def test_the_core_conforms(name):
    core = pytest.importorskip("nestedatoms._core")
    assert protocol_arguments(name) == core_arguments(core, name)


def test_both_backends_are_backends():
    assert isinstance(reference, Backend)
    assert isinstance(core_module(), Backend)
    assert {reference.NAME, core_module().NAME} == {"numpy", "cpp"}


def test_the_reference_has_no_step_function_outside_the_protocol():
    # a new step added to one backend must be added to the protocol (and so to the other)
    public = {n for n, v in vars(reference).items() if callable(v) and not n.startswith("_")
              and getattr(v, "__module__", "") == reference.__name__}
    assert public == set(backend_functions())
