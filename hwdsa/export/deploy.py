"""Export a model to every requested format, verify each artefact, time it, and report (`hwdsa export`).

One `DeploymentReport` per artefact: where it is, which backend and precision run it, how it compares
with PyTorch, its measured latency, and room for the latency the cost model predicted and the budget
(filled in by the caller, who owns the cost model). All reports go to `report.json`, written atomically.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwdsa._io import write_json_atomic
from hwdsa._version import __version__
from hwdsa.errors import ConfigError, ExportError
from hwdsa.export._data import BatchSource, as_batches
from hwdsa.export.compare import ComparisonReport, Tolerance, compare_outputs
from hwdsa.export.onnx import DEFAULT_OPSET, check_input_shape, model_name, onnx_from_module
from hwdsa.profilers.base import PRECISIONS, Measurement, TimingProtocol

_log = logging.getLogger(__name__)

FORMATS = ("onnx", "onnxruntime", "tensorrt")
REPORT_SCHEMA_VERSION = 1
REPORT_NAME = "report.json"


@dataclass(frozen=True)
class DeploymentReport:
    """One deployed artefact: what it is, whether it matches PyTorch, and how fast it runs.

    `predicted_latency_ms` and `budget_latency_ms` are filled by the caller (the latency cost model and
    the pruning budget); `ratio_to_budget` is measured / budget, so <= 1 means the budget is met.
    """

    model_name: str
    backend: str
    runner: str | None
    precision: str
    artefact_path: str
    input_shape: tuple[int, ...]
    measured: Measurement | None
    comparison: ComparisonReport | None
    predicted_latency_ms: float | None = None
    budget_latency_ms: float | None = None
    hwdsa_version: str = __version__

    @property
    def measured_latency_ms(self) -> float | None:
        return None if self.measured is None else float(self.measured.median_ms)

    @property
    def ratio_to_budget(self) -> float | None:
        """Measured median latency / budget (None when either is unknown)."""
        if self.measured is None or not self.budget_latency_ms:
            return None
        return float(self.measured.median_ms) / self.budget_latency_ms

    @property
    def ratio_to_prediction(self) -> float | None:
        """Measured median latency / predicted latency: how far the cost model was off."""
        if self.measured is None or not self.predicted_latency_ms:
            return None
        return float(self.measured.median_ms) / self.predicted_latency_ms

    def with_latency_targets(
        self, *, predicted_latency_ms: float | None = None, budget_latency_ms: float | None = None
    ) -> DeploymentReport:
        """A copy with the cost model's prediction and the budget filled in."""
        for label, value in (("predicted_latency_ms", predicted_latency_ms), ("budget_latency_ms", budget_latency_ms)):
            if value is not None and not value > 0:
                raise ConfigError(f"{label} must be positive; got {value}")
        return replace(self, predicted_latency_ms=predicted_latency_ms, budget_latency_ms=budget_latency_ms)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; derived ratios are included for readers, and ignored by `from_dict`."""
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        data["measured_latency_ms"] = self.measured_latency_ms
        data["ratio_to_budget"] = self.ratio_to_budget
        data["ratio_to_prediction"] = self.ratio_to_prediction
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeploymentReport:
        fields = {k: v for k, v in data.items() if k not in ("measured_latency_ms", "ratio_to_budget", "ratio_to_prediction")}
        fields["input_shape"] = tuple(fields["input_shape"])
        fields["measured"] = Measurement(**fields["measured"]) if fields.get("measured") else None
        fields["comparison"] = ComparisonReport.from_dict(fields["comparison"]) if fields.get("comparison") else None
        return cls(**fields)


def write_deployment_reports(path: str | os.PathLike[str], reports: Sequence[DeploymentReport]) -> Path:
    """Write reports as versioned JSON, atomically."""
    payload = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "hwdsa_version": __version__,
        "reports": [r.to_dict() for r in reports],
    }
    return write_json_atomic(path, payload)


def read_deployment_reports(path: str | os.PathLike[str]) -> list[DeploymentReport]:
    """Read `report.json`; a wrong schema version or malformed content raises ConfigError."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read deployment report {os.fspath(path)}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("schema_version") != REPORT_SCHEMA_VERSION:
        raise ConfigError(
            f"{os.fspath(path)} is not a deployment report of schema version {REPORT_SCHEMA_VERSION}"
        )
    try:
        return [DeploymentReport.from_dict(r) for r in payload["reports"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"deployment report {os.fspath(path)} is malformed: {exc}") from exc


def _check_formats(formats: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(formats))  # keep order, drop repeats
    unknown = [f for f in chosen if f not in FORMATS]
    if not chosen or unknown:
        raise ConfigError(f"unknown export format(s) {unknown or list(chosen)}; valid formats: {', '.join(FORMATS)}")
    return chosen


def _random_batches(input_shape: tuple[int, ...], n: int = 2) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(input_shape, generator=generator) for _ in range(n)]


