"""Export a model to every requested format, verify each artefact, time it, and report (`hwdsa export`).

One `DeploymentReport` per requested format: where the artefact is, which backend and precision run
it, how it compares with PyTorch, its latency measured by the profilers' backends under the one timing
protocol, and the latency the cost model predicted and the budget (from `LatencyTargets`, only where
the table's conditions are the artefact's; otherwise a note says why they are absent). A format whose
backend is not installed is either refused before any work or, with `skip_unavailable`, reported as
skipped with the reason. All reports go to `report.json`, written atomically and last.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwdsa._io import write_json_atomic
from hwdsa._version import __version__
from hwdsa.errors import BackendUnavailableError, ConfigError, ExportError
from hwdsa.export._data import BatchSource, as_batches
from hwdsa.export.compare import ComparisonReport, Tolerance, compare_outputs
from hwdsa.export.formats import FORMATS
from hwdsa.export.onnx import DEFAULT_OPSET, check_input_shape, model_name, onnx_from_module
from hwdsa.export.targets import Conditions, LatencyTargets
from hwdsa.profilers.backend import Backend
from hwdsa.profilers.base import PRECISIONS, Measurement, TimingProtocol

_log = logging.getLogger(__name__)

REPORT_SCHEMA_VERSION = 2
_READABLE_SCHEMA_VERSIONS = (1, 2)  # version 1 lacked the fields that now have defaults
REPORT_NAME = "report.json"


@dataclass(frozen=True)
class DeploymentReport:
    """One requested format: the artefact, whether it matches PyTorch, and how fast it runs.

    `measured` comes from the profilers backend `timing_backend` on `device`. `predicted_latency_ms`
    and `budget_latency_ms` are the cost model's prediction and the run's budget when they hold under
    the same conditions; `prediction_note` / `budget_note` say where they come from or why they are
    absent. `ratio_to_budget` is measured / budget, so <= 1 means the budget is met. A format that
    was skipped has `skipped_reason` set, an empty `artefact_path` and nothing measured.
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
    timing_backend: str | None = None
    device: str | None = None
    prediction_note: str | None = None
    budget_note: str | None = None
    skipped_reason: str | None = None
    fp32_latency_ms: float | None = None
    """The same network's FP32 artefact timed beside this one (lower precisions only): a precision is worth
    shipping only where it runs faster than FP32 on the device."""

    @property
    def speedup_over_fp32(self) -> float | None:
        """FP32 latency / this artefact's latency (< 1: this precision is slower here than FP32)."""
        if self.measured is None or not self.fp32_latency_ms:
            return None
        return self.fp32_latency_ms / float(self.measured.median_ms)

    @property
    def is_skipped(self) -> bool:
        return self.skipped_reason is not None

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
        self,
        *,
        predicted_latency_ms: float | None = None,
        budget_latency_ms: float | None = None,
        prediction_note: str | None = None,
        budget_note: str | None = None,
    ) -> DeploymentReport:
        """A copy with the cost model's prediction and the budget (and their notes) filled in."""
        for label, value in (("predicted_latency_ms", predicted_latency_ms), ("budget_latency_ms", budget_latency_ms)):
            if value is not None and not value > 0:
                raise ConfigError(f"{label} must be positive; got {value}")
        return replace(
            self,
            predicted_latency_ms=predicted_latency_ms,
            budget_latency_ms=budget_latency_ms,
            prediction_note=prediction_note,
            budget_note=budget_note,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; derived ratios are included for readers, and ignored by `from_dict`."""
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        data["measured_latency_ms"] = self.measured_latency_ms
        data["ratio_to_budget"] = self.ratio_to_budget
        data["ratio_to_prediction"] = self.ratio_to_prediction
        data["speedup_over_fp32"] = self.speedup_over_fp32
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeploymentReport:
        derived = ("measured_latency_ms", "ratio_to_budget", "ratio_to_prediction", "speedup_over_fp32")
        fields = {k: v for k, v in data.items() if k not in derived}
        fields["input_shape"] = tuple(fields["input_shape"])
        fields["measured"] = Measurement(**fields["measured"]) if fields.get("measured") else None
        fields["comparison"] = ComparisonReport.from_dict(fields["comparison"]) if fields.get("comparison") else None
        return cls(**fields)


def write_deployment_reports(
    path: str | os.PathLike[str], reports: Sequence[DeploymentReport], *, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write reports as versioned JSON, atomically; `extra` adds top-level keys (protocol, latency model)."""
    payload: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "hwdsa_version": __version__,
        **dict(extra or {}),
        "reports": [r.to_dict() for r in reports],
    }
    return write_json_atomic(path, payload)


