"""Surgery: the pruned network computes what the masked dense network computes, for every model of the zoo."""

from __future__ import annotations

import io
import json
import logging
import math
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.fx
from torch import Tensor, nn

from hwdsa.costs import FlopsCost, ParamsCost
from hwdsa.counting import count_flops, count_params
from hwdsa.dsa.allocator import pad_importance
from hwdsa.dsa.process import deterministic_masks
from hwdsa.errors import CheckpointError, ConfigError, KeepRatioError, TracingError
from hwdsa.graph.structure import ChannelGraph
from hwdsa.graph.tracer import trace_channel_graph
from hwdsa.importance import group_importance
from hwdsa.masking import ChannelMasks
from hwdsa.models import MODELS, create_model, default_input_shape, list_models
from hwdsa.surgery import (
    PruningPlan,
    load_pruned,
    plan_from_channels,
    plan_from_keep_ratios,
    plan_from_masks,
    prune,
    prune_,
    round_channels,
    save_pruned,
)
from hwdsa.surgery.files import _weights_digest as weights_digest

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BIG = {"resnet50", "resnet18", "vgg16", "mobilenet_v2"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Batch-2 forward passes are fastest single-threaded on a shared 2-core machine (no oversubscription)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def _input_shape(name: str) -> tuple[int, ...]:
    """Small inputs: 64×64 for torchvision models, the native 32×32 / 28×28 for the CIFAR and MNIST models."""
    return (3, 64, 64) if MODELS.get(name).is_torchvision else tuple(default_input_shape(name))


def _randomise_(model: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm statistics and affine parameters (and biases), so a masked channel carries a real shift."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                n = mod.num_features
                if mod.affine:
                    mod.weight.copy_(torch.rand(n, generator=gen) * 1.5 + 0.1)
                    mod.bias.copy_(torch.randn(n, generator=gen) * 0.5)
                mod.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                mod.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            elif isinstance(mod, (*_CONV, nn.Linear)) and mod.bias is not None:
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.1)
    return model.eval()


class _Tiny(nn.Module):
    """Three conv-BN-ReLU layers (16/32/64 channels), global pool, linear: fixed sizes for exact assertions."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for i, width in enumerate((16, 32, 64)):
            layers += [nn.Conv2d(c_in, width, 3, 1 if i == 0 else 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            c_in = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def _tiny(seed: int = 0) -> tuple[nn.Module, ChannelGraph]:
    torch.manual_seed(seed)
    model = _randomise_(_Tiny(), seed=seed)
    return model, trace_channel_graph(model, (1, 12, 12))


_ZOO: dict[str, tuple[nn.Module, ChannelGraph, tuple[int, ...]]] = {}


def _zoo(name: str) -> tuple[nn.Module, ChannelGraph, tuple[int, ...]]:
    """A randomised dense zoo model in eval mode with its graph, built once per test session."""
    if name not in _ZOO:
        torch.manual_seed(0)
        model = _randomise_(create_model(name, num_classes=10), seed=1)
        shape = _input_shape(name)
        _ZOO[name] = (model, trace_channel_graph(model, shape), shape)
    return _ZOO[name]


def _masked_output(model: nn.Module, graph: ChannelGraph, plan: PruningPlan, x: Tensor) -> Tensor:
    with ChannelMasks(model, graph) as masks, torch.no_grad():
        masks.set_masks(plan.to_masks())
        return model(x)


def _assert_same(actual: Tensor, expected: Tensor) -> None:
    """Equal up to float32 round-off, relative to the output's own scale (some zoo outputs are small)."""
    scale = float(expected.abs().max()) or 1.0
    torch.testing.assert_close(actual / scale, expected / scale, rtol=1e-4, atol=2e-5)


def _assert_consistent_modules(model: nn.Module) -> None:
    """Every sliced module's size attributes agree with its tensors (repr, counting and export read them)."""
    for name, mod in model.named_modules():
        if isinstance(mod, _CONV):
            assert mod.weight.shape[0] == mod.out_channels, name
            assert mod.weight.shape[1] * mod.groups == mod.in_channels, name
            assert mod.bias is None or mod.bias.shape[0] == mod.out_channels, name
        elif isinstance(mod, nn.Linear):
            assert tuple(mod.weight.shape) == (mod.out_features, mod.in_features), name
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            assert mod.running_mean is not None and mod.running_mean.shape[0] == mod.num_features, name
            assert mod.running_var is not None and mod.running_var.shape[0] == mod.num_features, name
            if mod.affine:
                assert mod.weight.shape[0] == mod.bias.shape[0] == mod.num_features, name


def _plans(name: str, graph: ChannelGraph, importance: list[Tensor]) -> list[tuple[str, PruningPlan]]:
    """Random and extreme plans: random ratios, 1 channel / all channels alternating, multiples of 8, random masks."""
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    n = len(graph.groups)
    plans = [
        ("random", plan_from_keep_ratios(graph, importance, torch.rand(n, generator=gen) * 0.9 + 0.1)),
        # 1e-6·C rounds to 0 and is lifted to one channel; 1.0 keeps every channel of the group.
        ("extreme", plan_from_keep_ratios(graph, importance, [1e-6 if g % 2 == 0 else 1.0 for g in range(n)])),
    ]
    if name not in _BIG:
        plans.append(("round8", plan_from_keep_ratios(graph, importance, torch.rand(n, generator=gen), round_to=8)))
        masks = [torch.rand(c, generator=gen) < 0.5 for c in graph.group_sizes]
        for m in masks:
            m[torch.randint(len(m), (1,), generator=gen)] = True  # at least one channel per group
        plans.append(("masks", plan_from_masks(graph, masks)))
    return plans


# ---------------------------------------------------------------------------------------------------------
# the core proof: pruned == masked, for every model
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_models())
def test_pruned_network_equals_masked_network(name: str) -> None:
    dense, graph, shape = _zoo(name)
    importance = group_importance(dense, graph)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y_dense = dense(x)
    dense_params = count_params(dense)
    flops, params = FlopsCost(graph), ParamsCost(graph)
    for label, plan in _plans(name, graph, importance):
        y_masked = _masked_output(dense, graph, plan, x)
        # The masks must matter, or the comparison below proves nothing.
        assert (y_masked - y_dense).abs().max() > 1e-3 * y_dense.abs().max(), label
        pruned = prune(dense, graph, plan).eval()
        assert type(pruned) is type(dense) and not isinstance(pruned, torch.fx.GraphModule)
        with torch.no_grad():
            y_pruned = pruned(x)
        _assert_same(y_pruned, y_masked)
        _assert_consistent_modules(pruned)
        # Really smaller, and exactly as the cost functions predict at the plan's channel counts.
        assert count_params(pruned) < dense_params, label
        assert count_params(pruned) == round(params.exact(plan.channels)), label
        assert count_flops(pruned, shape) == round(flops.exact(plan.channels)), label
        if label == "round8":
            assert all(c % 8 == 0 or c == size for c, size in zip(plan.channels, plan.group_sizes)), plan.channels
        if label == "extreme":
            assert all(c == (1 if g % 2 == 0 else size) for g, (c, size) in enumerate(zip(plan.channels, plan.group_sizes)))
    assert count_params(dense) == dense_params  # prune() left the dense model alone


