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
