# mypy: allow-subclassing-any
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

FAST = TimingProtocol(warmup=1, repeats=5, max_attempts=1, rounds=1)
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
    assert payload["schema_version"] == 2 and payload["reports"][1]["measured_latency_ms"] == ort_report.measured.median_ms
    # Timed by the profilers' ONNX Runtime backend (the one latency tables are made with), under the protocol given.
    assert ort_report.timing_backend == "onnxruntime" or torch.cuda.is_available()
    assert ort_report.device and payload["timing_protocol"]["repeats"] == 5 and "latency_targets" not in payload


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
    assert not (tmp_path / "out").exists()  # refused before any folder or file is made


def test_non_module_is_an_export_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="cannot export str: export_model needs a torch.nn.Module"):
        export_model("resnet18", tmp_path, formats=("onnx",), input_shape=SHAPE)  # type: ignore[arg-type]


class _SignBranch(nn.Module):
    """Data-dependent control flow: the ONNX trace keeps one branch, so the export computes something else."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return y if float(x.mean()) > 0 else -y


def test_an_artefact_that_differs_from_pytorch_is_a_clear_failure_and_no_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text('{"stale": true}')  # from an earlier export: must not survive a failed one
    torch.manual_seed(0)
    batches = [torch.ones(2, 4), -torch.ones(2, 4)]  # one of them takes the branch the trace did not keep
    with pytest.warns(torch.jit.TracerWarning), pytest.raises(
        ExportError, match=r"onnxruntime\[CPUExecutionProvider\] \(fp32\) vs PyTorch on 4 samples: .*errors exceed .*"
        r"The artefact does not compute what the model computes"
    ):
        export_model(_SignBranch(), out, formats=("onnxruntime",), input_shape=(2, 4), verify_batches=batches, protocol=FAST)
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"]  # complete, and no report claiming success


def test_skip_unavailable_reports_the_reason(digits_net: nn.Module, tmp_path: Path) -> None:
    if tensorrt_is_available():
        pytest.skip("TensorRT is usable here")
    onnx_report, trt_report = export_model(
        digits_net, tmp_path, formats=("onnx", "tensorrt"), input_shape=SHAPE, protocol=FAST, skip_unavailable=True
    )
    assert not onnx_report.is_skipped and trt_report.is_skipped and trt_report.backend == "tensorrt"
    assert trt_report.skipped_reason is not None and "TensorRT is not installed" in trt_report.skipped_reason
    assert read_deployment_reports(tmp_path / "report.json")[1] == trt_report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "report.json"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
def test_a_provider_that_cannot_run_here_fails_before_any_file(digits_net: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match=r"cannot export to onnxruntime: ONNX Runtime provider\(s\) \['CUDAExecutionProvider'\] cannot run here"):
        export_model(digits_net, tmp_path / "out", formats=("onnxruntime",), input_shape=SHAPE, providers=["CUDAExecutionProvider"])
    assert not (tmp_path / "out").exists()


def test_an_unexportable_model_leaves_no_file(tmp_path: Path) -> None:
    class Unexportable(nn.Module):
        """adaptive_avg_pool2d to a size that does not divide the input: the ONNX exporter refuses it."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool2d(x, 2)

    out = tmp_path / "out"
    with pytest.raises(ExportError, match=r"cannot export Unexportable to ONNX \(opset 17\)"):
        export_model(Unexportable(), out, formats=("onnx", "onnxruntime"), input_shape=(1, 3, 7, 7))
    assert list(out.iterdir()) == []


def test_int8_without_calibration_data_leaves_no_folder(digits_net: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"INT8 needs calibration data: pass calibration_data= a few hundred real input samples"):
        export_model(digits_net, tmp_path / "out", formats=("onnx",), precision="int8", input_shape=SHAPE)
    assert not (tmp_path / "out").exists()


def test_latency_targets_reach_the_matching_artefact(digits_net: nn.Module, tmp_path: Path) -> None:
    from hwdsa.export.targets import Conditions, LatencyTargets
    from hwdsa.profilers import get_backend

    here = Conditions("onnxruntime", get_backend("onnxruntime").device_description(), "fp32", 1)
    targets = LatencyTargets(predicted_latency_ms=0.5, prediction_conditions=here, budget_latency_ms=1.0, budget_conditions=here)
    (report,) = export_model(digits_net, tmp_path, formats=("onnxruntime",), input_shape=SHAPE, protocol=FAST,
                             providers=["CPUExecutionProvider"], latency_targets=targets)
    assert (report.predicted_latency_ms, report.budget_latency_ms) == (0.5, 1.0)
    assert report.measured is not None and report.ratio_to_prediction == pytest.approx(report.measured.median_ms / 0.5)
    payload = json.loads((tmp_path / "report.json").read_text())
    assert payload["latency_targets"]["prediction_conditions"]["backend"] == "onnxruntime"
    (batch4,) = export_model(digits_net, tmp_path, formats=("onnxruntime",), input_shape=(4, 1, 28, 28), protocol=FAST,
                             providers=["CPUExecutionProvider"], latency_targets=targets)
    assert batch4.predicted_latency_ms is None and "batch_size (1 vs 4)" in str(batch4.prediction_note)


