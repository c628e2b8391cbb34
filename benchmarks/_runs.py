"""Benchmark runs that survive sessions: each finished pruning job's result is a small committed JSON file.

A run is keyed by its full configuration (`PruneJobConfig.to_dict()`, with the data folder left out and
the starting weights named by their digest: they differ between machines, results do not); a suite rerun skips every run whose file exists and runs the rest,
so a suite that needs more compute than one session has completes over several. Checkpoints of unfinished
runs live in a scratch folder (`runs/`, not committed) and resume within a session.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import signal
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hwdsa._io import write_json_atomic
from hwdsa.job import PruneJob, PruneJobConfig
from hwdsa.lut.table import LatencyTable
from hwdsa.profilers.device import cpu_description, cpu_fingerprint, fingerprint_id

_log = logging.getLogger("benchmarks.runs")
#: The fewest paired seeds an interval is given for.
MIN_PAIRS = 3


def portable_config(cfg: PruneJobConfig) -> dict[str, Any]:
    """The configuration as a result file records it: no folder of the machine that ran it; the starting
    weights by their SHA-256 (the same file anywhere is the same run)."""
    d = cfg.to_dict()
    d["data_root"] = None
    if cfg.weights is not None:
        d["weights"] = {"file": Path(cfg.weights).name, "sha256": hashlib.sha256(Path(cfg.weights).read_bytes()).hexdigest()}
    return d


def run_key(cfg: PruneJobConfig) -> str:
    """A short hash of everything that decides a run's result."""
    return hashlib.sha256(json.dumps(portable_config(cfg), sort_keys=True).encode()).hexdigest()[:12]


def cached_run(name: str, cfg: PruneJobConfig, results: Path, work: Path, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report of run `name` under `cfg`: read from `results/<name>-<key>.json`, or run now and write it
    (with `meta`, what the suite needs to place the run: its stage, method, seed)."""
    path = results / f"{name}-{run_key(cfg)}.json"
    if path.is_file():
        _log.info("done before: %s", path)
        return dict(json.loads(path.read_text())["report"])
    _log.info("running %s", name)
    report = PruneJob(cfg, work / f"{name}-{run_key(cfg)}").run(resume=True).to_dict()
    record = {"name": name, "key": run_key(cfg), "meta": meta or {}, "config": portable_config(cfg), "report": report}
    write_json_atomic(path, record)
    return report


def finished_runs(results: Path) -> list[dict[str, Any]]:
    """Every run file under `results`, oldest first."""
    return [json.loads(p.read_text()) for p in sorted(results.glob("*.json"), key=lambda p: p.stat().st_mtime)]


def paired_interval(differences: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the mean paired difference: Student's t interval over the pairs (seeds).

    Fewer than `MIN_PAIRS` pairs give no interval (infinite bounds): two differences that happen to be equal
    would give one of zero width, which says nothing about the next seed.
    """
    from scipy import stats

    n = len(differences)
    mean = statistics.mean(differences)
    if n < MIN_PAIRS:
        return mean, -math.inf, math.inf
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * statistics.stdev(differences) / math.sqrt(n)
    return mean, mean - half, mean + half


def format_interval(interval: tuple[float, float, float], n: int, *, scale: float = 100.0, unit: str = " pt") -> str:
    """`mean (low, high)` of a `paired_interval`, or `mean (n=2: no interval)` below `MIN_PAIRS` pairs."""
    mean, low, high = interval
    if not math.isfinite(low):
        return f"{scale * mean:+.2f}{unit} (n={n}: no interval)"
    return f"{scale * mean:+.2f}{unit} ({scale * low:+.2f}, {scale * high:+.2f})"


@contextlib.contextmanager
def claimed(lock: Path) -> Iterator[bool]:
    """Whether this process may work on the run that `lock` names: True (and the lock held until the block
    ends) unless a live process holds it. Lets one worker per core go through the same list of runs.
    A lock left by a process that died (a session's end) is taken over."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = f"{os.getpid()} {_boot_id()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid, boot = lock.read_text().split()
                if boot != _boot_id():  # held before this machine last started: its process is gone
                    raise ProcessLookupError
                os.kill(int(pid), 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # its holder is gone
                continue
            except PermissionError:
                pass
            yield False
            return
        with os.fdopen(fd, "w") as handle:
            handle.write(me)
        try:
            yield True
        finally:
            lock.unlink(missing_ok=True)
        return
    yield False


def _boot_id() -> str:
    """This boot of the machine (Linux), so that a lock from before a restart is not taken for a live one whose
    process id happens to be reused."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


@contextlib.contextmanager
def paused(pids: Sequence[int]) -> Iterator[None]:
    """SIGSTOP `pids` for the duration (a quiet machine for one pass), SIGCONT them after, whatever happens."""
    stopped = []
    try:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
            except ProcessLookupError:
                logging.getLogger(__name__).warning("no process %d to pause", pid)
        time.sleep(1.0 if stopped else 0.0)  # let their last cache traffic drain
        yield
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)


def host_record() -> dict[str, str]:
    """This host as every result file records it: the CPU's name and its fingerprint (which tells apart hosts
    that share a name)."""
    return {"cpu": cpu_description(), "fingerprint": fingerprint_id(cpu_fingerprint())}


def table_models(tables: Sequence[Path], models: Sequence[str]) -> list[tuple[Path, str]]:
    """(table, model) for every model of `models` each table was profiled for (every model for a table that does not
    record its networks), so that one run can cover several per-model tables (the cache holds one per model)."""
    pairs = []
    for path in tables:
        profiled = LatencyTable.read(path).meta.networks
        chosen = [m for m in models if not profiled or m in profiled]
        if not chosen:
            raise SystemExit(f"{path} was profiled for {', '.join(profiled)}, none of --models {' '.join(models)}")
        pairs += [(path, m) for m in chosen]
    return pairs
