"""LatencyCost: measured latency as a differentiable, non-decreasing function of the keep ratios.

The kept count K_g of group g is, under DSA's Bernoulli masks, a sum of independent draws with mean
α_g·C_g and variance Σ_c p_c(1 − p_c). The cost is the expected table latency over

    K_g = round(α_g·C_g + U + σ_g·Z),  U ~ Uniform(−½, ½),  Z ~ N(0, 1)

    cost(α) = scale · Σ_l E[T_l(K_in,l, K_out,l)] + offset_ms

U makes the rounding stochastic, so E[K_g] = α_g·C_g exactly and σ = 0 is linear interpolation between
integer counts; σ_g (``std``: DSA's spread, or a few channels) makes the cost smooth across a
latency staircase, which it sharpens back to as σ → 0 (masks becoming deterministic).

T_l is interpolated from the layer's measured grid, and the budget uses its monotone envelope so the
cost never decreases when a channel is added (section 7 of the design note); `exact` prices integer
counts with the true table values. A calibration with a weight bandwidth floors every grid value at
the time the layer's weights take to stream (`hwdsa.lut.fit.with_weight_floor`) before anything else;
one with a spill step adds `spill_ms` where the network's (expected) weight footprint exceeds its
capacity: a step without a gradient, which keeps the cost non-decreasing, as a staircase does; one with
a footprint term adds `footprint_ms` times the square root of the expected footprint, and a stream term
`stream_ms_per_mb` for every expected MB beyond its capacity, both with their gradient. A
layer's input count (a sum over concatenated groups, with variances added) and output count are
taken as independent, which they are unless one group feeds
both sides through a concatenation; a layer whose input and output are one and the same group (a
depthwise convolution) is priced along the diagonal.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hwdsa.costs import check_channels, check_keep_ratios
from hwdsa.errors import ConfigError, TableError
from hwdsa.graph.structure import ChannelGraph
from hwdsa.lut.calibrate import Calibration, calibrations, graph_signature
from hwdsa.lut.fit import FittedLayer, Interpolation, Monotone, fit_layers, interp_weights, weight_mb, with_weight_floor
from hwdsa.lut.grid import Axis, GridConfig
from hwdsa.lut.table import LatencyTable, TableMeta
from hwdsa.profilers.base import LayerSpec

_log = logging.getLogger(__name__)

# σ = 0 by default: the cost is then the table's surface interpolated linearly between integer counts,
# exact at integers (so the budget at the final counts is what the search saw). Pass a spread to smooth
# a staircase (section 7 of the design note).
DEFAULT_STD = 0.0
# Spreads below this are computed as this (the smoothed step is then a ramp to within 1e-12).
_MIN_STD = 1e-3


@dataclass(frozen=True)
class LayerLatency:
    """One layer's share of `LatencyCost.breakdown`: its spec at the given counts and its latency."""

    name: str
    spec: LayerSpec
    latency_ms: float
    is_measured: bool
    """False when the counts fall between grid points and the latency is interpolated."""


class _AxisWeights:
    """How one axis prices integer counts from a layer's grid points, including linear extension.

    `core` [hi - lo + 1, n_points] interpolates every count of [lo, hi]; beyond the ends the surface
    is extended linearly (slope of the two outermost points), so probability mass that spills past
    an end (a spread at α = 1) is priced without bias and without breaking monotonicity.
    """

    def __init__(self, points: tuple[int, ...], lo: int, hi: int, mode: Interpolation, device: torch.device) -> None:
        f64 = torch.float64
        self.core = torch.tensor(interp_weights(points, lo, hi, mode), dtype=f64, device=device)
        n = len(points)
        eye = torch.eye(n, dtype=f64, device=device)
        if n > 1:
            self.slope_lo = (eye[1] - eye[0]) / (points[1] - points[0])
            self.slope_hi = (eye[-1] - eye[-2]) / (points[-1] - points[-2])
        else:
            self.slope_lo = self.slope_hi = torch.zeros(n, dtype=f64, device=device)