@pytest.mark.skipif(not tensorrt_is_available(), reason="needs TensorRT >= 10 and a CUDA device")
@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_engines_are_built_verified_and_timed(
    precision: str, digits_net: nn.Module, digits: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    images, _ = digits
    (report,) = export_model(
        digits_net, tmp_path, formats=("tensorrt",), precision=precision, input_shape=(4, 1, 28, 28), protocol=FAST,
        calibration_data=images[:256], verify_batches=list(torch.split(images[1400:], 100)),
    )
    assert report.timing_backend == "tensorrt" and report.device and report.measured is not None
    assert report.comparison is not None and report.comparison.passed
    names = {p.name for p in tmp_path.iterdir()}
    assert {f"model.{precision}.engine", f"model.{precision}.engine.json", "model.onnx", "report.json"} <= names
    assert not any(name.endswith(".tmp") for name in names)


# --------------------------------------------------------------------------------------------------
# Which backend times what: the registry's traits, and the shipped engine timed by the tensorrt backend
# --------------------------------------------------------------------------------------------------


def test_onnxruntime_artefacts_are_timed_by_the_backend_whose_provider_trait_matches() -> None:
    """`hwdsa export` asks the registry (`Backend.onnxruntime_provider`), so a third-party backend can time a provider."""
    from hwdsa.export.deploy import _ort_timing_backend
    from hwdsa.profilers import BACKENDS, register_backend
    from hwdsa.profilers.backend import backend_for_provider
    from hwdsa.profilers.torch_cpu import TorchCpuBackend

    class FrobBackend(TorchCpuBackend):  # stands in for a third-party backend: it sets no trait
        name = "test_frob_ort"

    assert _ort_timing_backend("CPUExecutionProvider", 1).name == "onnxruntime"
    assert backend_for_provider("CPUExecutionProvider") == "onnxruntime"
    register_backend("test_frob_ort", FrobBackend)
    try:
        # the default trait: it times no provider
        with pytest.raises(ConfigError, match=r"no profilers backend times ONNX Runtime's FrobExecutionProvider; use one of \["):
            _ort_timing_backend("FrobExecutionProvider", None)
        assert backend_for_provider("FrobExecutionProvider") is None
        FrobBackend.onnxruntime_provider = "FrobExecutionProvider"  # set the trait: now it does
        assert isinstance(_ort_timing_backend("FrobExecutionProvider", None), FrobBackend)
        assert backend_for_provider("FrobExecutionProvider") == "test_frob_ort"
    finally:
        BACKENDS._entries.pop("test_frob_ort", None)


def test_the_shipped_engine_is_built_with_the_timing_backends_settings_and_timed_by_its_measure(
    digits_net: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without TensorRT here, the builder and the GPU are stood in for; what is checked is the wiring: the
    engine file export ships is the one the `tensorrt` backend's `measure_network` times (the table's
    statistic, under the protocol given), built with that backend's `BuilderSettings`."""
    import contextlib
    from collections.abc import Iterator

    import hwdsa.export.tensorrt as export_trt
    import hwdsa.profilers.tensorrt as profilers_trt
    from hwdsa.profilers import Session
    from hwdsa.profilers.backend import CallableSession
    from hwdsa.profilers.tensorrt import TensorRTBackend

    built: dict[str, object] = {}
    timed: list[tuple[bytes, tuple[int, ...]]] = []

    def fake_engine_from_onnx(onnx_path: Path, engine_path: Path, **kwargs: object) -> None:
        built.update(kwargs, onnx_path=onnx_path)
        Path(engine_path).write_bytes(b"serialized engine")

    class FakeRunner:
        name = "tensorrt[fp32]"

        @classmethod
        def from_file(cls, path: Path) -> FakeRunner:
            return cls()

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                out: torch.Tensor = digits_net(x)
            return out

    @contextlib.contextmanager
    def fake_engine_session(self: TensorRTBackend, data: bytes, *, input_shape: tuple[int, ...], source: str) -> Iterator[Session]:
        timed.append((data, tuple(input_shape)))
        yield CallableSession(lambda: None)

    monkeypatch.setattr(profilers_trt, "import_tensorrt", lambda: None)
    monkeypatch.setattr(profilers_trt, "cuda_error_or_none", lambda: None)
    monkeypatch.setattr(export_trt, "require_cuda", lambda: None)
    monkeypatch.setattr(export_trt, "engine_from_onnx", fake_engine_from_onnx)
    monkeypatch.setattr(export_trt, "TrtRunner", FakeRunner)
    monkeypatch.setattr(TensorRTBackend, "engine_session", fake_engine_session)
    monkeypatch.setattr(TensorRTBackend, "device_description", lambda self: "Frob GPU (compute capability 9.0)")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    (report,) = export_model(
        digits_net, tmp_path, formats=("tensorrt",), input_shape=(4, 1, 28, 28), protocol=FAST,
        workspace_bytes=1 << 28, builder_optimization_level=5,
    )
    assert built["workspace_bytes"] == 1 << 28 and built["builder_optimization_level"] == 5
    assert built["batch_profile"] == (1, 4, 4) and built["input_shape"] == (4, 1, 28, 28)
    assert timed == [(b"serialized engine", (4, 1, 28, 28))]  # the shipped file, at the exported shape
    assert report.timing_backend == "tensorrt" and report.device == "Frob GPU (compute capability 9.0)"
    assert report.runner == "tensorrt[fp32]" and report.comparison is not None and report.comparison.passed
    assert report.measured is not None and report.measured.median_ms > 0 and report.measured.repeats == FAST.repeats
    assert Path(report.artefact_path) == tmp_path / "model.fp32.engine"