def export_model(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    input_shape: Sequence[int],
    formats: Sequence[str] = FORMATS,
    precision: str = "fp32",
    calibration_data: BatchSource | None = None,
    verify_batches: BatchSource | None = None,
    protocol: TimingProtocol | None = None,
    name: str | None = None,
    opset: int = DEFAULT_OPSET,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    workspace_bytes: int | None = None,
    tolerance: Tolerance | None = None,
) -> list[DeploymentReport]:
    """Export `model` to `out_dir` in each of `formats`, verify each runtime artefact, time it, report.

    Files written to `out_dir`: `model.onnx` (FP32); for INT8 `model.int8.onnx` (full-range Q/DQ, for
    TensorRT and GPU providers) and/or `model.int8.reduced.onnx` (7-bit weights, for ONNX Runtime's CPU
    kernels on x86 without VNNI; see `hwdsa.export.quantize`); `model.fp16.onnx` for ONNX Runtime at
    FP16; `model.<precision>.engine` and its `.json` record for TensorRT; and `report.json` (all
    reports, written last and atomically).

    Args:
        model: the (pruned) network.
        out_dir: output folder (created).
        input_shape: input shape, batch first; its batch is the one timed and the engine's optimum.
        formats: any of "onnx", "onnxruntime", "tensorrt".
        precision: "fp32", "fp16" or "int8" (INT8 needs `calibration_data`).
        calibration_data: real input samples for INT8 calibration.
        verify_batches: real input batches on which each artefact must match PyTorch. None: two
            random-normal batches for fp32/fp16, and no verification (with a warning) for int8, whose
            top-1 check means nothing on noise.
        protocol: timing protocol (default `TimingProtocol()`).
        name: the model's name in reports (default: its class name).
        opset, providers, threads, workspace_bytes: passed to `onnx_from_module`, `session_from_onnx`
            and `engine_from_onnx`.
        tolerance: overrides the precision's default tolerance for verification.

    Returns:
        One DeploymentReport per format, in the order of `formats`.

    Raises:
        ConfigError: unknown formats or precision, bad input_shape, INT8 without calibration data.
        BackendUnavailableError: a requested backend is not installed here (checked before any work;
            leave it out of `formats` to skip it).
        ExportError: the export fails, or an artefact does not match PyTorch within tolerance.
    """
    label = name or model_name(model)
    if not isinstance(model, nn.Module):
        raise ExportError(f"cannot export {label}: export_model needs a torch.nn.Module; got {type(model).__name__}")
    chosen = _check_formats(formats)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    shape = check_input_shape(input_shape)
    if precision == "int8" and calibration_data is None:
        raise ConfigError(
            "INT8 needs calibration data: pass calibration_data= a few hundred real input samples, or choose "
            "precision 'fp32' or 'fp16'"
        )
    if "tensorrt" in chosen:
        from hwdsa.export.tensorrt import _import_tensorrt, _require_cuda

        _import_tensorrt()  # BackendUnavailableError before any work; callers may drop "tensorrt" and retry
        _require_cuda()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if verify_batches is not None:
        checks: list[torch.Tensor] | None = as_batches(verify_batches, what="verify_batches", sample_shape=shape[1:])
    elif precision == "int8":
        checks = None
        _log.warning("no verify_batches: the INT8 artefacts of %s are not checked against PyTorch", label)
    else:
        checks = _random_batches(shape)
    timing_input = torch.randn(shape, generator=torch.Generator().manual_seed(1))

    onnx_path = onnx_from_module(model, out / "model.onnx", input_shape=shape, opset=opset)
    reports: list[DeploymentReport] = []

    def report(backend: str, runner: str | None, path: Path, measured: Measurement | None,
               comparison: ComparisonReport | None) -> DeploymentReport:
        return DeploymentReport(
            model_name=label, backend=backend, runner=runner, precision=precision, artefact_path=os.fspath(path),
            input_shape=shape, measured=measured, comparison=comparison,
        )

    derived: dict[str, Path] = {}  # lower-precision graphs, each made once and shared by the formats

    def int8_onnx(reduce_range: bool = False) -> Path:
        name = "model.int8.reduced.onnx" if reduce_range else "model.int8.onnx"
        if name not in derived:
            from hwdsa.export.quantize import qdq_onnx_from_onnx

            derived[name] = qdq_onnx_from_onnx(
                onnx_path, out / name, calibration_data=calibration_data, reduce_range=reduce_range
            )
        return derived[name]

    def fp16_onnx() -> Path:
        if "model.fp16.onnx" not in derived:
            from hwdsa.export.quantize import fp16_onnx_from_onnx

            derived["model.fp16.onnx"] = fp16_onnx_from_onnx(onnx_path, out / "model.fp16.onnx")
        return derived["model.fp16.onnx"]

    def verify(runner: Any) -> ComparisonReport | None:
        if checks is None:
            return None
        return compare_outputs(model, runner, checks, precision=precision, tolerance=tolerance)

    for fmt in chosen:
        if fmt == "onnx":  # the graph at the requested precision, as other runtimes would consume it
            if precision == "int8":
                graph = int8_onnx()
            elif precision == "fp16":
                graph = fp16_onnx()
            else:
                graph = onnx_path
            reports.append(report("onnx", None, graph, None, None))
        elif fmt == "onnxruntime":
            from hwdsa.export.onnxruntime import OrtRunner, default_providers, session_from_onnx, time_session

            ort_path = onnx_path
            if precision == "int8":
                from hwdsa.export.quantize import cpu_int8_needs_reduce_range

                # 7-bit weights where ORT's CPU INT8 kernels would saturate (see hwdsa.export.quantize).
                on_cpu = (list(providers) if providers else default_providers())[0] == "CPUExecutionProvider"
                ort_path = int8_onnx(reduce_range=on_cpu and cpu_int8_needs_reduce_range())
            elif precision == "fp16":
                ort_path = fp16_onnx()
            session = session_from_onnx(ort_path, providers=providers, threads=threads)
            ort_runner = OrtRunner(session)
            comparison = verify(ort_runner)
            measured = time_session(session, timing_input, protocol)
            reports.append(report("onnxruntime", ort_runner.name, ort_path, measured, comparison))
        else:  # tensorrt
            from hwdsa.export.tensorrt import DEFAULT_WORKSPACE_BYTES, TrtRunner, engine_from_onnx, time_engine

            largest = max([shape[0], *(int(b.shape[0]) for b in checks or [])])
            engine_path = out / f"model.{precision}.engine"
            engine_from_onnx(
                int8_onnx() if precision == "int8" else onnx_path,
                engine_path,
                precision=precision,
                input_shape=shape,
                batch_profile=(1, shape[0], largest),
                workspace_bytes=workspace_bytes or DEFAULT_WORKSPACE_BYTES,
            )
            trt_runner = TrtRunner.from_file(engine_path)
            comparison = verify(trt_runner)
            measured = time_engine(trt_runner, timing_input, protocol)
            reports.append(report("tensorrt", trt_runner.name, engine_path, measured, comparison))
        _log.info("%s: %s %s done", label, fmt, precision)

    write_deployment_reports(out / REPORT_NAME, reports)
    return reports
