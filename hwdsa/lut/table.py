"""LatencyTable: measured per-layer latencies of one device/backend/precision/batch, validated on read.

The file format and its rules belong to `hwdsa.profilers.tablefile` (standard library only, so the edge
agent reads and writes it without pandas); this module adds a pandas frame on top of what that reader
returns. A table is refused (`TableError`) rather than half-trusted: a truncated file, a NaN, a
non-positive median or a duplicate key would otherwise turn into a silently wrong latency budget.
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import pandas as pd

from hwdsa._io import atomic_write
from hwdsa.errors import TableError
from hwdsa.errors import BackendUnavailableError
from hwdsa.profilers.base import MEASUREMENT_COLUMNS, SPEC_COLUMNS, LayerSpec, Measurement
from hwdsa.profilers.device import fingerprint_device_name, fingerprint_differences, fingerprint_id, host_fingerprint
from hwdsa.profilers.tablefile import (
    BOOL_COLUMNS,
    COLUMNS,
    FLOAT_COLUMNS,
    INT_COLUMNS,
    MAGIC,
    REQUIRED_META,
    SCHEMA_VERSION,
    STR_COLUMNS,
    check_conditions,
    check_header,
    check_schema_version,
    header_line,
    now_iso,
    parse_body,
    read_header,
    validate_columns,
)

_log = logging.getLogger(__name__)

# "fingerprint_id" is derived from "fingerprint" (recomputed on write), so it is known but not stored.
_KNOWN_META = (*REQUIRED_META, "versions", "host", "created_at", "protocol", "calibration", "fingerprint", "fingerprint_id")

OnDuplicate = Literal["error", "keep_first", "keep_last", "keep_quietest"]


@dataclass(frozen=True)
class TableMeta:
    """What a table was measured on: one device, backend, precision and batch size.

    `versions` records library versions (backend, driver, torch ...), `protocol` the `TimingProtocol`
    used, `calibration` what end-to-end calibration learned per network (see `hwdsa.lut.calibrate`),
    `fingerprint` the measured device's stable facts (`hwdsa.profilers.device`; None in tables written
    before fingerprints), and `extra` any metadata keys this version of hwdsa does not know (kept on rewrite).
    """

    device: str
    backend: str
    precision: str
    batch_size: int
    versions: Mapping[str, Any] = field(default_factory=dict, hash=False)
    host: str = ""
    created_at: str = ""
    protocol: Mapping[str, Any] = field(default_factory=dict, hash=False)
    calibration: Mapping[str, Any] = field(default_factory=dict, hash=False)
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)
    schema_version: int = SCHEMA_VERSION
    fingerprint: Mapping[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        check_schema_version(self.schema_version, "table metadata")
        conditions = {k: getattr(self, k) for k in ("device", "backend", "precision", "batch_size")}
        check_conditions(conditions, "table metadata")
        for name in ("versions", "protocol", "calibration", "extra"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise TableError(f"table metadata: {name!r} must be a JSON object; got {type(value).__name__}")
            # Own a deep copy, so a caller mutating its dict cannot change a frozen record.
            object.__setattr__(self, name, copy.deepcopy(dict(value)))
        if self.fingerprint is not None:
            if not isinstance(self.fingerprint, Mapping) or not isinstance(self.fingerprint.get("kind"), str):
                raise TableError(
                    f"table metadata: 'fingerprint' must be a JSON object with a 'kind'; got {self.fingerprint!r}"
                )
            object.__setattr__(self, "fingerprint", copy.deepcopy(dict(self.fingerprint)))
        _ = self.channel_multiple  # refuse a malformed value on load, not at first use

    def to_json(self, rows: int) -> dict[str, Any]:
        """The metadata object of the file header (with the row count the reader checks)."""
        obj: dict[str, Any] = {
            "schema_version": self.schema_version,
            "device": self.device,
            "backend": self.backend,
            "precision": self.precision,
            "batch_size": self.batch_size,
            "versions": dict(self.versions),
            "host": self.host,
            "created_at": self.created_at,
            "rows": rows,
            "protocol": dict(self.protocol),
        }
        if self.calibration:
            obj["calibration"] = dict(self.calibration)
        if self.fingerprint is not None:
            obj["fingerprint"] = dict(self.fingerprint)
            obj["fingerprint_id"] = self.fingerprint_id
        for key, value in self.extra.items():
            obj.setdefault(key, value)
        return obj

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> TableMeta:
        """Parse a header object, checked by `hwdsa.profilers.tablefile.check_header`; `rows` is not stored."""
        check_header(obj, "table metadata")
        return cls(
            device=obj["device"],
            backend=obj["backend"],
            precision=obj["precision"],
            batch_size=obj["batch_size"],
            versions=obj.get("versions") or {},
            host=str(obj.get("host") or ""),
            created_at=str(obj.get("created_at") or ""),
            protocol=obj.get("protocol") or {},
            calibration=obj.get("calibration") or {},
            extra={k: v for k, v in obj.items() if k not in _KNOWN_META},
            schema_version=obj["schema_version"],
            fingerprint=obj.get("fingerprint"),
        )

    @property
    def channel_multiple(self) -> int:
        """The channel alignment the backend's fast kernels need (``"channel_multiple"``; 1 when absent).

        See `hwdsa.profilers.Backend.channel_multiple`: calibration and rounding stay on this lattice.
        """
        value = self.extra.get("channel_multiple", 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TableError(f"table metadata: 'channel_multiple' must be a positive integer; got {value!r}")
        return value

    @property
    def networks(self) -> list[str]:
        """The models whose layers the table was profiled for (``"networks"``; empty for a table without the record)."""
        value = self.extra.get("networks", {})
        if not isinstance(value, Mapping):
            raise TableError(f"table metadata: 'networks' must map model names to their profiling; got {value!r}")
        return sorted(value)

    @property
    def fingerprint_id(self) -> str | None:
        """The id of `fingerprint` (`hwdsa.profilers.device.fingerprint_id`), or None for a table without one."""
        return None if self.fingerprint is None else fingerprint_id(self.fingerprint)

    def host_differences(self, current_fingerprint: Mapping[str, Any] | None = None) -> list[str]:
        """How the device this table was measured on differs from this host's, one line each ([]: the same).

        Args:
            current_fingerprint: this host's fingerprint of the table's device kind (`cpu_fingerprint()`,
                `cuda_fingerprint(i)`). None: computed here, for the GPU the table's "device" option
                names; a table of a CUDA device checked on a host without one then gets a line saying so.

        A table without a fingerprint (written before hwdsa recorded them) is compared by its `device`
        name only, and its line says so: the same name is then taken as the same device.
        """
        if current_fingerprint is None:
            kind = self.fingerprint.get("kind") if self.fingerprint is not None else None
            options = self.extra.get("backend_options")
            index = options.get("device", 0) if isinstance(options, Mapping) else 0
            index = index if isinstance(index, int) and not isinstance(index, bool) else 0
            if kind is None:  # an old table: a GPU backend records the GPU's index among its options
                kind = "cuda" if isinstance(options, Mapping) and "device" in options else "cpu"
            if kind not in ("cpu", "cuda"):  # a third-party backend's device: only its backend can name it
                return [
                    f"device: {self.device!r} in the table, a {kind!r} device that cannot be checked here without "
                    "its backend (pass the backend's fingerprint, hwdsa.profilers.device.backend_fingerprint)"
                ]
            try:
                current_fingerprint = host_fingerprint(kind, index)
            except BackendUnavailableError as exc:
                return [f"device: {self.device!r} in the table, no CUDA device {index} here ({exc})"]
        if self.fingerprint is None:
            here = fingerprint_device_name(current_fingerprint)
            if self.device == here:
                return []
            return [
                f"device: {self.device!r} in the table, {here!r} here (the table predates device fingerprints, "
                "so only the device names were compared)"
            ]
        return fingerprint_differences(self.fingerprint, current_fingerprint)

    def describe(self) -> str:
        """One line naming the conditions, for messages."""
        return f"device={self.device!r} backend={self.backend!r} precision={self.precision} batch={self.batch_size}"


def _spec_key(spec: LayerSpec) -> tuple[Any, ...]:
    return tuple(spec.to_row().values())


def _empty_frame() -> pd.DataFrame:
    return _normalise(pd.DataFrame({c: [] for c in COLUMNS}))


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Canonical column order and dtypes, so a table built in memory equals the same table read back."""
    out = frame.loc[:, list(COLUMNS) + [c for c in frame.columns if c not in COLUMNS]].copy()
    for c in INT_COLUMNS:
        out[c] = out[c].astype("int64")
    for c in FLOAT_COLUMNS:
        out[c] = out[c].astype("float64")
    for c in STR_COLUMNS:
        out[c] = out[c].astype(object)
    for c in BOOL_COLUMNS:
        out[c] = out[c].astype(bool)
    return out.reset_index(drop=True)