@pytest.mark.parametrize("name", list_models())
def test_save_reload_and_onnx_export(name: str, tmp_path: Path) -> None:
    dense, graph, shape = _zoo(name)
    importance = group_importance(dense, graph)
    ratios = torch.rand(len(graph.groups), generator=torch.Generator().manual_seed(5)) * 0.8 + 0.2
    kwargs = {"in_channels": shape[0]} if name == "small_cnn" else {}
    plan = plan_from_keep_ratios(graph, importance, ratios, model_name=name, num_classes=10, model_kwargs=kwargs)
    pruned = prune(dense, graph, plan).eval()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = pruned(x)

    path = save_pruned(tmp_path / "pruned.pt", pruned, plan, extra={"note": "hello", "accuracy": 0.5, "curve": [1, 2]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned.pt"]  # atomic: no temporary left behind
    reloaded, plan2 = load_pruned(path)
    assert plan2 == plan
    assert type(reloaded) is type(dense)
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), expected, rtol=0, atol=0)
    assert torch.load(path, weights_only=True)["extra"] == {"note": "hello", "accuracy": 0.5, "curve": [1, 2]}

    onnx_bytes = _export_onnx(reloaded, x)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (y_onnx,) = session.run(None, {"input": x.numpy()})
    _assert_same(torch.from_numpy(np.asarray(y_onnx)), expected)


def _export_onnx(model: nn.Module, x: Tensor) -> bytes:
    # torch 2.15's default (dynamo) exporter needs onnxscript, which is not installed; the TorchScript
    # exporter is the path hwdsa.export uses. It warns that it is deprecated.
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["input"], output_names=["output"])
    return buffer.getvalue()


def test_plan_keeping_every_channel_changes_nothing() -> None:
    dense, graph, shape = _zoo("mobilenet_v3_small")
    plan = plan_from_channels(graph, group_importance(dense, graph), graph.group_sizes)
    assert plan.keep_ratios == (1.0,) * len(graph.groups)
    pruned = prune(dense, graph, plan).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), dense(x), rtol=0, atol=0)
    assert count_params(pruned) == count_params(dense)


def test_prune_in_place_returns_the_same_module_and_prune_copies() -> None:
    model = _randomise_(create_model("resnet20"), seed=2)
    graph = trace_channel_graph(model, (3, 32, 32))
    plan = plan_from_keep_ratios(graph, group_importance(model, graph), [0.5] * len(graph.groups))
    before = count_params(model)
    copy = prune(model, graph, plan)
    assert copy is not model and count_params(model) == before
    assert prune_(model, graph, plan) is model
    assert count_params(model) == count_params(copy) < before
    assert "Conv2d(3, 8, kernel_size=(3, 3)" in repr(model.conv1)


