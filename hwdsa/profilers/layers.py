"""LayerSpec → torch module, input tensor and tiny ONNX file (host side: this module imports torch).

The module is the layer as a deployed engine runs it: a convolution with its BatchNorm folded in (so a
Conv2d with a bias) followed by its activation, or a Linear layer; in eval mode, with fixed weights
from a fixed seed (latency does not depend on the values, but reproducible files are easier to trust).

This module also owns the two graph builders a layer file and a deployed network share, so that a
table's layers are made exactly as the shipped network is: `onnx_from_module` (ONNX from a PyTorch
module) and `qdq_graph` (ONNX Runtime's static quantiser with the Q/DQ options TensorRT builds as
INT8). `hwdsa.export` re-exports and wraps them (`hwdsa.export.onnx`, `hwdsa.export.quantize`): the
dependency runs export -> profilers, never back.

Exporter choice: torch >= 2.9 defaults to the `torch.export`-based ("dynamo") exporter, which needs the
`onnxscript` package (not a dependency of hwdsa, and absent here). For the plain feed-forward CNNs hwdsa
prunes, the TorchScript-based exporter (`dynamo=False`) is the mature path: it constant-folds BatchNorm,
names inputs and outputs as asked and takes `dynamic_axes`. It warns that it is deprecated; hwdsa keeps
that warning out of the user's log and lets a caller opt in to the dynamo exporter with `dynamo=True`.

Opset 17 (the default) is read by every consumer hwdsa targets: TensorRT >= 8.6's ONNX parser, ONNX
Runtime, and ONNX Runtime's quantiser (per-channel Q/DQ needs >= 13); it is also the first opset with a
native LayerNormalization. The TorchScript exporter stops at opset 20.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from hwdsa._io import atomic_path
from hwdsa._version import __version__
from hwdsa.errors import BackendUnavailableError, ConfigError, ExportError

from .base import LayerSpec
from .specs import input_shape as spec_input_shape

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
    return torch.randn(spec_input_shape(spec), generator=gen).to(device=device, dtype=dtype)


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
        from onnxruntime.transformers.float16 import convert_float_to_float16

        # keep_io_types=False: the graph takes and returns fp16, as a layer inside an fp16 network does;
        # fp32 inputs would add Cast nodes whose cost a whole network pays once, not once per layer.
        half = convert_float_to_float16(onnx.load(os.fspath(path)), keep_io_types=False)
        onnx.checker.check_model(half)
        with atomic_path(path) as tmp:
            onnx.save(half, os.fspath(tmp))
        return
    if precision == "int8":
        # Random calibration data: the scales it gives fit no real input, but latency does not depend on
        # scale values, only on the Q/DQ structure TensorRT and ONNX Runtime fuse into INT8 kernels.
        rng = np.random.default_rng(_SEED)
        data = [rng.standard_normal(tuple(sample_shape)).astype(np.float32) for _ in range(4)]  # static batch
        qdq = qdq_graph(path, path.with_name(path.stem + ".qdq.onnx"), data, input_name=INPUT_NAME, method="minmax")
        os.replace(qdq, path)
        return
    raise ConfigError(f"unknown precision {precision!r}")


def onnx_from_spec(spec: LayerSpec, path: str | os.PathLike[str], *, opset: int | None = None) -> Path:
    """Export the layer of `spec` to an ONNX file with a fixed input shape, at the spec's precision.

    fp32: the exported graph; fp16: the graph converted to fp16 with fp16 input and output; int8: an
    explicit Q/DQ graph (fp32 input and output), which TensorRT builds as INT8 and ONNX Runtime runs
    with INT8 kernels. Written atomically.
    """
    target = Path(path)
    shape = spec_input_shape(spec)
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


# --------------------------------------------------------------------------------------------------
# ONNX from a PyTorch module (also `hwdsa.export.onnx_from_module`)
# --------------------------------------------------------------------------------------------------

DEFAULT_OPSET = 17
MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (INT8) needs opset 13
MAX_OPSET = 20  # the TorchScript-based exporter's limit
INPUT_NAME = "input"
OUTPUT_NAME = "output"
BATCH_DIM = "batch"
#: Operators that mark an ONNX graph as explicitly quantised (TensorRT then builds INT8 from it).
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def short_cause(exc: BaseException, limit: int = 400) -> str:
    """`Type: first line of the message`, cut to `limit` characters (exporter errors can dump whole graphs)."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def model_name(model: object) -> str:
    """A short name for messages and reports: the model's class name."""
    return type(model).__name__


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """Validate an input shape (batch first) and return it as a tuple of ints."""
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ConfigError(f"input_shape must be a sequence of ints (batch first); got {input_shape!r}") from None
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ConfigError(
            f"input_shape must have a batch dimension and at least one more, all >= 1; got {shape} "
            "(e.g. (1, 3, 224, 224))"
        )
    return shape


