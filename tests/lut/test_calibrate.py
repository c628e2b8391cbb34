"""End-to-end calibration: recovering a known scale and offset, storing it with the table, applying it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from _lut_helpers import macs_latency, mobile_graph, residual_graph, synthetic_table
from hwdsa.errors import ConfigError, TableError
from hwdsa.lut.calibrate import (
    WEIGHT_BANDWIDTHS_GBPS,
    Calibration,
    attach_calibration,
    calibrations,
    fit_calibration,
    graph_signature,
)
from hwdsa.lut.cost_model import LatencyCost
from hwdsa.lut.fit import weight_mb
from hwdsa.lut.grid import GridConfig
from hwdsa.lut.table import LatencyTable

SCALE, OFFSET_MS = 1.3, 0.02


def _setup() -> tuple[LatencyTable, LatencyCost]:
    graph = mobile_graph()
    table = synthetic_table(graph, macs_latency, config=GridConfig("gpu"))
    return table, LatencyCost.fit(table, graph)


def _priced(cost: LatencyCost, channels: list[int]) -> tuple[float, torch.Tensor]:
    """The differentiable cost at whole counts (std 0) and its gradient in the keep ratios."""
    alpha = torch.tensor([k / n for k, n in zip(channels, cost.group_sizes)], dtype=torch.float64, requires_grad=True)
    value = cost(alpha, std=0.0)
    value.backward()
    assert alpha.grad is not None
    return float(value.detach()), alpha.grad


def _pairs(cost: LatencyCost, n: int, *, noise: float = 0.0, seed: int = 0) -> list[tuple[list[int], float]]:
    """End-to-end 'measurements' of randomly pruned networks that follow SCALE·sum + OFFSET_MS."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        counts = [int(rng.integers(max(1, c // 5), c + 1)) for c in cost.group_sizes]
        ms = SCALE * cost.layer_sum_ms(counts) + OFFSET_MS
        pairs.append((counts, ms * (1 + noise * rng.standard_normal())))
    return pairs


@pytest.mark.parametrize("method", ["huber", "linear"])
def test_recovers_known_scale_and_offset(method: str) -> None:
    _, cost = _setup()
    cal = fit_calibration(cost, _pairs(cost, 8), method=method)  # type: ignore[arg-type]
    assert cal.scale == pytest.approx(SCALE, rel=1e-4)
    assert cal.offset_ms == pytest.approx(OFFSET_MS, rel=1e-3, abs=1e-4)
    assert cal.n_points == 8 and len(cal.residuals_ms) == 8
    assert max(abs(r) for r in cal.residuals_ms) < 1e-3 and cal.rmse_ms < 1e-3
    assert cal.graph_signature == cost.graph_signature


def test_huber_resists_one_disturbed_measurement() -> None:
    _, cost = _setup()
    pairs = _pairs(cost, 10, noise=0.005, seed=3)
    counts, ms = pairs[2]
    pairs[2] = (counts, ms * 1.3)  # another process ran during that measurement
    huber = fit_calibration(cost, pairs, method="huber")
    lsq = fit_calibration(cost, pairs, method="linear")
    assert abs(huber.scale - SCALE) < abs(lsq.scale - SCALE)
    assert huber.scale == pytest.approx(SCALE, rel=0.05)
    assert max(huber.residuals_ms, key=abs) == pytest.approx(huber.residuals_ms[2])  # the outlier stands out


def test_scale_only() -> None:
    _, cost = _setup()
    pairs = [(c, ms - OFFSET_MS) for c, ms in _pairs(cost, 4)]
    cal = fit_calibration(cost, pairs, fit_offset=False)
    assert cal.offset_ms == 0.0 and cal.scale == pytest.approx(SCALE, rel=1e-3)


