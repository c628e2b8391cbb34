"""End-to-end calibration: per-layer latency sums to the latency of the whole deployed network.

A sum of standalone layer timings misses launch overhead, operator fusion, memory traffic and every
operator the table does not hold (pooling, additions). Measuring a handful of randomly pruned
networks end to end and fitting ``T_net ≈ scale · Σ_l T_l + offset_ms`` corrects that. The fit is
stored in the table's metadata (``"calibration"``, one entry per network), so the table file carries
everything its cost model needs.
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

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise TableError(
                f"a calibration needs a positive scale (latency must grow with the layer sum); got {self.scale}"
            )
        if not math.isfinite(self.offset_ms):
            raise TableError(f"a calibration offset must be finite; got {self.offset_ms}")
        object.__setattr__(self, "residuals_ms", tuple(float(r) for r in self.residuals_ms))

    def apply(self, layer_sum_ms: float) -> float:
        """The calibrated end-to-end latency of a network whose layers sum to `layer_sum_ms`."""
        return self.scale * layer_sum_ms + self.offset_ms

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
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TableError(
                f"malformed calibration object {dict(obj)!r} ({exc}); refit it with `fit_calibration`"
            ) from None


def fit_calibration(
    cost: LatencyCost,
    pairs: Sequence[tuple[Sequence[int], float]],
    *,
    method: CalibrationMethod = "huber",
    fit_offset: bool = True,
) -> Calibration:
    """Fit ``measured_ms ≈ scale · Σ_l T_l(channels) + offset_ms`` over end-to-end measurements.

    Args:
        cost: the (uncalibrated or calibrated: its layer sums are used either way) cost of the network.
        pairs: (channels per group, measured end-to-end latency in ms) of a few pruned networks;
            spread them over the range of interest (e.g. dense, and random keep ratios in [0.2, 1]).
        method: ``"huber"`` (scikit-learn `HuberRegressor`: one disturbed measurement does not tilt the
            fit) or ``"linear"`` (least squares with a non-negative scale).
        fit_offset: fit `offset_ms` (launch overhead and unpriced operators); False fits a scale only.

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
    x = np.array([cost.layer_sum_ms(ch) for ch, _ in pairs], dtype=np.float64)
    y = np.array([float(ms) for _, ms in pairs], dtype=np.float64)
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ConfigError(f"measured end-to-end latencies must be positive ms; got {y.tolist()}")
    if fit_offset and np.ptp(x) <= 1e-9 * max(float(np.max(x)), 1e-12):
        raise ConfigError(
            "every calibration network has the same layer sum: a scale and an offset cannot both be fitted; "
            "measure networks pruned to different widths, or pass fit_offset=False"
        )
    scale, offset = _regress(x, y, method=method, fit_offset=fit_offset)
    if not scale > 0:
        raise TableError(
            f"calibration fitted a non-positive scale ({scale:.4g}): the table's layer sums do not track the "
            "measured latencies (a table from another device, or measurements dominated by noise?)"
        )
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
    )
    _log.info(
        "calibration: latency ≈ %.4g · layer sum + %.4g ms over %d networks (rmse %.3g ms, max rel. error %.1f%%)",
        cal.scale, cal.offset_ms, cal.n_points, rmse, 100 * max_rel,
    )  # fmt: skip
    return cal


def _regress(x: np.ndarray, y: np.ndarray, *, method: CalibrationMethod, fit_offset: bool) -> tuple[float, float]:
    from sklearn.linear_model import HuberRegressor, LinearRegression

    # Fit on x scaled to unit mean: HuberRegressor's regularisation and tolerance assume O(1) features.
    s = float(np.mean(x)) or 1.0
    X = (x / s).reshape(-1, 1)
    if method == "linear":
        reg = LinearRegression(fit_intercept=fit_offset, positive=True).fit(X, y)
        return float(reg.coef_[0]) / s, float(reg.intercept_) if fit_offset else 0.0
    huber = HuberRegressor(fit_intercept=fit_offset, alpha=0.0, max_iter=1000).fit(X, y)
    return float(huber.coef_[0]) / s, float(huber.intercept_) if fit_offset else 0.0


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
    "Calibration",
    "attach_calibration",
    "calibrations",
    "fit_calibration",
    "graph_signature",
]
