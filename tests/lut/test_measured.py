"""The whole path on real measurements: time real torch convolutions on this CPU, build a table,
fit the cost, calibrate it against real end-to-end timings of pruned networks, round under a budget.

Timings on a shared machine are noisy, so the assertions are the ones noise cannot break: the
pipeline accepts real data, the budget cost stays monotone and consistent with the table, the
calibration lands near the measurements, and rounding keeps the budget.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from _lut_helpers import conv, graph_of
from hwdsa.errors import BudgetInfeasibleError
from hwdsa.lut.calibrate import attach_calibration, fit_calibration
from hwdsa.lut.cost_model import LatencyCost
from hwdsa.lut.grid import GridConfig, plan_grid
from hwdsa.lut.rounding import round_to_latency_optimal
from hwdsa.lut.table import LatencyTable
from hwdsa.profilers.base import LayerSpec, TimingProtocol, time_callable

PROTOCOL = TimingProtocol(warmup=3, repeats=7, max_attempts=2, min_run_ms=0.3)
HW = 16


def _module(spec: LayerSpec) -> nn.Module:
    """The deployed form of a spec: conv with bias (BatchNorm folded) and its activation."""
    layer = nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel, spec.stride, spec.padding, groups=spec.groups)
    return nn.Sequential(layer, nn.ReLU()) if spec.activation == "relu" else layer


@torch.inference_mode()
def _time(module: nn.Module, shape: tuple[int, ...]) -> float:
    x = torch.randn(*shape)
    module.eval()
    return time_callable(lambda: module(x), PROTOCOL).median_ms


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> tuple[LatencyTable, Path]:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core: less interference from the other processes on this machine
    try:
        graph = _graph()
        specs = plan_grid(graph, config=GridConfig("cpu", cpu_points=3, multiple=4)).specs()
        items = []
        for spec in specs:
            m = _module(spec)
            x = torch.randn(spec.batch_size, spec.in_channels, *spec.in_size)
            with torch.inference_mode():
                items.append((spec, time_callable(lambda: m(x), PROTOCOL)))
        table = LatencyTable.from_measurements(items, device="this-cpu-1-thread", backend="torch_cpu", protocol={"repeats": 7})
        path = table.write(tmp_path_factory.mktemp("lut") / "cpu.csv")
    finally:
        torch.set_num_threads(threads)
    return table, path


def _graph():  # type: ignore[no-untyped-def]
    return graph_of(
        [
            conv("a", [(None, 3)], 0, 32, hw=HW, activation="relu"),
            conv("b", [(0, 32)], 1, 32, hw=HW, activation="relu"),
        ],
        [32, 32],
        input_shape=(1, 3, HW, HW),
    )


def test_real_table_fits_and_prices(measured: tuple[LatencyTable, Path]) -> None:
    _, path = measured
    table = LatencyTable.read(path, expect_backend="torch_cpu")
    assert len(table) == len(plan_grid(_graph(), config=GridConfig("cpu", cpu_points=3, multiple=4)).specs())
    cost = LatencyCost.fit(table, _graph())
    dense_specs = [fl.grid.spec_at(fl.grid.in_axis.hi, fl.grid.out_axis.hi) for fl in cost.layers]
    assert cost.dense == pytest.approx(sum(table.lookup(s) for s in dense_specs))
    values = [float(cost(torch.tensor([r, r], dtype=torch.float64))) for r in np.linspace(0.05, 1.0, 30)]
    assert all(np.isfinite(values)) and all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    alpha = torch.tensor([0.4, 0.7], dtype=torch.float64, requires_grad=True)
    cost(alpha, std=1.0).backward()
    assert alpha.grad is not None and (alpha.grad >= 0).all()


def test_real_calibration_and_rounding(measured: tuple[LatencyTable, Path], tmp_path: Path) -> None:
    table, _ = measured
    graph = _graph()
    cost = LatencyCost.fit(table, graph)
    rng = np.random.default_rng(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pairs = []
    try:
        for counts in ([32, 32], [8, 8], *([int(rng.integers(4, 33)), int(rng.integers(4, 33))] for _ in range(4))):
            net = nn.Sequential(nn.Conv2d(3, counts[0], 3, padding=1), nn.ReLU(), nn.Conv2d(counts[0], counts[1], 3, padding=1), nn.ReLU())
            pairs.append((counts, _time(net, (1, 3, HW, HW))))
    finally:
        torch.set_num_threads(threads)
    cal = fit_calibration(cost, pairs)
    assert cal.scale > 0 and len(cal.residuals_ms) == len(pairs)
    # Typically within a few percent; the median is robust to one network timed while the machine was busy.
    measured_ms = np.array([ms for _, ms in pairs])
    assert float(np.median(np.abs(cal.residuals_ms) / measured_ms)) < 0.3, cal
    calibrated = LatencyCost.fit(LatencyTable.read(attach_calibration(table, "tiny", cal).write(tmp_path / "c.csv")), graph)
    assert calibrated.calibration == cal
    limit = 0.6 * calibrated.dense
    try:
        counts = round_to_latency_optimal([20.3, 17.8], calibrated, limit, multiple=1)
    except BudgetInfeasibleError:
        # Only when the repair walked every group down to one channel (an overhead-bound CPU).
        assert calibrated.exact([1, 1]) > limit
    else:
        assert calibrated.exact(counts) <= limit