def test_importance_decides_which_channels_survive() -> None:
    model, graph = _tiny(3)
    importance = [torch.arange(c, dtype=torch.float32) for c in graph.group_sizes]  # the last channels matter most
    importance[0] = torch.zeros(16)  # all tied: the lowest indices win
    plan = plan_from_channels(graph, importance, [3, 2, 4])
    assert plan.kept == ((0, 1, 2), (30, 31), (60, 61, 62, 63))
    pruned = prune(model, graph, plan)
    torch.testing.assert_close(pruned.features[0].weight, model.features[0].weight[[0, 1, 2]])
    torch.testing.assert_close(pruned.features[3].weight, model.features[3].weight[[30, 31]][:, [0, 1, 2]])
    torch.testing.assert_close(pruned.features[7].running_var, model.features[7].running_var[60:])
    torch.testing.assert_close(pruned.features[7].bias, model.features[7].bias[60:])
    torch.testing.assert_close(pruned.fc.weight, model.fc.weight[:, 60:])
    torch.testing.assert_close(pruned.fc.bias, model.fc.bias)


def test_plans_keep_the_channels_the_search_evaluates() -> None:
    """Top-k with ties to the lower index, as `deterministic_masks` does: the plan is the evaluated network."""
    dense, graph, _ = _zoo("resnet20")
    importance = group_importance(dense, graph)
    importance[3] = torch.ones_like(importance[3])  # a fully tied group
    importance[4] = importance[4].round(decimals=1)  # partly tied
    channels = [max(1, c // 3) for c in graph.group_sizes]
    imp, valid = pad_importance(importance)
    masks = deterministic_masks(imp, valid, channels)
    from_masks = plan_from_masks(graph, [masks[g, :c] for g, c in enumerate(graph.group_sizes)])
    assert plan_from_channels(graph, importance, channels) == from_masks


# ---------------------------------------------------------------------------------------------------------
# architectures the zoo does not cover: concatenation, flatten of C×H×W, hidden linears, BatchNorm1d,
# depthwise convolutions without BatchNorm, Conv3d (Conv1d nets cannot be traced yet: a 3-D input shape
# is read as (C, H, W))
# ---------------------------------------------------------------------------------------------------------
class _ConcatFlattenNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 12, 1), nn.ReLU())  # no BatchNorm: masked at the conv itself
        self.mix = nn.Conv2d(36, 24, 1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc1 = nn.Linear(24 * 16, 32)
        self.bn1 = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 20, bias=False)
        self.fc3 = nn.Linear(20, 5)

    def forward(self, x: Tensor) -> Tensor:
        s = self.stem(x)
        y = torch.relu(self.mix(torch.cat([self.a(s), self.b(s), s], dim=1)))
        h = torch.relu(self.bn1(self.fc1(torch.flatten(self.pool(y), 1))))
        return self.fc3(torch.relu(self.fc2(h)))


class _DepthwiseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 24, 1)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)  # depthwise, with bias, no BatchNorm
        self.project = nn.Conv2d(24, 16, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.skip = nn.Conv2d(3, 16, 1, bias=False)
        self.head = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = nn.functional.relu6(self.dw(torch.relu(self.expand(x))))
        y = torch.relu(self.bn(self.project(h)) + self.skip(x))
        return self.head(y.mean(dim=(2, 3)))


class _Conv3dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv3d(2, 12, 3, padding=1, bias=False)
        self.n1 = nn.BatchNorm3d(12)
        self.c2 = nn.Conv3d(12, 10, 3)
        self.n2 = nn.BatchNorm3d(10)
        self.fc = nn.Linear(10 * 2 * 2 * 2, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.n2(self.c2(torch.relu(self.n1(self.c1(x))))))
        return self.fc(torch.flatten(h, 1))


@pytest.mark.parametrize(
    ("factory", "shape", "n_groups"),
    [(_ConcatFlattenNet, (3, 8, 8), 6), (_DepthwiseNet, (3, 8, 8), 2), (_Conv3dNet, (1, 2, 4, 4, 4), 2)],
    ids=["concat_flatten_linear", "depthwise", "conv3d"],
)
def test_custom_architectures(factory: type[nn.Module], shape: tuple[int, ...], n_groups: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    dense = _randomise_(factory(), seed=4)
    graph = trace_channel_graph(dense, shape)
    assert len(graph.groups) == n_groups
    importance = group_importance(dense, graph, mode="sum_normalized")
    x = torch.randn(3, *shape[-len(shape) + 1 :] if len(shape) == 5 else shape)
    gen = torch.Generator().manual_seed(7)
    for trial in range(4):
        ratios = torch.rand(len(graph.groups), generator=gen) * 0.9 + 0.05 if trial else torch.full((n_groups,), 1e-3)
        plan = plan_from_keep_ratios(graph, importance, ratios)
        pruned = prune(dense, graph, plan).eval()
        with torch.no_grad():
            _assert_same(pruned(x), _masked_output(dense, graph, plan, x))
        _assert_consistent_modules(pruned)
        assert count_params(pruned) == round(ParamsCost(graph).exact(plan.channels))
    save_pruned(tmp_path / "net.pt", pruned, plan)
    reloaded, _ = load_pruned(tmp_path / "net.pt", model=factory())
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x), pruned(x), rtol=0, atol=0)
    session = ort.InferenceSession(_export_onnx(pruned, x), providers=["CPUExecutionProvider"])
    _assert_same(torch.from_numpy(session.run(None, {"input": x.numpy()})[0]), pruned(x).detach())


