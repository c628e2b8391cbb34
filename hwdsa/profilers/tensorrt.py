"""TensorRT 10: hwdsa's one engine builder, and the backend that times engines with CUDA events.

This module owns what the profiler and the deployment share, so that the engine a latency table is
measured with and the engine `hwdsa export` ships are built the same way: the import guard
(`import_tensorrt`), the process's TensorRT logger (`trt_logger`), and the builder configuration
(`BuilderSettings`, applied by `build_engine`). `hwdsa.export.tensorrt` imports them (the dependency runs
export -> profilers, never back); it adds the dynamic-batch profile, the record beside each engine and
a torch runner. `hwdsa export` times the shipped engine file itself through this backend
(`TensorRTBackend.measure_network(engine_path, ...)`), under the same protocol and statistic as a table.

Made for the board: it needs TensorRT, numpy and the NVIDIA driver, and nothing else. Device memory,
the stream and the events come from the CUDA driver through ctypes (`hwdsa.profilers._cuda`), not from
torch or cuda-python. Only the TensorRT 10 API is used, and only the part TensorRT 11 keeps (explicit
batch, strongly typed networks, `build_serialized_network`, `set_tensor_address`, `execute_async_v3`);
`tensorrt` is imported lazily, so this module imports (and type-checks against `tensorrt-stubs`) on
machines without it.

Precision lives in the graph's types and every network is strongly typed: "fp32" with TF32 cleared
(TensorRT enables TF32 by default), an fp16 graph for "fp16", an explicit Q/DQ graph for "int8". Weak
typing (`BuilderFlag.FP16`/`INT8`) is deprecated since TensorRT 10.12 and removed in 11.

Polygraphy (NVIDIA's loaders, runners and comparators) was considered and is not used: its loaders
import TensorRT lazily too, but it would be one more package on the board, and its runners time with
their own loop rather than hwdsa's protocol. The split is Polygraphy's, though: a loader builds
(`build_engine`), a session runs (`engine_session`), and the base class times (`Backend.measure`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from hwdsa.errors import BackendUnavailableError, ConfigError, ExportError

from ._compat import override
from ._cuda import CudaDriver, cuda_error_or_none, driver
from .backend import OnnxBackend, Session
from .base import PRECISIONS, LayerSpec

if TYPE_CHECKING:
    import tensorrt as trt

_log = logging.getLogger(__name__)

INSTALL_HINT = (
    "pip install 'tensorrt>=10' (or 'hwdsa[tensorrt]'; JetPack 6 ships it on Jetson) on a machine with an "
    "NVIDIA GPU and driver"
)
DEFAULT_WORKSPACE_BYTES = 1 << 30
#: File endings `TensorRTBackend.measure_network` reads as serialized engines (anything else is ONNX).
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
_LOG_LEVELS = {"INTERNAL_ERROR": logging.CRITICAL, "ERROR": logging.ERROR, "WARNING": logging.WARNING}
#: Engine I/O data types (TensorRT names) -> the numpy/torch dtype name they hold.
_DTYPE_NAMES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


# --------------------------------------------------------------------------------------------------
# Import guard, logger, small conversions
# --------------------------------------------------------------------------------------------------


def import_tensorrt() -> ModuleType:
    """Import TensorRT >= 10, or raise BackendUnavailableError saying how to install it.

    Callers then `import tensorrt as trt` themselves, so mypy checks each call against the stubs (a
    module returned as `ModuleType` would type every attribute Any). The `tensorrt-stubs` package alone
    installs a `tensorrt` directory of .pyi files whose import succeeds and yields an empty namespace
    package (which `pytest.importorskip` accepts): that is detected (no `Builder`) and reported as
    "not installed".
    """
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: the package is there but libnvinfer cannot load
        raise BackendUnavailableError(f"TensorRT is not installed or cannot load ({exc}): {INSTALL_HINT}") from exc
    if not hasattr(tensorrt, "Builder"):
        where = [str(p) for p in getattr(tensorrt, "__path__", [])]
        raise BackendUnavailableError(
            f"TensorRT is not installed: the `tensorrt` found at {where} has no runtime (only type stubs such as "
            f"tensorrt-stubs install that directory); {INSTALL_HINT}"
        )
    version = str(tensorrt.__version__)
    if int(version.split(".")[0]) < 10:
        raise BackendUnavailableError(f"TensorRT {version} is too old: hwdsa uses the TensorRT 10 API; {INSTALL_HINT}")
    module: ModuleType = tensorrt
    return module


@functools.lru_cache(maxsize=1)
def trt_logger() -> trt.ILogger:
    """One TensorRT logger per process (TensorRT keeps a raw pointer to it), forwarding to `logging`.

    TensorRT's INFO and VERBOSE messages go to DEBUG. Made with `type()` because `ILogger.__init__` is
    untyped in the stubs (mypy --strict rejects both calling it and subclassing an unresolved type).
    """
    import_tensorrt()
    import tensorrt as trt

    def log(self: Any, severity: trt.ILogger.Severity, msg: str) -> None:
        _log.log(_LOG_LEVELS.get(str(severity.name), logging.DEBUG), "TensorRT: %s", msg)

    bridge = type("_LoggingBridge", (trt.ILogger,), {"log": log})
    logger: trt.ILogger = bridge()
    return logger


def dims(value: trt.Dims) -> tuple[int, ...]:
    """A TensorRT `Dims` as a tuple (-1 where dynamic)."""
    return tuple(int(value[i]) for i in range(len(value)))


def dtype_name(dtype: trt.DataType, *, reader: str) -> str:
    """The numpy/torch dtype name of an engine I/O tensor's TensorRT type; ExportError names `reader` if unknown."""
    try:
        return _DTYPE_NAMES[str(dtype.name)]
    except KeyError:
        raise ExportError(f"engine I/O tensors of type {dtype.name} are not supported by {reader}") from None


