"""The latency-table file format, with the standard library only, and the resume log of a profiling run.

A table is one CSV file, so that a single atomic rename covers data and metadata::

    # hwdsa-latency-table {"schema_version": 1, "device": ..., "rows": N, ...}
    kind,in_channels,...,median_ms,q1_ms,...          (SPEC_COLUMNS + MEASUREMENT_COLUMNS)
    conv,8,16,...,0.0123,...                         (N rows)

This module is the one owner of the format: its constants and every rule a file must pass live here.
The edge agent (`python -m hwdsa.profilers`, no pandas on the board) reads and writes tables with it,
and `hwdsa.lut.LatencyTable` builds its DataFrame from what `read_header` and `parse_body` return, so
a file is accepted or refused, with the same message, on the board and on the host. While a run is in
progress, every finished entry is appended to `<table>.partial` (JSON lines, flushed and fsync'd),
which is what a resumed run reads.
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
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from hwdsa._io import atomic_write
from hwdsa._version import __version__
from hwdsa.errors import TableError

from .base import ACTIVATIONS, LAYER_KINDS, MEASUREMENT_COLUMNS, PRECISIONS, SPEC_COLUMNS, LayerSpec, Measurement
from .device import fingerprint_id

_log = logging.getLogger(__name__)

MAGIC = "# hwdsa-latency-table "
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS: tuple[int, ...] = (SCHEMA_VERSION,)
COLUMNS: tuple[str, ...] = (*SPEC_COLUMNS, *MEASUREMENT_COLUMNS)
REQUIRED_META = ("schema_version", "device", "backend", "precision", "batch_size", "rows")
PARTIAL_SUFFIX = ".partial"
PARTIAL_FORMAT = "hwdsa-partial-table"

# The type of every column.
INT_COLUMNS = (
    "in_channels", "out_channels", "kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w",
    "groups", "in_h", "in_w", "batch_size", "repeats", "attempts",
)  # fmt: skip
FLOAT_COLUMNS = ("median_ms", "q1_ms", "q3_ms", "min_ms", "load_avg")
STR_COLUMNS = ("kind", "activation", "precision")
BOOL_COLUMNS = ("noisy",)
if sorted((*INT_COLUMNS, *FLOAT_COLUMNS, *STR_COLUMNS, *BOOL_COLUMNS)) != sorted(COLUMNS):  # a field was added
    raise ImportError("hwdsa.profilers.tablefile: every table column needs exactly one type")
# os.getloadavg() is unavailable on some platforms: the profiler then records NaN, which is not an error.
NAN_ALLOWED = ("load_avg",)
_POSITIVE_COLUMNS = (
    "in_channels", "out_channels", "kernel_h", "kernel_w", "stride_h", "stride_w", "groups", "in_h", "in_w",
    "batch_size", "repeats", "attempts",
)  # fmt: skip
_LATENCY_COLUMNS = ("median_ms", "q1_ms", "q3_ms", "min_ms")
# Relative slack for q1 <= median <= q3: the quartiles come from the same float samples, so only a
# decimal round trip could break the order, by an ulp or two.
_ORDER_RTOL = 1e-9

Entry = tuple[LayerSpec, Measurement]

# Metadata keys that differ between two sessions of the same run (so they do not block a resume).
_VOLATILE_META = ("host", "created_at", "rows")


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
    fingerprint: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The metadata object of a table header (without `rows`, which `write_table` sets).

    `fingerprint` (`hwdsa.profilers.device`: the measured device's stable facts) is stored with its id as
    the optional keys "fingerprint" and "fingerprint_id"; tables written before them still load.
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
    if fingerprint is not None:
        meta["fingerprint"] = dict(fingerprint)
        meta["fingerprint_id"] = fingerprint_id(fingerprint)
    meta.update(extra)
    return meta


# ---------------------------------------------------------------- header
def missing_meta(meta: Mapping[str, Any]) -> list[str]:
    """The required header keys that `meta` lacks."""
    return [k for k in REQUIRED_META if k not in meta]


def check_schema_version(version: Any, where: str) -> None:
    """Refuse a version this hwdsa cannot read, saying what to do: a newer format is never half-read."""
    if isinstance(version, bool) or not isinstance(version, int):
        raise TableError(f"{where}: 'schema_version' must be an integer; got {version!r}")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        remedy = (
            "a newer hwdsa wrote it: upgrade hwdsa on this machine, or re-profile the table with this version"
            if version > max(SUPPORTED_SCHEMA_VERSIONS)
            else "re-profile the table with this version"
        )
        raise TableError(
            f"{where}: schema_version {version} is not supported by hwdsa {__version__} (it reads schema_version "
            f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}); {remedy}"
        )


def check_conditions(meta: Mapping[str, Any], where: str) -> None:
    """Check the conditions a table was measured in: what decides whether its latencies apply."""
    for key in ("device", "backend"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise TableError(f"{where}: {key!r} must be a non-empty string; got {meta.get(key)!r}")
    if meta.get("precision") not in PRECISIONS:
        raise TableError(f"{where}: 'precision' must be one of {PRECISIONS}; got {meta.get('precision')!r}")
    batch = meta.get("batch_size")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise TableError(f"{where}: 'batch_size' must be a positive integer; got {batch!r}")


def check_header(meta: Mapping[str, Any], where: str) -> None:
    """Validate a header's metadata object: version first (a newer format may have renamed keys), then keys."""
    if "schema_version" in meta:
        check_schema_version(meta["schema_version"], where)
    missing = missing_meta(meta)
    if missing:
        raise TableError(
            f"{where} lacks {', '.join(map(repr, missing))}; a table header needs {', '.join(REQUIRED_META)} "
            "(re-profile, or fix the first line of the file)"
        )
    check_conditions(meta, where)
    rows = meta["rows"]
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise TableError(f"{where}: 'rows' must be a non-negative integer; got {rows!r}")


