"""The latency-table file and the resume log of a profiling run, with the standard library only.

A table is one CSV file, so that a single atomic rename covers data and metadata::

    # hwdsa-latency-table {"schema_version": 1, "device": ..., "rows": N, ...}
    kind,in_channels,...,median_ms,q1_ms,...          (SPEC_COLUMNS + MEASUREMENT_COLUMNS)
    conv,8,16,...,0.0123,...                         (N rows)

The edge agent (`python -m hwdsa.profilers`, no pandas on the board) writes it here; `hwdsa.lut.table`
reads and validates the same format with pandas. While a run is in progress, every finished entry is
appended to `<table>.partial` (JSON lines, flushed and fsync'd), which is what a resumed run reads.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import platform
import socket
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from hwdsa._io import atomic_write
from hwdsa.errors import TableError

from .base import MEASUREMENT_COLUMNS, PRECISIONS, SPEC_COLUMNS, LayerSpec, Measurement

_log = logging.getLogger(__name__)

MAGIC = "# hwdsa-latency-table "
SCHEMA_VERSION = 1
COLUMNS: tuple[str, ...] = (*SPEC_COLUMNS, *MEASUREMENT_COLUMNS)
REQUIRED_META = ("schema_version", "device", "backend", "precision", "batch_size", "rows")
PARTIAL_SUFFIX = ".partial"
PARTIAL_FORMAT = "hwdsa-partial-table"

Entry = tuple[LayerSpec, Measurement]

# Metadata keys that differ between two sessions of the same run (so they do not block a resume).
_VOLATILE_META = ("host", "created_at", "rows")
_INT_MEASUREMENT = ("repeats", "attempts")
_FLOAT_MEASUREMENT = ("median_ms", "q1_ms", "q3_ms", "min_ms", "load_avg")
_NAN_ALLOWED = ("load_avg",)  # os.getloadavg() is missing on some platforms: NaN there is not an error


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second (the `created_at` of tables)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def make_meta(
    *,
    device: str,
    backend: str,
    precision: str,
    batch_size: int,
    versions: Mapping[str, Any] | None = None,
    protocol: Mapping[str, Any] | None = None,
    host: str | None = None,
    created_at: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The metadata object of a table header (without `rows`, which `write_table` sets).

    Unknown keys in `extra` (e.g. `backend_options`) are kept; `hwdsa.lut.TableMeta` carries them over.
    """
    if precision not in PRECISIONS:
        raise TableError(f"table metadata: precision must be one of {PRECISIONS}; got {precision!r}")
    meta: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "device": device,
        "backend": backend,
        "precision": precision,
        "batch_size": int(batch_size),
        "versions": dict(versions or {"python": platform.python_version()}),
        "host": socket.gethostname() if host is None else host,
        "created_at": now_iso() if created_at is None else created_at,
        "protocol": dict(protocol or {}),
    }
    meta.update(extra)
    return meta


def _cell(value: Any) -> str:
    # repr() of a float is the shortest string that reads back to the same float (exact round trip).
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def entry_row(spec: LayerSpec, measurement: Measurement) -> dict[str, Any]:
    """One table row: the spec's columns, then the measurement's."""
    return {**spec.to_row(), **measurement.to_row()}


def write_table(
    path: str | os.PathLike[str], items: Iterable[Entry], meta: Mapping[str, Any]
) -> Path:
    """Write a latency table atomically (a reader never sees half a file; a failed write leaves none).

    Args:
        path: the .csv file.
        items: (spec, measurement) pairs, one per distinct spec.
        meta: header metadata (see `make_meta`); `rows` is set from `items`.

    Raises:
        TableError: metadata lacks a required key, a row's precision or batch size differs from the
            header's, or a spec appears twice.
    """
    entries = list(items)
    header = {**dict(meta), "rows": len(entries)}
    missing = [k for k in REQUIRED_META if k not in header]
    if missing:
        raise TableError(f"table metadata lacks {', '.join(missing)}; build it with make_meta()")
    seen: set[LayerSpec] = set()
    for spec, _ in entries:
        if spec.precision != header["precision"] or spec.batch_size != header["batch_size"]:
            raise TableError(
                f"spec {spec} does not match the table's precision {header['precision']!r} and batch size "
                f"{header['batch_size']}: one table holds one precision and batch size"
            )
        if spec in seen:
            raise TableError(f"spec {spec} appears twice; deduplicate the entries (dedupe_specs) before writing")
        seen.add(spec)

    def _write(handle: IO[Any]) -> None:
        handle.write(MAGIC + json.dumps(header, default=str) + "\n")
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for spec, m in entries:
            row = entry_row(spec, m)
            writer.writerow([_cell(row[c]) for c in COLUMNS])

    out = atomic_write(path, _write)
    _log.info("wrote latency table %s (%d rows, %s on %s)", out, len(entries), header["backend"], header["device"])
    return out


