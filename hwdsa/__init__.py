"""hwdsa: prune CNNs to a measured latency budget with Differentiable Sparsity Allocation.

Public names are imported lazily, so that `import hwdsa.profilers` works on an edge board with
only an inference backend installed (no torch), and `import hwdsa` initialises neither CUDA,
ONNX Runtime nor TensorRT.
"""

from __future__ import annotations

import importlib
from typing import Any

from hwdsa._version import __version__ as __version__

_LAZY: dict[str, str] = {}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    try:
        module_name = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'hwdsa' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
