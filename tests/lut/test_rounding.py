"""Latency-optimal rounding of the searched channel counts: the budget always holds."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from _lut_helpers import conv, graph_of, macs_latency, mobile_graph, synthetic_table
from hwdsa.errors import BudgetInfeasibleError, ConfigError
from hwdsa.lut.calibrate import Calibration
from hwdsa.lut.cost_model import LatencyCost
from hwdsa.lut.grid import GridConfig
from hwdsa.lut.rounding import round_to_latency_optimal
from hwdsa.profilers.base import LayerSpec


def _tile_latency(spec: LayerSpec) -> float:
    """A staircase in tiles of 8 channels on both sides, with a fast aligned width at 40 outputs."""
    t = 0.05 + 0.004 * math.ceil(spec.in_channels / 8) * math.ceil(spec.out_channels / 8)
    return t * (0.7 if spec.out_channels == 40 else 1.0)


def _two_layer_cost() -> LatencyCost:
    graph = graph_of([conv("a", [(None, 3)], 0, 64), conv("b", [(0, 64)], 1, 64)], [64, 64])
    return LatencyCost.fit(synthetic_table(graph, _tile_latency, config=GridConfig("gpu")), graph)


def _random_roundings(cost: LatencyCost, seed: int, n: int = 25) -> list[tuple[tuple[int, ...], float]]:
    """Round `n` random searches under random limits near their cost; (counts, limit) of the feasible ones.

    Infeasible limits must be the ones not even the narrowest network meets.
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        searched = [float(rng.uniform(1.0, c)) for c in cost.group_sizes]
        limit = cost.exact([max(1, math.floor(x)) for x in searched]) * float(rng.uniform(0.8, 1.1))
        try:
            out.append((round_to_latency_optimal(searched, cost, limit), limit))
        except BudgetInfeasibleError:
            assert cost.exact([1] * len(cost.group_sizes)) > limit
    return out


def test_keeps_the_budget_for_random_searches() -> None:
    graph = mobile_graph()
    cost = LatencyCost.fit(synthetic_table(graph, macs_latency, config=GridConfig("gpu")), graph)
    for counts, limit in _random_roundings(cost, seed=0):
        assert cost.exact(counts) <= limit
        assert all(1 <= k <= c for k, c in zip(counts, cost.group_sizes))
        assert all(k in cost.step_points(g) for g, k in enumerate(counts))


def test_a_spill_step_is_a_cliff_the_rounding_does_not_fall_off() -> None:
    """With a calibration that adds a fixed cost above a weight footprint, the budget holds at the counts kept,
    priced with the step on whichever side of it they land."""
    graph = mobile_graph()
    plain = LatencyCost.fit(synthetic_table(graph, macs_latency, config=GridConfig("gpu")), graph)
    capacity = 0.5 * plain.weights_mb(plain.group_sizes)
    spill = 0.3 * plain.dense
    cost = plain.with_calibration(
        Calibration(scale=1.0, offset_ms=0.0, graph_signature=plain.graph_signature, spill_ms=spill, spill_above_mb=capacity)
    )
    spilled = 0
    for counts, limit in _random_roundings(cost, seed=1):
        assert cost.exact(counts) <= limit
        assert cost.exact(counts) == pytest.approx(plain.exact(counts) + (spill if cost.weights_mb(counts) > capacity else 0.0))
        spilled += cost.weights_mb(counts) > capacity
    assert 0 < spilled < 25  # both sides of the step were exercised


def test_takes_a_free_tread_of_the_staircase() -> None:
    """33 channels cost what 40 cost (and 40 is even faster): rounding up is free, so it happens."""
    cost = _two_layer_cost()
    counts = round_to_latency_optimal([64, 33.4], cost, cost.exact([64, 33]))
    assert counts == (64, 40)
    assert cost.exact([64, 40]) < cost.exact([64, 33])


def test_rounds_down_when_up_does_not_fit() -> None:
    cost = _two_layer_cost()
    limit = cost.exact([64, 24]) + 1e-9
    counts = round_to_latency_optimal([64.0, 30.2], cost, limit)
    assert counts == (64, 24)


def test_repairs_a_search_that_overshot() -> None:
    cost = _two_layer_cost()
    limit = cost.exact([32, 32])
    counts = round_to_latency_optimal([60.0, 60.0], cost, limit)
    assert cost.exact(counts) <= limit
    assert sum(counts) < 112


