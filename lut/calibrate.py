"""End-to-end calibration: per-layer latency sums to the latency of the whole deployed network.

A sum of standalone layer timings misses launch overhead, operator fusion, memory traffic and every
operator the table does not hold (pooling, additions). Measuring a handful of randomly pruned
networks end to end and fitting ``T_net ≈ scale · Σ_l T_l + offset_ms`` corrects that. A layer timed
alone also finds its weights in the core's cache, which a network whose weights do not fit there
never does: the fit may floor every layer at the time its weights take to stream at a bandwidth it
chooses, ``T_net ≈ scale · Σ_l max(T_l, W_l / bandwidth) + offset_ms``. The fit is stored in the
table's metadata (``"calibration"``, one entry per network, with the dense network's measured
latency), so the table file carries everything its cost model needs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from hwdsa.errors import ConfigError, TableError
from hwdsa.graph.structure import ChannelGraph
from hwdsa.lut.table import LatencyTable

if TYPE_CHECKING:
    from hwdsa.lut.cost_model import LatencyCost

_log = logging.getLogger(__name__)

CalibrationMethod = Literal["huber", "linear"]


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
    """``latency_ms = scale · layer_sum_ms + offset_ms`` for one network on the table's device.

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
        object.__setattr__(self, "residuals_ms", tuple(float(r) for r in self.residuals_ms))

    def apply(self, layer_sum_ms: float) -> float:
        """The calibrated end-to-end latency of a network whose layers sum to `layer_sum_ms`
        (floored by the weight stream when `weight_bandwidth_gbps` is set: `LatencyCost.layer_sum_ms`)."""
        return self.scale * layer_sum_ms + self.offset_ms

    def describe(self) -> str:
        """The fit in one line, for messages."""
        floor = "" if self.weight_bandwidth_gbps is None else f", weights streamed at {self.weight_bandwidth_gbps:.3g} GB/s"
        return f"{self.scale:.4g} x layer sum {self.offset_ms:+.4g} ms{floor}"

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
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TableError(
                f"malformed calibration object {dict(obj)!r} ({exc}); refit it with `fit_calibration`"
            ) from None


#: Weight bandwidths (GB/s) `fit_calibration` tries: DRAM of a small board to the L2 of a server core.
WEIGHT_BANDWIDTHS_GBPS: tuple[float, ...] = tuple(float(b) for b in np.geomspace(1.0, 1000.0, 61))
#: Fewer calibration networks than this fit no weight floor (`fit_calibration(weight_floor=...)`).
MIN_PAIRS_FOR_WEIGHT_FLOOR = 8


