"""TensorRT 10 backend: an engine built from the layer's ONNX file, run with `execute_async_v3`, timed with CUDA events.

Made for the board: it needs TensorRT, numpy and the NVIDIA driver, and nothing else. Device memory,
the stream and the events come from the CUDA driver through ctypes (`hwdsa.profilers._cuda`), not from
torch or cuda-python. Only the TensorRT 10 API is used (explicit batch, `build_serialized_network`,
`set_tensor_address`, `execute_async_v3`); `tensorrt` is imported lazily, so this module imports (and
type-checks against `tensorrt-stubs`) on machines without it.

Precisions follow `hwdsa.export.tensorrt`, so a layer is built the way the deployed network is: every
network is strongly typed and the precision is the graph's own types ("fp32" with TF32 cleared, an fp16
graph for "fp16", the explicit Q/DQ graph for "int8"). Weak typing (`BuilderFlag.FP16`/`INT8`) is
deprecated since TensorRT 10.12 and removed in 11.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from hwdsa.errors import BackendUnavailableError, ConfigError, ExportError

from ._compat import override
from ._cuda import CudaDriver, cuda_error_or_none, driver
from .backend import OnnxBackend, Session
from .base import LayerSpec

if TYPE_CHECKING:
    import tensorrt as trt

_log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'tensorrt>=10' (JetPack 6 ships it on Jetson) on a machine with an NVIDIA GPU and driver"
DEFAULT_WORKSPACE_BYTES = 1 << 30
_LOG_LEVELS = {"INTERNAL_ERROR": logging.CRITICAL, "ERROR": logging.ERROR, "WARNING": logging.WARNING}


def import_tensorrt() -> ModuleType:
    """Import TensorRT >= 10, or raise BackendUnavailableError saying how to install it.

    Callers then `import tensorrt as trt` themselves, so mypy checks each call against the stubs. The
    `tensorrt-stubs` package alone installs an empty `tensorrt` directory whose import succeeds: that
    is detected (no `Builder`) and reported as "not installed".
    """
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: the package is there but libnvinfer cannot load
        raise BackendUnavailableError(f"TensorRT is not installed or cannot load ({exc}): {INSTALL_HINT}") from exc
    if not hasattr(tensorrt, "Builder"):
        where = [str(p) for p in getattr(tensorrt, "__path__", [])]
        raise BackendUnavailableError(
            f"TensorRT is not installed: the `tensorrt` at {where} holds only type stubs; {INSTALL_HINT}"
        )
    version = str(tensorrt.__version__)
    if int(version.split(".")[0]) < 10:
        raise BackendUnavailableError(f"TensorRT {version} is too old: hwdsa uses the TensorRT 10 API; {INSTALL_HINT}")
    module: ModuleType = tensorrt
    return module


@functools.lru_cache(maxsize=1)
def _trt_logger() -> trt.ILogger:
    """One TensorRT logger per process (TensorRT keeps a raw pointer to it), forwarding to `logging`.

    Made with `type()` because `ILogger.__init__` is untyped in the stubs (mypy --strict rejects both
    calling it and subclassing an unresolved type).
    """
    import_tensorrt()
    import tensorrt as trt

    def log(self: Any, severity: trt.ILogger.Severity, msg: str) -> None:
        _log.log(_LOG_LEVELS.get(str(severity.name), logging.DEBUG), "TensorRT: %s", msg)

    bridge = type("_LoggingBridge", (trt.ILogger,), {"log": log})
    logger: trt.ILogger = bridge()
    return logger


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    return tuple(int(dims[i]) for i in range(len(dims)))


def _numpy_dtype(dtype: trt.DataType) -> str:
    import tensorrt as trt

    table = {
        trt.DataType.FLOAT: "float32",
        trt.DataType.HALF: "float16",
        trt.DataType.INT8: "int8",
        trt.DataType.UINT8: "uint8",
        trt.DataType.INT32: "int32",
        trt.DataType.INT64: "int64",
        trt.DataType.BOOL: "bool",
    }
    try:
        return table[dtype]
    except KeyError:
        raise ExportError(f"engine I/O tensors of type {dtype.name} are not supported by the profiler") from None


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
        if int(workspace_bytes) < 1 << 20:
            raise ConfigError(f"workspace_bytes must be >= 1 MiB; got {workspace_bytes}")
        if builder_optimization_level is not None and not 0 <= int(builder_optimization_level) <= 5:
            raise ConfigError(f"builder_optimization_level must be in [0, 5] or None; got {builder_optimization_level}")
        self.device_index = device
        self.workspace_bytes = int(workspace_bytes)
        self.builder_optimization_level = builder_optimization_level

    import_tensorrt = staticmethod(import_tensorrt)

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
        """Build a serialized engine for `onnx_path` (dynamic input dimensions fixed to `input_shape`).

        Raises:
            ExportError: TensorRT cannot parse the graph or build the engine.
            ConfigError: a dynamic input without `input_shape`, or an unknown precision.
        """
        import_tensorrt()
        import tensorrt as trt

        if precision not in self.precisions:
            raise ConfigError(f"precision must be one of {self.precisions}; got {precision!r}")
        driver().make_current(self.device_index)
        logger = _trt_logger()
        builder = trt.Builder(logger)
        # the precision lives in the graph's types (see the module docstring): always strongly typed
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(os.fspath(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors or 'no error recorded'}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        if self.builder_optimization_level is not None:
            config.builder_optimization_level = int(self.builder_optimization_level)
        if precision == "fp32":
            config.clear_flag(trt.BuilderFlag.TF32)  # TensorRT enables TF32 by default: fp32 must mean fp32
        profile = builder.create_optimization_profile()
        dynamic = False
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            dims = _dims(tensor.shape)
            if all(d > 0 for d in dims):
                continue
            if input_shape is None or len(input_shape) != len(dims) or i > 0:
                raise ConfigError(f"{onnx_path}: input {tensor.name} has dynamic dimensions {dims}; pass input_shape")
            fixed = trt.Dims([int(s) for s in input_shape])
            profile.set_shape(tensor.name, fixed, fixed, fixed)
            dynamic = True
        if dynamic:
            config.add_optimization_profile(profile)
        start = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ExportError(
                f"TensorRT {trt.__version__} could not build a {precision} engine from {onnx_path}; "
                "see the TensorRT messages in the log (logger hwdsa.profilers.tensorrt)"
            )
        _log.debug("built %s engine for %s in %.2f s", precision, onnx_path, time.perf_counter() - start)
        return bytes(memoryview(serialized))

    # ------------------------------------------------------------------ running
    @override
    @contextlib.contextmanager
    def onnx_session(
        self, onnx_path: Path, *, precision: str, input_shape: Sequence[int] | None = None
    ) -> Iterator[Session]:
        import_tensorrt()
        import numpy as np
        import tensorrt as trt

        data = self.engine_from_onnx(onnx_path, precision=precision, input_shape=input_shape)
        drv = driver()
        drv.make_current(self.device_index)
        runtime = trt.Runtime(_trt_logger())
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise ExportError(f"TensorRT could not deserialize the engine built from {onnx_path}")
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
                shape = _dims(engine.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    if input_shape is None or i > 0:
                        raise ConfigError(f"{onnx_path}: input {name} has dynamic shape {shape}; pass input_shape")
                    shape = tuple(int(s) for s in input_shape)
                    if not context.set_input_shape(name, shape):
                        raise ConfigError(f"{onnx_path}: input {name} cannot take shape {shape}")
                host = np.ascontiguousarray(rng.standard_normal(shape).astype(_numpy_dtype(engine.get_tensor_dtype(name))))
                ptr = drv.mem_alloc(host.nbytes)
                buffers.append(ptr)
                drv.memcpy_htod(ptr, int(host.ctypes.data), host.nbytes)
                context.set_tensor_address(name, ptr)
            for name in names:
                if name in inputs:
                    continue
                shape = _dims(context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise ExportError(f"{onnx_path}: output {name} has a data-dependent shape {shape}")
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


__all__ = ["DEFAULT_WORKSPACE_BYTES", "INSTALL_HINT", "TensorRTBackend", "import_tensorrt"]
