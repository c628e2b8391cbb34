"""Small hand-built channel graphs and synthetic tables shared by the tests of `hwdsa.lut`.

The graphs are what the tracer would produce for tiny networks, written out by hand so these tests
do not depend on it. Synthetic latencies stand in only where a known shape (a step, a dip) is the
point of the test.
"""

from __future__ import annotations

from collections.abc import Callable

from hwdsa.graph.structure import ChannelGraph, ChannelGroup, InputSegment, LayerNode
from hwdsa.lut.grid import GridConfig, plan_grid
from hwdsa.lut.table import LatencyTable
from hwdsa.profilers.base import LayerSpec, Measurement


def conv(
    name: str,
    segments: list[tuple[int | None, int]],
    out_group: int | None,
    out_channels: int,
    *,
    hw: int = 8,
    kernel: int = 3,
    stride: int = 1,
    depthwise: bool = False,
    activation: str = "none",
) -> LayerNode:
    segs, offset = [], 0
    for group, channels in segments:
        segs.append(InputSegment(group, channels, offset))
        offset += channels
    out_hw = (hw + 2 * (kernel // 2) - kernel) // stride + 1
    return LayerNode(
        name=name,
        kind="conv",
        in_channels=offset,
        out_channels=out_channels,
        in_segments=tuple(segs),
        out_group=out_group,
        is_depthwise=depthwise,
        conv_groups=offset if depthwise else 1,
        kernel_size=(kernel, kernel),
        stride=(stride, stride),
        in_spatial=(hw, hw),
        out_spatial=(out_hw, out_hw),
        has_bias=False,
        padding=(kernel // 2, kernel // 2),
        activation=activation,
    )


def linear(name: str, group: int, in_channels: int, out_features: int) -> LayerNode:
    return LayerNode(
        name=name,
        kind="linear",
        in_channels=in_channels,
        out_channels=out_features,
        in_segments=(InputSegment(group, in_channels, 0),),
        out_group=None,
        is_depthwise=False,
        conv_groups=1,
        kernel_size=(),
        stride=(),
        in_spatial=(),
        out_spatial=(),
        has_bias=True,
    )


def graph_of(layers: list[LayerNode], sizes: list[int], input_shape: tuple[int, ...] = (1, 3, 8, 8)) -> ChannelGraph:
    groups = []
    for g, size in enumerate(sizes):
        producers = tuple(n.name for n in layers if n.out_group == g)
        consumers = tuple(n.name for n in layers if any(s.group == g for s in n.in_segments))
        groups.append(ChannelGroup(g, size, producers, consumers, (), producers))
    return ChannelGraph(tuple(groups), tuple(layers), (), input_shape, 0)


def residual_graph(c0: int = 16, c1: int = 16, hw: int = 8) -> ChannelGraph:
    """stem (3 → g0), block conv1 (g0 → g1), conv2 (g1 → g0, summed with the stem: a residual group), fc."""
    return graph_of(
        [
            conv("stem", [(None, 3)], 0, c0, hw=hw),
            conv("block.conv1", [(0, c0)], 1, c1, hw=hw, activation="relu"),
            conv("block.conv2", [(1, c1)], 0, c0, hw=hw),
            linear("fc", 0, c0, 10),
        ],
        [c0, c1],
    )


def mobile_graph() -> ChannelGraph:
    """stem (3 → g0=16), depthwise (g0), pointwise (g0 → g1=24), concat[g0, g1] → conv (40 → g2=32), fc."""
    return graph_of(
        [
            conv("stem", [(None, 3)], 0, 16),
            conv("dw", [(0, 16)], 0, 16, depthwise=True),
            conv("pw", [(0, 16)], 1, 24, kernel=1),
            conv("fuse", [(0, 16), (1, 24)], 2, 32, kernel=1),
            linear("fc", 2, 32, 10),
        ],
        [16, 24, 32],
    )


def measurement(ms: float, rel_iqr: float = 0.02) -> Measurement:
    return Measurement(ms, ms * (1 - rel_iqr / 2), ms * (1 + rel_iqr / 2), ms * 0.95, 20, 1, False, 0.5)


def synthetic_table(
    graph: ChannelGraph,
    latency: Callable[[LayerSpec], float],
    *,
    config: GridConfig | None = None,
    device: str = "toy-device",
) -> LatencyTable:
    """A table of `latency(spec)` over the grid of `graph` (every count by default)."""
    specs = plan_grid(graph, config=config or GridConfig("full")).specs()
    return LatencyTable.from_measurements(
        [(s, measurement(latency(s))) for s in specs], device=device, backend="synthetic", host="test"
    )


def macs_latency(spec: LayerSpec) -> float:
    """A smooth, increasing latency: a launch overhead plus a term in the multiply-accumulates."""
    h, w = spec.out_size
    macs = spec.in_channels * spec.out_channels * spec.kernel[0] * spec.kernel[1] * h * w / spec.groups
    return 0.01 + 2e-7 * macs
