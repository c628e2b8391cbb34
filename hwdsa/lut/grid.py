"""Which layer configurations to profile for a network: a grid of channel counts per prunable layer.

Pruning can leave any count between one channel per group and the full width, so every layer of a
`ChannelGraph` gets a grid of (in_channels, out_channels) points that spans that range: dense where
latency steps (GPU tiles: multiples of 8/16/32), geometric where it is smooth (CPU). The cost model
interpolates between the points; the profiler measures each distinct `LayerSpec` once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from hwdsa.errors import ConfigError
from hwdsa.graph.structure import ChannelGraph, LayerNode
from hwdsa.profilers.base import ACTIVATIONS, PRECISIONS, LayerSpec

_log = logging.getLogger(__name__)

GridMode = Literal["gpu", "cpu", "full"]
#: The grid modes (`GridConfig.mode`), as `hwdsa profile --grid` offers them.
GRID_MODES: tuple[str, ...] = get_args(GridMode)


@dataclass(frozen=True)
class GridConfig:
    """How densely each channel axis is sampled.

    Attributes:
        mode: ``"gpu"``: {1, 2, 4} ∪ every multiple of `multiple` ∪ the full width, because GPU
            latency is a staircase whose treads are tile multiples; the multiple doubles until at
            most `max_points` multiples fit (a 2048-wide axis is sampled every 64 channels).
            ``"cpu"``: `cpu_points` geometric points between the axis ends, snapped to multiples of
            `multiple` (CPU latency is close to linear in channels, so a coarse grid interpolates well).
            ``"full"``: every count (small networks, or to study a staircase).
        multiple: the step of the GPU grid and the snap of the CPU grid.
        max_points: cap on the multiples per axis in GPU mode.
        cpu_points: geometric points per axis in CPU mode.
    """

    mode: GridMode = "gpu"
    multiple: int = 8
    max_points: int = 32
    cpu_points: int = 10

    def __post_init__(self) -> None:
        if self.mode not in GRID_MODES:
            raise ConfigError(f"GridConfig.mode must be one of {', '.join(GRID_MODES)}; got {self.mode!r}")
        if self.multiple < 1:
            raise ConfigError(f"GridConfig.multiple must be >= 1; got {self.multiple}")
        if self.max_points < 2:
            raise ConfigError(f"GridConfig.max_points must be >= 2; got {self.max_points}")
        if self.cpu_points < 2:
            raise ConfigError(f"GridConfig.cpu_points must be >= 2; got {self.cpu_points}")


def axis_points(lo: int, hi: int, config: GridConfig | None = None) -> tuple[int, ...]:
    """Sorted channel counts sampled on an axis that pruning can set to any value in [lo, hi].

    Both ends are always included, so the grid covers every count without extrapolation.

    Example:
        >>> axis_points(1, 40)
        (1, 2, 4, 8, 16, 24, 32, 40)
        >>> axis_points(3, 3)
        (3,)
    """
    cfg = config or GridConfig()
    if lo < 1 or hi < lo:
        raise ConfigError(f"an axis needs 1 <= lo <= hi; got lo={lo}, hi={hi}")
    points: set[int] = {lo, hi}
    if cfg.mode == "full":
        points.update(range(lo, hi + 1))
    elif cfg.mode == "gpu":
        step = cfg.multiple
        while hi // step > cfg.max_points:
            step *= 2
        points.update((1, 2, 4))
        points.update(range(step, hi + 1, step))
    else:
        n = cfg.cpu_points
        for i in range(n):
            v = lo * (hi / lo) ** (i / (n - 1))
            if v >= 2 * cfg.multiple:
                v = cfg.multiple * round(v / cfg.multiple)
            points.add(int(round(v)))
    return tuple(sorted(p for p in points if lo <= p <= hi))


@dataclass(frozen=True)
class Axis:
    """One channel dimension of a layer as a function of the groups' kept counts.

    The count is ``fixed + Σ_g round(k_g · channels_g / C_g)`` over `terms` = ((g, channels_g), ...):
    `channels_g` is how many of the dimension's channels group g supplies at full width (its
    segments summed; usually C_g itself). `lo`/`hi` are the counts with one / all channels kept.
    """

    fixed: int
    terms: tuple[tuple[int, int], ...]
    lo: int
    hi: int

    @property
    def is_fixed(self) -> bool:
        return not self.terms

    def count(self, channels: Sequence[int], group_sizes: Sequence[int]) -> int:
        """The dimension's channel count when group g keeps `channels[g]` channels."""
        n = self.fixed
        for g, full in self.terms:
            size = group_sizes[g]
            n += int(channels[g]) if full == size else max(1, round(int(channels[g]) * full / size))
        return n

    def key(self) -> tuple[Any, ...]:
        return (self.fixed, self.terms, self.lo, self.hi)