def onnx_op_types(path: str | os.PathLike[str]) -> set[str]:
    """The operator types in an ONNX file's main graph (weights are not loaded)."""
    proto = onnx.load(os.fspath(path), load_external_data=False)
    return {node.op_type for node in proto.graph.node}


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put the model in eval mode and restore its training flags afterwards, module by module."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _model_device(model: nn.Module) -> torch.device:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


def _count_outputs(model: nn.Module, sample: torch.Tensor, name: str) -> int:
    """Run the model once: a forward that fails here would fail inside the exporter less readably."""
    try:
        with torch.no_grad():
            out = model(sample)
    except Exception as exc:  # any failure of user code becomes one clear ExportError
        raise ExportError(
            f"cannot export {name}: its forward pass failed on an input of shape {tuple(sample.shape)}: "
            f"{short_cause(exc)}. Check input_shape."
        ) from exc
    if isinstance(out, torch.Tensor):
        return 1
    if isinstance(out, (tuple, list)) and out and all(isinstance(o, torch.Tensor) for o in out):
        return len(out)
    raise ExportError(
        f"cannot export {name}: its forward returns {type(out).__name__}; ONNX export needs a tensor "
        "or a tuple of tensors"
    )


def output_names(n_outputs: int) -> list[str]:
    """ONNX output names: `output` for one output, `output_0`, `output_1`, ... for several."""
    return [OUTPUT_NAME] if n_outputs == 1 else [f"{OUTPUT_NAME}_{i}" for i in range(n_outputs)]


