"""ONNX Runtime backends: one per execution provider (CPU, CUDA, TensorRT), each a separate table identity.

The layer's ONNX file comes from a bundle (on a board: stdlib + numpy + onnxruntime only) or is
exported on the host with torch. Each provider is its own registered backend because a table measured
through one provider says nothing about another; and a session that silently fell back to the CPU
(which ONNX Runtime does when a GPU provider cannot load) is refused, not timed.

Inputs are bound once with `io_binding` (on the device for the GPU providers), so a timed run is the
graph's execution, not a host-to-device copy. `InferenceSession.run` returns only when the work has
finished (ONNX Runtime synchronises its providers at the end of a run), so wall-clock timing is right.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import statistics
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from hwdsa.errors import BackendUnavailableError, ConfigError, ExportError

from ._compat import override
from .backend import OnnxBackend, Session, check_threads
from .base import LayerSpec, Measurement, TimingProtocol
from .specs import input_shape as spec_input_shape
from .specs import spec_label

_log = logging.getLogger(__name__)

# ONNX element type names (as InferenceSession reports them) → numpy dtype names.
_NUMPY_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}
_INSTALL = "pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA and TensorRT providers)"
# Session graph-optimisation levels by name. "all" (ONNX Runtime's default) adds the CPU provider's NCHWc
# layout transformer, which keeps activations blocked across consecutive convolutions when channel counts
# allow it: a layer timed alone then pays reorders a network pays once, so per-layer times stop adding up.
# "extended" stops before it (Conv+BN folding and Conv+activation fusion still happen).
OPT_LEVELS = ("disabled", "basic", "extended", "all")
# What a layer timing does with the NCHWc layout reorders around an isolated layer (see `_OrtBackend.measure`).
BOUNDARY_REORDERS = ("subtract", "keep")
_REORDER_OPS = frozenset({"ReorderInput", "ReorderOutput"})


def nchwc_block_size() -> int:
    """Channels per block of ONNX Runtime's NCHWc CPU kernels on this machine (its MLAS library).

    16 where the CPU (and OS) run AVX-512, 8 on other x86-64 (AVX2), 1 elsewhere (no NCHWc
    transformer). Read from numpy's runtime CPU-feature detection, which the board has too.
    """
    import importlib
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return 1
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):  # numpy >= 2, numpy < 2
        try:
            features: dict[str, bool] = importlib.import_module(module).__cpu_features__
        except (ImportError, AttributeError):
            continue
        return 16 if features.get("AVX512F") else 8
    return 16  # unknown: multiples of 16 are aligned for AVX2 and AVX-512 alike


def import_onnxruntime() -> Any:
    """The `onnxruntime` module; BackendUnavailableError, with the command that installs it, when it is missing."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(f"ONNX Runtime is not installed ({exc}): {_INSTALL}") from exc
    return onnxruntime


class _OrtSession(Session):
    def __init__(self, session: Any, binding: Any, keep_alive: list[Any]) -> None:
        self._session = session
        self._binding = binding
        self._keep_alive = keep_alive  # the bound input arrays / OrtValues must outlive the binding

    @override
    def run_once(self) -> None:
        self._session.run_with_iobinding(self._binding)

    def end_profiling(self) -> str:
        """Stop ONNX Runtime's profiler (a session made with a profile prefix) and return its JSON file."""
        return str(self._session.end_profiling())