def _axis(fixed: int, per_group: Mapping[int, int], group_sizes: Sequence[int]) -> Axis:
    terms = tuple(sorted(per_group.items()))
    lo = fixed + sum(max(1, round(full / group_sizes[g])) for g, full in terms)
    hi = fixed + sum(full for _, full in terms)
    return Axis(fixed=fixed, terms=terms, lo=lo, hi=hi)


def in_axis(node: LayerNode, group_sizes: Sequence[int]) -> Axis:
    """The input-channel axis of `node` (in channels, not linear features), from its input segments."""
    fixed = 0
    per_group: dict[int, int] = {}
    for seg in node.in_segments:
        if seg.group is None:
            fixed += seg.channels
        else:
            per_group[seg.group] = per_group.get(seg.group, 0) + seg.channels
    return _axis(fixed, per_group, group_sizes)


def out_axis(node: LayerNode, group_sizes: Sequence[int]) -> Axis:
    """The output-channel axis of `node`: its group's count, or fixed when the outputs are not pruned."""
    if node.out_group is None:
        return _axis(node.out_channels, {}, group_sizes)
    return _axis(0, {node.out_group: node.out_channels}, group_sizes)


def _derive_padding(node: LayerNode) -> tuple[int, int]:
    """Symmetric padding that maps `in_spatial` to `out_spatial` under the node's kernel and stride."""
    pads = []
    for size_in, size_out, k, s in zip(node.in_spatial, node.out_spatial, node.kernel_size, node.stride):
        pads.append(max(0, math.ceil(((size_out - 1) * s + k - size_in) / 2)))
    return pads[0], pads[1]