def _no_step_up_fits(cost: LatencyCost, counts: tuple[int, ...], limit: float, steps: list[list[int]]) -> bool:
    """Whether the budget is filled to within one step: no group can move to any higher allowed count."""
    for g, c in enumerate(counts):
        for t in (p for p in steps[g] if p > c):
            trial = list(counts)
            trial[g] = t
            if cost.exact(trial) <= limit:
                return False
    return True


def test_multiple_rounds_to_multiples() -> None:
    cost = _two_layer_cost()
    limit = cost.exact([48, 32])
    counts = round_to_latency_optimal([45.0, 21.0], cost, limit, multiple=16)
    assert all(k % 16 == 0 for k in counts) and cost.exact(counts) <= limit
    assert _no_step_up_fits(cost, counts, limit, [[16, 32, 48, 64]] * 2)
    assert round_to_latency_optimal([45.0, 21.0], cost, cost.dense, multiple=16) == (64, 64)  # the dense budget keeps all


def test_infeasible_and_bad_input() -> None:
    cost = _two_layer_cost()
    with pytest.raises(BudgetInfeasibleError, match="the table's smallest measured count per group already costs"):
        round_to_latency_optimal([10.0, 10.0], cost, 1e-6)
    with pytest.raises(BudgetInfeasibleError, match="one channel per group already costs"):
        round_to_latency_optimal([10.0, 10.0], cost, 1e-6, multiple=1)
    with pytest.raises(BudgetInfeasibleError, match=r"every group at 16 channels .*--round-to 1"):
        round_to_latency_optimal([10.0, 10.0], cost, 1e-6, multiple=16)
    with pytest.raises(ConfigError, match="expected 2 channel counts"):
        round_to_latency_optimal([10.0], cost, 1.0)
    with pytest.raises(ConfigError, match="group 1: count 70.0 outside \\(0, 64\\]"):
        round_to_latency_optimal([10.0, 70.0], cost, 1.0)
    with pytest.raises(ConfigError, match="multiple must be >= 1"):
        round_to_latency_optimal([10.0, 10.0], cost, 1.0, multiple=0)


def test_round_for_budgets_fills_a_latency_budget_and_defers_other_budgets() -> None:
    import torch

    from hwdsa.costs import Budget, FlopsCost
    from hwdsa.dsa.search import channels_within_budgets
    from hwdsa.lut.rounding import round_for_budgets

    cost = _two_layer_cost()
    budget = Budget.fraction_of_dense(cost, 0.5)
    ratios = torch.tensor([0.55, 0.45])
    counts = round_for_budgets(ratios, [budget], cost.group_sizes)
    assert cost.exact(counts) <= budget.limit
    # whole channels on a non-GPU table: the latency-optimal rule, not the FLOPs-style walk
    assert counts == list(round_to_latency_optimal([0.55 * 64, 0.45 * 64], cost, budget.limit, multiple=1))
    flops = Budget.fraction_of_dense(FlopsCost(graph_of([conv("a", [(None, 3)], 0, 64), conv("b", [(0, 64)], 1, 64)], [64, 64])), 0.5)
    both = round_for_budgets(ratios, [budget, flops], cost.group_sizes)
    assert both == channels_within_budgets(ratios, [budget, flops], cost.group_sizes)


def test_round_for_budgets_stays_on_the_tables_channel_lattice() -> None:
    import torch

    from hwdsa.costs import Budget
    from hwdsa.lut.rounding import round_for_budgets

    graph = graph_of([conv("a", [(None, 3)], 0, 64), conv("b", [(0, 64)], 1, 64)], [64, 64])
    table = synthetic_table(graph, macs_latency, config=GridConfig("gpu"))
    lattice = LatencyCost.fit(table.with_meta(extra={"channel_multiple": 8}), graph)
    budget = Budget.fraction_of_dense(lattice, 0.5)
    ratios = torch.tensor([0.53, 0.41])
    counts = round_for_budgets(ratios, [budget], lattice.group_sizes)
    assert all(k % 8 == 0 for k in counts) and lattice.exact(counts) <= budget.limit
    assert counts == list(round_to_latency_optimal([0.53 * 64, 0.41 * 64], lattice, budget.limit, multiple=8))
    assert round_for_budgets(ratios, [budget], lattice.group_sizes, multiple=1) != counts  # an explicit multiple wins
    plain = LatencyCost.fit(table, graph)  # no lattice recorded: whole channels
    assert plain.meta is not None and plain.meta.channel_multiple == 1
    # a budget below "every group at 8 channels" still rounds: to the table's measured counts under the lattice
    tight = Budget(lattice, 0.9 * lattice.exact([8, 8]))
    small = round_for_budgets(torch.tensor([0.05, 0.05]), [tight], lattice.group_sizes)
    assert lattice.exact(small) <= tight.limit and all(k % 8 == 0 or k in lattice.step_points(g) for g, k in enumerate(small))
    assert min(small) < 8
    with pytest.raises(BudgetInfeasibleError, match="every group at 8 channels"):  # a user's --round-to 8 is strict
        round_for_budgets(torch.tensor([0.05, 0.05]), [tight], lattice.group_sizes, multiple=8)