class _OrtBackend(OnnxBackend):
    """Common code of the ONNX Runtime backends; subclasses name their provider (`provider`, and the
    `Backend.onnxruntime_provider` trait with the same value, by which `hwdsa export` finds them)."""

    provider: ClassVar[str] = "CPUExecutionProvider"
    precisions = ("fp32", "fp16", "int8")

    def __init__(
        self,
        *,
        num_threads: int | None = None,
        device: int = 0,
        provider_options: Mapping[str, Any] | None = None,
        onnx_files: Mapping[LayerSpec, str | os.PathLike[str]] | None = None,
        graph_optimization_level: str = "all",
        boundary_reorders: str = "subtract",
    ) -> None:
        super().__init__(onnx_files=onnx_files)
        if graph_optimization_level not in OPT_LEVELS:
            raise ConfigError(f"graph_optimization_level must be one of {OPT_LEVELS}; got {graph_optimization_level!r}")
        if boundary_reorders not in BOUNDARY_REORDERS:
            raise ConfigError(f"boundary_reorders must be one of {BOUNDARY_REORDERS}; got {boundary_reorders!r}")
        self.graph_optimization_level = graph_optimization_level
        self.boundary_reorders = boundary_reorders
        self.num_threads = check_threads(num_threads)
        if isinstance(device, bool) or not isinstance(device, int) or device < 0:
            raise ConfigError(f"device must be a device index >= 0; got {device!r}")
        self.device_index = device
        self.provider_options = dict(provider_options or {})

    @override
    @classmethod
    def check_available(cls) -> None:
        ort = import_onnxruntime()
        listed = list(ort.get_available_providers())
        if cls.provider not in listed:
            raise BackendUnavailableError(
                f"this ONNX Runtime {ort.__version__} build has no {cls.provider} (it has {', '.join(listed)}): {_INSTALL}"
            )
        cls._check_hardware()

    @classmethod
    def _check_hardware(cls) -> None:
        """GPU providers: the provider is compiled in, but is there a device (and TensorRT)?"""

    @override
    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"provider": self.provider, "num_threads": self.num_threads or 0}
        if self.provider != "CPUExecutionProvider":
            opts["device"] = self.device_index
        if self.provider_options:
            opts["provider_options"] = dict(self.provider_options)
        if self.graph_optimization_level != "all":  # the default stays out, so older tables keep their identity
            opts["graph_optimization_level"] = self.graph_optimization_level
        if self._subtracts_reorders:
            opts["boundary_reorders"] = self.boundary_reorders
        return opts

    @property
    def _subtracts_reorders(self) -> bool:
        """Whether layer timings drop the NCHWc layout reorders at the isolated layer's graph boundary."""
        return (
            self.boundary_reorders == "subtract"
            and self.provider == "CPUExecutionProvider"
            and self.graph_optimization_level == "all"
        )

    @override
    def measure(self, spec: LayerSpec, protocol: TimingProtocol | None = None) -> Measurement:
        """The layer's wall-clock latency, less the layout reorders its isolation adds (CPU provider, level "all").

        ONNX Runtime's NCHWc transformer wraps a convolution timed alone in a ReorderInput (NCHW →
        blocked) and a ReorderOutput (back); inside a network whose counts are on the channel lattice,
        consecutive convolutions stay blocked and pay neither (one ReorderOutput before the classifier
        remains, a fixed cost). Their share is read from ONNX Runtime's own profiler in a pass right
        after the timing and subtracted, so per-layer times add up to the network's.
        """
        if not self._subtracts_reorders:
            return super().measure(spec, protocol)
        self.check_spec(spec)
        with self.onnx_file(spec) as path:
            shape = spec_input_shape(spec)
            with self.onnx_session(path, precision=spec.precision, input_shape=shape) as session:
                m = self.time_session(session, protocol)
            reorder_ms = self.boundary_reorder_ms(path, precision=spec.precision, input_shape=shape)
        if reorder_ms <= 0.0:
            return m
        if reorder_ms >= 0.9 * m.min_ms:  # the two passes saw different machine states; keep the timing
            _log.debug(
                "%s: layout reorders (%.4g ms) take nearly all of the fastest run (%.4g ms); not subtracted",
                spec_label(spec), reorder_ms, m.min_ms,
            )  # fmt: skip
            self.note("layout reorders took nearly all of the layer's fastest run, so they were not subtracted")
            return m
        return dataclasses.replace(
            m,
            median_ms=m.median_ms - reorder_ms,
            q1_ms=m.q1_ms - reorder_ms,
            q3_ms=m.q3_ms - reorder_ms,
            min_ms=m.min_ms - reorder_ms,
        )

    def boundary_reorder_ms(
        self, onnx_path: Path, *, precision: str, input_shape: Sequence[int] | None = None, runs: int = 100
    ) -> float:
        """Median time (ms) per run of the graph's NCHWc ReorderInput/ReorderOutput nodes, by ONNX Runtime's profiler.

        In a one-layer graph every reorder sits at the graph boundary. The profiler's node timings are
        whole microseconds; the median over `runs` runs of each reorder node is summed.
        """
        import json
        import tempfile

        with tempfile.TemporaryDirectory(prefix="hwdsa-ortprof-") as tmp:
            prefix = str(Path(tmp) / "profile")
            with self.onnx_session(onnx_path, precision=precision, input_shape=input_shape, profile_prefix=prefix) as s:
                assert isinstance(s, _OrtSession)
                for _ in range(runs + 10):
                    s.run_once()
                profile = Path(s.end_profiling())
            events = json.loads(profile.read_text(encoding="utf-8"))
        per_node: dict[str, list[float]] = {}
        for e in events:
            if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
                continue
            if (e.get("args") or {}).get("op_name") in _REORDER_OPS:
                per_node.setdefault(str(e["name"]), []).append(float(e["dur"]))
        total_us = sum(statistics.median(d[-runs:]) for d in per_node.values())
        return total_us / 1000.0

    @property
    @override
    def channel_multiple(self) -> int:
        # The CPU provider's NCHWc kernels (optimisation level "all", x86-64 only) need input counts that
        # are multiples of 4: off that, a convolution falls back to the plain NCHW kernel (about 2x slower
        # here) with layout reorders around it. Multiples of 8 are the table grid's step and aligned for
        # AVX2 blocks; AVX-512 blocks of 16 pad a count of 8 mod 16 in some layers, which the table sees
        # in part (see benchmarks/results/latency_prediction.md). The GPU providers' tensor cores want 8.
        if self.provider == "CPUExecutionProvider":
            return 8 if self.graph_optimization_level == "all" and nchwc_block_size() > 1 else 1
        return 8

    @override
    def versions(self) -> dict[str, str]:
        import numpy

        return {**super().versions(), "onnxruntime": str(import_onnxruntime().__version__), "numpy": str(numpy.__version__)}

    def _providers(self, precision: str) -> list[Any]:
        """The `providers` argument of the session; the CPU provider closes the list so that ONNX
        Runtime can load at all, and the fallback check in `onnx_session` refuses sessions that used it."""
        if self.provider == "CPUExecutionProvider":
            return [(self.provider, dict(self.provider_options))]
        options = {"device_id": self.device_index, **self.provider_options}
        return [(self.provider, options), "CPUExecutionProvider"]

    @override
    @contextlib.contextmanager
    def onnx_session(
        self,
        onnx_path: Path,
        *,
        precision: str,
        input_shape: Sequence[int] | None = None,
        profile_prefix: str | None = None,
    ) -> Iterator[Session]:
        """A bound session on `onnx_path`; `profile_prefix` turns on ONNX Runtime's profiler (`end_profiling`)."""
        import numpy as np

        ort = import_onnxruntime()
        so = ort.SessionOptions()
        if profile_prefix is not None:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        so.intra_op_num_threads = self.num_threads or 0  # 0: ONNX Runtime's default (one per physical core)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = {
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.graph_optimization_level]
        so.log_severity_level = 3  # errors only: a GPU build otherwise warns about every unused provider
        try:
            session = ort.InferenceSession(os.fspath(onnx_path), sess_options=so, providers=self._providers(precision))
        except Exception as exc:  # ORT raises its own types (Fail, InvalidGraph, NotImplemented, ...)
            hint = ""
            if precision == "fp16" and self.provider == "CPUExecutionProvider":
                hint = " (ONNX Runtime's CPU provider lacks fp16 kernels for many ops on x86: profile fp32 here)"
            raise ExportError(
                f"ONNX Runtime cannot load {onnx_path} with {self.provider}: {type(exc).__name__}: {exc}{hint}"
            ) from exc
        used = list(session.get_providers())
        if not used or used[0] != self.provider:
            raise BackendUnavailableError(
                f"ONNX Runtime fell back from {self.provider} to {used[0] if used else 'nothing'} for {onnx_path}; "
                "the provider's libraries or device are missing: timings would describe the wrong device"
            )
        on_device = self.provider != "CPUExecutionProvider"
        binding = session.io_binding()
        keep_alive: list[Any] = []
        rng = np.random.default_rng(0)
        inputs = session.get_inputs()
        for i, arg in enumerate(inputs):
            shape = _static_shape(arg.name, list(arg.shape), input_shape if i == 0 else None, onnx_path)
            dtype = _NUMPY_TYPES.get(arg.type)
            if dtype is None:
                raise ConfigError(f"{onnx_path}: input {arg.name} has type {arg.type}, which the profiler cannot feed")
            array = np.ascontiguousarray(rng.standard_normal(shape).astype(dtype))
            if on_device:
                value = ort.OrtValue.ortvalue_from_numpy(array, "cuda", self.device_index)
                binding.bind_ortvalue_input(arg.name, value)
                keep_alive.append(value)
            else:
                binding.bind_cpu_input(arg.name, array)
                keep_alive.append(array)
        for out in session.get_outputs():
            if on_device:
                binding.bind_output(out.name, "cuda", self.device_index)
            else:
                binding.bind_output(out.name)
        try:
            session.run_with_iobinding(binding)  # one run outside the protocol: fails early, loads kernels
        except Exception as exc:
            raise ExportError(f"ONNX Runtime failed to run {onnx_path} on {self.provider}: {type(exc).__name__}: {exc}") from exc
        yield _OrtSession(session, binding, keep_alive)


