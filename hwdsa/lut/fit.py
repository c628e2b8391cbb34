"""From a latency table and a network's grid to per-layer latency surfaces on integer channel counts.

Each layer gets the measured medians on its grid of (c_in, c_out) points, an interpolant that
prices every integer count in between, and a monotone version of the surface for the budget (a
budget must not shrink when a channel is added; measured GPU latency sometimes does). `LatencyCost`
turns these surfaces into a differentiable function of the keep ratios.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from hwdsa.errors import TableError
from hwdsa.graph.structure import ChannelGraph
from hwdsa.lut.grid import GridConfig, GridPlan, LayerGrid, plan_grid
from hwdsa.lut.table import LatencyTable
from hwdsa.profilers.base import LayerSpec

_log = logging.getLogger(__name__)

#: "linear", "ceil", or "ceil:N" (round the count up to a multiple of N, then interpolate linearly).
Interpolation = str
Monotone = Literal["cummax", "isotonic"]


# ---------------------------------------------------------------- interpolation on one axis
def parse_interpolation(mode: str) -> tuple[str, int]:
    """("linear" | "ceil" | "align", N) from an interpolation name; raises TableError naming the valid ones."""
    if mode in ("linear", "ceil"):
        return mode, 1
    head, sep, tail = str(mode).partition(":")
    if head == "ceil" and sep and tail.isdigit() and int(tail) >= 1:
        return "align", int(tail)
    raise TableError(f"interpolation must be 'linear', 'ceil' or 'ceil:N' (N a channel multiple, e.g. ceil:16); got {mode!r}")


def interp_weights(points: Sequence[int], lo: int, hi: int, mode: Interpolation = "linear") -> np.ndarray:
    """Weights [hi - lo + 1, len(points)] that price every integer count of [lo, hi] from the points.

    ``"linear"``: the hat functions of piecewise-linear interpolation (exact on the points; a step
    between two points becomes a ramp). ``"ceil"``: all weight on the next point up, the staircase
    assumption of a GPU whose latency is set by tiles (pessimistic elsewhere). ``"ceil:N"``: the
    count is first rounded up to a multiple of N (at most the last point), then priced linearly: a kernel that
    pads channels to blocks of N (ONNX Runtime's NCHWc convolutions pad to 16 with AVX-512, 8 with
    AVX2) costs the same for every count of a block, whatever the grid's spacing.

    Example:
        >>> interp_weights([1, 3], 1, 3)
        array([[1. , 0. ],
               [0.5, 0.5],
               [0. , 1. ]])
        >>> interp_weights([1, 4, 8], 1, 8, "ceil:4")[4:6]  # counts 5 and 6 are priced as 8
        array([[0., 0., 1.],
               [0., 0., 1.]])
    """
    pts = np.asarray(points, dtype=np.int64)
    if pts.size == 0 or pts[0] > lo or pts[-1] < hi or np.any(np.diff(pts) <= 0):
        raise TableError(f"grid points {tuple(points)} must be increasing and cover [{lo}, {hi}]")
    kind, multiple = parse_interpolation(mode)
    counts = np.arange(lo, hi + 1)
    ks = counts if kind != "align" else np.minimum(pts[-1], -(-counts // multiple) * multiple)
    w = np.zeros((ks.size, pts.size))
    j = np.searchsorted(pts, ks, side="left")  # first point >= k
    exact = pts[np.minimum(j, pts.size - 1)] == ks
    rows = np.arange(ks.size)
    w[rows[exact], j[exact]] = 1.0
    between = ~exact
    if kind == "ceil":
        w[rows[between], j[between]] = 1.0
    else:
        right, left = j[between], j[between] - 1
        t = (ks[between] - pts[left]) / (pts[right] - pts[left])
        w[rows[between], left] = 1.0 - t
        w[rows[between], right] = t
    return w


def interp_at(points: Sequence[int], k: int, mode: Interpolation = "linear") -> tuple[tuple[int, float], ...]:
    """The (point index, weight) pairs that price count `k` (one pair when `k` is a point)."""
    w = interp_weights(points, int(k), int(k), mode)[0]
    return tuple((int(i), float(w[i])) for i in np.flatnonzero(w))


# ---------------------------------------------------------------- monotone surfaces
def monotone_envelope(values: np.ndarray) -> np.ndarray:
    """The smallest surface that is >= `values` and non-decreasing along every axis (running maximum).

    Where a larger layer measured faster than a smaller one (a GPU picking a better kernel at an
    aligned width), the larger count is priced at the slower smaller count's latency. The budget
    function thus never under-prices a configuration (a budget met by it is met by the table), and
    `round_to_latency_optimal` recovers the dip afterwards from the true table values.
    """
    out = np.array(values, dtype=np.float64, copy=True)
    for axis in range(out.ndim):
        out = np.maximum.accumulate(out, axis=axis)
    return out


def isotonic_surface(values: np.ndarray, weights: np.ndarray | None = None, *, sweeps: int = 4) -> np.ndarray:
    """A monotone surface close to `values` in (weighted) least squares, then made exactly monotone.

    Alternates scikit-learn's `IsotonicRegression` along each axis (`sweeps` times), which averages
    measurement noise instead of keeping its maxima, then applies `monotone_envelope` so the result is
    non-decreasing along every axis whatever the sweeps left. `weights` (e.g. 1 / IQR²) trust quiet
    measurements more.
    """
    from sklearn.isotonic import IsotonicRegression

    out = np.array(values, dtype=np.float64, copy=True)
    w = np.ones_like(out) if weights is None else np.asarray(weights, dtype=np.float64)
    reg = IsotonicRegression(increasing=True)
    for _ in range(sweeps):
        for axis in range(out.ndim):
            moved = np.moveaxis(out, axis, -1)
            wm = np.moveaxis(w, axis, -1)
            flat, wflat = moved.reshape(-1, moved.shape[-1]), wm.reshape(-1, wm.shape[-1])
            if flat.shape[-1] < 2:
                continue
            x = np.arange(flat.shape[-1], dtype=np.float64)
            fitted = np.stack([reg.fit_transform(x, row, sample_weight=wr) for row, wr in zip(flat, wflat)])
            out = np.moveaxis(fitted.reshape(moved.shape), -1, axis)
    return monotone_envelope(out)


# ---------------------------------------------------------------- fitted layers
@dataclass(frozen=True, eq=False)
class FittedLayer:
    """One layer's latency surface on its grid points.

    `raw_ms` holds the measured medians ([n_in, n_out], or [n] along the diagonal for a ``"diag"``
    layer); `budget_ms` the monotone surface the differentiable cost uses. `exact` prices with
    `raw_ms`, the budget with `budget_ms` (>= raw_ms with the default ``"cummax"``).
    """

    grid: LayerGrid
    raw_ms: np.ndarray
    budget_ms: np.ndarray
    interpolation: Interpolation = "linear"

    @property
    def name(self) -> str:
        return str(self.grid.name)

    def counts(self, channels: Sequence[int], group_sizes: Sequence[int]) -> tuple[int, int]:
        """(c_in, c_out) of this layer when the groups keep `channels`."""
        c_in = self.grid.in_axis.count(channels, group_sizes)
        c_out = c_in if self.grid.shape == "diag" else self.grid.out_axis.count(channels, group_sizes)
        return c_in, c_out

    def latency_ms(self, c_in: int, c_out: int, *, budget: bool = False) -> float:
        """Interpolated latency at integer counts (the measured value when both are grid points)."""
        values = self.budget_ms if budget else self.raw_ms
        g = self.grid
        if not (g.in_axis.lo <= c_in <= g.in_axis.hi):
            raise TableError(f"layer {g.name!r}: c_in={c_in} outside [{g.in_axis.lo}, {g.in_axis.hi}]")
        if self.grid.shape == "diag":
            return float(sum(w * values[i] for i, w in interp_at(g.in_points, c_in, self.interpolation)))
        if not (g.out_axis.lo <= c_out <= g.out_axis.hi):
            raise TableError(f"layer {g.name!r}: c_out={c_out} outside [{g.out_axis.lo}, {g.out_axis.hi}]")
        wi = interp_at(g.in_points, c_in, self.interpolation)
        wo = interp_at(g.out_points, c_out, self.interpolation)
        return float(sum(a * b * values[i, j] for i, a in wi for j, b in wo))

    def is_measured(self, c_in: int, c_out: int) -> bool:
        """Whether (c_in, c_out) is a grid point (its latency is a table entry, not an interpolation)."""
        on_in = c_in in self.grid.in_points
        return on_in if self.grid.shape == "diag" else on_in and c_out in self.grid.out_points

    @property
    def envelope_excess_ms(self) -> float:
        """The largest amount by which the budget surface over-prices a measured point."""
        return float(np.max(self.budget_ms - self.raw_ms)) if self.raw_ms.size else 0.0


_BYTES_PER_WEIGHT = {"fp32": 4, "fp16": 2, "int8": 1}


def weight_mb(spec: LayerSpec) -> float:
    """Megabytes (10^6 bytes) of the layer's weights and bias as deployed, at its precision."""
    kh, kw = spec.kernel
    count = spec.in_channels // spec.groups * spec.out_channels * kh * kw + spec.out_channels
    return count * _BYTES_PER_WEIGHT[spec.precision] / 1e6


