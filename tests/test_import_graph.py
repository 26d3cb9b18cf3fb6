"""The package's modules import each other without a cycle (issue 20): at module level, which
Python needs, and also counting the imports deferred into functions (a deferred cycle works
but says two modules are one job split in two)."""

import ast
import graphlib
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "python" / "nestedatoms"


def modules():
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def internal_imports(name, path, mods, deferred):
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if deferred else tree.body
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    deps = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            deps |= {t for t in [target] + [f"{target}.{a.name}" for a in node.names]
                     if t in mods and t != name}
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name in mods and a.name != name}
    # a submodule importing its own package's __init__ is how Python loads it: not a cycle
    return {d for d in deps if not name.startswith(d + ".")}


@pytest.mark.parametrize("deferred", [False, True], ids=["module-level", "with-deferred"])
def test_no_import_cycle(deferred):
    mods = modules()
    graph = {n: internal_imports(n, p, mods, deferred) for n, p in mods.items()}
    assert sum(map(len, graph.values())) > 20          # the walk really finds the imports
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")
