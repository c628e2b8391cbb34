"""Closing the loop on the device (`hwdsa.lut.verify`): real tables, real pruned networks timed on this CPU.

Timings are noisy, so the assertions are the rules the check must keep whatever the machine does: the
candidates are roundings of the search under their limits, the counts kept were timed, the target is
the fraction of the dense network measured alongside, and the kept candidate is the largest within the
aim, a margin under it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from hwdsa.costs import Budget, FlopsCost
from hwdsa.errors import BudgetInfeasibleError, ConfigError
from hwdsa.graph import trace_channel_graph
from hwdsa.lut.cost_model import LatencyCost
from hwdsa.lut.grid import GridConfig
from hwdsa.lut.network import backend_for_table, profile_network
from hwdsa.lut.table import LatencyTable
from hwdsa.lut.verify import DEFAULT_LADDER, DEFAULT_MARGIN, DENSE_EVERY, EXTEND_RUNS, meet_measured_budget
from hwdsa.models import create_model
from hwdsa.profilers.base import TimingProtocol

LIGHT = TimingProtocol(warmup=2, repeats=7, max_attempts=1, min_run_ms=0.2, rounds=3)
SHAPE = (1, 16, 16)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("small_cnn", in_channels=1)


@pytest.fixture(scope="module")
def table_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("verify") / "t.csv"
    profile_network(_model(), SHAPE, "torch_cpu", path, grid=GridConfig("cpu", cpu_points=3), protocol=LIGHT, num_threads=1)
    return path


@pytest.mark.parametrize("fraction", [0.6, 0.8])
def test_keeps_the_largest_timed_candidate_within_the_target(table_path: Path, fraction: float) -> None:
    model = _model()
    graph = trace_channel_graph(model, SHAPE)
    table = LatencyTable.read(table_path)
    cost = LatencyCost.fit(table, graph)
    budget = Budget.fraction_of_dense(cost, fraction)
    check = meet_measured_budget(
        model, graph, [fraction] * len(graph.group_sizes), budget, backend_for_table(table.meta), fraction=fraction, protocol=LIGHT
    )
    rows = check.candidates
    first = [r for r in rows if not r.get("refined")]  # the ladder's run and any extensions of it
    ladder = [r for r in first if not r.get("extended")]
    assert 2 <= len(ladder) <= len(DEFAULT_LADDER) and len({tuple(r["channels"]) for r in first}) == len(first)
    assert [r["limit_ms"] for r in rows] == sorted(r["limit_ms"] for r in rows)
    for r in rows:  # every candidate is a rounding of the search under its limit, priced by the model
        assert r["predicted_ms"] <= r["limit_ms"] * (1 + 1e-9) and r["predicted_ms"] == pytest.approx(cost.exact(r["channels"]))
    assert any(tuple(r["channels"]) == check.channels and r["measured_ms"] == check.measured_ms for r in rows)  # timed
    assert check.target_ms == pytest.approx(fraction * check.dense_measured_ms)  # the budget as measured now
    assert check.aim_ms == pytest.approx((1 - DEFAULT_MARGIN) * check.target_ms)
    assert check.met == (check.measured_ms <= check.target_ms)
    # the run that decided: the refinement's when it found a candidate within its target, else the latest of
    # the ladder's and the extensions' (an extension runs only when the ladder had nothing within the target)
    refined = [r for r in rows if r.get("refined")]
    extended = [r for r in rows if r.get("extended")]
    last = max((r["extended"] for r in extended), default=0)
    ladder_run = [r for r in extended if r["extended"] == last] or [r for r in rows if not r.get("refined")]
    kept = (tuple(check.channels), check.measured_ms)  # a refinement re-times its rungs: match the timing too
    decided = refined if kept in {(tuple(r["channels"]), r["measured_ms"]) for r in refined} else ladder_run
    within = [r["measured_ms"] for r in decided if r["measured_ms"] <= check.aim_ms]
    assert check.measured_ms == (max(within) if within else min(r["measured_ms"] for r in decided))
    assert check.to_json()["channels"] == list(check.channels)


def test_an_absolute_budget_is_its_own_target(table_path: Path) -> None:
    model = _model()
    graph = trace_channel_graph(model, SHAPE)
    table = LatencyTable.read(table_path)
    cost = LatencyCost.fit(table, graph)
    budget = Budget(cost, 0.7 * cost.dense)
    check = meet_measured_budget(model, graph, [0.7] * len(graph.group_sizes), budget, backend_for_table(table.meta), protocol=LIGHT, ladder=(0.9, 1.0))
    assert check.target_ms == budget.limit  # an absolute budget is not rescaled by the dense timing, in any run
    assert 1 <= len([r for r in check.candidates if not r.get("extended") and not r.get("refined")]) <= 2


def test_the_jobs_default_margin_is_the_checks() -> None:
    from hwdsa.flows import PruneJobConfig

    assert PruneJobConfig().verify_margin == DEFAULT_MARGIN


def test_refusals(table_path: Path) -> None:
    model = _model()
    graph = trace_channel_graph(model, SHAPE)
    table = LatencyTable.read(table_path)
    backend = backend_for_table(table.meta)
    ratios = [0.5] * len(graph.group_sizes)
    with pytest.raises(ConfigError, match="needs a latency budget"):
        meet_measured_budget(model, graph, ratios, Budget.fraction_of_dense(FlopsCost(graph), 0.5), backend)
    cost = LatencyCost.fit(table, graph)
    latency = Budget.fraction_of_dense(cost, 0.5)
    with pytest.raises(ConfigError, match="ladder must hold positive factors"):
        meet_measured_budget(model, graph, ratios, latency, backend, ladder=(0.9, 0.0))
    with pytest.raises(ConfigError, match="fraction must lie in"):
        meet_measured_budget(model, graph, ratios, latency, backend, fraction=1.5)
    with pytest.raises(ConfigError, match="margin must lie in"):
        meet_measured_budget(model, graph, ratios, latency, backend, margin=-0.01)
    with pytest.raises(BudgetInfeasibleError, match="no rounding meets even 1.1 x the latency budget"):
        meet_measured_budget(model, graph, ratios, Budget(cost, 1e-6), backend, ladder=(1.0, 1.1))


def test_a_coarse_ladder_is_refined_between_the_rungs_that_straddle_the_target(table_path: Path) -> None:
    model = _model()
    graph = trace_channel_graph(model, SHAPE)
    table = LatencyTable.read(table_path)
    budget = Budget.fraction_of_dense(LatencyCost.fit(table, graph), 0.7)
    check = meet_measured_budget(
        model, graph, [0.7] * len(graph.group_sizes), budget, backend_for_table(table.meta), fraction=0.7, protocol=LIGHT,
        ladder=(0.5, 1.5),
    )  # fmt: skip
    first = [r for r in check.candidates if not r.get("refined")]
    refined = [r for r in check.candidates if r.get("refined")]
    under = [r for r in first if r["measured_ms"] <= 0.7 * check.dense_measured_ms]
    straddles = under and any(r["measured_ms"] > 0.7 * check.dense_measured_ms for r in first)
    if straddles and refined:  # the finer roundings lie between the two rungs
        lo, hi = first[0]["limit_ms"], first[-1]["limit_ms"]
        assert all(lo <= r["limit_ms"] <= hi for r in refined) and len(refined) >= 3
    assert bool(refined) <= bool(straddles)  # no refinement without a straddle


def test_a_ladder_that_measures_over_the_target_everywhere_is_extended_downwards(table_path: Path) -> None:
    """Rungs at 1.5-1.6 x a 60% budget price about 0.9 of the dense network: all measure over 0.6 of it.

    The extension rescales the fastest rung's prediction by the error measured there, so its candidates
    are priced below every rung of the ladder, and the choice is made among the latest run.
    """
    model = _model()
    graph = trace_channel_graph(model, SHAPE)
    table = LatencyTable.read(table_path)
    cost = LatencyCost.fit(table, graph)
    budget = Budget.fraction_of_dense(cost, 0.6)
    check = meet_measured_budget(
        model, graph, [1.0] * len(graph.group_sizes), budget, backend_for_table(table.meta), fraction=0.6, protocol=LIGHT,
        ladder=(1.5, 1.6),
    )  # fmt: skip
    first = [r for r in check.candidates if not r.get("extended") and not r.get("refined")]
    extended = [r for r in check.candidates if r.get("extended")]
    assert extended, "a ladder with nothing within the target must be extended"
    assert max(r["predicted_ms"] for r in extended) < min(r["predicted_ms"] for r in first)
    unrefined = [tuple(r["channels"]) for r in check.candidates if not r.get("refined")]
    assert len(set(unrefined)) == len(unrefined)  # an extension times only new roundings (a refinement re-times its rungs)
    assert {r["extended"] for r in extended} <= set(range(1, EXTEND_RUNS + 1))
    last = [r for r in extended if r["extended"] == max(x["extended"] for x in extended)]
    refined = [r for r in check.candidates if r.get("refined")]
    kept = (tuple(check.channels), check.measured_ms)
    decided = refined if kept in {(tuple(r["channels"]), r["measured_ms"]) for r in refined} else last
    within = [r["measured_ms"] for r in decided if r["measured_ms"] <= check.aim_ms]
    assert check.met == (check.measured_ms <= check.target_ms)
    assert check.measured_ms == (max(within) if within else min(r["measured_ms"] for r in decided))


def test_the_dense_network_is_timed_between_the_candidates(table_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The target's reference is timed before every `DENSE_EVERY` candidates, and its quietest timing is the one used."""
    import hwdsa.lut.verify as verify

    model = _model()
    graph = trace_channel_graph(model, SHAPE)
    table = LatencyTable.read(table_path)
    budget = Budget.fraction_of_dense(LatencyCost.fit(table, graph), 0.7)
    runs: list[tuple[list[list[int]], list[float]]] = []
    real = verify.measure_pruned

    def recording(*args: object, **kwargs: object) -> list[float]:
        measured = real(*args, **kwargs)  # type: ignore[arg-type]
        runs.append(([list(n) for n in args[2]], measured))  # type: ignore[index, union-attr]
        return measured

    monkeypatch.setattr(verify, "measure_pruned", recording)
    check = meet_measured_budget(
        model, graph, [0.7] * len(graph.group_sizes), budget, backend_for_table(table.meta), fraction=0.7, protocol=LIGHT
    )
    nets, measured = runs[0]
    dense = list(graph.group_sizes)
    places = [i for i, n in enumerate(nets) if n == dense]
    candidates = len(nets) - len(places)
    assert places[0] == 0 and len(places) == -(-candidates // DENSE_EVERY)
    assert all(b - a == DENSE_EVERY + 1 for a, b in zip(places, places[1:]))
    decided = runs[-1] if len(runs) > 1 and check.dense_measured_ms != min(measured[i] for i in places) else runs[0]
    assert check.dense_measured_ms == min(decided[1][i] for i, n in enumerate(decided[0]) if n == dense)