def weight_stream_ms(layer: FittedLayer, bandwidth_gbps: float) -> np.ndarray:
    """Time (ms) to stream the layer's weights at `bandwidth_gbps` GB/s (= MB/ms), on its grid points."""
    g = layer.grid
    if g.shape == "diag":
        return np.array([weight_mb(g.spec_at(c, c)) for c in g.in_points]) / bandwidth_gbps
    return np.array([[weight_mb(g.spec_at(ci, co)) for co in g.out_points] for ci in g.in_points]) / bandwidth_gbps


def with_weight_floor(layer: FittedLayer, bandwidth_gbps: float) -> FittedLayer:
    """The layer as a network that streams its weights at `bandwidth_gbps` runs it: max(T, W / bandwidth).

    A layer timed alone finds its weights in the core's caches on every run after the first; in a
    network whose weights exceed them, each layer reads its weights from the shared cache or memory
    on every inference, and one whose weights outweigh its arithmetic (the narrow-spatial end of a
    VGG) runs at that bandwidth. The floor is applied at every grid point, to the measured and the
    budget surface alike (the maximum of two non-decreasing surfaces is non-decreasing).
    """
    floor = weight_stream_ms(layer, bandwidth_gbps)
    return replace(layer, raw_ms=np.maximum(layer.raw_ms, floor), budget_ms=np.maximum(layer.budget_ms, floor))


