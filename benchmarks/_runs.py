"""Benchmark runs that survive sessions: each finished pruning job's result is a small committed JSON file.

A run is keyed by its full configuration (`PruneJobConfig.to_dict()`, the data folder left out because it
differs between machines, not results); a suite rerun skips every run whose file exists and runs the rest,
so a suite that needs more compute than one session has completes over several. Checkpoints of unfinished
runs live in a scratch folder (`runs/`, not committed) and resume within a session.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import statistics
from pathlib import Path
from typing import Any

from hwdsa._io import write_json_atomic
from hwdsa.job import PruneJob, PruneJobConfig

_log = logging.getLogger("benchmarks.runs")


def run_key(cfg: PruneJobConfig) -> str:
    """A short hash of everything that decides a run's result (the data folder excepted)."""
    d = cfg.to_dict()
    d.pop("data_root", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def cached_run(name: str, cfg: PruneJobConfig, results: Path, work: Path, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report of run `name` under `cfg`: read from `results/<name>-<key>.json`, or run now and write it
    (with `meta`, what the suite needs to place the run: its stage, method, seed)."""
    path = results / f"{name}-{run_key(cfg)}.json"
    if path.is_file():
        _log.info("done before: %s", path)
        return dict(json.loads(path.read_text())["report"])
    _log.info("running %s", name)
    report = PruneJob(cfg, work / f"{name}-{run_key(cfg)}").run(resume=True).to_dict()
    config = cfg.to_dict()
    config["data_root"] = None
    write_json_atomic(path, {"name": name, "key": run_key(cfg), "meta": meta or {}, "config": config, "report": report})
    return report


def finished_runs(results: Path) -> list[dict[str, Any]]:
    """Every run file under `results`, oldest first."""
    return [json.loads(p.read_text()) for p in sorted(results.glob("*.json"), key=lambda p: p.stat().st_mtime)]


def paired_interval(differences: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the mean paired difference: Student's t interval over the pairs (seeds)."""
    from scipy import stats

    n = len(differences)
    mean = statistics.mean(differences)
    if n < 2:
        return mean, -math.inf, math.inf
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * statistics.stdev(differences) / math.sqrt(n)
    return mean, mean - half, mean + half
