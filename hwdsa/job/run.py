"""The user's pruning job end to end: (pre-train) → DSA search → surgery → fine-tune → report.

Every phase checkpoints after each epoch into the output folder; a killed job started again with
`resume=True` continues from its last checkpoint and reaches the same result. Each phase's result and
checkpoint carry the inputs that produced it (`hwdsa.job.phases`): a resume under a changed configuration
reuses only the phases whose inputs are unchanged and reruns the rest, saying which and why. Cost models
and budgets are resolved (`hwdsa.job.latency`: profiling this host if needed) and checked before any training.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from hwdsa._io import write_json_atomic, write_text_atomic
from hwdsa.channels import channels_within_budgets
from hwdsa.checkpoint import load_checkpoint, restore_training_state, save_checkpoint, training_state
from hwdsa.costs import FlopsCost, ParamsCost, dense_reference
from hwdsa.counting import count_flops, count_params
from hwdsa.distributed import barrier, is_distributed, is_main_process, process_group_from_env, rank, unwrap, world_size
from hwdsa.dsa.search import DsaSearch, SearchConfig, SearchResult, rank_settled_first
from hwdsa.errors import ConfigError
from hwdsa.graph import trace_channel_graph
from hwdsa.importance import group_importance
from hwdsa.job.config import PruneJobConfig
from hwdsa.job.phases import changed_settings, inputs_digest, phase_inputs
from hwdsa.job.latency import JobLatency
from hwdsa.job.report import BudgetOutcome, DenseSummary, PruneReport, PrunedSummary, allocation_csv
from hwdsa.lut.rounding import round_for_budgets  # latency budgets: latency-optimal rounding
from hwdsa.training import (
    TrainConfig,
    batches_per_epoch,
    evaluate,
    make_optimizer,
    make_scheduler,
    recalibrate_batchnorm,
    set_epoch,
    train_epoch,
)

_log = logging.getLogger("hwdsa.job")

__all__ = ["JobData", "PruneJob", "job_data", "resolve_device"]


class JobData(NamedTuple):
    """A job's data: the splits and the loaders every phase reads (`job_data`)."""

    splits: Any
    train: Any
    holdout: Any
    """The held-out training images in training order: the search's ratio steps read them."""
    holdout_eval: Any
    """The same images for evaluation: what settings are chosen on (never the test set)."""
    test: Any
    input_shape: tuple[int, ...]