def _numpy_dtype(dtype: trt.DataType) -> str:
    name = dtype_name(dtype, reader="the profiler")
    if name == "bfloat16":  # numpy has no bfloat16
        raise ExportError(f"engine I/O tensors of type {dtype.name} are not supported by the profiler")
    return name


# --------------------------------------------------------------------------------------------------
# The one builder configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuilderSettings:
    """The builder options that change which kernels TensorRT picks; shared by tables and shipped engines.

    Args:
        workspace_bytes: the builder's workspace memory pool limit (>= 1 MiB).
        builder_optimization_level: TensorRT's builder optimisation level (0-5; None: TensorRT's
            default, 3). Use the level you deploy with: it changes which kernels are found.
    """

    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES
    builder_optimization_level: int | None = None

    def __post_init__(self) -> None:
        if int(self.workspace_bytes) < 1 << 20:
            raise ConfigError(f"workspace_bytes must be >= 1 MiB; got {self.workspace_bytes}")
        level = self.builder_optimization_level
        if level is not None and not 0 <= int(level) <= 5:
            raise ConfigError(f"builder_optimization_level must be in [0, 5] or None; got {level}")
        object.__setattr__(self, "workspace_bytes", int(self.workspace_bytes))
        object.__setattr__(self, "builder_optimization_level", None if level is None else int(level))


@dataclass(frozen=True)
class TensorSpec:
    """An engine input or output: name, shape (-1 where dynamic) and TensorRT data type name."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class ProfileShape:
    """The min/opt/max shapes one optimisation profile allows for one input."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


ShapeRange = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
#: How `build_engine` shapes an input: called with (input index, name, graph dims with -1 where dynamic),
#: returns its (min, opt, max) profile shapes, or None to keep a static input as the graph has it. It
#: raises ConfigError for an input it cannot shape.
ProfilePolicy = Callable[[int, str, tuple[int, ...]], ShapeRange | None]


@dataclass(frozen=True)
class BuiltEngine:
    """A serialized engine and what its network looked like when it was built."""

    data: bytes
    build_time_s: float
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    profile: tuple[ProfileShape, ...]  # every input's (min, opt, max); a static input's are its shape


