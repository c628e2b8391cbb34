"""Channel groups derived by the fx tracer: the design note's expected counts and clear errors."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from hwdsa.errors import NoPrunableLayerError, TracingError
from hwdsa.graph import trace_channel_graph

TORCHVISION_GROUPS = {"resnet18": 12, "resnet50": 37}


@pytest.mark.parametrize("name, expected", sorted(TORCHVISION_GROUPS.items()))
def test_torchvision_group_counts(name: str, expected: int) -> None:
    model = getattr(torchvision.models, name)(weights=None)
    graph = trace_channel_graph(model, (3, 64, 64))
    assert len(graph.groups) == expected


def _zoo():
    models = pytest.importorskip("hwdsa.models")
    if not hasattr(models, "create_model"):
        pytest.skip("model zoo not available")
    return models


@pytest.mark.parametrize("name, expected", [("resnet20", 12), ("resnet56", 30), ("vgg16", 13)])
def test_cifar_group_counts(name: str, expected: int) -> None:
    models = _zoo()
    graph = trace_channel_graph(models.create_model(name), (3, 32, 32))
    assert len(graph.groups) == expected


def test_resnet18_residual_group_members() -> None:
    graph = trace_channel_graph(torchvision.models.resnet18(weights=None), (3, 64, 64))
    # Stem + every layer1 block output are summed together: one group of 64 channels.
    stem = next(g for g in graph.groups if "conv1" in g.producers)
    assert stem.channels == 64
    assert {"layer1.0.conv2", "layer1.1.conv2"} <= set(stem.producers)
    assert {"bn1", "layer1.0.bn2", "layer1.1.bn2"} <= set(stem.mask_sites)
    # layer2's downsample conv joins its stage group.
    stage2 = next(g for g in graph.groups if "layer2.0.downsample.0" in g.producers)
    assert set(stage2.producers) == {"layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"}
    # The classifier reads the last stage group and its outputs are never pruned.
    fc = graph.layer("fc")
    assert fc.out_group is None and fc.in_segments[0].group is not None


def test_depthwise_joins_producer_group() -> None:
    graph = trace_channel_graph(torchvision.models.mobilenet_v2(weights=None), (3, 64, 64))
    dw = [layer for layer in graph.layers if layer.is_depthwise]
    assert dw, "mobilenet_v2 has depthwise convolutions"
    for layer in dw:
        assert layer.out_group is not None
        assert layer.in_segments[0].group == layer.out_group
        group = graph.groups[layer.out_group]
        assert layer.name in group.producers
        assert layer.name not in group.consumers


class _Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 1)
        self.head = nn.Conv2d(10, 5, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(self.a(x)), self.b(x)], dim=1)
        return self.fc(torch.flatten(self.pool(self.head(y)), 1))


def test_concat_gives_segments() -> None:
    graph = trace_channel_graph(_Concat(), (3, 8, 8))
    head = graph.layer("head")
    assert [(s.channels, s.offset) for s in head.in_segments] == [(4, 0), (6, 4)]
    assert head.in_segments[0].group != head.in_segments[1].group
    assert len(graph.groups) == 3  # a, b, head


class _FlattenFC(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc1 = nn.Linear(4 * 6 * 6, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.conv(x).flatten(1))))


def test_flatten_records_features_per_channel() -> None:
    graph = trace_channel_graph(_FlattenFC(), (1, 8, 8))
    assert graph.layer("fc1").features_per_channel == 36
    assert len(graph.groups) == 2  # conv output channels and fc1's hidden units
    assert graph.layer("fc1").activation == "relu"


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.conv(x)
        return x


class _Unsupported(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.LayerNorm([4, 6, 6])
        self.fc = nn.Linear(4 * 36, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.conv(x)).flatten(1))


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.conv(x))


class _OnlyHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_untraceable_model_is_refused_with_advice() -> None:
    with pytest.raises(TracingError, match="cannot trace _DataDependent.*control flow"):
        trace_channel_graph(_DataDependent(), (3, 8, 8))


def test_unsupported_module_names_the_node() -> None:
    with pytest.raises(TracingError, match="node 'norm'.*unsupported module type LayerNorm"):
        trace_channel_graph(_Unsupported(), (3, 8, 8))


def test_shared_module_is_refused() -> None:
    with pytest.raises(TracingError, match="called more than once"):
        trace_channel_graph(_Shared(), (4, 8, 8))


def test_model_without_prunable_layer() -> None:
    with pytest.raises(NoPrunableLayerError, match="no prunable channel group"):
        trace_channel_graph(_OnlyHead(), (2, 10))


def test_not_a_module_and_bad_shape() -> None:
    with pytest.raises(TracingError, match="expected a torch.nn.Module"):
        trace_channel_graph("resnet", (3, 8, 8))  # type: ignore[arg-type]
    with pytest.raises(TracingError, match="input_shape must be"):
        trace_channel_graph(_Concat(), (8,))


def test_tracing_leaves_model_mode_and_stats_unchanged() -> None:
    model = torchvision.models.resnet18(weights=None).train()
    before = model.bn1.running_mean.clone()
    trace_channel_graph(model, (3, 32, 32))
    assert model.training
    torch.testing.assert_close(model.bn1.running_mean, before)


# -- one rule for channel-wise operations: a group passes through only where a masked channel stays zero --

_CHANNELWISE_OPS: dict[str, object] = {
    "ReLU": nn.ReLU(),
    "ReLU6": nn.ReLU6(),
    "LeakyReLU": nn.LeakyReLU(0.1),
    "GELU": nn.GELU(),
    "SiLU": nn.SiLU(),
    "Hardswish": nn.Hardswish(),
    "Tanh": nn.Tanh(),
    "ELU": nn.ELU(),
    "SELU": nn.SELU(),
    "Mish": nn.Mish(),
    "Sigmoid": nn.Sigmoid(),
    "Hardsigmoid": nn.Hardsigmoid(),
    "Softplus": nn.Softplus(),
    "torch.sigmoid": torch.sigmoid,
    "exp": torch.exp,
    "x + 0.5": lambda x: x + 0.5,
    "x - 0.5": lambda x: x - 0.5,
    "0.5 - x": lambda x: 0.5 - x,
    "x + 0": lambda x: x + 0,
    "x * 3": lambda x: x * 3,
    "x / 2": lambda x: x / 2,
    "-x": lambda x: -x,
    "StochasticDepth": torchvision.ops.StochasticDepth(0.2, "row"),
    "Dropout2d": nn.Dropout2d(0.1),
    "MaxPool": nn.MaxPool2d(3, 1, 1),
    "AvgPool": nn.AvgPool2d(3, 1, 1),
}


class _ThroughOp(nn.Module):
    """conv → BN → op → conv → BN → ReLU → pool → linear: group 0 passes through `op` into conv2."""

    def __init__(self, op: object) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.op = op if isinstance(op, nn.Module) else _Lambda(op)  # type: ignore[arg-type]
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.op(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class _Lambda(nn.Module):
    """A function as fx sees it inline (the forward is traced through, not kept as a leaf)."""

    def __init__(self, fn: object) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)  # type: ignore[operator, no-any-return]


@pytest.mark.parametrize("name", sorted(_CHANNELWISE_OPS))
def test_channelwise_op_passes_group_iff_it_maps_zero_to_zero(name: str) -> None:
    from hwdsa.importance import group_importance
    from hwdsa.masking import ChannelMasks
    from hwdsa.surgery import plan_from_keep_ratios, prune

    torch.manual_seed(0)
    model = _ThroughOp(_CHANNELWISE_OPS[name])
    for bn in (model.bn1, model.bn2):  # BatchNorm of a zero channel is not zero
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    model.eval()
    maps_zero_to_zero = bool(model.op(torch.zeros(1, 8, 4, 4)).abs().max() == 0)
    graph = trace_channel_graph(model, (3, 8, 8))
    first_group_prunable = any("conv1" in g.producers for g in graph.groups)
    assert first_group_prunable == maps_zero_to_zero
    plan = plan_from_keep_ratios(graph, group_importance(model, graph), [0.5] * len(graph.groups))
    x = torch.randn(4, 3, 8, 8)
    with ChannelMasks(model, graph) as masks, torch.no_grad():
        masks.set_masks(plan.to_masks())
        masked = model(x)
    with torch.no_grad():
        pruned = prune(model, graph, plan)(x)
    torch.testing.assert_close(masked, pruned, atol=1e-5, rtol=1e-4)


class _SqueezeExcite(nn.Module):
    """x · sigmoid(fc(pool(x))): the gate is non-zero for a masked channel, the product is zero."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(nn.functional.adaptive_avg_pool2d(x, 1)))))
        return self.head(x * gate)


def test_gating_by_a_sigmoid_keeps_the_group_prunable() -> None:
    graph = trace_channel_graph(_SqueezeExcite(), (3, 8, 8))
    gated = next(g for g in graph.groups if "conv" in g.producers)
    assert set(gated.producers) == {"conv", "fc2"}


def test_division_by_a_feature_map_is_refused() -> None:
    class _Divide(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) / self.b(x)

    with pytest.raises(TracingError, match="division by a feature map"):
        trace_channel_graph(_Divide(), (3, 8, 8))


def test_torchvision_stochastic_depth_is_traced_through() -> None:
    # torchvision's EfficientNet uses StochasticDepth in every MBConv block.
    model = torchvision.models.efficientnet_b0(weights=None)
    graph = trace_channel_graph(model, (3, 64, 64))
    assert len(graph.groups) > 10
