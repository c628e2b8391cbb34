"""What each phase of a pruning job depends on, so that a resume reruns exactly the phases whose inputs changed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hwdsa.job.config import PruneJobConfig

__all__ = ["PHASES", "changed_settings", "inputs_digest", "phase_inputs"]


PHASES = ("pretrain", "search", "finetune")


def _file_digest(path: str | None) -> str | None:
    """SHA-256 of a file's bytes (a changed table or weights file changes the phases that read it)."""
    if path is None or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def phase_inputs(cfg: PruneJobConfig) -> dict[str, dict[str, Any]]:
    """What each phase's result depends on; a later phase includes the earlier phase's inputs."""
    d = cfg.to_dict()
    pretrain = {
        key: d[key]
        for key in ("model", "dataset", "data_root", "subset_per_class", "holdout_fraction", "seed", "batch_size", "from_scratch")
    }
    pretrain["weights"] = None if cfg.weights is None else {"path": cfg.weights, "sha256": _file_digest(cfg.weights)}
    pretrain["pretrain"] = d["pretrain"] if not (cfg.from_scratch or cfg.weights) else None
    search = {key: d[key] for key in ("budgets", "search", "admm", "round_to", "fixed_keep_ratios", "latency_backend", "verify_margin")}
    search["verify_latency"] = cfg.verifies_latency
    tables = [cfg.latency_table, *(b.table for b in cfg.budgets)]
    search["latency_tables"] = {t: _file_digest(t) for t in tables if t is not None}
    search["earlier phases"] = pretrain
    finetune = {"finetune": d["finetune"], "earlier phases": search}
    return {"pretrain": pretrain, "search": search, "finetune": finetune}


def inputs_digest(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Top-level settings that differ between two phases' inputs."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
