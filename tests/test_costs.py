"""FLOPs and parameter costs: differentiable in the keep ratios and equal to an independent count."""

from __future__ import annotations

import pytest
import torch
import torchvision

from hwdsa.costs import Budget, FlopsCost, ParamsCost
from hwdsa.counting import count_flops, count_params
from hwdsa.errors import ConfigError, KeepRatioError
from hwdsa.graph import trace_channel_graph

TORCHVISION = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small"]


@pytest.fixture(scope="module", params=TORCHVISION)
def traced(request: pytest.FixtureRequest):
    model = getattr(torchvision.models, request.param)(weights=None)
    return model, trace_channel_graph(model, (3, 64, 64))


def test_dense_cost_equals_hook_count(traced) -> None:
    model, graph = traced
    assert FlopsCost(graph).dense == count_flops(model, (3, 64, 64))
    assert ParamsCost(graph).dense == count_params(model)


def test_costs_are_differentiable_and_increasing(traced) -> None:
    _, graph = traced
    for cost in (FlopsCost(graph), ParamsCost(graph)):
        ratios = torch.full((len(graph.groups),), 0.6, requires_grad=True)
        value = cost(ratios)
        value.backward()
        assert ratios.grad is not None and torch.isfinite(ratios.grad).all()
        assert (ratios.grad > 0).all(), "every group's channels cost something"
        assert 0 < float(value) < cost.dense


def test_forward_agrees_with_exact_at_integer_counts(traced) -> None:
    _, graph = traced
    sizes = torch.tensor(graph.group_sizes, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    channels = torch.clamp((torch.rand(len(sizes), generator=gen, dtype=torch.float64) * sizes).round(), min=1)
    for cost in (FlopsCost(graph), ParamsCost(graph)):
        assert float(cost(channels / sizes)) == pytest.approx(cost.exact([int(c) for c in channels]), rel=1e-9)


def test_quadratic_terms_reproduce_the_cost(traced) -> None:
    _, graph = traced
    cost = FlopsCost(graph)
    q, c, const = cost.quadratic_terms()
    a = torch.rand(len(graph.groups), dtype=torch.float64)
    assert float(0.5 * a @ q @ a + c @ a + const) == pytest.approx(float(cost(a)), rel=1e-12)
    assert (q >= 0).all() and (c >= 0).all()


def test_bad_keep_ratios_are_refused(traced) -> None:
    _, graph = traced
    cost = FlopsCost(graph)
    n = len(graph.groups)
    with pytest.raises(KeepRatioError, match=f"one keep ratio per channel group \\({n}\\)"):
        cost(torch.ones(n + 1))
    with pytest.raises(KeepRatioError, match="must lie in \\(0, 1\\]"):
        cost(torch.cat([torch.ones(n - 1), torch.tensor([1.5])]))
    with pytest.raises(KeepRatioError, match="must lie in \\(0, 1\\]"):
        cost(torch.zeros(n))
    with pytest.raises(KeepRatioError, match="outside 1.."):
        cost.exact([0] * n)


def test_budget_fraction() -> None:
    graph = trace_channel_graph(torchvision.models.resnet18(weights=None), (3, 32, 32))
    cost = FlopsCost(graph)
    budget = Budget.fraction_of_dense(cost, 0.5)
    assert budget.limit == pytest.approx(0.5 * cost.dense)
    assert budget.is_met(torch.full((len(graph.groups),), 0.6)) is True
    assert budget.is_met(torch.ones(len(graph.groups))) is False
    with pytest.raises(ConfigError, match="fraction must lie in"):
        Budget.fraction_of_dense(cost, 1.5)
