"""`hwdsa info`: this host as a device: its fingerprints, backends, and the cached tables that fit it.

A latency table is valid only on the device it was measured on, and the machines hwdsa runs on differ
(an Intel Xeon with AVX-512 one session, an AMD EPYC with AVX2 the next). This prints what `hwdsa profile`
records in a table's header (the CPU fingerprint and its id; each CUDA device's), the backends that can
run here with their library versions, the table cache (`hwdsa.lut.cache`), and for each cached table
whether it was measured on this host, and if not, what differs.
"""

from __future__ import annotations

import argparse
import json
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwdsa._version import __version__
from hwdsa.errors import TableError

from ._common import format_table

if TYPE_CHECKING:
    from hwdsa.lut.table import TableMeta

#: Versions every backend records; the listing shows the backend's own libraries.
_COMMON_VERSIONS = ("python", "hwdsa")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--table", action="append", default=[], metavar="PATH",
        help="also check this table file against this host (repeatable)",
    )  # fmt: skip
    p.add_argument("--no-backends", action="store_true", help="skip the backend check (it imports each backend's library)")


def _cuda_devices() -> tuple[list[dict[str, Any]], str | None]:
    """The fingerprint of every CUDA device, and why there are none (None when there are some)."""
    from hwdsa.profilers.device import cuda_fingerprints

    try:
        return cuda_fingerprints(), None
    except Exception as exc:  # no driver (BackendUnavailableError), or a broken one: report, never fail
        return [], str(exc)


def _backends() -> list[dict[str, Any]]:
    """Every registered backend (`list_backends`), with its libraries' versions where it can run."""
    from hwdsa.profilers.backend import get_backend, list_backends

    out = []
    for info in list_backends(check_availability=True):
        versions: dict[str, str] = {}
        if info.available:
            try:
                versions = {k: v for k, v in get_backend(info.name).versions().items() if k not in _COMMON_VERSIONS}
            except Exception as exc:  # a backend that checks out but cannot be built with defaults
                versions = {"error": f"{type(exc).__name__}: {exc}"}
        out.append(
            {
                "name": info.name,
                "description": info.description,
                "available": bool(info.available),
                "reason": info.reason,
                "versions": versions,
            }
        )
    return out


def _table_record(path: Path, meta: TableMeta) -> dict[str, Any]:
    differences = meta.host_differences()  # this host's fingerprint of the table's kind (CPU, or its GPU)
    options = meta.extra.get("backend_options")
    threads = options.get("num_threads") if isinstance(options, Mapping) else None
    return {
        "path": str(path),
        "device": meta.device,
        "backend": meta.backend,
        "precision": meta.precision,
        "batch_size": meta.batch_size,
        "threads": threads,
        "fingerprint_id": meta.fingerprint_id,
        "matches_host": not differences,
        "compared_by": "fingerprint" if meta.fingerprint is not None else "device name",
        "differences": differences,
    }


def collect(tables: list[str], *, backends: bool = True) -> dict[str, Any]:
    """Everything `hwdsa info` prints, as one JSON-ready object."""
    from hwdsa.lut.cache import ENV_VAR, cache_dir, list_cached_tables
    from hwdsa.lut.table import TableMeta
    from hwdsa.profilers.device import cpu_fingerprint, describe_fingerprint, fingerprint_id
    from hwdsa.profilers.tablefile import read_header

    cpu = cpu_fingerprint()
    gpus, no_cuda = _cuda_devices()
    cached = [_table_record(path, meta) for path, meta in list_cached_tables()]
    explicit = []
    for name in tables:
        try:
            obj, _ = read_header(name)
            meta = TableMeta.from_json(obj)
        except TableError as exc:
            explicit.append({"path": name, "error": str(exc)})
            continue
        explicit.append(_table_record(Path(name), meta))
    root = cache_dir()
    return {
        "hwdsa": __version__,
        "host": socket.gethostname(),
        "cpu": {"description": describe_fingerprint(cpu), "fingerprint_id": fingerprint_id(cpu), "fingerprint": cpu},
        "cuda": {
            "devices": [
                {"index": i, "description": describe_fingerprint(fp), "fingerprint_id": fingerprint_id(fp), "fingerprint": fp}
                for i, fp in enumerate(gpus)
            ],
            "unavailable": no_cuda,
        },
        "backends": _backends() if backends else None,
        "cache": {"dir": str(root), "exists": root.is_dir(), "env_var": ENV_VAR, "tables": cached},
        "tables": explicit,
    }


def _match_text(record: Mapping[str, Any]) -> str:
    if "error" in record:
        return "unreadable (below)"
    if record["matches_host"]:
        return "yes" if record["compared_by"] == "fingerprint" else "yes (by device name: the table has no fingerprint)"
    n = len(record["differences"])
    return f"no: {n} difference{'s' if n != 1 else ''} (below)"


def _tables_text(records: list[dict[str, Any]]) -> str:
    """The tables as rows, then what differs for each that does not match (or why it is unreadable)."""
    rows = [
        (
            Path(r["path"]).name,
            r.get("backend"),
            r.get("precision"),
            r.get("batch_size"),
            r.get("threads"),
            r.get("fingerprint_id"),
            _match_text(r),
        )
        for r in records
    ]
    lines = [format_table(rows, ("table", "backend", "precision", "batch", "threads", "fingerprint", "this host"))]
    for r in records:
        if "error" in r:
            lines += [f"{Path(r['path']).name}: unreadable:", f"  {r['error']}"]
        elif not r["matches_host"]:
            lines += [f"{Path(r['path']).name} was measured on another device:", *(f"  - {d}" for d in r["differences"])]
    return "\n".join(lines)


def _short(text: str, limit: int = 100) -> str:
    """The first `limit` characters of a long reason (--json has it whole)."""
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def render(info: Mapping[str, Any]) -> str:
    """The text form of `collect`'s object."""
    lines = [f"hwdsa {info['hwdsa']} on {info['host']}", ""]
    cpu = info["cpu"]
    first, *rest = cpu["description"].split("; ")
    lines += [f"CPU   {first}", *(f"      {part}" for part in rest), f"      fingerprint {cpu['fingerprint_id']}"]
    cuda = info["cuda"]
    if cuda["devices"]:
        for d in cuda["devices"]:
            lines += [f"CUDA  {d['index']}: {d['description']}", f"      fingerprint {d['fingerprint_id']}"]
    else:
        lines.append(f"CUDA  none: {_short(str(cuda['unavailable']))}")
    if info["backends"] is not None:
        lines += ["", "Backends (--json, or `python -m hwdsa.profilers list-backends`, for the whole reasons)"]
        rows = [
            (
                b["name"],
                ", ".join(f"{k} {v}" for k, v in b["versions"].items()) or None,
                "available" if b["available"] else f"unavailable: {_short(str(b['reason']), 60)}",
            )
            for b in info["backends"]
        ]
        lines += ["  " + line for line in format_table(rows, ("backend", "versions", "status")).splitlines()]
    cache = info["cache"]
    where = "" if cache["exists"] else " (does not exist yet)"
    lines += ["", f"Table cache  {cache['dir']}{where}  (set ${cache['env_var']} to use another folder)"]
    if cache["tables"]:
        lines += ["  " + line for line in _tables_text(cache["tables"]).splitlines()]
    else:
        lines.append("  no tables yet: `hwdsa profile` measures one")
    if info["tables"]:
        lines += ["", "Tables given with --table"]
        lines += ["  " + line for line in _tables_text(info["tables"]).splitlines()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    info = collect(list(args.table), backends=not args.no_backends)
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0