def job_data(cfg: PruneJobConfig) -> JobData:
    """The loaders a job with `cfg` trains, searches and evaluates on (also for benchmarks that train beside it)."""
    from hwdsa.data import load_dataset, make_loader

    splits = load_dataset(
        cfg.dataset, cfg.data_root, holdout_fraction=cfg.holdout_fraction, subset_per_class=cfg.subset_per_class, seed=cfg.seed
    )
    kw: dict[str, Any] = {"seed": cfg.seed, "rank": rank(), "world_size": world_size()}
    return JobData(
        splits,
        make_loader(splits.train, cfg.batch_size, train=True, **kw),
        make_loader(splits.holdout, cfg.batch_size, train=True, **kw),
        make_loader(splits.holdout, 256, train=False, **kw),
        make_loader(splits.test, 256, train=False, **kw),
        tuple(splits.input_shape),
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
    return torch.device(name)




class PruneJob:
    """Runs a `PruneJobConfig` into an output folder; see `run`."""

    def __init__(self, config: PruneJobConfig, out_dir: str | Path) -> None:
        self.config = config
        self.out = Path(out_dir)
        self.checkpoint = self.out / "checkpoint.pt"

    # -- helpers ------------------------------------------------------------------------------
    def _train_phase(self, phase: str, model: nn.Module, cfg: TrainConfig, loader: Any, device: torch.device, resume: bool) -> float:
        """Plain training with per-epoch checkpoints; returns seconds spent (this session)."""
        optimizer = make_optimizer(model, cfg)
        scheduler = make_scheduler(optimizer, cfg, batches_per_epoch(loader))
        start = 0
        tag = self._tags[phase]
        if resume and self.checkpoint.is_file():
            state = load_checkpoint(self.checkpoint)
            if state.get("phase") == phase and state.get("tag") == tag:
                start = restore_training_state(state, model, optimizer, scheduler)
                _log.info("resumed %s after epoch %d", phase, start)
        ddp = self._wrap(model, device)
        t0 = time.perf_counter()
        for epoch in range(start, cfg.epochs):
            set_epoch(loader, epoch)
            loss = train_epoch(ddp, loader, optimizer, scheduler, device, desc=f"{phase} {epoch + 1}/{cfg.epochs}")
            _log.info("%s epoch %d/%d: loss %.4f", phase, epoch + 1, cfg.epochs, loss)
            if is_main_process():
                save_checkpoint(self.checkpoint, {"phase": phase, "tag": tag, **training_state(model, optimizer, scheduler, epoch + 1)})
            barrier()
        return time.perf_counter() - t0

    @staticmethod
    def _wrap(model: nn.Module, device: torch.device) -> nn.Module:
        if not is_distributed():
            return model
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def _done(self, name: str) -> Path:
        return self.out / f".{name}.done.pt"

    def _reusable(self, phase: str, resume: bool, device: torch.device) -> dict[str, Any] | None:
        """The finished result of `phase` when resuming and its inputs are unchanged, else None (say why)."""
        path = self._done(phase)
        if not resume or not path.is_file():
            return None
        saved: dict[str, Any] = torch.load(path, map_location=device, weights_only=True)
        inputs = self._inputs[phase]
        old = json.loads(saved["inputs"]) if isinstance(saved, dict) and "inputs" in saved else None
        if old == json.loads(json.dumps(inputs, default=str)):
            _log.info("resume: reusing the finished %s phase (its inputs are unchanged)", phase)
            return saved
        what = "it was saved by an older hwdsa" if old is None else "changed: " + ", ".join(changed_settings(old, inputs))
        _log.warning("resume: rerunning the %s phase (%s)", phase, what)
        return None

    def _save_done(self, phase: str, payload: dict[str, Any]) -> None:
        if is_main_process():
            from hwdsa._io import atomic_path

            with atomic_path(self._done(phase)) as tmp:
                torch.save({"inputs": json.dumps(self._inputs[phase], default=str), **payload}, tmp)
        barrier()

    # -- the job ------------------------------------------------------------------------------
    def run(self, *, resume: bool = False) -> PruneReport:
        """Run every phase and write `pruned.pt`, `allocation.csv`, `report.json` and `config.json` (under torchrun,
        in the process group of its environment, joined for the job and left after it)."""
        with process_group_from_env():
            return self._run(resume=resume)

    def _run(self, *, resume: bool) -> PruneReport:
        from hwdsa.equivalence import check_pruned_matches_masked
        from hwdsa.models import create_model
        from hwdsa.surgery import plan_from_channels, prune, save_pruned

        cfg = self.config
        for what, path in (("--weights", cfg.weights), *(("--latency-table", t) for t in (cfg.latency_table, *(b.table for b in cfg.budgets)))):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{what} {path}: no such file")
        self._inputs = phase_inputs(cfg)
        self._tags = {phase: inputs_digest(inputs) for phase, inputs in self._inputs.items()}
        device = resolve_device(cfg.device)
        if is_distributed() and device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        torch.manual_seed(cfg.seed)
        self.out.mkdir(parents=True, exist_ok=True)
        if is_main_process():
            write_json_atomic(self.out / "config.json", cfg.to_dict())
        timings: dict[str, float] = {}
        t_job = time.perf_counter()
        # CPU seconds of this process (all its threads): the compute the job took, which a wall clock overstates
        # when the job waits on a shared machine or is paused (SIGSTOP) while something else is timed.
        cpu_job = time.process_time()

        splits, train, holdout, holdout_eval, test, input_shape = job_data(cfg)
        model = create_model(cfg.model, num_classes=splits.num_classes, **_model_kwargs(cfg.model, input_shape)).to(device)
        if cfg.weights:
            state = torch.load(cfg.weights, map_location=device, weights_only=True)
            model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)

        # Cost models and budgets first: a missing table or an infeasible budget is refused before any training.
        graph = trace_channel_graph(model, input_shape)
        latency_side = JobLatency(cfg, self.out)
        budgets = latency_side.resolve_budgets(model, graph, input_shape)

        # Phase 1: a dense model to start from (unless pruning from scratch or given weights).
        pretrain_reused = False
        if not cfg.from_scratch and not cfg.weights:
            dense_saved = self._reusable("pretrain", resume, device)
            if dense_saved is not None:
                model.load_state_dict(dense_saved["model"])
                pretrain_reused = True
            else:
                timings["pretrain_s"] = self._train_phase("pretrain", model, cfg.pretrain, train, device, resume)
                self._save_done("pretrain", {"model": model.state_dict()})
        dense_acc = evaluate(model, test, device) if not cfg.from_scratch else None
        dense_heldout = evaluate(model, holdout_eval, device) if not cfg.from_scratch else None

        # Phase 2: the search (or fixed ratios for baselines).
        result: SearchResult | None = None
        settled_kept: list[torch.Tensor] | None = None  # the network the search's settle phase trained, if any

        def final_counts(r: torch.Tensor) -> list[int]:
            """The network the job keeps for searched ratios `r`: the latency-aware rounding, checked on the device
            with --verify-latency (at the settle point when the search settles: it trains the checked network)."""
            if cfg.verifies_latency:
                ratios = [float(x) for x in r.detach().double().cpu()]
                # a copy of the weights without the mask hooks the searched model may still carry (at the settle point)
                unhooked = create_model(cfg.model, num_classes=splits.num_classes, **_model_kwargs(cfg.model, input_shape))
                unhooked.load_state_dict(unwrap(model).state_dict())
                return latency_side.verify(unhooked, graph, ratios, budgets[0], latency_side.latency_table, timings)
            return round_for_budgets(r, budgets, graph.group_sizes, multiple=cfg.round_to)

        saved = self._reusable("search", resume, device) if pretrain_reused or cfg.from_scratch or cfg.weights else None
        if saved is not None:
            model.load_state_dict(saved["model"])
            channels, ratios = list(saved["channels"]), list(saved["ratios"])
            settled_kept = saved.get("settled_kept")
            history = json.loads(saved["history"])
            timings.update(json.loads(saved["timings"]))
        elif cfg.fixed_keep_ratios is not None:
            ratios = list(cfg.fixed_keep_ratios)
            if len(ratios) == 1:
                ratios = ratios * len(graph.groups)
            # the baseline keeps its ratios: met, not re-allocated (round_for_budgets may grow groups unevenly)
            channels = channels_within_budgets(torch.tensor(ratios), budgets, graph.group_sizes, multiple=cfg.round_to)
            history = []
        else:
            ddp = self._wrap(model, device)
            searcher = DsaSearch(ddp, graph, budgets, SearchConfig(cfg.search, cfg.admm, cfg.seed), device, rounding=final_counts)
            result = searcher.run(train, holdout, checkpoint=self.checkpoint, resume=resume, tag=self._tags["search"])
            ratios, settled_kept = result.keep_ratios, result.settled_kept
            channels = result.channels if settled_kept is not None else final_counts(torch.tensor(ratios))
            history = result.history
            # a settling search ran the device check inside it: that time is `verify_latency_s`, not the search's
            search_s = result.seconds - (timings.get("verify_latency_s", 0.0) if settled_kept is not None else 0.0)
            timings["search_s"] = search_s
            timings["search_s_per_step"] = search_s / max(1, result.weight_steps)
        if saved is None:
            self._save_done(
                "search",
                {
                    "model": model.state_dict(),
                    "channels": channels,
                    "ratios": ratios,
                    "history": json.dumps(history),
                    "timings": json.dumps(timings),
                    "settled_kept": settled_kept,
                },
            )

        # Phase 3: surgery and fine-tuning.
        importance = rank_settled_first(group_importance(model, graph, mode=cfg.admm.importance), settled_kept)
        plan = plan_from_channels(
            graph,
            importance,
            channels,
            model_name=cfg.model,
            num_classes=splits.num_classes,
            model_kwargs=_model_kwargs(cfg.model, input_shape),
        )
        pruned = prune(model, graph, plan).to(device)
        flops_exact = FlopsCost(graph).exact(channels)
        flops_counted = count_flops(pruned, input_shape)
        if int(round(flops_exact)) != flops_counted:
            raise RuntimeError(f"FLOPs of the pruned network ({flops_counted}) differ from the cost function ({flops_exact}): a bug")
        check_pruned_matches_masked(unwrap(model), graph, plan, pruned, next(iter(holdout))[0][:32].to(device))
        acc_after_surgery = evaluate(pruned, test, device)
        recalibrate_batchnorm(pruned, train, device)
        acc_before_ft = evaluate(pruned, test, device)
        timings["finetune_s"] = self._train_phase("finetune", pruned, cfg.finetune, train, device, resume)
        pruned_acc = evaluate(pruned, test, device)
        pruned_heldout = evaluate(pruned, holdout_eval, device)
        latency, latency_note = latency_side.measure(unwrap(model), graph, channels, budgets, timings)
        timings["total_s"] = time.perf_counter() - t_job
        timings["cpu_s"] = time.process_time() - cpu_job

        dense_flops, dense_params = FlopsCost(graph).dense, ParamsCost(graph).dense
        pruned_params = count_params(pruned)
        check_path = self.out / "latency_check.json"  # written by JobLatency.verify (this run or the resumed one)
        report = PruneReport(
            model=cfg.model,
            dataset=cfg.dataset,
            flow="from_scratch" if cfg.from_scratch else ("fixed_ratios" if cfg.fixed_keep_ratios else "pretrained"),
            budgets={
                b.cost.name: BudgetOutcome(
                    limit=b.limit,
                    unit=b.cost.unit,
                    fraction_of_dense=b.limit / dense_reference(b.cost),
                    value=b.cost.exact(channels),
                    value_kind="predicted" if b.cost.name in latency_side.tables else "counted",
                    table=latency_side.tables.get(b.cost.name),
                )
                for b in budgets
            },
            dense=DenseSummary(dense_acc, dense_heldout, dense_flops, dense_params),
            pruned=PrunedSummary(
                accuracy=pruned_acc,
                heldout_accuracy=pruned_heldout,
                accuracy_after_surgery=acc_after_surgery,
                accuracy_before_finetune=acc_before_ft,
                flops=flops_counted,
                params=pruned_params,
                flops_fraction=flops_counted / dense_flops,
                params_fraction=pruned_params / dense_params,
            ),
            groups=len(graph.groups),
            channels=list(channels),
            keep_ratios=list(ratios),
            search_history=history,
            timings=timings,
            world_size=world_size(),
            device=str(device),
            admm=cfg.admm.to_dict(),
            latency_check=json.loads(check_path.read_text(encoding="utf-8")) if cfg.verifies_latency and check_path.is_file() else None,
            latency=latency,
            latency_note=latency_note,
        )
        if is_main_process():
            save_pruned(
                self.out / "pruned.pt",
                pruned,
                plan,
                extra={"report": json.dumps(report.to_dict()), "dataset": cfg.dataset, "data_root": cfg.data_root or ""},
            )
            write_text_atomic(self.out / "allocation.csv", allocation_csv(graph, channels, ratios))
            report.write(self.out / "report.json")
            self.checkpoint.unlink(missing_ok=True)
        barrier()
        return report


def _model_kwargs(name: str, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Per-model construction arguments that depend on the data (the small CNN's input channels)."""
    return {"in_channels": int(input_shape[0])} if name == "small_cnn" else {}
