"""LayerSpec → torch module / ONNX file (profilers/layers.py, host side)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from _profiler_helpers import conv
from hwdsa.errors import ConfigError
from hwdsa.profilers.base import LayerSpec
from hwdsa.profilers.layers import input_from_spec, module_from_spec, onnx_from_spec, torch_dtype


@pytest.mark.parametrize(
    ("act", "cls"), [("none", None), ("relu", nn.ReLU), ("relu6", nn.ReLU6), ("hardswish", nn.Hardswish), ("silu", nn.SiLU)]
)
def test_conv_module_is_folded_conv_plus_activation(act: str, cls: type[nn.Module] | None) -> None:
    spec = conv(8, 16, act=act, stride=(2, 2), size=9)
    module = module_from_spec(spec)
    layer = module[0]
    assert isinstance(layer, nn.Conv2d) and layer.bias is not None  # BatchNorm folded into the bias
    assert (layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride) == (8, 16, (3, 3), (2, 2))
    assert len(module) == (1 if cls is None else 2) and (cls is None or isinstance(module[1], cls))
    assert not module.training
    out = module(input_from_spec(spec))
    assert tuple(out.shape) == (1, 16, *spec.out_size)


def test_depthwise_and_linear() -> None:
    dw = module_from_spec(conv(8, 8, groups=8))[0]
    assert isinstance(dw, nn.Conv2d) and dw.groups == 8
    spec = LayerSpec("linear", 16, 10, activation="relu", batch_size=3)
    out = module_from_spec(spec)(input_from_spec(spec))
    assert tuple(out.shape) == (3, 10) and bool((out >= 0).all())


def test_weights_are_reproducible() -> None:
    a, b = module_from_spec(conv(4, 8)), module_from_spec(conv(4, 8))
    torch.testing.assert_close(a[0].weight, b[0].weight)
    torch.testing.assert_close(input_from_spec(conv(4, 8)), input_from_spec(conv(4, 8)))


def _elem_type(model: onnx.ModelProto) -> int:
    return model.graph.input[0].type.tensor_type.elem_type


def test_onnx_fp32(tmp_path: Path) -> None:
    path = onnx_from_spec(conv(4, 8, act="relu", batch_size=2), tmp_path / "a.onnx")
    model = onnx.load(path)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu"]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 4, 8, 8]  # static shape, batch included
    assert _elem_type(model) == onnx.TensorProto.FLOAT


def test_onnx_fp16_graph_has_fp16_io(tmp_path: Path) -> None:
    model = onnx.load(onnx_from_spec(conv(4, 8, precision="fp16"), tmp_path / "a.onnx"))
    assert _elem_type(model) == onnx.TensorProto.FLOAT16
    assert "Cast" not in {n.op_type for n in model.graph.node}  # no per-layer casts to pay for


def test_onnx_int8_graph_is_qdq(tmp_path: Path) -> None:
    path = onnx_from_spec(LayerSpec("linear", 16, 8, precision="int8"), tmp_path / "a.onnx")
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx"]  # the intermediate file is gone


def test_torch_dtype() -> None:
    assert torch_dtype("fp16", "torch_cuda") is torch.float16
    with pytest.raises(ConfigError, match="cannot run precision 'int8' in PyTorch eager mode"):
        torch_dtype("int8", "torch_cuda")


def test_layers_do_not_import_the_export_package() -> None:
    """The dependency runs hwdsa.export -> hwdsa.profilers only: the graph builders live here, export re-exports them."""
    import subprocess
    import sys

    from _profiler_helpers import REPO

    code = (
        "import sys, hwdsa.profilers.layers, hwdsa.profilers.tensorrt\n"
        "print(sorted(m for m in sys.modules if m.startswith('hwdsa.export')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "[]"
    import hwdsa.export.onnx as export_onnx
    import hwdsa.export.quantize as export_quantize
    import hwdsa.profilers.layers as layers

    assert export_onnx.onnx_from_module is layers.onnx_from_module and export_onnx.DEFAULT_OPSET == layers.DEFAULT_OPSET
    assert vars(export_quantize)["qdq_graph"] is layers.qdq_graph

