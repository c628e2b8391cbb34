"""Profile bundles: what the host hands to a board that cannot run hwdsa's host side (no torch, no pandas).

On the host, `write_bundle(specs, dir)` exports each distinct spec to a tiny ONNX file and writes
`specs.json` (format, precision, batch size, and per entry the spec, its file, input shape and SHA-256).
On the board, `python -m hwdsa.profilers run dir --backend onnxruntime --out table.csv` reads it with
the standard library (`read_bundle`), times each file with an ONNX backend (`run_bundle`), and writes
the table; copy the table back. Only `write_bundle` needs torch, and it imports it when called.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwdsa._version import __version__
from hwdsa.errors import ConfigError

from .backend import OnnxBackend, get_backend, get_backend_class
from .base import LayerSpec, TimingProtocol
from .runner import OnEntry, profile_specs
from .specs import common_precision_and_batch, dedupe_specs, input_shape, spec_from_json
from .tablefile import Entry, now_iso

_log = logging.getLogger(__name__)

BUNDLE_FORMAT = "hwdsa-profile-bundle"
BUNDLE_SCHEMA_VERSION = 1
SPECS_FILE = "specs.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A bundle directory as read back: one ONNX file per distinct spec, all of one precision and batch."""

    path: Path
    precision: str
    batch_size: int
    entries: tuple[tuple[LayerSpec, Path], ...]
    info: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def specs(self) -> list[LayerSpec]:
        return [s for s, _ in self.entries]

    @property
    def onnx_files(self) -> dict[LayerSpec, Path]:
        return dict(self.entries)


def write_bundle(
    specs: Iterable[LayerSpec], out_dir: str | os.PathLike[str], *, overwrite: bool = False, opset: int | None = None
) -> Bundle:
    """Export each distinct spec to ONNX and write a bundle directory (host side: needs torch and onnx).

    The directory is assembled beside `out_dir` and renamed into place, so an interrupted export never
    leaves a half bundle at `out_dir`.

    Raises:
        ConfigError: no specs, mixed precisions or batch sizes, or `out_dir` exists and `overwrite` is False.
    """
    from .layers import onnx_from_spec

    unique = dedupe_specs(specs)
    precision, batch_size = common_precision_and_batch(unique)
    target = Path(out_dir)
    if target.exists() and not overwrite:
        raise ConfigError(f"bundle directory {target} already exists; choose another path or pass overwrite=True")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        entries = []
        for i, spec in enumerate(unique):
            name = f"layer_{i:05d}.onnx"
            onnx_from_spec(spec, tmp / name, opset=opset)
            entries.append(
                {"spec": spec.to_row(), "onnx": name, "input_shape": list(input_shape(spec)), "sha256": _sha256(tmp / name)}
            )
        doc = {
            "format": BUNDLE_FORMAT,
            "schema_version": BUNDLE_SCHEMA_VERSION,
            "precision": precision,
            "batch_size": batch_size,
            "created_at": now_iso(),
            "hwdsa_version": __version__,
            "entries": entries,
        }
        (tmp / SPECS_FILE).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _log.info("wrote bundle %s: %d layer(s), %s, batch %d", target, len(unique), precision, batch_size)
    return read_bundle(target, verify=False)


def read_bundle(path: str | os.PathLike[str], *, verify: bool = True) -> Bundle:
    """Read a bundle directory (standard library only); `verify` checks each file's SHA-256.

    Raises:
        ConfigError: not a bundle, an unsupported schema, a missing or altered ONNX file, a bad spec.
    """
    root = Path(path)
    doc_path = root / SPECS_FILE
    try:
        doc = json.loads(doc_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{root} is not a profile bundle: it has no {SPECS_FILE} (make one on the host with "
            "`python -m hwdsa.profilers bundle`)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {doc_path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT:
        raise ConfigError(f"{doc_path} is not a profile bundle description (need \"format\": {BUNDLE_FORMAT!r})")
    if doc.get("schema_version") != BUNDLE_SCHEMA_VERSION:
        raise ConfigError(
            f"{doc_path}: bundle schema_version {doc.get('schema_version')!r} is not supported by this hwdsa "
            f"(supported: {BUNDLE_SCHEMA_VERSION}); make the bundle with the same hwdsa version as the board's"
        )
    raw_entries = doc.get("entries")
    if not isinstance(raw_entries, list) or not raw_entries:
        raise ConfigError(f"{doc_path}: 'entries' must be a non-empty list")
    entries: list[tuple[LayerSpec, Path]] = []
    for i, item in enumerate(raw_entries):
        where = f"{doc_path} entry {i}"
        if not isinstance(item, dict) or not isinstance(item.get("onnx"), str):
            raise ConfigError(f"{where}: needs 'spec' and 'onnx'")
        spec = spec_from_json(item.get("spec"), where=where)
        name = item["onnx"]
        file = root / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ConfigError(f"{where}: ONNX path {name!r} must be a plain file name inside the bundle")
        if not file.is_file():
            raise ConfigError(f"{where}: ONNX file {file} is missing; copy the whole bundle directory")
        if verify and item.get("sha256") and _sha256(file) != item["sha256"]:
            raise ConfigError(f"{where}: {file} does not match its SHA-256 in {SPECS_FILE}; the copy is corrupted")
        entries.append((spec, file))
    specs = [s for s, _ in entries]
    if len(dedupe_specs(specs)) != len(specs):
        raise ConfigError(f"{doc_path}: a spec appears in more than one entry")
    precision, batch_size = common_precision_and_batch(specs)
    if (doc.get("precision"), doc.get("batch_size")) != (precision, batch_size):
        raise ConfigError(
            f"{doc_path}: header says precision {doc.get('precision')!r}, batch {doc.get('batch_size')!r} but the "
            f"entries are {precision!r}, batch {batch_size}"
        )
    info = {k: v for k, v in doc.items() if k not in ("entries",)}
    return Bundle(root, precision, batch_size, tuple(entries), info)


def run_bundle(
    bundle: Bundle | str | os.PathLike[str],
    backend: str,
    protocol: TimingProtocol | None = None,
    *,
    out_path: str | os.PathLike[str],
    resume: bool = True,
    on_entry: OnEntry | None = None,
    **backend_options: Any,
) -> list[Entry]:
    """Time every layer of a bundle with an ONNX backend and write the table (see `profile_specs`).

    Raises:
        ConfigError: `backend` does not run ONNX files (the torch backends), or a bad bundle.
        BackendUnavailableError: the backend cannot run here.
    """
    b = bundle if isinstance(bundle, Bundle) else read_bundle(bundle)
    cls = get_backend_class(backend)
    if not issubclass(cls, OnnxBackend):
        raise ConfigError(
            f"backend {backend!r} does not run ONNX files; a bundle runs on an ONNX backend "
            "(onnxruntime, onnxruntime_cuda, onnxruntime_tensorrt, tensorrt)"
        )
    be = get_backend(backend, onnx_files=b.onnx_files, **backend_options)
    return profile_specs(b.specs, be, protocol, out_path=out_path, resume=resume, on_entry=on_entry)


__all__ = ["BUNDLE_FORMAT", "Bundle", "read_bundle", "run_bundle", "write_bundle"]
