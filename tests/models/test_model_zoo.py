"""The model zoo: every registered model builds, runs, traces with torch.fx; CIFAR models have the paper's shapes."""

from __future__ import annotations

import doctest
import math
from collections.abc import Iterator

import pytest
import torch
import torch.fx
import torchvision
from torch import nn

import hwdsa.models.registry
from hwdsa.errors import ConfigError
from hwdsa.graph import trace_channel_graph
from hwdsa.models import MODELS, create_model, default_input_shape, list_models

EXPECTED_MODELS = {
    "resnet20", "resnet56", "vgg16", "mobilenet_v2_cifar", "small_cnn",
    "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small",
}  # fmt: skip
TORCHVISION = {"resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small"}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine, two spinning OpenMP threads per process made the
    training test 4-10x slower (25 s instead of 4 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _test_shape(name: str) -> tuple[int, int, int]:
    """The default input shape, shrunk to 64x64 for the ImageNet models to keep the tests fast."""
    c, h, w = default_input_shape(name)
    return (c, 64, 64) if h > 64 else (c, h, w)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_model_with_a_description() -> None:
    assert set(list_models()) == EXPECTED_MODELS
    assert list_models() == sorted(list_models())
    for name in list_models():
        assert len(MODELS.description(name)) > 10, name


def test_default_input_shapes() -> None:
    assert default_input_shape("resnet20") == (3, 32, 32)
    assert default_input_shape("mobilenet_v2_cifar") == (3, 32, 32)
    assert default_input_shape("small_cnn") == (1, 28, 28)
    for name in TORCHVISION:
        assert default_input_shape(name) == (3, 224, 224)


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_builds_runs_and_traces(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7).eval()
    x = torch.randn(2, *_test_shape(name))
    with torch.no_grad():
        eager = model(x)
        assert eager.shape == (2, 7)
        assert torch.isfinite(eager).all()
        traced = torch.fx.symbolic_trace(model)
        torch.testing.assert_close(traced(x), eager)
    # Traced graphs contain no data-dependent control flow: the graph has the model's convolutions.
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    called = [n for n in traced.graph.nodes if n.op == "call_module" and isinstance(traced.get_submodule(n.target), nn.Conv2d)]
    assert len(called) == n_convs


@pytest.mark.parametrize(
    "name, expected",
    [("resnet20", 12), ("resnet56", 30), ("vgg16", 13), ("mobilenet_v2_cifar", 25), ("small_cnn", 4)],
)
def test_channel_group_counts(name: str, expected: int) -> None:
    """Option-B shortcuts give 3n block-internal groups + 3 stage groups (design note, section 2)."""
    graph = trace_channel_graph(create_model(name), default_input_shape(name))
    assert len(graph.groups) == expected


def test_resnet_parameter_counts() -> None:
    # He et al. report 0.27M and 0.85M (option A); the 1x1-conv shortcuts add 2,560 weights + BN.
    n20, n56 = _n_params(create_model("resnet20")), _n_params(create_model("resnet56"))
    assert 0.26e6 < n20 < 0.28e6 and n20 == 272_474
    assert 0.84e6 < n56 < 0.87e6 and n56 == 855_770


def test_resnet20_architecture() -> None:
    model = create_model("resnet20")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(c.kernel_size == (3, 3) for c in convs) == 19  # stem + 18 in blocks
    shortcuts = [c for c in convs if c.kernel_size == (1, 1)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in shortcuts] == [(16, 32, (2, 2)), (32, 64, (2, 2))]
    assert {c.out_channels for c in convs} == {16, 32, 64}
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 1


def test_vgg16_has_13_convs_and_one_linear() -> None:
    model = create_model("vgg16")
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == 512
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13


def test_mobilenet_v2_cifar_matches_torchvision_layers_with_cifar_strides() -> None:
    ours = create_model("mobilenet_v2_cifar")
    reference = torchvision.models.mobilenet_v2(weights=None, num_classes=10)
    assert _n_params(ours) == _n_params(reference)  # same layers, width 1.0
    seen: list[tuple[int, ...]] = []
    ours.features[-1].register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    with torch.no_grad():
        ours.eval()(torch.zeros(1, 3, 32, 32))
    assert seen == [(1, 1280, 4, 4)]  # strides 1,1,2,2,1,2,1: 32 -> 4 (torchvision's would reach 1x1)
    assert isinstance(ours.classifier[0], nn.Dropout)


def test_small_cnn_in_channels_and_widths() -> None:
    model = create_model("small_cnn", num_classes=3, in_channels=3, widths=(8, 16))
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [8, 16]


def test_kaiming_init() -> None:
    torch.manual_seed(0)
    model = create_model("vgg16")
    conv = model.features[-3]  # 512 -> 512, 3x3
    assert isinstance(conv, nn.Conv2d)
    expected = math.sqrt(2.0 / (512 * 9))  # fan_out mode, ReLU gain
    assert abs(float(conv.weight.detach().std()) / expected - 1.0) < 0.02
    bn = model.features[-2]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_small_cnn_learns_digits() -> None:
    """The small CNN and the batch loader together: a few seconds of training beat chance by far."""
    from hwdsa.data import load_dataset, make_loader

    splits = load_dataset("digits", subset_per_class=80)
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=splits.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    loader = make_loader(splits.train, 32, train=True, seed=0)
    for _ in range(4):
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in make_loader(splits.test, 512, train=False))
    assert hits / len(splits.test) > 0.7


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'resnet21'; valid names: .*resnet20.*vgg16"):
        create_model("resnet21")
    with pytest.raises(ConfigError, match="unknown model"):
        default_input_shape("nope")


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match=r"num_classes must be a positive integer; got 0"):
        create_model("resnet20", num_classes=0)
    with pytest.raises(ConfigError, match=r"model 'resnet20' does not accept keyword arguments \['depth'\]; it accepts"):
        create_model("resnet20", depth=3)
    with pytest.raises(ConfigError, match=r"pretrained weights .* never downloaded"):
        create_model("resnet18", weights="DEFAULT")
    with pytest.raises(ConfigError, match=r"model 'resnet18' does not accept keyword arguments"):
        create_model("resnet18", in_channels=1)
    with pytest.raises(ConfigError, match=r"small_cnn widths must be positive integers"):
        create_model("small_cnn", widths=())


def test_docstring_examples() -> None:
    result = doctest.testmod(hwdsa.models.registry)
    assert result.attempted >= 1 and result.failed == 0


def test_listing_imports_no_model_code() -> None:
    """Registry entries are import strings (timm's lazy registry): listing imports neither torchvision nor builders."""
    import subprocess
    import sys

    code = (
        "import sys, hwdsa.models, hwdsa.data; hwdsa.models.list_models(); hwdsa.data.list_datasets(); "
        "print(sorted(m for m in ('torchvision', 'mlxtend', 'sklearn', 'hwdsa.models.resnet_cifar') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
