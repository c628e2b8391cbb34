"""Atomic, resumable training checkpoints (plain state dicts and tensors: loaded with weights_only=True)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwdsa._io import atomic_path
from hwdsa.errors import CheckpointError

_log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` (state dicts, tensors, numbers, strings) atomically: a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save({"version": CHECKPOINT_VERSION, **state}, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, *, expect: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a checkpoint; `expect` maps keys to values that must match (e.g. the config it was made with)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"no checkpoint at {p}")
    try:
        state: dict[str, Any] = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several kinds for a damaged zip/pickle
        raise CheckpointError(f"checkpoint {p} cannot be read ({type(exc).__name__}: {exc}); delete it to start over") from exc
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {p} has version {state.get('version')}, expected {CHECKPOINT_VERSION}")
    for key, value in (expect or {}).items():
        if state.get(key) != value:
            raise CheckpointError(
                f"checkpoint {p} was made with {key}={state.get(key)!r}, this run has {value!r}; "
                "use another output folder or delete the checkpoint"
            )
    return state


def rng_state() -> dict[str, Any]:
    """The global RNG states a resumed run must restore to continue identically."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, epoch: int) -> dict[str, Any]:
    """What a resumable training loop saves after `epoch` epochs: weights, optimizer, schedule and RNG states."""
    return {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
    }


def restore_training_state(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> int:
    """Load a `training_state` into the loop's objects; returns the epochs already done."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["epoch"])
