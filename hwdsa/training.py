"""Plain supervised training and evaluation loops, shared by pre-training, the DSA search and fine-tuning."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hwdsa.distributed import all_reduce_sum_, is_main_process
from hwdsa.errors import ConfigError

_log = logging.getLogger(__name__)

Batches = Iterable[tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class TrainConfig:
    """SGD with momentum and a cosine schedule: the standard CIFAR recipe, with the knobs that matter."""

    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    warmup_epochs: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0; got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive; got {self.lr}")


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD over the model's parameters; BatchNorm and bias parameters get no weight decay."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 else decay).append(p)
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int, *, restart_at: int | None = None
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to zero, stepped once per batch.

    `restart_at`: a warm restart (SGDR) at that step: from it the cosine starts again at the full rate and decays
    to zero at the end, so that a network whose channels were just cut trains at a rate it can recover with
    (the steps before it keep the schedule they would have had without one).
    """
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if restart_at is not None and not 0 <= restart_at < total:
        raise ConfigError(f"restart_at must be a step of the schedule, in [0, {total}); got {restart_at}")

    def cosine(step: int, start: int) -> float:
        """From 1 at `start` down to 0 at the end."""
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - start) / max(1, total - start))))

    def factor(step: int) -> float:
        if restart_at is not None and step >= restart_at:
            return cosine(step, restart_at)
        if step < warm:
            return (step + 1) / warm
        return cosine(step, warm)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def set_epoch(loader: object, epoch: int) -> None:
    """Tell a loader (or its sampler) which epoch starts, so shuffling is seeded and resumable."""
    for obj in (loader, getattr(loader, "sampler", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


def batches_per_epoch(loader: object) -> int:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(f"the training loader ({type(loader).__name__}) must have a length") from None


def train_epoch(
    model: nn.Module,
    loader: Batches,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    device: torch.device,
    *,
    before_batch: Callable[[int], None] | None = None,
    desc: str = "train",
) -> float:
    """One epoch of cross-entropy training; returns the mean loss. `before_batch(i)` runs first each batch."""
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    total, count = 0.0, 0
    for i, (x, y) in enumerate(tqdm(loader, desc=desc, leave=False, disable=None if is_main_process() else True)):
        if before_batch is not None:
            before_batch(i)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += float(loss.detach()) * len(y)
        count += len(y)
    return total / max(1, count)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Batches, device: torch.device) -> float:
    """Top-1 accuracy in [0, 1], summed over every rank when distributed."""
    was_training = model.training
    model.eval()
    correct = torch.zeros(2, dtype=torch.float64, device=device)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        correct[0] += (model(x).argmax(1) == y).sum()
        correct[1] += len(y)
    all_reduce_sum_(correct)
    model.train(was_training)
    return float(correct[0] / correct[1].clamp(min=1))


def fit(
    model: nn.Module,
    train_loader: Batches,
    cfg: TrainConfig,
    device: torch.device,
    *,
    desc: str = "train",
) -> list[float]:
    """Train `model` for `cfg.epochs` epochs from scratch of the schedule; returns per-epoch mean losses."""
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, batches_per_epoch(train_loader))
    losses = []
    for epoch in range(cfg.epochs):
        set_epoch(train_loader, epoch)
        losses.append(train_epoch(model, train_loader, optimizer, scheduler, device, desc=f"{desc} {epoch + 1}/{cfg.epochs}"))
        _log.info("%s epoch %d/%d: loss %.4f", desc, epoch + 1, cfg.epochs, losses[-1])
    return losses


def recalibrate_batchnorm(model: nn.Module, loader: Batches, device: torch.device, *, images: int = 4096) -> int:
    """Re-estimate every BatchNorm's running statistics from `images` training images; returns how many were used.

    Surgery keeps each kept channel's statistics, but they were gathered with the dropped channels present
    (and, during the search, under random masks), so the pruned network's eval-mode output drifts far from
    its train-mode output. A pass in train mode without gradients (`torch.optim.swa_utils.update_bn`, a
    cumulative average) restores them; fine-tuning then starts from a network that already works.
    """
    seen = 0

    def head() -> Iterable[Tensor]:
        nonlocal seen
        for x, _ in loader:
            if seen >= images:
                return
            seen += len(x)
            yield x

    torch.optim.swa_utils.update_bn(head(), model, device)
    return seen
