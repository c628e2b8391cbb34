"""What a pruning job reports (`report.json`), as types that the CLI, export and the benchmarks read.

A budget's value at the pruned channels is what its cost model says: an exact count for FLOPs and
parameters, the table's *prediction* for latency (`value_kind`). Timings on the device are kept apart
(`latency_check`), so a prediction is never presented as a measurement.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from hwdsa._io import write_json_atomic
from hwdsa.errors import ConfigError
from hwdsa.graph.structure import ChannelGraph

__all__ = ["REPORT_VERSION", "BudgetOutcome", "DenseSummary", "MeasuredLatency", "PruneReport", "PrunedSummary", "allocation_csv"]

REPORT_VERSION = 2


@dataclass(frozen=True)
class BudgetOutcome:
    """One budget and where the pruned network stands against it, in the cost's unit."""

    limit: float
    unit: str
    fraction_of_dense: float
    value: float
    """The cost model's value at the pruned channel counts."""
    value_kind: Literal["counted", "predicted"]
    """"counted" (FLOPs, parameters: exact) or "predicted" (latency: the table's price, not a timing)."""
    table: str | None = None
    """The latency table that priced a latency budget (absolute path)."""


@dataclass(frozen=True)
class DenseSummary:
    """The dense network the job started from (accuracies are None when it searched from scratch)."""

    accuracy: float | None
    heldout_accuracy: float | None
    flops: float
    params: float


@dataclass(frozen=True)
class PrunedSummary:
    """The pruned network: accuracies after surgery, after BatchNorm recalibration and after fine-tuning."""

    accuracy: float
    heldout_accuracy: float
    accuracy_after_surgery: float
    accuracy_before_finetune: float
    """After BatchNorm recalibration: the start of fine-tuning."""
    flops: int
    params: int
    flops_fraction: float
    params_fraction: float


@dataclass(frozen=True)
class MeasuredLatency:
    """The dense and the pruned network timed together on this machine in interleaved rounds, with the budget they
    are held to: the dense network's quietest round (the statistic the tables are measured with), and the pruned
    one as its fraction of dense paired by round (`hwdsa.profilers.paired_fraction`) times that."""

    backend: str
    device: str
    dense_ms: float
    dense_iqr_ms: float
    pruned_ms: float
    pruned_iqr_ms: float
    rounds: int
    predicted_dense_ms: float | None = None
    """The latency budget's table price of the dense network (None without a latency budget)."""
    predicted_pruned_ms: float | None = None
    budget_ms: float | None = None
    """The latency budget in ms against this timing (a fraction budget: that fraction of `dense_ms`)."""
    requested_fraction: float | None = None

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.pruned_ms

    @property
    def measured_fraction(self) -> float:
        return self.pruned_ms / self.dense_ms

    @property
    def tolerance_ms(self) -> float:
        """The timing's own spread: half the IQRs of the two networks' quietest rounds, added."""
        return 0.5 * (self.dense_iqr_ms + self.pruned_iqr_ms)

    @property
    def met(self) -> bool | None:
        """Whether the pruned network measured within its budget, allowing the timing's spread (None: no budget)."""
        if self.budget_ms is None:
            return None
        return self.pruned_ms <= self.budget_ms + self.tolerance_ms


@dataclass(frozen=True)
class PruneReport:
    """Everything a finished job states about its result; `report.json` is `to_dict()`."""

    model: str
    dataset: str
    flow: Literal["pretrained", "from_scratch", "fixed_ratios"]
    budgets: dict[str, BudgetOutcome]
    dense: DenseSummary
    pruned: PrunedSummary
    groups: int
    channels: list[int]
    keep_ratios: list[float]
    search_history: list[dict[str, Any]]
    timings: dict[str, float]
    world_size: int
    device: str
    admm: dict[str, Any]
    latency_check: dict[str, Any] | None = None
    """`hwdsa.lut.verify`'s record when the job timed its candidates on the device (`--verify-latency`)."""
    latency: MeasuredLatency | None = None
    """The dense and pruned networks timed here after pruning (None: not measured, see `latency_note`)."""
    latency_note: str | None = None
    report_version: int = field(default=REPORT_VERSION)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; the measured latency's derived figures (speed-up, fraction, met) are written too."""
        d = asdict(self)
        if self.latency is not None:
            d["latency"].update(
                speedup=self.latency.speedup,
                measured_fraction=self.latency.measured_fraction,
                tolerance_ms=self.latency.tolerance_ms,
                met=self.latency.met,
            )
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneReport:
        """Inverse of `to_dict`; a report of another version is refused with what to do."""
        if data.get("report_version") != REPORT_VERSION:
            raise ConfigError(
                f"report version {data.get('report_version')!r}; this hwdsa reads version {REPORT_VERSION}: "
                "rerun the job (hwdsa prune ... --resume reuses its finished phases)"
            )
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in data.items() if k in known}
        d["budgets"] = {name: BudgetOutcome(**b) for name, b in d["budgets"].items()}
        d["dense"] = DenseSummary(**d["dense"])
        d["pruned"] = PrunedSummary(**d["pruned"])
        if d.get("latency") is not None:
            d["latency"] = MeasuredLatency(**{k: v for k, v in d["latency"].items() if k in _MEASURED_FIELDS})
        return cls(**d)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> PruneReport:
        """The report of a job's output folder (`report.json`)."""
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise TypeError(f"a JSON {type(data).__name__}, not an object")
            return cls.from_dict(data)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"cannot read the job report {p} ({type(exc).__name__}: {exc}); is this a `hwdsa prune` output folder?"
            ) from exc

    def write(self, path: str | os.PathLike[str]) -> Path:
        return write_json_atomic(path, self.to_dict())


_MEASURED_FIELDS = {f.name for f in fields(MeasuredLatency)}


def allocation_csv(graph: ChannelGraph, channels: list[int], ratios: list[float]) -> str:
    """One row per channel group: its size, kept channels, the searched ratio and its member layers."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["group", "channels", "kept", "kept_fraction", "keep_ratio", "producers", "consumers"])
    for g, c, r in zip(graph.groups, channels, ratios):
        w.writerow([g.index, g.channels, c, f"{c / g.channels:.4f}", f"{r:.4f}", " ".join(g.producers), " ".join(g.consumers)])
    return buf.getvalue()
