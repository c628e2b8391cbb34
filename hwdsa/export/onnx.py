"""ONNX from a PyTorch module: exported in eval mode with a dynamic batch axis, simplified, checked, atomic.

`onnx_from_module` and its helpers live in `hwdsa.profilers.layers`, which exports each layer of a
latency table the same way (the dependency runs export -> profilers, never back); they are re-exported
here, with the ONNX file utilities deployment needs (hashes, a graph's precision). See that module for
the choice of exporter and opset (TorchScript-based, opset 17).

Example:
    >>> import tempfile, torch
    >>> from hwdsa.export import onnx_from_module
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    >>> with tempfile.TemporaryDirectory() as d:
    ...     onnx_from_module(net, f"{d}/net.onnx", input_shape=(1, 3, 16, 16)).name
    'net.onnx'
"""

from __future__ import annotations

import hashlib
import os

import onnx

from hwdsa.profilers.layers import BATCH_DIM as BATCH_DIM
from hwdsa.profilers.layers import DEFAULT_OPSET as DEFAULT_OPSET
from hwdsa.profilers.layers import INPUT_NAME as INPUT_NAME
from hwdsa.profilers.layers import MAX_OPSET as MAX_OPSET
from hwdsa.profilers.layers import MIN_OPSET as MIN_OPSET
from hwdsa.profilers.layers import OUTPUT_NAME as OUTPUT_NAME
from hwdsa.profilers.layers import QDQ_OPS as QDQ_OPS
from hwdsa.profilers.layers import check_input_shape as check_input_shape
from hwdsa.profilers.layers import model_name as model_name
from hwdsa.profilers.layers import onnx_from_module as onnx_from_module
from hwdsa.profilers.layers import onnx_op_types as onnx_op_types
from hwdsa.profilers.layers import output_names as output_names
from hwdsa.profilers.layers import short_cause as short_cause


def sha256_file(path: str | os.PathLike[str], *, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (read in chunks, so large engines do not sit in memory twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
