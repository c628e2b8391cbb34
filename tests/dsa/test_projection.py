"""Tests of hwdsa.dsa.projection: the budget projection is feasible, closest, and refuses impossible budgets."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch
from torch import Tensor

from hwdsa.dsa.projection import (
    ProjectionResult,
    SupportsQuadraticTerms,
    check_feasible,
    project_onto_budget,
    solve_projection,
)
from hwdsa.errors import BudgetInfeasibleError, ConfigError, KeepRatioError

F64 = torch.float64


# ---------------------------------------------------------------------------------------------------------
# small cost models satisfying the CostModel protocol (non-decreasing in every ratio, differentiable)
# ---------------------------------------------------------------------------------------------------------
class _Cost:
    name = "test"
    unit = "MACs"

    def __init__(self, n: int) -> None:
        self.group_sizes = (64,) * n

    def value(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, keep_ratios: Tensor) -> Tensor:
        return self.value(keep_ratios.to(F64))

    def exact(self, channels: Sequence[int]) -> float:
        return float(self(torch.tensor([c / s for c, s in zip(channels, self.group_sizes)], dtype=F64)))

    @property
    def dense(self) -> float:
        return float(self(torch.ones(len(self.group_sizes), dtype=F64)))


class QuadCost(_Cost):
    """½zᵀQz + cᵀz + k with non-negative Q and c; exposes its terms, so the exact KKT path is taken."""

    name = "quadratic"

    def __init__(self, q: Tensor, c: Tensor, const: float = 0.0) -> None:
        super().__init__(c.numel())
        self.q, self.c, self.const = q.to(F64), c.to(F64), float(const)

    def quadratic_terms(self) -> tuple[Tensor, Tensor, float]:
        return self.q, self.c, self.const

    def value(self, z: Tensor) -> Tensor:
        q, c = self.q.to(z.device), self.c.to(z.device)
        return 0.5 * z @ q @ z + c @ z + self.const


class Hidden(_Cost):
    """Another cost's function without its structure: forces the general (re-linearised) solver."""

    name = "hidden"

    def __init__(self, inner: _Cost) -> None:
        super().__init__(len(inner.group_sizes))
        self.inner = inner

    def value(self, z: Tensor) -> Tensor:
        return self.inner.value(z)


def linear_cost(a: Sequence[float], const: float = 0.0) -> QuadCost:
    """The separable cost Σ a_i z_i + const."""
    return QuadCost(torch.zeros(len(a), len(a)), torch.tensor(a, dtype=F64), const)


def chain_flops(weights: Sequence[float], c: Sequence[float], const: float = 0.0) -> QuadCost:
    """FLOPs of a plain chain of convs: Σ w_i z_i z_{i+1} + c·z + const (indefinite Q, non-convex set)."""
    n = len(c)
    q = torch.zeros(n, n, dtype=F64)
    for i, w in enumerate(weights):
        q[i, i + 1] = q[i + 1, i] = w
    return QuadCost(q, torch.tensor(c, dtype=F64), const)


def psd_quadratic(n: int, rng: np.random.Generator) -> QuadCost:
    """Q = AᵀA with A ≥ 0: convex and non-negative, so the projection has one KKT point."""
    a = rng.uniform(0, 1, (n, n)) * (rng.uniform(0, 1, (n, n)) < 0.5)
    return QuadCost(torch.tensor(a.T @ a), torch.tensor(rng.uniform(0, 1, n)), float(rng.uniform(0, 0.5)))


class StairCost(_Cost):
    """A latency-like staircase in channel counts (steps every 8 channels), smoothed by sigmoids."""

    name = "stairs"

    def __init__(self, heights: Sequence[float], channels: int = 64, tile: int = 8, width: float = 0.7) -> None:
        super().__init__(len(heights))
        self.h = torch.tensor(heights, dtype=F64)
        self.edges = torch.arange(0, channels, tile, dtype=F64) + 0.5
        self.channels, self.width = channels, width

    def value(self, z: Tensor) -> Tensor:
        x = z[:, None] * self.channels
        steps = torch.sigmoid((x - self.edges.to(z.device)) / self.width).sum(dim=1)
        return (self.h.to(z.device) * steps).sum() + 0.5


