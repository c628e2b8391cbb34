"""LatencyCost: a differentiable, non-decreasing budget function that agrees with the table at integers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from _lut_helpers import conv, graph_of, macs_latency, mobile_graph, residual_graph, synthetic_table
from hwdsa.costs import Budget, CostModel
from hwdsa.errors import ConfigError, KeepRatioError, TableError
from hwdsa.lut.cost_model import LatencyCost
from hwdsa.lut.grid import GridConfig
from hwdsa.profilers.base import LayerSpec

STEP_MS = 0.5


def _stem_only(width: int = 64) -> object:
    """One convolution whose output group (width channels) is the only thing pruning changes."""
    return graph_of([conv("stem", [(None, 3)], 0, width)], [width])


def _step_latency(spec: LayerSpec) -> float:
    """A tile staircase: flat-ish, then a jump of STEP_MS once the layer reaches 32 output channels."""
    return 0.1 + 1e-3 * spec.out_channels + (STEP_MS if spec.out_channels >= 32 else 0.0)


def _dip_latency(spec: LayerSpec) -> float:
    """Increasing, except that 40 output channels run faster than 33..39 (an aligned kernel)."""
    base = 0.1 + 1e-2 * spec.out_channels
    return base - 0.2 if spec.out_channels == 40 else base


def _ratios(*values: float, grad: bool = True) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


class TestProtocol:
    def test_is_a_cost_model(self) -> None:
        graph = residual_graph(8, 8)
        cost = LatencyCost.fit(synthetic_table(graph, macs_latency), graph)
        assert isinstance(cost, CostModel)
        assert (cost.name, cost.unit, cost.group_sizes) == ("latency", "ms", (8, 8))
        assert Budget.fraction_of_dense(cost, 0.5).limit == pytest.approx(0.5 * cost.dense)

    def test_dense_is_the_sum_of_the_full_width_entries(self) -> None:
        graph = residual_graph(8, 8)
        table = synthetic_table(graph, macs_latency)
        cost = LatencyCost.fit(table, graph)
        full = [fl.grid.spec_at(fl.grid.in_axis.hi, fl.grid.out_axis.hi) for fl in cost.layers]
        assert cost.dense == pytest.approx(math.fsum(table.lookup(s) for s in full), rel=1e-12)
        assert float(cost(torch.ones(2, dtype=torch.float64))) == pytest.approx(cost.dense, rel=1e-12)

    def test_bad_ratios_and_channels(self) -> None:
        graph = residual_graph(8, 8)
        cost = LatencyCost.fit(synthetic_table(graph, macs_latency), graph)
        with pytest.raises(KeepRatioError, match="one keep ratio per channel group \\(2\\)"):
            cost(torch.ones(3))
        with pytest.raises(KeepRatioError, match="must lie in \\(0, 1\\]"):
            cost(torch.tensor([0.0, 1.0]))
        with pytest.raises(KeepRatioError, match="group 1: channel count 9 outside 1..8"):
            cost.exact([8, 9])
        with pytest.raises(ConfigError, match="whole channel counts"):
            cost.exact([4.5, 8])
        with pytest.raises(ConfigError, match="std must be finite and >= 0"):
            cost(torch.ones(2), std=-1.0)
        with pytest.raises(ConfigError, match="one value or one per channel group \\(2\\); got 3"):
            cost(torch.ones(2), std=[1.0, 2.0, 3.0])
        with pytest.raises(ConfigError, match="default_std must be finite"):
            LatencyCost(cost.layers, cost.group_sizes, graph_signature=cost.graph_signature, default_std=float("nan"))

    def test_missing_table_entries_raise(self) -> None:
        graph = residual_graph(8, 8)
        small = residual_graph(4, 4)
        with pytest.raises(TableError, match="layer 'stem': the latency table lacks"):
            LatencyCost.fit(synthetic_table(small, macs_latency), graph)


class TestGradient:
    @pytest.mark.parametrize("std", [0.0, 1.0, 3.0])
    def test_gradient_finite_and_non_negative(self, std: float) -> None:
        """Two convolutions and a residual group: ∂T/∂α ≥ 0 for every group, > 0 for some."""
        graph = residual_graph(16, 16)
        cost = LatencyCost.fit(synthetic_table(graph, macs_latency, config=GridConfig("gpu")), graph)
        rng = np.random.default_rng(0)
        for _ in range(10):
            alpha = _ratios(*rng.uniform(0.05, 1.0, size=2))
            cost(alpha, std=std).backward()
            assert alpha.grad is not None and torch.isfinite(alpha.grad).all()
            assert (alpha.grad >= 0).all() and (alpha.grad > 0).any()

    def test_gradient_matches_finite_differences(self) -> None:
        graph = mobile_graph()
        cost = LatencyCost.fit(synthetic_table(graph, macs_latency, config=GridConfig("gpu")), graph)
        alpha = _ratios(0.43, 0.61, 0.77)
        y = cost(alpha, std=2.0)
        y.backward()
        assert alpha.grad is not None
        eps = 1e-6
        for g in range(3):
            hi, lo = alpha.detach().clone(), alpha.detach().clone()
            hi[g] += eps
            lo[g] -= eps
            fd = (float(cost(hi, std=2.0)) - float(cost(lo, std=2.0))) / (2 * eps)
            assert float(alpha.grad[g]) == pytest.approx(fd, rel=1e-5, abs=1e-9)

    def test_std_is_not_differentiated(self) -> None:
        graph = residual_graph(8, 8)
        cost = LatencyCost.fit(synthetic_table(graph, macs_latency), graph)
        std = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
        cost(_ratios(0.5, 0.5), std=std).backward()
        assert std.grad is None

    def test_float32_ratios_give_float32_cost(self) -> None:
        graph = residual_graph(8, 8)
        cost = LatencyCost.fit(synthetic_table(graph, macs_latency), graph)
        alpha = torch.full((2,), 0.5, requires_grad=True)
        y = cost(alpha)
        y.backward()
        assert y.dtype == torch.float32 and alpha.grad is not None and alpha.grad.dtype == torch.float32


class TestAgreesWithTable:
    def test_equals_exact_at_integer_counts(self) -> None:
        """With σ = 0 the cost is the table at integer counts (monotone table: envelope = raw)."""
        graph = mobile_graph()
        cost = LatencyCost.fit(synthetic_table(graph, macs_latency, config=GridConfig("gpu")), graph)
        rng = np.random.default_rng(1)
        for _ in range(10):
            counts = [int(rng.integers(1, c + 1)) for c in cost.group_sizes]
            ratios = torch.tensor([k / c for k, c in zip(counts, cost.group_sizes)], dtype=torch.float64)
            assert float(cost(ratios)) == pytest.approx(cost.exact(counts), rel=1e-9)

    def test_linear_latency_has_an_unbiased_expectation(self) -> None:
        """E[K] = αC exactly: on a latency linear in the count, any spread gives the line itself."""
        graph = _stem_only(64)
        cost = LatencyCost.fit(synthetic_table(graph, lambda s: 0.2 + 0.01 * s.out_channels), graph)  # type: ignore[arg-type]
        for alpha in (0.05, 0.3, 0.517, 0.9, 1.0):
            for std in (0.0, 0.7, 4.0):
                got = float(cost(torch.tensor([alpha], dtype=torch.float64), std=std))
                assert got == pytest.approx(0.2 + 0.01 * 64 * alpha, rel=1e-9)

    def test_breakdown_flags_interpolated_layers(self) -> None:
        graph = residual_graph(16, 16)
        cost = LatencyCost.fit(synthetic_table(graph, macs_latency, config=GridConfig("gpu")), graph)
        parts = {p.name: p for p in cost.breakdown([16, 12])}
        assert parts["stem"].is_measured and not parts["block.conv1"].is_measured
        assert parts["block.conv1"].spec.out_channels == 12
        assert cost.exact([16, 12]) == pytest.approx(sum(p.latency_ms for p in parts.values()))


class TestStaircase:
    """A toy table with a known step at 32 output channels."""

    def _cost(self) -> LatencyCost:
        graph = _stem_only(64)
        return LatencyCost.fit(synthetic_table(graph, _step_latency), graph)  # type: ignore[arg-type]

    def _at(self, cost: LatencyCost, count: float, std: float) -> tuple[float, float]:
        alpha = _ratios(count / 64)
        y = cost(alpha, std=std)
        y.backward()
        assert alpha.grad is not None
        return float(y.detach()), float(alpha.grad[0]) / 64  # ms per channel

    def test_sharpened_cost_keeps_the_step(self) -> None:
        cost = self._cost()
        for std in (0.0, 0.05):
            below, _ = self._at(cost, 31.05, std)
            above, _ = self._at(cost, 32.05, std)
            assert above - below == pytest.approx(STEP_MS, rel=0.07)

    def test_smoothed_cost_has_a_gradient_across_the_step(self) -> None:
        cost = self._cost()
        _, flat = self._at(cost, 36.0, 0.0)  # σ = 0: only the small slope is visible 4 channels away
        assert flat == pytest.approx(1e-3, rel=1e-6)
        for count in (27.5, 29.0, 34.0, 36.0):
            value, slope = self._at(cost, count, 4.0)
            assert slope > 10 * flat
        # and the smoothed cost still climbs the whole step
        low, _ = self._at(cost, 20.0, 4.0)
        high, _ = self._at(cost, 44.0, 4.0)
        assert high - low == pytest.approx(STEP_MS + 24e-3, rel=0.02)

    def test_ceil_interpolation_on_a_sparse_grid_keeps_the_staircase(self) -> None:
        """Measured only at multiples of 8, a tile staircase (T(33..40) = T(40)) is exact with "ceil"."""
        graph = _stem_only(64)
        table = synthetic_table(graph, lambda s: 0.1 + 0.01 * math.ceil(s.out_channels / 8), config=GridConfig("gpu"))  # type: ignore[arg-type]
        ceil = LatencyCost.fit(table, graph, interpolation="ceil")  # type: ignore[arg-type]
        linear = LatencyCost.fit(table, graph)  # type: ignore[arg-type]
        truth = 0.1 + 0.01 * math.ceil(35 / 8)
        assert ceil.exact([35]) == pytest.approx(truth)
        assert linear.exact([35]) < truth


class TestNonMonotoneTable:
    def _cost(self, **kw: object) -> LatencyCost:
        graph = _stem_only(64)
        return LatencyCost.fit(synthetic_table(graph, _dip_latency), graph, **kw)  # type: ignore[arg-type]

    def test_budget_cost_is_monotone_exact_keeps_the_dip(self) -> None:
        cost = self._cost()
        assert cost.exact([40]) < cost.exact([36])  # the true table value
        values = [float(cost(torch.tensor([k / 64], dtype=torch.float64))) for k in np.linspace(1, 64, 400)]
        assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
        assert float(cost(torch.tensor([40 / 64], dtype=torch.float64))) >= cost.exact([40])  # never under-priced

    def test_gradient_never_negative_around_the_dip(self) -> None:
        cost = self._cost()
        for count in np.linspace(36, 44, 17):
            for std in (0.0, 2.0):
                alpha = _ratios(count / 64)
                cost(alpha, std=std).backward()
                assert alpha.grad is not None and float(alpha.grad[0]) >= 0

    def test_isotonic_surface_is_monotone_too(self) -> None:
        cost = self._cost(monotone="isotonic")
        values = [float(cost(torch.tensor([k / 64], dtype=torch.float64))) for k in np.linspace(1, 64, 200)]
        assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))

    def test_monotone_in_every_group_of_a_network(self) -> None:
        graph = mobile_graph()
        rng = np.random.default_rng(2)

        def noisy(spec: LayerSpec) -> float:
            return macs_latency(spec) * (1 + 0.3 * rng.standard_normal())

        cost = LatencyCost.fit(synthetic_table(graph, lambda s: abs(noisy(s)) + 1e-3), graph)
        for _ in range(20):
            alpha = torch.tensor(rng.uniform(0.05, 0.9, 3), dtype=torch.float64)
            base = float(cost(alpha, std=1.5))
            for g in range(3):
                up = alpha.clone()
                up[g] += 0.1
                assert float(cost(up, std=1.5)) >= base - 1e-12


def test_cost_runs_on_the_tensor_device() -> None:
    graph = residual_graph(8, 8)
    cost = LatencyCost.fit(synthetic_table(graph, macs_latency), graph)
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    alpha = torch.full((2,), 0.5, device="cuda", requires_grad=True)
    y = cost(alpha)
    y.backward()
    assert y.device.type == "cuda" and float(y) == pytest.approx(float(cost(alpha.detach().cpu())))


class TestSpreadOnATread:
    """A tiled latency (flat between multiples of 8) prices a group on a tread at zero unless the kept count's
    spread is priced, which `AdmmConfig.smooth_costs` does at every z-step (issue: the price at 38 of 64)."""

    @staticmethod
    def _cost() -> LatencyCost:
        graph = graph_of([conv("a", [(None, 3)], 0, 64), conv("b", [(0, 64)], 1, 64)], [64, 64])

        def tiles(s: LayerSpec) -> float:
            return 0.05 + 0.01 * math.ceil(s.in_channels / 8) * math.ceil(s.out_channels / 8)

        return LatencyCost.fit(synthetic_table(graph, tiles), graph)

    def test_the_spread_gives_a_tread_a_price(self) -> None:
        cost = self._cost()
        at = _ratios(38 / 64, 40.5 / 64)  # group 1 between 40 and 41: on a riser
        (flat,) = torch.autograd.grad(cost(at), [at])
        assert float(flat[0]) == 0.0 and float(flat[1]) > 0
        smooth = cost.with_spread(torch.tensor([3.0, 3.0]))
        (priced,) = torch.autograd.grad(smooth(at), [at])
        assert float(priced[0]) > 0.2 * float(priced[1])
        assert smooth.exact([38, 41]) == cost.exact([38, 41])  # integer prices are the table's either way
        assert cost.default_std == (0.0, 0.0)  # the original is unchanged

    @pytest.mark.parametrize("smooth", [False, True])
    def test_the_z_step_trims_a_group_on_a_tread_only_when_smoothed(self, smooth: bool) -> None:
        from hwdsa.dsa.allocator import AdmmConfig, RatioAllocator

        cost = self._cost()
        budget = Budget(cost, 0.85 * cost.exact([38, 41]))
        alloc = RatioAllocator(cost.group_sizes, [budget], AdmmConfig(smooth_costs=smooth, budget_warmup=0.0))
        importance = [torch.linspace(0.1, 1.0, 64), torch.linspace(0.1, 1.0, 64)]
        with torch.no_grad():
            alloc._set_ratios(torch.tensor([38 / 64, 40.5 / 64]))
            alloc.masks(importance, beta2=5.0)
        if smooth:
            assert alloc.spread is not None and bool((alloc.spread > 1.0).all())
        else:
            assert alloc.spread is None
        alloc.u = [torch.zeros(2)]
        alloc.admm_update(1.0)
        z = alloc.z[0]
        trimmed = 38 / 64 - float(z[0])
        assert (trimmed > 0.02) == smooth, f"group 0 trimmed by {trimmed:.4f} (smooth_costs={smooth})"
        assert alloc.state_dict()["spread"] is None or smooth
