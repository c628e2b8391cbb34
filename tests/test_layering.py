"""The direction of dependencies between hwdsa's parts (docs/architecture.md), checked on every import.

Lowest first; a part may import its own layer's other parts only where listed here, and lower layers always:
  0  errors, _io, _registry, _version, _lazy                (nothing of hwdsa but each other)
  1  profilers                                          (runs on a board: no torch, nothing of hwdsa above 0)
  2  graph, models, data, training, checkpoint, distributed
  3  costs, channels, counting, masking, importance
  4  dsa, surgery
  5  equivalence, lut
  6  job
  7  export                                             (reads a job's report and pruned model)
  8  cli, __main__, the package's lazy front door (hwdsa/__init__.py)
Imports inside functions count too (they move where a dependency points, not whether it exists), and so do
relative imports, names imported by `importlib.import_module("hwdsa....")` with a literal string, and the
"hwdsa.module:attr" strings a registry imports on first use. No two parts depend on each other, directly or
round a loop; the one upward dependency left (`KNOWN_UPWARD`: costs names the latency cost of lut in its
registry) is resolved by name at run time, and the test fails once it is gone, so that it is struck off.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hwdsa"

LAYERS: list[set[str]] = [
    {"errors", "_io", "_registry", "_version", "_lazy"},
    {"profilers"},
    {"graph", "models", "data", "training", "checkpoint", "distributed"},
    {"costs", "channels", "counting", "masking", "importance"},
    {"dsa", "surgery"},
    {"equivalence", "lut"},
    {"job"},
    {"export"},
    {"cli", "__main__", "__init__"},
]
LAYER_OF = {part: i for i, parts in enumerate(LAYERS) for part in parts}
#: Same-layer imports that are part of the design (a pair not listed here is refused, so no cycle can form).
SAME_LAYER = {
    ("_registry", "errors"),
    ("_io", "errors"),
    ("checkpoint", "_io"),
    ("data", "distributed"),
    ("dsa", "training"),
    ("dsa", "surgery"),  # SearchResult.to_plan
    ("training", "distributed"),
    ("channels", "costs"),
    ("lut", "surgery"),
    ("equivalence", "surgery"),
    ("surgery", "masking"),
    ("cli", "__init__"),
    ("__main__", "cli"),
}

#: Upward dependencies the code still has, each only through a registry's "module:attr" string (imported when
#: the entry is first used, never at load time), with what removes it.
KNOWN_UPWARD = {
    ("costs", "lut"): "hwdsa/costs.py registers the 'latency' cost as 'hwdsa.lut.cost_model:latency_cost_from_table'; "
    "hwdsa.lut registering its own cost in COSTS would point the dependency down",
}
#: A registry's lazy target: "hwdsa.package.module:attribute".
_REGISTRY_TARGET = re.compile(r"^(hwdsa(?:\.[A-Za-z_]\w*)*):[A-Za-z_]\w*$")


def _part(module: str) -> str:
    """The part of hwdsa a dotted module name belongs to ("hwdsa.dsa.search" -> "dsa", "hwdsa" -> "__init__")."""
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


@functools.cache
def _imports() -> tuple[tuple[str, str, str], ...]:
    """(importing file, its part, imported part) for every import of hwdsa in the package (parsed once)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        source = _part(module) if module != "hwdsa" else "__init__"
        package = module if rel.name == "__init__" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module]
            elif isinstance(node, ast.ImportFrom):  # relative: from the package, `level - 1` folders up
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                targets = [".".join([*base, *([node.module] if node.module else [])])]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                targets = [node.args[0].value]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (m := _REGISTRY_TARGET.match(node.value)):
                targets = [m.group(1)]
            where = str(path.relative_to(PACKAGE.parent))
            if isinstance(node, ast.Constant):
                where += f" (registry name {node.value!r})"
            for target in targets:
                if target == "hwdsa" or target.startswith("hwdsa."):
                    dest = _part(target)
                    if dest != source:
                        found.append((where, source, dest))
    return tuple(found)


def test_every_part_has_a_layer() -> None:
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if (p.suffix == ".py" or (p / "__init__.py").is_file())}
    assert parts - set(LAYER_OF) == set(), "place the new part in LAYERS (and docs/architecture.md)"


@pytest.mark.parametrize("layer", range(len(LAYERS)), ids=lambda i: "/".join(sorted(LAYERS[i])))
def test_no_part_imports_a_layer_above_it_or_an_unlisted_neighbour(layer: int) -> None:
    wrong = [
        f"{where}: {source} (layer {LAYER_OF[source]}) imports {dest} (layer {LAYER_OF.get(dest, '?')})"
        for where, source, dest in _imports()
        if LAYER_OF[source] == layer
        and (LAYER_OF.get(dest, 99) > layer or (LAYER_OF.get(dest) == layer and (source, dest) not in SAME_LAYER))
        and (source, dest) not in KNOWN_UPWARD
    ]
    assert not wrong, "\n".join(wrong)


def test_the_known_upward_dependencies_are_registry_names_and_still_there() -> None:
    found: dict[tuple[str, str], list[str]] = {}
    for where, source, dest in _imports():
        if (source, dest) in KNOWN_UPWARD:
            found.setdefault((source, dest), []).append(where)
    assert set(found) == set(KNOWN_UPWARD), "an upward dependency is gone: strike it off KNOWN_UPWARD (and the docstring)"
    # each only by name: an import statement would make it a cycle when the modules load
    for (source, dest), places in found.items():
        statements = [w for w in places if "(registry name " not in w]
        assert not statements, f"{source} imports {dest} by an import statement: {statements}"


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph (its parts in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_the_parts_import_each_other_without_a_cycle() -> None:
    """Whatever SAME_LAYER allows, no loop of parts depends on itself (function-local imports included)."""
    edges: dict[str, set[str]] = {}
    for _, source, dest in _imports():
        if (source, dest) not in KNOWN_UPWARD:
            edges.setdefault(source, set()).add(dest)
    cycle = _cycle(edges)
    assert cycle is None, "import cycle between hwdsa's parts: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}}) is None