class _Buffers:
    """Per-device tensors of the cost (built on first use on a device)."""

    def __init__(self, cost: LatencyCost, device: torch.device) -> None:
        f64 = torch.float64
        sizes = torch.tensor(cost.group_sizes, dtype=f64, device=device)
        self.axes: list[tuple[Axis, Tensor, Tensor, Tensor]] = []  # axis, groups, channels, coef
        self.axes_np: list[tuple[np.ndarray, np.ndarray]] = []  # groups, coef (to size the support on the host)
        for ax in cost._axes:
            self.axes_np.append(
                (
                    np.array([t[0] for t in ax.terms], dtype=np.int64),
                    np.array([t[1] / cost.group_sizes[t[0]] for t in ax.terms], dtype=np.float64),
                )
            )
            g = torch.tensor([t[0] for t in ax.terms], dtype=torch.long, device=device)
            ch = torch.tensor([t[1] for t in ax.terms], dtype=f64, device=device)
            coef = ch / sizes[g] if ax.terms else ch
            self.axes.append((ax, g, ch, coef))
        self.weights: dict[tuple[Any, ...], _AxisWeights] = {}
        self.layers: list[tuple[tuple[Any, ...], tuple[Any, ...], Tensor]] = []  # in key, out key, values
        for fl, (ai, ao) in zip(cost.layers, cost._layer_axes):
            lg = fl.grid
            keys = []
            for axis_id, pts in ((ai, lg.in_points), (ao, lg.out_points)):
                ax = cost._axes[axis_id]
                key = (axis_id, pts, fl.interpolation)
                if key not in self.weights:
                    self.weights[key] = _AxisWeights(pts, ax.lo, ax.hi, fl.interpolation, device)
                keys.append(key)
            self.layers.append((keys[0], keys[1], torch.tensor(fl.budget_ms, dtype=f64, device=device)))
        # Weight MB of each layer at the corners of its (c_in, c_out) range: weights are bilinear in the two
        # counts (linear along a depthwise diagonal), so interpolating the corners at the expected counts is
        # the expected footprint (independent axes). Only a calibration that prices the footprint reads it.
        self.footprint: list[tuple[int, int, bool, tuple[float, float, float, float], tuple[float, float, float, float]]] = []
        reads = cost.calibration is not None and cost.calibration.reads_weights
        for fl, (ai, ao) in zip(cost.layers if reads else (), cost._layer_axes):
            a_in, a_out = cost._axes[ai], cost._axes[ao]
            diag = fl.grid.shape == "diag"
            if diag:  # (lo, hi, W(lo), W(hi)) along the diagonal, the second tuple unused
                ends = (weight_mb(fl.grid.spec_at(a_in.lo, a_in.lo)), weight_mb(fl.grid.spec_at(a_in.hi, a_in.hi)))
                self.footprint.append((ai, ao, True, (float(a_in.lo), float(a_in.hi), *ends), (0.0, 0.0, 0.0, 0.0)))
            else:  # (lo_in, hi_in, lo_out, hi_out) and W at (lo, lo), (lo, hi), (hi, lo), (hi, hi)
                w = [weight_mb(fl.grid.spec_at(ci, co)) for ci in (a_in.lo, a_in.hi) for co in (a_out.lo, a_out.hi)]
                rng = (float(a_in.lo), float(a_in.hi), float(a_out.lo), float(a_out.hi))
                self.footprint.append((ai, ao, False, rng, (w[0], w[1], w[2], w[3])))