def fit_calibration(
    cost: LatencyCost,
    pairs: Sequence[tuple[Sequence[int], float]],
    *,
    method: CalibrationMethod = "huber",
    fit_offset: bool = True,
    anchor: int | None = None,
    weight_floor: bool = True,
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

    Raises:
        ConfigError: too few pairs, or a non-positive measured latency.
        TableError: the fitted scale is not positive (the layer sums do not explain the measurements).
    """
    if method not in ("huber", "linear"):
        raise ConfigError(f"calibration method must be 'huber' or 'linear'; got {method!r}")
    need = 3 if fit_offset else 2
    if len(pairs) < need:
        raise ConfigError(
            f"calibration needs at least {need} (channels, measured ms) pairs; got {len(pairs)}: measure a few "
            "randomly pruned networks end to end"
        )
    if anchor is not None and not (fit_offset and 0 <= anchor < len(pairs)):
        raise ConfigError(f"anchor must index one of the {len(pairs)} pairs and needs fit_offset; got {anchor}")
    y = np.array([float(ms) for _, ms in pairs], dtype=np.float64)
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ConfigError(f"measured end-to-end latencies must be positive ms; got {y.tolist()}")
    # a floor is one more parameter: it needs enough networks not to fit their noise
    try_floor = weight_floor and len(pairs) >= MIN_PAIRS_FOR_WEIGHT_FLOOR
    bandwidths: tuple[float | None, ...] = (None, *WEIGHT_BANDWIDTHS_GBPS) if try_floor else (None,)
    best: tuple[float, float | None, float, float, np.ndarray] | None = None  # the best fit with a floor
    plain: tuple[float, float | None, float, float, np.ndarray]  # the fit without one (always made first)
    for bw in bandwidths:
        x = np.array([cost.layer_sum_ms(ch, weight_bandwidth_gbps=bw) for ch, _ in pairs], dtype=np.float64)
        if fit_offset and np.ptp(x) <= 1e-9 * max(float(np.max(x)), 1e-12):
            if bw is None:
                raise ConfigError(
                    "every calibration network has the same layer sum: a scale and an offset cannot both be fitted; "
                    "measure networks pruned to different widths, or pass fit_offset=False"
                )
            continue
        if anchor is None:
            scale, offset = _regress(x, y, method=method, fit_offset=fit_offset)
        else:
            others = np.arange(len(x)) != anchor
            scale, _ = _regress(x[others] - x[anchor], y[others] - y[anchor], method=method, fit_offset=False, relative_to=y[others])
            offset = float(y[anchor] - scale * x[anchor])
        if not scale > 0:
            if bw is None:
                raise TableError(
                    f"calibration fitted a non-positive scale ({scale:.4g}): the table's layer sums do not track the "
                    "measured latencies (a table from another device, or measurements dominated by noise?)"
                )
            continue
        rel_rms = float(np.sqrt(np.mean(((scale * x + offset) / y - 1.0) ** 2)))
        if bw is None:
            plain = (rel_rms, bw, scale, offset, x)
        elif best is None or rel_rms < best[0]:
            best = (rel_rms, bw, scale, offset, x)
    # a floor has to earn its place: 2% less relative error than the plain layer sum
    _, bandwidth, scale, offset, x = best if best is not None and best[0] < 0.98 * plain[0] else plain
    fitted = scale * x + offset
    residuals = y - fitted
    rmse = float(np.sqrt(np.mean(residuals**2)))
    max_rel = float(np.max(np.abs(residuals) / y))
    cal = Calibration(
        scale=float(scale),
        offset_ms=float(offset),
        graph_signature=cost.graph_signature,
        method=method,
        n_points=len(pairs),
        residuals_ms=tuple(residuals.tolist()),
        rmse_ms=rmse,
        max_rel_error=max_rel,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        anchored=anchor is not None,
        weight_bandwidth_gbps=bandwidth,
    )
    _log.info(
        "calibration: latency ≈ %s over %d networks (rmse %.3g ms, max rel. error %.1f%%)",
        cal.describe(), cal.n_points, rmse, 100 * max_rel,
    )  # fmt: skip
    return cal


def _regress(
    x: np.ndarray, y: np.ndarray, *, method: CalibrationMethod, fit_offset: bool, relative_to: np.ndarray | None = None
) -> tuple[float, float]:
    """Fit y ≈ scale·x (+ offset) minimising the residuals relative to `relative_to` (default y)."""
    from sklearn.linear_model import HuberRegressor, LinearRegression

    r = y if relative_to is None else relative_to
    w = 1.0 / r
    # Each row divided by its measurement: y/r ≈ scale·(x/r) + offset·(1/r), with no intercept.
    # Columns are scaled to unit mean magnitude: HuberRegressor's tolerance assumes O(1) features.
    cols = [x * w, w] if fit_offset else [x * w]
    mags = [float(np.mean(np.abs(c))) or 1.0 for c in cols]
    X = np.column_stack([c / m for c, m in zip(cols, mags)])
    t = y * w
    if method == "linear":
        reg = LinearRegression(fit_intercept=False, positive=not fit_offset).fit(X, t)
        coef = reg.coef_
    else:
        coef = HuberRegressor(fit_intercept=False, alpha=0.0, max_iter=1000).fit(X, t).coef_
    scale = float(coef[0]) / mags[0]
    offset = float(coef[1]) / mags[1] if fit_offset else 0.0
    return scale, offset


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
    "MIN_PAIRS_FOR_WEIGHT_FLOOR",
    "WEIGHT_BANDWIDTHS_GBPS",
    "Calibration",
    "attach_calibration",
    "calibrations",
    "fit_calibration",
    "graph_signature",
]