class PowerCost(_Cost):
    """Σ a_i z_i^1.5 + b·Π-like coupling z_0·z_last: smooth, monotone, not quadratic."""

    name = "power"

    def __init__(self, a: Sequence[float], b: float) -> None:
        super().__init__(len(a))
        self.a, self.b = torch.tensor(a, dtype=F64), b

    def value(self, z: Tensor) -> Tensor:
        return (self.a.to(z.device) * z**1.5).sum() + self.b * z[0] * z[-1]


class FlatTop(_Cost):
    """2·min(z_0, 0.5): no gradient once z_0 > 0.5, so only the feasibility repair can help."""

    name = "flat"

    def __init__(self) -> None:
        super().__init__(2)

    def value(self, z: Tensor) -> Tensor:
        return 2.0 * torch.clamp(z[0], max=0.5) + 0.0 * z[1]


class NotDifferentiable(_Cost):
    def __init__(self) -> None:
        super().__init__(2)

    def value(self, z: Tensor) -> Tensor:
        return z.detach().sum()


def lower_corner_cost(cost: _Cost, lower: float) -> float:
    return float(cost(torch.full((len(cost.group_sizes),), lower, dtype=F64)))


KINDS = ("psd", "chain", "linear", "stairs", "power")


def random_case(kind: str, rng: np.random.Generator) -> tuple[_Cost, Tensor, float]:
    n = int(rng.integers(2, 12))
    if kind == "psd":
        cost: _Cost = psd_quadratic(n, rng)
    elif kind == "chain":
        cost = chain_flops(list(rng.uniform(0.5, 2.0, n - 1) * 1e7), list(rng.uniform(0, 1, n) * 1e6), 1e5)
    elif kind == "linear":
        cost = linear_cost(list(rng.uniform(0.1, 3.0, n)), 0.2)
    elif kind == "stairs":
        cost = StairCost(list(rng.uniform(0.1, 1.0, n)))
    else:
        cost = PowerCost(list(rng.uniform(0.1, 2.0, n)), float(rng.uniform(0, 2)))
    v = torch.tensor(rng.uniform(-0.2, 1.3, n))
    lo = lower_corner_cost(cost, 0.05)
    limit = lo + float(rng.uniform(0.02, 1.1)) * (cost.dense - lo)
    return cost, v, limit


def check_solution(cost: _Cost, z: Tensor, limit: float, lower: float = 0.05, upper: float = 1.0) -> None:
    assert float(cost(z.to(F64))) <= limit * (1 + 1e-6)
    assert bool((z >= lower - 1e-12).all()) and bool((z <= upper).all())