def test_fill_takes_the_free_channels_of_a_staircase_and_the_fast_widths_beyond() -> None:
    graph = graph_of([conv("a", [(None, 3)], 0, 64), conv("b", [(0, 64)], 1, 64)], [64, 64])
    table = synthetic_table(graph, _tile_latency, config=GridConfig("gpu"))  # every multiple of 8 measured
    cost = LatencyCost.fit(table, graph, interpolation="ceil")  # 17..24 cost what 24 costs
    searched = [17.2, 30.5]
    limit = cost.exact([24, 32])
    counts = round_to_latency_optimal(searched, cost, limit, multiple=1)
    # whole channels, on treads (a count between them costs the next one's latency for fewer channels);
    # the budget of (24, 32) also pays for (40, 40): 40 outputs are a fast aligned width, far from the search's counts
    assert counts == (40, 40)
    assert cost.exact(counts) <= limit
    assert _no_step_up_fits(cost, counts, limit, [list(range(1, 65))] * 2)
    tight = cost.exact([17, 31]) - 1e-9  # below the price of the treads: fill must not break the budget
    small = round_to_latency_optimal(searched, cost, tight, multiple=1)
    assert cost.exact(small) <= tight and _no_step_up_fits(cost, small, tight, [list(range(1, 65))] * 2)


def _resnet20_on_the_shipped_onnx_table() -> tuple[LatencyCost, list[int]]:
    from hwdsa.graph import trace_channel_graph
    from hwdsa.lut.grid import paddings_from_model
    from hwdsa.lut.table import LatencyTable, packaged_tables
    from hwdsa.models import create_model, default_input_shape

    model = create_model("resnet20", num_classes=10)
    graph = trace_channel_graph(model, default_input_shape("resnet20"))
    table = LatencyTable.read(packaged_tables()["cpu-onnxruntime-fp32-b1"])
    return LatencyCost.fit(table, graph, paddings=paddings_from_model(model)), list(graph.group_sizes)


def test_grow_fills_a_real_non_monotone_budget_to_within_one_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime on this CPU: the search prices with the monotone envelope, which over-prices; the old
    rounding (neighbours of the searched counts only) left budget unused (>10% on an earlier table)."""
    import torch

    from hwdsa.costs import Budget
    from hwdsa.lut import rounding

    cost, sizes = _resnet20_on_the_shipped_onnx_table()
    budget = Budget.fraction_of_dense(cost, 0.3)
    # what DSA ends near: uneven keep ratios scaled until the (envelope) budget surface meets the limit
    rng = random.Random(0)
    base = torch.tensor([min(1.0, max(0.05, 0.3 + rng.uniform(-0.2, 0.2))) for _ in sizes], dtype=torch.float64)
    lo, hi = 0.0, 2.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(cost((base * mid).clamp(0.02, 1.0))) <= budget.limit else (lo, mid)
    searched = [min(float(c), max(1.0, float(r) * c)) for r, c in zip((base * lo).clamp(0.02, 1.0), sizes)]

    counts = round_to_latency_optimal(searched, cost, budget.limit, multiple=1)
    assert cost.exact(counts) <= budget.limit
    assert _no_step_up_fits(cost, counts, budget.limit, [list(range(1, c + 1)) for c in sizes])

    monkeypatch.setattr(rounding, "_grow_to_limit", lambda current, latency, *_: (current, latency))
    old = round_to_latency_optimal(searched, cost, budget.limit, multiple=1)
    assert cost.exact(counts) >= 0.99 * budget.limit
    assert not _no_step_up_fits(cost, old, budget.limit, [list(range(1, c + 1)) for c in sizes])  # without it, budget is left
