"""The .pyi stub of the compiled core names exactly the functions the core exports, with the
same parameter names (so type checkers and IDEs see the real signatures)."""

import ast
import inspect
import pathlib
import re

import nestedatoms
from nestedatoms._backend import core_module

STUB = pathlib.Path(nestedatoms.__file__).with_name("_core.pyi")


def _stub_signatures():
    tree = ast.parse(STUB.read_text())
    return {f.name: [a.arg for a in f.args.args] for f in tree.body
            if isinstance(f, ast.FunctionDef)}


def _core_signatures():
    core = core_module("baseline")
    out = {}
    for name, fn in inspect.getmembers(core, callable):
        if name.startswith("_"):
            continue
        first = (fn.__doc__ or "").splitlines()[0]
        # pybind11's signature line: name(arg: type, arg: type = default) -> ret
        params = re.findall(r"(\w+): ", first.split("->")[0])
        out[name] = params
    return out


def test_stub_matches_the_core():
    stub, core = _stub_signatures(), _core_signatures()
    assert set(stub) == set(core)
    for name in core:
        if core[name]:                      # lambdas bound without names give no list
            assert stub[name] == core[name], name


def test_package_is_typed():
    assert STUB.with_name("py.typed").exists()
