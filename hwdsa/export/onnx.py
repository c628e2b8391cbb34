"""ONNX from a PyTorch module: exported in eval mode with a dynamic batch axis, simplified, checked, atomic.

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
import hashlib
import importlib.util
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from hwdsa._io import atomic_path
from hwdsa._version import __version__
from hwdsa.errors import BackendUnavailableError, ConfigError, ExportError

_log = logging.getLogger(__name__)

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


def sha256_file(path: str | os.PathLike[str], *, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (read in chunks, so large engines do not sit in memory twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def onnx_op_types(path: str | os.PathLike[str]) -> set[str]:
    """The operator types in an ONNX file's main graph (weights are not loaded)."""
    proto = onnx.load(os.fspath(path), load_external_data=False)
    return {node.op_type for node in proto.graph.node}


def is_qdq_onnx(path: str | os.PathLike[str]) -> bool:
    """Whether the ONNX graph is explicitly quantised (has QuantizeLinear/DequantizeLinear nodes)."""
    return bool(onnx_op_types(path) & QDQ_OPS)


def onnx_precision(path: str | os.PathLike[str]) -> str:
    """The precision a graph carries in its types: "int8" (Q/DQ nodes), "fp16" (FP16 weights or casts to
    FP16, as `fp16_onnx_from_onnx` makes), else "fp32".

    A strongly typed TensorRT network computes in exactly these types, so this is what an engine built
    from the file runs at.
    """
    proto = onnx.load(os.fspath(path), load_external_data=False)
    graph = proto.graph
    if {node.op_type for node in graph.node} & QDQ_OPS:
        return "int8"
    half = onnx.TensorProto.FLOAT16
    if any(init.data_type == half for init in graph.initializer):
        return "fp16"
    for node in graph.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i == half for a in node.attribute):
            return "fp16"
    return "fp32"


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
        >>> from hwdsa.export import onnx_from_module
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