def _static_shape(
    name: str, dims: list[Any], fallback: Sequence[int] | None, path: Path
) -> tuple[int, ...]:
    if all(isinstance(d, int) and d > 0 for d in dims):
        return tuple(int(d) for d in dims)
    if fallback is not None and len(fallback) == len(dims):
        return tuple(int(s) for s in fallback)
    raise ConfigError(
        f"{path}: input {name} has dynamic dimensions {dims}; pass input_shape with {len(dims)} dimensions"
    )


class OrtCpuBackend(_OrtBackend):
    """ONNX Runtime on the CPU. `num_threads` sets `intra_op_num_threads` (None: ONNX Runtime's default)."""

    name = "onnxruntime"
    description = "ONNX Runtime, CPU execution provider"
    install_hint = _INSTALL
    provider = onnxruntime_provider = "CPUExecutionProvider"


class OrtCudaBackend(_OrtBackend):
    """ONNX Runtime's CUDA execution provider on device `device`."""

    name = "onnxruntime_cuda"
    description = "ONNX Runtime, CUDA execution provider"
    install_hint = "pip install onnxruntime-gpu on a machine with an NVIDIA GPU and driver"
    provider = onnxruntime_provider = "CUDAExecutionProvider"
    stepped_latency = True  # GPU kernels tile channels (the TensorRT provider inherits it)

    @override
    @classmethod
    def _check_hardware(cls) -> None:
        from ._cuda import cuda_error_or_none

        reason = cuda_error_or_none()
        if reason is not None:
            raise BackendUnavailableError(f"{cls.provider} needs an NVIDIA GPU: {reason}")

    @override
    def device_description(self) -> str:
        from .device import cuda_description

        return cuda_description(self.device_index)

    @override
    def versions(self) -> dict[str, str]:
        from ._cuda import driver

        return {**super().versions(), "cuda_driver": driver().driver_version()}