def read_deployment_reports(path: str | os.PathLike[str]) -> list[DeploymentReport]:
    """Read `report.json`; a wrong schema version or malformed content raises ConfigError."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read deployment report {os.fspath(path)}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("schema_version") not in _READABLE_SCHEMA_VERSIONS:
        raise ConfigError(
            f"{os.fspath(path)} is not a deployment report of schema version "
            f"{' or '.join(map(str, _READABLE_SCHEMA_VERSIONS))}"
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


def _unavailable_reason(fmt: str, providers: Sequence[str] | None) -> str | None:
    """Why `fmt` cannot be produced here (None when it can); checked before any work is done."""
    if fmt == "tensorrt":
        from hwdsa.export.tensorrt import require_cuda
        from hwdsa.profilers.tensorrt import import_tensorrt

        try:
            import_tensorrt()
            require_cuda()
        except BackendUnavailableError as exc:
            return str(exc)
    elif fmt == "onnxruntime":
        from hwdsa.export.onnxruntime import provider_usable
        from hwdsa.profilers.onnxruntime import import_onnxruntime

        try:
            import_onnxruntime()
        except BackendUnavailableError as exc:
            return str(exc)
        unusable = [p for p in providers or () if not provider_usable(p)]
        if unusable:
            return f"ONNX Runtime provider(s) {unusable} cannot run here (no CUDA device, or TensorRT missing)"
    return None


def _ort_timing_backend(provider: str, threads: int | None) -> Backend:
    """The profilers backend that times sessions on `provider` (the one latency tables are made with).

    Found by its `onnxruntime_provider` trait in the backend registry; `threads` is passed on when set.
    """
    from hwdsa.profilers.backend import backend_for_provider, get_backend, provider_backends

    name: str | None = backend_for_provider(provider)
    if name is None:
        raise ConfigError(f"no profilers backend times ONNX Runtime's {provider}; use one of {sorted(provider_backends())}")
    return get_backend(name, **({} if threads is None else {"num_threads": threads}))


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
    builder_optimization_level: int | None = None,
    tolerance: Tolerance | None = None,
    skip_unavailable: bool = False,
    latency_targets: LatencyTargets | None = None,
) -> list[DeploymentReport]:
    """Export `model` to `out_dir` in each of `formats`, verify each runtime artefact, time it, report.

    Files written to `out_dir`: `model.onnx` (FP32); for INT8 `model.int8.onnx` (full-range Q/DQ, for
    TensorRT and GPU providers) and/or `model.int8.reduced.onnx` (7-bit weights, for ONNX Runtime's CPU
    kernels on x86 without VNNI; see `hwdsa.export.quantize`); `model.fp16.onnx` at FP16 (ONNX Runtime
    and TensorRT); `model.<precision>.engine` and its `.json` record for TensorRT; and `report.json`
    (all reports, written last and atomically). Each file is written atomically; a `report.json` left
    from an earlier export is removed first, so a failed export never leaves a stale report.

    Every runtime artefact is timed by a profilers backend's own `measure_network`, under `protocol` and
    with the statistic of a latency table (the quietest of the protocol's rounds), so `report.json` is
    comparable with the table's prediction: an ONNX Runtime graph by the backend of its session's
    execution provider (the one whose `onnxruntime_provider` it is: `onnxruntime`, `onnxruntime_cuda`,
    `onnxruntime_tensorrt` or a third-party one), which binds inputs once like the per-layer tables; the
    shipped TensorRT engine file itself by the `tensorrt` backend, which also built it (one builder
    configuration: `workspace_bytes`, `builder_optimization_level`).

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
        opset, providers, workspace_bytes: passed to `onnx_from_module`, `session_from_onnx` and
            `engine_from_onnx`.
        builder_optimization_level: TensorRT's builder optimisation level (None: TensorRT's default);
            the engine is built and timed with the `tensorrt` backend's settings, so use the table's.
        threads: ONNX Runtime intra-op threads, for verification and timing (None: its default).
        tolerance: overrides the precision's default tolerance for verification.
        skip_unavailable: report a format whose backend is not installed here as skipped (with the
            reason) instead of raising.
        latency_targets: the cost model's prediction and the budget to compare measurements with
            (see `latency_targets_from_run`); None leaves them absent.

    Returns:
        One DeploymentReport per format, in the order of `formats`.

    Raises:
        ConfigError: unknown formats or precision, bad input_shape, INT8 without calibration data.
        BackendUnavailableError: a requested backend is not installed here (checked before any work;
            pass `skip_unavailable=True` or leave it out of `formats`).
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
    skipped: dict[str, str] = {}
    for fmt in chosen:
        reason = _unavailable_reason(fmt, providers)
        if reason is None:
            continue
        if not skip_unavailable:
            raise BackendUnavailableError(f"cannot export to {fmt}: {reason} (or skip it: skip_unavailable=True, --skip-unavailable)")
        skipped[fmt] = reason
        _log.warning("skipping %s: %s", fmt, reason)

    if verify_batches is not None:
        checks: list[torch.Tensor] | None = as_batches(verify_batches, what="verify_batches", sample_shape=shape[1:])
    elif precision == "int8":
        checks = None
        _log.warning("no verify_batches: the INT8 artefacts of %s are not checked against PyTorch", label)
    else:
        checks = _random_batches(shape)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_NAME).unlink(missing_ok=True)  # a report must never describe artefacts it did not make
    proto = protocol or TimingProtocol()

    onnx_path = onnx_from_module(model, out / "model.onnx", input_shape=shape, opset=opset)
    reports: list[DeploymentReport] = []

    def report(backend: str, runner: str | None, path: Path, measured: Measurement | None,
               comparison: ComparisonReport | None, timing_backend: Backend | None = None) -> DeploymentReport:
        made = DeploymentReport(
            model_name=label, backend=backend, runner=runner, precision=precision, artefact_path=os.fspath(path),
            input_shape=shape, measured=measured, comparison=comparison,
            timing_backend=None if timing_backend is None else str(timing_backend.name),
            device=None if timing_backend is None else str(timing_backend.device_description()),
        )
        if measured is None or latency_targets is None or made.timing_backend is None or made.device is None:
            return made
        targets = latency_targets.for_artefact(Conditions(made.timing_backend, made.device, precision, shape[0]))
        return made.with_latency_targets(
            predicted_latency_ms=targets.predicted_latency_ms, budget_latency_ms=targets.budget_latency_ms,
            prediction_note=targets.prediction_note, budget_note=targets.budget_note,
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

    def graph_at_precision() -> Path:
        return int8_onnx() if precision == "int8" else fp16_onnx() if precision == "fp16" else onnx_path

    def verify(runner: Any) -> ComparisonReport | None:
        if checks is None:
            return None
        return compare_outputs(model, runner, checks, precision=precision, tolerance=tolerance)

    for fmt in chosen:
        if fmt in skipped:
            reports.append(
                DeploymentReport(
                    model_name=label, backend=fmt, runner=None, precision=precision, artefact_path="",
                    input_shape=shape, measured=None, comparison=None, skipped_reason=skipped[fmt],
                )
            )
            continue
        if fmt == "onnx":  # the graph at the requested precision, as other runtimes would consume it
            reports.append(report("onnx", None, graph_at_precision(), None, None))
        elif fmt == "onnxruntime":
            from hwdsa.export.onnxruntime import OrtRunner, default_providers, session_from_onnx

            ort_path = onnx_path
            if precision == "int8":
                from hwdsa.export.quantize import cpu_int8_needs_reduce_range

                # 7-bit weights where ORT's CPU INT8 kernels would saturate (see hwdsa.export.quantize).
                on_cpu = (list(providers) if providers else default_providers())[0] == "CPUExecutionProvider"
                ort_path = int8_onnx(reduce_range=on_cpu and cpu_int8_needs_reduce_range())
            elif precision == "fp16":
                ort_path = fp16_onnx()
            ort_runner = OrtRunner(session_from_onnx(ort_path, providers=providers, threads=threads))
            comparison = verify(ort_runner)
            provider, runner_name = ort_runner.provider, ort_runner.name
            del ort_runner  # one session in memory at a time: the timing backend makes its own
            timer = _ort_timing_backend(provider, threads)
            measured = timer.measure_network(ort_path, shape, proto, precision=precision)
            made = report("onnxruntime", runner_name, ort_path, measured, comparison, timer)
            if precision != "fp32":  # the yardstick: the FP32 graph on the same runtime, timed right after
                fp32 = timer.measure_network(onnx_path, shape, proto, precision="fp32")
                made = replace(made, fp32_latency_ms=float(fp32.median_ms))
                if made.speedup_over_fp32 is not None and made.speedup_over_fp32 < 1.0:
                    _log.warning(
                        "%s: %s on %s runs %.2fx slower than FP32 on this device (%.4g ms vs %.4g ms): FP32 is the faster "
                        "artefact to ship here",
                        label, precision, timer.name, 1.0 / made.speedup_over_fp32, measured.median_ms, fp32.median_ms,
                    )  # fmt: skip
            reports.append(made)
        else:  # tensorrt
            from hwdsa.export.tensorrt import DEFAULT_WORKSPACE_BYTES, TrtRunner, engine_from_onnx
            from hwdsa.profilers.backend import get_backend
            from hwdsa.profilers.tensorrt import TensorRTBackend

            # The backend that times the engine sets how it is built: one builder configuration.
            timer = get_backend(
                "tensorrt",
                device=torch.cuda.current_device(),
                workspace_bytes=workspace_bytes or DEFAULT_WORKSPACE_BYTES,
                builder_optimization_level=builder_optimization_level,
            )
            if not isinstance(timer, TensorRTBackend):
                raise ConfigError(f"the backend registered as 'tensorrt' is {type(timer).__name__}, not a TensorRTBackend")
            largest = max([shape[0], *(int(b.shape[0]) for b in checks or [])])
            engine_path = out / f"model.{precision}.engine"
            engine_from_onnx(
                graph_at_precision(),
                engine_path,
                precision=precision,
                input_shape=shape,
                batch_profile=(1, shape[0], largest),
                workspace_bytes=timer.builder_settings.workspace_bytes,
                builder_optimization_level=timer.builder_settings.builder_optimization_level,
            )
            trt_runner = TrtRunner.from_file(engine_path)  # checks the engine against its record
            comparison = verify(trt_runner)
            runner_name = trt_runner.name
            del trt_runner  # one engine in memory at a time: the timing backend loads its own
            measured = timer.measure_network(engine_path, shape, proto, precision=precision)
            reports.append(report("tensorrt", runner_name, engine_path, measured, comparison, timer))
        _log.info("%s: %s %s done", label, fmt, precision)

    extra: dict[str, Any] = {"timing_protocol": asdict(proto)}
    if latency_targets is not None:
        extra["latency_targets"] = latency_targets.to_dict()
    write_deployment_reports(out / REPORT_NAME, reports, extra=extra)
    return reports
