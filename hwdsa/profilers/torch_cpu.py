"""PyTorch eager on the CPU: the layer as an eval-mode module under `inference_mode`, a fixed thread count.

torch is imported inside the methods, so listing backends (and the edge agent) never loads it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

from hwdsa.errors import BackendUnavailableError, ConfigError

from ._compat import override
from .backend import Backend, CallableSession, Session, check_threads
from .base import LayerSpec


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[int]:
    """Set torch's intra-op thread count for the block (a process-wide setting) and restore it."""
    import torch

    before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


class TorchCpuBackend(Backend):
    """PyTorch eager mode on the CPU, fp32.

    Args:
        num_threads: intra-op threads while measuring (None: torch's current setting, recorded in
            `options()`). Latency on a CPU depends strongly on it: profile with the count you deploy with.
    """

    name = "torch_cpu"
    description = "PyTorch eager on the CPU (fp32)"
    install_hint = "pip install torch"
    precisions = ("fp32",)

    def __init__(self, *, num_threads: int | None = None) -> None:
        self.num_threads = check_threads(num_threads)

    @override
    @classmethod
    def check_available(cls) -> None:
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailableError(f"PyTorch is not installed ({exc}): {cls.install_hint}") from exc
        del torch

    @override
    def options(self) -> dict[str, Any]:
        import torch

        return {"num_threads": self.num_threads if self.num_threads is not None else torch.get_num_threads()}

    @override
    def versions(self) -> dict[str, str]:
        import torch

        return {**super().versions(), "torch": str(torch.__version__)}

    @override
    @contextlib.contextmanager
    def session(self, spec: LayerSpec) -> Iterator[Session]:
        import torch

        from .layers import input_from_spec, module_from_spec

        self.check_spec(spec)
        module = module_from_spec(spec)
        x = input_from_spec(spec)
        with _torch_threads(self.num_threads), torch.inference_mode():
            yield CallableSession(lambda: module(x))

    @override
    @contextlib.contextmanager
    def network_session(
        self, model: object, input_shape: Sequence[int], *, precision: str = "fp32"
    ) -> Iterator[Session]:
        import torch

        if not isinstance(model, torch.nn.Module):
            raise ConfigError(
                f"backend {self.name!r} times torch.nn.Module networks; got {type(model).__name__} "
                "(time an ONNX file with the 'onnxruntime' or 'tensorrt' backend)"
            )
        net = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
        x = torch.randn(tuple(input_shape), generator=torch.Generator().manual_seed(0))
        with _torch_threads(self.num_threads), torch.inference_mode():
            yield CallableSession(lambda: net(x))
