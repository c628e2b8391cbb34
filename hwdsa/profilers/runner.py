"""Profiling runs: measure many LayerSpecs into a table file, resumably; time whole networks end to end.

`profile_specs` deduplicates the specs, appends each finished entry to `<out>.partial` (flushed and
fsync'd), and writes the complete table atomically at the end, then removes the partial file. Run it
again after Ctrl-C or a kill and it measures only what is missing. Standard library only (plus the
backend's own library), so the edge agent runs it on a board.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from hwdsa.errors import TableError

from .backend import Backend, resolve_backend
from .base import LayerSpec, Measurement, TimingProtocol, quietest
from .device import backend_fingerprint
from .specs import common_precision_and_batch, dedupe_specs, spec_label
from .tablefile import (
    Entry,
    PartialLog,
    make_meta,
    partial_path,
    read_table,
    run_identity,
    write_table,
)

_log = logging.getLogger(__name__)

#: Called after each entry is measured and recorded durably (a progress hook; raising stops the run).
OnEntry = Callable[[LayerSpec, Measurement], None]


def protocol_record(protocol: TimingProtocol) -> dict[str, Any]:
    """The protocol as a JSON object for the table's metadata."""
    return dataclasses.asdict(protocol)


def table_meta(backend: Backend, protocol: TimingProtocol, *, precision: str, batch_size: int) -> dict[str, Any]:
    """The header metadata of a table measured by `backend` under `protocol`, with the device's fingerprint."""
    try:
        fingerprint: dict[str, Any] | None = backend_fingerprint(backend)
    except Exception as exc:  # an odd /proc or driver must not stop a profiling run: the table then lacks it
        _log.warning("cannot fingerprint the device of %s (%s: %s); the table records none", backend.name, type(exc).__name__, exc)
        fingerprint = None
    return make_meta(
        device=backend.device_description(),
        backend=backend.name,
        precision=precision,
        batch_size=batch_size,
        versions=backend.versions(),
        protocol=protocol_record(protocol),
        backend_options=backend.options(),
        channel_multiple=backend.channel_multiple,
        fingerprint=fingerprint,
    )


class _Progress:
    """tqdm (with ETA) when it is installed; otherwise an INFO log line with an ETA every ~10 s (the board)."""

    def __init__(self, total: int, initial: int, desc: str) -> None:
        self._total, self._done, self._new = total, initial, 0
        self._start = self._last = time.monotonic()
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self._bar: Any = None
        else:
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="layer", disable=None, dynamic_ncols=True)

    def update(self, label: str) -> None:
        self._done += 1
        self._new += 1
        if self._bar is not None:
            self._bar.set_postfix_str(label, refresh=False)
            self._bar.update(1)
            return
        now = time.monotonic()
        if now - self._last >= 10.0 or self._done == self._total:
            self._last = now
            rate = (now - self._start) / self._new
            _log.info("profiled %d/%d layers, ETA %.0f s (last: %s)", self._done, self._total, rate * (self._total - self._done), label)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _reuse_complete_table(out: Path, meta: dict[str, Any]) -> dict[LayerSpec, Measurement]:
    """Entries of an existing complete table at `out` measured under the same conditions."""
    if not out.exists():
        return {}
    try:
        old_meta, entries = read_table(out)
    except TableError as exc:
        raise TableError(f"{exc} (to replace the file, pass resume=False or --no-resume)") from None
    ours, theirs = run_identity(meta), run_identity(old_meta)
    keys = ("device", "backend", "precision", "batch_size", "versions", "protocol", "backend_options")
    diff = [k for k in keys if ours.get(k) != theirs.get(k)]
    if diff:
        raise TableError(
            f"{out} already holds a table measured under other conditions (differs in {', '.join(diff)}); "
            "write to another path, or pass resume=False (--no-resume) to overwrite it"
        )
    return dict(entries)