class LatencyCost:
    """Latency in ms of a network on one device, from its lookup table (implements `CostModel`).

    Build it with `LatencyCost.fit(table, graph)`. Calling it on keep ratios gives the smoothed
    budget cost (differentiable, non-decreasing in every ratio); `exact` prices integer channel counts
    with the measured table values, `breakdown` shows the per-layer terms.

    Example:
        >>> table = LatencyTable.read("rtx4090-trt-fp16.csv", expect_device="rtx-4090")  # doctest: +SKIP
        >>> cost = LatencyCost.fit(table, trace_channel_graph(model, (3, 224, 224)))  # doctest: +SKIP
        >>> budget = Budget.fraction_of_dense(cost, 0.5)  # half the measured latency  # doctest: +SKIP
        >>> cost(keep_ratios).backward()  # differentiable in the keep ratios  # doctest: +SKIP
        >>> cost.exact([16, 32, 24])  # ms of the network pruned to these counts  # doctest: +SKIP
    """

    name: str = "latency"
    unit: str = "ms"

    def __init__(
        self,
        layers: Sequence[FittedLayer],
        group_sizes: Sequence[int],
        *,
        graph_signature: str,
        calibration: Calibration | None = None,
        default_std: float | Sequence[float] = DEFAULT_STD,
        meta: TableMeta | None = None,
    ) -> None:
        self.table_layers: tuple[FittedLayer, ...] = tuple(layers)
        """The layers as the table prices them (what a calibration is fitted on)."""
        bandwidth = None if calibration is None else calibration.weight_bandwidth_gbps
        self.layers: tuple[FittedLayer, ...] = (
            self.table_layers if bandwidth is None else tuple(with_weight_floor(fl, bandwidth) for fl in self.table_layers)
        )
        """The layers as the calibrated network runs them (the table, floored by the weight stream)."""
        self.group_sizes: tuple[int, ...] = tuple(int(c) for c in group_sizes)
        self.graph_signature = graph_signature
        self.calibration = calibration
        self.meta = meta
        if calibration is not None and calibration.graph_signature != graph_signature:
            raise TableError(
                f"calibration fitted on network {calibration.graph_signature} cannot apply to network "
                f"{graph_signature}; fit one for this network with `fit_calibration`"
            )
        std = np.broadcast_to(np.asarray(default_std, dtype=np.float64), (len(self.group_sizes),)).copy()
        if not np.all(np.isfinite(std)) or np.any(std < 0):
            raise ConfigError(f"default_std must be finite and >= 0 channels; got {default_std}")
        self.default_std: tuple[float, ...] = tuple(std.tolist())
        # Deduplicate axes: a group's count feeds many layers, and its distribution is computed once.
        axes: dict[tuple[Any, ...], int] = {}
        self._axes: list[Axis] = []
        self._layer_axes: list[tuple[int, int]] = []
        for fl in self.layers:
            ids = []
            for ax in (fl.grid.in_axis, fl.grid.out_axis):
                if ax.key() not in axes:
                    axes[ax.key()] = len(self._axes)
                    self._axes.append(ax)
                ids.append(axes[ax.key()])
            self._layer_axes.append((ids[0], ids[1]))
        for ax in self._axes:
            for g, _ in ax.terms:
                if not 0 <= g < len(self.group_sizes):
                    raise TableError(f"a layer reads group {g}, but the network has {len(self.group_sizes)} groups")
        self._buffers: dict[torch.device, _Buffers] = {}

    # ---------------------------------------------------------------- construction
    @classmethod
    def fit(
        cls,
        table: LatencyTable,
        graph: ChannelGraph,
        *,
        grid: GridConfig | None = None,
        interpolation: Interpolation | None = None,
        monotone: Monotone = "cummax",
        calibration: str | Calibration | None = "auto",
        default_std: float | Sequence[float] = DEFAULT_STD,
        activations: Mapping[str, str] | None = None,
        paddings: Mapping[str, tuple[int, int]] | None = None,
    ) -> LatencyCost:
        """The latency cost of `graph` priced by `table`.

        Args:
            table: measured per-layer latencies (its batch size and precision are the network's).
            graph: the traced channel structure.
            grid: require exactly this grid's points in the table; None uses every point the table has.
            interpolation: ``"linear"`` (bilinear between grid points), ``"ceil"`` (the next point up:
                a tile staircase) or ``"ceil:N"`` (counts padded up to a multiple of N, then linear; see
                `hwdsa.lut.fit.interp_weights`). None: the table's own (`"interpolation"` in its
                metadata, set by `hwdsa fit --interpolation`; its calibrations were fitted with it), else linear.
            monotone: how the budget surface is made non-decreasing: ``"cummax"`` (running maximum:
                never under-prices) or ``"isotonic"`` (scikit-learn isotonic regression weighted by
                1/IQR², then the running maximum: averages noise instead of keeping its peaks).
            calibration: ``"auto"`` applies the table's calibration for this network if it has one;
                a name picks one; a `Calibration` is applied as given; None uses the plain layer sum.
            default_std: spread σ of every group's kept count, in channels, when a call gives none.
            activations, paddings: per-layer overrides of `hwdsa.lut.grid.layer_spec`'s assumptions.

        Raises:
            TableError: the table lacks entries the network needs, or the named calibration is for
                another network or absent.
        """
        own = str(table.meta.extra.get("interpolation", "linear"))
        if interpolation is None:
            interpolation = own
        elif interpolation != own and calibration == "auto" and table.meta.calibration:
            _log.warning(
                "pricing with interpolation %r, but the table's calibrations were fitted with %r: refit them "
                "(`hwdsa fit --interpolation %s`) or pass calibration=None", interpolation, own, interpolation,
            )  # fmt: skip
        layers = fit_layers(
            table,
            graph,
            grid=grid,
            interpolation=interpolation,
            monotone=monotone,
            activations=activations,
            paddings=paddings,
        )
        sig = graph_signature(graph)
        cal = cls._pick_calibration(table, sig, calibration)
        return cls(layers, graph.group_sizes, graph_signature=sig, calibration=cal, default_std=default_std, meta=table.meta)

    @staticmethod
    def _pick_calibration(table: LatencyTable, sig: str, choice: str | Calibration | None) -> Calibration | None:
        if choice is None or isinstance(choice, Calibration):
            return choice
        stored = calibrations(table)
        if choice == "auto":
            matches = [c for c in stored.values() if c.graph_signature == sig]
            if len(matches) > 1:
                _log.warning("the table holds %d calibrations for this network; using the latest", len(matches))
                matches.sort(key=lambda c: c.created_at)
            if matches:
                return matches[-1]
            if stored:
                _log.info("the table's calibrations (%s) are for other networks; using plain layer sums", ", ".join(stored))
            return None
        if choice not in stored:
            raise TableError(
                f"the table has no calibration {choice!r}; stored: {', '.join(stored) or '(none)'} "
                "(fit one with `fit_calibration` and store it with `attach_calibration`)"
            )
        return stored[choice]

    def with_calibration(self, calibration: Calibration | None) -> LatencyCost:
        """The same cost with another calibration (None: plain layer sums)."""
        return LatencyCost(
            self.table_layers,
            self.group_sizes,
            graph_signature=self.graph_signature,
            calibration=calibration,
            default_std=self.default_std,
            meta=self.meta,
        )

    # ---------------------------------------------------------------- the differentiable cost
    def with_spread(self, std: Tensor | float | Sequence[float]) -> LatencyCost:
        """This cost with `std` (channels: one value or one per group) as its default spread; the fitted
        layers and buffers are shared, so it is cheap to call at every ADMM step (`AdmmConfig.smooth_costs`)."""
        sigma = self._sigma(std, torch.zeros(()))
        out = copy.copy(self)
        out.default_std = tuple(float(v) for v in sigma.cpu())
        return out

    def _buffers_on(self, device: torch.device) -> _Buffers:
        if device not in self._buffers:
            self._buffers[device] = _Buffers(self, device)
        return self._buffers[device]

    def __call__(self, keep_ratios: Tensor, *, std: Tensor | float | Sequence[float] | None = None) -> Tensor:
        """Expected latency (ms) at `keep_ratios` under the kept-count spread `std` (channels per group).

        `std` defaults to `default_std`; pass sqrt(Σ_c p_c(1 − p_c)) per group to follow DSA's mask
        randomness, or a few channels to smooth a staircase. It is treated as a constant (detached), so
        the cost stays non-decreasing in every ratio. With σ = 0 the cost interpolates the table
        linearly between integer counts (and equals the budget surface at integers).
        """
        check_keep_ratios(keep_ratios.detach(), len(self.group_sizes))
        buf = self._buffers_on(keep_ratios.device)
        alpha = keep_ratios.to(torch.float64)
        sigma_g = self._sigma(std, alpha)
        var_g = sigma_g**2
        sigma_np = np.asarray(sigma_g.detach().cpu(), dtype=np.float64)
        total = alpha.new_zeros(())
        vectors: dict[tuple[Any, ...], Tensor] = {}

        def axis_vector(key: tuple[Any, ...]) -> Tensor:
            if key not in vectors:
                axis_id = key[0]
                ax, g, ch, coef = buf.axes[axis_id]
                w = buf.weights[key]
                if ax.is_fixed:
                    vectors[key] = w.core[0]
                else:
                    mu = ax.fixed + (alpha[g] * ch).sum()
                    sigma = (coef**2 * var_g[g]).sum().sqrt()
                    groups_np, coef_np = buf.axes_np[axis_id]
                    sigma_float = float(np.sqrt(np.sum(coef_np**2 * sigma_np[groups_np] ** 2)))
                    vectors[key] = _expected_weights(mu, sigma, sigma_float, ax.lo, ax.hi, w)
            return vectors[key]

        for key_in, key_out, vals in buf.layers:
            u_in = axis_vector(key_in)
            if vals.dim() == 1:  # "diag": the input count is the output count
                total = total + u_in @ vals
            else:
                total = total + u_in @ vals @ axis_vector(key_out)
        cal = self.calibration
        if cal is not None:
            total = cal.scale * total + cal.offset_ms
            if cal.has_spill and float(self._expected_weights_mb(buf, alpha.detach())) > float(cal.spill_above_mb or 0.0):
                # a step, as `exact` prices it: no gradient of its own, and the cost stays non-decreasing
                total = total + cal.spill_ms
            if cal.footprint_ms > 0 or cal.streams:  # continuous and increasing in every count: they keep their gradient
                weights = self._expected_weights_mb(buf, alpha)
                if cal.footprint_ms > 0:  # (finite at 0)
                    total = total + cal.footprint_ms * weights.clamp_min(1e-9).sqrt()
                if cal.streams:  # (zero below the capacity, where the caches hold every weight)
                    total = total + cal.stream_ms_per_mb * (weights - float(cal.stream_above_mb or 0.0)).clamp_min(0.0)
        return total.to(keep_ratios.dtype if keep_ratios.is_floating_point() else torch.float64)

    forward = __call__

    @staticmethod
    def _expected_weights_mb(buf: _Buffers, alpha: Tensor) -> Tensor:
        """Σ_l W_l at the expected counts of `alpha` (the footprint a calibration's step or term reads)."""

        def mean_count(axis_id: int) -> Tensor:
            ax, g, ch, _ = buf.axes[axis_id]
            return ax.fixed + (alpha[g] * ch).sum()

        def frac(mu: Tensor, lo: float, hi: float) -> Tensor:
            return (mu - lo) / (hi - lo) if hi > lo else mu * 0.0

        total = alpha.new_zeros(())
        for ai, ao, diag, rng, w in buf.footprint:
            if diag:
                lo, hi, w_lo, w_hi = rng
                total = total + w_lo + (w_hi - w_lo) * frac(mean_count(ai), lo, hi)
            else:
                u, v = frac(mean_count(ai), rng[0], rng[1]), frac(mean_count(ao), rng[2], rng[3])
                total = total + w[0] * (1 - u) * (1 - v) + w[1] * (1 - u) * v + w[2] * u * (1 - v) + w[3] * u * v
        return total

    def weights_mb(self, channels: Sequence[int]) -> float:
        """Megabytes of weights of the network pruned to `channels` (the layers the table prices)."""
        counts = zip(self.table_layers, self._counts(channels))
        return float(math.fsum(weight_mb(fl.grid.spec_at(ci, co)) for fl, (ci, co) in counts))

    def _sigma(self, std: Tensor | float | Sequence[float] | None, like: Tensor) -> Tensor:
        n = len(self.group_sizes)
        if std is None:
            return torch.tensor(self.default_std, dtype=torch.float64, device=like.device)
        if isinstance(std, Tensor):
            sigma = std.detach().to(device=like.device, dtype=torch.float64).reshape(-1)
        else:
            sigma = torch.as_tensor(std, dtype=torch.float64, device=like.device).reshape(-1)
        if sigma.numel() not in (1, n):
            raise ConfigError(f"std needs one value or one per channel group ({n}); got {sigma.numel()} values")
        if not torch.isfinite(sigma).all() or bool((sigma < 0).any()):
            raise ConfigError("std must be finite and >= 0 (channels)")
        return sigma.expand(n)

    # ---------------------------------------------------------------- integer counts
    def _counts(self, channels: Sequence[int]) -> list[tuple[int, int]]:
        ch = [int(c) for c in channels]
        if any(float(c) != int(c) for c in channels):
            raise ConfigError(f"exact() prices whole channel counts; got {list(channels)}")
        check_channels(ch, self.group_sizes)
        return [fl.counts(ch, self.group_sizes) for fl in self.layers]

    def layer_sum_ms(self, channels: Sequence[int], *, weight_bandwidth_gbps: float | None = None) -> float:
        """Σ_l T_l at integer counts from the table's values (interpolated between grid points), uncalibrated.

        With `weight_bandwidth_gbps` each term is max(T_l, W_l / bandwidth), W_l the layer's weight
        bytes at those counts (see `hwdsa.lut.fit.with_weight_floor`): the sum a calibration with that
        weight bandwidth scales.
        """
        total = 0.0
        for fl, (ci, co) in zip(self.table_layers, self._counts(channels)):
            t = fl.latency_ms(ci, co)
            if weight_bandwidth_gbps is not None:
                t = max(t, weight_mb(fl.grid.spec_at(ci, co)) / weight_bandwidth_gbps)
            total += t
        return float(total)

    def exact(self, channels: Sequence[int]) -> float:
        """Latency in ms of the network pruned to `channels` (one count per group), calibrated.

        Grid points are table entries; counts between them are interpolated and logged at debug level
        (`breakdown` flags them per layer).
        """
        parts = self.breakdown(channels)
        off = [p.name for p in parts if not p.is_measured]
        if off:
            _log.debug("exact(): %d layer(s) priced by interpolation between grid points: %s", len(off), ", ".join(off))
        total = math.fsum(p.latency_ms for p in parts)
        if self.calibration is None:
            return total
        weights = math.fsum(weight_mb(p.spec) for p in parts) if self.calibration.reads_weights else None
        return self.calibration.apply(total, weights)

    def breakdown(self, channels: Sequence[int]) -> tuple[LayerLatency, ...]:
        """Per-layer spec and latency at integer counts, before the calibration's scale and offset.

        Each latency is the table's, floored by the time to stream the layer's weights when the
        calibration found a weight bandwidth (`Calibration.weight_bandwidth_gbps`).
        """
        out = []
        for fl, (ci, co) in zip(self.layers, self._counts(channels)):
            out.append(
                LayerLatency(
                    name=fl.name,
                    spec=fl.grid.spec_at(ci, co),
                    latency_ms=fl.latency_ms(ci, co),
                    is_measured=fl.is_measured(ci, co),
                )
            )
        return tuple(out)

    @property
    def dense(self) -> float:
        """Latency of the unpruned network (ms), as the model predicts it."""
        return self.exact(self.group_sizes)

    @property
    def measured_dense(self) -> float | None:
        """The unpruned network's measured latency (ms) kept with the calibration, if it has one.

        `hwdsa.costs.Budget.fraction_of_dense` takes fractions of this: `--latency 0.5` is half of
        what the dense network measured, not of what the model predicts for it.
        """
        return None if self.calibration is None else self.calibration.dense_ms

    def step_points(self, group: int) -> tuple[int, ...]:
        """The counts of `group` at which the table has measurements (its producers' grid points)."""
        pts: set[int] = set()
        for fl in self.layers:
            ax = fl.grid.out_axis if fl.grid.shape == "2d" else fl.grid.in_axis
            pts_ax = fl.grid.out_points if fl.grid.shape == "2d" else fl.grid.in_points
            if ax.fixed == 0 and len(ax.terms) == 1 and ax.terms[0] == (group, self.group_sizes[group]):
                pts.update(pts_ax)
        if not pts:
            pts.update((1, self.group_sizes[group]))
        return tuple(sorted(pts))

    def __repr__(self) -> str:
        cal = "" if self.calibration is None else f", calibrated {self.calibration.describe()}"
        where = "" if self.meta is None else f", {self.meta.describe()}"
        return f"LatencyCost({len(self.layers)} layers, {len(self.group_sizes)} groups{where}{cal})"