class LatencyTable:
    """Median latency in ms of every profiled `LayerSpec`, with the conditions it was measured in.

    `frame` has one row per spec (columns `COLUMNS`); treat it as read-only. Build one from
    measurements with `from_measurements`, or `read` a file. `lookup` never invents a value: an
    entry that was not profiled raises `TableError`.
    """

    def __init__(self, frame: pd.DataFrame, meta: TableMeta, *, source: str = "latency table") -> None:
        # the file's rules, applied to a frame built in memory (tolist: Python scalars, NaN as float)
        columns = {str(c): frame[c].tolist() for c in frame.columns}
        validate_columns(columns, source, precision=meta.precision, batch_size=meta.batch_size)
        self._set(frame, meta)

    def _set(self, frame: pd.DataFrame, meta: TableMeta) -> None:
        """Adopt rows already validated (by the constructor, or by `parse_body` in `read`)."""
        self.frame = _normalise(frame)
        self.meta = meta
        self._index: dict[tuple[Any, ...], int] | None = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_measurements(
        cls,
        items: Iterable[tuple[LayerSpec, Measurement]],
        *,
        device: str,
        backend: str,
        precision: str = "fp32",
        batch_size: int = 1,
        versions: Mapping[str, Any] | None = None,
        protocol: Mapping[str, Any] | None = None,
        host: str | None = None,
    ) -> LatencyTable:
        """A table from (spec, measurement) pairs, stamped with this host and the current time."""
        rows = [{**spec.to_row(), **m.to_row()} for spec, m in items]
        frame = pd.DataFrame(rows, columns=list(COLUMNS)) if rows else _empty_frame()
        meta = TableMeta(
            device=device,
            backend=backend,
            precision=precision,
            batch_size=batch_size,
            versions=versions or {"python": platform.python_version()},
            host=socket.gethostname() if host is None else host,
            created_at=now_iso(),
            protocol=protocol or {},
        )
        return cls(frame, meta)

    @classmethod
    def read(
        cls,
        path: str | os.PathLike[str],
        *,
        expect_device: str | None = None,
        expect_backend: str | None = None,
        expect_precision: str | None = None,
        expect_batch_size: int | None = None,
    ) -> LatencyTable:
        """Read and validate a table file; refuse one measured under other conditions than expected.

        Raises:
            TableError: the file is missing, malformed, truncated, holds an invalid value, or was
                measured on another device/backend/precision/batch size than an `expect_*` names.
        """
        source = str(Path(path))
        obj, body = read_header(path)
        meta = TableMeta.from_json(obj)
        cls._check_expectations(meta, source, expect_device, expect_backend, expect_precision, expect_batch_size)
        columns = parse_body(body, obj, source)  # already validated: do not check every row twice
        table = cls.__new__(cls)
        table._set(pd.DataFrame(columns), meta)
        return table

    @staticmethod
    def _check_expectations(
        meta: TableMeta,
        source: str,
        device: str | None,
        backend: str | None,
        precision: str | None,
        batch_size: int | None,
    ) -> None:
        for what, want, got in (
            ("device", device, meta.device),
            ("backend", backend, meta.backend),
            ("precision", precision, meta.precision),
            ("batch_size", batch_size, meta.batch_size),
        ):
            if want is not None and want != got:
                raise TableError(
                    f"{source}: measured with {what} {got!r}, expected {want!r}; latency does not transfer "
                    f"between {what}s: profile this {what} with `hwdsa profile` or pick its table"
                )

    # ---------------------------------------------------------------- output
    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the table atomically: a reader never sees a half-written file."""

        def _write(handle: IO[Any]) -> None:
            handle.write(header_line(self.meta.to_json(len(self.frame))))
            self.frame.to_csv(handle, index=False, lineterminator="\n")

        return atomic_write(path, _write)

    # ---------------------------------------------------------------- queries
    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        return f"LatencyTable({len(self)} rows, {self.meta.describe()})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencyTable):
            return NotImplemented
        return self.meta == other.meta and self.frame.equals(other.frame)

    __hash__ = None  # type: ignore[assignment]  # mutable frame inside

    def _key_index(self) -> dict[tuple[Any, ...], int]:
        if self._index is None:
            keys = self.frame.loc[:, list(SPEC_COLUMNS)].itertuples(index=False, name=None)
            self._index = {tuple(_py(v) for v in k): i for i, k in enumerate(keys)}
        return self._index

    def __contains__(self, spec: object) -> bool:
        return isinstance(spec, LayerSpec) and _spec_key(spec) in self._key_index()

    def specs(self) -> list[LayerSpec]:
        """Every spec of the table, in row order."""
        return [LayerSpec.from_row(r) for r in self.frame.loc[:, list(SPEC_COLUMNS)].to_dict("records")]

    def lookup(self, spec: LayerSpec) -> float:
        """Median latency in ms of `spec`.

        Raises:
            TableError: `spec` was not profiled (a missing entry is never priced as 0 ms).
        """
        i = self._key_index().get(_spec_key(spec))
        if i is None:
            raise TableError(
                f"no entry for {spec} in the latency table ({self.meta.describe()}, {len(self)} rows); "
                "profile it (`hwdsa profile` with the network's grid) and merge the result"
            )
        return float(self.frame["median_ms"].iat[i])

    def measurement(self, spec: LayerSpec) -> Measurement:
        """The full measurement of `spec` (quartiles, repeats, noise flag)."""
        self.lookup(spec)  # raises the standard error for a missing entry
        row = self.frame.iloc[self._key_index()[_spec_key(spec)]]
        return Measurement(**{c: _py(row[c]) for c in MEASUREMENT_COLUMNS})

    def missing(self, specs: Iterable[LayerSpec]) -> list[LayerSpec]:
        """The specs of `specs` that the table lacks (deduplicated, in first-seen order)."""
        index = self._key_index()
        return list(dict.fromkeys(s for s in specs if _spec_key(s) not in index))

    # ---------------------------------------------------------------- derived tables
    def with_meta(self, **changes: Any) -> LatencyTable:
        """The same rows with some metadata fields replaced (e.g. `calibration=`)."""
        return LatencyTable(self.frame, replace(self.meta, **changes))

    @classmethod
    def concat(
        cls,
        tables: Sequence[LatencyTable],
        *,
        on_duplicate: OnDuplicate = "error",
        allow_version_mismatch: bool = False,
    ) -> LatencyTable:
        """Merge tables measured on the same device, backend, precision and batch size.

        `on_duplicate` decides what a spec measured in several tables becomes: `"error"` refuses,
        `"keep_first"`/`"keep_last"` keep one by table order, `"keep_quietest"` the one with the
        smallest relative interquartile range. Calibrations are dropped: they were fitted to the old
        rows and must be refitted on the merged table.
        """
        if not tables:
            raise TableError("concat needs at least one table")
        if on_duplicate not in ("error", "keep_first", "keep_last", "keep_quietest"):
            raise TableError(
                f"on_duplicate must be 'error', 'keep_first', 'keep_last' or 'keep_quietest'; got {on_duplicate!r}"
            )
        head = tables[0].meta
        for i, t in enumerate(tables[1:], start=1):
            for what in ("device", "backend", "precision", "batch_size"):
                if getattr(t.meta, what) != getattr(head, what):
                    raise TableError(
                        f"cannot merge table {i} ({t.meta.describe()}) into table 0 ({head.describe()}): "
                        f"{what} differs; tables merge only when measured under the same conditions"
                    )
            if dict(t.meta.versions) != dict(head.versions):
                if not allow_version_mismatch:
                    raise TableError(
                        f"cannot merge table {i}: library versions differ ({dict(t.meta.versions)} vs "
                        f"{dict(head.versions)}); re-profile, or pass allow_version_mismatch=True if you "
                        "know the difference does not change latency"
                    )
                _log.warning("merging tables with different versions: %s vs %s", dict(t.meta.versions), dict(head.versions))
            if dict(t.meta.protocol) != dict(head.protocol):
                _log.warning("merging tables measured with different timing protocols; keeping table 0's record")
        frames = []
        for order, t in enumerate(tables):
            f = t.frame.copy()
            f["_order"] = order
            frames.append(f)
        merged = pd.concat(frames, ignore_index=True)
        dup = merged.duplicated(subset=list(SPEC_COLUMNS), keep=False)
        if dup.any():
            n = int(merged[dup].drop_duplicates(subset=list(SPEC_COLUMNS)).shape[0])
            if on_duplicate == "error":
                first = LayerSpec.from_row(merged[dup].iloc[0][list(SPEC_COLUMNS)].to_dict())
                raise TableError(
                    f"{n} spec(s) appear in more than one table (first: {first}); pass on_duplicate="
                    "'keep_first', 'keep_last' or 'keep_quietest'"
                )
            if on_duplicate == "keep_quietest":
                merged["_rel_iqr"] = (merged["q3_ms"] - merged["q1_ms"]) / merged["median_ms"]
                merged = merged.sort_values(["_rel_iqr", "_order"], kind="stable")
                merged = merged.drop_duplicates(subset=list(SPEC_COLUMNS), keep="first").sort_index()
                merged = merged.drop(columns="_rel_iqr")
            else:
                keep: Literal["first", "last"] = "first" if on_duplicate == "keep_first" else "last"
                merged = merged.drop_duplicates(subset=list(SPEC_COLUMNS), keep=keep)
            _log.info("merged tables: %d duplicate spec(s) resolved with %s", n, on_duplicate)
        merged = merged.drop(columns="_order")
        if any(t.meta.calibration for t in tables):
            _log.info("merged table drops its calibrations: refit them on the merged rows")
        meta = replace(head, created_at=now_iso(), calibration={})
        return cls(merged, meta)

    def merge(self, other: LatencyTable, *, on_duplicate: OnDuplicate = "error") -> LatencyTable:
        """`concat([self, other])`."""
        return LatencyTable.concat([self, other], on_duplicate=on_duplicate)


def _py(value: Any) -> Any:
    """numpy scalar → Python scalar (so keys hash like `LayerSpec.to_row()` values)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------- packaged tables
def packaged_tables() -> dict[str, Path]:
    """Measured tables shipped with hwdsa (`lut/tables/*.csv`), by file stem.

    `lut/tables/README.md` says how each one was measured and how to reproduce it.
    """
    root = resources.files("hwdsa.lut") / "tables"
    out: dict[str, Path] = {}
    if not root.is_dir():
        return out
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".csv") and entry.is_file():
            out[entry.name[: -len(".csv")]] = Path(str(entry))
    return out


def load_packaged_table(name: str, **expect: Any) -> LatencyTable:
    """Read the packaged table `name` (see `packaged_tables()`); `expect` as in `LatencyTable.read`."""
    tables = packaged_tables()
    if name not in tables:
        raise TableError(f"no packaged latency table {name!r}; packaged: {', '.join(tables) or '(none)'}")
    return LatencyTable.read(tables[name], **expect)


__all__ = [
    "COLUMNS",
    "MAGIC",
    "SCHEMA_VERSION",
    "LatencyTable",
    "TableMeta",
    "load_packaged_table",
    "packaged_tables",
]