def test_flatten_fed_linear_keeps_whole_channel_blocks() -> None:
    dense = _randomise_(_ConcatFlattenNet(), seed=5)
    graph = trace_channel_graph(dense, (3, 8, 8))
    mix = next(g for g in graph.groups if g.producers == ("mix",))
    assert graph.layer("fc1").features_per_channel == 16
    channels = [g.channels for g in graph.groups]
    channels[mix.index] = 2
    importance = [torch.zeros(c) for c in graph.group_sizes]
    importance[mix.index][[5, 20]] = 1.0
    pruned = prune(dense, graph, plan_from_channels(graph, importance, channels))
    torch.testing.assert_close(pruned.fc1.weight, torch.cat([dense.fc1.weight[:, 80:96], dense.fc1.weight[:, 320:336]], 1))


# ---------------------------------------------------------------------------------------------------------
# rounding
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("targets", "sizes", "multiple", "mode", "expected"),
    [
        ([2.5, 2.4999, 0.2, 7.0], [8, 8, 8, 8], None, "nearest", [3, 2, 1, 7]),  # halves round up; at least 1
        ([12.0, 11.9, 3.2, 64.0], [64, 64, 64, 64], 8, "nearest", [16, 8, 8, 64]),  # 12 = 1.5·8 rounds up
        ([12.0, 3.2, 60.0], [64, 64, 64], 8, "up", [16, 8, 64]),
        ([12.0, 3.2, 60.0, 16.0], [64, 64, 64, 64], 8, "down", [8, 8, 56, 16]),  # never below one multiple
        ([19.0, 20.0, 5.0], [20, 20, 5], 8, "nearest", [16, 20, 5]),  # capped at C; a group below 8 stays whole
        ([3.0000000000000004], [10], None, "up", [3]),  # float round-off does not round up
    ],
)
def test_round_channels(targets: list[float], sizes: list[int], multiple: int | None, mode: str, expected: list[int]) -> None:
    assert round_channels(targets, sizes, multiple=multiple, mode=mode) == expected  # type: ignore[arg-type]


