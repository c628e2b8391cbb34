"""ONNX export: real torch.onnx export + onnxslim + checker, run under the real ONNX Runtime on the CPU."""

from __future__ import annotations

import doctest
import importlib.util
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import hwdsa.export.onnx as onnx_module
from hwdsa._version import __version__
from hwdsa.errors import BackendUnavailableError, ConfigError, ExportError
from hwdsa.export.compare import compare_outputs
from hwdsa.export.onnx import onnx_from_module
from hwdsa.export.onnxruntime import OrtRunner, session_from_onnx
from hwdsa.graph import trace_channel_graph
from hwdsa.importance import group_importance
from hwdsa.models import create_model, default_input_shape, list_models
from hwdsa.surgery import plan_from_keep_ratios, prune

from _export_helpers import ConvBnRelu

CPU = ["CPUExecutionProvider"]


def _random_batches(shape: tuple[int, ...], sizes: tuple[int, ...] = (1, 4)) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn((n, *shape), generator=generator) for n in sizes]


def _with_bn_statistics(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Give a randomly initialised net real BatchNorm statistics, so its eval outputs are not degenerate."""
    model.train()
    with torch.no_grad():
        model(torch.randn((8, *shape), generator=torch.Generator().manual_seed(1)))
    return model.eval()


def test_conv_bn_relu_matches_pytorch_with_dynamic_batch(digits_net: nn.Module, digits: tuple[torch.Tensor, torch.Tensor], tmp_path: Path) -> None:
    images, _ = digits
    path = onnx_from_module(digits_net, tmp_path / "net.onnx", input_shape=(2, 1, 28, 28))
    proto = onnx.load(str(path))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert [o.name for o in proto.graph.output] == ["output"]
    # BatchNorm is folded into the convolutions by the export.
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}
    assert {p.key: p.value for p in proto.metadata_props}["hwdsa_version"] == __version__
    runner = OrtRunner(session_from_onnx(path, providers=CPU))
    for batch in (images[:1], images[1:5], images[1400:1700]):
        out = runner(batch)
        assert out.shape == (len(batch), 10)
    report = compare_outputs(digits_net, runner, [images[:1], images[1:5]], precision="fp32")
    assert report.passed and report.max_abs_error < 1e-4 and report.top1_agreement == 1.0


@pytest.mark.parametrize(
    "builder",
    [
        lambda: torchvision.models.resnet18(weights=None, num_classes=10),
        lambda: torchvision.models.mobilenet_v2(weights=None, num_classes=10),
    ],
    ids=["resnet18", "mobilenet_v2"],
)
def test_torchvision_models_match_pytorch(builder: object, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _with_bn_statistics(builder(), (3, 64, 64))  # type: ignore[operator]
    path = onnx_from_module(model, tmp_path / "m.onnx", input_shape=(1, 3, 64, 64))
    runner = OrtRunner(session_from_onnx(path, providers=CPU))
    batches = _random_batches((3, 64, 64))
    report = compare_outputs(model, runner, batches, precision="fp32")
    assert report.passed and report.n_samples == 5
    assert [runner(b).shape[0] for b in batches] == [1, 4]


def _zoo_input_shape(name: str) -> tuple[int, ...]:
    """The CIFAR/MNIST models at their native size; ImageNet models at 32x32, small enough to stay fast here
    (every stage still runs: the last feature map is 1x1)."""
    c, h, w = default_input_shape(name)
    return (c, min(h, 32), min(w, 32))


# The dense ResNet-50 and VGG-16 take 9 s together here and add no layer type that their own pruned
# forms do not export too (surgery changes widths, not layer types): they run pruned only.
_DENSE_TOO_SLOW = {"resnet50", "vgg16"}


@pytest.mark.parametrize(
    ("name", "pruned"),
    [(name, pruned) for name in list_models() for pruned in (False, True) if pruned or name not in _DENSE_TOO_SLOW],
    ids=lambda v: v if isinstance(v, str) else ("pruned" if v else "dense"),
)
def test_every_zoo_model_dense_and_pruned_matches_pytorch(name: str, pruned: bool, tmp_path: Path) -> None:
    """Each architecture of hwdsa.models, dense and after DSA surgery at uneven keep ratios, through ONNX
    Runtime with a dynamic batch."""
    torch.manual_seed(0)
    shape = _zoo_input_shape(name)
    model = _with_bn_statistics(create_model(name, num_classes=10), shape)
    if pruned:
        graph = trace_channel_graph(model, shape)
        ratios = torch.linspace(0.3, 0.9, len(graph.groups))  # a different keep ratio per channel group
        plan = plan_from_keep_ratios(graph, group_importance(model, graph), ratios)
        model = _with_bn_statistics(prune(model, graph, plan), shape)
        assert plan.channels != graph.group_sizes
    path = onnx_from_module(model, tmp_path / f"{name}.onnx", input_shape=(1, *shape))
    runner = OrtRunner(session_from_onnx(path, providers=CPU, threads=1))
    report = compare_outputs(model, runner, _random_batches(shape), precision="fp32")
    assert report.passed and report.n_samples == 5 and report.top1_agreement is not None, report.summary()


def test_static_batch_and_several_outputs(tmp_path: Path) -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.conv(x)
            return y, y.mean(dim=(2, 3))

    path = onnx_from_module(TwoHeads(), tmp_path / "two.onnx", input_shape=(2, 3, 8, 8), dynamic_batch=False, simplify=False)
    proto = onnx.load(str(path))
    assert [o.name for o in proto.graph.output] == ["output_0", "output_1"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    outputs = OrtRunner(session_from_onnx(path, providers=CPU)).infer({"input": torch.zeros(2, 3, 8, 8)})
    assert outputs["output_0"].shape == (2, 4, 6, 6) and outputs["output_1"].shape == (2, 4)


def test_training_mode_is_restored(tmp_path: Path) -> None:
    model = ConvBnRelu()
    model.train()
    model.block.eval()  # a mixed state must come back exactly
    onnx_from_module(model, tmp_path / "m.onnx", input_shape=(1, 1, 28, 28))
    assert model.training and model.stem.training and not model.block.training


def test_non_module_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"cannot export function: onnx_from_module needs a torch.nn.Module"):
        onnx_from_module(lambda x: x, tmp_path / "f.onnx", input_shape=(1, 3, 8, 8))  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


def test_failing_forward_names_the_model_and_shape(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"cannot export ConvBnRelu: its forward pass failed on an input of shape \(1, 3, 28, 28\)"):
        onnx_from_module(ConvBnRelu(), tmp_path / "m.onnx", input_shape=(1, 3, 28, 28))
    assert not list(tmp_path.iterdir())


def test_failed_export_leaves_no_file(tmp_path: Path) -> None:
    class Unexportable(nn.Module):
        """adaptive_avg_pool2d to a size that does not divide the input: the ONNX exporter refuses it."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.adaptive_avg_pool2d(x, 2)

    target = tmp_path / "u.onnx"
    with pytest.raises(ExportError, match=r"cannot export Unexportable to ONNX \(opset 17\): .*adaptive_avg_pool2d"):
        onnx_from_module(Unexportable(), target, input_shape=(1, 3, 7, 7))
    assert not list(tmp_path.iterdir()), "the failed export left a (temporary) file behind"


def test_a_model_without_tensor_output_is_refused(tmp_path: Path) -> None:
    class Dict(nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"y": x}

    with pytest.raises(ExportError, match="its forward returns dict"):
        onnx_from_module(Dict(), tmp_path / "d.onnx", input_shape=(1, 3))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_shape": (1, 3, 0, 8)}, r"input_shape must have a batch dimension.*got \(1, 3, 0, 8\)"),
        ({"input_shape": (8,)}, r"input_shape must have a batch dimension"),
        ({"input_shape": "1x3"}, r"input_shape must be a sequence of ints"),
        ({"input_shape": (1, 1, 28, 28), "opset": 11}, r"opset must be in \[13, 20\]; got 11"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], match: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=match):
        onnx_from_module(ConvBnRelu(), tmp_path / "m.onnx", **kwargs)  # type: ignore[arg-type]


@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is not None, reason="onnxscript is installed here")
def test_dynamo_exporter_without_onnxscript_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="pip install onnxscript"):
        onnx_from_module(ConvBnRelu(), tmp_path / "m.onnx", input_shape=(1, 1, 28, 28), dynamo=True)
    assert not list(tmp_path.iterdir())


def test_docstring_example_runs() -> None:
    result = doctest.testmod(onnx_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 1 and result.failed == 0