# ---------------------------------------------------------------------------------------------------------
# feasibility
# ---------------------------------------------------------------------------------------------------------
class TestAlwaysFeasible:
    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("hidden", [False, True])
    def test_random_points_and_budgets(self, kind: str, hidden: bool) -> None:
        rng = np.random.default_rng([KINDS.index(kind), int(hidden)])
        for _ in range(6):
            cost, v, limit = random_case(kind, rng)
            if hidden:
                cost = Hidden(cost)
            result = solve_projection(v, cost, limit, lower=0.05)
            check_solution(cost, result.z, limit)
            assert bool((result.z <= v.clamp(0.05, 1.0) + 1e-12).all())  # only ever lowers ratios
            if result.method != "inside":
                assert float(cost(result.z)) >= limit * (1 - 1e-6)  # an active budget is met with equality

    @pytest.mark.parametrize("kind", ["chain", "stairs"])
    def test_float32_stays_float32_and_feasible(self, kind: str) -> None:
        rng = np.random.default_rng(11)
        for _ in range(5):
            cost, v, limit = random_case(kind, rng)
            z = project_onto_budget(v.float(), cost, limit, lower=0.05)
            assert z.dtype == torch.float32
            assert float(cost(z.double())) <= limit * (1 + 1e-6)

    def test_budget_equal_to_the_smallest_cost_gives_the_lower_corner(self) -> None:
        cost = linear_cost([1.0, 2.0, 3.0], 0.5)
        limit = lower_corner_cost(cost, 0.1)
        z = project_onto_budget(torch.ones(3, dtype=F64), cost, limit, lower=0.1)
        torch.testing.assert_close(z, torch.full((3,), 0.1, dtype=F64))

    def test_flat_cost_is_repaired_then_polished_to_the_true_projection(self) -> None:
        # No gradient at the start: the repair walks toward the lower corner ([0.4, 0.4]), and the polish
        # then finds the closest feasible point, which leaves the free coordinate where it was.
        result = solve_projection(torch.ones(2, dtype=F64), FlatTop(), 0.8, lower=0.1)
        assert result.method == "slsqp" and not result.is_exact
        assert math.isclose(float(FlatTop()(result.z)), 0.8, rel_tol=1e-8)
        torch.testing.assert_close(result.z, torch.tensor([0.4, 1.0], dtype=F64))
        unpolished = solve_projection(torch.ones(2, dtype=F64), FlatTop(), 0.8, lower=0.1, polish=False)
        assert unpolished.method == "restored" and math.isnan(unpolished.multiplier)
        torch.testing.assert_close(unpolished.z, torch.tensor([0.4, 0.4], dtype=F64))

    def test_projection_is_idempotent(self) -> None:
        cost = chain_flops([1.0, 1.0], [0.1, 0.1, 0.1])
        z = project_onto_budget(torch.ones(3, dtype=F64), cost, 0.5, lower=0.05)
        again = solve_projection(z, cost, 0.5, lower=0.05)
        assert again.method == "inside" and torch.equal(again.z, z)


