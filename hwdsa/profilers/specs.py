"""Helpers over lists of LayerSpecs: dedupe, input shapes, labels, and the JSON specs file (stdlib only)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hwdsa._io import write_json_atomic
from hwdsa.errors import ConfigError

from .base import SPEC_COLUMNS, LayerSpec

SPECS_FORMAT = "hwdsa-layer-specs"
SPECS_SCHEMA_VERSION = 1


def dedupe_specs(specs: Iterable[LayerSpec]) -> list[LayerSpec]:
    """The distinct specs of `specs`, in first-seen order: layers that share a shape are measured once.

    Example:
        >>> a, b = LayerSpec("conv", 8, 16), LayerSpec("conv", 16, 16)
        >>> dedupe_specs([a, b, a]) == [a, b]
        True
    """
    out: dict[LayerSpec, None] = {}
    for spec in specs:
        if not isinstance(spec, LayerSpec):
            raise ConfigError(f"expected LayerSpec entries; got {type(spec).__name__}: {spec!r}")
        out.setdefault(spec, None)
    return list(out)


def input_shape(spec: LayerSpec) -> tuple[int, ...]:
    """Shape of the layer's input: (batch, in_channels, h, w) for a conv, (batch, in_channels) for a linear."""
    if spec.kind == "linear":
        return (spec.batch_size, spec.in_channels)
    return (spec.batch_size, spec.in_channels, spec.in_size[0], spec.in_size[1])


def spec_label(spec: LayerSpec) -> str:
    """A short human-readable name of a spec, for logs and progress bars."""
    if spec.kind == "linear":
        core = f"linear {spec.in_channels}->{spec.out_channels}"
    else:
        dw = " dw" if spec.is_depthwise else (f" g{spec.groups}" if spec.groups > 1 else "")
        core = (
            f"conv{dw} {spec.in_channels}->{spec.out_channels} k{spec.kernel[0]}x{spec.kernel[1]} "
            f"s{spec.stride[0]} @{spec.in_size[0]}x{spec.in_size[1]}"
        )
    act = "" if spec.activation == "none" else f" +{spec.activation}"
    return f"{core}{act} b{spec.batch_size} {spec.precision}"


def common_precision_and_batch(specs: Iterable[LayerSpec]) -> tuple[str, int]:
    """The one precision and batch size shared by `specs` (a latency table holds exactly one of each).

    Raises:
        ConfigError: `specs` is empty, or mixes precisions or batch sizes.
    """
    items = list(specs)
    if not items:
        raise ConfigError("no layer specs to profile: pass at least one LayerSpec (e.g. from hwdsa.lut's grid)")
    precisions = sorted({s.precision for s in items})
    batches = sorted({s.batch_size for s in items})
    if len(precisions) > 1 or len(batches) > 1:
        raise ConfigError(
            f"one latency table holds one precision and one batch size; these specs mix precisions {precisions} "
            f"and batch sizes {batches}: profile each combination into its own table"
        )
    return precisions[0], batches[0]


def spec_from_json(obj: Any, *, where: str) -> LayerSpec:
    """Parse one `LayerSpec.to_row()` dict read from JSON, naming `where` on failure."""
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: a layer spec must be a JSON object; got {type(obj).__name__}")
    missing = [c for c in SPEC_COLUMNS if c not in obj]
    if missing:
        raise ConfigError(f"{where}: layer spec lacks {', '.join(missing)}; got keys {sorted(obj)}")
    try:
        return LayerSpec.from_row(obj)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: invalid layer spec {obj!r}: {exc}") from None


def write_specs(path: str | os.PathLike[str], specs: Iterable[LayerSpec]) -> Path:
    """Write specs (deduplicated) to a JSON file that `read_specs` and `python -m hwdsa.profilers` read."""
    unique = dedupe_specs(specs)
    return write_json_atomic(
        path,
        {"format": SPECS_FORMAT, "schema_version": SPECS_SCHEMA_VERSION, "specs": [s.to_row() for s in unique]},
    )


def read_specs(path: str | os.PathLike[str]) -> list[LayerSpec]:
    """Read a specs file written by `write_specs`.

    Raises:
        ConfigError: the file is missing, not JSON, or holds an invalid spec.
    """
    p = Path(path)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no specs file at {p}; write one with hwdsa.profilers.write_specs") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read specs file {p}: {exc}") from None
    if not isinstance(obj, dict) or obj.get("format") != SPECS_FORMAT:
        raise ConfigError(f"{p} is not an hwdsa specs file (need a JSON object with \"format\": {SPECS_FORMAT!r})")
    if obj.get("schema_version") != SPECS_SCHEMA_VERSION:
        raise ConfigError(
            f"{p}: specs schema_version {obj.get('schema_version')!r} is not supported (supported: {SPECS_SCHEMA_VERSION})"
        )
    rows = obj.get("specs")
    if not isinstance(rows, list):
        raise ConfigError(f"{p}: 'specs' must be a list of layer specs")
    return [spec_from_json(r, where=f"{p} spec {i}") for i, r in enumerate(rows)]


__all__ = [
    "common_precision_and_batch",
    "dedupe_specs",
    "input_shape",
    "read_specs",
    "spec_from_json",
    "spec_label",
    "write_specs",
]
