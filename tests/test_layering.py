"""The direction of dependencies between hwdsa's parts (docs/architecture.md), checked on every import.

Lowest first; a part may import its own layer's other parts only where listed here, and lower layers always:
  0  errors, _io, _registry, _version                   (nothing of hwdsa but each other)
  1  profilers                                          (runs on a board: no torch, nothing of hwdsa above 0)
  2  graph, models, data, training, checkpoint, distributed
  3  costs, channels, counting, masking, importance
  4  dsa, surgery
  5  equivalence, lut
  6  job
  7  export                                             (reads a job's report and pruned model)
  8  cli, __main__, the package's lazy front door (hwdsa/__init__.py)
Imports inside functions count too (they move where a dependency points, not whether it exists), and so do
names imported by `importlib.import_module("hwdsa....")` with a literal string.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hwdsa"

LAYERS: list[set[str]] = [
    {"errors", "_io", "_registry", "_version"},
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


def _part(module: str) -> str:
    """The part of hwdsa a dotted module name belongs to ("hwdsa.dsa.search" -> "dsa", "hwdsa" -> "__init__")."""
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _imports() -> list[tuple[str, str, str]]:
    """(importing file, its part, imported part) for every import of hwdsa in the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        source = _part(module) if module != "hwdsa" else "__init__"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                targets = [node.args[0].value]
            for target in targets:
                if target == "hwdsa" or target.startswith("hwdsa."):
                    dest = _part(target)
                    if dest != source:
                        found.append((str(path.relative_to(PACKAGE.parent)), source, dest))
    return found


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
    ]
    assert not wrong, "\n".join(wrong)
