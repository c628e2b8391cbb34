"""INT8 Q/DQ and FP16 graphs: structure, ONNX Runtime CPU execution, agreement with PyTorch on real digits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from hwdsa.errors import ConfigError
from hwdsa.export.compare import compare_outputs
from hwdsa.export.onnx import onnx_from_module
from hwdsa.export.onnxruntime import OrtRunner, session_from_onnx
from hwdsa.export.quantize import cpu_int8_needs_reduce_range, fp16_onnx_from_onnx, qdq_onnx_from_onnx


@pytest.fixture(scope="module")
def digits_onnx(digits_net: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return onnx_from_module(digits_net, tmp_path_factory.mktemp("q") / "digits.onnx", input_shape=(1, 1, 28, 28))


@pytest.fixture(scope="module")
def qdq_onnx(digits_onnx: Path, digits: tuple[torch.Tensor, torch.Tensor]) -> Path:
    images, _ = digits
    return qdq_onnx_from_onnx(digits_onnx, digits_onnx.with_name("digits.int8.onnx"), calibration_data=images[:256])


def test_qdq_graph_is_tensorrt_shaped(qdq_onnx: Path) -> None:
    proto = onnx.load(str(qdq_onnx))
    ops = Counter(node.op_type for node in proto.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    inits = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    zero_points = [inits[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    # TensorRT needs signed INT8 with zero point 0 everywhere.
    assert zero_points and all(zp.dtype == np.int8 and not zp.any() for zp in zero_points)
    # Every Conv and Gemm weight is quantised per output channel (one scale per channel, axis 0).
    weight_names = {n.input[1] for n in proto.graph.node if n.op_type in ("Conv", "Gemm")}
    weight_q = [n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inits]
    assert len(weight_q) == len(weight_names) == 4  # three convolutions and the linear head
    for node in weight_q:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        assert axis == 0 and inits[node.input[1]].shape == (inits[node.input[0]].shape[0],)
    # Biases stay float: TensorRT's DequantizeLinear does not take INT32.
    assert not any(a.dtype == np.int32 for a in inits.values())
    # The batch axis stays dynamic.
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_qdq_semantics_match_pytorch_on_real_digits(
    qdq_onnx: Path, digits_net: nn.Module, digits: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """The full-range graph (what TensorRT builds), run as written: INT8 keeps the digits' decisions."""
    images, labels = digits
    runner = OrtRunner(session_from_onnx(qdq_onnx, providers=["CPUExecutionProvider"], optimize=False))
    held_out = list(torch.split(images[1400:], 100))
    report = compare_outputs(digits_net, runner, held_out, precision="int8")
    assert report.passed and report.n_samples == len(images) - 1400
    assert report.top1_agreement is not None and report.top1_agreement >= 0.97
    assert report.scaled_error < 0.05
    assert 0 < report.max_abs_error  # INT8 really changed the arithmetic
    int8_accuracy = (torch.cat([runner(b) for b in held_out]).argmax(1) == labels[1400:]).float().mean().item()
    assert int8_accuracy > 0.85


def test_reduced_range_qdq_runs_on_cpu_int8_kernels(
    digits_onnx: Path, digits_net: nn.Module, digits: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    """With 7-bit weights, ONNX Runtime's optimised CPU INT8 kernels (which saturate without VNNI) agree too."""
    images, _ = digits
    reduced = qdq_onnx_from_onnx(digits_onnx, tmp_path / "rr.onnx", calibration_data=images[:256], reduce_range=True)
    runner = OrtRunner(session_from_onnx(reduced, providers=["CPUExecutionProvider"]))
    report = compare_outputs(digits_net, runner, list(torch.split(images[1400:], 100)), precision="int8")
    assert report.passed and report.top1_agreement is not None and report.top1_agreement >= 0.97
    assert isinstance(cpu_int8_needs_reduce_range(), bool)


def test_minmax_calibration_also_works(digits_onnx: Path, digits: tuple[torch.Tensor, torch.Tensor], tmp_path: Path) -> None:
    images, _ = digits
    out = qdq_onnx_from_onnx(digits_onnx, tmp_path / "mm.onnx", calibration_data=[images[:64], images[64:128]], method="minmax")
    batch = images[1400:1464]
    result = OrtRunner(session_from_onnx(out, providers=["CPUExecutionProvider"]))(batch)
    assert result.shape == (64, 10) and torch.isfinite(result).all()


def test_int8_without_calibration_data_is_refused(digits_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="INT8 needs calibration data"):
        qdq_onnx_from_onnx(digits_onnx, tmp_path / "x.onnx", calibration_data=None)
    assert not (tmp_path / "x.onnx").exists()


def test_calibration_batches_of_the_wrong_shape_are_refused(digits_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"batch 0 has shape \(4, 3, 28, 28\).*\(batch, 1, 28, 28\)"):
        qdq_onnx_from_onnx(digits_onnx, tmp_path / "x.onnx", calibration_data=torch.zeros(4, 3, 28, 28))
    with pytest.raises(ConfigError, match="calibration_data is empty"):
        qdq_onnx_from_onnx(digits_onnx, tmp_path / "x.onnx", calibration_data=[])


def test_bad_calibration_method_and_requantisation_are_refused(qdq_onnx: Path, digits_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="calibration method must be one of"):
        qdq_onnx_from_onnx(digits_onnx, tmp_path / "x.onnx", calibration_data=torch.zeros(2, 1, 28, 28), method="entropy")
    with pytest.raises(ConfigError, match="already quantised"):
        qdq_onnx_from_onnx(qdq_onnx, tmp_path / "x.onnx", calibration_data=torch.zeros(2, 1, 28, 28))


def test_fp16_graph_keeps_fp32_io_and_matches(digits_onnx: Path, digits_net: nn.Module, digits: tuple[torch.Tensor, torch.Tensor], tmp_path: Path) -> None:
    images, _ = digits
    half = fp16_onnx_from_onnx(digits_onnx, tmp_path / "digits.fp16.onnx")
    proto = onnx.load(str(half))
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in proto.graph.initializer)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    runner = OrtRunner(session_from_onnx(half, providers=["CPUExecutionProvider"]))
    report = compare_outputs(digits_net, runner, [images[1400:1500]], precision="fp16")
    assert report.passed and report.max_abs_error > 0


def test_percentile_calibration_takes_any_sample_count(
    digits_onnx: Path, digits_net: nn.Module, digits: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    """ONNX Runtime's histogram calibrators fail on batches of unequal size; 250 samples (7 x 32 + 26) and
    uneven batches are regrouped, and no sample is dropped."""
    images, _ = digits
    for i, data in enumerate([images[:250], [images[:100], images[100:130], images[130:131]]]):
        out = qdq_onnx_from_onnx(digits_onnx, tmp_path / f"p{i}.onnx", calibration_data=data)
        runner = OrtRunner(session_from_onnx(out, providers=["CPUExecutionProvider"], optimize=False))
        report = compare_outputs(digits_net, runner, [images[1400:1600]], precision="int8")
        assert report.passed and report.top1_agreement is not None and report.top1_agreement >= 0.95
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["p0.onnx", "p1.onnx"]


def test_graph_precision_is_read_from_its_types(digits_onnx: Path, qdq_onnx: Path, tmp_path: Path) -> None:
    from hwdsa.export.onnx import onnx_precision

    half = fp16_onnx_from_onnx(digits_onnx, tmp_path / "h.onnx")
    assert [onnx_precision(p) for p in (digits_onnx, half, qdq_onnx)] == ["fp32", "fp16", "int8"]
