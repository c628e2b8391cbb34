"""PyTorch on a CUDA GPU: the layer captured once in a CUDA graph and replayed, timed with CUDA events.

Why CUDA graphs: a small layer runs in microseconds on a GPU, less than the CPU needs to launch its
kernels from Python; replaying a captured graph removes that launch cost, which a deployed engine
(TensorRT) does not pay either. Where capture fails (an op that cannot be captured), the layer runs
eagerly and a warning says so.

Precision: "fp32" runs with TF32 disabled (so fp32 means fp32, as in the TensorRT backend), "fp16"
runs the module and input in half precision. cuDNN's autotuner (`cudnn.benchmark`) is on, as in a
deployment with fixed shapes. All three settings are restored after each session.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from hwdsa.errors import BackendUnavailableError, ConfigError

from ._compat import override
from .backend import Backend, Session
from .base import LayerSpec

if TYPE_CHECKING:
    import torch

_log = logging.getLogger(__name__)

_CAPTURE_WARMUP = 3  # eager runs on a side stream before capture (lazy init, cuDNN autotuning)


class CudaEventSession(Session):
    """Runs `fn` (a graph replay, an eager call, an engine's enqueue) on torch's current stream; CUDA events time it.

    `hwdsa.export.tensorrt.time_engine` times a deployed engine with it too.
    """

    has_device_timer = True

    def __init__(self, fn: Callable[[], object], device: torch.device) -> None:
        import torch

        self._fn = fn
        self._device = device
        self._start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        self._end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]

    @override
    def run_once(self) -> None:
        self._fn()

    @override
    def synchronize(self) -> None:
        import torch

        torch.cuda.synchronize(self._device)

    @override
    def device_sample(self, inner: int) -> float:
        self._start.record()
        for _ in range(inner):
            self._fn()
        self._end.record()
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end)) / inner


class TorchCudaBackend(Backend):
    """PyTorch on CUDA device `device`, fp32 or fp16, with CUDA graphs (`cuda_graphs=True`) and event timing.

    Args:
        device: CUDA device index.
        cuda_graphs: capture each layer once and replay it (falls back to eager where capture fails).
        cudnn_benchmark: let cuDNN pick the fastest algorithm for the fixed shape (as deployments do).
    """

    name = "torch_cuda"
    description = "PyTorch on a CUDA GPU with CUDA graphs and CUDA-event timing (fp32, fp16)"
    install_hint = "install a CUDA build of PyTorch (https://pytorch.org) on a machine with an NVIDIA GPU"
    precisions = ("fp32", "fp16")
    stepped_latency = True  # tensor-core tiles: a staircase in the channel count

    @property
    @override
    def channel_multiple(self) -> int:
        return 8  # tensor-core tiles

    def __init__(self, *, device: int = 0, cuda_graphs: bool = True, cudnn_benchmark: bool = True) -> None:
        if isinstance(device, bool) or not isinstance(device, int) or device < 0:
            raise ConfigError(f"device must be a CUDA device index >= 0; got {device!r}")
        self.device_index = device
        self.cuda_graphs = bool(cuda_graphs)
        self.cudnn_benchmark = bool(cudnn_benchmark)

    @override
    @classmethod
    def check_available(cls) -> None:
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailableError(f"PyTorch is not installed ({exc}): {cls.install_hint}") from exc
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"torch {torch.__version__} sees no CUDA device (torch.version.cuda={torch.version.cuda}): "
                f"{cls.install_hint}"
            )

    def _device(self) -> torch.device:
        import torch

        count = torch.cuda.device_count()
        if self.device_index >= count:
            raise ConfigError(f"CUDA device {self.device_index} does not exist; this machine has {count}")
        return torch.device("cuda", self.device_index)

    @override
    def options(self) -> dict[str, Any]:
        return {"device": self.device_index, "cuda_graphs": self.cuda_graphs, "cudnn_benchmark": self.cudnn_benchmark}

    @override
    def versions(self) -> dict[str, str]:
        import torch

        return {
            **super().versions(),
            "torch": str(torch.__version__),
            "cuda": str(torch.version.cuda),
            "cudnn": str(torch.backends.cudnn.version()),  # type: ignore[no-untyped-call]
        }

    @override
    def device_description(self) -> str:
        import torch

        device = self._device()
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"

    @contextlib.contextmanager
    def _settings(self, precision: str) -> Iterator[None]:
        import torch

        saved = (
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32,
        )
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        # fp32 means fp32: no TF32 rounding of convolution and matmul inputs (TensorRT backend: same).
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            with torch.cuda.device(self._device()), torch.inference_mode():
                yield
        finally:
            (
                torch.backends.cudnn.benchmark,
                torch.backends.cudnn.allow_tf32,
                torch.backends.cuda.matmul.allow_tf32,
            ) = saved

    def _prepare(self, module: torch.nn.Module, x: torch.Tensor, what: str) -> Callable[[], object]:
        """Warm up on a side stream, then capture one run in a CUDA graph; eager when capture fails."""
        import torch

        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(_CAPTURE_WARMUP):
                module(x)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        if not self.cuda_graphs:
            return lambda: module(x)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                module(x)
        except RuntimeError as exc:
            _log.warning("CUDA graph capture failed for %s (%s); timing it eagerly", what, exc)
            torch.cuda.synchronize()
            return lambda: module(x)
        return graph.replay

    @override
    @contextlib.contextmanager
    def session(self, spec: LayerSpec) -> Iterator[Session]:
        from .layers import input_from_spec, module_from_spec, torch_dtype
        from .specs import spec_label

        self.check_spec(spec)
        dtype = torch_dtype(spec.precision, self.name)
        with self._settings(spec.precision):
            device = self._device()
            module = module_from_spec(spec).to(device=device, dtype=dtype)
            x = input_from_spec(spec, device=device, dtype=dtype)
            yield CudaEventSession(self._prepare(module, x, spec_label(spec)), device)

    @override
    @contextlib.contextmanager
    def network_session(
        self, model: object, input_shape: Sequence[int], *, precision: str = "fp32"
    ) -> Iterator[Session]:
        import torch

        from .layers import torch_dtype

        if not isinstance(model, torch.nn.Module):
            raise ConfigError(
                f"backend {self.name!r} times torch.nn.Module networks; got {type(model).__name__} "
                "(time an ONNX file with the 'onnxruntime_cuda' or 'tensorrt' backend)"
            )
        dtype = torch_dtype(precision, self.name)
        with self._settings(precision):
            device = self._device()
            net = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
            x = torch.randn(tuple(input_shape), generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
            yield CudaEventSession(self._prepare(net, x, type(model).__name__), device)


__all__ = ["CudaEventSession", "TorchCudaBackend"]
