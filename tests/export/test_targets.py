"""Latency targets: the cost model's prediction and the run's budget, and when each applies to an artefact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hwdsa.errors import ConfigError
from hwdsa.export.targets import Conditions, LatencyTargets, latency_targets_from_run
from hwdsa.surgery import PruningPlan, load_pruned

HERE = Conditions("onnxruntime", "AMD EPYC (2 cores)", "fp32", 1)


def _plan(run: Path) -> PruningPlan:
    return load_pruned(run / "pruned.pt")[1]


def test_targets_apply_only_under_the_tables_conditions() -> None:
    targets = LatencyTargets(
        predicted_latency_ms=2.0, prediction_conditions=HERE, prediction_note="from t.csv",
        budget_latency_ms=3.0, budget_conditions=HERE,
    )
    same = targets.for_artefact(HERE)
    assert (same.predicted_latency_ms, same.budget_latency_ms, same.prediction_note) == (2.0, 3.0, "from t.csv")
    other = targets.for_artefact(Conditions("tensorrt", "NVIDIA H100", "fp16", 1))
    assert other.predicted_latency_ms is None and other.budget_latency_ms is None
    assert other.prediction_note is not None and other.budget_note is not None
    assert "differs in backend ('onnxruntime' vs 'tensorrt'), device" in other.prediction_note
    assert "precision ('fp32' vs 'fp16')" in other.budget_note and "not comparable" in other.budget_note
    batch = targets.for_artefact(Conditions("onnxruntime", "AMD EPYC (2 cores)", "fp32", 8))
    assert batch.predicted_latency_ms is None and "batch_size (1 vs 8)" in str(batch.prediction_note)
    # A budget whose table is gone is still compared, with its caveat.
    unknown = LatencyTargets(budget_latency_ms=3.0, budget_note="conditions unknown").for_artefact(HERE)
    assert unknown.budget_latency_ms == 3.0 and unknown.budget_note == "conditions unknown"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"predicted_latency_ms": 0.0, "prediction_conditions": HERE}, "predicted_latency_ms must be positive; got 0.0"),
        ({"budget_latency_ms": -1.0}, "budget_latency_ms must be positive"),
        ({"predicted_latency_ms": 1.0}, "a predicted latency needs the conditions"),
    ],
)
def test_bad_targets_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LatencyTargets(**kwargs)  # type: ignore[arg-type]


def test_a_runs_targets_are_its_table_and_budget(tiny_run: Path) -> None:
    targets = latency_targets_from_run(tiny_run, _plan(tiny_run))
    budget = json.loads((tiny_run / "report.json").read_text())["budgets"]["latency"]
    assert targets.predicted_latency_ms == pytest.approx(budget["value"], rel=1e-9)
    assert targets.budget_latency_ms == pytest.approx(budget["limit"])
    assert targets.prediction_conditions == targets.budget_conditions
    assert targets.prediction_conditions is not None and targets.prediction_conditions.backend == "onnxruntime"
    assert targets.budget_note is None and targets.run_budgets == {"latency": budget}


def test_a_missing_table_or_report_leaves_notes(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    report = json.loads((run / "report.json").read_text())
    table = report["budgets"]["latency"]["table"]
    report["budgets"]["latency"]["table"] = str(tmp_path / "gone.csv")
    (run / "report.json").write_text(json.dumps(report))
    targets = latency_targets_from_run(run, _plan(run))
    assert targets.predicted_latency_ms is None
    assert targets.prediction_note == f"the run's latency table {tmp_path / 'gone.csv'} is not found here; pass --latency-table (latency_table=)"
    assert targets.budget_latency_ms is not None and targets.budget_conditions is None
    assert targets.budget_note is not None and "the budget's conditions are unknown" in targets.budget_note
    # An explicit table still predicts.
    explicit = latency_targets_from_run(run, _plan(run), latency_table=table)
    assert explicit.predicted_latency_ms is not None and explicit.table_path == table
    (run / "report.json").unlink()
    bare = latency_targets_from_run(run, _plan(run))
    assert bare.budget_latency_ms is None and bare.budget_note is not None and "report.json is missing" in bare.budget_note


def test_an_explicit_table_that_cannot_be_used_is_an_error(tiny_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"latency table .*nowhere.csv does not exist"):
        latency_targets_from_run(tiny_run, _plan(tiny_run), latency_table=tmp_path / "nowhere.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("not a table\n")
    with pytest.raises(ConfigError, match=r"latency table .*bad.csv cannot predict this network"):
        latency_targets_from_run(tiny_run, _plan(tiny_run), latency_table=bad)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "report.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"report.json \(TypeError: a JSON list, not an object\); is this a `hwdsa prune` output folder\?"):
        latency_targets_from_run(tmp_path / "run", _plan(tiny_run))


def test_a_table_profiled_into_the_run_folder_is_found(tiny_run: Path, tmp_path: Path) -> None:
    """A run folder moved to another machine: its table is found beside the report (as `--latency-backend` puts it)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    report = json.loads((run / "report.json").read_text())
    shutil.copy(report["budgets"]["latency"]["table"], run / "latency_table.csv")
    report["budgets"]["latency"]["table"] = "/elsewhere/latency_table.csv"
    (run / "report.json").write_text(json.dumps(report))
    targets = latency_targets_from_run(run, _plan(run))
    assert targets.table_path == str(run / "latency_table.csv") and targets.budget_conditions is not None
    assert targets.predicted_latency_ms == pytest.approx(latency_targets_from_run(tiny_run, _plan(tiny_run)).predicted_latency_ms)