def _export(
    model: nn.Module,
    sample: torch.Tensor,
    path: Path,
    *,
    opset: int,
    outputs: list[str],
    dynamic_batch: bool,
    dynamo: bool,
) -> None:
    if dynamo:
        if importlib.util.find_spec("onnxscript") is None:
            raise BackendUnavailableError(
                "the dynamo ONNX exporter needs the `onnxscript` package: `pip install onnxscript`, "
                "or export with dynamo=False"
            )
        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(
            model,
            (sample,),
            os.fspath(path),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_shapes=({0: batch},) if dynamic_batch else None,
            external_data=False,
        )
        return
    dynamic_axes = {name: {0: BATCH_DIM} for name in [INPUT_NAME, *outputs]} if dynamic_batch else None
    with warnings.catch_warnings():
        # "You are using the legacy TorchScript-based ONNX export": a deliberate choice, see the module doc.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
        warnings.filterwarnings("ignore", message=r".*TorchScript-based ONNX export.*")
        torch.onnx.export(
            model,
            (sample,),
            os.fspath(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )


def _simplify(proto: onnx.ModelProto, name: str) -> onnx.ModelProto:
    import onnxslim

    try:
        slim = onnxslim.slim(proto)
    except Exception as exc:  # onnxslim is an optimisation: an unsimplified graph is still correct
        _log.warning("onnxslim could not simplify %s (%s: %s); keeping the exported graph", name, type(exc).__name__, exc)
        return proto
    if not isinstance(slim, onnx.ModelProto):
        _log.warning("onnxslim returned %s for %s; keeping the exported graph", type(slim).__name__, name)
        return proto
    return slim


def onnx_from_module(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_shape: Sequence[int],
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    simplify: bool = True,
    dynamo: bool = False,
) -> Path:
    """Export `model` (in eval mode) to an ONNX file with one input `input` and output(s) `output`.

    The graph is simplified with onnxslim, checked with `onnx.checker` (full check, with shape inference)
    and written atomically: when anything fails, no file is left at `path`. The model's training flags
    are restored afterwards.

    Args:
        model: the network; it is traced with a random input of `input_shape` on its own device.
        path: where the .onnx file goes.
        input_shape: the input's shape, batch first, e.g. (1, 3, 224, 224).
        opset: ONNX opset, in [13, 20]; 17 by default (see the module docstring).
        dynamic_batch: make dimension 0 of the input and outputs symbolic ("batch").
        simplify: run onnxslim (constant folding, redundant-node removal).
        dynamo: use the `torch.export`-based exporter (needs `onnxscript`) instead of the TorchScript one.

    Returns:
        The path written.

    Raises:
        ExportError: `model` is not an nn.Module, its forward fails, or the exporter or checker fails.
        ConfigError: `input_shape` or `opset` is out of range.

    Example:
        >>> import tempfile, torch
        >>> from hwdsa.profilers.layers import onnx_from_module
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
        >>> with tempfile.TemporaryDirectory() as d:
        ...     onnx_from_module(net, f"{d}/net.onnx", input_shape=(1, 3, 16, 16)).name
        'net.onnx'
    """
    name = model_name(model)
    if not isinstance(model, nn.Module):
        raise ExportError(
            f"cannot export {name}: onnx_from_module needs a torch.nn.Module; got {type(model).__module__}.{name}"
        )
    shape = check_input_shape(input_shape)
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise ConfigError(f"opset must be in [{MIN_OPSET}, {MAX_OPSET}]; got {opset} (default {DEFAULT_OPSET})")
    target = Path(path)
    with _eval_mode(model):
        sample = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(_model_device(model))
        outputs = output_names(_count_outputs(model, sample, name))
        with atomic_path(target) as tmp:
            try:
                _export(model, sample, tmp, opset=int(opset), outputs=outputs, dynamic_batch=dynamic_batch, dynamo=dynamo)
            except BackendUnavailableError:
                raise
            except Exception as exc:  # exporter failures come in many types; report them as one
                raise ExportError(
                    f"cannot export {name} to ONNX (opset {opset}): {short_cause(exc)}"
                ) from exc
            proto = onnx.load(os.fspath(tmp))
            if simplify:
                proto = _simplify(proto, name)
            onnx.helper.set_model_props(
                proto, {"hwdsa_version": __version__, "source_model": name, "input_shape": str(list(shape))}
            )
            try:
                onnx.checker.check_model(proto, full_check=True)
            except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
                raise ExportError(f"the ONNX graph exported from {name} is invalid: {exc}") from exc
            onnx.save(proto, os.fspath(tmp))
    _log.info("exported %s to %s (opset %d, %d nodes)", name, target, opset, len(proto.graph.node))
    return target


# --------------------------------------------------------------------------------------------------
# INT8 Q/DQ graphs (also behind `hwdsa.export.qdq_onnx_from_onnx`)
# --------------------------------------------------------------------------------------------------


def _import_quantization() -> Any:
    try:
        from onnxruntime import quantization
    except ImportError as exc:
        raise BackendUnavailableError(
            f"INT8 quantisation needs onnxruntime (`pip install onnxruntime`): {exc}"
        ) from exc
    return quantization


def qdq_graph(
    source: str | os.PathLike[str],
    path: str | os.PathLike[str],
    batches: Sequence[np.ndarray],
    *,
    input_name: str = INPUT_NAME,
    method: str = "percentile",
    percentile: float = 99.99,
    per_channel: bool = True,
    reduce_range: bool = False,
) -> Path:
    """Write an INT8 Q/DQ copy of the FP32 graph `source`, calibrated on `batches` of its input `input_name`.

    The Q/DQ options are the ones TensorRT builds as explicit INT8 (see `hwdsa.export.quantize`):
    symmetric INT8 activations and weights, per-channel weight scales (`per_channel`), float biases,
    float weights followed by a Q/DQ pair. `method` is "percentile" (of |x|, `percentile`) or "minmax".
    The arguments are not checked here: `hwdsa.export.qdq_onnx_from_onnx` checks a caller's.

    Raises:
        ExportError: the quantiser failed, produced an invalid graph, or inserted no Q/DQ node.
        BackendUnavailableError: onnxruntime is not installed.
    """
    q = _import_quantization()
    src = Path(source)

    class _Reader:  # duck-typed: CalibrationDataReader's __subclasshook__ accepts any get_next()
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    extra_options: dict[str, Any] = {
        "ActivationSymmetric": True,  # zero point 0: TensorRT accepts nothing else
        "WeightSymmetric": True,
        "QuantizeBias": False,  # TensorRT's DequantizeLinear takes INT8/FP8/INT4, not the INT32 of a bias
        "AddQDQPairToWeight": True,  # float weights -> Q -> DQ: the pattern TensorRT folds in every 10.x
    }
    if method == "percentile":
        extra_options["CalibPercentile"] = float(percentile)
        extra_options["CalibTensorRangeSymmetric"] = True
    calibrate_method = q.CalibrationMethod.Percentile if method == "percentile" else q.CalibrationMethod.MinMax
    target = Path(path)
    n_samples = sum(int(b.shape[0]) for b in batches)
    with tempfile.TemporaryDirectory(prefix="hwdsa-qdq-") as tmpdir, atomic_path(target) as tmp:
        prepared = Path(tmpdir) / "prepared.onnx"
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(os.fspath(src), os.fspath(prepared))
        except Exception as exc:  # pre-processing only helps the quantiser; the raw graph still works
            _log.warning("ONNX Runtime's quantisation pre-processing failed (%s); quantising the graph as is", exc)
            prepared = src
        captured = io.StringIO()
        try:
            # ORT's calibrators print progress to stdout; a library keeps it in the log instead.
            with contextlib.redirect_stdout(captured):
                q.quantize_static(
                    os.fspath(prepared),
                    os.fspath(tmp),
                    _Reader(),
                    quant_format=q.QuantFormat.QDQ,
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    activation_type=q.QuantType.QInt8,
                    weight_type=q.QuantType.QInt8,
                    calibrate_method=calibrate_method,
                    extra_options=extra_options,
                )
        except Exception as exc:  # the quantiser raises many types; report them as one
            raise ExportError(f"INT8 quantisation of {src} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if captured.getvalue().strip():
                _log.debug("onnxruntime quantiser: %s", captured.getvalue().strip())
        quantised = onnx.load(os.fspath(tmp))
        try:
            onnx.checker.check_model(quantised, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise ExportError(f"the Q/DQ graph made from {src} is invalid: {exc}") from exc
    if not onnx_op_types(target) & QDQ_OPS:
        target.unlink()
        raise ExportError(f"quantising {src} inserted no Q/DQ node: the graph has no Conv/Gemm/MatMul to quantise")
    _log.info(
        "INT8 Q/DQ graph %s from %s (%s calibration on %d samples in %d batches%s)",
        target, src, method, n_samples, len(batches), ", 7-bit weights" if reduce_range else "",
    )
    return target


__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "QDQ_OPS",
    "check_input_shape",
    "input_from_spec",
    "model_name",
    "module_from_spec",
    "onnx_from_module",
    "onnx_from_network",
    "onnx_from_spec",
    "onnx_op_types",
    "output_names",
    "qdq_graph",
    "short_cause",
    "torch_dtype",
]
