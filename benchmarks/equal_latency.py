"""Accuracy at equal measured latency on full CIFAR-10: hwdsa's latency budget against FLOPs pruning,
uniform width and Torch-Pruning.

Device: this host's CPU, ONNX Runtime, batch 1, fp32, one thread. Every run starts from the committed dense
ResNet-20 (`benchmarks/dense/resnet20_cifar10.pt`) and must reach T = a fraction of the dense network's
latency as measured here. The rows (every pruned row trains its weights for the same number of epochs,
search epochs counted, and ends with the same fine-tuning):

- `uniform`: one keep ratio for every group (channels by BatchNorm |γ|), bisected until the measured
  latency meets T; fine-tuned for the search's epochs plus the fine-tuning epochs.
- `torch_pruning`: Torch-Pruning 1.6, global pruning with `GroupMagnitudeImportance`, iterative (`--tp-steps`
  prune steps, the search's epochs of training spread between them, as its users run it). Each step is one
  global step on the network as it is, its ratio scanned on measured latency so that latency falls linearly
  to T (TP's own schedule, linear in its ratio, overshoots T once the network trains between steps). With
  `round_to` on the lattice where its global ranking can reach T there (judged on a one-shot pruning of the
  dense model); else on the lattice within the goal's 1.02 T; else off it.
- `dsa_flops`: DSA with a FLOPs budget (searched at the FLOPs fraction of the uniform row), then the FLOPs
  fraction bisected on the *projection of the searched ratios* (not on whole searches) until the measured
  latency meets T.
- `dsa_latency`: `hwdsa prune --latency T --verify-latency`, priced with this host's table (profiled into
  the per-user cache by the job itself); `dsa_latency_smooth`: the same with the expected-latency
  smoothing (`AdmmConfig.smooth_costs`); `dsa_latency_lattice`: smoothed, and no group under the backend's
  channel lattice (`--min-channels 8 --round-to 8`: under it ONNX Runtime adds layout reorders the per-layer
  table does not see, and a channel saves less time than the table says); `dsa_latency_settle`: smoothed, and the
  search's last epoch trains the network it chose under fixed masks (`--settle-fraction 0.2`) instead of random
  ones, the measured check (`--verify-latency`) made at that point (`dsa_latency_settle_checked`; in the record
  `dsa_latency_settle`, made by commit 0f92745, the check came after the search and moved 1-3 groups of the network
  that had settled); `dsa_latency_settle_restart`: as `dsa_latency_settle_checked`, with the learning rate's cosine
  restarted at the settle point (`--settle-restart`; without it the settle epoch runs at the tail of the search's
  cosine, under a tenth of the peak rate, where each of Torch-Pruning's steps starts its own);
  `dsa_latency_settle_late`: the same, settling at 0.9 of the search (`--settle-fraction 0.1`). The variants are
  compared on held-out images; the best one is hwdsa's row.
- Controls (`tp_arch_oneshot`, `smooth_arch_oneshot`, `restart_arch_oneshot`): Torch-Pruning's, the smoothed latency
  row's and the settle-and-restart row's channel counts, cut from the dense model in one shot by BatchNorm |γ| and
  fine-tuned for all the epochs, as the uniform row is: against their source rows they tell the allocation's worth
  from the training while pruning.
- Diagnostic (`dsa_latency_matched`): the smoothed latency row with its budget at Torch-Pruning's latency as
  measured at its arch stage (same target and seed): Torch-Pruning may end up to 1.02 T where its ranking cannot
  reach T on the lattice, hwdsa a margin under T; this pair compares them at the same latency.

Uniform, the FLOPs row and Torch-Pruning (where it can) round to the backend's channel lattice (multiples of
`Backend.channel_multiple`), as the latency rows do (which may also use the table's measured counts below it,
1, 2 and 4): the comparison is about the allocation, not about off-lattice counts. Where no network on the
lattice meets T (at 30% here: every group at 8 channels measures 0.37 of the dense latency), uniform and the
FLOPs row round to the lattice and those counts under it, as the latency rows may.

Stages (`--stage`), so that the suite spans sessions while every host-dependent step stays on one host:
- `arch` (host-dependent): time the dense network, then per (target, seed, method) find the pruned
  architecture and its starting weights; each is timed against T here. Writes `equal_latency/arch/<run>.{json,pt}`.
- `finetune` (host-independent): BatchNorm recalibration, accuracy before fine-tuning, the fine-tuning,
  test and held-out accuracy. Writes `equal_latency/<run>.{json,pt}`.
- `time` (host-dependent): the dense and every pruned network in the same interleaved rounds
  (`--timing-rounds` rounds of `--timing-repeats` runs), the dense network before every 4 rows: each row's
  fraction of dense paired by round (`hwdsa.profilers.paired_fraction`), its ms the quietest round.
  Writes `equal_latency/timing-<fingerprint>.json`; a later host adds its own file beside it.
- `report`: `NAME.{md,csv,json,png}` (`--name`, default `equal_latency`; a suite on a new host is a new name).

Finished runs are skipped; a run file made under other settings is refused (delete it to rerun).

    taskset -c 1 python benchmarks/equal_latency.py --data-root PATH/TO/cifar10 --stage arch --targets 0.5 --seeds 0
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import io
import json
import logging
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwdsa._io import write_json_atomic, write_text_atomic
from hwdsa.checkpoint import load_checkpoint, restore_training_state, save_checkpoint, training_state
from hwdsa.channels import round_channels
from hwdsa.costs import FlopsCost, ParamsCost, build_cost
from hwdsa.dsa.allocator import AdmmConfig
from hwdsa.dsa.projection import project_onto_budget
from hwdsa.graph import trace_channel_graph
from hwdsa.graph.structure import ChannelGraph
from hwdsa.job import BudgetSpec, PruneJob, PruneJobConfig
from hwdsa.job.latency import host_table
from hwdsa.job.run import JobData, job_data
from hwdsa.lut.cost_model import LatencyCost
from hwdsa.lut.network import DENSE_EVERY, fractions_of_reference, interleave_reference, measure_rounds, time_against_dense
from hwdsa.lut.rounding import rounding_steps
from hwdsa.lut.verify import DEFAULT_MARGIN
from hwdsa.models import create_model
from hwdsa.profilers.backend import Backend, get_backend
from hwdsa.profilers.base import Measurement, TimingProtocol, quietest
from hwdsa.surgery import PruningPlan, load_pruned, prune, save_pruned
from hwdsa.training import (
    TrainConfig,
    batches_per_epoch,
    evaluate,
    fit,
    make_optimizer,
    make_scheduler,
    recalibrate_batchnorm,
    set_epoch,
    train_epoch,
)

from _command import reproduce_command
from _plots import pyplot, save_figure
from _runs import claimed, format_interval, host_record, paired_interval

_log = logging.getLogger("benchmarks.equal_latency")
HERE = Path(__file__).resolve().parent
INPUT_SHAPE = (3, 32, 32)

METHODS: dict[str, str] = {
    "uniform": "uniform width, one ratio bisected on measured latency",
    "torch_pruning": "Torch-Pruning 1.6, global group magnitude, iterative, each step sized on measured latency",
    "dsa_flops": "DSA, FLOPs budget bisected (on the projection) on measured latency",
    "dsa_latency": "DSA, latency budget, --verify-latency (hwdsa)",
    "dsa_latency_smooth": "DSA, latency budget, --verify-latency, expected-latency smoothing",
    "dsa_latency_lattice": "DSA, latency budget, --verify-latency, smoothing, no group under the 8-channel lattice "
    "(--min-channels 8 --round-to 8)",
    "dsa_latency_settle": "record of commit 0f92745: smoothing, the search's last epoch trains the cost model's rounding "
    "under fixed masks (--settle-fraction 0.2), the measured check after it (it moved 1-3 groups on every seed)",
    "dsa_latency_settle_checked": "DSA, latency budget, --verify-latency, smoothing, --settle-fraction 0.2: the measured "
    "check at the settle point, the search's last epoch trains the network it kept",
    "dsa_latency_settle_restart": "as dsa_latency_settle_checked, and the learning rate's cosine restarts at the settle "
    "point (--settle-restart): the last epoch trains the network it kept at the full rate, as Torch-Pruning's steps do",
    "dsa_latency_settle_late": "as dsa_latency_settle_restart, settling at 0.9 of the search (--settle-fraction 0.1 "
    "--settle-restart): the ratios move for longer, the kept network trains at the restarted rate for half an epoch",
    "tp_arch_oneshot": "control: Torch-Pruning's channel counts, cut from the dense model in one shot (BatchNorm |γ|)",
    "smooth_arch_oneshot": "control: the smoothed latency row's channel counts, cut from the dense model in one shot",
    "restart_arch_oneshot": "control: the settle-and-restart row's channel counts, cut from the dense model in one shot",
    "dsa_latency_matched": "diagnostic: the smoothed latency row with its budget at Torch-Pruning's measured latency "
    "(same seed), so that the two compare at the same latency",
}
LATENCY_ROWS = (
    "dsa_latency",
    "dsa_latency_smooth",
    "dsa_latency_lattice",
    "dsa_latency_settle",
    "dsa_latency_settle_checked",
    "dsa_latency_settle_restart",
    "dsa_latency_settle_late",
)
#: The settling rows' `AdmmConfig` (settle_fraction, settle_restart): 0.2 is the last of the five search epochs.
SETTLING: dict[str, tuple[float, bool]] = {
    "dsa_latency_settle_checked": (0.2, False),
    "dsa_latency_settle_restart": (0.2, True),
    "dsa_latency_settle_late": (0.1, True),
}
#: The variant every other latency variant is paired against (3 seeds at every target): the job's search before
#: the settle phase. hwdsa's row is the variant furthest ahead of it on held-out images, over at least `MIN_PAIRS_TO_CHOOSE`
#: paired (target, seed) runs.
REFERENCE_VARIANT = "dsa_latency_smooth"
MIN_PAIRS_TO_CHOOSE = 3
#: Rows made by an earlier hwdsa, kept as records (their files stay in the report); the commit that reruns them.
RECORDS: dict[str, str] = {"dsa_latency_settle": "0f92745"}
#: Controls, not competitors: another row's channel counts (same seed), cut from the dense model in one shot by
#: BatchNorm |γ| as the uniform row is, and fine-tuned for every epoch the rows train. Against their source row
#: they separate what an allocation is worth from how the method trained while it pruned.
CONTROLS: dict[str, str] = {
    "tp_arch_oneshot": "torch_pruning",
    "smooth_arch_oneshot": "dsa_latency_smooth",
    "restart_arch_oneshot": "dsa_latency_settle_restart",
}
#: Diagnostics, not competitors: hwdsa's search with its budget at another row's measured latency (same target and
#: seed; the verification aims at that latency). Torch-Pruning may end up to `GOAL_TOLERANCE` x T where its ranking
#: cannot reach T on the lattice, while hwdsa aims a margin under T: this pair compares the two at equal latency.
MATCHED: dict[str, str] = {"dsa_latency_matched": "torch_pruning"}
#: Torch-Pruning's global ranking skips a group it would empty, so past about 70% of all channels its result stops
#: shrinking (on ResNet-20 a 0.85 ratio keeps more than 0.8, 0.7 more than 0.6 in places): its ratio is scanned,
#: not bisected, over ratios up to `1 - TP_LOWEST_KEEP`.
TP_LOWEST_KEEP = 0.1
#: The issue's goal: every pruned row measures at most this times T.
GOAL_TOLERANCE = 1.02
TP_MAX_LAYER_RATIO = 0.9


@dataclass(frozen=True)
class Suite:
    """The settings every run of the suite shares (part of every run's key)."""

    weights_sha256: str
    search_epochs: int = 5
    finetune_epochs: int = 15
    lr: float = 0.02
    batch_size: int = 128
    subset_per_class: int | None = None
    tp_steps: int = 5
    margin: float = DEFAULT_MARGIN
    probe_rounds: int = 5
    probe_repeats: int = 50


#: the first suite's name (its host-dependent steps ran on the AMD host `7a9b5131f1f2`)
SUITE_NAME = "equal_latency"
#: suites whose arch stage took a fraction of dense as the ratio of each side's quietest round, before `Timer`
#: paired it by round
QUIETEST_PROBE_SUITES = frozenset({SUITE_NAME})


def run_name(target: float, method: str, seed: int) -> str:
    return f"t{round(100 * target)}-{method}-seed{seed}"


def run_key(suite: Suite, target: float, method: str, seed: int) -> str:
    blob = json.dumps({"suite": asdict(suite), "target": target, "method": method, "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------- timing
def _ms(rounds: Sequence[Measurement]) -> float:
    """hwdsa's statistic for a latency in ms over interleaved rounds (`hwdsa.profilers.base.quietest`)."""
    return quietest(rounds).median_ms


class Timer:
    """Latency on this host as fractions of the dense network timed in the same interleaved rounds.

    Probes are kept in `probes` (a JSON file per host and probe protocol) and shared by every process of the
    suite on this host: the same network gets the same measurement in every run, so a method's choice that
    turns on a probe near its aim (Torch-Pruning on the lattice) is the same for every seed.
    """

    def __init__(self, model: nn.Module, graph: ChannelGraph, backend: Backend, probes: Path | None = None) -> None:
        self.model, self.graph, self.backend = model, graph, backend
        self.dense = list(graph.group_sizes)
        self.probes = probes
        self.seen: dict[tuple[int, ...], float] = {}

    def _load(self) -> None:
        if self.probes is not None and self.probes.is_file():
            for k, v in json.loads(self.probes.read_text()).items():
                self.seen.setdefault(tuple(int(c) for c in k.split()), float(v))

    def fractions(self, channel_lists: Sequence[Sequence[int]], *, rounds: int, repeats: int) -> list[float]:
        """Each network's fraction of dense, paired by round with the dense network timed before every
        `DENSE_EVERY` of them (`hwdsa.profilers.paired_fraction`), as the device check and the final timing take it."""
        protocol = TimingProtocol(warmup=10, repeats=repeats, max_attempts=1)
        return time_against_dense(self.model, self.graph, channel_lists, self.backend, protocol, rounds=rounds).fractions

    def dense_ms(self, *, rounds: int, repeats: int) -> float:
        protocol = TimingProtocol(warmup=10, repeats=repeats, max_attempts=1)
        return _ms(measure_rounds(self.model, self.graph, [self.dense], self.backend, protocol, rounds=rounds)[0])

    def probe(self, channels: Sequence[int], suite: Suite) -> float:
        key = tuple(int(c) for c in channels)
        if key not in self.seen:
            self._load()
        if key not in self.seen:
            self.seen[key] = self.fractions([key], rounds=suite.probe_rounds, repeats=suite.probe_repeats)[0]
            if self.probes is not None:
                self._load()  # what other processes added meanwhile
                write_json_atomic(self.probes, {" ".join(map(str, k)): v for k, v in self.seen.items()})
        return self.seen[key]


class Unreachable(Exception):
    """No setting of a method's knob gives a network that meets the target; `fastest` is the setting that came closest."""

    def __init__(self, message: str, fastest: float) -> None:
        super().__init__(message)
        self.fastest = fastest


def bisect_measured(
    channels_at: Callable[[float], list[int]], lo: float, hi: float, aim: float, timer: Timer, suite: Suite, *, steps: int = 10
) -> tuple[float, list[int], float]:
    """The largest x in [lo, hi] whose network (`channels_at(x)`, more channels as x grows) measures within `aim`
    of the dense latency; returns (x, channels, measured fraction). Probes are timed with the dense network."""
    best = (lo, channels_at(lo), timer.probe(channels_at(lo), suite))
    if best[2] > aim:
        raise Unreachable(f"even the smallest network of the bisection measures {best[2]:.3f} of dense, above {aim:.3f}", lo)
    top = channels_at(hi)
    if (f := timer.probe(top, suite)) <= aim:
        return hi, top, f
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        ch = channels_at(mid)
        f = timer.probe(ch, suite)
        if f <= aim:
            lo, best = mid, (mid, ch, f)
        else:
            hi = mid
    return best


def scan_measured(
    channels_at: Callable[[float], list[int]], lo: float, hi: float, aim: float, timer: Timer, suite: Suite, *, step: float = 0.025
) -> tuple[float, list[int], float]:
    """`bisect_measured` for a `channels_at` that is not monotone (Torch-Pruning's global ranking): every x of a
    grid is timed, the largest that meets `aim` is refined by bisection up to the next grid point."""
    grid = [lo + k * step for k in range(int(round((hi - lo) / step)) + 1)]
    met = [x for x in grid if timer.probe(channels_at(x), suite) <= aim]
    if not met:
        best = min(grid, key=lambda x: timer.probe(channels_at(x), suite))
        raise Unreachable(f"no network of the scan meets {aim:.3f} of dense (the fastest, at {best:.3f}, measures {timer.probe(channels_at(best), suite):.3f})", best)
    x = max(met)
    return bisect_measured(channels_at, x, min(hi, x + step), aim, timer, suite, steps=4)


# ---------------------------------------------------------------------------------------------- context
class Context:
    """What every run of a stage shares: the dense model, its graph, the data, the timer."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        weights = Path(args.weights)
        self.suite = Suite(
            weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest(),
            search_epochs=args.search_epochs,
            finetune_epochs=args.finetune_epochs,
            subset_per_class=args.subset_per_class,
            tp_steps=args.tp_steps,
        )
        self.base = PruneJobConfig(
            model="resnet20",
            dataset="cifar10",
            data_root=args.data_root,
            budgets=(),
            fixed_keep_ratios=(1.0,),
            weights=str(weights),
            search=TrainConfig(epochs=args.search_epochs, lr=self.suite.lr),
            finetune=TrainConfig(epochs=0, lr=self.suite.lr),
            batch_size=self.suite.batch_size,
            subset_per_class=args.subset_per_class,
            device="cpu",
            measure_backend=None,
        )
        self.model = create_model("resnet20")
        self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.graph = trace_channel_graph(self.model, INPUT_SHAPE)
        self.flops, self.params = FlopsCost(self.graph), ParamsCost(self.graph)
        self.backend = get_backend("onnxruntime", num_threads=1)
        self.multiple = self.backend.channel_multiple
        self.out = Path(args.out) / args.name
        self.work = Path(args.work)
        self.host = host_record()
        # "paired": probes made before the paired statistic (quietest over quietest) are not reused
        probes = self.work / f"probes-{self.host['fingerprint']}-paired-{self.suite.probe_rounds}x{self.suite.probe_repeats}.json"
        self.timer = Timer(self.model, self.graph, self.backend, probes)
        self._data: dict[int, JobData] = {}
        self._steps: list[list[int]] | None = None

    def data(self, seed: int) -> JobData:
        if seed not in self._data:
            self._data[seed] = job_data(replace(self.base, seed=seed))
        return self._data[seed]

    def on_lattice(self, ratios: Sequence[float], *, below: bool = False) -> list[int]:
        """`ratios` rounded to the backend's lattice; `below`: to the counts hwdsa's latency rounding may give
        (the lattice and the table's measured counts under it, 1, 2 and 4), each to the nearest one."""
        sizes = self.graph.group_sizes
        if not below:
            return round_channels([r * c for r, c in zip(ratios, sizes)], sizes, multiple=self.multiple)
        if self._steps is None:
            cost = build_cost("latency", self.graph, latency_table=host_table("resnet20", self.model, INPUT_SHAPE))
            assert isinstance(cost, LatencyCost)
            self._steps = [rounding_steps(cost, g) for g in range(len(sizes))]
        return [min(steps, key=lambda k: (abs(k - r * c), k)) for r, c, steps in zip(ratios, sizes, self._steps)]

    def bisect_on_lattice(self, channels_at: Callable[[float, bool], list[int]], lo: float, hi: float, aim: float) -> tuple[float, list[int], float, str]:
        """`bisect_measured` on the lattice; where no network on it meets `aim` (at 30% of the dense ResNet-20 here,
        every group at 8 channels measures 0.37), on the lattice with the counts under it that hwdsa's rows may use."""
        try:
            return (*bisect_measured(lambda x: channels_at(x, False), lo, hi, aim, self.timer, self.suite), "lattice")
        except Unreachable as exc:
            _log.warning("%s: trying the lattice with the table's counts under it", exc)
        return (*bisect_measured(lambda x: channels_at(x, True), lo, hi, aim, self.timer, self.suite), "lattice and counts under it")

    def fractions(self, channels: Sequence[int]) -> dict[str, float]:
        return {"flops": self.flops.exact(channels) / self.flops.dense, "params": self.params.exact(channels) / self.params.dense}


def _job_pruned(ctx: Context, cfg: PruneJobConfig, name: str) -> tuple[Path, dict[str, Any]]:
    """Run a prune job without fine-tuning; its `pruned.pt` and report."""
    out = ctx.work / name
    report = PruneJob(cfg, out).run(resume=True).to_dict()
    return out / "pruned.pt", report


# ---------------------------------------------------------------------------------------------- rows
def arch_uniform(ctx: Context, target: float, seed: int, name: str) -> dict[str, Any]:
    aim = target * (1 - ctx.suite.margin)
    t0 = time.perf_counter()
    n = len(ctx.graph.groups)
    ratio, channels, measured, grid = ctx.bisect_on_lattice(lambda r, below: ctx.on_lattice([r] * n, below=below), 0.05, 1.0, aim)
    sizes = ctx.graph.group_sizes
    cfg = replace(ctx.base, seed=seed, fixed_keep_ratios=tuple(c / s for c, s in zip(channels, sizes)))
    path, report = _job_pruned(ctx, cfg, name)
    return {"file": path, "channels": channels, "measured_fraction": measured, "prune_s": time.perf_counter() - t0,
            "trained_epochs": 0, "detail": {"ratio": ratio, "grid": grid}}  # fmt: skip


def arch_control(ctx: Context, seed: int, name: str, source: dict[str, Any]) -> dict[str, Any]:
    """`source`'s channel counts, cut from the dense model by BatchNorm |γ| (as `arch_uniform` cuts); its latency is
    the source's (the same network shape)."""
    t0 = time.perf_counter()
    channels = list(source["channels"])
    cfg = replace(ctx.base, seed=seed, fixed_keep_ratios=tuple(c / s for c, s in zip(channels, ctx.graph.group_sizes)))
    path, report = _job_pruned(ctx, cfg, name)
    if list(report["channels"]) != channels:
        raise SystemExit(f"{name}: the job kept {report['channels']}, not the source row's {channels}")
    return {"file": path, "channels": channels, "measured_fraction": source["measured_fraction"], "prune_s": time.perf_counter() - t0,
            "trained_epochs": 0, "detail": {"source": source["name"]}}  # fmt: skip


def _tp_counts(ctx: Context, model: nn.Module) -> list[int]:
    """Channels per group of a Torch-Pruning result: its groups are ours (the producers' output widths)."""
    modules = dict(model.named_modules())
    return [int(getattr(modules[g.producers[0]], "out_channels")) for g in ctx.graph.groups]


def _tp_pruner(model: nn.Module, ratio: float, steps: int, multiple: int | None) -> Any:
    import torch_pruning as tp

    return tp.pruner.MetaPruner(
        model,
        torch.randn(1, *INPUT_SHAPE),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=True,
        pruning_ratio=ratio,
        iterative_steps=steps,
        ignored_layers=[getattr(model, "fc")],
        round_to=multiple,
        max_pruning_ratio=TP_MAX_LAYER_RATIO,
    )


def _tp_step_counts(ctx: Context, model: nn.Module, keep: float, round_to: int | None) -> list[int]:
    """Channels per group after one global Torch-Pruning step keeping `keep` of `model` (on a copy: a candidate)."""
    m = copy.deepcopy(model)
    _tp_pruner(m, 1 - keep, 1, round_to).step()
    return _tp_counts(ctx, m)


def _tp_plan(ctx: Context, history: list[Any]) -> PruningPlan:
    """The `PruningPlan` Torch-Pruning's history describes: every out-channel removal replayed on the dense indices."""
    kept = [list(range(c)) for c in ctx.graph.group_sizes]
    owner = {p: g.index for g in ctx.graph.groups for p in g.producers}
    for layer, is_out, idxs in history:
        if not is_out or layer not in owner:
            raise SystemExit(f"Torch-Pruning removed channels at {layer} (out={is_out}), which no group of hwdsa's graph produces")
        drop = set(int(i) for i in idxs)
        g = owner[layer]
        kept[g] = [c for i, c in enumerate(kept[g]) if i not in drop]
    return PruningPlan(group_sizes=ctx.graph.group_sizes, kept=tuple(tuple(k) for k in kept), model_name="resnet20",
                       input_shape=INPUT_SHAPE, num_classes=10)  # fmt: skip


def _check_tp_replay(ctx: Context, ratio: float, round_to: int | None) -> None:
    """`_tp_plan` must name the channels Torch-Pruning kept: the dense model cut by the replayed plan must
    compute what Torch-Pruning's own one-shot result computes."""
    m = copy.deepcopy(ctx.model).eval()
    pr = _tp_pruner(m, ratio, 1, round_to)
    pr.step()
    ours = prune(ctx.model, ctx.graph, _tp_plan(ctx, pr.pruning_history())).eval()
    x = torch.randn(8, *INPUT_SHAPE)
    with torch.no_grad():
        if not torch.allclose(ours(x), m(x), atol=1e-4):
            raise SystemExit("replaying Torch-Pruning's history on the dense model does not give its network: fix _tp_plan")


def arch_torch_pruning(ctx: Context, target: float, seed: int, name: str) -> dict[str, Any]:
    suite = ctx.suite
    aim = target * (1 - suite.margin)
    torch.manual_seed(seed)
    t0 = time.perf_counter()

    def one_shot(keep: float) -> list[int]:
        return _tp_step_counts(ctx, ctx.model, keep, round_to)

    # Torch-Pruning's `round_to` on the backend's lattice first (what its users set for hardware), aiming where the
    # other rows aim; where its global ranking cannot get there on the lattice (a 16-channel group rounds back up
    # to 16), on the lattice within the goal's tolerance (`GOAL_TOLERANCE` x T: more latency than the other rows get,
    # which favours Torch-Pruning), and only then off the lattice (whose counts run slower kernels).
    attempts: list[tuple[int | None, float]] = [(ctx.multiple, aim), (ctx.multiple, GOAL_TOLERANCE * target), (None, aim)]
    for round_to, aim in attempts:
        try:
            keep_dry, _, _ = scan_measured(one_shot, TP_LOWEST_KEEP, 1.0, aim, ctx.timer, suite)
            break
        except Unreachable as exc:
            _log.warning("%s: Torch-Pruning with round_to=%s, aim %.3f: %s", name, round_to, aim, exc)
    else:
        raise SystemExit(f"{name}: Torch-Pruning cannot reach {target:.0%} of the dense latency on this host")
    _check_tp_replay(ctx, 1 - keep_dry, round_to)
    model = copy.deepcopy(ctx.model)
    data = ctx.data(seed)
    steps = suite.tp_steps
    epochs_each = [suite.search_epochs // steps + (1 if k < suite.search_epochs % steps else 0) for k in range(steps)]

    # Each step is one global Torch-Pruning step on the network as it now is, sized on measured latency so that the
    # latency falls linearly from the dense network's to the aim (TP's own schedule, linear in its ratio, overshoots:
    # the ranking of a network trained between steps cuts deeper, and a cut cannot be undone). A pruner cannot be
    # copied, so the candidates are fresh one-step pruners on copies of the network.
    def step_at(keep: float) -> list[int]:
        return _tp_step_counts(ctx, model, keep, round_to)

    history: list[Any] = []
    step_keeps: list[float] = []
    for k in range(steps):
        step_aim = 1 - (k + 1) / steps * (1 - aim)
        try:
            keep, _, _ = scan_measured(step_at, TP_LOWEST_KEEP, 1.0, step_aim, ctx.timer, suite)
        except Unreachable as exc:  # the fastest it can get to; the final timing says how far from T that is
            _log.warning("%s: step %d: %s", name, k + 1, exc)
            keep = exc.fastest
        pruner = _tp_pruner(model, 1 - keep, 1, round_to)
        pruner.step()
        history += pruner.pruning_history()
        step_keeps.append(keep)
        _log.info("%s: step %d/%d (aim %.3f), channels %s", name, k + 1, steps, step_aim, _tp_counts(ctx, model))
        if epochs_each[k]:
            fit(model, data.train, TrainConfig(epochs=epochs_each[k], lr=suite.lr), torch.device("cpu"), desc=f"torch-pruning step {k + 1}")
    final = {"dry_ratio": 1 - keep_dry, "step_ratios": [1 - x for x in step_keeps], "round_to": round_to, "aim": aim}
    channels = _tp_counts(ctx, model)
    plan = _tp_plan(ctx, history)
    ours = prune(ctx.model, ctx.graph, plan)
    ours.load_state_dict(model.state_dict())
    x = next(iter(data.holdout_eval))[0][:16]
    with torch.no_grad():
        if not torch.allclose(ours.eval()(x), model.eval()(x), atol=1e-5):
            raise SystemExit("the Torch-Pruning result rebuilt from its history differs from the network it pruned")
    path = ctx.work / name / "pruned.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_pruned(path, ours, plan)
    return {"file": path, "channels": channels, "measured_fraction": ctx.timer.probe(channels, suite),
            "prune_s": time.perf_counter() - t0, "trained_epochs": suite.search_epochs, "detail": final}  # fmt: skip


def arch_dsa_flops(ctx: Context, target: float, seed: int, name: str, uniform_flops: float) -> dict[str, Any]:
    aim = target * (1 - ctx.suite.margin)
    t0 = time.perf_counter()
    search_cfg = replace(ctx.base, seed=seed, fixed_keep_ratios=None, budgets=(BudgetSpec("flops", fraction=uniform_flops),))
    job = PruneJob(search_cfg, ctx.work / f"{name}-search")
    job.run(resume=True)
    done = torch.load(job.out / ".search.done.pt", map_location="cpu", weights_only=False)
    searched = ctx.work / name / "searched.pt"
    searched.parent.mkdir(parents=True, exist_ok=True)
    torch.save(done["model"], searched)
    ratios = torch.tensor(done["ratios"], dtype=torch.float64)

    def projected(f: float, below: bool) -> list[int]:
        z = project_onto_budget(ratios, ctx.flops, f * ctx.flops.dense, lower=0.05)
        return ctx.on_lattice(z.tolist(), below=below)

    f, channels, measured, grid = ctx.bisect_on_lattice(projected, 0.02, 1.0, aim)
    sizes = ctx.graph.group_sizes
    cfg = replace(ctx.base, seed=seed, weights=str(searched), fixed_keep_ratios=tuple(c / s for c, s in zip(channels, sizes)))
    path, _ = _job_pruned(ctx, cfg, name)
    return {"file": path, "channels": channels, "measured_fraction": measured, "prune_s": time.perf_counter() - t0,
            "trained_epochs": ctx.suite.search_epochs, "detail": {"searched_flops": uniform_flops, "projected_flops": f, "grid": grid}}  # fmt: skip


def arch_dsa_latency(
    ctx: Context,
    target: float,
    seed: int,
    name: str,
    smooth: bool,
    lattice: bool,
    budget: float | None = None,
    settle: float = 0.0,
    restart: bool = False,
) -> dict[str, Any]:
    """hwdsa's row; `lattice`: no group under the backend's channel lattice, in the search and in its rounding;
    `budget`: a latency fraction other than `target` (the matched diagnostic's); `settle`, `restart`: the search's
    `AdmmConfig.settle_fraction` and `settle_restart`."""
    t0 = time.perf_counter()
    floor = ctx.multiple if lattice else 1
    cfg = replace(
        ctx.base,
        seed=seed,
        fixed_keep_ratios=None,
        budgets=(BudgetSpec("latency", fraction=target if budget is None else budget),),
        verify_latency=True,
        verify_margin=ctx.suite.margin,
        admm=replace(AdmmConfig(), smooth_costs=smooth, min_channels=floor, settle_fraction=settle, settle_restart=restart),
        round_to=floor if lattice else None,
    )
    path, report = _job_pruned(ctx, cfg, name)
    channels = list(report["channels"])
    return {"file": path, "channels": channels, "measured_fraction": ctx.timer.probe(channels, ctx.suite),
            "prune_s": time.perf_counter() - t0, "trained_epochs": ctx.suite.search_epochs,
            "detail": {"table": Path(report["budgets"]["latency"]["table"]).name, "latency_check": report.get("latency_check")}}  # fmt: skip


# ---------------------------------------------------------------------------------------------- stages
def _read(path: Path, key: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record["key"] != key:
        raise SystemExit(f"{path} was made under other settings (key {record['key']}, now {key}): delete it to rerun")
    return dict(record)


def stage_arch(ctx: Context, targets: Sequence[float], seeds: Sequence[int], methods: Sequence[str]) -> None:
    table_note: dict[str, Any] = {}
    if any(m in LATENCY_ROWS for m in methods):
        # the latency rows' table, profiled here once (as the first `hwdsa prune --latency` on a host does), timed
        # apart from every run's pruning compute: it is paid once per device, not per network
        t0 = time.perf_counter()
        table = host_table("resnet20", ctx.model, INPUT_SHAPE)
        table_note = {"table": Path(table).name, "table_ready_s": time.perf_counter() - t0}
    dense_ms = ctx.timer.dense_ms(rounds=20, repeats=100)
    _log.info("dense ResNet-20 on this host: %.4f ms (%s)", dense_ms, ctx.host["cpu"])
    arch = ctx.out / "arch"
    arch.mkdir(parents=True, exist_ok=True)
    for target in targets:
        for seed in seeds:
            for method in methods:
                name = run_name(target, method, seed)
                key = run_key(ctx.suite, target, method, seed)
                if _read(arch / f"{name}.json", key) is not None:
                    _log.info("done before: %s", name)
                    continue
                if method in RECORDS:
                    raise SystemExit(f"{name}: {method} is a record of commit {RECORDS[method]}; check that commit out to rerun it")
                _log.info("arch: %s", name)
                if method == "uniform":
                    row = arch_uniform(ctx, target, seed, name)
                elif method == "torch_pruning":
                    row = arch_torch_pruning(ctx, target, seed, name)
                elif method == "dsa_flops":
                    uniform = _read(arch / f"{run_name(target, 'uniform', seed)}.json", run_key(ctx.suite, target, "uniform", seed))
                    if uniform is None:
                        raise SystemExit(f"{name} searches at the FLOPs of the uniform row: run method uniform first")
                    row = arch_dsa_flops(ctx, target, seed, name, uniform["flops_fraction"])
                elif method in CONTROLS:
                    src = CONTROLS[method]
                    source = _read(arch / f"{run_name(target, src, seed)}.json", run_key(ctx.suite, target, src, seed))
                    if source is None:
                        raise SystemExit(f"{name} takes the channels of {src}: run method {src} first")
                    row = arch_control(ctx, seed, name, source)
                elif method in MATCHED:
                    src = MATCHED[method]
                    source = _read(arch / f"{run_name(target, src, seed)}.json", run_key(ctx.suite, target, src, seed))
                    if source is None:
                        raise SystemExit(f"{name} aims at the measured latency of {src}: run method {src} first")
                    # the verification keeps a network within (1 - margin) of its budget: aim it at the source's latency
                    budget = min(1.0, source["measured_fraction"] / (1 - ctx.suite.margin))
                    row = arch_dsa_latency(ctx, target, seed, name, smooth=True, lattice=False, budget=budget)
                    row["detail"].update(matched_to=source["name"], budget_fraction=budget)
                else:
                    settle, restart = SETTLING.get(method, (0.0, False))
                    row = arch_dsa_latency(ctx, target, seed, name, smooth=method != "dsa_latency", lattice=method == "dsa_latency_lattice",
                                           settle=settle, restart=restart)  # fmt: skip
                # weights and plan only: a job's own pruned.pt also holds its report, with this machine's paths
                save_pruned(arch / f"{name}.pt", *load_pruned(row.pop("file")))
                fr = ctx.fractions(row["channels"])
                record = {"name": name, "key": key, "target": target, "seed": seed, "method": method, "suite": asdict(ctx.suite),
                          "host": ctx.host, "dense_ms": dense_ms, **table_note, "flops_fraction": fr["flops"], "params_fraction": fr["params"], **row}  # fmt: skip
                write_json_atomic(arch / f"{name}.json", record)
                _log.info("%s: %.3f of dense measured (target %.2f), channels %s", name, row["measured_fraction"], target, row["channels"])


def resumable_fit(model: nn.Module, loader: Any, cfg: TrainConfig, checkpoint: Path, key: str, *, desc: str) -> None:
    """`hwdsa.training.fit` with a checkpoint after every epoch, resumed when one made under `key` exists:
    a fine-tuning that a session's end interrupts continues in the next one (if its scratch folder survives)."""
    device = torch.device("cpu")
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, batches_per_epoch(loader))
    start = 0
    if checkpoint.is_file():
        start = restore_training_state(load_checkpoint(checkpoint, expect={"key": key}), model, optimizer, scheduler)
        _log.info("%s: resumed after epoch %d", desc, start)
    for epoch in range(start, cfg.epochs):
        set_epoch(loader, epoch)
        loss = train_epoch(model, loader, optimizer, scheduler, device, desc=f"{desc} {epoch + 1}/{cfg.epochs}")
        _log.info("%s epoch %d/%d: loss %.4f", desc, epoch + 1, cfg.epochs, loss)
        save_checkpoint(checkpoint, {"key": key, **training_state(model, optimizer, scheduler, epoch + 1)})
    checkpoint.unlink(missing_ok=True)


def stage_finetune(ctx: Context, selected: Callable[[dict[str, Any]], bool]) -> None:
    """Fine-tune every `selected` architecture not fine-tuned yet; one such process per core may share the list
    (each run is claimed by a lock file while it trains)."""
    dense_acc: dict[int, float] = {}
    for arch_json in sorted((ctx.out / "arch").glob("*.json")):
        a = json.loads(arch_json.read_text())
        if not selected(a):
            continue
        if _read(ctx.out / f"{a['name']}.json", a["key"]) is not None:
            _log.info("done before: %s", a["name"])
            continue
        with claimed(ctx.work / f"{a['name']}-finetune.lock") as mine:
            if not mine:
                _log.info("another process fine-tunes %s", a["name"])
                continue
            if _read(ctx.out / f"{a['name']}.json", a["key"]) is None:  # not finished while we waited for the lock
                finetune_one(ctx, arch_json, a, dense_acc)


def finetune_one(ctx: Context, arch_json: Path, a: dict[str, Any], dense_acc: dict[int, float]) -> None:
    """BatchNorm recalibration, accuracy before fine-tuning, the fine-tuning, and the run's result file."""
    device = torch.device("cpu")
    name = a["name"]
    out_json = ctx.out / f"{name}.json"
    torch.manual_seed(a["seed"])
    data = ctx.data(a["seed"])
    model, plan = load_pruned(arch_json.with_suffix(".pt"))
    recalibrate_batchnorm(model, data.train, device)
    before = evaluate(model, data.test, device)
    epochs = ctx.suite.finetune_epochs + ctx.suite.search_epochs - int(a["trained_epochs"])
    t0 = time.perf_counter()
    resumable_fit(model, data.train, TrainConfig(epochs=epochs, lr=ctx.suite.lr), ctx.work / f"{name}-finetune.pt", a["key"], desc=f"finetune {name}")
    if a["seed"] not in dense_acc:
        dense_acc[a["seed"]] = evaluate(ctx.model, data.test, device)
    record = {**a, "dense_accuracy": dense_acc[a["seed"]], "finetune_epochs": epochs, "finetune_s": time.perf_counter() - t0, "accuracy_before_finetune": before,
              "accuracy": evaluate(model, data.test, device), "heldout_accuracy": evaluate(model, data.holdout_eval, device)}  # fmt: skip
    save_pruned(ctx.out / f"{name}.pt", model, plan)
    write_json_atomic(out_json, record)
    _log.info("%s: top-1 %.4f (held-out %.4f, before fine-tuning %.4f)", name, record["accuracy"], record["heldout_accuracy"], before)


def stage_time(ctx: Context, rounds: int, repeats: int) -> None:
    """Dense and every finished row (else its architecture) in the same rounds, networks in shuffled order."""
    rows = {}
    for p in sorted((ctx.out / "arch").glob("*.json")):
        a = json.loads(p.read_text())
        if a["method"] not in CONTROLS:  # a control is its source row's network
            rows[p.stem] = a["channels"]
    names = list(rows)
    random.Random(0).shuffle(names)
    protocol = TimingProtocol(warmup=10, repeats=repeats, max_attempts=1)
    # the dense network before every DENSE_EVERY rows, as the device check times it: each row's fraction of dense is
    # paired by round with the dense timing just before it (`hwdsa.profilers.paired_fraction`)
    nets, is_dense, places = interleave_reference([rows[n] for n in names], list(ctx.graph.group_sizes), DENSE_EVERY)
    place = dict(zip(names, places))
    per_net = measure_rounds(ctx.model, ctx.graph, nets, ctx.backend, protocol, rounds=rounds)
    ratios = fractions_of_reference(per_net, is_dense)
    dense = min(_ms(r) for r, d in zip(per_net, is_dense) if d)
    # what this host's table (the one the latency rows searched with) predicts for each network: the cost
    # model's error on the networks each method produced
    table = host_table("resnet20", ctx.model, INPUT_SHAPE)
    cost = build_cost("latency", ctx.graph, latency_table=table)
    record = {
        "host": ctx.host,
        "statistic": "fractions of dense paired by round (hwdsa.profilers.paired_fraction; the dense network before every "
                     f"{DENSE_EVERY} rows); ms: the quietest round's median (hwdsa.profilers.base.quietest)",
        "rounds": rounds,
        "repeats": repeats,
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "dense_ms": dense,
        "ms": {n: _ms(per_net[place[n]]) for n in names},
        "fractions": {n: statistics.median(ratios[place[n]]) for n in names},
        "table": Path(table).name,
        "predicted_ms": {"dense": cost.exact(list(ctx.graph.group_sizes)), **{n: cost.exact(rows[n]) for n in names}},
    }
    write_json_atomic(ctx.out / f"timing-{ctx.host['fingerprint']}.json", record)
    _log.info("timed dense (%.4f ms) and %d rows on %s", dense, len(names), ctx.host["cpu"])


# ---------------------------------------------------------------------------------------------- report
def load_rows(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("t[0-9]*.json"))]
    timings = [json.loads(p.read_text()) for p in sorted(out.glob("timing-*.json"))]
    return runs, timings


def timed_as(run: dict[str, Any]) -> str:
    """The name a run's network was timed under: its own, or for a control its source row's."""
    source = CONTROLS.get(run["method"])
    return run["name"] if source is None else run_name(run["target"], source, run["seed"])


def latency_row(runs: list[dict[str, Any]]) -> str:
    """hwdsa's row: the latency variant furthest ahead of `REFERENCE_VARIANT` on held-out images (never the test set),
    by its mean paired difference over every (target, seed) both finished, at least `MIN_PAIRS_TO_CHOOSE` of them (the
    reference itself scores 0); a record of an earlier hwdsa (`RECORDS`) is shown, not chosen: this hwdsa does not
    make that network."""
    acc = {(r["method"], r["target"], r["seed"]): r for r in runs}
    score = {REFERENCE_VARIANT: 0.0}
    for m in LATENCY_ROWS:
        if m in RECORDS or m == REFERENCE_VARIANT:
            continue
        diffs = [d for t in sorted({t for (_, t, _) in acc}) for d in _paired(acc, m, REFERENCE_VARIANT, t, "heldout_accuracy")]
        if len(diffs) >= MIN_PAIRS_TO_CHOOSE:
            score[m] = statistics.mean(diffs)
    return max(score, key=lambda m: score[m])


def timed_fraction(timing: dict[str, Any], name: str) -> float:
    """A row's measured fraction of dense in one host's timing: paired by round where that timing has it (since the
    statistic changed), else the ratio of the two quietest rounds (the earlier timings)."""
    if "fractions" in timing:
        return float(timing["fractions"][name])
    return float(timing["ms"][name]) / float(timing["dense_ms"])


def summarise(runs: list[dict[str, Any]], timings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ours = latency_row(runs)
    out = []
    for target in sorted({r["target"] for r in runs}):
        at = [r for r in runs if r["target"] == target]
        for method in METHODS:
            rs = sorted((r for r in at if r["method"] == method), key=lambda r: r["seed"])
            if not rs:
                continue
            acc = [r["accuracy"] for r in rs]
            row: dict[str, Any] = {
                "target": target,
                "method": method,
                "hwdsa_row": method == ours,
                "seeds": len(rs),
                "top1_mean": statistics.mean(acc),
                "top1_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "heldout_mean": statistics.mean(r["heldout_accuracy"] for r in rs),
                "before_finetune_mean": statistics.mean(r["accuracy_before_finetune"] for r in rs),
                "flops_fraction": statistics.mean(r["flops_fraction"] for r in rs),
                "params_fraction": statistics.mean(r["params_fraction"] for r in rs),
                "arch_measured_over_target": statistics.mean(r["measured_fraction"] / target for r in rs),
                # wall clock of one core; a run paused for another's timing, or sharing the machine, only takes longer
                "prune_core_min": min(r["prune_s"] for r in rs) / 60,
                "channels": [r["channels"] for r in rs],
            }
            for t in timings:
                ms = [t["ms"][timed_as(r)] for r in rs if timed_as(r) in t["ms"]]
                if ms:
                    row[f"ms@{t['host']['fingerprint']}"] = statistics.mean(ms)
                    row[f"over_target@{t['host']['fingerprint']}"] = statistics.mean(timed_fraction(t, timed_as(r)) / target for r in rs if timed_as(r) in t["ms"])
                predicted = t.get("predicted_ms", {})
                # as fractions of dense, what a budget asks: the machine's level at the table's calibration is taken out
                errors = [(predicted[n] / predicted["dense"]) / timed_fraction(t, n) - 1
                          for n in map(timed_as, rs) if n in t["ms"] and n in predicted and "dense" in predicted]
                if errors:
                    row[f"model_error@{t['host']['fingerprint']}"] = statistics.mean(errors)
            base = {r["seed"]: r["accuracy"] for r in at if r["method"] == ours}
            pairs = [r["accuracy"] - base[r["seed"]] for r in rs if r["seed"] in base]
            if method != ours and pairs:
                row["diff_to_hwdsa"] = paired_interval(pairs)
                row["pairs"] = len(pairs)
            out.append(row)
    return out


#: The rows hwdsa's row must beat at the headline target, and those it must beat with the interval above zero.
COMPETITORS = ("uniform", "torch_pruning", "dsa_flops")
MUST_BEAT_SIGNIFICANTLY = ("torch_pruning", "dsa_flops")
#: The seeds the suite was planned with at the headline target (the issue's 3 paired seeds): where seeds beyond them
#: were added after these had finished, the verdict also states the interval on these alone.
PLANNED_SEEDS = (0, 1, 2)
HEADLINE_TARGET = 0.5
#: The issue's goal at the loosest target: hwdsa's row within this many points of dense.
NEAR_DENSE_TARGET, NEAR_DENSE_PT = 0.7, 1.0


def verdict(rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[str]:
    """The issue's goals, each met or missed, said plainly from the rows (the latency goal on every host that timed them)."""
    lines = ["## Against the goal", ""]
    at = {r["method"]: r for r in rows if r["target"] == HEADLINE_TARGET}
    ours = next((r for r in at.values() if r["hwdsa_row"]), None)
    if ours is None:
        return lines + [f"hwdsa's row has not finished at T = {HEADLINE_TARGET:.0%}."]
    # Every host that timed the rows, the suite's own (where its architectures were searched and bisected) first:
    # on another host the same networks answer to a budget measured elsewhere, which the report shows, not hides.
    suite_hosts = {r["host"]["fingerprint"] for r in runs if "host" in r}
    hosts = sorted((k.split("@")[1] for k in ours if k.startswith("over_target@")), key=lambda h: h not in suite_hosts)
    for host in hosts:
        over = {m: r[f"over_target@{host}"] for m, r in at.items() if f"over_target@{host}" in r and m not in CONTROLS}
        worst = max(over, key=over.__getitem__)
        ok = over[worst] <= GOAL_TOLERANCE
        role = "the suite's host" if host in suite_hosts else "re-timed on another host, budgets set on the suite's"
        lines.append(f"- Every pruned row at most {GOAL_TOLERANCE} T at {HEADLINE_TARGET:.0%} (timed on `{host}`, {role}): "
                     f"{'met' if ok else 'missed'} (highest: {worst}, {over[worst]:.3f} T).")  # fmt: skip
    for m in COMPETITORS:
        r = at.get(m)
        if r is None or "diff_to_hwdsa" not in r:
            lines.append(f"- hwdsa ahead of `{m}`: not run.")
            continue
        mean, lo, hi = r["diff_to_hwdsa"]
        ahead = mean < 0
        significant = hi < 0
        need = m in MUST_BEAT_SIGNIFICANTLY
        met = ahead and (significant or not need)
        acc_at = {(x["method"], x["seed"]): x["accuracy"] for x in runs if x["target"] == HEADLINE_TARGET}
        # hwdsa minus `m` on every seed both ran
        by_seed = {k: acc_at[ours["method"], k] - acc_at[m, k] for (method, k) in acc_at if method == m and (ours["method"], k) in acc_at}
        per_seed = list(by_seed.values())
        line = (
            f"- hwdsa ahead of `{m}`{' with the interval above zero' if need else ''}: {'met' if met else 'missed'} "
            f"(hwdsa minus {m}, mean and 95% CI: {format_interval((-mean, -hi, -lo), r['pairs'])}, {r['pairs']} seeds; "
            f"ahead on {sum(d > 0 for d in per_seed)} of {len(per_seed)}{'' if significant else '; the interval includes zero'})."
        )
        planned = [by_seed[k] for k in PLANNED_SEEDS if k in by_seed]
        if r["pairs"] > len(planned) == len(PLANNED_SEEDS):
            line += (f" On the planned seeds {', '.join(map(str, PLANNED_SEEDS))} alone: {format_interval(paired_interval(planned), len(planned))} "
                     "(the later seeds were added after these had finished).")  # fmt: skip
        lines.append(line)
    near = next((r for r in rows if r["target"] == NEAR_DENSE_TARGET and r["hwdsa_row"]), None)
    dense = runs[0].get("dense_accuracy")
    if near is not None and dense:
        gap = 100 * (dense - near["top1_mean"])
        lines.append(f"- hwdsa within {NEAR_DENSE_PT:.0f} pt of dense at {NEAR_DENSE_TARGET:.0%}: "
                     f"{'met' if gap <= NEAR_DENSE_PT else 'missed'} ({gap:.2f} pt below, {near['seeds']} seed(s)).")  # fmt: skip
    # What the controls separate: the allocation (same one-shot training) and the method's training while it prunes,
    # on the seeds a control and its source row share.
    acc = {(r["target"], r["method"], r["seed"]): r["accuracy"] for r in runs}
    for target in sorted({r["target"] for r in rows}):
        parts = []
        for control, source in CONTROLS.items():
            seeds = sorted(k for t, m, k in acc if t == target and m == control and (target, source, k) in acc)
            if seeds:
                cut = statistics.mean(acc[target, control, k] for k in seeds)
                gain = statistics.mean(acc[target, source, k] - acc[target, control, k] for k in seeds)
                parts.append(f"{source}'s channels {cut:.2%} one-shot, {gain * 100:+.2f} pt from its own pruning ({len(seeds)} seed(s))")
        if parts:
            lines.append(
                f"- At {target:.0%}, allocation alone (a row's channels cut from the dense model in one shot and fine-tuned "
                "for all the epochs) against training while pruning: " + "; ".join(parts) + "."
            )
    return lines


def _paired(acc: dict[tuple[str, float, int], dict[str, Any]], method: str, other: str, target: float, key: str) -> list[float]:
    """`method` minus `other` in `key` at `target`, one difference per seed both finished (in seed order)."""
    seeds = sorted(k for (m, t, k) in acc if m == method and t == target and (other, target, k) in acc)
    return [acc[method, target, k][key] - acc[other, target, k][key] for k in seeds]


def variant_lines(runs: list[dict[str, Any]]) -> list[str]:
    """The latency variants against the smoothed search (the job's defaults before the settle phase), paired per
    (target, seed), on held-out images (what chooses hwdsa's row) and on the test set; and against Torch-Pruning."""
    ref = REFERENCE_VARIANT
    acc = {(r["method"], r["target"], r["seed"]): r for r in runs}
    lines = ["## Latency variants against `dsa_latency_smooth` (paired seeds; held-out images choose hwdsa's row)", "",
             "| variant | target | seeds | held-out minus smooth, pt (95% CI) | test minus smooth, pt (95% CI) | before FT minus smooth, pt "
             "| test minus torch_pruning, pt (95% CI) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for m in LATENCY_ROWS:
        if m == ref:
            continue
        for target in sorted({t for (mm, t, _) in acc if mm == m}):
            diff = {key: _paired(acc, m, ref, target, key) for key in ("heldout_accuracy", "accuracy", "accuracy_before_finetune")}
            n = len(diff["accuracy"])
            if not n:
                continue
            vs_tp = _paired(acc, m, "torch_pruning", target, "accuracy")
            lines.append(f"| `{m}`{' (record)' if m in RECORDS else ''} | {target:.0%} | {n} | "
                         f"{format_interval(paired_interval(diff['heldout_accuracy']), n)} | "
                         f"{format_interval(paired_interval(diff['accuracy']), n)} | "
                         f"{100 * statistics.mean(diff['accuracy_before_finetune']):+.2f} | "
                         + (f"{format_interval(paired_interval(vs_tp), len(vs_tp))}, {len(vs_tp)} seed(s) |" if vs_tp else "- |"))  # fmt: skip
    return lines if len(lines) > 4 else []


def write_report(out_root: Path, name: str = SUITE_NAME) -> None:
    out = out_root / name
    runs, timings = load_rows(out)
    if not runs:
        _log.info("no finished runs yet under %s", out)
        return
    rows = summarise(runs, timings)
    hosts = [t["host"] for t in timings]
    lines = [
        "# Accuracy at equal measured latency (ResNet-20, full CIFAR-10, ONNX Runtime fp32, batch 1, one thread)",
        "",
        "Rows: " + "; ".join(f"`{m}`: {d}" for m, d in METHODS.items()) + ". hwdsa's row is the latency variant furthest "
        f"ahead of `{REFERENCE_VARIANT}` on held-out images, paired over at least {MIN_PAIRS_TO_CHOOSE} (target, seed) runs (`{latency_row(runs)}`). The FLOPs row bisects the FLOPs fraction on the projection of "
        "the searched ratios, not on whole searches. Every pruned row trains its weights for the same epochs.",
        "",
        "Hosts that timed the rows: " + ("; ".join(f"{h['cpu']} (`{h['fingerprint']}`)" for h in hosts) or "none yet") + ".",
        "",
        "The architectures (every search, bisection and check against measured latency) were found on "
        + ", ".join(f"`{fp}`" for fp in sorted({r["host"]["fingerprint"] for r in runs if "host" in r}))
        + "; the fractions of dense measured there were "
        + ("the ratio of each side's quietest round." if name in QUIETEST_PROBE_SUITES else "paired by round (`hwdsa.profilers.paired_fraction`)."),
        "",
        f"Dense: top-1 {runs[0].get('dense_accuracy', float('nan')):.2%}; "
        + ", ".join(f"{t['dense_ms']:.4f} ms on `{t['host']['fingerprint']}` ({t['when']})" for t in timings)
        + ".",
        "",
    ]
    header = ["target", "method", "seeds", "top-1 (mean ± std)", "diff to hwdsa, pt (95% CI)", "before FT", "FLOPs", "params",
              "measured / T (arch stage)", *[f"measured / T ({h['fingerprint']})" for h in hosts],
              *[f"table predicted / measured fraction of dense − 1 ({h['fingerprint']})" for h in hosts], "pruning core-min (fastest seed)"]  # fmt: skip
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        diff = r.get("diff_to_hwdsa")
        cells = [f"{r['target']:.0%}", ("**" + r["method"] + "**") if r["hwdsa_row"] else r["method"], str(r["seeds"]),
                 f"{r['top1_mean']:.2%} ± {r['top1_std']:.2%}",
                 format_interval(diff, r["pairs"]) if diff else "",
                 f"{r['before_finetune_mean']:.2%}", f"{r['flops_fraction']:.3f}", f"{r['params_fraction']:.3f}",
                 f"{r['arch_measured_over_target']:.3f}",
                 *[f"{r[k]:.3f}" if (k := f"over_target@{h['fingerprint']}") in r else "" for h in hosts],
                 *[f"{r[k]:+.1%}" if (k := f"model_error@{h['fingerprint']}") in r else "" for h in hosts],
                 f"{r['prune_core_min']:.1f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    what = {**{c: "same channels; one-shot cut and all epochs fine-tuning against the method's own pruning" for c in CONTROLS},
            **{m: "hwdsa's search and verification aimed at the other row's measured latency" for m in MATCHED}}  # fmt: skip
    for row_name, source in {**CONTROLS, **MATCHED}.items():
        for target in sorted({r["target"] for r in runs}):
            mine = {r["seed"]: r for r in runs if r["method"] == row_name and r["target"] == target}
            theirs = {r["seed"]: r for r in runs if r["method"] == source and r["target"] == target}
            seeds = [k for k in sorted(mine) if k in theirs]
            if not seeds:
                continue
            pairs = [mine[k]["accuracy"] - theirs[k]["accuracy"] for k in seeds]
            text = f"`{row_name}` minus `{source}` at {target:.0%} ({what[row_name]}): {format_interval(paired_interval(pairs), len(pairs))}"
            t = timings[-1] if timings else None
            if row_name in MATCHED and t is not None and all(timed_as(r) in t["ms"] for k in seeds for r in (mine[k], theirs[k])):
                ratio = [t["ms"][timed_as(mine[k])] / t["ms"][timed_as(theirs[k])] for k in seeds]
                text += f"; measured latency, {row_name} over {source} per seed: " + ", ".join(f"{x:.3f}" for x in ratio)
            lines += ["", text + "."]
    lines += ["", *verdict(rows, runs)]
    tp = [r for r in rows if r["method"] == "torch_pruning"]
    us = [r for r in rows if r["hwdsa_row"]]
    for a in tp:
        b = next((u for u in us if u["target"] == a["target"]), None)
        if b:
            lines += ["", f"Pruning time at {a['target']:.0%} (fastest seed's wall clock): Torch-Pruning iterative {a['prune_core_min']:.1f} core-min, "
                      f"hwdsa {b['prune_core_min']:.1f} core-min (ratio {a['prune_core_min'] / b['prune_core_min']:.2f})."]  # fmt: skip
    if variants := variant_lines(runs):
        lines += ["", *variants]
    write_text_atomic(out_root / f"{name}.md", "\n".join(lines) + "\n")
    write_json_atomic(out_root / f"{name}.json", {"rows": rows, "hosts": hosts})
    buf = io.StringIO()
    flat = [{k: v for k, v in r.items() if k not in ("channels", "diff_to_hwdsa")} for r in rows]
    w = csv.DictWriter(buf, fieldnames=sorted({k for r in flat for k in r}))
    w.writeheader()
    w.writerows(flat)
    write_text_atomic(out_root / f"{name}.csv", buf.getvalue())
    _plot(out_root / f"{name}.png", runs, timings)


def _plot(path: Path, runs: list[dict[str, Any]], timings: list[dict[str, Any]]) -> None:
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8))
    t = timings[-1] if timings else None
    for k, method in enumerate(METHODS):
        rs = [r for r in runs if r["method"] == method]
        if not rs:
            continue
        x = [timed_fraction(t, timed_as(r)) if t and timed_as(r) in t["ms"] else r["measured_fraction"] for r in rs]
        ax.scatter(x, [100 * r["accuracy"] for r in rs], label=method, marker="os^DvpPX"[k % 8], color=f"C{k}")
    dense = runs[0].get("dense_accuracy")
    if dense:  # a line, not a point at 1.0, so that the pruned points keep the width of the plot
        ax.axhline(100 * dense, color="k", linestyle="--", linewidth=1, label="dense (latency 1.0)")
    ax.set_xlabel("measured latency / dense")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("accuracy against measured latency")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    arch = [json.loads(p.read_text()) for p in sorted((path.with_suffix("") / "arch").glob("*.json"))]
    for k, method in enumerate(METHODS):
        r = next((r for r in arch if r["target"] == 0.5 and r["seed"] == 0 and r["method"] == method), None)
        if r is not None and method not in CONTROLS:  # a control's channels are its source's
            bx.plot(range(len(r["channels"])), r["channels"], marker="os^DvpPX"[k % 8], label=method, color=f"C{k}")
    bx.set_xlabel("channel group")
    bx.set_ylabel("channels kept")
    bx.set_title("what each method cut (T = 50%, seed 0)")
    if bx.get_legend_handles_labels()[0]:
        bx.legend(fontsize=8)
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["arch", "finetune", "time", "report"], default="report")
    p.add_argument("--data-root", help="the CIFAR-10 folder (the standard download)")
    p.add_argument("--weights", default=str(HERE / "dense" / "resnet20_cifar10.pt"))
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.3, 0.7])
    p.add_argument("--seeds", type=int, nargs="+", help="default: 0 1 2 at 50%%, 0 elsewhere")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--search-epochs", type=int, default=5)
    p.add_argument("--finetune-epochs", type=int, default=15)
    p.add_argument("--tp-steps", type=int, default=5)
    p.add_argument("--subset-per-class", type=int, help="a smaller training set (smoke tests only)")
    p.add_argument("--timing-rounds", type=int, default=20)
    p.add_argument("--timing-repeats", type=int, default=100)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--name", default=SUITE_NAME,
                   help="the suite: its runs go to OUT/NAME/, its report to OUT/NAME.{md,csv,json,png}; a suite whose "
                        "host-dependent steps run on another host than an earlier suite's is a new suite (e.g. NAME-<fingerprint>)")
    p.add_argument("--work", default="runs/equal_latency", help="scratch folder (not committed)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(1)
    if args.stage == "report":
        write_report(Path(args.out), args.name)
        return 0
    if args.stage in ("arch", "finetune") and not args.data_root:
        raise SystemExit("--data-root is needed to train: the CIFAR-10 folder")
    ctx = Context(args)
    if args.stage == "arch":
        for target in args.targets:
            seeds = args.seeds or ([0, 1, 2] if math.isclose(target, 0.5) else [0])
            stage_arch(ctx, [target], seeds, args.methods)
    elif args.stage == "finetune":
        stage_finetune(
            ctx,
            lambda a: any(math.isclose(a["target"], t) for t in args.targets)
            and a["method"] in args.methods
            and (args.seeds is None or a["seed"] in args.seeds),
        )
    else:
        stage_time(ctx, args.timing_rounds, args.timing_repeats)
    write_report(Path(args.out), args.name)
    _log.info("reproduce: %s", reproduce_command("equal_latency.py", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