def test_round_to_eight_in_plans() -> None:
    dense, graph, _ = _zoo("resnet20")
    importance = group_importance(dense, graph)
    plan = plan_from_keep_ratios(graph, importance, [0.3] * len(graph.groups), round_to=8)
    # 0.3·16 = 4.8 → 8; 0.3·32 = 9.6 → 8; 0.3·64 = 19.2 → 16
    assert plan.channels == tuple({16: 8, 32: 8, 64: 16}[c] for c in graph.group_sizes)
    up = plan_from_channels(graph, importance, [9] * len(graph.groups), round_to=8, rounding="up")
    assert up.channels == tuple(16 for _ in graph.group_sizes)
    pruned = prune(dense, graph, plan)
    assert all(m.out_channels % 8 == 0 for m in pruned.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"multiple": 0}, ConfigError, r"round_to must be a positive integer \(e.g. 8\) or None; got 0"),
        ({"multiple": 2.5}, ConfigError, "round_to must be a positive integer"),
        ({"multiple": True}, ConfigError, "round_to must be a positive integer"),
        ({"mode": "ceil"}, ConfigError, "unknown rounding mode 'ceil'; valid modes: nearest, up, down"),
    ],
)
def test_round_channels_errors(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        round_channels([1.0], [8], **kwargs)  # type: ignore[arg-type]


def test_round_channels_rejects_bad_counts() -> None:
    with pytest.raises(KeepRatioError, match="group 1: channel count must be positive and finite; got 0.0"):
        round_channels([1.0, 0.0], [8, 8])
    with pytest.raises(KeepRatioError, match="expected 2 channel counts"):
        round_channels([1.0], [8, 8])


# ---------------------------------------------------------------------------------------------------------
# the plan record
# ---------------------------------------------------------------------------------------------------------
def test_plan_json_round_trip(tmp_path: Path) -> None:
    plan = PruningPlan(
        group_sizes=(4, 3),
        kept=((0, 2), (1,)),
        model_name="small_cnn",
        input_shape=(1, 28, 28),
        num_classes=7,
        model_kwargs={"in_channels": 1},
    )
    text = plan.to_json()
    data = json.loads(text)
    assert data["schema_version"] == 1 and data["kind"] == "hwdsa.PruningPlan"
    assert PruningPlan.from_json(text) == plan
    assert PruningPlan.load(plan.save(tmp_path / "plan.json")) == plan
    assert hash(plan) == hash(PruningPlan.from_json(text))
    assert plan.channels == (2, 1) and plan.keep_ratios == (0.5, 1 / 3)
    assert [m.tolist() for m in plan.to_masks()] == [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]


def test_plan_from_masks_inverts_to_masks() -> None:
    dense, graph = _tiny()
    plan = plan_from_keep_ratios(graph, group_importance(dense, graph), [0.4, 0.6, 0.2])
    assert plan.channels == (6, 19, 13)  # 6.4 → 6, 19.2 → 19, 12.8 → 13
    assert plan_from_masks(graph, plan.to_masks()) == plan
    assert plan_from_masks(graph, [m.bool() for m in plan.to_masks()]) == plan
    assert plan.input_shape == (1, 12, 12)


def _plan_dict(**changes: object) -> dict[str, object]:
    data = PruningPlan(group_sizes=(4, 3), kept=((0, 2), (1,))).to_dict()
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (_plan_dict(kind="something"), ConfigError, "not a pruning plan: expected kind 'hwdsa.PruningPlan'"),
        (_plan_dict(schema_version=2), ConfigError, "schema_version 2 is not supported"),
        (_plan_dict(extra_field=1), ConfigError, r"unknown fields \['extra_field'\]"),
        ({k: v for k, v in _plan_dict().items() if k != "kept"}, ConfigError, r"lacks the required fields \['kept'\]"),
        (_plan_dict(kept=[[2, 0], [1]]), ConfigError, "group 0: kept channels must be sorted ascending without repeats"),
        (_plan_dict(kept=[[0, 0], [1]]), ConfigError, "sorted ascending without repeats"),
        (_plan_dict(kept=[[0, 4], [1]]), ConfigError, r"group 0: kept channel indices must lie in 0..3; got 0..4"),
        (_plan_dict(kept=[[0], []]), KeepRatioError, "group 1 keeps no channel"),
        (_plan_dict(kept=[[0]]), ConfigError, r"one list of kept channels per group \(2\); got 1"),
        (_plan_dict(kept=[[0.5], [1]]), ConfigError, "kept\\[0\\] must hold integers only"),
        (_plan_dict(group_sizes=[4, 0]), ConfigError, "positive group sizes"),
        (_plan_dict(num_classes=0), ConfigError, "num_classes must be a positive integer or None; got 0"),
        (_plan_dict(input_shape=[3, 0, 32]), ConfigError, "input_shape must be positive sizes"),
        (_plan_dict(model_kwargs={"x": {1, 2}}), ConfigError, "model_kwargs must map names to JSON values"),
    ],
)
def test_plan_validation_errors(data: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        PruningPlan.from_dict(data)


def test_plan_from_json_rejects_non_json() -> None:
    with pytest.raises(ConfigError, match="a pruning plan must be JSON"):
        PruningPlan.from_json("{not json")
    with pytest.raises(ConfigError, match="a pruning plan must be a JSON object; got list"):
        PruningPlan.from_json("[1, 2]")
    with pytest.raises(ConfigError, match="no pruning plan at"):
        PruningPlan.load("/nonexistent/plan.json")


def test_plan_that_does_not_fit_the_graph() -> None:
    dense, graph = _tiny()
    other = PruningPlan(group_sizes=(16, 32), kept=((0,), (0,)), model_name="x")
    with pytest.raises(ConfigError, match=r"the pruning plan \(made for 'x'\) does not fit this model's channel groups: 2 groups vs 3"):
        prune(dense, graph, other)
    resized = PruningPlan(group_sizes=(16, 32, 65), kept=((0,), (0,), (0,)))
    with pytest.raises(ConfigError, match="group 2 has 65 channels in the plan, 64 in the model"):
        resized.check_graph(graph)


# ---------------------------------------------------------------------------------------------------------
# errors when making plans
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ratios", "match"),
    [
        ([0.5, 0.0, 0.5], r"keep ratios must lie in \(0, 1\]; got values in \[0, 0.5\]"),
        ([0.5, 1.5, 0.5], r"keep ratios must lie in \(0, 1\]"),
        ([0.5, float("nan"), 0.5], "keep ratios must be finite"),
        ([0.5, 0.5], r"expected one keep ratio per channel group \(3\), got a tensor of shape \(2,\)"),
    ],
)
def test_plan_from_keep_ratios_errors(ratios: list[float], match: str) -> None:
    dense, graph = _tiny()
    with pytest.raises(KeepRatioError, match=match):
        plan_from_keep_ratios(graph, group_importance(dense, graph), ratios)


def test_plan_from_channels_errors() -> None:
    dense, graph = _tiny()
    importance = group_importance(dense, graph)
    with pytest.raises(KeepRatioError, match=r"group 1: channel count 0 outside 1..32"):
        plan_from_channels(graph, importance, [4, 0, 4])
    with pytest.raises(KeepRatioError, match=r"group 2: channel count 65 outside 1..64"):
        plan_from_channels(graph, importance, [4, 4, 65])
    with pytest.raises(KeepRatioError, match="expected 3 channel counts"):
        plan_from_channels(graph, importance, [4, 4])
    with pytest.raises(ConfigError, match=r"expected one importance vector per channel group \(3\), got 2"):
        plan_from_channels(graph, importance[:2], [4, 4, 4])
    with pytest.raises(ConfigError, match=r"group 1: expected an importance vector of shape \(32,\), got \(16,\)"):
        plan_from_channels(graph, [importance[0], importance[0], importance[2]], [4, 4, 4])
    with pytest.raises(ConfigError, match="group 0: importance contains NaN"):
        plan_from_channels(graph, [torch.full((16,), math.nan), *importance[1:]], [4, 4, 4])


