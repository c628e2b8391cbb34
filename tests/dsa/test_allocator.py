"""The keep-ratio allocator's ADMM loop: the budget warm-up, no collapse below the budget, filling an unused budget."""

from __future__ import annotations

import pytest
import torch

from hwdsa.costs import Budget, FlopsCost
from hwdsa.dsa.allocator import AdmmConfig, RatioAllocator
from hwdsa.errors import BudgetInfeasibleError, ConfigError
from hwdsa.graph import trace_channel_graph
from hwdsa.models import create_model


@pytest.fixture(scope="module")
def flops() -> FlopsCost:
    model = create_model("small_cnn", in_channels=1)
    return FlopsCost(trace_channel_graph(model, (1, 28, 28)))


def _fraction(cost: FlopsCost, ratios: torch.Tensor) -> float:
    return float(cost(ratios.detach().double().cpu())) / cost.dense


def _run(allocator: RatioAllocator, pull: torch.Tensor, steps: int) -> list[float]:
    """Ratio steps on the loss −⟨pull, α⟩ (every group wants more channels); the FLOPs fraction of α after each."""
    fractions = []
    for k in range(steps):
        alpha = allocator.keep_ratios
        allocator._alpha = alpha  # what masks() records: the α the task loss is differentiated against
        allocator.ratio_step(-(pull * alpha).sum())
        allocator.admm_update(k / steps)
        fractions.append(_fraction(allocator.budgets[0].cost, allocator.keep_ratios))  # type: ignore[arg-type]
    return fractions