def static_profile(source: str | os.PathLike[str], input_shape: Sequence[int] | None) -> ProfilePolicy:
    """The profile of a static engine: the first input's dynamic dimensions fixed to `input_shape`."""

    def policy(index: int, name: str, shape: tuple[int, ...]) -> ShapeRange | None:
        if all(d > 0 for d in shape):
            return None
        if input_shape is None or len(input_shape) != len(shape) or index > 0:
            raise ConfigError(f"{os.fspath(source)}: input {name} has dynamic dimensions {shape}; pass input_shape")
        fixed = tuple(int(s) for s in input_shape)
        return fixed, fixed, fixed

    return policy


def build_engine(
    onnx_path: str | os.PathLike[str],
    *,
    precision: str,
    profile_for: ProfilePolicy,
    settings: BuilderSettings = BuilderSettings(),
    device: int | None = None,
) -> BuiltEngine:
    """Parse an ONNX file and build a serialized engine: hwdsa's one TensorRT builder configuration.

    The network is strongly typed (the precision is the graph's types); the workspace pool and the
    builder optimisation level come from `settings`; "fp32" clears TF32. Inputs are shaped by
    `profile_for`, and one optimisation profile is added when any input has a range.

    Args:
        onnx_path: the graph, already at `precision` (an fp16 graph, a Q/DQ graph for int8).
        precision: "fp32", "fp16" or "int8".
        profile_for: each input's profile shapes (`static_profile` for a fixed shape).
        settings: the builder options (TensorRT's defaults but a 1 GiB workspace).
        device: CUDA device to build on through the driver API (None: the caller made one current).

    Raises:
        ConfigError: an unknown precision, or an input `profile_for` refuses.
        ExportError: TensorRT cannot parse the graph or build the engine.
        BackendUnavailableError: TensorRT or the CUDA driver is missing.
    """
    import_tensorrt()
    import tensorrt as trt

    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    if device is not None:
        driver().make_current(device)
    source = os.fspath(onnx_path)
    logger = trt_logger()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(source):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT {trt.__version__} cannot parse {source}: {errors or 'no error recorded'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    if settings.builder_optimization_level is not None:
        config.builder_optimization_level = settings.builder_optimization_level
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # TensorRT enables TF32 by default: fp32 must mean fp32

    profile = builder.create_optimization_profile()
    inputs: list[TensorSpec] = []
    shapes: list[ProfileShape] = []
    ranged = False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = dims(tensor.shape)
        inputs.append(TensorSpec(tensor.name, shape, str(tensor.dtype.name)))
        ranges = profile_for(i, tensor.name, shape)
        if ranges is None:
            shapes.append(ProfileShape(tensor.name, shape, shape, shape))
            continue
        low, opt, high = (tuple(int(d) for d in r) for r in ranges)
        profile.set_shape(tensor.name, trt.Dims(list(low)), trt.Dims(list(opt)), trt.Dims(list(high)))
        shapes.append(ProfileShape(tensor.name, low, opt, high))
        ranged = True
    if ranged:  # a dynamic input needs a profile, even one whose min, opt and max agree
        config.add_optimization_profile(profile)
    outputs = tuple(
        TensorSpec(t.name, dims(t.shape), str(t.dtype.name)) for t in (network.get_output(i) for i in range(network.num_outputs))
    )

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_time_s = time.perf_counter() - start
    if serialized is None:
        raise ExportError(
            f"TensorRT {trt.__version__} could not build a {precision} engine from {source}: "
            f"see the TensorRT messages in the log (logger {__name__})"
        )
    _log.debug("built %s engine for %s in %.2f s", precision, source, build_time_s)
    return BuiltEngine(bytes(memoryview(serialized)), build_time_s, tuple(inputs), outputs, tuple(shapes))


# --------------------------------------------------------------------------------------------------
# Running and timing
# --------------------------------------------------------------------------------------------------


class _TrtSession(Session):
    """An engine's execution context with bound buffers; enqueues on its own stream, timed by events."""

    has_device_timer = True

    def __init__(self, drv: CudaDriver, context: trt.IExecutionContext, stream: int, start: int, end: int) -> None:
        self._drv = drv
        self._context = context
        self._stream = stream
        self._start = start
        self._end = end

    @override
    def run_once(self) -> None:
        if not self._context.execute_async_v3(self._stream):
            raise ExportError("TensorRT execute_async_v3 failed; see the TensorRT messages in the log")

    @override
    def synchronize(self) -> None:
        self._drv.stream_synchronize(self._stream)

    @override
    def device_sample(self, inner: int) -> float:
        self._drv.event_record(self._start, self._stream)
        for _ in range(inner):
            self.run_once()
        self._drv.event_record(self._end, self._stream)
        self._drv.event_synchronize(self._end)
        return self._drv.event_elapsed_ms(self._start, self._end) / inner


class TensorRTBackend(OnnxBackend):
    """TensorRT 10 on CUDA device `device`.

    Layers and ONNX networks are built as static engines with `build_engine` and this backend's
    `builder_settings`; a serialized engine file (`ENGINE_SUFFIXES`, such as the one `hwdsa export`
    ships) is timed as it is, through `measure_network(engine_path, input_shape)`.

    Args:
        device: CUDA device index.
        workspace_bytes: the builder's workspace memory pool limit.
        builder_optimization_level: TensorRT's builder optimisation level (0-5; None: TensorRT's default, 3).
            Use the level you deploy with: it changes which kernels are found.
        onnx_files: ONNX file per spec (from a bundle); other specs are exported with torch on the host.
    """

    name = "tensorrt"
    description = "TensorRT 10 engines, CUDA-event timing (fp32, fp16, int8)"
    install_hint = INSTALL_HINT
    precisions = ("fp32", "fp16", "int8")
    stepped_latency = True  # tensor-core tiles: a staircase in the channel count
    engine_suffixes = ENGINE_SUFFIXES

    def __init__(
        self,
        *,
        device: int = 0,
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
        builder_optimization_level: int | None = None,
        onnx_files: Mapping[LayerSpec, str | os.PathLike[str]] | None = None,
    ) -> None:
        super().__init__(onnx_files=onnx_files)
        if isinstance(device, bool) or not isinstance(device, int) or device < 0:
            raise ConfigError(f"device must be a CUDA device index >= 0; got {device!r}")
        self.device_index = device
        self.builder_settings = BuilderSettings(workspace_bytes, builder_optimization_level)

    import_tensorrt = staticmethod(import_tensorrt)

    @property
    def workspace_bytes(self) -> int:
        return self.builder_settings.workspace_bytes

    @property
    def builder_optimization_level(self) -> int | None:
        return self.builder_settings.builder_optimization_level

    @property
    @override
    def channel_multiple(self) -> int:
        return 8  # tensor-core tiles

    @override
    @classmethod
    def check_available(cls) -> None:
        import_tensorrt()
        reason = cuda_error_or_none()
        if reason is not None:
            raise BackendUnavailableError(f"TensorRT needs an NVIDIA GPU: {reason}")

    @override
    def options(self) -> dict[str, Any]:
        return {
            "device": self.device_index,
            "workspace_bytes": self.workspace_bytes,
            "builder_optimization_level": self.builder_optimization_level,
        }

    @override
    def versions(self) -> dict[str, str]:
        import_tensorrt()
        import tensorrt as trt

        return {**super().versions(), "tensorrt": str(trt.__version__), "cuda_driver": driver().driver_version()}

    @override
    def device_description(self) -> str:
        from .device import cuda_description

        return cuda_description(self.device_index)

    # ------------------------------------------------------------------ building
    def engine_from_onnx(self, onnx_path: Path, *, precision: str, input_shape: Sequence[int] | None = None) -> bytes:
        """Build a serialized static engine for `onnx_path` (dynamic input dimensions fixed to `input_shape`).

        Raises:
            ExportError: TensorRT cannot parse the graph or build the engine.
            ConfigError: a dynamic input without `input_shape`, or an unknown precision.
        """
        if precision not in self.precisions:
            raise ConfigError(f"precision must be one of {self.precisions}; got {precision!r}")
        built = build_engine(
            onnx_path,
            precision=precision,
            settings=self.builder_settings,
            profile_for=static_profile(onnx_path, input_shape),
            device=self.device_index,
        )
        return built.data

    # ------------------------------------------------------------------ running
    @override
    @contextlib.contextmanager
    def onnx_session(
        self, onnx_path: Path, *, precision: str, input_shape: Sequence[int] | None = None
    ) -> Iterator[Session]:
        data = self.engine_from_onnx(onnx_path, precision=precision, input_shape=input_shape)
        with self.engine_session(data, input_shape=input_shape, source=f"the engine built from {onnx_path}") as s:
            yield s

    @override
    def file_session(self, path: Path, *, precision: str, input_shape: Sequence[int]) -> AbstractContextManager[Session]:
        """An ONNX file is built here (`onnx_session`); an engine file (`engine_suffixes`) is run as it is.

        An engine's precision is its own, fixed when it was built (`precision` only passes the
        backend's check). The engine is not checked against a record here: `hwdsa.export.tensorrt`
        does that before it hands an engine over.
        """
        if path.suffix in self.engine_suffixes:
            return self.engine_session(path.read_bytes(), input_shape=input_shape, source=os.fspath(path))
        return super().file_session(path, precision=precision, input_shape=input_shape)

    @contextlib.contextmanager
    def engine_session(self, data: bytes, *, input_shape: Sequence[int] | None = None, source: str = "the engine") -> Iterator[Session]:
        """A session on a serialized engine: random inputs and the outputs bound in device memory, its own stream.

        `input_shape` sets the first input's shape where the engine's is dynamic (within its profile).
        """
        import_tensorrt()
        import numpy as np
        import tensorrt as trt

        drv = driver()
        drv.make_current(self.device_index)
        runtime = trt.Runtime(trt_logger())
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise ExportError(f"TensorRT could not deserialize {source}; see the TensorRT messages in the log")
        context = engine.create_execution_context()
        if context is None:
            raise ExportError("TensorRT could not create an execution context (out of GPU memory?)")
        buffers: list[int] = []
        events: list[int] = []
        stream = 0
        rng = np.random.default_rng(0)
        try:
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            for i, name in enumerate(inputs):
                shape = dims(engine.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    if input_shape is None or i > 0:
                        raise ConfigError(f"{source}: input {name} has dynamic shape {shape}; pass input_shape")
                    shape = tuple(int(s) for s in input_shape)
                    if not context.set_input_shape(name, shape):
                        raise ConfigError(f"{source}: input {name} cannot take shape {shape}")
                host = np.ascontiguousarray(rng.standard_normal(shape).astype(_numpy_dtype(engine.get_tensor_dtype(name))))
                ptr = drv.mem_alloc(host.nbytes)
                buffers.append(ptr)
                drv.memcpy_htod(ptr, int(host.ctypes.data), host.nbytes)
                context.set_tensor_address(name, ptr)
            for name in names:
                if name in inputs:
                    continue
                shape = dims(context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise ExportError(f"{source}: output {name} has a data-dependent shape {shape}")
                nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(_numpy_dtype(engine.get_tensor_dtype(name))).itemsize
                ptr = drv.mem_alloc(nbytes)
                buffers.append(ptr)
                context.set_tensor_address(name, ptr)
            stream = drv.stream_create()
            events = [drv.event_create(), drv.event_create()]
            session = _TrtSession(drv, context, stream, events[0], events[1])
            session.run_once()  # one run outside the protocol: fails early, loads the kernels
            session.synchronize()
            yield session
        finally:
            if stream:
                drv.stream_synchronize(stream)
            for ptr in buffers:
                drv.mem_free(ptr)
            for event in events:
                drv.event_destroy(event)
            if stream:
                drv.stream_destroy(stream)
            del context, engine, runtime


__all__ = [
    "DEFAULT_WORKSPACE_BYTES",
    "ENGINE_SUFFIXES",
    "INSTALL_HINT",
    "BuilderSettings",
    "BuiltEngine",
    "ProfilePolicy",
    "ProfileShape",
    "TensorRTBackend",
    "TensorSpec",
    "build_engine",
    "dims",
    "dtype_name",
    "import_tensorrt",
    "static_profile",
    "trt_logger",
]