@pytest.mark.parametrize("method", ["huber", "linear"])
def test_anchored_fit_goes_through_the_dense_measurement(method: str) -> None:
    """A fraction budget is a fraction of the dense network's measured latency: the fit is exact there."""
    _, cost = _setup()
    dense_ms = SCALE * cost.dense + OFFSET_MS
    others = _pairs(cost, 7, noise=0.002, seed=1)
    exact = fit_calibration(cost, [(list(cost.group_sizes), dense_ms), *others], method=method, anchor=0)  # type: ignore[arg-type]
    assert exact.scale == pytest.approx(SCALE, rel=0.05) and exact.offset_ms == pytest.approx(OFFSET_MS, abs=0.005)
    pairs = [(list(cost.group_sizes), dense_ms * 1.02), *others]  # the dense timing lies off the others' line
    free = fit_calibration(cost, pairs, method=method)  # type: ignore[arg-type]
    anchored = fit_calibration(cost, pairs, method=method, anchor=0)  # type: ignore[arg-type]
    assert anchored.anchored and not free.anchored
    assert anchored.residuals_ms[0] == pytest.approx(0.0, abs=1e-12)
    assert anchored.apply(cost.dense) == pytest.approx(pairs[0][1], rel=1e-12)
    assert abs(free.residuals_ms[0]) > 1e-4  # a free fit spreads the dense point's error over the others
    assert Calibration.from_json(anchored.to_json()) == anchored
    with pytest.raises(ConfigError, match="anchor must index one of the 8 pairs"):
        fit_calibration(cost, pairs, anchor=8)
    with pytest.raises(ConfigError, match="needs fit_offset"):
        fit_calibration(cost, pairs, anchor=0, fit_offset=False)


def _floored_pairs(cost: LatencyCost, bandwidth: float, n: int) -> list[tuple[list[int], float]]:
    """'Measurements' of a network that streams its weights at `bandwidth` GB/s: SCALE·Σ max(T, W/bw) + OFFSET."""
    return [(c, SCALE * cost.layer_sum_ms(c, weight_bandwidth_gbps=bandwidth) + OFFSET_MS) for c, _ in _pairs(cost, n, seed=5)]