# ---------------------------------------------------------------------------------------------------------
# optimality
# ---------------------------------------------------------------------------------------------------------
def separable_oracle(v: np.ndarray, a: np.ndarray, const: float, limit: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """KKT for Σ a_i z_i + const ≤ limit in a box: z = clip(v − λa), λ by plain bisection (independent code)."""
    def z_of(lam: float) -> np.ndarray:
        return np.clip(v - lam * a, lo, hi)

    lam_lo, lam_hi = 0.0, 1.0
    while float(a @ z_of(lam_hi)) + const > limit:
        lam_hi *= 2
    for _ in range(200):
        mid = 0.5 * (lam_lo + lam_hi)
        lam_lo, lam_hi = (mid, lam_hi) if float(a @ z_of(mid)) + const > limit else (lam_lo, mid)
    return z_of(lam_hi)


SOLVERS: dict[str, Callable[[QuadCost], _Cost]] = {"quadratic": lambda c: c, "general": Hidden}


class TestClosestPoint:
    @pytest.mark.parametrize("solver", SOLVERS)
    def test_two_groups_by_hand(self, solver: str) -> None:
        z = project_onto_budget(torch.tensor([1.0, 0.5], dtype=F64), SOLVERS[solver](linear_cost([1.0, 1.0])), 1.0, lower=0.1)
        torch.testing.assert_close(z, torch.tensor([0.75, 0.25], dtype=F64), rtol=0, atol=1e-9)

    @pytest.mark.parametrize("solver", SOLVERS)
    def test_box_active_case(self, solver: str) -> None:
        # λ = 0.575: the third ratio hits its lower bound 0.05 on the way, the other two share the rest.
        cost = SOLVERS[solver](linear_cost([1.0, 1.0, 1.0]))
        result = solve_projection(torch.tensor([1.0, 1.0, 0.1], dtype=F64), cost, 0.9, lower=0.05)
        torch.testing.assert_close(result.z, torch.tensor([0.425, 0.425, 0.05], dtype=F64), rtol=0, atol=1e-9)
        assert math.isclose(result.multiplier, 0.575, rel_tol=1e-6)
        assert result.kkt_residual < 1e-9

    @pytest.mark.parametrize("solver", SOLVERS)
    def test_separable_linear_cost_matches_its_closed_form(self, solver: str) -> None:
        rng = np.random.default_rng(5)
        for _ in range(8):
            n = int(rng.integers(2, 20))
            a, v = rng.uniform(0.1, 3.0, n), rng.uniform(-0.2, 1.4, n)
            lower = rng.uniform(0.01, 0.2, n)
            lo_cost = float(a @ lower) + 0.3
            limit = lo_cost + float(rng.uniform(0.05, 0.6)) * (float(a.sum()) + 0.3 - lo_cost)
            cost = SOLVERS[solver](linear_cost(list(a), 0.3))
            z = project_onto_budget(torch.tensor(v), cost, limit, lower=torch.tensor(lower))
            expected = separable_oracle(v, a, 0.3, limit, lower, np.ones(n))
            np.testing.assert_allclose(z.numpy(), expected, rtol=0, atol=1e-8)

    def test_feasible_point_is_returned_clipped_and_unchanged(self) -> None:
        v = torch.tensor([0.5, 1.7, -3.0, 0.2], dtype=F64)
        result = solve_projection(v, linear_cost([1.0] * 4), 100.0, lower=0.05)
        assert result.method == "inside" and result.is_exact and result.multiplier == 0.0
        assert torch.equal(result.z, torch.tensor([0.5, 1.0, 0.05, 0.2], dtype=F64))

    def test_quadratic_path_satisfies_kkt(self) -> None:
        cost = chain_flops([2e7, 1e7, 3e7], [1e6, 0.0, 2e6, 1e6], 1e5)
        v = torch.tensor([1.0, 0.9, 0.95, 1.0], dtype=F64)
        result = solve_projection(v, cost, 0.5 * cost.dense, lower=0.05)
        assert result.method == "quadratic" and result.is_exact
        # z = clip(v − λ∇cost(z)) with λ ≥ 0 and the budget active: the KKT conditions of the projection.
        z = result.z.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(cost(z), z)
        torch.testing.assert_close(result.z, (v - result.multiplier * grad).clamp(0.05, 1.0), rtol=0, atol=1e-9)
        assert result.multiplier > 0 and math.isclose(result.cost, 0.5 * cost.dense, rel_tol=1e-8)

    def test_per_group_lower_bounds_are_kept(self) -> None:
        cost = linear_cost([1.0, 1.0, 1.0])
        lower = torch.tensor([0.5, 0.05, 0.05], dtype=F64)
        z = project_onto_budget(torch.ones(3, dtype=F64), cost, 1.0, lower=lower)
        torch.testing.assert_close(z, torch.tensor([0.5, 0.25, 0.25], dtype=F64), rtol=0, atol=1e-9)


class TestAgainstSlsqp:
    """A generic solver (scipy's SLSQP, several starts) as the reference on small random problems."""

    @staticmethod
    def reference_distance(cost: _Cost, v: Tensor, limit: float, lower: float, starts: int = 4) -> float:
        optimize = pytest.importorskip("scipy.optimize")
        vn = v.numpy()
        rng = np.random.default_rng(0)

        def slack(x: np.ndarray) -> float:
            return limit - float(cost(torch.tensor(x)))

        def slack_grad(x: np.ndarray) -> np.ndarray:
            z = torch.tensor(x, requires_grad=True)
            (g,) = torch.autograd.grad(cost(z), z)
            return -g.numpy()

        best = math.inf
        for i in range(starts):
            x0 = np.clip(vn, lower, 1.0) if i == 0 else rng.uniform(lower, 1.0, vn.size)
            res = optimize.minimize(
                lambda x: 0.5 * float(np.sum((x - vn) ** 2)),
                x0,
                jac=lambda x: x - vn,
                bounds=[(lower, 1.0)] * vn.size,
                constraints=[{"type": "ineq", "fun": slack, "jac": slack_grad}],
                method="SLSQP",
                options={"ftol": 1e-15, "maxiter": 500},
            )
            if slack(res.x) >= -1e-9 * limit:
                best = min(best, float(np.linalg.norm(res.x - vn)))
        return best

    @pytest.mark.parametrize("solver", SOLVERS)
    def test_convex_quadratics(self, solver: str) -> None:
        rng = np.random.default_rng(21)
        for _ in range(5):
            n = int(rng.integers(2, 8))
            quad = psd_quadratic(n, rng)
            v = torch.tensor(rng.uniform(0.4, 1.2, n))
            lo = lower_corner_cost(quad, 0.05)
            limit = lo + float(rng.uniform(0.05, 0.6)) * (quad.dense - lo)
            result = solve_projection(v, SOLVERS[solver](quad), limit, lower=0.05)
            check_solution(quad, result.z, limit)
            assert result.is_exact == (solver == "quadratic")
            ref = self.reference_distance(quad, v, limit, 0.05, starts=1)
            assert float((result.z - v).norm()) <= ref * (1 + 1e-4)

    def test_chain_flops_within_the_exact_path(self) -> None:
        rng = np.random.default_rng(22)
        for _ in range(5):
            n = int(rng.integers(3, 8))
            cost = chain_flops(list(rng.uniform(0.5, 2.0, n - 1)), list(rng.uniform(0, 0.3, n)), 0.05)
            v = torch.tensor(rng.uniform(0.8, 1.1, n))
            limit = 0.6 * cost.dense
            result = solve_projection(v, cost, limit, lower=0.05)
            assert result.method == "quadratic" and result.is_exact
            ref = self.reference_distance(cost, v, limit, 0.05)
            assert abs(float((result.z - v).norm()) - ref) <= 1e-4 * ref

    def test_tight_budget_on_a_nonconvex_chain_gives_a_kkt_point(self) -> None:
        # (I + λQ) loses definiteness before the budget is met: the exact path hands over to the
        # re-linearised solver, which finds a KKT point; here it is also SLSQP's best over several starts.
        cost = chain_flops([1.0, 1.0, 1.0], [0.05, 0.05, 0.05, 0.05])
        v = torch.tensor([1.0, 0.9, 0.8, 1.0], dtype=F64)
        limit = 0.1 * cost.dense
        result = solve_projection(v, cost, limit, lower=0.05)
        assert result.method == "linearized" and not result.is_exact
        check_solution(cost, result.z, limit)
        assert result.kkt_residual < 1e-6
        assert float((result.z - v).norm()) <= self.reference_distance(cost, v, limit, 0.05, starts=6) * (1 + 1e-4)


# ---------------------------------------------------------------------------------------------------------
# refusals and bad input
# ---------------------------------------------------------------------------------------------------------
class TestRefusals:
    def test_infeasible_budget_names_the_smallest_reachable_cost(self) -> None:
        cost = linear_cost([8.0, 8.0], 4.0)  # dense 20; at ratio 1/8: 1 + 1 + 4 = 6
        with pytest.raises(BudgetInfeasibleError, match=r"budget 5 MACs is below the smallest reachable quadratic cost 6 MACs \(30\.0% of the dense network's 20 MACs\).*lower the smallest keep ratio"):
            check_feasible(cost, 5.0, lower=0.125)

    def test_projection_refuses_an_infeasible_budget_before_anything_else(self) -> None:
        with pytest.raises(BudgetInfeasibleError, match="smallest reachable"):
            project_onto_budget(torch.ones(2, dtype=F64), linear_cost([8.0, 8.0], 4.0), 5.0, lower=0.125)

    def test_the_smallest_reachable_cost_is_the_boundary_of_feasibility(self) -> None:
        cost = linear_cost([8.0, 8.0], 4.0)  # at ratio 1/8: 1 + 1 + 4 = 6
        check_feasible(cost, 6.0, lower=0.125)  # the boundary itself is reachable: no error
        with pytest.raises(BudgetInfeasibleError, match="smallest reachable quadratic cost 6 MACs"):
            check_feasible(cost, 6.0 * (1 - 1e-9), lower=0.125)
        check_feasible(cost, 5.0, lower=0.0625)  # refused above at 1/8; reachable at 1/16: 0.5 + 0.5 + 4
        torch.testing.assert_close(  # and the projection reaches it at the lower corner
            project_onto_budget(torch.ones(2, dtype=F64), cost, 5.0, lower=0.0625), torch.full((2,), 0.0625, dtype=F64)
        )

    def test_per_group_lower_bounds_show_their_range(self) -> None:
        with pytest.raises(BudgetInfeasibleError, match=r"lower bound 0\.1\.\.0\.5"):
            check_feasible(linear_cost([1.0, 1.0]), 0.1, lower=torch.tensor([0.1, 0.5]))

    def test_wrong_number_of_ratios(self) -> None:
        with pytest.raises(KeepRatioError, match=r"one keep ratio per channel group \(3\), got 2"):
            project_onto_budget(torch.ones(2, dtype=F64), linear_cost([1.0] * 3), 1.0)

    def test_non_finite_point(self) -> None:
        with pytest.raises(KeepRatioError, match="non-finite"):
            project_onto_budget(torch.tensor([1.0, math.nan], dtype=F64), linear_cost([1.0, 1.0]), 1.0)

    @pytest.mark.parametrize(
        "lower, upper, match",
        [
            (0.0, 1.0, r"lower keep ratios must lie in \(0, 1\]"),
            (0.1, 1.5, r"upper keep ratios must lie in \(0, 1\]"),
            (0.6, 0.5, "group 0: lower bound 0.6 is above upper bound 0.5"),
            (torch.tensor([0.1, 0.2, 0.3]), 1.0, "one value per channel group"),
        ],
    )
    def test_bad_box(self, lower: float | Tensor, upper: float, match: str) -> None:
        with pytest.raises(ConfigError, match=match):
            project_onto_budget(torch.ones(2, dtype=F64), linear_cost([1.0, 1.0]), 1.0, lower=lower, upper=upper)

    def test_non_finite_limit(self) -> None:
        with pytest.raises(ConfigError, match="finite number"):
            project_onto_budget(torch.ones(2, dtype=F64), linear_cost([1.0, 1.0]), math.inf)

    def test_cost_without_gradient(self) -> None:
        with pytest.raises(ConfigError, match="not differentiable"):
            project_onto_budget(torch.ones(2, dtype=F64), NotDifferentiable(), 1.0)


def test_quadratic_protocol_is_recognised() -> None:
    assert isinstance(linear_cost([1.0]), SupportsQuadraticTerms)
    assert not isinstance(Hidden(linear_cost([1.0])), SupportsQuadraticTerms)
    assert isinstance(solve_projection(torch.ones(1, dtype=F64), linear_cost([1.0]), 2.0), ProjectionResult)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors() -> None:
    cost = chain_flops([1.0, 2.0], [0.1, 0.1, 0.1])
    v = torch.tensor([1.0, 0.9, 1.0], device="cuda")
    z = project_onto_budget(v, cost, 0.4 * cost.dense, lower=0.05)
    assert z.device == v.device and z.dtype == torch.float32
    torch.testing.assert_close(z.cpu(), project_onto_budget(v.cpu(), cost, 0.4 * cost.dense, lower=0.05))
