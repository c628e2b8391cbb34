"""export_model end to end (ONNX + ONNX Runtime here), the report it writes, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from hwdsa.errors import BackendUnavailableError, ConfigError, ExportError
from hwdsa.export.deploy import DeploymentReport, export_model, read_deployment_reports
from hwdsa.export.quantize import cpu_int8_needs_reduce_range
from hwdsa.export.tensorrt import is_available as tensorrt_is_available
from hwdsa.profilers.base import TimingProtocol

from _export_helpers import ConvBnRelu

FAST = TimingProtocol(warmup=1, repeats=5, max_attempts=1)
SHAPE = (1, 1, 28, 28)


def test_fp32_onnx_and_onnxruntime(digits_net: nn.Module, digits: tuple[torch.Tensor, torch.Tensor], tmp_path: Path) -> None:
    images, _ = digits
    reports = export_model(
        digits_net, tmp_path / "out", formats=("onnx", "onnxruntime"), input_shape=SHAPE,
        verify_batches=[images[1400:1500], images[1500:1504]], protocol=FAST, threads=1, name="digits-cnn",
    )
    assert [r.backend for r in reports] == ["onnx", "onnxruntime"]
    onnx_report, ort_report = reports
    assert onnx_report.measured is None and Path(onnx_report.artefact_path) == tmp_path / "out" / "model.onnx"
    assert ort_report.runner == "onnxruntime[CPUExecutionProvider]" or torch.cuda.is_available()
    assert ort_report.comparison is not None and ort_report.comparison.passed and ort_report.comparison.n_samples == 104
    assert ort_report.measured is not None and ort_report.measured.repeats == 5 and ort_report.measured_latency_ms
    assert ort_report.model_name == "digits-cnn" and ort_report.input_shape == SHAPE
    assert ort_report.predicted_latency_ms is None and ort_report.ratio_to_budget is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx", "report.json"]
    assert read_deployment_reports(tmp_path / "out" / "report.json") == reports
    payload = json.loads((tmp_path / "out" / "report.json").read_text())
    assert payload["schema_version"] == 1 and payload["reports"][1]["measured_latency_ms"] == ort_report.measured.median_ms


def test_latency_targets_give_ratios(digits_net: nn.Module, tmp_path: Path) -> None:
    (report,) = export_model(digits_net, tmp_path, formats=("onnxruntime",), input_shape=SHAPE, protocol=FAST)
    assert report.measured is not None
    filled = report.with_latency_targets(predicted_latency_ms=report.measured.median_ms / 2, budget_latency_ms=report.measured.median_ms * 4)
    assert filled.ratio_to_prediction == pytest.approx(2.0) and filled.ratio_to_budget == pytest.approx(0.25)
    assert DeploymentReport.from_dict(json.loads(json.dumps(filled.to_dict()))) == filled
    with pytest.raises(ConfigError, match="budget_latency_ms must be positive; got -1"):
        report.with_latency_targets(budget_latency_ms=-1)


def test_int8_onnxruntime_on_real_digits(digits_net: nn.Module, digits: tuple[torch.Tensor, torch.Tensor], tmp_path: Path) -> None:
    images, _ = digits
    graph, report = export_model(
        digits_net, tmp_path, formats=("onnx", "onnxruntime"), precision="int8", input_shape=SHAPE,
        calibration_data=images[:256], verify_batches=list(torch.split(images[1400:], 100)), protocol=FAST,
        providers=["CPUExecutionProvider"],
    )
    # The "onnx" artefact is the full-range Q/DQ graph that TensorRT builds; ONNX Runtime's CPU kernels get
    # the 7-bit-weight variant where they need it.
    assert Path(graph.artefact_path).name == "model.int8.onnx" and graph.precision == "int8"
    expected = "model.int8.reduced.onnx" if cpu_int8_needs_reduce_range() else "model.int8.onnx"
    assert report.precision == "int8" and Path(report.artefact_path).name == expected
    assert report.comparison is not None and report.comparison.top1_agreement is not None
    assert report.comparison.passed and report.comparison.top1_agreement >= 0.95


def test_fp16_onnxruntime(digits_net: nn.Module, tmp_path: Path) -> None:
    (report,) = export_model(digits_net, tmp_path, formats=("onnxruntime",), precision="fp16", input_shape=SHAPE, protocol=FAST)
    assert Path(report.artefact_path).name == "model.fp16.onnx"
    assert report.comparison is not None and report.comparison.passed and report.comparison.n_samples == 2  # random batches


@pytest.mark.skipif(tensorrt_is_available(), reason="TensorRT is usable here")
def test_tensorrt_absent_fails_before_any_work(digits_net: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="TensorRT"):
        export_model(digits_net, tmp_path / "out", input_shape=SHAPE, protocol=FAST)  # default formats include it
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"formats": ("onnx", "tflite")}, r"unknown export format\(s\) \['tflite'\]; valid formats: onnx, onnxruntime, tensorrt"),
        ({"formats": ()}, r"unknown export format\(s\) \[\]; valid formats"),
        ({"precision": "int4"}, r"precision must be one of"),
        ({"formats": ("onnxruntime",), "precision": "int8"}, r"INT8 needs calibration data"),
        ({"input_shape": (3, 28, 28, 0)}, r"input_shape must have a batch dimension"),
        ({"formats": ("onnxruntime",), "verify_batches": [torch.zeros(2, 3, 28, 28)]}, r"verify_batches: batch 0 has shape \(2, 3, 28, 28\)"),
    ],
)
def test_bad_requests_are_config_errors(kwargs: dict[str, object], match: str, tmp_path: Path) -> None:
    arguments: dict[str, object] = {"formats": ("onnx",), "input_shape": SHAPE, **kwargs}
    with pytest.raises(ConfigError, match=match):
        export_model(ConvBnRelu(), tmp_path / "out", **arguments)  # type: ignore[arg-type]
    assert not (tmp_path / "out" / "report.json").exists()


def test_non_module_is_an_export_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="cannot export str: export_model needs a torch.nn.Module"):
        export_model("resnet18", tmp_path, formats=("onnx",), input_shape=SHAPE)  # type: ignore[arg-type]