def test_plan_from_masks_errors() -> None:
    _, graph = _tiny()
    ones = [torch.ones(c) for c in graph.group_sizes]
    with pytest.raises(KeepRatioError, match=r"expected one mask per channel group \(3\), got 2"):
        plan_from_masks(graph, ones[:2])
    with pytest.raises(KeepRatioError, match=r"group 1: expected a mask of shape \(32,\), got \(16,\)"):
        plan_from_masks(graph, [ones[0], ones[0], ones[2]])
    with pytest.raises(KeepRatioError, match=r"group 0: masks must be binary \(0/1\).*0.5"):
        plan_from_masks(graph, [torch.full((16,), 0.5), ones[1], ones[2]])
    with pytest.raises(KeepRatioError, match="group 2: the mask keeps no channel"):
        plan_from_masks(graph, [ones[0], ones[1], torch.zeros(64)])


# ---------------------------------------------------------------------------------------------------------
# errors in surgery, saving and loading
# ---------------------------------------------------------------------------------------------------------
def test_prune_refuses_models_it_cannot_prune_safely() -> None:
    model, graph = _tiny(6)
    plan = plan_from_keep_ratios(graph, group_importance(model, graph), [0.5, 0.5, 0.5])
    masks = ChannelMasks(model, graph)
    with pytest.raises(ConfigError, match=r"still carries ChannelMasks hooks; call masks.remove\(\) before pruning"):
        prune(model, graph, plan)
    masks.remove()
    with pytest.raises(ConfigError, match="prune the module inside the DistributedDataParallel/DataParallel wrapper"):
        prune_(nn.DataParallel(model), graph, plan)
    prune_(model, graph, plan)
    with pytest.raises(TracingError, match=r"layer 'features.0' has 1 inputs and 8 outputs, the channel graph says 1 and 16"):
        prune_(model, graph, plan)  # pruning twice with the dense graph


def test_prune_refuses_parametrized_layers() -> None:
    model, graph = _tiny()
    plan = plan_from_keep_ratios(graph, group_importance(model, graph), [0.5, 0.5, 0.5])
    nn.utils.parametrizations.weight_norm(model.features[3])
    with pytest.raises(ConfigError, match="'features.3' has parametrizations"):
        prune(model, graph, plan)


def _saved(tmp_path: Path, **plan_meta: object) -> tuple[Path, nn.Module]:
    model = _randomise_(create_model("resnet20"), seed=7)
    graph = trace_channel_graph(model, (3, 32, 32))
    plan = plan_from_keep_ratios(graph, group_importance(model, graph), [0.5] * len(graph.groups), **plan_meta)  # type: ignore[arg-type]
    pruned = prune(model, graph, plan)
    return save_pruned(tmp_path / "pruned.pt", pruned, plan), pruned


def test_save_pruned_refuses_extra_that_needs_pickle(tmp_path: Path) -> None:
    model, graph = _tiny()
    plan = plan_from_keep_ratios(graph, group_importance(model, graph), [0.5, 0.5, 0.5])
    with pytest.raises(ConfigError, match=r"extra\['when'\] is a object; save_pruned stores only numbers"):
        save_pruned(tmp_path / "x.pt", model, plan, extra={"when": object()})
    assert list(tmp_path.iterdir()) == []


def test_load_pruned_with_name_from_arguments_and_a_given_dense_model(tmp_path: Path) -> None:
    path, pruned = _saved(tmp_path)  # the plan records no model name
    with pytest.raises(CheckpointError, match=r"saved without a model name.*load_pruned\(path, model=...\)"):
        load_pruned(path)
    reloaded, _ = load_pruned(path, model=create_model("resnet20"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x), pruned.eval()(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=r"the saved plan does not fit the \w+ architecture: the pruning plan"):
        load_pruned(path, model=create_model("resnet56"))
    plan = PruningPlan.from_json(torch.load(path, weights_only=True)["plan"])
    named = save_pruned(tmp_path / "named.pt", pruned, plan, model_name="resnet20", num_classes=10)
    reloaded, plan2 = load_pruned(named)
    assert plan2.model_name == "resnet20" and plan2.num_classes == 10 and plan2.kept == plan.kept
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x), pruned(x), rtol=0, atol=0)


def test_load_pruned_weights_that_do_not_fit(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path, model_name="resnet20", num_classes=10)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["fc.weight"] = torch.zeros(10, 3)
    torch.save(payload, tmp_path / "bad.pt")  # an edit outside save_pruned: the recorded digest no longer matches
    with pytest.raises(CheckpointError, match=r"bad.pt is corrupted: its weights do not match the SHA-256 digest"):
        load_pruned(tmp_path / "bad.pt")
    payload["weights_sha256"] = weights_digest(payload["state_dict"])  # as if save_pruned had written them
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"(?s)the saved weights do not fit the pruned .*size mismatch for fc.weight"):
        load_pruned(tmp_path / "bad.pt")