def _shape_key(spec: LayerSpec) -> tuple[Any, ...]:
    """Everything of a spec but its channel counts (and the depthwise groups that follow them)."""
    groups = "dw" if spec.is_depthwise else spec.groups
    return (
        spec.kind, spec.kernel, spec.stride, spec.padding, groups, spec.in_size, spec.activation,
        spec.batch_size, spec.precision,
    )  # fmt: skip


class _TableIndex:
    """The table's rows grouped by layer shape: shape key -> {(c_in, c_out): (median_ms, iqr_ms)}."""

    def __init__(self, table: LatencyTable) -> None:
        self.by_shape: dict[tuple[Any, ...], dict[tuple[int, int], tuple[float, float]]] = {}
        f = table.frame
        cols = ["kind", "in_channels", "out_channels", "kernel_h", "kernel_w", "stride_h", "stride_w",
                "pad_h", "pad_w", "groups", "in_h", "in_w", "activation", "batch_size", "precision",
                "median_ms", "q1_ms", "q3_ms"]  # fmt: skip
        for r in f.loc[:, cols].itertuples(index=False, name=None):
            kind, ci, co, kh, kw, sh, sw, ph, pw, g, ih, iw, act, bs, prec, med, q1, q3 = r
            value = (float(med), float(q3 - q1))
            rest = ((kh, kw), (sh, sw), (ph, pw))
            # A 1-channel convolution is also the 1-channel point of a depthwise layer: index it as both.
            keyed = ["dw", g] if (kind == "conv" and g == ci == co == 1) else ["dw" if (kind == "conv" and g > 1 and g == ci == co) else g]
            for grp in keyed:
                self.by_shape.setdefault((kind, *rest, grp, (ih, iw), act, bs, prec), {})[(int(ci), int(co))] = value


def _cells_for(index: _TableIndex, lg: LayerGrid) -> dict[tuple[int, int], tuple[float, float]]:
    """The table's measured (c_in, c_out) cells of this layer's shape, in channel units, within range."""
    cells = index.by_shape.get(_shape_key(lg.base), {})
    fpc = lg.features_per_channel
    out: dict[tuple[int, int], tuple[float, float]] = {}
    ai, ao = lg.in_axis, lg.out_axis
    for (ci, co), v in cells.items():
        if ci % fpc:
            continue
        c = ci // fpc
        if ai.lo <= c <= ai.hi and ao.lo <= co <= ao.hi:
            out[(c, co)] = v
    return out


def _missing_error(lg: LayerGrid, missing: Sequence[tuple[int, int]], reason: str) -> TableError:
    specs = [lg.spec_at(i, o) for i, o in missing]
    shown = "; ".join(str(s) for s in specs[:3])
    more = f" and {len(specs) - 3} more" if len(specs) > 3 else ""
    return TableError(
        f"layer {lg.name!r}: the latency table lacks {len(specs)} entr{'y' if len(specs) == 1 else 'ies'} "
        f"({reason}): {shown}{more}. Profile the network's grid (`plan_grid(graph).specs()`, or "
        "`hwdsa profile`) on this device and merge the result into the table"
    )


