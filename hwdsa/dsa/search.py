"""The DSA search: weights and keep ratios trained together, the budget held by ADMM (design note, section 5).

Runs alone or under torchrun/DDP: masks are drawn from a generator seeded identically on every rank and the
ratio gradients are averaged, so every rank holds the same ratios and masks at every step.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hwdsa.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from hwdsa.channels import channels_within_budgets
from hwdsa.costs import Budget
from hwdsa.distributed import barrier, is_main_process, unwrap
from hwdsa.dsa.allocator import AdmmConfig, RatioAllocator, pad_importance
from hwdsa.dsa.process import deterministic_masks
from hwdsa.graph.structure import ChannelGraph
from hwdsa.importance import group_importance
from hwdsa.masking import ChannelMasks
from hwdsa.surgery.plan import PruningPlan, plan_from_channels
from hwdsa.training import Batches, TrainConfig, batches_per_epoch, make_optimizer, make_scheduler, set_epoch

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchConfig:
    """The search phase: weight training settings, ADMM settings, and the seed that fixes the masks."""

    train: TrainConfig = field(default_factory=TrainConfig)
    admm: AdmmConfig = field(default_factory=AdmmConfig)
    seed: int = 0


@dataclass(frozen=True)
class SearchResult:
    """Where the search ended: the feasible ratios, the integer channels that meet every budget, history."""

    keep_ratios: list[float]
    channels: list[int]
    costs: dict[str, float]
    history: list[dict[str, Any]]
    seconds: float
    weight_steps: int
    ratio_steps: int
    settled_kept: list[Tensor] | None = None

    def to_plan(self, model: nn.Module, graph: ChannelGraph, *, importance: str = "first", **meta: Any) -> PruningPlan:
        """The `PruningPlan` that keeps `channels` in every group: the most important channels of the searched
        `model` by `importance` (the search's `AdmmConfig.importance`), the settled network's first
        (`rank_settled_first`); `meta` as `plan_from_channels` takes it (model_name, num_classes, model_kwargs).
        Prune with `hwdsa.surgery.prune(model, graph, plan)`."""
        ranking = rank_settled_first(group_importance(model, graph, mode=importance), self.settled_kept)
        return plan_from_channels(graph, ranking, self.channels, **meta)


def rank_settled_first(importance: Sequence[Tensor], settled_kept: Sequence[Tensor] | None) -> list[Tensor]:
    """`importance` with the channels the settle phase kept (`AdmmConfig.settle_fraction`) ranked above every other
    channel of their group: the weights were trained as that network, whatever the importances did meanwhile; a
    group cut further (a latency check) loses its least important kept channels first."""
    if settled_kept is None:
        return list(importance)
    if len(settled_kept) != len(importance):
        raise ValueError(f"{len(settled_kept)} settled masks for {len(importance)} groups")
    return [imp + kept.to(imp) * (2 * imp.abs().max() + 1) for imp, kept in zip(importance, settled_kept)]


def _cycle(loader: Batches, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless held-out batches whose order depends only on (epoch, pass): resumable."""
    for k in itertools.count():
        set_epoch(loader, epoch * 1000 + k)
        yield from loader


def settle_step(total_steps: int, settle_fraction: float) -> int | None:
    """The first weight step whose progress (step / total) reaches 1 − `settle_fraction`; None if none does."""
    if settle_fraction <= 0:
        return None
    step = math.ceil((1 - settle_fraction) * total_steps)
    while step > 0 and (step - 1) / total_steps >= 1 - settle_fraction:  # the product's rounding, either way
        step -= 1
    while step < total_steps and step / total_steps < 1 - settle_fraction:
        step += 1
    return step if step < total_steps else None


class DsaSearch:
    """Runs the search epochs on a model, saving a checkpoint after each one.

    Args:
        model: the network (possibly wrapped in DistributedDataParallel); masks are hooked on its inner module.
        graph: its traced channel structure.
        budgets: the budgets to meet (one or several).
        config: search settings.
        device: where training runs.
        rounding: how the caller turns the searched ratios into the counts it keeps (default
            `hwdsa.channels.channels_within_budgets`; the job's rounding, and its check on the device): called once,
            at the settle point (`AdmmConfig.settle_fraction`), so that the settle phase trains that network.
    """

    def __init__(
        self,
        model: nn.Module,
        graph: ChannelGraph,
        budgets: Sequence[Budget],
        config: SearchConfig,
        device: torch.device,
        *,
        rounding: Callable[[Tensor], list[int]] | None = None,
    ) -> None:
        self.model = model
        self.inner = unwrap(model)
        self.graph = graph
        self.config = config
        self.device = device
        self.allocator = RatioAllocator(graph.group_sizes, budgets, config.admm, device)
        self.masker = ChannelMasks(self.inner, graph, placement=config.admm.mask_placement)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(config.seed)
        self.optimizer = make_optimizer(self.inner, config.train)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.weight_steps = 0
        self.rounding = rounding or (lambda r: channels_within_budgets(r, self.allocator.budgets, graph.group_sizes))
        # the settle phase's fixed ratios, channels and masks (AdmmConfig.settle_fraction); None before it
        self.settled: dict[str, Any] | None = None

    def _importance(self) -> list[Tensor]:
        return [t.to(self.device) for t in group_importance(self.inner, self.graph, mode=self.config.admm.importance)]

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.inner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "allocator": self.allocator.state_dict(),
            "generator": self.generator.get_state(),
            "rng": rng_state(),
            "history": self.history,
            "weight_steps": self.weight_steps,
            "settled": self.settled,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.allocator.load_state_dict(state["allocator"])
        self.generator.set_state(state["generator"])
        set_rng_state(state["rng"])
        self.history = list(state["history"])
        self.weight_steps = int(state["weight_steps"])
        self.settled = state.get("settled")

    def _settle(self) -> None:
        """Fix the channels at the feasible ratios' counts and mask the rest for the remainder of the search."""
        ratios = self.allocator.feasible_ratios().detach()
        channels = self.rounding(ratios)
        imp, valid = pad_importance(self._importance())
        keep = deterministic_masks(imp, valid, channels)
        kept = [keep[g, :c].cpu() for g, c in enumerate(self.graph.group_sizes)]
        self.settled = {"ratios": ratios.cpu(), "channels": list(channels), "kept": kept}
        self.masker.set_masks([k.float() for k in kept])
        _log.info("settled at %s channels: the rest of the search trains that network's weights", channels)

    def run(
        self,
        train_loader: Batches,
        holdout_loader: Batches,
        *,
        checkpoint: Path | None = None,
        resume: bool = False,
        tag: str | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ) -> SearchResult:
        """Train weights and ratios for `config.train.epochs` epochs, resuming from `checkpoint` if asked.

        `tag` identifies the inputs this search runs on (the job's settings); it is saved with each
        checkpoint, and a checkpoint with another tag is not resumed.
        """
        cfg = self.config
        steps_per_epoch = batches_per_epoch(train_loader)
        total_steps = max(1, cfg.train.epochs * steps_per_epoch)
        settle_at = settle_step(total_steps, cfg.admm.settle_fraction)
        restart = settle_at if cfg.admm.settle_restart else None
        scheduler = make_scheduler(self.optimizer, cfg.train, steps_per_epoch, restart_at=restart)
        if resume and checkpoint is not None and checkpoint.is_file():
            state = load_checkpoint(checkpoint)
            # A checkpoint of an earlier phase means the search never started; another tag, other settings.
            if state.get("phase") == "search" and state.get("tag") == tag:
                self.load_state_dict(state["search"])
                self.start_epoch = int(state["epoch"])
                scheduler.load_state_dict(state["scheduler"])
                _log.info("resumed the search after epoch %d", self.start_epoch)
        loss_fn = nn.CrossEntropyLoss()
        started = time.perf_counter()
        try:
            for epoch in range(self.start_epoch, cfg.train.epochs):
                set_epoch(train_loader, epoch)
                holdout = _cycle(holdout_loader, epoch)
                if self.settled is not None:  # resumed within the settle phase
                    self.masker.set_masks([k.float() for k in self.settled["kept"]])
                self.model.train()
                loss_sum, n_seen = 0.0, 0
                bar = tqdm(train_loader, desc=f"search {epoch + 1}/{cfg.train.epochs}", leave=False, disable=None if is_main_process() else True)
                for i, (x, y) in enumerate(bar):
                    step = epoch * steps_per_epoch + i
                    progress = step / total_steps
                    if self.settled is None and settle_at is not None and step >= settle_at:
                        self._settle()
                    if self.settled is None:
                        self._ratio_and_mask_step(i, progress, holdout, loss_fn)
                    x, y = x.to(self.device), y.to(self.device)
                    loss = loss_fn(self.model(x), y)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                    scheduler.step()
                    self.weight_steps += 1
                    loss_sum += float(loss.detach()) * len(y)
                    n_seen += len(y)
                record = self._epoch_record(epoch, loss_sum / max(1, n_seen))
                self.history.append(record)
                _log.info(
                    "search epoch %d/%d: loss %.4f, %s",
                    epoch + 1,
                    cfg.train.epochs,
                    record["loss"],
                    ", ".join(f"{k} {v:.3f}" for k, v in record.items() if k.endswith("_fraction")),
                )
                if checkpoint is not None:
                    if is_main_process():
                        save_checkpoint(
                            checkpoint,
                            {"phase": "search", "tag": tag, "epoch": epoch + 1, "search": self.state_dict(), "scheduler": scheduler.state_dict()},
                        )
                    barrier()
                if on_epoch is not None:
                    on_epoch(record)
        finally:
            self.masker.remove()
        budgets = self.allocator.budgets
        if self.settled is not None:
            ratios, channels = self.settled["ratios"], list(self.settled["channels"])
        else:  # not `self.rounding`: a caller's may time networks on the device, which it does after the search
            ratios = self.allocator.feasible_ratios()
            channels = channels_within_budgets(ratios, budgets, self.graph.group_sizes)
        return SearchResult(
            keep_ratios=[float(r) for r in ratios.cpu()],
            channels=channels,
            costs={b.cost.name: b.cost.exact(channels) for b in budgets},
            history=self.history,
            seconds=time.perf_counter() - started,
            weight_steps=self.weight_steps,
            ratio_steps=self.allocator.steps,
            settled_kept=None if self.settled is None else list(self.settled["kept"]),
        )

    def _ratio_and_mask_step(self, step_in_epoch: int, progress: float, holdout: Iterator[tuple[Tensor, Tensor]], loss_fn: nn.Module) -> None:
        """Every `update_every` weight steps a ratio step on held-out images; then the next weight step's masks."""
        beta2 = self.allocator.beta2(progress)
        importance = self._importance()
        if step_in_epoch % self.config.admm.update_every == 0:
            xh, yh = next(holdout)
            self.masker.set_masks(self.allocator.masks(importance, beta2, self.generator))
            # The inner module, not the DDP wrapper: this backward reaches only the ratios.
            ratio_loss = loss_fn(self.inner(xh.to(self.device)), yh.to(self.device))
            self.allocator.ratio_step(ratio_loss)
            self.allocator.admm_update(progress)
        with torch.no_grad():
            masks = self.allocator.masks(importance, beta2, self.generator)
        self.masker.set_masks([m.detach() for m in masks])

    def _epoch_record(self, epoch: int, loss: float) -> dict[str, Any]:
        alpha = self.allocator.keep_ratios.detach().double().cpu()
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": loss, "mean_keep_ratio": float(alpha.mean())}
        for b, z in zip(self.allocator.budgets, self.allocator.z):
            record[f"{b.cost.name}_fraction"] = float(b.cost(alpha.clamp(max=1.0))) / b.cost.dense
            record[f"{b.cost.name}_z_fraction"] = float(b.cost(z.double().cpu())) / b.cost.dense
        return record
