"""The user's pruning job end to end: (pre-train) → DSA search → surgery → fine-tune → report.

Every phase checkpoints after each epoch into the output folder; a killed job started again with
`resume=True` continues from its last checkpoint and reaches the same result. Each phase's result and
checkpoint carry the inputs that produced it (`phase_inputs`): a resume under a changed configuration
reuses only the phases whose inputs are unchanged and reruns the rest, saying which and why.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwdsa._io import write_json_atomic, write_text_atomic
from hwdsa.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from hwdsa.costs import Budget, CostModel, FlopsCost, ParamsCost, dense_reference
from hwdsa.counting import count_flops, count_params
from hwdsa.distributed import barrier, broadcast_object, init_from_env, is_distributed, is_main_process, rank, unwrap, world_size
from hwdsa.dsa.allocator import AdmmConfig
from hwdsa.dsa.process import Beta2Schedule
from hwdsa.channels import channels_within_budgets
from hwdsa.dsa.search import DsaSearch, SearchConfig, SearchResult
from hwdsa.errors import ConfigError
from hwdsa.graph import ChannelGraph, trace_channel_graph
from hwdsa.importance import group_importance
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

_log = logging.getLogger(__name__)

REPORT_VERSION = 1


@dataclass(frozen=True)
class BudgetSpec:
    """A budget as the user states it: a fraction of the dense cost, or an absolute value in the cost's unit."""

    cost: str
    fraction: float | None = None
    absolute: float | None = None

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.absolute is None):
            raise ConfigError(f"budget on {self.cost}: give exactly one of a fraction or an absolute value")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ConfigError(f"budget on {self.cost}: a fraction must lie in (0, 1]; got {self.fraction}")
        if self.absolute is not None and not self.absolute > 0:
            raise ConfigError(f"budget on {self.cost}: must be positive; got {self.absolute}")

    def resolve(self, cost: CostModel) -> Budget:
        if self.fraction is not None:
            return Budget.fraction_of_dense(cost, self.fraction)
        assert self.absolute is not None
        return Budget(cost, self.absolute)


