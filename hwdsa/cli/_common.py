"""Helpers shared by the CLI verbs: budget parsing, config files, result tables."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hwdsa.errors import ConfigError

# A signed number with a unit: a negative or zero time must reach the "absolute time" check, not the fraction parser.
_TIME = re.compile(r"^\s*([-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)\s*(ms|us|s)\s*$")
_TO_MS = {"ms": 1.0, "us": 1e-3, "s": 1e3}


def parse_fraction(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{flag} expects a fraction of the dense cost in (0, 1], e.g. 0.5; got {text!r}") from None
    if not 0 < value <= 1:
        raise ConfigError(f"{flag} expects a fraction of the dense cost in (0, 1], e.g. 0.5; got {text!r}")
    return value


def parse_latency(text: str) -> tuple[float | None, float | None]:
    """`0.5` → (fraction 0.5, None); `2.5ms` / `800us` / `0.01s` → (None, milliseconds).

    A number with a unit is an absolute time and is checked as one, so `-1ms` is refused as a time, never
    as a malformed fraction; a number without one is a fraction of the dense network's latency.
    """
    match = _TIME.match(text)
    if match:
        value, unit = float(match.group(1)), match.group(2)
        ms = value * _TO_MS[unit]
        if not (math.isfinite(ms) and ms > 0):
            raise ConfigError(f"--latency: a latency budget in {unit} must be positive and finite (e.g. 2.5ms); got {text.strip()}")
        return None, ms
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(
            "--latency expects a fraction of the dense latency in (0, 1], e.g. 0.5, or a time with a unit "
            f"(2.5ms, 800us, 0.01s); got {text!r}"
        ) from None
    try:
        return parse_fraction(text, "--latency"), None
    except ConfigError as exc:
        if math.isfinite(value) and value > 1:  # likely a time without its unit
            raise ConfigError(f"{exc}; an absolute time needs a unit, e.g. {text.strip()}ms") from None
        raise


def read_config_file(path: str | None) -> dict[str, Any]:
    """A JSON config file's contents (flags given on the command line override it)."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a JSON object")
    return data


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain aligned text table (no extra dependency; readable in logs and CI output)."""
    cells = [[str(h) for h in header]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)