def _smoothed_step(x: Tensor, sigma: Tensor) -> Tensor:
    """P(U + σZ <= x) for U ~ Uniform(-½, ½), Z ~ N(0, 1): a ramp over [-½, ½] blurred by σ.

    With Ψ(y) = yΦ(y) + φ(y) (an antiderivative of Φ): σ·[Ψ((x + ½)/σ) − Ψ((x − ½)/σ)].
    """
    s = sigma.clamp_min(_MIN_STD)

    def psi(y: Tensor) -> Tensor:
        out: Tensor = y * torch.special.ndtr(y) + torch.exp(-0.5 * y * y) / math.sqrt(2 * math.pi)
        return out

    return (s * (psi((x + 0.5) / s) - psi((x - 0.5) / s))).clamp(0.0, 1.0)


def _expected_weights(mu: Tensor, sigma: Tensor, sigma_max: float, lo: int, hi: int, w: _AxisWeights) -> Tensor:
    """E[w(K)] over the grid points for K = round(mu + U + σZ): the axis's share of an expected latency.

    U ~ Uniform(-½, ½) makes the rounding stochastic and unbiased (E[K] = mu exactly, and σ = 0 is
    linear interpolation between integers); σZ is the spread of the kept count. Counts beyond [lo, hi]
    are priced by the linear extension of the surface.
    """
    r = int(math.ceil(8.0 * max(sigma_max, _MIN_STD))) + 1
    ks = torch.arange(lo - r, hi + r + 1, dtype=mu.dtype, device=mu.device)
    cdf = _smoothed_step(ks[:-1] + 0.5 - mu, sigma)
    probs = torch.diff(torch.cat([cdf.new_zeros(1), cdf, cdf.new_ones(1)]))
    n = hi - lo + 1
    below, core, above = probs[:r], probs[r : r + n], probs[r + n :]
    k_below, k_above = ks[:r], ks[r + n :]
    u = core @ w.core
    u = u + below.sum() * w.core[0] + (below * (k_below - lo)).sum() * w.slope_lo
    u = u + above.sum() * w.core[-1] + (above * (k_above - hi)).sum() * w.slope_hi
    return u


__all__ = ["DEFAULT_STD", "LatencyCost", "LayerLatency"]


def latency_cost_from_table(graph: ChannelGraph, latency_table: str | os.PathLike[str] | None = None) -> LatencyCost:
    """The latency cost of `graph` from the table at `latency_table` (the `COSTS` registry's "latency")."""
    from hwdsa.lut.table import LatencyTable

    if latency_table is None:
        raise ConfigError(
            "a latency budget needs a lookup table: pass --latency-table TABLE.csv (see `hwdsa profile`), "
            "or --latency-backend NAME to profile this device first"
        )
    return LatencyCost.fit(LatencyTable.read(latency_table), graph)

