"""The per-user cache of latency tables: each host is a device to learn once, then reused.

Where: `$HWDSA_CACHE`, else `$XDG_CACHE_HOME/hwdsa`, else `~/.cache/hwdsa` (`cache_dir`). One flat folder
of ordinary table files (`hwdsa.profilers.tablefile`), named by what decides whether a table applies::

    <backend>-<precision>-b<batch>[-t<threads>]-<fingerprint_id>[-<model>].csv
    e.g. onnxruntime-fp32-b1-t4-7a9b5131f1f2.csv

Why these keys: latency transfers between none of them. The fingerprint id names the device (CPU
model, ISA flags, cores, caches; or GPU, capability, driver: `hwdsa.profilers.device`), not the host
name, so two machines of one kind share a name and one machine keeps its tables across sessions, while a
Xeon with AVX-512 and an EPYC with AVX2 never share a file. Backend, precision and batch size are the
table's own conditions (one table holds one of each), and a CPU table also depends on its thread count.
The model is optional: by default one table per device and backend collects every network's layers
(`hwdsa profile` extends it and measures shared shapes once). The name is a convenience; the header is
what is checked (`find_cached_tables` filters on it, `TableMeta.host_differences` compares devices).

Nothing here writes: tables are written by `write_table`/`LatencyTable.write`, which write a temporary
file beside the target, fsync it and rename it over (`hwdsa._io.atomic_write`), so a reader of the cache
never sees half a table; the temporary files (".<name>.*.tmp") and partial logs are skipped when listing.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

from hwdsa.errors import ConfigError, TableError
from hwdsa.profilers.base import PRECISIONS
from hwdsa.profilers.tablefile import read_header

from .table import TableMeta

_log = logging.getLogger(__name__)

ENV_VAR = "HWDSA_CACHE"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.]+")


def cache_dir() -> Path:
    """The cache folder (not created here): `$HWDSA_CACHE`, else `$XDG_CACHE_HOME/hwdsa`, else `~/.cache/hwdsa`.

    A relative `$XDG_CACHE_HOME` is ignored, as the XDG base-directory specification says.
    """
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "hwdsa"
    return Path.home() / ".cache" / "hwdsa"


def _part(value: str, what: str) -> str:
    """A file-name-safe form of one key: runs of other characters become "_" ("-" separates keys)."""
    text = _UNSAFE.sub("_", str(value)).strip("_.")
    if not text:
        raise ConfigError(f"cache key {what} {value!r} has no usable characters for a file name")
    return text


def cached_table_path(
    fingerprint_id: str,
    backend: str,
    precision: str,
    batch_size: int,
    threads: int | None = None,
    model: str | None = None,
) -> Path:
    """Where the cache keeps the table of these conditions (see the module docstring for the name).

    Raises:
        ConfigError: an unknown precision, a batch size or thread count below 1, or an empty key.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    for what, value in (("batch_size", batch_size), ("threads", threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{what} must be a positive integer; got {value!r}")
    parts = [_part(backend, "backend"), precision, f"b{batch_size}"]
    if threads is not None:
        parts.append(f"t{threads}")
    parts.append(_part(fingerprint_id, "fingerprint_id"))
    if model:
        parts.append(_part(model, "model"))
    return cache_dir() / ("-".join(parts) + ".csv")


def list_cached_tables(directory: str | os.PathLike[str] | None = None) -> list[tuple[Path, TableMeta]]:
    """(path, metadata) of every readable table in the cache (default `cache_dir()`), by file name.

    Only headers are checked; a file that is not a readable table is skipped with a warning.
    """
    root = Path(directory) if directory is not None else cache_dir()
    if not root.is_dir():
        return []
    out: list[tuple[Path, TableMeta]] = []
    for path in sorted(root.glob("*.csv")):
        if path.name.startswith(".") or not path.is_file():  # an atomic write in progress
            continue
        try:
            obj, _ = read_header(path)
            meta = TableMeta.from_json(obj)
        except TableError as exc:
            _log.warning("skipping %s in the table cache: %s", path, exc)
            continue
        out.append((path, meta))
    return out


def find_cached_tables(
    fingerprint_id: str | None = None,
    backend: str | None = None,
    precision: str | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
    *,
    directory: str | os.PathLike[str] | None = None,
) -> list[tuple[Path, TableMeta]]:
    """The cached tables whose header matches every condition given (None: any), as `list_cached_tables`.

    Matched on the metadata, not the file name: `threads` against the recorded backend option
    "num_threads", `fingerprint_id` against the id of the recorded fingerprint (tables without one never match it).
    """
    found = []
    for path, meta in list_cached_tables(directory):
        options = meta.extra.get("backend_options")
        recorded_threads = options.get("num_threads") if isinstance(options, Mapping) else None
        if (
            (fingerprint_id is None or meta.fingerprint_id == fingerprint_id)
            and (backend is None or meta.backend == backend)
            and (precision is None or meta.precision == precision)
            and (batch_size is None or meta.batch_size == batch_size)
            and (threads is None or recorded_threads == threads)
        ):
            found.append((path, meta))
    return found


__all__ = ["ENV_VAR", "cache_dir", "cached_table_path", "find_cached_tables", "list_cached_tables"]
