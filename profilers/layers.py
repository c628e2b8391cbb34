"""LayerSpec → torch module, input tensor and tiny ONNX file (host side: this module imports torch).

The module is the layer as a deployed engine runs it: a convolution with its BatchNorm folded in (so a
Conv2d with a bias) followed by its activation, or a Linear layer; in eval mode, with fixed weights
from a fixed seed (latency does not depend on the values, but reproducible files are easier to trust).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hwdsa._io import atomic_path
from hwdsa.errors import ConfigError, ExportError

from .base import LayerSpec
from .specs import input_shape

_log = logging.getLogger(__name__)

_SEED = 0
_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def _activation(name: str) -> nn.Module | None:
    table: dict[str, type[nn.Module]] = {
        "relu": nn.ReLU,
        "relu6": nn.ReLU6,
        "hardswish": nn.Hardswish,
        "silu": nn.SiLU,
    }
    return table[name]() if name in table else None


def module_from_spec(spec: LayerSpec) -> nn.Module:
    """The layer of `spec` as an eval-mode fp32 module on the CPU (cast it for fp16 yourself)."""
    layer: nn.Module
    if spec.kind == "linear":
        layer = nn.Linear(spec.in_channels, spec.out_channels, bias=True)
    else:
        layer = nn.Conv2d(
            spec.in_channels,
            spec.out_channels,
            kernel_size=spec.kernel,
            stride=spec.stride,
            padding=spec.padding,
            groups=spec.groups,
            bias=True,  # the BatchNorm that follows in training is folded into this bias
        )
    gen = torch.Generator().manual_seed(_SEED)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    act = _activation(spec.activation)
    module = nn.Sequential(layer, act) if act is not None else nn.Sequential(layer)
    return module.eval()


def input_from_spec(
    spec: LayerSpec, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A fixed random input of the layer's input shape."""
    gen = torch.Generator().manual_seed(_SEED + 1)
    return torch.randn(input_shape(spec), generator=gen).to(device=device, dtype=dtype)


def torch_dtype(precision: str, backend: str) -> torch.dtype:
    """The torch dtype a torch backend runs `precision` in; int8 is not a torch-eager precision."""
    try:
        return _TORCH_DTYPES[precision]
    except KeyError:
        raise ConfigError(
            f"backend {backend!r} cannot run precision {precision!r} in PyTorch eager mode; "
            "profile int8 with the 'tensorrt' or 'onnxruntime' backends"
        ) from None


def _convert_precision(path: Path, precision: str, sample_shape: Sequence[int]) -> None:
    """Rewrite the fp32 graph at `path` in place for `precision` (fp16 graph, or int8 Q/DQ graph)."""
    if precision == "fp32":
        return
    if precision == "fp16":
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        # keep_io_types=False: the graph takes and returns fp16, as a layer inside an fp16 network does;
        # fp32 inputs would add Cast nodes whose cost a whole network pays once, not once per layer.
        half = convert_float_to_float16(onnx.load(os.fspath(path)), keep_io_types=False)
        onnx.checker.check_model(half)
        with atomic_path(path) as tmp:
            onnx.save(half, os.fspath(tmp))
        return
    if precision == "int8":
        from hwdsa.export.quantize import qdq_onnx_from_onnx

        # Random calibration data: the scales it gives fit no real input, but latency does not depend on
        # scale values, only on the Q/DQ structure TensorRT and ONNX Runtime fuse into INT8 kernels.
        rng = np.random.default_rng(_SEED)
        data = [rng.standard_normal(tuple(sample_shape)).astype(np.float32) for _ in range(4)]  # static batch
        qdq = qdq_onnx_from_onnx(path, path.with_name(path.stem + ".qdq.onnx"), calibration_data=data, method="minmax")
        os.replace(qdq, path)
        return
    raise ConfigError(f"unknown precision {precision!r}")


def onnx_from_spec(spec: LayerSpec, path: str | os.PathLike[str], *, opset: int | None = None) -> Path:
    """Export the layer of `spec` to an ONNX file with a fixed input shape, at the spec's precision.

    fp32: the exported graph; fp16: the graph converted to fp16 with fp16 input and output; int8: an
    explicit Q/DQ graph (fp32 input and output), which TensorRT builds as INT8 and ONNX Runtime runs
    with INT8 kernels. Written atomically.
    """
    from hwdsa.export.onnx import DEFAULT_OPSET, onnx_from_module

    target = Path(path)
    shape = input_shape(spec)
    onnx_from_module(
        module_from_spec(spec),
        target,
        input_shape=shape,
        opset=DEFAULT_OPSET if opset is None else opset,
        dynamic_batch=False,  # the spec fixes the batch; TensorRT then builds one static engine
        simplify=False,  # one node or two: nothing to simplify, and onnxslim costs time per layer
    )
    try:
        _convert_precision(target, spec.precision, shape)
    except (ConfigError, ExportError):
        target.unlink(missing_ok=True)
        raise
    except Exception as exc:  # converters raise assorted types; report them as one, leave no file
        target.unlink(missing_ok=True)
        raise ExportError(f"cannot convert the ONNX graph of {spec} to {spec.precision}: {type(exc).__name__}: {exc}") from exc
    return target


def onnx_from_network(
    model: object, path: str | os.PathLike[str], *, input_shape: Sequence[int], precision: str = "fp32"
) -> Path:
    """Export a whole network (an nn.Module) for end-to-end timing, at `precision` (see `onnx_from_spec`)."""
    from hwdsa.export.onnx import onnx_from_module

    if not isinstance(model, nn.Module):
        raise ConfigError(f"expected an nn.Module or an ONNX file path; got {type(model).__name__}")
    target = Path(path)
    shape = tuple(int(s) for s in input_shape)
    onnx_from_module(model, target, input_shape=shape, dynamic_batch=False)
    try:
        _convert_precision(target, precision, shape)
    except Exception:
        target.unlink(missing_ok=True)
        raise
    return target


__all__ = ["input_from_spec", "module_from_spec", "onnx_from_network", "onnx_from_spec", "torch_dtype"]
