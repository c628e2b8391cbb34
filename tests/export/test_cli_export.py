"""`hwdsa export` on a real `hwdsa prune` output folder: artefacts, verification, timing, prediction and budget."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from hwdsa.cli import main
from hwdsa.export.deploy import read_deployment_reports
from hwdsa.export.tensorrt import is_available as tensorrt_is_available

FAST = ["--verify-samples", "64", "--calibration-samples", "64"]


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_export_of_a_real_run_compares_with_prediction_and_budget(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "export"
    # No --formats: all three, and a backend not installed here is skipped with its reason.
    assert main(["export", str(tiny_run), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    run_report = json.loads((tiny_run / "report.json").read_text())
    budget = run_report["budgets"]["latency"]
    reports = read_deployment_reports(out / "report.json")
    by_backend = {r.backend: r for r in reports}
    assert list(by_backend) == ["onnx", "onnxruntime", "tensorrt"]
    ort = by_backend["onnxruntime"]
    assert ort.comparison is not None and ort.comparison.passed and ort.comparison.n_samples == 64
    assert ort.measured is not None and ort.timing_backend == "onnxruntime" and ort.measured.median_ms > 0
    # The run's table was measured here with the same backend, precision and batch: the cost model's
    # prediction is the run's predicted latency (its budget's value), and the budget is the run's.
    assert ort.predicted_latency_ms == pytest.approx(budget["value"], rel=1e-9)
    assert ort.budget_latency_ms == pytest.approx(budget["limit"])
    assert ort.ratio_to_budget == pytest.approx(ort.measured.median_ms / budget["limit"])
    payload = json.loads((out / "report.json").read_text())
    assert payload["latency_targets"]["table_path"] == json.loads((tiny_run / "config.json").read_text())["latency_table"]
    assert payload["latency_targets"]["table_options"]["num_threads"] == 1  # and the session was timed with it
    assert payload["timing_protocol"]["repeats"] == 50
    if not tensorrt_is_available():
        trt = by_backend["tensorrt"]
        assert trt.is_skipped and trt.skipped_reason is not None and "TensorRT is not installed" in trt.skipped_reason
        assert trt.artefact_path == "" and trt.measured is None
        assert "skipped" in printed and "note: tensorrt skipped: TensorRT is not installed" in printed
        assert _files(out) == ["model.onnx", "report.json"]  # every file complete: no temporary left behind
    header = printed.splitlines()[0].split()
    assert header[:4] == ["backend", "precision", "measured", "ms"] and "predicted" in header and "budget" in header


def test_json_output_is_the_report(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "export"
    argv = ["export", str(tiny_run / "pruned.pt"), "--out", str(out), "--formats", "onnxruntime", "tensorrt",
            "--skip-unavailable", "--json", "--warmup", "2", "--repeats", "7", *FAST]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "report.json").read_text())
    assert printed["timing_protocol"]["repeats"] == 7 and printed["reports"][0]["measured"]["repeats"] == 7
    assert [r["backend"] for r in printed["reports"]] == ["onnxruntime", "tensorrt"]
    assert (printed["reports"][1]["skipped_reason"] is None) == tensorrt_is_available()


def test_a_run_without_latency_table_reports_why_nothing_is_predicted(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    report = json.loads((run / "report.json").read_text())
    report["budgets"] = {"flops": {"limit": 1.0, "unit": "MACs", "fraction_of_dense": 0.5, "value": 1.0, "value_kind": "counted"}}
    (run / "report.json").write_text(json.dumps(report))
    assert main(["export", str(run), "--formats", "onnx", "onnxruntime", *FAST]) == 0
    printed = capsys.readouterr().out
    (ort,) = [r for r in read_deployment_reports(run / "export" / "report.json") if r.backend == "onnxruntime"]
    assert ort.measured is not None and ort.predicted_latency_ms is None and ort.budget_latency_ms is None
    assert ort.prediction_note is not None and "no latency table" in ort.prediction_note
    assert ort.budget_note == "the run has no latency budget (its budgets: flops (<= 50% of dense))"
    assert "note: onnxruntime: no prediction: no latency table" in printed


@pytest.mark.skipif(tensorrt_is_available(), reason="TensorRT is usable here")
def test_tensorrt_asked_for_without_it_is_a_clear_error_before_any_file(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "export"
    assert main(["export", str(tiny_run), "--out", str(out), "--formats", "tensorrt", *FAST]) == 2
    err = capsys.readouterr().err
    assert "hwdsa export: error: cannot export to tensorrt: TensorRT is not installed" in err
    assert "pip install 'tensorrt>=10'" in err and "--skip-unavailable" in err
    assert not out.exists()


def test_int8_is_calibrated_on_the_runs_data(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "export"
    # 200 calibration samples (all the run's training images): not a multiple of the calibration batch
    # (ONNX Runtime's histogram needs equal ones). Fewer leave some test images' activations beyond the
    # calibrated range (errors of 0.3 x max|logit| measured with 150), and 256 verification images put the
    # measured top-1 agreement (0.96-0.97 here) several standard errors above the 0.9 it must reach.
    argv = ["export", str(tiny_run), "--out", str(out), "--formats", "onnx", "onnxruntime", "--precision", "int8",
            "--calibration-samples", "200", "--verify-samples", "256"]
    assert main(argv) == 0
    onnx_report, ort = read_deployment_reports(out / "report.json")
    assert Path(onnx_report.artefact_path).name == "model.int8.onnx"
    assert ort.precision == "int8" and ort.comparison is not None and ort.comparison.passed
    assert ort.predicted_latency_ms is None and ort.prediction_note is not None and "precision ('fp32' vs 'int8')" in ort.prediction_note
    # the yardstick: the FP32 graph timed beside it, and the verdict said plainly
    assert ort.fp32_latency_ms is not None and ort.fp32_latency_ms > 0 and ort.speedup_over_fp32 is not None
    assert ort.speedup_over_fp32 == pytest.approx(ort.fp32_latency_ms / ort.measured_latency_ms)
    verdict = "faster" if ort.speedup_over_fp32 >= 1.0 else "SLOWER"
    assert f"onnxruntime: int8 is {verdict} than fp32 on this device" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("setup", "extra", "match"),
    [
        ("missing", [], r"pruned.pt does not exist; pass the pruned.pt written by `hwdsa prune`"),
        ("corrupted", [], r"cannot read the pruned model .*pruned.pt"),
        ("ok", ["--latency-table", "nowhere.csv"], r"latency table nowhere.csv does not exist"),
        ("ok", ["--batch-size", "0"], r"--batch-size must be >= 1; got 0"),
        ("ok", ["--repeats", "2"], r"--warmup/--repeats: TimingProtocol needs warmup >= 0, repeats >= 3"),
    ],
)
def test_bad_input_is_one_line_and_no_export_folder(
    setup: str, extra: list[str], match: str, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    if setup == "corrupted":
        (run / "pruned.pt").write_bytes((tiny_run / "pruned.pt").read_bytes()[:500])
    elif setup == "ok":
        shutil.copy(tiny_run / "pruned.pt", run / "pruned.pt")
    assert main(["export", str(run), "--skip-unavailable", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hwdsa export: error: ")
    assert re.search(match, err), err
    assert not (run / "export").exists()
