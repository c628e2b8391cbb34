"""Deployment: ONNX export, ONNX Runtime sessions, TensorRT engines, verification and timing.

Polygraphy's split: building an artefact (`onnx_from_module`, `qdq_onnx_from_onnx`, `engine_from_onnx`),
running it (`session_from_onnx` + `OrtRunner`, `engine_from_file` + `TrtRunner`) and comparing it with
PyTorch (`compare_outputs`) are separate steps; `export_model` chains them for `hwdsa export`, times each
artefact with the profilers' backends and compares it with the cost model's prediction and the run's
budget (`LatencyTargets`, read from a `hwdsa prune` folder by `latency_targets_from_run`).
Names are imported lazily: importing this package loads neither torch, onnx, onnxruntime nor tensorrt
(`hwdsa.export.formats`, which the command line's choices read, imports nothing).
"""

from __future__ import annotations

from hwdsa._lazy import attach

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hwdsa.export.compare import ComparisonReport as ComparisonReport
    from hwdsa.export.compare import Runner as Runner
    from hwdsa.export.compare import Tolerance as Tolerance
    from hwdsa.export.compare import compare_outputs as compare_outputs
    from hwdsa.export.deploy import DeploymentReport as DeploymentReport
    from hwdsa.export.deploy import export_model as export_model
    from hwdsa.export.deploy import read_deployment_reports as read_deployment_reports
    from hwdsa.export.deploy import write_deployment_reports as write_deployment_reports
    from hwdsa.export.formats import FORMATS as FORMATS
    from hwdsa.export.onnx import onnx_from_module as onnx_from_module
    from hwdsa.export.onnxruntime import OrtRunner as OrtRunner
    from hwdsa.export.onnxruntime import session_from_onnx as session_from_onnx
    from hwdsa.export.onnxruntime import time_session as time_session
    from hwdsa.export.quantize import fp16_onnx_from_onnx as fp16_onnx_from_onnx
    from hwdsa.export.quantize import qdq_onnx_from_onnx as qdq_onnx_from_onnx
    from hwdsa.export.targets import Conditions as Conditions
    from hwdsa.export.targets import LatencyTargets as LatencyTargets
    from hwdsa.export.targets import latency_targets_from_run as latency_targets_from_run
    from hwdsa.export.tensorrt import EngineRecord as EngineRecord
    from hwdsa.export.tensorrt import TrtRunner as TrtRunner
    from hwdsa.export.tensorrt import check_engine_record as check_engine_record
    from hwdsa.export.tensorrt import engine_from_file as engine_from_file
    from hwdsa.export.tensorrt import engine_from_onnx as engine_from_onnx
    from hwdsa.export.tensorrt import time_engine as time_engine

_LAZY: dict[str, str] = {
    "ComparisonReport": "hwdsa.export.compare",
    "Runner": "hwdsa.export.compare",
    "Tolerance": "hwdsa.export.compare",
    "compare_outputs": "hwdsa.export.compare",
    "FORMATS": "hwdsa.export.formats",
    "DeploymentReport": "hwdsa.export.deploy",
    "export_model": "hwdsa.export.deploy",
    "read_deployment_reports": "hwdsa.export.deploy",
    "write_deployment_reports": "hwdsa.export.deploy",
    "onnx_from_module": "hwdsa.export.onnx",
    "OrtRunner": "hwdsa.export.onnxruntime",
    "session_from_onnx": "hwdsa.export.onnxruntime",
    "time_session": "hwdsa.export.onnxruntime",
    "fp16_onnx_from_onnx": "hwdsa.export.quantize",
    "qdq_onnx_from_onnx": "hwdsa.export.quantize",
    "Conditions": "hwdsa.export.targets",
    "LatencyTargets": "hwdsa.export.targets",
    "latency_targets_from_run": "hwdsa.export.targets",
    "EngineRecord": "hwdsa.export.tensorrt",
    "TrtRunner": "hwdsa.export.tensorrt",
    "check_engine_record": "hwdsa.export.tensorrt",
    "engine_from_file": "hwdsa.export.tensorrt",
    "engine_from_onnx": "hwdsa.export.tensorrt",
    "time_engine": "hwdsa.export.tensorrt",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = attach(__name__, _LAZY)
