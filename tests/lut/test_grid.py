"""Grids of channel counts to profile, and the LayerSpec of each traced layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _lut_helpers import conv, graph_of, linear, mobile_graph, residual_graph
from hwdsa.errors import ConfigError
from hwdsa.graph.structure import LayerNode
from hwdsa.lut.grid import GridConfig, axis_points, layer_spec, paddings_from_model, plan_grid


class TestAxisPoints:
    def test_gpu_grid(self) -> None:
        pts = axis_points(1, 64)
        assert pts == (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64)

    def test_gpu_grid_keeps_odd_width_and_lower_end(self) -> None:
        pts = axis_points(3, 50)
        assert pts[0] == 3 and pts[-1] == 50
        assert all(p % 8 == 0 for p in pts[1:-1] if p > 4)

    def test_gpu_grid_coarsens_wide_axes(self) -> None:
        pts = axis_points(1, 2048, GridConfig("gpu", max_points=32))
        multiples = [p for p in pts if p > 4]
        assert len(multiples) <= 33
        assert multiples[0] == 64 and all(p % 64 == 0 for p in multiples)

    def test_cpu_grid_is_geometric_and_coarse(self) -> None:
        pts = axis_points(1, 512, GridConfig("cpu", cpu_points=10))
        assert pts[0] == 1 and pts[-1] == 512 and len(pts) <= 10
        ratios = [b / a for a, b in zip(pts[2:], pts[3:])]
        assert max(ratios) < 2.5  # roughly geometric, no holes

    def test_full_grid(self) -> None:
        assert axis_points(2, 6, GridConfig("full")) == (2, 3, 4, 5, 6)

    def test_fixed_axis(self) -> None:
        assert axis_points(3, 3) == (3,)

    def test_bad_range_and_config(self) -> None:
        with pytest.raises(ConfigError, match="1 <= lo <= hi"):
            axis_points(5, 4)
        with pytest.raises(ConfigError, match="mode must be"):
            GridConfig("tpu")  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="multiple must be >= 1"):
            GridConfig(multiple=0)


def _node(hw_in: int, hw_out: int, k: int, s: int) -> LayerNode:
    n = conv("c", [(None, 8)], None, 8, hw=hw_in, kernel=k, stride=s)
    return LayerNode(**{**n.__dict__, "out_spatial": (hw_out, hw_out)})


class TestLayerSpec:
    @pytest.mark.parametrize(
        ("hw_in", "hw_out", "k", "s", "pad"),
        [(32, 32, 3, 1, 1), (32, 16, 3, 2, 1), (32, 16, 1, 2, 0), (224, 112, 7, 2, 3), (8, 8, 1, 1, 0), (9, 5, 3, 2, 1)],
    )
    def test_padding_is_derived_like_pytorch(self, hw_in: int, hw_out: int, k: int, s: int, pad: int) -> None:
        spec = layer_spec(_node(hw_in, hw_out, k, s))
        assert spec.padding == (pad, pad)
        out = nn.Conv2d(8, 8, k, s, pad)(torch.zeros(1, 8, hw_in, hw_in))
        assert spec.out_size == tuple(out.shape[2:]) == (hw_out, hw_out)

    def test_traced_activation_and_overrides(self) -> None:
        node = LayerNode(**{**_node(8, 8, 3, 1).__dict__, "activation": "relu6"})
        spec = layer_spec(node, batch_size=4, precision="fp16")
        assert (spec.activation, spec.batch_size, spec.precision, spec.kind) == ("relu6", 4, "fp16", "conv")
        assert layer_spec(node, activation="none").activation == "none"
        assert layer_spec(_node(8, 8, 3, 1)).activation == "none"

    def test_traced_padding_is_used(self) -> None:
        node = LayerNode(**{**_node(8, 6, 3, 1).__dict__, "padding": (0, 0)})
        assert layer_spec(node).padding == (0, 0)

    def test_padding_that_contradicts_the_trace(self) -> None:
        with pytest.raises(ConfigError, match="padding \\(0, 0\\) gives output size \\(6, 6\\).*traced output is \\(8, 8\\)"):
            layer_spec(_node(8, 8, 3, 1), padding=(0, 0))

    def test_linear(self) -> None:
        spec = layer_spec(linear("fc", 0, 64, 10))
        assert (spec.kind, spec.in_channels, spec.out_channels, spec.activation) == ("linear", 64, 10, "none")

    def test_linear_after_flatten_counts_features(self) -> None:
        node = LayerNode(**{**linear("fc", 0, 16, 10).__dict__, "features_per_channel": 4})
        assert layer_spec(node).in_channels == 64

    def test_non_2d_conv_refused(self) -> None:
        node = LayerNode(**{**conv("c", [(None, 4)], None, 4).__dict__, "kernel_size": (3,), "stride": (1,), "in_spatial": (8,), "out_spatial": (8,)})
        with pytest.raises(ConfigError, match="2-D convolutions only"):
            layer_spec(node)

    def test_paddings_from_model(self) -> None:
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 5, padding=(2, 1)), nn.Conv2d(8, 8, 3, padding="same"))
        assert paddings_from_model(model) == {"0": (1, 1), "2": (2, 1)}


class TestPlan:
    def test_residual_graph_axes(self) -> None:
        plan = plan_grid(residual_graph(16, 24))
        stem, conv1, conv2, fc = plan.layers
        assert stem.in_points == (3,) and stem.out_points == (1, 2, 4, 8, 16)
        assert conv1.in_axis.terms == ((0, 16),) and conv1.out_axis.terms == ((1, 24),)
        assert conv1.out_points == (1, 2, 4, 8, 16, 24)
        assert conv2.shape == "2d" and conv2.out_axis.terms == ((0, 16),)
        assert fc.out_points == (10,) and fc.base.kind == "linear"
        assert len(conv1.specs()) == 5 * 6

    def test_specs_are_deduplicated(self) -> None:
        plan = plan_grid(residual_graph(16, 16), activations={"block.conv2": "relu"})
        specs = plan.specs()
        assert len(specs) == len(set(specs))
        # conv1 (g0 -> g1) and conv2 (g1 -> g0) now share every shape: one set of entries serves both.
        per_layer = sum(len(lg.specs()) for lg in plan.layers)
        assert len(specs) == per_layer - len(plan.layers[2].specs())

    def test_depthwise_is_one_dimensional(self) -> None:
        plan = plan_grid(mobile_graph())
        dw = plan.layer("dw")
        assert dw.shape == "diag" and dw.cells() == [(c, c) for c in (1, 2, 4, 8, 16)]
        assert all(s.groups == s.in_channels == s.out_channels for s in dw.specs())
        assert all(s.is_depthwise for s in dw.specs()[1:])  # one channel is a plain 1 -> 1 convolution

    def test_concat_axis_sums_its_groups(self) -> None:
        fuse = plan_grid(mobile_graph()).layer("fuse")
        assert fuse.in_axis.terms == ((0, 16), (1, 24))
        assert (fuse.in_axis.lo, fuse.in_axis.hi) == (2, 40)
        assert fuse.in_points[0] == 2 and fuse.in_points[-1] == 40
        assert fuse.in_axis.count([4, 10, 32], [16, 24, 32]) == 14

    def test_batch_precision_and_activation_overrides(self) -> None:
        plan = plan_grid(residual_graph(), batch_size=8, precision="fp16", activations={"block.conv2": "none"})
        assert all(s.batch_size == 8 and s.precision == "fp16" for s in plan.specs())
        assert plan.layer("block.conv2").base.activation == "none"
        assert plan.layer("block.conv1").base.activation == "relu"  # as traced (see residual_graph)

    def test_unknown_layer_override(self) -> None:
        with pytest.raises(ConfigError, match="layers the graph does not have: nope"):
            plan_grid(residual_graph(), activations={"nope": "relu"})

    def test_grouped_conv_with_pruned_channels_refused(self) -> None:
        node = LayerNode(**{**conv("g", [(0, 16)], 1, 16).__dict__, "conv_groups": 4})
        graph = graph_of([conv("stem", [(None, 3)], 0, 16), node], [16, 16])
        with pytest.raises(ConfigError, match="grouped convolution \\(groups=4\\)"):
            plan_grid(graph)

    def test_cpu_plan_is_smaller(self) -> None:
        gpu = plan_grid(residual_graph(64, 64)).specs()
        cpu = plan_grid(residual_graph(64, 64), config=GridConfig("cpu", cpu_points=5)).specs()
        assert len(cpu) < len(gpu)


class _TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.conv1 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.short = nn.Conv2d(16, 32, 1, stride=2, bias=False)
        self.bns = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y)) + self.bns(self.short(x))
        y = torch.relu(self.dw(torch.relu(y)))
        return self.fc(torch.flatten(y, 1))


def test_plan_of_a_traced_model_reproduces_every_layer() -> None:
    """Each traced layer's spec, run as a real convolution, gives the traced output shape."""
    from hwdsa.graph import trace_channel_graph

    model = _TinyResNet()
    graph = trace_channel_graph(model, (3, 8, 8))
    plan = plan_grid(graph, config=GridConfig("cpu", cpu_points=3))
    by_name = dict(model.named_modules())
    for lg in plan.layers:
        mod = by_name[lg.name]
        spec = lg.spec_at(lg.in_axis.hi, lg.out_axis.hi)
        if spec.kind == "conv":
            assert isinstance(mod, nn.Conv2d)
            assert (spec.in_channels, spec.out_channels, spec.groups) == (mod.in_channels, mod.out_channels, mod.groups)
            assert spec.padding == mod.padding and spec.stride == mod.stride
        else:
            assert isinstance(mod, nn.Linear)
            assert (spec.in_channels, spec.out_channels) == (mod.in_features, mod.out_features)
    assert plan.layer("conv1").base.activation == "relu"
    assert plan.layer("conv2").base.activation == "none"  # the addition comes first
    assert plan.layer("dw").shape == "diag"
    fc = plan.layer("fc")
    assert fc.features_per_channel == 16 and fc.spec_at(8, 10).in_channels == 8 * 16
