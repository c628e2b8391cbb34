"""What a deployed artefact's measured latency is compared with: the cost model's prediction and the budget.

Both numbers hold only under the conditions their latency table was measured in (backend, device,
precision, batch size): a table of TensorRT FP16 layers on a Jetson predicts nothing about ONNX Runtime
on this CPU. `LatencyTargets.for_artefact` therefore hands them only to artefacts timed under the same
conditions, and otherwise says why they are absent, as it does when the run had no latency table or
no latency budget. `latency_targets_from_run` reads them from a `hwdsa prune` output folder.

`hwdsa.lut` (pandas, scikit-learn) is imported only when a table is actually read.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hwdsa.errors import ConfigError, HwdsaError

_log = logging.getLogger(__name__)

class PlanLike(Protocol):
    """What the prediction reads from a `hwdsa.surgery.PruningPlan` (kept structural, so this module, and
    the TensorRT module type-checked with it, do not pull the whole pruning stack into mypy's scope)."""

    @property
    def model_name(self) -> str | None: ...
    @property
    def input_shape(self) -> tuple[int, ...] | None: ...
    @property
    def num_classes(self) -> int | None: ...
    @property
    def model_kwargs(self) -> Mapping[str, Any]: ...
    @property
    def group_sizes(self) -> tuple[int, ...]: ...
    @property
    def channels(self) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class Conditions:
    """Where a latency holds: profiler backend name, device description, precision and batch size."""

    backend: str
    device: str
    precision: str
    batch_size: int

    def differences(self, other: Conditions) -> list[str]:
        """`field (ours vs theirs)` for each field that differs."""
        return [
            f"{name} ({mine!r} vs {theirs!r})"
            for name, mine, theirs in (
                ("backend", self.backend, other.backend),
                ("device", self.device, other.device),
                ("precision", self.precision, other.precision),
                ("batch_size", self.batch_size, other.batch_size),
            )
            if mine != theirs
        ]

    def describe(self) -> str:
        return f"{self.backend} / {self.device} / {self.precision} / batch {self.batch_size}"


@dataclass(frozen=True)
class ArtefactTargets:
    """The prediction and budget one artefact is compared with, or why each is absent."""

    predicted_latency_ms: float | None
    budget_latency_ms: float | None
    prediction_note: str | None
    budget_note: str | None


@dataclass(frozen=True)
class LatencyTargets:
    """The cost model's prediction and the run's latency budget, with the conditions they hold under.

    Attributes:
        predicted_latency_ms: `LatencyCost.exact(channels)` of the pruned network (None: see the note).
        prediction_conditions: the conditions of the table that priced it.
        prediction_note: why there is no prediction; or, with one, where it came from.
        budget_latency_ms: the run's latency budget in ms (None: see the note).
        budget_conditions: the conditions of the table the budget was set with (None when unknown).
        budget_note: why there is no budget; or a caveat about it.
        table_path: the latency table that priced the prediction.
        table_options: the backend options the table was measured with (threads, provider ...).
        run_budgets: the run's budgets as its report.json states them (every cost, not only latency).
    """

    predicted_latency_ms: float | None = None
    prediction_conditions: Conditions | None = None
    prediction_note: str | None = None
    budget_latency_ms: float | None = None
    budget_conditions: Conditions | None = None
    budget_note: str | None = None
    table_path: str | None = None
    table_options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    run_budgets: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for label in ("predicted_latency_ms", "budget_latency_ms"):
            value = getattr(self, label)
            if value is not None and not value > 0:
                raise ConfigError(f"{label} must be positive; got {value}")
        if self.predicted_latency_ms is not None and self.prediction_conditions is None:
            raise ConfigError("a predicted latency needs the conditions of the table that priced it")

    def for_artefact(self, conditions: Conditions) -> ArtefactTargets:
        """The prediction and budget that apply to an artefact timed under `conditions`, with reasons."""
        predicted: float | None = None
        prediction_note = self.prediction_note
        if self.predicted_latency_ms is not None and self.prediction_conditions is not None:
            diff = self.prediction_conditions.differences(conditions)
            if diff:
                prediction_note = (
                    f"the cost model predicts {self.predicted_latency_ms:.4g} ms for "
                    f"{self.prediction_conditions.describe()}; this artefact runs {conditions.describe()} "
                    f"(differs in {', '.join(diff)}): not comparable"
                )
            else:
                predicted = self.predicted_latency_ms
        budget: float | None = None
        budget_note = self.budget_note
        if self.budget_latency_ms is not None:
            if self.budget_conditions is None:
                budget = self.budget_latency_ms
            else:
                diff = self.budget_conditions.differences(conditions)
                if diff:
                    budget_note = (
                        f"the run's latency budget {self.budget_latency_ms:.4g} ms holds for "
                        f"{self.budget_conditions.describe()}; this artefact runs {conditions.describe()} "
                        f"(differs in {', '.join(diff)}): not comparable"
                    )
                else:
                    budget = self.budget_latency_ms
        return ArtefactTargets(predicted, budget, prediction_note, budget_note)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["table_options"] = dict(self.table_options)
        data["run_budgets"] = dict(self.run_budgets)
        return data


def _read_report(path: Path) -> Any:
    """The run's typed report (`hwdsa.job.PruneReport`), or None when the folder has none."""
    if not path.is_file():
        return None
    return importlib.import_module("hwdsa.job.report").PruneReport.read(path)


def _table_conditions(path: Path) -> tuple[Any, Conditions]:
    table = importlib.import_module("hwdsa.lut.table").LatencyTable.read(path)
    meta = table.meta
    return table, Conditions(meta.backend, meta.device, meta.precision, int(meta.batch_size))


def _predict(table: Any, plan: PlanLike) -> float:
    """`LatencyCost.exact` of the pruned channel counts, on the dense graph the run pruned."""
    # Imported on use: the cost model needs pandas and scikit-learn, the zoo torchvision.
    trace_channel_graph = importlib.import_module("hwdsa.graph").trace_channel_graph
    latency_cost = importlib.import_module("hwdsa.lut.cost_model").LatencyCost
    create_model = importlib.import_module("hwdsa.models").create_model

    if plan.model_name is None or plan.input_shape is None:
        raise ConfigError("the pruning plan names no model or input shape, so its dense graph cannot be rebuilt")
    kwargs = dict(plan.model_kwargs)
    if plan.num_classes is not None:
        kwargs["num_classes"] = plan.num_classes
    dense = create_model(plan.model_name, **kwargs)
    graph = trace_channel_graph(dense, tuple(plan.input_shape))
    if tuple(graph.group_sizes) != tuple(plan.group_sizes):
        raise ConfigError(
            f"the dense {plan.model_name} traces to groups {graph.group_sizes}, the plan has {plan.group_sizes}"
        )
    return float(latency_cost.fit(table, graph).exact(plan.channels))


def _describe_budgets(budgets: Mapping[str, Any]) -> str:
    parts = []
    for name, value in budgets.items():
        fraction = value.get("fraction_of_dense") if isinstance(value, Mapping) else None
        parts.append(f"{name} (<= {fraction:.0%} of dense)" if isinstance(fraction, (int, float)) else name)
    return ", ".join(parts) or "none"


def latency_targets_from_run(
    run_dir: str | os.PathLike[str],
    plan: PlanLike,
    *,
    latency_table: str | os.PathLike[str] | None = None,
) -> LatencyTargets:
    """The prediction and budget of a `hwdsa prune` output folder's pruned network, from its `report.json`.

    The budget is the run's latency budget, and the prediction the price the job itself gave the pruned
    channels with its table (`PruneReport.budgets["latency"].value`). With `latency_table` the plan's
    channel counts are priced anew with that table (`LatencyCost.fit(table, dense graph).exact`).
    Whatever is missing (no latency budget, a table that is gone) leaves that number absent with a note
    saying why; only an explicitly passed table that cannot be used is an error.

    Raises:
        ConfigError: `latency_table` is given but missing or unusable, or the run's report is unreadable.
    """
    run = Path(run_dir)
    report = _read_report(run / "report.json")
    budgets = {name: asdict(b) for name, b in report.budgets.items()} if report is not None else {}
    latency_budget = report.budgets.get("latency") if report is not None else None

    # The run's table: where the job read it, or beside the report when the folder was moved.
    run_table: Path | None = None
    run_table_note: str | None = None
    named = latency_budget.table if latency_budget is not None else None
    if named:
        candidates = [Path(named), run / Path(named).name]
        run_table = next((c for c in candidates if c.is_file()), None)
        if run_table is None:
            run_table_note = f"the run's latency table {named} is not found here"

    # The budget.
    budget_ms: float | None = None
    budget_conditions: Conditions | None = None
    budget_note: str | None = None
    if report is None:
        budget_note = f"{run / 'report.json'} is missing, so the run's budget is unknown"
    elif latency_budget is None:
        budget_note = f"the run has no latency budget (its budgets: {_describe_budgets(budgets)})"
    else:
        budget_ms = float(latency_budget.limit)
        if run_table is not None:
            try:
                budget_conditions = _table_conditions(run_table)[1]
            except HwdsaError as exc:
                budget_note = f"the run's latency table {run_table} cannot be read ({exc}); the budget's conditions are unknown"
        else:
            budget_note = (run_table_note or "the run names no latency table") + "; the budget's conditions are unknown"

    # The prediction.
    explicit = latency_table is not None
    table_path = Path(latency_table) if latency_table is not None else run_table
    if explicit and table_path is not None and not table_path.is_file():
        raise ConfigError(f"latency table {table_path} does not exist; pass a table written by `hwdsa profile`")
    predicted: float | None = None
    prediction_conditions: Conditions | None = None
    table_options: dict[str, Any] = {}
    if table_path is None:
        prediction_note = (
            (run_table_note + "; pass --latency-table (latency_table=)")
            if run_table_note
            else "no latency table: the run was pruned without one; pass --latency-table (latency_table=) to predict"
        )
    else:
        try:
            table, prediction_conditions = _table_conditions(table_path)
            if explicit or latency_budget is None:
                predicted = _predict(table, plan)
                prediction_note = f"LatencyCost.exact(channels) from {table_path}"
            else:
                predicted = float(latency_budget.value)
                prediction_note = f"the job's price of its channels with {table_path} (report.json)"
        except HwdsaError as exc:
            if explicit:
                raise ConfigError(f"latency table {table_path} cannot predict this network: {exc}") from exc
            _log.warning("no latency prediction from %s: %s", table_path, exc)
            prediction_conditions = None
            predicted = None
            prediction_note = f"the latency table {table_path} cannot predict this network: {exc}"
        else:
            options = table.meta.extra.get("backend_options")
            table_options = dict(options) if isinstance(options, Mapping) else {}
    return LatencyTargets(
        predicted_latency_ms=predicted,
        prediction_conditions=prediction_conditions,
        prediction_note=prediction_note,
        budget_latency_ms=budget_ms,
        budget_conditions=budget_conditions,
        budget_note=budget_note,
        table_path=None if table_path is None else os.fspath(table_path),
        table_options=table_options,
        run_budgets=budgets,
    )
