"""End-to-end calibration: per-layer latency sums to the latency of the whole deployed network.

A sum of standalone layer timings misses launch overhead, operator fusion, memory traffic and every
operator the table does not hold (pooling, additions). Measuring a handful of randomly pruned
networks end to end and fitting ``T_net ≈ scale · Σ_l T_l + offset_ms`` corrects that. A layer timed
alone also finds its weights in the core's cache, which a network whose weights do not fit there
never does: the fit may floor every layer at the time its weights take to stream at a bandwidth it
chooses, ``T_net ≈ scale · Σ_l max(T_l, W_l / bandwidth) + offset_ms``. And a network whose weights
outgrow the core's own cache pays a fixed cost on every run that a smaller one does not (measured
here: ONNX Runtime VGG-16 networks with 2-10 MB of weights ran 0.08-0.1 ms slower than their layers
predict, those under 2 MB did not): the fit may add a step, ``+ spill_ms`` once Σ_l W_l exceeds a
capacity it chooses. Or, where the footprint's cost grows gradually rather than at one capacity, a term
``+ footprint_ms · √(Σ_l W_l)``: continuous, so a network just under a step's capacity is not priced a whole
step faster than one just over it (on the AMD EPYC host a step at 0.25 MB priced ResNet-20 prunings that
crossed it 0.01 ms, 5-10%, too fast; `benchmarks/sublattice_cost.py`). Or, where the weights outgrow the
last-level cache, ``+ stream_ms_per_mb · max(0, Σ_l W_l − stream_above_mb)``: the weights the cache cannot
hold stream from memory on every run, at the memory's bandwidth (on the AMD EPYC host, ONNX Runtime VGG-16
networks above about 16 MB ran 0.03-0.04 ms slower per further MB, 27-34 GB/s, than their layers predict, up to
1.6 ms on the dense network's 59 MB). The fit is stored in the
table's metadata (``"calibration"``, one entry per network, with the dense network's measured
latency), so the table file carries everything its cost model needs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

from hwdsa.errors import ConfigError, TableError
from hwdsa.graph.structure import ChannelGraph
from hwdsa.lut.table import LatencyTable

if TYPE_CHECKING:
    from hwdsa.lut.cost_model import LatencyCost

_log = logging.getLogger(__name__)

CalibrationMethod = Literal["huber", "linear"]
#: A footprint term `fit_calibration` tries: a spill step at a capacity (MB), "sqrt" (√MB of weights), the MB
#: beyond a capacity (("stream", MB)), or none.
Term = float | Literal["sqrt"] | tuple[Literal["stream"], float] | None
#: The regressions `fit_calibration` offers (`hwdsa fit --method`).
CALIBRATION_METHODS: tuple[str, ...] = get_args(CalibrationMethod)


def graph_signature(graph: ChannelGraph) -> str:
    """A short hash of everything in `graph` that sets its latency: layers, shapes and groups.

    A calibration is tied to one network; the signature lets `LatencyCost.fit` refuse to apply it to
    another one.
    """
    desc = {
        "groups": list(graph.group_sizes),
        "input": list(graph.input_shape),
        "layers": [
            [
                n.name, n.kind, n.in_channels, n.out_channels, n.out_group, n.is_depthwise, n.conv_groups,
                list(n.kernel_size), list(n.stride), list(n.in_spatial), list(n.out_spatial),
                n.features_per_channel, [[s.group, s.channels, s.offset] for s in n.in_segments],
            ]  # fmt: skip
            for n in graph.layers
        ],
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Calibration:
    """``latency_ms = scale · layer_sum_ms + offset_ms (+ spill_ms) (+ footprint_ms · √weights_mb)
    (+ stream_ms_per_mb · max(0, weights_mb − stream_above_mb))`` for one network on the table's device.

    With `weight_bandwidth_gbps` the layer sum is Σ_l max(T_l, W_l / bandwidth): the network streams
    each layer's weights W_l from beyond the core's caches, which a layer timed alone does not (see
    `hwdsa.lut.fit.with_weight_floor`); None when the network's weights stay cached (the fit found
    no bandwidth that explains the measurements better).
    `residuals_ms` are measured minus fitted latencies of the calibration networks (in the order given),
    so the fit's quality travels with it; `graph_signature` names the network it belongs to.
    """

    scale: float
    offset_ms: float
    graph_signature: str
    method: str = "huber"
    n_points: int = 0
    residuals_ms: tuple[float, ...] = field(default=(), hash=False)
    rmse_ms: float = 0.0
    max_rel_error: float = 0.0
    created_at: str = ""
    anchored: bool = False
    """True when the fit goes exactly through one network's measurement (`fit_calibration(anchor=...)`)."""
    dense_ms: float | None = None
    """The dense network's measured end-to-end latency: what `--latency 0.5` takes half of."""
    weight_bandwidth_gbps: float | None = None
    spill_ms: float = 0.0
    """Added to every network whose weights exceed `spill_above_mb` (they no longer fit the core's cache)."""
    spill_above_mb: float | None = None
    footprint_ms: float = 0.0
    """ms per √MB of the network's weights: a cost of the weight footprint that grows gradually (0: none)."""
    stream_ms_per_mb: float = 0.0
    """ms per MB of weights beyond `stream_above_mb`: what the caches cannot hold streams from memory (0: none)."""
    stream_above_mb: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise TableError(
                f"a calibration needs a positive scale (latency must grow with the layer sum); got {self.scale}"
            )
        if not math.isfinite(self.offset_ms):
            raise TableError(f"a calibration offset must be finite; got {self.offset_ms}")
        if self.dense_ms is not None and not (math.isfinite(self.dense_ms) and self.dense_ms > 0):
            raise TableError(f"a calibration's dense_ms must be a positive measured latency; got {self.dense_ms}")
        bw = self.weight_bandwidth_gbps
        if bw is not None and not (math.isfinite(bw) and bw > 0):
            raise TableError(f"a calibration's weight_bandwidth_gbps must be positive GB/s or null; got {bw}")
        cap = self.spill_above_mb
        if cap is not None and not (math.isfinite(cap) and cap > 0):
            raise TableError(f"a calibration's spill_above_mb must be positive MB or null; got {cap}")
        if not (math.isfinite(self.spill_ms) and self.spill_ms >= 0) or (self.spill_ms > 0 and cap is None):
            raise TableError(
                f"a calibration's spill_ms must be >= 0 ms, and needs spill_above_mb when > 0; got {self.spill_ms} "
                f"above {cap}"
            )
        if not (math.isfinite(self.footprint_ms) and self.footprint_ms >= 0):
            raise TableError(f"a calibration's footprint_ms must be >= 0 ms per sqrt(MB); got {self.footprint_ms}")
        beyond = self.stream_above_mb
        if beyond is not None and not (math.isfinite(beyond) and beyond >= 0):
            raise TableError(f"a calibration's stream_above_mb must be >= 0 MB or null; got {beyond}")
        if not (math.isfinite(self.stream_ms_per_mb) and self.stream_ms_per_mb >= 0) or (
            self.stream_ms_per_mb > 0 and beyond is None
        ):
            raise TableError(
                f"a calibration's stream_ms_per_mb must be >= 0 ms per MB, and needs stream_above_mb when > 0; got "
                f"{self.stream_ms_per_mb} above {beyond}"
            )
        object.__setattr__(self, "residuals_ms", tuple(float(r) for r in self.residuals_ms))

    @property
    def has_spill(self) -> bool:
        return self.spill_above_mb is not None and self.spill_ms > 0

    @property
    def streams(self) -> bool:
        """Whether networks with weights beyond `stream_above_mb` pay `stream_ms_per_mb` for each further MB."""
        return self.stream_above_mb is not None and self.stream_ms_per_mb > 0

    @property
    def reads_weights(self) -> bool:
        """Whether the fit prices the weight footprint (a spill step, a footprint or a stream term): `apply` needs it."""
        return self.has_spill or self.footprint_ms > 0 or self.streams

    def footprint_cost_ms(self, weights_mb: float) -> float:
        """What the fit adds for a network with `weights_mb` of weights: its spill step, footprint and stream terms."""
        spill = self.spill_ms if self.spills(weights_mb) else 0.0
        beyond = max(weights_mb - float(self.stream_above_mb or 0.0), 0.0) if self.streams else 0.0
        return spill + self.footprint_ms * math.sqrt(max(weights_mb, 0.0)) + self.stream_ms_per_mb * beyond

    def spills(self, weights_mb: float) -> bool:
        """Whether a network with `weights_mb` of weights pays `spill_ms`."""
        return self.has_spill and weights_mb > float(self.spill_above_mb or 0.0)

    def apply(self, layer_sum_ms: float, weights_mb: float | None = None) -> float:
        """The calibrated end-to-end latency of a network whose layers sum to `layer_sum_ms`
        (floored by the weight stream when `weight_bandwidth_gbps` is set: `LatencyCost.layer_sum_ms`)
        and whose weights take `weights_mb` (`LatencyCost.weights_mb`; needed when `reads_weights`)."""
        if weights_mb is None:
            if self.reads_weights:
                raise ConfigError("this calibration prices the weight footprint: pass the network's weights_mb")
            return self.scale * layer_sum_ms + self.offset_ms
        return self.scale * layer_sum_ms + self.offset_ms + self.footprint_cost_ms(weights_mb)

    def describe(self) -> str:
        """The fit in one line, for messages."""
        floor = "" if self.weight_bandwidth_gbps is None else f", weights streamed at {self.weight_bandwidth_gbps:.3g} GB/s"
        spill = f", +{self.spill_ms:.3g} ms above {self.spill_above_mb:.3g} MB of weights" if self.has_spill else ""
        footprint = f", +{self.footprint_ms:.3g} ms x sqrt(MB of weights)" if self.footprint_ms > 0 else ""
        stream = (
            f", +{self.stream_ms_per_mb:.3g} ms per MB of weights beyond {self.stream_above_mb:.3g} MB "
            f"({1 / self.stream_ms_per_mb:.3g} GB/s)" if self.streams else ""
        )  # fmt: skip
        return f"{self.scale:.4g} x layer sum {self.offset_ms:+.4g} ms{floor}{spill}{footprint}{stream}"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["residuals_ms"] = list(self.residuals_ms)
        return d

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Calibration:
        try:
            return cls(
                scale=float(obj["scale"]),
                offset_ms=float(obj["offset_ms"]),
                graph_signature=str(obj["graph_signature"]),
                method=str(obj.get("method", "huber")),
                n_points=int(obj.get("n_points", 0)),
                residuals_ms=tuple(float(r) for r in obj.get("residuals_ms", ())),
                rmse_ms=float(obj.get("rmse_ms", 0.0)),
                max_rel_error=float(obj.get("max_rel_error", 0.0)),
                created_at=str(obj.get("created_at", "")),
                anchored=bool(obj.get("anchored", False)),
                dense_ms=None if obj.get("dense_ms") is None else float(obj["dense_ms"]),
                weight_bandwidth_gbps=None if obj.get("weight_bandwidth_gbps") is None else float(obj["weight_bandwidth_gbps"]),
                spill_ms=float(obj.get("spill_ms", 0.0)),
                spill_above_mb=None if obj.get("spill_above_mb") is None else float(obj["spill_above_mb"]),
                footprint_ms=float(obj.get("footprint_ms", 0.0)),
                stream_ms_per_mb=float(obj.get("stream_ms_per_mb", 0.0)),
                stream_above_mb=None if obj.get("stream_above_mb") is None else float(obj["stream_above_mb"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TableError(
                f"malformed calibration object {dict(obj)!r} ({exc}); refit it with `fit_calibration`"
            ) from None


#: Weight bandwidths (GB/s) `fit_calibration` tries: DRAM of a small board to the L2 of a server core.
WEIGHT_BANDWIDTHS_GBPS: tuple[float, ...] = tuple(float(b) for b in np.geomspace(1.0, 1000.0, 61))
#: Fewer calibration networks than this fit no weight floor (`fit_calibration(weight_floor=...)`).
MIN_PAIRS_FOR_WEIGHT_FLOOR = 8
#: Weight footprints (MB) `fit_calibration` tries as the capacity above which a network pays `spill_ms`:
#: the L2 of a small core to a server's L3 share.
SPILL_CAPACITIES_MB: tuple[float, ...] = tuple(float(c) for c in np.geomspace(0.25, 64.0, 17))
#: Capacities (MB) `fit_calibration` tries for the stream term: finer than the step's, since its capacity moves the
#: price of every network beyond it (on the AMD EPYC host's VGG-16, 13.5 MB instead of 16 MB moved 5% of the held-out
#: networks across ±5%).
STREAM_CAPACITIES_MB: tuple[float, ...] = tuple(float(c) for c in np.geomspace(0.25, 64.0, 33))
#: A spill step or stream term is fitted only with at least this many calibration networks on each side of its capacity.
MIN_PAIRS_PER_SIDE_FOR_SPILL = 4
#: Each extra term of the fit (floor, spill step, footprint or stream) must cut the relative RMS error by this factor to be kept.
EARN_ITS_PLACE = 0.98


def fit_calibration(
    cost: LatencyCost,
    pairs: Sequence[tuple[Sequence[int], float]],
    *,
    method: CalibrationMethod = "huber",
    fit_offset: bool = True,
    anchor: int | None = None,
    weight_floor: bool = True,
    spill: bool = True,
    spill_capacities_mb: Sequence[float] = SPILL_CAPACITIES_MB,
    footprint: bool = True,
    stream: bool = True,
    stream_capacities_mb: Sequence[float] = STREAM_CAPACITIES_MB,
) -> Calibration:
    """Fit ``measured_ms ≈ scale · Σ_l T_l(channels) + offset_ms`` over end-to-end measurements.

    The fit minimises relative errors (each network's residual divided by its measurement): a budget
    is a fraction, and a 10 µs miss matters on a 0.2 ms network as 100 µs do on a 2 ms one.

    Args:
        cost: the (uncalibrated or calibrated: its table's layer sums are used either way) cost of the network.
        pairs: (channels per group, measured end-to-end latency in ms) of a few pruned networks;
            spread them over the range of interest (e.g. dense, and random keep ratios in [0.2, 1]).
        method: ``"huber"`` (scikit-learn `HuberRegressor`: one disturbed measurement does not tilt the
            fit) or ``"linear"`` (least squares with a non-negative scale).
        fit_offset: fit `offset_ms` (launch overhead and unpriced operators); False fits a scale only.
        anchor: index of a pair the fit must go through exactly (e.g. the dense network); the scale is
            fitted on the others' differences from it. Needs `fit_offset`.
        weight_floor: also try every weight bandwidth of `WEIGHT_BANDWIDTHS_GBPS` (each layer priced at
            least at the time to stream its weights, `hwdsa.lut.fit.with_weight_floor`) and keep the one
            whose fit has the smallest relative RMS error, or none when no floor does 2% better (and none
            with fewer than `MIN_PAIRS_FOR_WEIGHT_FLOOR` pairs).
        spill: also try a step of `spill_ms` for the networks whose weights exceed a capacity from
            `SPILL_CAPACITIES_MB` (with at least `MIN_PAIRS_PER_SIDE_FOR_SPILL` networks on each side),
            kept when its step is positive and it cuts the relative RMS error by 2%, both on the pairs
            and in leave-one-out (a step fits noise easily).
        spill_capacities_mb: the capacities tried (e.g. the device's own L2 and L3 sizes, when known).
        footprint: also try ``+ footprint_ms · √(Σ_l W_l)`` in place of a step (with at least
            `MIN_PAIRS_FOR_WEIGHT_FLOOR` pairs). Of the step and this term, the one with the smaller
            leave-one-out error is kept, under the same two conditions as the step.
        stream: also try ``+ stream_ms_per_mb · max(0, Σ_l W_l − capacity)`` for every capacity of
            `stream_capacities_mb` with enough networks on each side, in the same competition as the step and
            the footprint term.

    Raises:
        ConfigError: too few pairs, or a non-positive measured latency.
        TableError: the fitted scale is not positive (the layer sums do not explain the measurements).
    """
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}; got {method!r}")
    need = 3 if fit_offset else 2
    if len(pairs) < need:
        raise ConfigError(
            f"calibration needs at least {need} (channels, measured ms) pairs; got {len(pairs)}: measure a few "
            "randomly pruned networks end to end"
        )
    for kind, capacities in (("spill", spill_capacities_mb), ("stream", stream_capacities_mb)):
        if any(not (math.isfinite(c) and c > 0) for c in capacities):
            raise ConfigError(f"{kind} capacities must be positive MB; got {list(capacities)}")
    if anchor is not None and not (fit_offset and 0 <= anchor < len(pairs)):
        raise ConfigError(f"anchor must index one of the {len(pairs)} pairs and needs fit_offset; got {anchor}")
    y = np.array([float(ms) for _, ms in pairs], dtype=np.float64)
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ConfigError(f"measured end-to-end latencies must be positive ms; got {y.tolist()}")
    # a floor is one more parameter: it needs enough networks not to fit their noise
    try_floor = weight_floor and len(pairs) >= MIN_PAIRS_FOR_WEIGHT_FLOOR
    bandwidths: tuple[float | None, ...] = (None, *WEIGHT_BANDWIDTHS_GBPS) if try_floor else (None,)
    sums: dict[float | None, np.ndarray] = {}  # the layer sums under each weight floor
    for bw in bandwidths:
        x = np.array([cost.layer_sum_ms(ch, weight_bandwidth_gbps=bw) for ch, _ in pairs], dtype=np.float64)
        if fit_offset and np.ptp(x) <= 1e-9 * max(float(np.max(x)), 1e-12):
            if bw is None:
                raise ConfigError(
                    "every calibration network has the same layer sum: a scale and an offset cannot both be fitted; "
                    "measure networks pruned to different widths, or pass fit_offset=False"
                )
            continue
        sums[bw] = x

    def fit(bw: float | None, term: Term, keep: np.ndarray | None = None) -> _Fit | None:
        """The fit with floor `bw` and footprint term `term` (a spill capacity in MB, "sqrt", or none), on the
        pairs `keep` selects (all by default)."""
        x_all = sums[bw]
        cap = term if isinstance(term, float) else None
        if term is None:
            step_all = None
        elif term == "sqrt":
            step_all = np.sqrt(footprints)
        elif isinstance(term, tuple):
            step_all = np.maximum(footprints - term[1], 0.0)
        else:
            step_all = (footprints > term).astype(np.float64)
        sel = np.ones(len(y), dtype=bool) if keep is None else keep
        x, yy = x_all[sel], y[sel]
        step = None if step_all is None else step_all[sel]
        if anchor is None:
            scale, offset, coef = _regress(x, yy, method=method, fit_offset=fit_offset, step=step)
        else:
            others = sel & (np.arange(len(y)) != anchor)
            d_step = None if step_all is None else step_all[others] - step_all[anchor]
            scale, _, coef = _regress(
                x_all[others] - x_all[anchor], y[others] - y[anchor], method=method, fit_offset=False,
                relative_to=y[others], step=d_step,
            )  # fmt: skip
            offset = float(y[anchor] - scale * x_all[anchor] - (0.0 if step_all is None else coef * step_all[anchor]))
        x, step = x_all, step_all  # the fitted values are reported for every pair
        if not scale > 0:
            if bw is None and term is None:
                raise TableError(
                    f"calibration fitted a non-positive scale ({scale:.4g}): the table's layer sums do not track the "
                    "measured latencies (a table from another device, or measurements dominated by noise?)"
                )
            return None
        if step is not None and not coef > 0:
            return None  # latency falling as weights outgrow the caches is not a cache effect
        fitted = scale * x + offset + (0.0 if step is None else coef * step)
        rel_rms = float(np.sqrt(np.mean((fitted[sel] / y[sel] - 1.0) ** 2)))
        per_step = coef if cap is not None else 0.0
        per_sqrt_mb = coef if term == "sqrt" else 0.0
        per_mb_beyond = coef if isinstance(term, tuple) else 0.0
        return _Fit(rel_rms, bw, term, scale, offset, per_step, per_sqrt_mb, per_mb_beyond, fitted)

    footprints = np.array([cost.weights_mb(ch) for ch, _ in pairs], dtype=np.float64)
    plain = fit(None, None)
    assert plain is not None  # a non-positive plain scale raised above
    floors = [f for f in (fit(bw, None) for bw in sums if bw is not None) if f is not None]
    # each extra term has to earn its place: EARN_ITS_PLACE less relative error than the fit without it
    chosen = min(floors, key=lambda f: f.rel_rms, default=plain)
    chosen = chosen if chosen.rel_rms < EARN_ITS_PLACE * plain.rel_rms else plain
    def both_sides(capacities: Sequence[float]) -> list[float]:
        return [
            float(c) for c in capacities
            if min(int(np.sum(footprints > c)), int(np.sum(footprints <= c))) >= MIN_PAIRS_PER_SIDE_FOR_SPILL
        ]  # fmt: skip

    floors_tried = dict.fromkeys((None, chosen.bandwidth))
    spills = [f for f in (fit(bw, c) for bw in floors_tried for c in both_sides(spill_capacities_mb) if spill) if f is not None]
    terms = [min(spills, key=lambda f: f.rel_rms)] if spills else []
    if stream:
        beyond = [f for f in (fit(bw, ("stream", c)) for bw in floors_tried for c in both_sides(stream_capacities_mb)) if f is not None]
        terms += [min(beyond, key=lambda f: f.rel_rms)] if beyond else []
    if footprint and len(pairs) >= MIN_PAIRS_FOR_WEIGHT_FLOOR:
        terms += [f for f in (fit(bw, "sqrt") for bw in floors_tried) if f is not None]
    # A footprint term fits noise easily (a step has two parameters: where and how much): it must also
    # predict the networks it was not fitted on better, in leave-one-out, than the fit without it; of
    # those that do, the one that predicts them best is kept.
    base_held_out = _held_out_rel_rms(fit, chosen, y, anchor) if terms else math.inf
    earned = [
        (held_out, f) for f in terms if f.rel_rms < EARN_ITS_PLACE * chosen.rel_rms
        for held_out in [_held_out_rel_rms(fit, f, y, anchor)] if held_out < EARN_ITS_PLACE * base_held_out
    ]  # fmt: skip
    if earned:
        chosen = min(earned, key=lambda e: e[0])[1]
    fitted = chosen.fitted
    residuals = y - fitted
    rmse = float(np.sqrt(np.mean(residuals**2)))
    max_rel = float(np.max(np.abs(residuals) / y))
    cal = Calibration(
        scale=float(chosen.scale),
        offset_ms=float(chosen.offset_ms),
        graph_signature=cost.graph_signature,
        method=method,
        n_points=len(pairs),
        residuals_ms=tuple(residuals.tolist()),
        rmse_ms=rmse,
        max_rel_error=max_rel,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        anchored=anchor is not None,
        weight_bandwidth_gbps=chosen.bandwidth,
        spill_ms=chosen.spill_ms,
        spill_above_mb=chosen.term if isinstance(chosen.term, float) and chosen.spill_ms > 0 else None,
        footprint_ms=chosen.footprint_ms,
        stream_ms_per_mb=chosen.stream_ms_per_mb,
        stream_above_mb=chosen.term[1] if isinstance(chosen.term, tuple) and chosen.stream_ms_per_mb > 0 else None,
    )
    _log.info(
        "calibration: latency ≈ %s over %d networks (rmse %.3g ms, max rel. error %.1f%%)",
        cal.describe(), cal.n_points, rmse, 100 * max_rel,
    )  # fmt: skip
    return cal


def _regress(
    x: np.ndarray,
    y: np.ndarray,
    *,
    method: CalibrationMethod,
    fit_offset: bool,
    relative_to: np.ndarray | None = None,
    step: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """Fit y ≈ scale·x (+ offset) (+ c·step) minimising the residuals relative to `relative_to` (default y);
    `step` is the footprint term's column (a step's 0/1, √MB, or the MB beyond a capacity)."""
    from sklearn.linear_model import HuberRegressor, LinearRegression

    r = y if relative_to is None else relative_to
    w = 1.0 / r
    # Each row divided by its measurement: y/r ≈ scale·(x/r) + offset·(1/r), with no intercept.
    # Columns are scaled to unit mean magnitude: HuberRegressor's tolerance assumes O(1) features.
    cols = [x * w] + ([w] if fit_offset else []) + ([] if step is None else [step * w])
    mags = [float(np.mean(np.abs(c))) or 1.0 for c in cols]
    X = np.column_stack([c / m for c, m in zip(cols, mags)])
    t = y * w
    if method == "linear":
        reg = LinearRegression(fit_intercept=False, positive=not fit_offset and step is None).fit(X, t)
        coef = reg.coef_
    else:
        coef = HuberRegressor(fit_intercept=False, alpha=0.0, max_iter=1000).fit(X, t).coef_
    coef = [float(c) / m for c, m in zip(coef, mags)]
    scale = coef[0]
    offset = coef[1] if fit_offset else 0.0
    spill = coef[-1] if step is not None else 0.0
    return scale, offset, spill


def _held_out_rel_rms(
    fit: Callable[[float | None, Term, np.ndarray], _Fit | None], model: _Fit, y: np.ndarray, anchor: int | None
) -> float:
    """Leave-one-out relative RMS error of `model`'s terms (its floor and footprint term refitted without each pair)."""
    errors = []
    for i in range(len(y)):
        if i == anchor:
            continue  # an anchored fit goes through its anchor by construction
        keep = np.arange(len(y)) != i
        refit = fit(model.bandwidth, model.term, keep)
        if refit is None:
            return math.inf
        errors.append(refit.fitted[i] / y[i] - 1.0)
    return float(np.sqrt(np.mean(np.square(errors))))


@dataclass(frozen=True)
class _Fit:
    """One candidate of `fit_calibration`: its relative RMS error, terms and fitted latencies."""

    rel_rms: float
    bandwidth: float | None
    term: Term
    scale: float
    offset_ms: float
    spill_ms: float
    footprint_ms: float
    stream_ms_per_mb: float
    fitted: np.ndarray


def calibrations(table: LatencyTable) -> dict[str, Calibration]:
    """The calibrations stored with `table`, by network name."""
    return {name: Calibration.from_json(obj) for name, obj in table.meta.calibration.items()}


def attach_calibration(table: LatencyTable, name: str, calibration: Calibration) -> LatencyTable:
    """A copy of `table` that stores `calibration` under `name` (write it to keep both together).

    Example:
        >>> cal = fit_calibration(cost, pairs)  # doctest: +SKIP
        >>> attach_calibration(table, "resnet20", cal).write("cpu.csv")  # doctest: +SKIP
    """
    if not name:
        raise ConfigError("a calibration needs a name (the network's, e.g. 'resnet20')")
    stored = dict(table.meta.calibration)
    if name in stored:
        _log.info("replacing the table's calibration %r", name)
    stored[name] = calibration.to_json()
    return table.with_meta(calibration=stored)


__all__ = [
    "CALIBRATION_METHODS",
    "EARN_ITS_PLACE",
    "MIN_PAIRS_FOR_WEIGHT_FLOOR",
    "MIN_PAIRS_PER_SIDE_FOR_SPILL",
    "SPILL_CAPACITIES_MB",
    "WEIGHT_BANDWIDTHS_GBPS",
    "Calibration",
    "attach_calibration",
    "calibrations",
    "fit_calibration",
    "graph_signature",
]