def layer_spec(
    node: LayerNode,
    *,
    batch_size: int = 1,
    precision: str = "fp32",
    activation: str | None = None,
    padding: tuple[int, int] | None = None,
) -> LayerSpec:
    """The `LayerSpec` of `node` at full width.

    The activation is the one the tracer recorded after the layer (`node.activation`, the one the
    deployed engine fuses), unless `activation` overrides it. The padding is `padding`, else the
    traced `node.padding`, else the symmetric padding that reproduces the traced output size (a
    ``padding="same"`` convolution); either way it must reproduce the traced output size.

    Raises:
        ConfigError: a convolution that is not 2-D, or a padding that does not reproduce the output size.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    if node.kind == "linear":
        act = activation or node.activation or "none"
        c_in = sum(seg.channels for seg in node.in_segments) or node.in_channels
        return LayerSpec(
            "linear",
            c_in * node.features_per_channel,
            node.out_channels,
            activation=act,
            batch_size=batch_size,
            precision=precision,
        )
    if node.kind != "conv":
        raise ConfigError(f"layer {node.name!r}: kind must be 'conv' or 'linear'; got {node.kind!r}")
    if not (len(node.kernel_size) == len(node.stride) == len(node.in_spatial) == len(node.out_spatial) == 2):
        raise ConfigError(
            f"layer {node.name!r}: latency tables cover 2-D convolutions only; got kernel {node.kernel_size}, "
            f"input size {node.in_spatial}"
        )
    act = activation or node.activation or "none"
    if act not in ACTIVATIONS:
        raise ConfigError(f"layer {node.name!r}: activation must be one of {ACTIVATIONS}; got {act!r}")
    if padding is not None:
        pad = padding
    elif len(node.padding) == 2:
        pad = (int(node.padding[0]), int(node.padding[1]))
    else:
        pad = _derive_padding(node)
    spec = LayerSpec(
        "conv",
        node.in_channels,
        node.out_channels,
        kernel=(int(node.kernel_size[0]), int(node.kernel_size[1])),
        stride=(int(node.stride[0]), int(node.stride[1])),
        padding=(int(pad[0]), int(pad[1])),
        groups=node.conv_groups,
        in_size=(int(node.in_spatial[0]), int(node.in_spatial[1])),
        activation=act,
        batch_size=batch_size,
        precision=precision,
    )
    if spec.out_size != tuple(node.out_spatial):
        raise ConfigError(
            f"layer {node.name!r}: padding {spec.padding} gives output size {spec.out_size}, but the traced output "
            f"is {tuple(node.out_spatial)} (a dilated or asymmetrically padded convolution has no table entry "
            "shape yet); pass its padding explicitly (paddings=paddings_from_model(model))"
        )
    return spec


def paddings_from_model(model: Any) -> dict[str, tuple[int, int]]:
    """The padding of every `nn.Conv2d` of `model` by qualified name, for `plan_grid(paddings=...)`.

    Only integer paddings are returned; ``padding="same"`` convolutions are left to the derivation.
    """
    from torch import nn

    out: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and not isinstance(module.padding, str):
            ph, pw = module.padding
            out[name] = (int(ph), int(pw))
    return out


LayerShape = Literal["2d", "diag"]


@dataclass(frozen=True)
class LayerGrid:
    """The grid of one layer: its full-width spec, its channel axes and the points sampled on each.

    `shape` is ``"diag"`` when the input and output counts are one and the same number (a depthwise
    convolution, or a layer whose input and output belong to the same group): only (c, c) exists.
    """

    name: str
    base: LayerSpec
    in_axis: Axis
    out_axis: Axis
    in_points: tuple[int, ...]
    out_points: tuple[int, ...]
    shape: LayerShape
    features_per_channel: int = 1

    def spec_at(self, c_in: int, c_out: int) -> LayerSpec:
        """The spec of this layer with `c_in` input channels and `c_out` output channels."""
        b = self.base
        if b.kind == "linear":
            return LayerSpec(
                "linear",
                int(c_in) * self.features_per_channel,
                int(c_out),
                activation=b.activation,
                batch_size=b.batch_size,
                precision=b.precision,
            )
        groups = int(c_in) if b.is_depthwise else b.groups
        return LayerSpec(
            "conv",
            int(c_in),
            int(c_out),
            kernel=b.kernel,
            stride=b.stride,
            padding=b.padding,
            groups=groups,
            in_size=b.in_size,
            activation=b.activation,
            batch_size=b.batch_size,
            precision=b.precision,
        )

    def cells(self) -> list[tuple[int, int]]:
        """The (c_in, c_out) pairs to measure: the cartesian product, or the diagonal."""
        if self.shape == "diag":
            return [(c, c) for c in self.in_points]
        return [(i, o) for i in self.in_points for o in self.out_points]

    def specs(self) -> list[LayerSpec]:
        return [self.spec_at(i, o) for i, o in self.cells()]


@dataclass(frozen=True)
class GridPlan:
    """The grids of every layer of a network, and the deduplicated specs to profile."""

    layers: tuple[LayerGrid, ...]
    config: GridConfig = field(default_factory=GridConfig)

    def specs(self) -> list[LayerSpec]:
        """Every distinct spec of every layer, sorted (layers that share a shape share entries)."""
        unique = {s for layer in self.layers for s in layer.specs()}
        return sorted(unique, key=lambda s: tuple(s.to_row().values()))

    def layer(self, name: str) -> LayerGrid:
        for lg in self.layers:
            if lg.name == name:
                return lg
        raise KeyError(f"no layer named {name!r} in the grid plan")


def layer_grid(
    node: LayerNode,
    group_sizes: Sequence[int],
    *,
    batch_size: int = 1,
    precision: str = "fp32",
    config: GridConfig | None = None,
    activation: str | None = None,
    padding: tuple[int, int] | None = None,
) -> LayerGrid:
    """The grid of one layer (see `plan_grid`)."""
    cfg = config or GridConfig()
    base = layer_spec(node, batch_size=batch_size, precision=precision, activation=activation, padding=padding)
    ax_in, ax_out = in_axis(node, group_sizes), out_axis(node, group_sizes)
    if base.kind == "conv" and base.groups > 1 and not base.is_depthwise and not (ax_in.is_fixed and ax_out.is_fixed):
        raise ConfigError(
            f"layer {node.name!r}: a grouped convolution (groups={base.groups}) with prunable channels has no "
            "latency grid (counts must stay divisible by the groups); exclude its channels from pruning"
        )
    if base.is_depthwise and ax_in.key() != ax_out.key():
        raise ConfigError(
            f"layer {node.name!r}: a depthwise convolution must take its output count from its input group; "
            f"got input axis {ax_in} and output axis {ax_out}"
        )
    same = ax_in.key() == ax_out.key() and not ax_in.is_fixed
    shape: LayerShape = "diag" if (base.is_depthwise or same) else "2d"
    pts_in = axis_points(ax_in.lo, ax_in.hi, cfg)
    pts_out = pts_in if shape == "diag" else axis_points(ax_out.lo, ax_out.hi, cfg)
    return LayerGrid(
        name=node.name,
        base=base,
        in_axis=ax_in,
        out_axis=ax_out,
        in_points=pts_in,
        out_points=pts_out,
        shape=shape,
        features_per_channel=node.features_per_channel if node.kind == "linear" else 1,
    )


def plan_grid(
    graph: ChannelGraph,
    *,
    batch_size: int = 1,
    precision: str = "fp32",
    config: GridConfig | None = None,
    activations: Mapping[str, str] | None = None,
    paddings: Mapping[str, tuple[int, int]] | None = None,
) -> GridPlan:
    """The grid of every conv/linear layer of `graph` (fixed layers get a single point).

    `activations` and `paddings` override, per layer name, what `layer_spec` assumes.

    Example:
        >>> from hwdsa.lut.grid import plan_grid, GridConfig
        >>> plan = plan_grid(graph, config=GridConfig("cpu"))  # doctest: +SKIP
        >>> specs = plan.specs()  # hand these to the profiler  # doctest: +SKIP
    """
    cfg = config or GridConfig()
    acts = dict(activations or {})
    pads = dict(paddings or {})
    unknown = (set(acts) | set(pads)) - {n.name for n in graph.layers}
    if unknown:
        raise ConfigError(
            f"activations/paddings name layers the graph does not have: {', '.join(sorted(unknown))}; "
            f"layers: {', '.join(n.name for n in graph.layers)}"
        )
    sizes = graph.group_sizes
    layers = tuple(
        layer_grid(
            node,
            sizes,
            batch_size=batch_size,
            precision=precision,
            config=cfg,
            activation=acts.get(node.name),
            padding=pads.get(node.name),
        )
        for node in graph.layers
    )
    plan = GridPlan(layers=layers, config=cfg)
    _log.debug("grid plan: %d layers, %d distinct specs (%s mode)", len(layers), len(plan.specs()), cfg.mode)
    return plan


def grid_specs(graph: ChannelGraph, **kwargs: Any) -> list[LayerSpec]:
    """`plan_grid(graph, **kwargs).specs()`: the specs to profile for `graph`."""
    return plan_grid(graph, **kwargs).specs()


__all__ = [
    "GRID_MODES",
    "Axis",
    "GridConfig",
    "GridPlan",
    "LayerGrid",
    "axis_points",
    "grid_specs",
    "in_axis",
    "layer_grid",
    "layer_spec",
    "out_axis",
    "paddings_from_model",
    "plan_grid",
]
