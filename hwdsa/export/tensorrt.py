"""TensorRT 10 engines from ONNX files, the JSON record beside each engine, checked loading, and a runner.

Only the TensorRT 10 API is used, and only the part of it that TensorRT 11 keeps: explicit-batch,
strongly typed networks (`create_network(1 << STRONGLY_TYPED)`), one optimisation profile for the
dynamic batch axis, `set_memory_pool_limit`, `build_serialized_network`, and at run time
`set_input_shape` / `set_tensor_address` / `execute_async_v3` on torch CUDA tensors.

Every precision lives in the ONNX graph's types, and the network is strongly typed, so TensorRT runs
exactly those types. TensorRT 10.1 deprecated the implicit INT8 calibrators, 10.5 deprecated
`platform_has_fast_fp16`, 10.12 deprecated weak typing (`BuilderFlag.FP16`/`INT8`), and 11.0 removed
all of them; strong typing is available from 10.0 and is the only mode in 11.x:
- "fp32": the FP32 graph, with TF32 turned off so that FP32 means FP32 (TensorRT enables TF32 by
  default, which rounds matmul inputs to 10 mantissa bits).
- "fp16": an FP16 graph with FP32 inputs and outputs (`fp16_onnx_from_onnx`, made beside the engine
  from an FP32 graph; the same graph ONNX Runtime runs at FP16).
- "int8": explicit quantisation. The ONNX graph carries Q/DQ nodes (made by `qdq_onnx_from_onnx`
  from the caller's calibration data when the graph has none): no calibrator, no INT8 flag.

The import guard, the TensorRT logger and the builder configuration are the profilers' (`BuilderSettings`
and `build_engine` in `hwdsa.profilers.tensorrt`), so a shipped engine is built exactly as the engines a
latency table is measured with; this module adds the dynamic-batch profile, the record and the torch
runner. `hwdsa export` times the shipped engine file through the profilers' `tensorrt` backend.

`tensorrt` is imported inside functions only (via `import_tensorrt`), so this module imports, and its
records can be checked, on machines without TensorRT. Note that the `tensorrt-stubs` package installs
a directory named `tensorrt` holding only `.pyi` files: `import tensorrt` then succeeds and yields an
empty namespace package, which `import_tensorrt` detects (and `pytest.importorskip` does not).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hwdsa._io import atomic_path, write_json_atomic
from hwdsa._version import __version__
from hwdsa.errors import BackendUnavailableError, ConfigError, EngineMismatchError, ExportError
from hwdsa.export._data import BatchSource
from hwdsa.export.onnx import onnx_precision, sha256_file
from hwdsa.profilers.backend import Backend
from hwdsa.profilers.base import PRECISIONS, Measurement, TimingProtocol
from hwdsa.profilers.tensorrt import DEFAULT_WORKSPACE_BYTES as DEFAULT_WORKSPACE_BYTES
from hwdsa.profilers.tensorrt import BuilderSettings, ProfilePolicy, ShapeRange, build_engine, dtype_name
from hwdsa.profilers.tensorrt import ProfileShape as ProfileShape
from hwdsa.profilers.tensorrt import TensorSpec as TensorSpec
from hwdsa.profilers.tensorrt import dims as _dims
from hwdsa.profilers.tensorrt import import_tensorrt, trt_logger

if TYPE_CHECKING:
    import tensorrt as trt

_log = logging.getLogger(__name__)

RECORD_SCHEMA_VERSION = 1
#: The profilers' import guard and TensorRT logger (one per process), under this module's earlier names.


# --------------------------------------------------------------------------------------------------
# Import and environment
# --------------------------------------------------------------------------------------------------


def is_available() -> bool:
    """Whether engines can be built and run here: TensorRT >= 10 is installed and a CUDA device is present."""
    try:
        import_tensorrt()
    except BackendUnavailableError:
        return False
    return bool(torch.cuda.is_available())


def require_cuda() -> None:
    """Refuse (BackendUnavailableError) when torch sees no CUDA device: engines are built and run on one."""
    if not torch.cuda.is_available():
        raise BackendUnavailableError("TensorRT needs a CUDA device, and torch sees none here")


def current_environment() -> dict[str, str]:
    """TensorRT version, device name and compute capability here: what an engine record must match."""
    import_tensorrt()
    import tensorrt as trt

    require_cuda()
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return {
        "tensorrt_version": str(trt.__version__),
        "device_name": str(torch.cuda.get_device_name(index)),
        "compute_capability": f"{major}.{minor}",
    }


# --------------------------------------------------------------------------------------------------
# The record beside each engine
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineRecord:
    """What an engine was built from, where and how: `<engine>.json`, checked before every load.

    `engine_sha256` detects a corrupted or replaced engine; `onnx_sha256` ties it to its ONNX file.
    """

    tensorrt_version: str
    device_name: str
    compute_capability: str
    precision: str
    strongly_typed: bool
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    profile: tuple[ProfileShape, ...]
    workspace_bytes: int
    build_time_s: float
    onnx_path: str
    onnx_sha256: str
    engine_sha256: str
    hwdsa_version: str
    built_at: str
    schema_version: int = RECORD_SCHEMA_VERSION
    builder_optimization_level: int | None = None  # absent from records written before it was recorded

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineRecord:
        """Parse a record; a wrong schema version or a missing field raises EngineMismatchError."""
        version = data.get("schema_version")
        if version != RECORD_SCHEMA_VERSION:
            raise EngineMismatchError(
                f"engine record schema_version is {version!r}; this hwdsa reads {RECORD_SCHEMA_VERSION}: rebuild the engine"
            )
        try:
            return cls(
                tensorrt_version=str(data["tensorrt_version"]),
                device_name=str(data["device_name"]),
                compute_capability=str(data["compute_capability"]),
                precision=str(data["precision"]),
                strongly_typed=bool(data["strongly_typed"]),
                inputs=tuple(TensorSpec(str(t["name"]), tuple(t["shape"]), str(t["dtype"])) for t in data["inputs"]),
                outputs=tuple(TensorSpec(str(t["name"]), tuple(t["shape"]), str(t["dtype"])) for t in data["outputs"]),
                profile=tuple(
                    ProfileShape(str(p["name"]), tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
                    for p in data["profile"]
                ),
                workspace_bytes=int(data["workspace_bytes"]),
                build_time_s=float(data["build_time_s"]),
                onnx_path=str(data["onnx_path"]),
                onnx_sha256=str(data["onnx_sha256"]),
                engine_sha256=str(data["engine_sha256"]),
                hwdsa_version=str(data["hwdsa_version"]),
                built_at=str(data["built_at"]),
                schema_version=int(version),
                builder_optimization_level=_optional_int(data.get("builder_optimization_level")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineMismatchError(f"engine record is malformed ({type(exc).__name__}: {exc}): rebuild the engine") from exc


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def record_path(engine_path: str | os.PathLike[str]) -> Path:
    """Where an engine's record lives: `<engine>.json` beside it."""
    path = Path(engine_path)
    return path.with_name(path.name + ".json")