def _points_from_table(
    lg: LayerGrid, cells: Mapping[tuple[int, int], tuple[float, float]]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The largest complete grid the table holds for this layer: it must reach both ends of each axis.

    Output points are those measured at both the smallest and the largest input count; input points
    those measured at every output point. A table profiled for another network's grid, or a resumed
    partial profile, thus still yields a (coarser) complete grid when it covers the corners.
    """
    ai, ao = lg.in_axis, lg.out_axis
    if lg.shape == "diag":
        pts = tuple(sorted({i for (i, o) in cells if i == o}))
        ends = [(c, c) for c in (ai.lo, ai.hi) if c not in pts]
        if ends:
            raise _missing_error(lg, ends, "the ends of its channel axis")
        return pts, pts
    corners = [(i, o) for i in (ai.lo, ai.hi) for o in (ao.lo, ao.hi) if (i, o) not in cells]
    if corners:
        raise _missing_error(lg, sorted(set(corners)), "the corners of its channel grid")
    outs_hi = {o for (i, o) in cells if i == ai.hi}
    outs_lo = {o for (i, o) in cells if i == ai.lo}
    out_pts = tuple(sorted(outs_hi & outs_lo))
    ins = sorted({i for (i, _) in cells})
    in_pts = tuple(i for i in ins if all((i, o) in cells for o in out_pts))
    return in_pts, out_pts


def _fit_layer(
    table_index: _TableIndex,
    lg: LayerGrid,
    *,
    strict_grid: bool,
    interpolation: Interpolation = "linear",
    monotone: Monotone = "cummax",
) -> FittedLayer:
    """Read one layer's grid from the table and build its surfaces (see `fit_layers`)."""
    cells = _cells_for(table_index, lg)
    if strict_grid:
        needed = lg.cells()
        missing = [c for c in needed if c not in cells]
        if missing:
            raise _missing_error(lg, missing, "points of the requested grid")
        in_pts, out_pts = lg.in_points, lg.out_points
    else:
        in_pts, out_pts = _points_from_table(lg, cells)
    grid = replace(lg, in_points=in_pts, out_points=out_pts)
    if grid.shape == "diag":
        raw = np.array([cells[(c, c)][0] for c in in_pts])
        iqr = np.array([cells[(c, c)][1] for c in in_pts])
    else:
        raw = np.array([[cells[(i, o)][0] for o in out_pts] for i in in_pts])
        iqr = np.array([[cells[(i, o)][1] for o in out_pts] for i in in_pts])
    if monotone == "cummax":
        budget = monotone_envelope(raw)
    elif monotone == "isotonic":
        # Weight by 1/IQR² (floored at 1% of the median, so a lucky zero-IQR point does not dominate).
        spread = np.maximum(iqr, 0.01 * raw)
        budget = isotonic_surface(raw, 1.0 / spread**2)
    else:
        raise TableError(f"monotone must be 'cummax' or 'isotonic'; got {monotone!r}")
    return FittedLayer(grid=grid, raw_ms=raw, budget_ms=budget, interpolation=interpolation)


def fit_layers(
    table: LatencyTable,
    graph: ChannelGraph | GridPlan,
    *,
    grid: GridConfig | None = None,
    interpolation: Interpolation = "linear",
    monotone: Monotone = "cummax",
    activations: Mapping[str, str] | None = None,
    paddings: Mapping[str, tuple[int, int]] | None = None,
) -> tuple[FittedLayer, ...]:
    """The latency surface of every layer of `graph`, read from `table`.

    With `grid` given, exactly that grid's points must be in the table (a missing one raises, naming
    the specs to profile); without it, each layer uses every point the table holds for its shape that
    forms a complete grid reaching both ends of its axes. The table's batch size and precision are used.

    Raises:
        TableError: the table lacks entries the network needs (never priced as 0 ms).
    """
    parse_interpolation(interpolation)
    if isinstance(graph, GridPlan):
        plan = graph
        bad = [lg.name for lg in plan.layers if (lg.base.batch_size, lg.base.precision) != (table.meta.batch_size, table.meta.precision)]
        if bad:
            raise TableError(
                f"the grid plan's batch size/precision differ from the table's ({table.meta.describe()}) "
                f"for layers {', '.join(bad[:5])}"
            )
    else:
        plan = plan_grid(
            graph,
            batch_size=table.meta.batch_size,
            precision=table.meta.precision,
            config=grid,
            activations=activations,
            paddings=paddings,
        )
    index = _TableIndex(table)
    layers = tuple(
        _fit_layer(index, lg, strict_grid=grid is not None, interpolation=interpolation, monotone=monotone)
        for lg in plan.layers
    )
    excess = max((fl.envelope_excess_ms for fl in layers), default=0.0)
    if excess > 0:
        _log.info("non-monotone table entries: the budget surface over-prices a measured point by up to %.4g ms", excess)
    return layers


__all__ = [
    "FittedLayer",
    "Interpolation",
    "Monotone",
    "fit_layers",
    "interp_at",
    "interp_weights",
    "parse_interpolation",
    "isotonic_surface",
    "monotone_envelope",
    "weight_mb",
    "weight_stream_ms",
    "with_weight_floor",
]
