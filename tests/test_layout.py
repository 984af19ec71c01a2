"""The house stays drawn as it is built: data flows one way, with no circles in the import graph.

Every module of the package belongs to a floor, listed from the bottom up;
a module may import (at any depth, even inside a function) only from its own
floor or the floors below. A new package must be given a floor here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "thinkscale"

FLOORS = [  # bottom first: leaves, then task -> strategy -> trace -> store -> analysis / training / serve
    {"__init__", "registry", "budget", "trace", "seeds", "net", "torch_thread"},
    {"verify"},
    {"tasks"},
    {"tiny"},
    {"policies"},
    {"scorers"},
    {"tools"},
    {"strategies"},
    {"store", "export"},
    {"typed_yaml", "config"},
    {"runner"},
    {"analysis"},
    {"training"},
    {"serve"},
    {"cli"},
]
FLOOR = {unit: i for i, units in enumerate(FLOORS) for unit in units}


def unit_of(module: str) -> str:
    """'thinkscale.tiny.engine' -> 'tiny'; 'thinkscale.budget' -> 'budget'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports() -> dict[str, set[str]]:
    """Each module of the package, and the package modules it imports anywhere in its code."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(("thinkscale", *path.relative_to(PACKAGE).with_suffix("").parts))
        module = module.removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "thinkscale":
                    found |= {f"thinkscale.{a.name}" for a in node.names}
                elif node.module.startswith("thinkscale."):
                    found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("thinkscale")}
        graph[module] = found
    return graph


def test_every_module_has_a_floor():
    units = {unit_of(m) for m in imports()}
    assert units - set(FLOOR) == set(), "give each new module or package a floor in FLOORS"


def test_no_module_imports_a_floor_above_its_own():
    upward = []
    for module, targets in sorted(imports().items()):
        for target in sorted(targets):
            if FLOOR[unit_of(target)] > FLOOR[unit_of(module)]:
                upward.append(f"{module} imports {target}")
    assert upward == [], "\n".join(upward)


def test_no_circles_between_packages():
    graph: dict[str, set[str]] = {}
    for module, targets in imports().items():
        graph.setdefault(unit_of(module), set()).update(unit_of(t) for t in targets if unit_of(t) != unit_of(module))
    done: set[str] = set()

    def visit(unit: str, path: list[str]) -> None:
        if unit in path:
            pytest.fail("import circle: " + " -> ".join(path[path.index(unit):] + [unit]))
        if unit in done:
            return
        for target in sorted(graph.get(unit, ())):
            visit(target, path + [unit])
        done.add(unit)

    for unit in sorted(graph):
        visit(unit, [])
