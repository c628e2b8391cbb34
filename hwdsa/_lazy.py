"""Packages whose public names are imported on first use (PEP 562, as SPEC 1's lazy_loader does).

`import hwdsa`, `hwdsa.lut` or `hwdsa.export` then loads neither torch nor ONNX Runtime nor pandas until a name
that needs them is touched, which keeps the CLI quick and the edge agent importable without torch.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def attach(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, whose public `names` map to the modules that define them."""

    def __getattr__(name: str) -> Any:
        try:
            module_name = names[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module_name), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