def read_engine_record(engine_path: str | os.PathLike[str]) -> EngineRecord:
    """The record of the engine at `engine_path`; EngineMismatchError when it is missing or malformed."""
    rpath = record_path(engine_path)
    if not rpath.is_file():
        raise EngineMismatchError(
            f"{os.fspath(engine_path)} has no record ({rpath} is missing): hwdsa only loads engines it can check; "
            "rebuild it with engine_from_onnx"
        )
    try:
        data = json.loads(rpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineMismatchError(f"engine record {rpath} is unreadable ({exc}): rebuild the engine") from exc
    if not isinstance(data, dict):
        raise EngineMismatchError(f"engine record {rpath} is not a JSON object: rebuild the engine")
    return EngineRecord.from_dict(data)


def check_engine_record(
    engine_path: str | os.PathLike[str],
    *,
    tensorrt_version: str,
    device_name: str,
    compute_capability: str,
    data: bytes | None = None,
) -> EngineRecord:
    """Check an engine file against its record and the current environment; pure Python, no TensorRT.

    Args:
        engine_path: the engine file.
        tensorrt_version, device_name, compute_capability: the environment that would load it.
        data: the engine's bytes when already read (otherwise the file is hashed from disk).

    Raises:
        ConfigError: the engine file does not exist.
        EngineMismatchError: the record is missing or malformed, the file's sha256 differs from the
            record's (corrupted or replaced), or it was built with another TensorRT version or device.
    """
    path = Path(engine_path)
    if not path.is_file():
        raise ConfigError(f"engine file {path} does not exist")
    record = read_engine_record(path)
    digest = hashlib.sha256(data).hexdigest() if data is not None else sha256_file(path)
    if digest != record.engine_sha256:
        raise EngineMismatchError(
            f"{path} is corrupted or was replaced: its sha256 {digest[:16]}... differs from the record's "
            f"{record.engine_sha256[:16]}...; rebuild it with engine_from_onnx"
        )
    if record.tensorrt_version != tensorrt_version:
        raise EngineMismatchError(
            f"{path} was built with TensorRT {record.tensorrt_version}; this is TensorRT {tensorrt_version}. "
            "Engines are not portable across TensorRT versions: rebuild it here with engine_from_onnx"
        )
    if (record.device_name, record.compute_capability) != (device_name, compute_capability):
        raise EngineMismatchError(
            f"{path} was built for {record.device_name} (compute capability {record.compute_capability}); "
            f"this device is {device_name} ({compute_capability}). Engines are tuned to one GPU: rebuild it here"
        )
    return record


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


def _check_profile(batch_profile: Sequence[int]) -> tuple[int, int, int]:
    values = tuple(int(b) for b in batch_profile)
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise ConfigError(f"batch_profile must be (min, opt, max) with 1 <= min <= opt <= max; got {tuple(batch_profile)}")
    return values[0], values[1], values[2]


def _batch_profile(shape: tuple[int, ...], batches: tuple[int, int, int]) -> ProfilePolicy:
    """The shipped engine's profile: every input of the graph is `shape`, its batch (only) may range over `batches`."""

    def policy(index: int, name: str, dims: tuple[int, ...]) -> ShapeRange | None:
        if len(dims) != len(shape) or any(d not in (-1, s) for d, s in zip(dims[1:], shape[1:])):
            raise ConfigError(f"input_shape {shape} does not match the graph's input {name} of shape {dims}")
        if any(d == -1 for d in dims[1:]):
            raise ConfigError(f"input {name} has dynamic dimensions {dims} other than the batch; export it with a fixed size")
        if dims[0] != -1:
            return None
        low, opt, high = (tuple([b, *dims[1:]]) for b in batches)
        return low, opt, high

    return policy


def engine_from_onnx(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    *,
    precision: str = "fp32",
    input_shape: Sequence[int],
    batch_profile: Sequence[int] | None = None,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    builder_optimization_level: int | None = None,
    calibration_data: BatchSource | None = None,
) -> EngineRecord:
    """Build a TensorRT engine from an ONNX file and write it, with its record, atomically.

    The engine is built by the profilers' `build_engine` with `BuilderSettings(workspace_bytes,
    builder_optimization_level)`: the configuration the `tensorrt` backend builds its table's engines
    with, so pass the same settings as the table's backend (`hwdsa export` does).

    Args:
        onnx_path: the graph: FP32, or already FP16 (for "fp16") or Q/DQ (for "int8").
        engine_path: where the engine goes; the record goes to `<engine_path>.json`.
        precision: "fp32", "fp16" or "int8" (see the module docstring).
        input_shape: the input's shape, batch first; its batch is the profile's optimum.
        batch_profile: (min, opt, max) batch sizes the engine accepts; default (1, batch, batch).
        workspace_bytes: the builder's workspace memory pool limit.
        builder_optimization_level: TensorRT's builder optimisation level (0-5; None: TensorRT's default).
        calibration_data: for INT8 when the graph has no Q/DQ nodes: real input batches from which
            `qdq_onnx_from_onnx` makes `<engine stem>.qdq.onnx` beside the engine. (FP16 from an FP32
            graph needs no data: `<engine stem>.fp16.onnx` is made beside the engine.)

    Returns:
        The engine's record (also written to `<engine_path>.json`).

    Raises:
        ConfigError: bad arguments, INT8 without Q/DQ nodes or calibration data, a graph whose types
            belong to another precision, or an input shape that does not match the graph.
        BackendUnavailableError: TensorRT or a CUDA device is missing.
        ExportError: TensorRT cannot parse the graph or build the engine.
    """
    source = Path(onnx_path)
    target = Path(engine_path)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    settings = BuilderSettings(workspace_bytes, builder_optimization_level)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ConfigError(f"input_shape must be batch-first with every dimension >= 1; got {tuple(input_shape)}")
    profile_batches = _check_profile(batch_profile if batch_profile is not None else (1, shape[0], shape[0]))
    if not source.is_file():
        raise ConfigError(f"ONNX file {source} does not exist")
    graph_precision = onnx_precision(source)
    if precision == "int8" and graph_precision != "int8" and calibration_data is None:
        raise ConfigError(
            f"INT8 needs calibration data: {source} has no Q/DQ nodes, so pass calibration_data= a few hundred "
            "real input samples (or a graph from qdq_onnx_from_onnx)"
        )
    if graph_precision == "int8" and precision != "int8":
        raise ConfigError(f"{source} has Q/DQ nodes (an INT8 graph); build it with precision='int8'")
    if graph_precision == "fp16" and precision != "fp16":
        raise ConfigError(f"{source} is an FP16 graph; build it with precision='fp16', or pass the FP32 graph")

    import_tensorrt()
    require_cuda()
    if precision == "int8" and graph_precision != "int8":
        from hwdsa.export.quantize import qdq_onnx_from_onnx

        source = qdq_onnx_from_onnx(source, target.with_name(f"{target.stem}.qdq.onnx"), calibration_data=calibration_data)
    elif precision == "fp16" and graph_precision != "fp16":
        from hwdsa.export.quantize import fp16_onnx_from_onnx

        source = fp16_onnx_from_onnx(source, target.with_name(f"{target.stem}.fp16.onnx"))
    built = build_engine(source, precision=precision, settings=settings, profile_for=_batch_profile(shape, profile_batches))
    env = current_environment()
    record = EngineRecord(
        tensorrt_version=env["tensorrt_version"],
        device_name=env["device_name"],
        compute_capability=env["compute_capability"],
        precision=precision,
        strongly_typed=True,  # build_engine's networks always are: the precision is the graph's
        inputs=built.inputs,
        outputs=built.outputs,
        profile=built.profile,
        workspace_bytes=settings.workspace_bytes,
        build_time_s=built.build_time_s,
        onnx_path=os.fspath(source),
        onnx_sha256=sha256_file(source),
        engine_sha256=hashlib.sha256(built.data).hexdigest(),
        hwdsa_version=__version__,
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        builder_optimization_level=settings.builder_optimization_level,
    )
    with atomic_path(target) as tmp:
        tmp.write_bytes(built.data)
        write_json_atomic(record_path(target), record.to_dict())
    _log.info("built %s engine %s in %.1f s (%d bytes)", precision, target, built.build_time_s, len(built.data))
    return record


# --------------------------------------------------------------------------------------------------
# Loading and running
# --------------------------------------------------------------------------------------------------


def engine_from_file(engine_path: str | os.PathLike[str]) -> trt.ICudaEngine:
    """Deserialize an engine after checking it against its record and this machine.

    Raises:
        EngineMismatchError: no record, a corrupted file, or another TensorRT version or device.
        BackendUnavailableError: TensorRT or a CUDA device is missing.
    """
    import_tensorrt()
    import tensorrt as trt

    path = Path(engine_path)
    if not path.is_file():
        raise ConfigError(f"engine file {path} does not exist")
    data = path.read_bytes()
    check_engine_record(path, data=data, **current_environment())
    runtime = trt.Runtime(trt_logger())
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise EngineMismatchError(f"TensorRT could not deserialize {path}; see the TensorRT messages in the log")
    return engine


def _torch_dtype(dtype: trt.DataType) -> torch.dtype:
    value = getattr(torch, dtype_name(dtype, reader="TrtRunner"))
    assert isinstance(value, torch.dtype)
    return value


class TrtRunner:
    """Runs a TensorRT engine on torch CUDA tensors, on torch's current stream (no host round trip).

    `runner(x)` feeds a single-input engine and returns its first output (a CUDA tensor);
    `runner.infer(feeds)` takes and returns every named tensor. Inputs on the CPU are copied to the GPU.
    """

    def __init__(self, engine: trt.ICudaEngine, *, name: str = "tensorrt") -> None:
        import_tensorrt()
        import tensorrt as trt

        self.engine = engine
        context = engine.create_execution_context()
        if context is None:
            raise ExportError("TensorRT could not create an execution context (out of GPU memory?)")
        self.context: trt.IExecutionContext = context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: _torch_dtype(engine.get_tensor_dtype(n)) for n in names}
        self._name = name

    @classmethod
    def from_file(cls, engine_path: str | os.PathLike[str]) -> TrtRunner:
        """Load a checked engine (see `engine_from_file`) and wrap it."""
        record = read_engine_record(engine_path)
        return cls(engine_from_file(engine_path), name=f"tensorrt[{record.precision}]")

    @property
    def name(self) -> str:
        return self._name

    def bind(self, feeds: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """Set the input shapes and bind inputs and fresh outputs to the execution context.

        Returns the outputs by name and the converted inputs, which must outlive every `enqueue()`.
        """
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ConfigError(f"missing input(s) {missing}; the engine's inputs are {self.input_names}")
        device = torch.device("cuda", torch.cuda.current_device())
        keep_alive: list[torch.Tensor] = []
        for name in self.input_names:
            tensor = feeds[name].to(device=device, dtype=self._dtypes[name]).contiguous()
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                allowed = [_dims(d) for d in self.engine.get_tensor_profile_shape(name, 0)]
                raise ConfigError(
                    f"input {name} of shape {tuple(tensor.shape)} is outside the engine's profile (min, opt, max) {allowed}"
                )
            self.context.set_tensor_address(name, tensor.data_ptr())
            keep_alive.append(tensor)
        outputs: dict[str, torch.Tensor] = {}
        for name in self.output_names:
            shape = _dims(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ExportError(f"output {name} has a data-dependent shape {shape}; TrtRunner does not support it")
            out = torch.empty(shape, dtype=self._dtypes[name], device=device)
            self.context.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        return outputs, keep_alive

    def enqueue(self) -> None:
        """Enqueue one execution of the bound tensors on torch's current stream."""
        stream = torch.cuda.current_stream(torch.device("cuda", torch.cuda.current_device()))
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ExportError(f"TensorRT execution of {self.name} failed; see the TensorRT messages in the log")

    def infer(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Enqueue the engine on named inputs; returns the outputs (CUDA tensors, ready in stream order)."""
        outputs, keep_alive = self.bind(feeds)
        self.enqueue()
        # The caching allocator reuses freed memory only after the stream's pending work, so dropping
        # the converted inputs here is safe.
        del keep_alive
        return outputs

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.input_names) != 1:
            raise ConfigError(f"runner(x) needs a single-input engine; this one has {self.input_names}: use infer()")
        return self.infer({self.input_names[0]: x})[self.output_names[0]]


def time_engine(runner: TrtRunner, x: torch.Tensor, protocol: TimingProtocol | None = None) -> Measurement:
    """Latency of one engine execution on a fixed CUDA input, under hwdsa's one timing protocol.

    The inputs and outputs are bound once, and each sample times `inner` enqueued executions with
    CUDA events (the profilers' `CudaEventSession`); `Backend.time_session` applies the protocol and
    keeps the quietest of its rounds, the statistic of a latency table. (`hwdsa export` times the engine
    file through the profilers' `tensorrt` backend instead, whose own CUDA-driver buffers need no torch.)
    """
    from hwdsa.profilers.torch_cuda import CudaEventSession

    if len(runner.input_names) != 1:
        raise ConfigError(f"time_engine needs a single-input engine; this one has {runner.input_names}")
    outputs, keep_alive = runner.bind({runner.input_names[0]: x})  # bound once: a timed run is the engine only
    session = CudaEventSession(runner.enqueue, torch.device("cuda", torch.cuda.current_device()))
    session.run_once()  # one run outside the protocol: fails early, loads the kernels
    session.synchronize()
    measured = Backend.time_session(session, protocol)
    del outputs, keep_alive
    return measured