def profile_specs(
    specs: Iterable[LayerSpec],
    backend: Backend | str,
    protocol: TimingProtocol | None = None,
    *,
    out_path: str | os.PathLike[str],
    resume: bool = True,
    on_entry: OnEntry | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> list[Entry]:
    """Measure every distinct spec with `backend` and write the latency table to `out_path`.

    The protocol's rounds are passes over all the specs (each entry is the quietest of its rounds,
    taken minutes apart); each finished round of an entry is recorded, so a resumed run continues
    the pass it was in.

    Args:
        specs: layer specs (duplicates are measured once); all of one precision and batch size.
        backend: a Backend, or a registered name (see `list_backends()`).
        protocol: the timing protocol (default `TimingProtocol()`).
        out_path: the table file (format: `hwdsa.profilers.tablefile`).
        resume: reuse entries of an interrupted run (`<out_path>.partial`) and of a complete table
            already at `out_path`, when measured under the same conditions; False starts over.
        on_entry: called after each newly measured round of an entry has been recorded.
        extra_meta: more header metadata (kept by `hwdsa.lut.TableMeta` as `extra`).

    Returns:
        (spec, measurement) pairs of `specs` in first-seen order: the table's first rows. Entries of an
        earlier table or interrupted run at `out_path` that `specs` does not name follow them in the file.

    Raises:
        ConfigError: no specs, or mixed precisions/batch sizes, or a precision the backend cannot run.
        TableError: the partial file or existing table belongs to other conditions (resume=True).
        BackendUnavailableError: `backend` is a known name that cannot run here.

    Example:
        >>> import tempfile
        >>> from hwdsa.profilers import LayerSpec, TimingProtocol, profile_specs
        >>> specs = [LayerSpec("conv", 4, 8, kernel=(3, 3), padding=(1, 1), in_size=(8, 8))] * 2
        >>> with tempfile.TemporaryDirectory() as d:
        ...     rows = profile_specs(specs, "torch_cpu", TimingProtocol(warmup=1, repeats=5), out_path=f"{d}/t.csv")
        >>> len(rows), rows[0][1].median_ms > 0
        (1, True)
    """
    unique = dedupe_specs(specs)
    precision, batch_size = common_precision_and_batch(unique)
    be = resolve_backend(backend)
    for spec in unique:
        be.check_spec(spec)
    proto = protocol or TimingProtocol()
    one_round = dataclasses.replace(proto, rounds=1)
    out = Path(out_path)
    meta = table_meta(be, proto, precision=precision, batch_size=batch_size)
    meta.update(extra_meta or {})
    log = PartialLog(partial_path(out), meta)

    finished: dict[LayerSpec, Measurement] = {}  # entries of a complete table: all their rounds done
    rounds: dict[LayerSpec, list[Measurement]] = {}  # rounds measured so far (this run and the partial file)
    if resume:
        finished.update(_reuse_complete_table(out, meta))
        for spec, ms in log.load().items():
            rounds.setdefault(spec, []).extend(ms)
    else:
        log.remove()
    for spec in [s for s in rounds if len(rounds[s]) >= proto.rounds]:
        finished[spec] = quietest(rounds.pop(spec))

    # One pass over the table per round, so an entry's rounds fall in different load windows.
    todo = [s for s in unique if s not in finished]
    total = len(unique) * proto.rounds
    initial = total - sum(proto.rounds - len(rounds.get(s, [])) for s in todo)
    if initial:
        _log.info("resuming %s: %d of %d entry rounds already measured", out, initial, total)
    if todo:
        log.open()
        progress = _Progress(total, initial, desc=f"profile {be.name}")
        try:
            for r in range(proto.rounds):
                for spec in todo:
                    done_rounds = rounds.setdefault(spec, [])
                    if len(done_rounds) > r:
                        continue
                    m = be.measure(spec, one_round)
                    log.append(spec, m)
                    done_rounds.append(m)
                    progress.update(spec_label(spec) + (f" (round {r + 1}/{proto.rounds})" if proto.rounds > 1 else ""))
                    if on_entry is not None:
                        on_entry(spec, m)
        finally:
            progress.close()
            log.close()
    for spec, ms in rounds.items():
        if len(ms) >= proto.rounds:
            finished[spec] = quietest(ms)
    items = [(s, finished[s]) for s in unique]
    wanted = set(unique)
    # Entries of the old table or partial file that these specs do not ask for stay in the table (behind
    # the requested ones): a run that extends a table must not drop what was measured before.
    kept = [(s, m) for s, m in finished.items() if s not in wanted and s.precision == precision and s.batch_size == batch_size]
    if kept:
        _log.info("%s keeps %d earlier entries that this run did not ask for", out, len(kept))
    write_table(out, [*items, *kept], meta)
    log.remove()
    _report_noise(items)
    for condition, count in be.take_notes().items():
        _log.warning("%s: %s in %d of %d layer timings (each one with -v)", be.name, condition, count, total)
    return items


def _report_noise(items: Sequence[Entry]) -> None:
    noisy = [s for s, m in items if m.noisy]
    if noisy:
        loads = [m.load_avg for _, m in items if not math.isnan(m.load_avg)]
        _log.warning(
            "%d of %d entries stayed noisy after re-measurement (max load average %.2f); re-profile them on an "
            "idle machine (first: %s)",
            len(noisy), len(items), max(loads) if loads else float("nan"), spec_label(noisy[0]),
        )  # fmt: skip


def measure_network(
    model_or_onnx: object,
    input_shape: Sequence[int],
    backend: Backend | str,
    protocol: TimingProtocol | None = None,
    *,
    precision: str = "fp32",
    **backend_options: Any,
) -> Measurement:
    """End-to-end latency of a whole network: an nn.Module (torch backends; ONNX backends export it)
    or an ONNX file (ONNX backends), on a fixed random input of `input_shape` (batch first).

    The calibration in `hwdsa.lut.calibrate` compares these against per-layer sums.

    Example:
        >>> import torch
        >>> from hwdsa.profilers import TimingProtocol, measure_network
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
        >>> measure_network(net, (1, 3, 16, 16), "torch_cpu", TimingProtocol(warmup=1, repeats=5)).median_ms > 0
        True
    """
    be = resolve_backend(backend, **backend_options)
    return be.measure_network(model_or_onnx, input_shape, protocol, precision=precision)


__all__ = ["OnEntry", "measure_network", "profile_specs", "protocol_record", "table_meta"]