def test_load_pruned_corrupted_files(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path, model_name="resnet20", num_classes=10)
    data = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read the pruned model .*truncated.pt.*truncated, corrupted"):
        load_pruned(tmp_path / "truncated.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="cannot read the pruned model"):
        load_pruned(tmp_path / "garbage.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="is not a pruned model written by hwdsa.surgery.save_pruned"):
        load_pruned(tmp_path / "other.pt")
    torch.save({"plan": nn.ReLU()}, tmp_path / "pickled.pt")  # code objects are refused, never run
    with pytest.raises(CheckpointError, match="cannot read the pruned model"):
        load_pruned(tmp_path / "pickled.pt")
    payload = torch.load(path, weights_only=True)
    payload["plan"] = "{broken"
    torch.save(payload, tmp_path / "badplan.pt")
    with pytest.raises(CheckpointError, match="holds a malformed pruning plan: a pruning plan must be JSON"):
        load_pruned(tmp_path / "badplan.pt")
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="has format version 99; this hwdsa reads version 2"):
        load_pruned(tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="no pruned model at"):
        load_pruned(tmp_path / "missing.pt")


# ---------------------------------------------------------------------------------------------------------
# integrity of saved pruned models
# ---------------------------------------------------------------------------------------------------------
def _flip_weight_byte(path: Path, *, fix_crc: bool) -> Path:
    """A copy of `path` with one bit flipped inside the largest tensor record (a convolution's weights).

    torch.save writes an uncompressed zip, so the record's bytes are the tensor's bytes. With `fix_crc`,
    the member's CRC-32 (central directory and data descriptor) is recomputed too, so that only the
    digest of the weights can tell.
    """
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        central = archive.start_dir
    assert info.compress_type == zipfile.ZIP_STORED and info.file_size >= 64
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    data[start + 4 * (info.file_size // 8)] ^= 0x01  # the lowest mantissa bit of a float32: still finite
    if fix_crc:
        crc = zlib.crc32(data[start : start + info.file_size])
        pos = central
        while True:  # this member's central directory record: its CRC-32 sits at byte 16
            pos = data.index(b"PK\x01\x02", pos)
            n = struct.unpack_from("<H", data, pos + 28)[0]
            if data[pos + 46 : pos + 46 + n].decode() == info.filename:
                break
            pos += 4
        struct.pack_into("<I", data, pos + 16, crc)
        if info.flag_bits & 0x08:  # a data descriptor follows the data (signature optional), CRC first
            end = start + info.file_size
            struct.pack_into("<I", data, end + 4 if data[end : end + 4] == b"PK\x07\x08" else end, crc)
        else:
            struct.pack_into("<I", data, info.header_offset + 14, crc)
    out = path.with_name("flipped.pt")
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize(
    ("fix_crc", "match"),
    [
        (False, r"flipped.pt is corrupted: the zip checksum of its member data/\d+ does not match"),
        (True, r"flipped.pt is corrupted: its weights do not match the SHA-256 digest save_pruned recorded"),
    ],
)
def test_load_pruned_refuses_a_flipped_byte_in_a_weight(tmp_path: Path, fix_crc: bool, match: str) -> None:
    path, _ = _saved(tmp_path, model_name="resnet20", num_classes=10)
    flipped = _flip_weight_byte(path, fix_crc=fix_crc)
    # the flip lies inside one weight tensor, and torch itself reads the file without complaint
    before, after = torch.load(path, weights_only=True)["state_dict"], torch.load(flipped, weights_only=True)["state_dict"]
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == 1 and changed[0].endswith("weight") and int((before[changed[0]] != after[changed[0]]).sum()) == 1
    assert torch.isfinite(after[changed[0]]).all()
    with zipfile.ZipFile(flipped) as archive:
        assert (archive.testzip() is None) == fix_crc
    with pytest.raises(CheckpointError, match=match) as caught:
        load_pruned(flipped)
    assert "re-export it with hwdsa.surgery.save_pruned" in str(caught.value)
    load_pruned(path)  # the original still loads


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_load_pruned_refuses_non_finite_weights(tmp_path: Path, value: float, caplog: pytest.LogCaptureFixture) -> None:
    model = _randomise_(create_model("resnet20"), seed=7)
    graph = trace_channel_graph(model, (3, 32, 32))
    plan = plan_from_keep_ratios(graph, group_importance(model, graph), [0.5] * len(graph.groups), model_name="resnet20", num_classes=10)
    pruned = prune(model, graph, plan)
    with torch.no_grad():
        pruned.conv1.weight[0, 0, 0, 0] = value
        pruned.fc.weight[0, :2] = value  # a later tensor: the message names the first
    with caplog.at_level(logging.WARNING, logger="hwdsa.surgery"):
        path = save_pruned(tmp_path / "diverged.pt", pruned, plan)  # the digest matches: only finiteness fails
    assert "non-finite values in 'conv1.weight'" in caplog.text
    with pytest.raises(CheckpointError, match=r"diverged.pt holds non-finite weights: 'conv1.weight' has 1 NaN or inf values"):
        load_pruned(path)


def test_load_pruned_reads_version_1_files_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, pruned = _saved(tmp_path, model_name="resnet20", num_classes=10)
    payload = torch.load(path, weights_only=True)
    assert payload["format_version"] == 2 and payload["weights_sha256"] == weights_digest(payload["state_dict"])
    undigested = {k: v for k, v in payload.items() if k != "weights_sha256"}
    torch.save(undigested, tmp_path / "v2_without_digest.pt")
    with pytest.raises(CheckpointError, match="v2_without_digest.pt is corrupted: it lacks the digest of its weights"):
        load_pruned(tmp_path / "v2_without_digest.pt")
    torch.save({**undigested, "format_version": 1}, tmp_path / "v1.pt")  # what hwdsa wrote before the digest
    with caplog.at_level(logging.WARNING, logger="hwdsa.surgery"):
        reloaded, _ = load_pruned(tmp_path / "v1.pt")
    assert "v1.pt has format version 1" in caplog.text and "integrity cannot be checked" in caplog.text
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x), pruned.eval()(x), rtol=0, atol=0)
    undigested["state_dict"]["fc.bias"][0] = float("nan")  # finiteness is still checked
    torch.save({**undigested, "format_version": 1}, tmp_path / "v1_nan.pt")
    with pytest.raises(CheckpointError, match="holds non-finite weights: 'fc.bias'"):
        load_pruned(tmp_path / "v1_nan.pt")


def _edit_plan(plan: dict[str, object], **changes: object) -> dict[str, object]:
    return {**plan, **changes}


@pytest.mark.parametrize(
    ("edit", "also_file_fields", "match"),
    [
        (lambda p: _edit_plan(p, kept=[[], *p["kept"][1:]]), False,
         r"holds a malformed pruning plan: group 0 keeps no channel.*The saved plan does not fit any architecture"),
        (lambda p: _edit_plan(p, model_kwargs={"in_channels": 3}), True,
         r"the saved plan does not fit the SmallCNN architecture: it does not run on the plan's input shape \(2, 1, 28, 28\)"),
        (lambda p: _edit_plan(p, model_kwargs={"in_channels": 3}), False,
         r"the saved plan does not fit the file's own record of the architecture: the plan has model_kwargs=\{'in_channels': 3\}"),
        (lambda p: _edit_plan(p, input_shape=[3, 28, 28]), False,
         r"the saved plan does not fit the SmallCNN architecture: it does not run on the plan's input shape \(2, 3, 28, 28\)"),
        (lambda p: _edit_plan(p, group_sizes=[17, *p["group_sizes"][1:]]), False,
         r"the saved plan does not fit the SmallCNN architecture: the pruning plan .* group 0 has 17 channels in the plan, 16"),
        (lambda p: _edit_plan(p, model_kwargs={"in_channels": 1, "depth": 3}), True,
         r"the saved plan does not fit the 'small_cnn' architecture: model 'small_cnn' does not accept keyword arguments \['depth'\]"),
        (lambda p: _edit_plan(p, model_name="resnet20"), True,
         r"the saved plan does not fit the CifarResNet architecture: the pruning plan \(made for 'resnet20'\) does not fit"),
    ],
    ids=["kept-nothing", "in_channels", "in_channels-plan-only", "input_shape", "group_size", "unknown-kwarg", "model_name"],
)
def test_load_pruned_refuses_an_edited_plan_that_does_not_fit(
    tmp_path: Path, edit: object, also_file_fields: bool, match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _randomise_(create_model("small_cnn", in_channels=1), seed=3)
    graph = trace_channel_graph(model, (1, 28, 28))
    plan = plan_from_keep_ratios(
        graph, group_importance(model, graph), [0.5] * len(graph.groups), model_name="small_cnn", num_classes=10,
        model_kwargs={"in_channels": 1},
    )  # fmt: skip
    path = save_pruned(tmp_path / "pruned.pt", prune(model, graph, plan), plan)
    load_pruned(path)  # unedited, it loads
    payload = torch.load(path, weights_only=True)
    edited = edit(json.loads(payload["plan"]))  # type: ignore[operator]
    payload["plan"] = json.dumps(edited)
    if also_file_fields:  # the fields save_pruned writes beside the plan, edited the same way
        payload["model_name"], payload["model_kwargs"] = edited["model_name"], json.dumps(edited["model_kwargs"])
    torch.save(payload, tmp_path / "edited.pt")  # the weights are untouched: their digest still matches
    capsys.readouterr()
    with pytest.raises(CheckpointError, match=match):
        load_pruned(tmp_path / "edited.pt")
    assert "Traceback" not in capsys.readouterr().err  # no raw traceback from fx's shape propagation