def test_a_weight_stream_floor_is_found_and_priced() -> None:
    graph = mobile_graph()  # a fast device: its layers take about as long as streaming their weights at 5-20 GB/s
    cost = LatencyCost.fit(synthetic_table(graph, lambda s: macs_latency(s) / 100, config=GridConfig("gpu")), graph)
    # a bandwidth at which the floor binds for some layers and not others, taken from the grid fit_calibration tries
    dense = cost.breakdown(cost.group_sizes)
    ratios = sorted(weight_mb(p.spec) / p.latency_ms for p in dense)
    bandwidth = min(WEIGHT_BANDWIDTHS_GBPS, key=lambda b: abs(b - ratios[len(ratios) // 2]))
    assert any(weight_mb(p.spec) / bandwidth > p.latency_ms for p in dense)
    assert any(weight_mb(p.spec) / bandwidth < p.latency_ms for p in dense)
    cal = fit_calibration(cost, _floored_pairs(cost, bandwidth, 12))
    assert cal.weight_bandwidth_gbps == pytest.approx(bandwidth)
    assert cal.scale == pytest.approx(SCALE, rel=1e-3) and cal.offset_ms == pytest.approx(OFFSET_MS, abs=1e-4)
    assert "weights streamed at" in cal.describe() and Calibration.from_json(cal.to_json()) == cal
    floored = cost.with_calibration(cal)
    on_grid = [max(p for p in cost.step_points(g) if p <= c // 2) for g, c in enumerate(cost.group_sizes)]
    assert floored.exact(on_grid) == pytest.approx(cal.apply(cost.layer_sum_ms(on_grid, weight_bandwidth_gbps=bandwidth)), rel=1e-9)
    counts = [5, 13, 20]  # between grid points the floored surface is interpolated, like the table's
    assert floored.exact(counts) == pytest.approx(cal.apply(cost.layer_sum_ms(counts, weight_bandwidth_gbps=bandwidth)), rel=1e-2)
    for table_part, run_part in zip(cost.breakdown(on_grid), floored.breakdown(on_grid)):
        assert run_part.latency_ms == pytest.approx(max(table_part.latency_ms, weight_mb(table_part.spec) / bandwidth))
    assert floored.layer_sum_ms(counts) == cost.layer_sum_ms(counts)  # a calibration is fitted on the table's sums
    alpha = torch.tensor([0.3, 0.5, 0.9], dtype=torch.float64, requires_grad=True)
    value = floored(alpha)
    value.backward()
    assert alpha.grad is not None and bool(torch.isfinite(alpha.grad).all()) and bool((alpha.grad >= 0).all())
    unfloored = cost.with_calibration(dataclasses.replace(cal, weight_bandwidth_gbps=None))
    assert float(value.detach()) > float(unfloored(alpha.detach()))  # the floor only ever adds time
    plain = fit_calibration(cost, _pairs(cost, 12))  # an affine network: no floor earns its place
    assert plain.weight_bandwidth_gbps is None
    assert fit_calibration(cost, _floored_pairs(cost, bandwidth, 12), weight_floor=False).weight_bandwidth_gbps is None


def test_stored_with_the_table_and_applied(tmp_path: Path) -> None:
    table, cost = _setup()
    cal = fit_calibration(cost, _pairs(cost, 6))
    path = attach_calibration(table, "mobile", cal).write(tmp_path / "t.csv")
    back = LatencyTable.read(path)
    assert calibrations(back) == {"mobile": cal}
    calibrated = LatencyCost.fit(back, mobile_graph())  # "auto" finds it by the graph's signature
    assert calibrated.calibration == cal
    counts = [5, 13, 20]
    assert calibrated.exact(counts) == pytest.approx(SCALE * cost.exact(counts) + OFFSET_MS, rel=1e-4)
    alpha = torch.tensor([0.4, 0.6, 0.8], dtype=torch.float64)
    assert float(calibrated(alpha)) == pytest.approx(cal.scale * float(cost(alpha)) + cal.offset_ms, rel=1e-12)
    assert LatencyCost.fit(back, mobile_graph(), calibration=None).calibration is None
    assert LatencyCost.fit(back, mobile_graph(), calibration="mobile").calibration == cal


def test_calibration_of_another_network_is_not_applied() -> None:
    table, cost = _setup()
    cal = fit_calibration(cost, _pairs(cost, 5))
    other = residual_graph(8, 8)
    both = LatencyTable.concat([table, synthetic_table(other, macs_latency)], on_duplicate="keep_first")
    both = attach_calibration(both, "mobile", cal)
    assert graph_signature(other) != cal.graph_signature
    assert LatencyCost.fit(both, other).calibration is None  # "auto" skips it
    with pytest.raises(TableError, match="calibration fitted on network .* cannot apply to network"):
        LatencyCost.fit(both, other, calibration="mobile")
    with pytest.raises(TableError, match="no calibration 'resnet'; stored: mobile"):
        LatencyCost.fit(both, other, calibration="resnet")


def test_a_spill_step_is_found_where_the_weights_outgrow_a_capacity_and_priced_everywhere() -> None:
    """Networks above a weight footprint pay a fixed extra time: the fit finds where and how much."""
    _, cost = _setup()
    pairs = _pairs(cost, 24, seed=7)
    footprints = [cost.weights_mb(c) for c, _ in pairs]
    tried = [float(c) for c in np.geomspace(min(footprints), max(footprints), 9)]  # this toy network's KB, not MB
    splitting = [c for c in tried if 6 <= sum(f > c for f in footprints) <= 18]
    assert splitting, f"the test networks' weights ({min(footprints):.3g}-{max(footprints):.3g} MB) straddle no capacity tried"
    capacity = splitting[len(splitting) // 2]
    spill_ms = 0.2 * SCALE * cost.layer_sum_ms(pairs[0][0])
    stepped = [(c, ms + (spill_ms if cost.weights_mb(c) > capacity else 0.0)) for c, ms in pairs]
    cal = fit_calibration(cost, stepped, spill_capacities_mb=tried)
    assert cal.has_spill and cal.spill_ms == pytest.approx(spill_ms, rel=1e-3)
    assert all(cal.spills(cost.weights_mb(c)) == (cost.weights_mb(c) > capacity) for c, _ in pairs)
    assert cal.scale == pytest.approx(SCALE, rel=1e-3) and max(abs(r) for r in cal.residuals_ms) < 1e-3
    assert "above" in cal.describe() and Calibration.from_json(cal.to_json()) == cal
    priced = cost.with_calibration(cal)
    for c, ms in stepped:  # exact, and the differentiable cost at the same counts (sigma 0), both pay the step
        assert priced.exact(c) == pytest.approx(ms, rel=1e-6)
        value, grad = _priced(priced, c)
        assert value == pytest.approx(priced.exact(c), rel=0.02)
        assert bool(torch.isfinite(grad).all()) and bool((grad >= 0).all())
    with pytest.raises(ConfigError, match="pass the network's weights_mb"):
        cal.apply(1.0)
    assert not fit_calibration(cost, pairs, spill_capacities_mb=tried).has_spill  # affine: no step earns its place
    assert not fit_calibration(cost, stepped, spill=False, spill_capacities_mb=tried).has_spill
    assert not fit_calibration(cost, stepped).has_spill  # the default capacities (MB) all lie above these networks
    with pytest.raises(ConfigError, match="spill capacities must be positive"):
        fit_calibration(cost, stepped, spill_capacities_mb=[0.0])
    with pytest.raises(TableError, match="needs spill_above_mb"):
        Calibration(scale=1.0, offset_ms=0.0, graph_signature="x", spill_ms=0.1)
    with pytest.raises(TableError, match="spill_above_mb must be positive"):
        Calibration(scale=1.0, offset_ms=0.0, graph_signature="x", spill_ms=0.1, spill_above_mb=-1.0)


def test_a_footprint_term_is_found_where_latency_grows_with_the_square_root_of_the_weights() -> None:
    """A cost that grows gradually with the weight footprint: fitted as a continuous term, priced with its gradient."""
    _, cost = _setup()
    pairs = _pairs(cost, 24, seed=5)
    per_sqrt_mb = 0.3 * SCALE * cost.layer_sum_ms(pairs[0][0]) / np.sqrt(cost.weights_mb(pairs[0][0]))
    grown = [(c, ms + per_sqrt_mb * float(np.sqrt(cost.weights_mb(c)))) for c, ms in pairs]
    cal = fit_calibration(cost, grown)
    assert not cal.has_spill and cal.reads_weights and cal.footprint_ms == pytest.approx(per_sqrt_mb, rel=1e-3)
    assert cal.scale == pytest.approx(SCALE, rel=1e-3) and max(abs(r) for r in cal.residuals_ms) < 1e-3
    assert "sqrt(MB of weights)" in cal.describe() and Calibration.from_json(cal.to_json()) == cal
    priced = cost.with_calibration(cal)
    plain = cost.with_calibration(dataclasses.replace(cal, footprint_ms=0.0))
    for c, ms in grown[:6]:
        assert priced.exact(c) == pytest.approx(ms, rel=1e-6)
        value, grad = _priced(priced, c)
        assert value == pytest.approx(ms, rel=0.02)
        assert bool((grad > _priced(plain, c)[1]).all()), "the term's own slope adds to every group's price"
    with pytest.raises(ConfigError, match="pass the network's weights_mb"):
        cal.apply(1.0)
    assert fit_calibration(cost, pairs).footprint_ms == 0.0  # affine: the term does not earn its place
    assert fit_calibration(cost, grown, footprint=False).footprint_ms == 0.0
    assert fit_calibration(cost, grown[:7]).footprint_ms == 0.0  # too few networks to try it
    with pytest.raises(TableError, match="footprint_ms must be >= 0"):
        Calibration(scale=1.0, offset_ms=0.0, graph_signature="x", footprint_ms=-0.1)


def test_a_stream_term_is_found_where_the_weights_beyond_a_capacity_cost_time_per_mb() -> None:
    """Weights beyond the cache stream from memory: a cost linear in the MB over a capacity, fitted with its capacity,
    priced by `exact` and by the differentiable cost with its gradient (zero below the capacity)."""
    _, cost = _setup()
    pairs = _pairs(cost, 24, seed=11)
    footprints = sorted(cost.weights_mb(c) for c, _ in pairs)
    tried = [float(c) for c in np.geomspace(footprints[0], footprints[-1], 9)]  # this toy network's KB, not MB
    capacity = next(c for c in tried if sum(f > c for f in footprints) <= 14)
    per_mb = 0.5 * SCALE * cost.layer_sum_ms(pairs[0][0]) / (footprints[-1] - capacity)
    streamed = [(c, ms + per_mb * max(cost.weights_mb(c) - capacity, 0.0)) for c, ms in pairs]
    cal = fit_calibration(cost, streamed, stream_capacities_mb=tried)
    assert cal.streams and not cal.has_spill and cal.footprint_ms == 0.0
    assert cal.stream_above_mb == capacity and cal.stream_ms_per_mb == pytest.approx(per_mb, rel=1e-3)
    assert cal.scale == pytest.approx(SCALE, rel=1e-3) and max(abs(r) for r in cal.residuals_ms) < 1e-3
    assert "per MB of weights beyond" in cal.describe() and Calibration.from_json(cal.to_json()) == cal
    priced = cost.with_calibration(cal)
    plain = cost.with_calibration(dataclasses.replace(cal, stream_ms_per_mb=0.0, stream_above_mb=None))
    for c, ms in streamed[:8]:
        assert priced.exact(c) == pytest.approx(ms, rel=1e-6)
        value, grad = _priced(priced, c)
        assert value == pytest.approx(ms, rel=0.02)
        beyond = cost.weights_mb(c) > capacity  # at whole counts and std 0 the expected footprint is the exact one
        assert bool((grad > _priced(plain, c)[1]).all()) == beyond, "the term prices a channel only beyond the capacity"
    assert not fit_calibration(cost, pairs, stream_capacities_mb=tried).streams  # affine: the term does not earn its place
    assert not fit_calibration(cost, streamed, stream=False, stream_capacities_mb=tried).streams
    with pytest.raises(ConfigError, match="stream capacities must be positive"):
        fit_calibration(cost, streamed, stream_capacities_mb=[-1.0])
    with pytest.raises(TableError, match="needs stream_above_mb"):
        Calibration(scale=1.0, offset_ms=0.0, graph_signature="x", stream_ms_per_mb=0.1)


def test_refusals() -> None:
    table, cost = _setup()
    with pytest.raises(ConfigError, match="at least 3 .* pairs; got 2"):
        fit_calibration(cost, _pairs(cost, 2))
    with pytest.raises(ConfigError, match="must be positive ms"):
        fit_calibration(cost, [(c, -1.0) for c, _ in _pairs(cost, 3)])
    with pytest.raises(ConfigError, match="same layer sum"):
        fit_calibration(cost, [([16, 24, 32], 1.0)] * 3)
    with pytest.raises(ConfigError, match="method must be"):
        fit_calibration(cost, _pairs(cost, 3), method="ransac")  # type: ignore[arg-type]
    decreasing = [(c, 10.0 - cost.layer_sum_ms(c)) for c, _ in _pairs(cost, 6)]
    with pytest.raises(TableError, match="non-positive scale"):
        fit_calibration(cost, decreasing, method="linear")
    with pytest.raises(TableError, match="positive scale"):
        Calibration(scale=0.0, offset_ms=0.0, graph_signature="x")
    broken = table.with_meta(calibration={"mobile": {"scale": 1.0}})
    with pytest.raises(TableError, match="malformed calibration object"):
        calibrations(broken)