@dataclass(frozen=True)
class PruneJobConfig:
    """Everything a pruning job needs; written as `config.json` next to its outputs."""

    model: str = "small_cnn"
    dataset: str = "mnist"
    data_root: str | None = None
    budgets: tuple[BudgetSpec, ...] = (BudgetSpec("flops", fraction=0.5),)
    from_scratch: bool = False
    weights: str | None = None
    pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, lr=0.1))
    search: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=4, lr=0.02))
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=6, lr=0.02))
    admm: AdmmConfig = field(default_factory=AdmmConfig)
    batch_size: int = 128
    subset_per_class: int | None = None
    holdout_fraction: float = 0.1
    round_to: int | None = None
    seed: int = 0
    device: str = "auto"
    latency_table: str | None = None
    latency_backend: str | None = None
    """Profile this backend (e.g. "onnxruntime") into `<out>/latency_table.csv` when no table is given."""
    fixed_keep_ratios: tuple[float, ...] | None = None
    """Skip the search and prune every group at these ratios (the uniform baseline uses this)."""
    verify_latency: bool = False
    """Time candidate roundings on the table's backend (this machine must be its device) and keep the largest
    whose measured latency meets the latency budget (`hwdsa.lut.verify`)."""
    verify_margin: float = 0.015
    """The share of the budget `verify_latency` keeps free for the noise of the timing itself
    (`hwdsa.lut.verify.DEFAULT_MARGIN`)."""

    def __post_init__(self) -> None:
        if not self.budgets and self.fixed_keep_ratios is None:
            raise ConfigError("give at least one budget, e.g. --flops 0.5")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1; got {self.batch_size}")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError(f"--round-to must be >= 1; got {self.round_to}")
        if self.verify_latency and [b.cost for b in self.budgets] != ["latency"]:
            raise ConfigError("--verify-latency checks a latency budget: give exactly one budget, --latency")
        if not 0 <= self.verify_margin < 0.5:
            raise ConfigError(f"--verify-margin is a share of the budget in [0, 0.5), e.g. 0.015; got {self.verify_margin}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["admm"]["beta2"] = asdict(self.admm.beta2)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruneJobConfig:
        """Inverse of `to_dict` (a JSON config file); unknown keys are refused."""
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; valid keys: {sorted(known)}")
        d = dict(d)
        for key in ("pretrain", "search", "finetune"):
            if key in d and isinstance(d[key], dict):
                d[key] = TrainConfig(**d[key])
        if isinstance(d.get("admm"), dict):
            admm = dict(d["admm"])
            if isinstance(admm.get("beta2"), dict):
                admm["beta2"] = Beta2Schedule(**admm["beta2"])
            d["admm"] = AdmmConfig(**admm)
        if "budgets" in d:
            d["budgets"] = tuple(b if isinstance(b, BudgetSpec) else BudgetSpec(**b) for b in d["budgets"])
        if d.get("fixed_keep_ratios") is not None:
            d["fixed_keep_ratios"] = tuple(d["fixed_keep_ratios"])
        return cls(**d)


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
    search = {key: d[key] for key in ("budgets", "search", "admm", "round_to", "fixed_keep_ratios", "latency_backend", "verify_latency", "verify_margin")}
    search["latency_table"] = None if cfg.latency_table is None else {"path": cfg.latency_table, "sha256": _file_digest(cfg.latency_table)}
    search["earlier phases"] = pretrain
    finetune = {"finetune": d["finetune"], "earlier phases": search}
    return {"pretrain": pretrain, "search": search, "finetune": finetune}


def _digest(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _changed(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Top-level settings that differ between two phases' inputs."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
    return torch.device(name)


def build_cost(name: str, graph: ChannelGraph, latency_table: str | None) -> CostModel:
    """The cost model called `name` for this graph ("flops", "params" or "latency")."""
    if name == "flops":
        return FlopsCost(graph)
    if name == "params":
        return ParamsCost(graph)
    if name == "latency":
        if latency_table is None:
            raise ConfigError(
                "a latency budget needs a lookup table: pass --latency-table TABLE.csv (see `hwdsa profile`), "
                "or --latency-backend NAME to profile this device first"
            )
        from hwdsa.lut.cost_model import LatencyCost
        from hwdsa.lut.table import LatencyTable

        return LatencyCost.fit(LatencyTable.read(latency_table), graph)
    raise ConfigError(f"unknown cost {name!r}; valid: flops, params, latency")


def uniform_keep_ratio(budget: Budget, n_groups: int, lower: float = 1e-3) -> float:
    """The one keep ratio that, given to every group, meets `budget` exactly (bisection; cost is monotone)."""
    lo, hi = lower, 1.0
    if float(budget.cost(torch.full((n_groups,), hi, dtype=torch.float64))) <= budget.limit:
        return 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float(budget.cost(torch.full((n_groups,), mid, dtype=torch.float64))) <= budget.limit:
            lo = mid
        else:
            hi = mid
    return lo


def allocation_csv(graph: ChannelGraph, channels: list[int], ratios: list[float]) -> str:
    """One row per channel group: its size, kept channels, the searched ratio and its member layers."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["group", "channels", "kept", "kept_fraction", "keep_ratio", "producers", "consumers"])
    for g, c, r in zip(graph.groups, channels, ratios):
        w.writerow([g.index, g.channels, c, f"{c / g.channels:.4f}", f"{r:.4f}", " ".join(g.producers), " ".join(g.consumers)])
    return buf.getvalue()


class PruneJob:
    """Runs a `PruneJobConfig` into an output folder; see `run`."""

    def __init__(self, config: PruneJobConfig, out_dir: str | Path) -> None:
        self.config = config
        self.out = Path(out_dir)
        self.checkpoint = self.out / "checkpoint.pt"

    # -- helpers ------------------------------------------------------------------------------
    def _loaders(self) -> tuple[Any, Any, Any, Any, Any, Any]:
        from hwdsa.data import load_dataset, make_loader

        cfg = self.config
        splits = load_dataset(
            cfg.dataset, cfg.data_root, holdout_fraction=cfg.holdout_fraction, subset_per_class=cfg.subset_per_class, seed=cfg.seed
        )
        kw: dict[str, Any] = {"seed": cfg.seed, "rank": rank(), "world_size": world_size()}
        train = make_loader(splits.train, cfg.batch_size, train=True, **kw)
        holdout = make_loader(splits.holdout, cfg.batch_size, train=True, **kw)
        test = make_loader(splits.test, 256, train=False, **kw)
        # The held-out images as a validation set: what settings are chosen on (never the test set).
        holdout_eval = make_loader(splits.holdout, 256, train=False, **kw)
        return splits, train, holdout, holdout_eval, test, splits.input_shape

    def _train_phase(self, phase: str, model: nn.Module, cfg: TrainConfig, loader: Any, device: torch.device, resume: bool) -> float:
        """Plain training with per-epoch checkpoints; returns seconds spent (this session)."""
        optimizer = make_optimizer(model, cfg)
        scheduler = make_scheduler(optimizer, cfg, batches_per_epoch(loader))
        start = 0
        tag = self._tags[phase]
        if resume and self.checkpoint.is_file():
            state = load_checkpoint(self.checkpoint)
            if state.get("phase") == phase and state.get("tag") == tag:
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                set_rng_state(state["rng"])
                start = int(state["epoch"])
                _log.info("resumed %s after epoch %d", phase, start)
        ddp = self._wrap(model, device)
        t0 = time.perf_counter()
        for epoch in range(start, cfg.epochs):
            set_epoch(loader, epoch)
            loss = train_epoch(ddp, loader, optimizer, scheduler, device, desc=f"{phase} {epoch + 1}/{cfg.epochs}")
            _log.info("%s epoch %d/%d: loss %.4f", phase, epoch + 1, cfg.epochs, loss)
            if is_main_process():
                save_checkpoint(
                    self.checkpoint,
                    {
                        "phase": phase,
                        "tag": tag,
                        "epoch": epoch + 1,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "rng": rng_state(),
                    },
                )
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
        what = "it was saved by an older hwdsa" if old is None else "changed: " + ", ".join(_changed(old, inputs))
        _log.warning("resume: rerunning the %s phase (%s)", phase, what)
        return None

    def _save_done(self, phase: str, payload: dict[str, Any]) -> None:
        if is_main_process():
            from hwdsa._io import atomic_path

            with atomic_path(self._done(phase)) as tmp:
                torch.save({"inputs": json.dumps(self._inputs[phase], default=str), **payload}, tmp)
        barrier()

    # -- the job ------------------------------------------------------------------------------
    def run(self, *, resume: bool = False) -> dict[str, Any]:
        """Run every phase and write `pruned.pt`, `allocation.csv`, `report.json` and `config.json`."""
        from hwdsa.equivalence import check_pruned_matches_masked
        from hwdsa.models import create_model
        from hwdsa.surgery import plan_from_channels, prune, save_pruned

        cfg = self.config
        for what, path in (("--weights", cfg.weights), ("--latency-table", cfg.latency_table)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{what} {path}: no such file")
        self._inputs = phase_inputs(cfg)
        self._tags = {phase: _digest(inputs) for phase, inputs in self._inputs.items()}
        init_from_env()
        device = resolve_device(cfg.device)
        if is_distributed() and device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        torch.manual_seed(cfg.seed)
        self.out.mkdir(parents=True, exist_ok=True)
        if is_main_process():
            write_json_atomic(self.out / "config.json", cfg.to_dict())
        timings: dict[str, float] = {}
        t_job = time.perf_counter()

        splits, train, holdout, holdout_eval, test, input_shape = self._loaders()
        model = create_model(cfg.model, num_classes=splits.num_classes, **_model_kwargs(cfg.model, input_shape)).to(device)
        if cfg.weights:
            state = torch.load(cfg.weights, map_location=device, weights_only=True)
            model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)

        # Cost models and budgets first: a missing table or an infeasible budget is refused before any training.
        graph = trace_channel_graph(model, input_shape)
        budgets = self._resolve_budgets(model, graph, input_shape)

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
        saved = self._reusable("search", resume, device) if pretrain_reused or cfg.from_scratch or cfg.weights else None
        if saved is not None:
            model.load_state_dict(saved["model"])
            channels, ratios = list(saved["channels"]), list(saved["ratios"])
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
            searcher = DsaSearch(ddp, graph, budgets, SearchConfig(cfg.search, cfg.admm, cfg.seed), device)
            result = searcher.run(train, holdout, checkpoint=self.checkpoint, resume=resume, tag=self._tags["search"])
            ratios = result.keep_ratios
            channels = round_for_budgets(torch.tensor(ratios), budgets, graph.group_sizes, multiple=cfg.round_to)
            if cfg.verify_latency:
                channels = self._verify_latency(unwrap(model), graph, ratios, budgets[0], self.latency_table, timings)
            history = result.history
            timings["search_s"] = result.seconds
            timings["search_s_per_step"] = result.seconds / max(1, result.weight_steps)
        if saved is None:
            self._save_done(
                "search",
                {
                    "model": model.state_dict(),
                    "channels": channels,
                    "ratios": ratios,
                    "history": json.dumps(history),
                    "timings": json.dumps(timings),
                },
            )

        # Phase 3: surgery and fine-tuning.
        importance = group_importance(model, graph, mode=cfg.admm.importance)
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
        timings["total_s"] = time.perf_counter() - t_job

        dense_flops, dense_params = FlopsCost(graph).dense, ParamsCost(graph).dense
        report: dict[str, Any] = {
            "report_version": REPORT_VERSION,
            "model": cfg.model,
            "dataset": cfg.dataset,
            "flow": "from_scratch" if cfg.from_scratch else ("fixed_ratios" if cfg.fixed_keep_ratios else "pretrained"),
            "budgets": {b.cost.name: {"limit": b.limit, "unit": b.cost.unit, "fraction_of_dense": b.limit / dense_reference(b.cost), "achieved": b.cost.exact(channels)} for b in budgets},
            "dense": {"accuracy": dense_acc, "heldout_accuracy": dense_heldout, "flops": dense_flops, "params": dense_params},
            "pruned": {
                "accuracy": pruned_acc,
                "heldout_accuracy": pruned_heldout,
                "accuracy_after_surgery": acc_after_surgery,
                "accuracy_before_finetune": acc_before_ft,
                "flops": flops_counted,
                "params": count_params(pruned),
                "flops_fraction": flops_counted / dense_flops,
                "params_fraction": count_params(pruned) / dense_params,
            },
            "groups": len(graph.groups),
            "channels": channels,
            "keep_ratios": ratios,
            "search_history": history,
            "timings": timings,
            "world_size": world_size(),
            "device": str(device),
            "admm": {k: v for k, v in cfg.admm.to_dict().items()},
        }
        check_path = self.out / "latency_check.json"
        if cfg.verify_latency and check_path.is_file():  # written by _verify_latency (this run or the resumed one)
            report["latency_check"] = json.loads(check_path.read_text(encoding="utf-8"))
        if is_main_process():
            save_pruned(
                self.out / "pruned.pt",
                pruned,
                plan,
                extra={"report": json.dumps(report), "dataset": cfg.dataset, "data_root": cfg.data_root or ""},
            )
            write_text_atomic(self.out / "allocation.csv", allocation_csv(graph, channels, ratios))
            write_json_atomic(self.out / "report.json", report)
            self.checkpoint.unlink(missing_ok=True)
        barrier()
        return report


    def _resolve_budgets(self, model: nn.Module, graph: ChannelGraph, input_shape: tuple[int, ...]) -> list[Budget]:
        """Every budget's cost model (profiling this device if asked), each checked for feasibility."""
        from hwdsa.dsa.projection import check_feasible

        cfg = self.config
        self.latency_table = cfg.latency_table
        if self.latency_table is None and cfg.latency_backend is not None and any(s.cost == "latency" for s in cfg.budgets):
            from hwdsa.lut.network import latency_table_for

            self.latency_table = str(self.out / "latency_table.csv")
            if is_main_process():  # resumable: a rerun finds the finished table and measures nothing
                latency_table_for(model, input_shape, cfg.latency_backend, self.latency_table, name=cfg.model)
            barrier()
        budgets = [spec.resolve(build_cost(spec.cost, graph, self.latency_table)) for spec in cfg.budgets]
        for budget in budgets:
            if cfg.fixed_keep_ratios is None:
                check_feasible(budget.cost, budget.limit, cfg.admm.min_keep_ratio)
            dense = budget.cost.dense
            if budget.limit >= dense:
                unit = f" {budget.cost.unit}" if budget.cost.unit else ""
                _log.warning(
                    "the %s budget (%.6g%s) is at or above the dense network's %s (%.6g%s): the dense network already "
                    "meets it, so no channel needs pruning",
                    budget.cost.name, budget.limit, unit, budget.cost.name, dense, unit,
                )  # fmt: skip
        return budgets

    def _verify_latency(
        self, model: nn.Module, graph: ChannelGraph, ratios: list[float], budget: Budget, table_path: str | None,
        timings: dict[str, Any],
    ) -> list[int]:  # fmt: skip
        """`hwdsa.lut.verify.meet_measured_budget` on the main process; every rank gets its counts."""
        from hwdsa.lut.network import backend_for_table
        from hwdsa.lut.table import LatencyTable
        from hwdsa.lut.verify import meet_measured_budget

        channels: list[int] = []
        if is_main_process():
            assert table_path is not None  # a latency budget always has its table
            backend = backend_for_table(LatencyTable.read(table_path).meta)
            spec = self.config.budgets[0]
            t0 = time.perf_counter()
            check = meet_measured_budget(
                model, graph, ratios, budget, backend, fraction=spec.fraction, multiple=self.config.round_to,
                margin=self.config.verify_margin,
            )  # fmt: skip
            timings["verify_latency_s"] = time.perf_counter() - t0
            write_json_atomic(self.out / "latency_check.json", check.to_json())
            channels = list(check.channels)
        return broadcast_object(channels)


def _model_kwargs(name: str, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Per-model construction arguments that depend on the data (the small CNN's input channels)."""
    return {"in_channels": int(input_shape[0])} if name == "small_cnn" else {}


def with_overrides(config: PruneJobConfig, **overrides: Any) -> PruneJobConfig:
    """A copy of `config` with some fields replaced (CLI flags over a config file)."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