def header_line(meta: Mapping[str, Any]) -> str:
    """Line 1 of a table file: MAGIC, then the metadata as one line of JSON."""
    return MAGIC + json.dumps(dict(meta), default=str) + "\n"


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], str]:
    """Read a table file and validate line 1: (metadata, the text after line 1 for `parse_body`).

    Raises:
        TableError: missing, unreadable, not a table, or its metadata is malformed or of another version.
    """
    source = str(Path(path))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TableError(f"no latency table at {source}; profile one with `hwdsa profile`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TableError(f"cannot read latency table {source}: {exc}") from exc
    first, _, body = text.partition("\n")
    if not first.startswith(MAGIC):
        raise TableError(
            f"{source}: not an hwdsa latency table: its first line must start with {MAGIC.strip()!r}; "
            f"got {first[:60]!r}"
        )
    try:
        meta = json.loads(first[len(MAGIC) :])
    except json.JSONDecodeError as exc:
        raise TableError(
            f"{source}: the metadata on line 1 is not valid JSON ({exc.msg} at column {exc.colno + len(MAGIC)})"
        ) from None
    if not isinstance(meta, dict):
        raise TableError(f"{source}: the metadata on line 1 must be a JSON object; got {type(meta).__name__}")
    check_header(meta, f"{source}: table metadata")
    return meta, body


# ---------------------------------------------------------------- body
def _lines(rows: Sequence[int], first_line: int, limit: int = 5) -> str:
    """File line numbers of row indices (row 0 is on `first_line`), for messages."""
    shown = ", ".join(str(first_line + i) for i in rows[:limit])
    return f"line {shown}" + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def _number(cell: Any) -> float | None:
    """A cell as a number: NaN when blank, None when not a number."""
    if cell is None:
        return math.nan
    if isinstance(cell, bool):
        return None
    if isinstance(cell, (int, float)):
        return float(cell)
    text = str(cell).strip()
    if text.lower() in ("", "nan"):
        return math.nan
    if "_" in text:  # float() reads "1_000"; a table never holds one
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _is_finite(value: Any) -> bool:
    try:
        return math.isfinite(value)
    except (TypeError, ValueError):
        return False


def check_columns(names: Iterable[str], source: str) -> None:
    """Refuse a table without every column of `COLUMNS`."""
    present = set(names)
    missing = [c for c in COLUMNS if c not in present]
    if missing:
        raise TableError(
            f"{source}: missing column(s) {', '.join(missing)}; a latency table needs the columns "
            f"{', '.join(COLUMNS)} (a file whose header lacks columns is truncated or not a table)"
        )


def parse_columns(raw: Mapping[str, Sequence[Any]], source: str, *, first_line: int = 3) -> dict[str, list[Any]]:
    """Cells as read (CSV text or JSON values) → typed columns; other columns are kept as read.

    Only types are checked here (values: `validate_columns`). Each refusal names the first bad cell and
    the file lines (row 0 is on `first_line`) where it fails.
    """
    check_columns(raw, source)
    out = {name: list(cells) for name, cells in raw.items()}
    for c in (*INT_COLUMNS, *FLOAT_COLUMNS):
        values: list[Any] = []
        blank: list[int] = []
        bad: list[int] = []
        fractional: list[int] = []
        for i, cell in enumerate(raw[c]):
            number = _number(cell)
            if number is None:
                bad.append(i)
                values.append(cell)
            elif math.isnan(number):
                blank.append(i)
                values.append(math.nan)
            elif c in FLOAT_COLUMNS or not math.isfinite(number):
                values.append(number)
            elif number != round(number):
                fractional.append(i)
                values.append(number)
            else:
                values.append(int(number))
        if blank and c not in NAN_ALLOWED:
            raise TableError(
                f"{source}: column {c!r} is empty or NaN at {_lines(blank, first_line)}; the table is incomplete "
                "(an interrupted profile?): re-profile those entries"
            )
        if bad:
            raise TableError(
                f"{source}: column {c!r} must be numeric; got {raw[c][bad[0]]!r} at {_lines(bad, first_line)}"
            )
        if fractional:
            raise TableError(
                f"{source}: column {c!r} must hold integers; got {raw[c][fractional[0]]!r} at "
                f"{_lines(fractional, first_line)}"
            )
        out[c] = values
    for c in BOOL_COLUMNS:
        flags: list[Any] = []
        bad = []
        for i, cell in enumerate(raw[c]):
            text = str(cell).strip().lower()
            if isinstance(cell, bool) or text in ("true", "1", "false", "0"):
                flags.append(cell if isinstance(cell, bool) else text in ("true", "1"))
            else:
                bad.append(i)
        if bad:
            raise TableError(
                f"{source}: column {c!r} must be True or False; got {raw[c][bad[0]]!r} at {_lines(bad, first_line)}"
            )
        out[c] = flags
    for c in STR_COLUMNS:
        out[c] = [None if cell is None or cell == "" else str(cell) for cell in raw[c]]
    return out


def validate_columns(
    columns: Mapping[str, Sequence[Any]],
    source: str,
    *,
    first_line: int = 3,
    precision: str | None = None,
    batch_size: int | None = None,
) -> None:
    """Check typed columns: every refusal says which lines and why, so a bad value never prices a layer.

    `precision` and `batch_size` are the header's: one table holds one of each.
    """
    check_columns(columns, source)

    def where(rows: Sequence[int]) -> str:
        return _lines(rows, first_line)

    for c in STR_COLUMNS:
        rows = [i for i, v in enumerate(columns[c]) if _is_missing(v)]
        if rows:
            raise TableError(f"{source}: column {c!r} is empty at {where(rows)}")
    for c, allowed in (("kind", LAYER_KINDS), ("activation", ACTIVATIONS), ("precision", PRECISIONS)):
        rows = [i for i, v in enumerate(columns[c]) if v not in allowed]
        if rows:
            raise TableError(
                f"{source}: column {c!r} must be one of {allowed}; got {columns[c][rows[0]]!r} at {where(rows)}"
            )
    for c in (*INT_COLUMNS, *FLOAT_COLUMNS):
        rows = [] if c in NAN_ALLOWED else [i for i, v in enumerate(columns[c]) if not _is_finite(v)]
        if rows:
            raise TableError(
                f"{source}: column {c!r} holds NaN or infinity at {where(rows)}; "
                "re-profile those entries (a failed measurement must not enter a budget)"
            )
    for c, low in (*((c, 1) for c in _POSITIVE_COLUMNS), ("pad_h", 0), ("pad_w", 0)):
        rows = [i for i, v in enumerate(columns[c]) if v < low]
        if rows:
            raise TableError(f"{source}: column {c!r} must be >= {low}; got {columns[c][rows[0]]} at {where(rows)}")
    cin, cout, groups = columns["in_channels"], columns["out_channels"], columns["groups"]
    rows = [i for i, g in enumerate(groups) if cin[i] % g or cout[i] % g]
    if rows:
        raise TableError(f"{source}: 'groups' must divide in_channels and out_channels at {where(rows)}")
    for c in _LATENCY_COLUMNS:
        rows = [i for i, v in enumerate(columns[c]) if v <= 0]
        if rows:
            raise TableError(
                f"{source}: latency column {c!r} must be positive; got {columns[c][rows[0]]} at {where(rows)} "
                f"({c} must be a positive number of ms: anything else is a failed measurement): "
                "re-profile those entries"
            )
    med, q1, q3 = columns["median_ms"], columns["q1_ms"], columns["q3_ms"]
    rows = [i for i, m in enumerate(med) if q1[i] > m * (1 + _ORDER_RTOL) or m > q3[i] * (1 + _ORDER_RTOL)]
    if rows:
        i = rows[0]
        raise TableError(
            f"{source}: quartiles out of order (need q1_ms <= median_ms <= q3_ms); got "
            f"{q1[i]} / {med[i]} / {q3[i]} at {where(rows)}"
        )
    for c, want in (("precision", precision), ("batch_size", batch_size)):
        rows = [] if want is None else [i for i, v in enumerate(columns[c]) if v != want]
        if rows:
            raise TableError(
                f"{source}: column {c!r} must equal the header's {c} {want!r} in every row; got "
                f"{columns[c][rows[0]]!r} at {where(rows)} (one table holds one precision and batch size: "
                "split the file)"
            )
    keys = list(zip(*(columns[c] for c in SPEC_COLUMNS)))
    counts = Counter(keys)
    rows = [i for i, k in enumerate(keys) if counts[k] > 1]
    if rows:
        raise TableError(
            f"{source}: duplicate layer specs at {where(rows)}; each spec must appear once "
            "(merge re-measurements with `LatencyTable.concat(..., on_duplicate=...)`)"
        )


def parse_body(body: str, meta: Mapping[str, Any], source: str) -> dict[str, list[Any]]:
    """The text after line 1 (see `read_header`) → typed, validated columns, in file order.

    Raises:
        TableError: malformed CSV, a missing column, fewer or more rows than `meta["rows"]` (a truncated
            or edited file), or a bad value (see `parse_columns` and `validate_columns`).
    """
    if not body.strip():
        raise TableError(f"{source}: the CSV header (line 2) is missing; the file is truncated: re-profile")
    reader = csv.reader(io.StringIO(body))
    rows: list[list[str]] = []
    try:
        header = next(reader)
        for cells in reader:
            if not cells:  # a blank line
                continue
            if len(cells) > len(header):
                raise TableError(
                    f"{source}: malformed CSV: line {reader.line_num + 1} has {len(cells)} fields but the header "
                    f"(line 2) has {len(header)}; the file is corrupted: re-profile"
                )
            rows.append(cells)
    except csv.Error as exc:
        raise TableError(f"{source}: malformed CSV ({exc}); the file is corrupted: re-profile") from None
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise TableError(f"{source}: malformed CSV: the header (line 2) names {', '.join(twice)} more than once")
    check_columns(header, source)
    if len(rows) != meta["rows"]:
        raise TableError(
            f"{source}: the header says {meta['rows']} rows but the file holds {len(rows)}; the file is truncated "
            "or was edited: re-profile (resume keeps the rows already measured)"
        )
    # a row cut short (a truncated last line) reads as blank cells, which parse_columns refuses by line
    raw = {name: [cells[j] if j < len(cells) else "" for cells in rows] for j, name in enumerate(header)}
    columns = parse_columns(raw, source)
    validate_columns(columns, source, precision=meta["precision"], batch_size=meta["batch_size"])
    return columns


def entries_from_columns(columns: Mapping[str, Sequence[Any]]) -> list[Entry]:
    """(spec, measurement) pairs of columns checked by `validate_columns`."""
    return [
        (LayerSpec.from_row(dict(zip(SPEC_COLUMNS, spec))), Measurement(*measurement))
        for spec, measurement in zip(
            zip(*(columns[c] for c in SPEC_COLUMNS)), zip(*(columns[c] for c in MEASUREMENT_COLUMNS))
        )
    ]


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
    missing = missing_meta(header)
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
        handle.write(header_line(header))
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for spec, m in entries:
            row = entry_row(spec, m)
            writer.writerow([_cell(row[c]) for c in COLUMNS])

    out = atomic_write(path, _write)
    _log.info("wrote latency table %s (%d rows, %s on %s)", out, len(entries), header["backend"], header["device"])
    return out


def read_table(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[Entry]]:
    """Read a table written by `write_table` (or `hwdsa.lut.LatencyTable.write`): (metadata, entries).

    The same checks as `hwdsa.lut.LatencyTable.read`, without pandas: for the board and for resuming.

    Raises:
        TableError: missing, not a table, another schema version, truncated (fewer rows than the header
            says), or a bad value; the message names the line.
    """
    meta, body = read_header(path)
    return meta, entries_from_columns(parse_body(body, meta, str(Path(path))))


def partial_path(out_path: str | os.PathLike[str]) -> Path:
    """Where a run writing `out_path` keeps its finished entries until the table is complete."""
    p = Path(out_path)
    return p.with_name(p.name + PARTIAL_SUFFIX)


def run_identity(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata that must match for measurements to belong in the same table (no host/time).

    The protocol of a table written before `TimingProtocol` lost its (always empty) `extra` field carries
    `"extra": {}`; it is left out, so such a table is extended and resumed as before.
    """
    identity = {k: v for k, v in meta.items() if k not in _VOLATILE_META}
    protocol = identity.get("protocol")
    if isinstance(protocol, Mapping) and "extra" in protocol and not protocol["extra"]:
        identity["protocol"] = {k: v for k, v in protocol.items() if k != "extra"}
    return identity


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
                row = {**obj["spec"], **obj["measurement"]}
                # one row of a table: the table's rules, with this line's number in messages
                columns = parse_columns({k: [v] for k, v in row.items()}, str(self.path), first_line=n)
                validate_columns(columns, str(self.path), first_line=n)
                [(spec, m)] = entries_from_columns(columns)
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
    "BOOL_COLUMNS",
    "COLUMNS",
    "FLOAT_COLUMNS",
    "INT_COLUMNS",
    "MAGIC",
    "NAN_ALLOWED",
    "REQUIRED_META",
    "SCHEMA_VERSION",
    "STR_COLUMNS",
    "SUPPORTED_SCHEMA_VERSIONS",
    "Entry",
    "PartialLog",
    "check_columns",
    "check_conditions",
    "check_header",
    "check_schema_version",
    "entries_from_columns",
    "header_line",
    "make_meta",
    "missing_meta",
    "parse_body",
    "parse_columns",
    "partial_path",
    "read_header",
    "read_table",
    "run_identity",
    "validate_columns",
    "write_table",
]
