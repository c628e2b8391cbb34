"""Lower-precision ONNX graphs: INT8 with explicit Q/DQ nodes calibrated on real data, and FP16.

INT8 goes the explicit-quantisation way: TensorRT 10 deprecates its implicit calibrators
(`IInt8EntropyCalibrator2` & co.) in favour of QuantizeLinear/DequantizeLinear nodes in the ONNX graph.
`qdq_onnx_from_onnx` inserts them with ONNX Runtime's static quantiser, calibrated on the caller's
batches, in the form TensorRT builds as INT8 and ONNX Runtime runs on the CPU:

- activations: signed INT8, symmetric (zero point 0, which TensorRT requires), one scale per tensor from
  the calibration batches' max or a percentile of |x|;
- weights: signed INT8, symmetric, one scale per output channel (axis 0 of Conv and Gemm weights),
  stored as float weights followed by a Q/DQ pair (the pattern every TensorRT 10 release folds);
- biases stay float (TensorRT's DequantizeLinear does not take the INT32 that a quantised bias needs).

ONNX Runtime's CPU INT8 kernels on x86 without VNNI (AVX2-only machines) multiply pairs of 8-bit values
into 16-bit sums that saturate: a full-range 8-bit graph then loses accuracy badly on the CPU (measured
here: top-1 agreement 0.88 instead of 0.99 on a small digits CNN). ONNX Runtime's documented remedy is
`reduce_range` (7-bit weights), which `cpu_int8_needs_reduce_range()` says when to use. TensorRT
accumulates in INT32 and gets the full-range graph. To check what a Q/DQ graph computes independently
of any INT8 kernel, run it with `session_from_onnx(path, optimize=False)`: ONNX Runtime then executes
the Q/DQ nodes as written (float arithmetic on quantised values: the graph's exact semantics).

onnxruntime is imported inside the functions only: `import hwdsa.export` does not load it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx
import torch

from hwdsa._io import atomic_path
from hwdsa.errors import BackendUnavailableError, ConfigError, ExportError
from hwdsa.export._data import DEFAULT_SPLIT, BatchSource, as_batches
from hwdsa.export.onnx import QDQ_OPS
from hwdsa.profilers.layers import qdq_graph

_log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "percentile")
DEFAULT_PERCENTILE = 99.99


def cpu_int8_needs_reduce_range() -> bool:
    """Whether ONNX Runtime's CPU INT8 kernels need 7-bit weights here (x86 without VNNI; see module doc).

    True when the CPU flags cannot be read (the safe choice); False on ARM and on x86 with VNNI/AMX.
    """
    import platform

    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), None)
    except OSError:
        return True
    if flags is None:
        return True
    return not ({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder nodes so each comes after the producers of its inputs (ORT's FP16 converter appends casts)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            raise ExportError(f"the graph cannot be ordered: node {pending[0].name!r} has an input no node produces")
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
        ready_ids = {id(node) for node in ready}
        pending = [node for node in pending if id(node) not in ready_ids]
    del graph.node[:]
    graph.node.extend(ordered)


def _graph_input(proto: onnx.ModelProto, path: str | os.PathLike[str]) -> tuple[str, list[int | None]]:
    """The single real input of the graph (not an initializer) and its dims (None where symbolic)."""
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ConfigError(
            f"{os.fspath(path)} has {len(inputs)} graph inputs ({', '.join(i.name for i in inputs)}); "
            "INT8 calibration here supports exactly one"
        )
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


def _equal_batches(batches: list[torch.Tensor], largest: int = DEFAULT_SPLIT) -> list[torch.Tensor]:
    """The same samples regrouped into batches of one size (the largest divisor of their count <= `largest`).

    ONNX Runtime's histogram calibrators (percentile, entropy) stack every batch's activations into
    one array and fail on a last batch of another size ("inhomogeneous shape"); no sample is dropped.
    """
    if len({tuple(b.shape) for b in batches}) == 1:
        return batches
    samples = torch.cat(batches)
    n = int(samples.shape[0])
    size = max(d for d in range(1, min(largest, n) + 1) if n % d == 0)
    return list(torch.split(samples, size))


def qdq_onnx_from_onnx(
    onnx_path: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    calibration_data: BatchSource | None,
    method: str = "percentile",
    percentile: float = DEFAULT_PERCENTILE,
    per_channel: bool = True,
    reduce_range: bool = False,
) -> Path:
    """Write an INT8 Q/DQ copy of an FP32 ONNX graph, calibrated on `calibration_data`.

    Use a few hundred real samples that look like deployment data (random inputs give scales that
    fit no real image). The result runs under ONNX Runtime on the CPU and builds as explicit INT8 in
    TensorRT (`engine_from_onnx(..., precision="int8")`).

    Args:
        onnx_path: the FP32 graph (e.g. from `onnx_from_module`).
        path: where the Q/DQ graph goes (written atomically).
        calibration_data: a tensor (split into batches) or an iterable of batches (tensors, arrays or
            (inputs, labels) pairs), shaped like the model's input.
        method: "percentile" (the `percentile`-th percentile of |x| per tensor: robust to outliers) or
            "minmax" (the largest |x| seen).
        percentile: used by method="percentile", in (90, 100].
        per_channel: one weight scale per output channel (recommended; TensorRT supports it).
        reduce_range: 7-bit weights, for ONNX Runtime's CPU kernels on x86 without VNNI (see the module
            docstring and `cpu_int8_needs_reduce_range`); leave False for TensorRT.

    Raises:
        ConfigError: no calibration data, batches of the wrong shape, or a bad method.
        ExportError: the quantiser failed or produced an invalid graph.
    """
    if calibration_data is None:
        raise ConfigError(
            "INT8 needs calibration data: pass calibration_data= a few hundred real input samples "
            "(a tensor or an iterable of batches), or choose precision 'fp32' or 'fp16'"
        )
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"calibration method must be one of {CALIBRATION_METHODS}; got {method!r}")
    if method == "percentile" and not 90.0 < float(percentile) <= 100.0:
        raise ConfigError(f"percentile must be in (90, 100]; got {percentile}")
    source = Path(onnx_path)
    proto = onnx.load(os.fspath(source), load_external_data=False)
    if set(node.op_type for node in proto.graph.node) & QDQ_OPS:
        raise ConfigError(f"{source} is already quantised (it has Q/DQ nodes); pass the FP32 graph")
    input_name, dims = _graph_input(proto, source)
    static_dims = [d for d in dims[1:] if d is not None]
    sample_shape = static_dims if len(static_dims) == len(dims) - 1 else None
    batches = _equal_batches(as_batches(calibration_data, what="calibration_data", sample_shape=sample_shape))
    # The quantiser and its TensorRT-compatible options are the profilers' (a table's int8 layers are
    # quantised by the same recipe); what is checked and prepared above is the caller's data.
    written: Path = qdq_graph(
        source,
        path,
        [b.numpy() for b in batches],
        input_name=input_name,
        method=method,
        percentile=percentile,
        per_channel=per_channel,
        reduce_range=reduce_range,
    )
    return written


def fp16_onnx_from_onnx(onnx_path: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Write an FP16 copy of an FP32 ONNX graph whose input and outputs stay FP32.

    For ONNX Runtime at precision "fp16" (the CUDA provider runs it natively; the CPU provider
    inserts casts, so it is no faster there). TensorRT builds FP16 from the FP32 graph instead.
    """
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:
        raise BackendUnavailableError(f"FP16 conversion needs onnxruntime (`pip install onnxruntime`): {exc}") from exc
    source = Path(onnx_path)
    proto = onnx.load(os.fspath(source))
    try:
        half = convert_float_to_float16(proto, keep_io_types=True)
        _sort_topologically(half.graph)
        onnx.checker.check_model(half, full_check=True)
    except Exception as exc:  # converter and checker failures alike
        raise ExportError(f"FP16 conversion of {source} failed: {type(exc).__name__}: {exc}") from exc
    target = Path(path)
    with atomic_path(target) as tmp:
        onnx.save(half, os.fspath(tmp))
    return target