class OrtTensorrtBackend(OrtCudaBackend):
    """ONNX Runtime's TensorRT execution provider (builds a TensorRT engine per graph inside ONNX Runtime)."""

    name = "onnxruntime_tensorrt"
    description = "ONNX Runtime, TensorRT execution provider"
    install_hint = "pip install onnxruntime-gpu 'tensorrt>=10' on a machine with an NVIDIA GPU and driver"
    provider = onnxruntime_provider = "TensorrtExecutionProvider"

    @override
    @classmethod
    def _check_hardware(cls) -> None:
        super()._check_hardware()
        from .tensorrt import TensorRTBackend

        TensorRTBackend.import_tensorrt()

    @override
    def _providers(self, precision: str) -> list[Any]:
        options: dict[str, Any] = {"device_id": self.device_index}
        # The provider builds weakly typed engines: fp16 and int8 (Q/DQ graphs) kernels must be allowed
        # explicitly, else TensorRT may run the fp16 graph's layers in fp32.
        if precision == "fp16":
            options["trt_fp16_enable"] = True
        elif precision == "int8":
            options["trt_int8_enable"] = True
        options.update(self.provider_options)
        return [(self.provider, options), "CPUExecutionProvider"]


__all__ = ["OrtCpuBackend", "OrtCudaBackend", "OrtTensorrtBackend", "nchwc_block_size"]
