"""The artefacts `hwdsa export` makes, in the order it makes them; imports nothing, so the command line
offers them as its choices without loading torch or onnx."""

from __future__ import annotations

#: An ONNX graph, an ONNX Runtime session of it, a TensorRT engine built from it.
FORMATS: tuple[str, ...] = ("onnx", "onnxruntime", "tensorrt")

__all__ = ["FORMATS"]
