"""Process-group helpers so that the same training code runs alone or under `torchrun` with DDP."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

_log = logging.getLogger(__name__)
_T = TypeVar("_T")


def is_distributed() -> bool:
    """Whether a process group is initialised (e.g. under torchrun)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Only the main process writes files and prints reports."""
    return rank() == 0


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group described by torchrun's environment; a no-op when not launched by torchrun.

    Returns True when running distributed. The backend defaults to NCCL on CUDA, gloo otherwise.
    """
    if is_distributed():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return False
    chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(chosen)
    if chosen == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    _log.info("joined process group: rank %d of %d (%s)", rank(), world_size(), chosen)
    return True


@contextlib.contextmanager
def process_group_from_env(backend: str | None = None) -> Iterator[bool]:
    """`init_from_env` for the length of a block, yielding whether it runs distributed. A group the block joined is
    left at its end, after a barrier when the block ended normally (gloo aborts a process that tears its group down
    while another rank still talks to it); a group that existed before the block is left as it was."""
    joined = not is_distributed() and init_from_env(backend)
    ok = False
    try:
        yield is_distributed()
        ok = True
    finally:
        if joined:
            if ok:
                dist.barrier()
            dist.destroy_process_group()


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """Average `tensor` across ranks in place (identity when not distributed)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(world_size())
    return tensor


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` across ranks in place (identity when not distributed)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite `tensor` with rank `src`'s value on every rank."""
    if is_distributed():
        dist.broadcast(tensor, src)
    return tensor


def broadcast_module_(module: nn.Module, src: int = 0) -> None:
    """Give every rank rank `src`'s parameters and buffers (DDP does this for wrapped modules only)."""
    if is_distributed():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src)


def broadcast_object(obj: _T, src: int = 0) -> _T:
    """Rank `src`'s `obj` (picklable) on every rank; `obj` itself when not distributed."""
    if not is_distributed():
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]  # type: ignore[no-any-return]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