def _parse_bool(text: str, where: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1"):
        return True
    if low in ("false", "0"):
        return False
    raise TableError(f"{where}: 'noisy' must be True or False; got {text!r}")


def measurement_from_row(row: Mapping[str, Any], where: str) -> Measurement:
    """Parse the measurement columns of a row read from CSV or JSON (values may be strings)."""
    values: dict[str, Any] = {}
    try:
        for c in _INT_MEASUREMENT:
            number = float(row[c])
            if number != int(number):
                raise ValueError(f"{c} must be an integer, got {row[c]!r}")
            values[c] = int(number)
        for c in _FLOAT_MEASUREMENT:
            raw = row[c]
            # pandas writes NaN as an empty cell; NaN is allowed only where the platform has no load average
            values[c] = float("nan") if c in _NAN_ALLOWED and raw in ("", None) else float(raw)
    except KeyError as exc:
        raise TableError(f"{where}: missing measurement column {exc}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise TableError(f"{where}: bad measurement value ({exc})") from None
    noisy = row.get("noisy")
    values["noisy"] = noisy if isinstance(noisy, bool) else _parse_bool(str(noisy), where)
    for c in ("median_ms", "q1_ms", "q3_ms", "min_ms"):
        if not (math.isfinite(values[c]) and values[c] > 0):
            raise TableError(f"{where}: {c} must be a positive number of ms; got {values[c]}: re-profile this entry")
    return Measurement(**values)


def read_table(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[Entry]]:
    """Read a table written by `write_table` (or `hwdsa.lut.LatencyTable.write`): (metadata, entries).

    This is the stdlib reader for the board and for resuming; `hwdsa.lut.LatencyTable.read` is the
    full validating reader with pandas.

    Raises:
        TableError: missing, not a table, truncated (fewer rows than the header says), or a bad row.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TableError(f"no latency table at {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TableError(f"cannot read latency table {p}: {exc}") from None
    first, _, body = text.partition("\n")
    if not first.startswith(MAGIC):
        raise TableError(f"{p}: not an hwdsa latency table: line 1 must start with {MAGIC.strip()!r}; got {first[:60]!r}")
    try:
        meta = json.loads(first[len(MAGIC) :])
    except json.JSONDecodeError as exc:
        raise TableError(f"{p}: the metadata on line 1 is not valid JSON ({exc.msg})") from None
    if not isinstance(meta, dict):
        raise TableError(f"{p}: the metadata on line 1 must be a JSON object; got {type(meta).__name__}")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise TableError(f"{p}: table metadata lacks {', '.join(missing)}")
    if meta["schema_version"] != SCHEMA_VERSION:
        raise TableError(
            f"{p}: table schema_version {meta['schema_version']!r} is not supported (supported: {SCHEMA_VERSION})"
        )
    reader = csv.DictReader(io.StringIO(body))
    header = reader.fieldnames or []
    absent = [c for c in COLUMNS if c not in header]
    if absent:
        raise TableError(f"{p}: the CSV header (line 2) lacks column(s) {', '.join(absent)}; the file is truncated or not a table")
    entries: list[Entry] = []
    seen: set[LayerSpec] = set()
    for i, row in enumerate(reader):
        where = f"{p} line {i + 3}"
        if any(row.get(c) in (None, "") for c in COLUMNS if c not in _NAN_ALLOWED):
            raise TableError(f"{where}: the row is incomplete (a truncated file?): re-profile")
        try:
            spec = LayerSpec.from_row(row)
        except (TypeError, ValueError) as exc:
            raise TableError(f"{where}: invalid layer spec: {exc}") from None
        if spec in seen:
            raise TableError(f"{where}: duplicate spec {spec}")
        seen.add(spec)
        entries.append((spec, measurement_from_row(row, where)))
    if len(entries) != meta["rows"]:
        raise TableError(
            f"{p}: the header says {meta['rows']} rows but the file holds {len(entries)}; the file is truncated "
            "or was edited: re-profile"
        )
    return meta, entries


def partial_path(out_path: str | os.PathLike[str]) -> Path:
    """Where a run writing `out_path` keeps its finished entries until the table is complete."""
    p = Path(out_path)
    return p.with_name(p.name + PARTIAL_SUFFIX)


def run_identity(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata that must match for measurements to belong in the same table (no host/time)."""
    return {k: v for k, v in meta.items() if k not in _VOLATILE_META}


class PartialLog:
    """Append-only JSON-lines file of finished entries: the resume point of an interrupted run.

    Line 1 is a header with the run's identity (device, backend, precision, batch, versions, protocol,
    backend options); each further line is one `{"spec": ..., "measurement": ...}`: one round of one
    entry (a spec has as many lines as it has finished rounds). Each append is
    flushed and fsync'd, so a kill loses at most the entry being written; a torn last line is dropped
    (and re-measured) on resume.
    """

    def __init__(self, path: str | os.PathLike[str], meta: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.identity = json.loads(json.dumps(run_identity(meta), default=str))
        self._handle: IO[str] | None = None

    def load(self) -> dict[LayerSpec, list[Measurement]]:
        """Rounds already measured by an earlier run of the same identity, per spec ({} when there is no file).

        Raises:
            TableError: the file belongs to another device/backend/protocol, or a line in the middle is
                corrupted (not a torn last line).
        """
        if not self.path.exists():
            return {}
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        complete = lines[:-1]  # everything before the last newline; lines[-1] is b"" or a torn line
        if lines[-1]:
            _log.warning("%s: dropping a torn last line (the run was killed while writing it)", self.path)
        if not complete:
            self._truncate(0)
            return {}
        try:
            head = json.loads(complete[0])
        except json.JSONDecodeError:
            raise TableError(f"{self.path}: line 1 is not a partial-table header; delete the file to start over") from None
        if not isinstance(head, dict) or head.get("format") != PARTIAL_FORMAT:
            raise TableError(f"{self.path}: not an hwdsa partial table; delete it or choose another output path")
        theirs = head.get("identity")
        if theirs != self.identity:
            diff = sorted(
                k for k in set(self.identity) | set(theirs or {}) if (theirs or {}).get(k) != self.identity.get(k)
            )
            raise TableError(
                f"{self.path} was written by a run with other settings (differs in {', '.join(diff)}: "
                f"{ {k: (theirs or {}).get(k) for k in diff} } vs now { {k: self.identity.get(k) for k in diff} }); "
                "its entries do not belong in this table: delete it, resume with the same settings, or pass "
                "resume=False (--no-resume) to start over"
            )
        done: dict[LayerSpec, list[Measurement]] = {}
        keep = len(complete[0]) + 1
        for n, line in enumerate(complete[1:], start=2):
            where = f"{self.path} line {n}"
            try:
                obj = json.loads(line)
                spec = LayerSpec.from_row(obj["spec"])
                m = measurement_from_row(obj["measurement"], where)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                if n == len(complete):  # the last complete line: also a casualty of a kill
                    _log.warning("%s: dropping an unreadable last entry (%s)", where, exc)
                    break
                raise TableError(f"{where}: corrupted entry ({exc}); delete the file to re-profile") from None
            done.setdefault(spec, []).append(m)
            keep += len(line) + 1
        if keep != len(raw):
            self._truncate(keep)
        return done

    def _truncate(self, size: int) -> None:
        with open(self.path, "r+b") as handle:
            handle.truncate(size)
            handle.flush()
            os.fsync(handle.fileno())

    def open(self) -> None:
        """Open for appending; writes the header when the file is new or empty."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        is_new = not self.path.exists() or self.path.stat().st_size == 0
        self._handle = open(self.path, "a", encoding="utf-8")
        if is_new:
            self._write_line({"format": PARTIAL_FORMAT, "schema_version": SCHEMA_VERSION, "identity": self.identity})

    def append(self, spec: LayerSpec, measurement: Measurement) -> None:
        """Record one finished round of an entry durably (flush + fsync)."""
        self._write_line({"spec": spec.to_row(), "measurement": measurement.to_row()})

    def _write_line(self, obj: Mapping[str, Any]) -> None:
        if self._handle is None:
            raise RuntimeError("PartialLog.open() must be called before appending")
        # allow_nan: load_avg is NaN where the platform has no load average; json reads NaN back.
        self._handle.write(json.dumps(obj, default=str) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def remove(self) -> None:
        """Delete the file once the complete table has been written."""
        self.close()
        self.path.unlink(missing_ok=True)


__all__ = [
    "COLUMNS",
    "MAGIC",
    "SCHEMA_VERSION",
    "Entry",
    "PartialLog",
    "make_meta",
    "partial_path",
    "read_table",
    "run_identity",
    "write_table",
]