class TestBudgetWarmup:
    def test_schedule_starts_at_the_initial_cost_and_ends_at_the_limit(self, flops: FlopsCost) -> None:
        budget = Budget.fraction_of_dense(flops, 0.5)
        alloc = RatioAllocator(flops.group_sizes, [budget], AdmmConfig(budget_warmup=0.4))
        limits = [alloc.scheduled_budgets(p)[0].limit for p in (0.0, 0.1, 0.2, 0.4, 0.7, 1.0)]
        assert limits[0] == pytest.approx(alloc.initial_costs[0])
        assert all(a > b for a, b in zip(limits[:4], limits[1:4]))
        assert limits[3:] == [budget.limit] * 3
        torch.testing.assert_close(alloc.z[0], alloc.keep_ratios.detach(), rtol=0, atol=1e-6)  # z starts at α

    def test_ratios_approach_the_budget_without_collapsing_below_it(self, flops: FlopsCost) -> None:
        pull = torch.tensor([0.2, 0.1, 0.1, 1.0])
        budget = Budget.fraction_of_dense(flops, 0.5)
        warm = _run(RatioAllocator(flops.group_sizes, [budget], AdmmConfig()), pull, 60)
        cold = _run(RatioAllocator(flops.group_sizes, [budget], AdmmConfig(budget_warmup=0.0)), pull, 60)
        assert min(warm) > 0.48, f"the warm-up should approach the budget from above, dipped to {min(warm):.3f}"
        assert min(cold) < min(warm) - 0.05, "without the warm-up the ADMM transient overshoots (the reason for it)"
        assert warm[-1] == pytest.approx(0.5, abs=0.01)

    def test_rejects_an_unknown_mask_gradient(self) -> None:
        with pytest.raises(ConfigError, match="mask_gradient 'both'; valid: straight_through, dropped_only, dropped_reweighted"):
            AdmmConfig(mask_gradient="both")

    @pytest.mark.parametrize("warmup", [-0.1, 1.0, 1.5])
    def test_rejects_a_warmup_outside_the_search(self, warmup: float) -> None:
        with pytest.raises(ConfigError, match="budget_warmup"):
            AdmmConfig(budget_warmup=warmup)

    @pytest.mark.parametrize(("settle", "message"), [(-0.1, "in \\[0, 1\\)"), (1.0, "in \\[0, 1\\)"), (0.6, "budget warm-up")])
    def test_rejects_a_settle_phase_outside_the_search_or_inside_the_budget_warmup(self, settle: float, message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            AdmmConfig(settle_fraction=settle, budget_warmup=0.5)

    def test_rejects_a_restart_without_a_settle_phase(self) -> None:
        with pytest.raises(ConfigError, match="set settle_fraction > 0"):
            AdmmConfig(settle_restart=True)


class TestFeasibleRatios:
    def test_an_unused_budget_is_filled_keeping_the_allocation_shape(self, flops: FlopsCost) -> None:
        budget = Budget.fraction_of_dense(flops, 0.5)
        alloc = RatioAllocator(flops.group_sizes, [budget], AdmmConfig())
        z = torch.tensor([0.3, 0.4, 0.5, 0.6])
        assert _fraction(flops, z) < 0.45
        alloc.z = [z.clone()]
        filled = alloc.feasible_ratios()
        assert _fraction(flops, filled) == pytest.approx(0.5, rel=1e-6)
        assert budget.is_met(filled.double(), rtol=0.0)
        shrink = (1 - filled) / (1 - z)  # every pruned fraction scaled by one factor
        torch.testing.assert_close(shrink, shrink[:1].expand(4), rtol=1e-5, atol=1e-6)

    def test_filling_can_be_switched_off(self, flops: FlopsCost) -> None:
        alloc = RatioAllocator(flops.group_sizes, [Budget.fraction_of_dense(flops, 0.5)], AdmmConfig(fill_budget=False))
        z = torch.tensor([0.3, 0.4, 0.5, 0.6])
        alloc.z = [z.clone()]
        torch.testing.assert_close(alloc.feasible_ratios(), z)

    def test_an_over_budget_z_is_projected_not_filled(self, flops: FlopsCost) -> None:
        budget = Budget.fraction_of_dense(flops, 0.5)
        alloc = RatioAllocator(flops.group_sizes, [budget], AdmmConfig())
        alloc.z = [torch.full((4,), 0.9)]
        assert budget.is_met(alloc.feasible_ratios().double())


class TestMinChannels:
    """A floor on the channels kept: each group's box starts at min_channels / C_g, so no ratio goes below it."""

    def test_no_group_is_pushed_below_the_floor(self, flops: FlopsCost) -> None:
        # every group but the last wants to be pruned: without a floor the first group goes far below 8 of its 16
        pull = torch.tensor([-1.0, -1.0, -1.0, 1.0])
        budget = Budget.fraction_of_dense(flops, 0.3)
        free = RatioAllocator(flops.group_sizes, [budget], AdmmConfig())
        floored = RatioAllocator(flops.group_sizes, [budget], AdmmConfig(min_channels=8))
        _run(free, pull, 60)
        _run(floored, pull, 60)
        sizes = torch.tensor(flops.group_sizes, dtype=torch.float64)
        assert float(free.keep_ratios.detach()[0]) * 16 < 6, "the test's pull should drive the first group below the floor"
        for ratios in (floored.keep_ratios.detach().double(), floored.z[0].double(), floored.feasible_ratios().double()):
            assert bool((ratios * sizes >= 8 - 1e-4).all()), ratios * sizes
        assert budget.is_met(floored.feasible_ratios().double())

    def test_lower_bounds_take_the_larger_of_ratio_and_channel_floors(self) -> None:
        lower = AdmmConfig(min_keep_ratio=0.1, min_channels=8).lower_bounds([16, 64, 200, 4])
        torch.testing.assert_close(lower, torch.tensor([0.5, 0.125, 0.1, 1.0 - 1e-6], dtype=torch.float64))

    def test_a_floor_no_network_meets_is_refused_before_the_search(self, flops: FlopsCost) -> None:
        with pytest.raises(BudgetInfeasibleError, match="budget"):
            RatioAllocator(flops.group_sizes, [Budget.fraction_of_dense(flops, 0.05)], AdmmConfig(min_channels=16))

    def test_rejects_a_floor_below_one(self) -> None:
        with pytest.raises(ConfigError, match="min_channels"):
            AdmmConfig(min_channels=0)


def test_state_dict_round_trip_continues_identically(flops: FlopsCost) -> None:
    budget = Budget.fraction_of_dense(flops, 0.5)
    pull = torch.tensor([0.2, 0.1, 0.1, 1.0])
    a = RatioAllocator(flops.group_sizes, [budget], AdmmConfig())
    _run(a, pull, 10)
    b = RatioAllocator(flops.group_sizes, [budget], AdmmConfig())
    b.load_state_dict(a.state_dict())
    assert _run(a, pull, 5) == _run(b, pull, 5)


def test_ratio_step_needs_masks_first(flops: FlopsCost) -> None:
    alloc = RatioAllocator(flops.group_sizes, [Budget.fraction_of_dense(flops, 0.5)], AdmmConfig())
    with pytest.raises(RuntimeError, match="masks"):
        alloc.ratio_step(alloc.keep_ratios.sum())


class TestMaskLeak:
    """A ReLU right after the mask site has zero gradient at 0: without the leak a dropped channel's slope is lost."""

    def _alpha_grad(self, flops: FlopsCost, leak: float, gradient: str) -> torch.Tensor:
        config = AdmmConfig(mask_gradient=gradient, mask_leak=leak, initial_logit=0.0)
        alloc = RatioAllocator(flops.group_sizes, [Budget.fraction_of_dense(flops, 0.5)], config)
        gen = torch.Generator().manual_seed(0)
        importance = [torch.rand(c, generator=gen) + 0.1 for c in flops.group_sizes]
        masks = alloc.masks(importance, 1.0, torch.Generator().manual_seed(0))
        assert all(0 < int((m < 0.5).sum()) < m.numel() for m in masks)
        # Positive pre-activations: adding any channel back lowers this loss, so ∂L/∂α < 0 for every group.
        loss = -torch.stack([torch.relu((torch.rand(8, m.numel(), generator=gen) + 0.1) * m).sum() for m in masks]).sum()
        assert alloc._alpha is not None
        (grad,) = torch.autograd.grad(loss, [alloc._alpha])
        return grad

    @pytest.mark.parametrize("gradient", ["dropped_only", "dropped_reweighted"])
    def test_dropped_side_is_zero_without_the_leak_and_recovered_with_it(self, flops: FlopsCost, gradient: str) -> None:
        assert torch.equal(self._alpha_grad(flops, 0.0, gradient), torch.zeros(len(flops.group_sizes)))
        assert bool((self._alpha_grad(flops, 1e-3, gradient) < 0).all())

    def test_weight_step_masks_stay_binary(self, flops: FlopsCost) -> None:
        config = AdmmConfig(mask_leak=1e-3, initial_logit=0.0)
        alloc = RatioAllocator(flops.group_sizes, [Budget.fraction_of_dense(flops, 0.5)], config)
        with torch.no_grad():
            masks = alloc.masks([torch.rand(c) + 0.1 for c in flops.group_sizes], 1.0, torch.Generator().manual_seed(0))
        assert set(torch.cat(masks).unique().tolist()) == {0.0, 1.0}

    @pytest.mark.parametrize("leak", [-1e-3, 0.1, 1.0])
    def test_rejects_a_leak_out_of_range(self, leak: float) -> None:
        with pytest.raises(ConfigError, match="mask_leak"):
            AdmmConfig(mask_leak=leak)


def test_two_budgets_on_one_cost_are_refused() -> None:
    graph = trace_channel_graph(create_model("small_cnn", in_channels=1), (1, 28, 28))
    cost = FlopsCost(graph)
    with pytest.raises(ConfigError, match=r"one budget per cost, got \['flops', 'flops'\]"):
        RatioAllocator(graph.group_sizes, [Budget.fraction_of_dense(cost, 0.5), Budget.fraction_of_dense(cost, 0.6)], AdmmConfig())
