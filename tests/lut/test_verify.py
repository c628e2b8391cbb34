"""Closing the loop on the device (`hwdsa.lut.verify`): real tables, real pruned networks timed on this CPU.

Timings are noisy, so the assertions are the rules the check must keep whatever the machine does: the
candidates are roundings of the search under their limits, the counts kept were timed, a candidate's latency
is its fraction of the dense network paired by round (every run pooled) times the dense network's quietest
timing, the target is the fraction of the dense network measured alongside, and the kept candidate is the
largest within the aim, a margin under it.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hwdsa.costs import Budget, FlopsCost
from hwdsa.errors import BudgetInfeasibleError, ConfigError
from hwdsa.graph import trace_channel_graph
from hwdsa.lut.cost_model import LatencyCost
from hwdsa.lut.grid import GridConfig
from hwdsa.lut.network import backend_for_table, profile_network
from hwdsa.lut import verify
from hwdsa.lut.table import LatencyTable
from hwdsa.lut.verify import DEFAULT_LADDER, DEFAULT_MARGIN, DENSE_EVERY, EXTEND_RUNS, MeasuredBudget, meet_measured_budget, undominated
from hwdsa.models import create_model
from hwdsa.profilers.base import Measurement, TimingProtocol, quietest

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


def _contains(a: list[int], b: list[int]) -> bool:
    return all(x >= y for x, y in zip(a, b)) and a != b


def _one_group_up(base: list[int], raised: list[int]) -> bool:
    moved = [(b, r) for b, r in zip(base, raised) if b != r]
    return len(moved) == 1 and moved[0][0] < moved[0][1]


def _assert_the_rules(check: MeasuredBudget, cost: LatencyCost, fraction: float | None) -> None:
    """What every check keeps, whatever the timings: see the module docstring."""
    rows = check.candidates
    assert [r["limit_ms"] for r in rows] == sorted(r["limit_ms"] for r in rows)
    assert len({tuple(r["channels"]) for r in rows}) == len(rows)  # one row per distinct rounding
    for r in rows:  # every candidate is a rounding of the search under its limit, priced by the model
        assert r["predicted_ms"] <= r["limit_ms"] * (1 + 1e-9) and r["predicted_ms"] == pytest.approx(cost.exact(r["channels"]))
        assert r["stage"] in ("ladder", "extended", "confirm", "nudge")
        assert len(r["round_ratios"]) == len(r["timings_ms"]) * LIGHT.rounds  # every round of every run it was in
        assert r["measured_fraction"] == statistics.median(r["round_ratios"])
        assert r["measured_ms"] == pytest.approx(r["measured_fraction"] * check.dense_measured_ms)
    for r in rows:  # a nudge raises one group of another candidate by one step, priced between two candidates
        if r["stage"] == "nudge":
            assert any(_one_group_up(other["channels"], r["channels"]) for other in rows if other is not r)  # a re-confirmed nudge's too
            assert min(o["predicted_ms"] for o in rows) < r["predicted_ms"] < max(o["predicted_ms"] for o in rows)
    assert len(check.dense_runs_ms) >= 2  # the ladder's run and the confirmation
    assert any(r["stage"] == "confirm" or len(r["timings_ms"]) > 1 for r in rows)
    assert check.dense_measured_ms == min(check.dense_runs_ms)  # the quietest of every timing of it
    if fraction is not None:
        assert check.target_ms == pytest.approx(fraction * check.dense_measured_ms)  # the budget as measured now
    assert check.aim_ms == pytest.approx((1 - DEFAULT_MARGIN) * check.target_ms)
    within = [r for r in rows if r["measured_ms"] <= check.aim_ms]
    candidates = [r for r in within if not any(_contains(o["channels"], r["channels"]) for o in within)]
    assert check.measured_ms == (max(r["measured_ms"] for r in candidates) if within else min(r["measured_ms"] for r in rows))
    if within:  # no candidate within the aim keeps more channels than the kept one in every group
        assert not any(_contains(o["channels"], list(check.channels)) for o in within)
    assert any(tuple(r["channels"]) == check.channels and r["measured_ms"] == check.measured_ms for r in rows)  # timed
    assert check.met == (check.measured_ms <= check.target_ms)
    assert check.to_json()["channels"] == list(check.channels)


@pytest.mark.parametrize("fraction", [0.6, 0.8])
def test_keeps_the_largest_timed_candidate_within_the_aim(table_path: Path, fraction: float) -> None:
    model = _model()
    graph = trace_channel_graph(model, SHAPE)
    table = LatencyTable.read(table_path)
    cost = LatencyCost.fit(table, graph)
    budget = Budget.fraction_of_dense(cost, fraction)
    check = meet_measured_budget(
        model, graph, [fraction] * len(graph.group_sizes), budget, backend_for_table(table.meta), fraction=fraction, protocol=LIGHT
    )
    ladder = [r for r in check.candidates if r["stage"] == "ladder"]
    assert 2 <= len(ladder) <= len(DEFAULT_LADDER)
    _assert_the_rules(check, cost, fraction)


def test_an_absolute_budget_is_its_own_target(table_path: Path) -> None:
    model = _model()
    graph = trace_channel_graph(model, SHAPE)
    table = LatencyTable.read(table_path)
    cost = LatencyCost.fit(table, graph)
    budget = Budget(cost, 0.7 * cost.dense)
    check = meet_measured_budget(model, graph, [0.7] * len(graph.group_sizes), budget, backend_for_table(table.meta), protocol=LIGHT, ladder=(0.9, 1.0))
    assert check.target_ms == budget.limit  # an absolute budget is not rescaled by the dense timing, in any run
    assert 1 <= len([r for r in check.candidates if r["stage"] == "ladder"]) <= 2
    _assert_the_rules(check, cost, None)


def test_a_candidate_with_fewer_channels_everywhere_is_never_kept() -> None:
    """Measured here (the README's job): [4, 32, 16, 104] timed 0.01297 ms and [4, 32, 16, 112] 0.01268 ms, both
    within the aim; 104 output channels are padded to 112 inside the network, so the wider one is the better choice."""
    rows = [
        {"channels": [4, 32, 16, 104], "measured_ms": 0.01297},
        {"channels": [4, 32, 16, 112], "measured_ms": 0.01268},
        {"channels": [8, 32, 16, 72], "measured_ms": 0.0125},  # wider in one group, narrower in another: kept
    ]
    assert [r["channels"] for r in undominated(rows)] == [[4, 32, 16, 112], [8, 32, 16, 72]]
    assert undominated(rows[:1]) == rows[:1]


def test_the_jobs_default_margin_is_the_checks() -> None:
    from hwdsa.job import PruneJobConfig

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


def test_a_coarse_ladder_is_refined_between_the_rungs_around_the_kept_one(table_path: Path) -> None:
    model = _model()
    graph = trace_channel_graph(model, SHAPE)
    table = LatencyTable.read(table_path)
    cost = LatencyCost.fit(table, graph)
    budget = Budget.fraction_of_dense(cost, 0.7)
    check = meet_measured_budget(
        model, graph, [0.7] * len(graph.group_sizes), budget, backend_for_table(table.meta), fraction=0.7, protocol=LIGHT,
        ladder=(0.5, 1.5),
    )  # fmt: skip
    _assert_the_rules(check, cost, 0.7)
    earlier = [r["limit_ms"] for r in check.candidates if r["stage"] in ("ladder", "extended")]  # the ladder's and any extension's
    finer = [r for r in check.candidates if r["stage"] in ("confirm", "nudge")]  # new ones: only between two timed ones
    assert all(min(earlier) < r["limit_ms"] < max(earlier) for r in finer)
    if len(check.dense_runs_ms) == 2:  # no extension: two rungs, both in the kept one's neighbourhood
        assert all(len(r["timings_ms"]) == 2 for r in check.candidates if r["stage"] == "ladder")


def test_the_kept_candidate_is_nudged_one_group_up(table_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lower rung (0.77 of dense priced, for a 0.9 target) fits the aim with room to spare: its one-group, one-step
    raises priced under the upper rung are timed in the confirmation run (here the only roundings between the two:
    the refinement between rungs is switched off, as its roundings may coincide with the raises). The rung is that
    high because this small network's fixed overhead prices its smallest pruning at 0.69 of dense on one host here."""
    monkeypatch.setattr(verify, "REFINE_BELOW", 1.0)
    monkeypatch.setattr(verify, "RECONFIRM_RUNS", 0)  # the first confirmation's nudges only
    model = _model()
    graph = trace_channel_graph(model, SHAPE)
    table = LatencyTable.read(table_path)
    cost = LatencyCost.fit(table, graph)
    check = meet_measured_budget(
        model, graph, [0.9] * len(graph.group_sizes), Budget.fraction_of_dense(cost, 0.9), backend_for_table(table.meta),
        fraction=0.9, protocol=LIGHT, ladder=(0.85, 1.5),
    )  # fmt: skip
    _assert_the_rules(check, cost, 0.9)
    nudges = [r for r in check.candidates if r["stage"] == "nudge"]
    if not nudges:
        # nudges are timed only for a kept candidate measured under the aim with a timed one above it; this host's
        # timing (its level drifts 10% within seconds on one VM here) put the candidates elsewhere this time
        timed = ", ".join(f"{r['measured_ms']:.4g}" for r in check.candidates)
        pytest.skip(f"no nudge was timed: no candidate was kept under the aim of {check.aim_ms:.4g} ms below a slower one when the confirmation began (all runs: {timed} ms)")
    # The kept candidate is the lower rung, or, where the dense network's level moved between runs, a rung the
    # ladder was extended with: every nudge raises that one candidate's channels in one group.
    bases = [r for r in check.candidates if r["stage"] in ("ladder", "extended") and all(_one_group_up(r["channels"], n["channels"]) for n in nudges)]
    assert len(nudges) <= verify.NUDGES and len(bases) == 1
    assert all(n["predicted_ms"] > bases[0]["predicted_ms"] for n in nudges)
    assert all(r["stage"] != "confirm" for r in check.candidates)


def test_a_ladder_that_measures_over_the_target_everywhere_is_extended_downwards(table_path: Path) -> None:
    """Rungs at 1.5-1.6 x a 60% budget price about 0.9 of the dense network: all measure over 0.6 of it.

    The extension rescales the fastest rung's prediction by the error measured there, so its candidates
    are priced below every rung of the ladder.
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
    _assert_the_rules(check, cost, 0.6)
    ladder = [r for r in check.candidates if r["stage"] == "ladder"]
    extended = [r for r in check.candidates if r["stage"] == "extended"]
    assert extended, "a ladder with nothing within the target must be extended"
    assert max(r["predicted_ms"] for r in extended) < min(r["predicted_ms"] for r in ladder)
    assert 3 <= len(check.dense_runs_ms) <= 2 + EXTEND_RUNS + verify.RECONFIRM_RUNS


def test_the_dense_network_is_timed_between_the_candidates(table_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The target's reference is timed before every `DENSE_EVERY` candidates of each run, its quietest is the dense
    latency, and each candidate's ratios are to the dense timing before it in the same round."""
    import hwdsa.lut.verify as verify

    model = _model()
    graph = trace_channel_graph(model, SHAPE)
    table = LatencyTable.read(table_path)
    budget = Budget.fraction_of_dense(LatencyCost.fit(table, graph), 0.7)
    runs: list[tuple[list[list[int]], list[list[Measurement]]]] = []
    real = verify.measure_rounds

    def recording(*args: Any, **kwargs: Any) -> list[list[Measurement]]:
        measured = real(*args, **kwargs)
        runs.append(([list(n) for n in args[2]], measured))
        return measured

    monkeypatch.setattr(verify, "measure_rounds", recording)
    check = meet_measured_budget(
        model, graph, [0.7] * len(graph.group_sizes), budget, backend_for_table(table.meta), fraction=0.7, protocol=LIGHT
    )
    dense = list(graph.group_sizes)
    assert len(runs) == len(check.dense_runs_ms)
    for (nets, measured), dense_ms in zip(runs, check.dense_runs_ms):
        places = [i for i, n in enumerate(nets) if n == dense]
        assert places[0] == 0 and len(places) == -(-(len(nets) - len(places)) // DENSE_EVERY)
        assert all(b - a == DENSE_EVERY + 1 for a, b in zip(places, places[1:]))
        assert dense_ms == min(quietest(measured[i]).median_ms for i in places)
        for i, net in enumerate(nets):  # this run's ratios, to the dense timing last before it, are among its pooled ones
            if net != dense:
                ref = max(p for p in places if p < i)
                pooled = next(r for r in check.candidates if r["channels"] == net)["round_ratios"]
                these = [m.median_ms / d.median_ms for d, m in zip(measured[ref], measured[i])]
                assert any(pooled[k : k + len(these)] == these for k in range(0, len(pooled), len(these)))


def test_a_confirmation_that_moves_the_choice_down_is_confirmed_again(table_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scripted timer (the table's own price, exact): in the confirmation run every network priced within 4% under
    the aim measures 10% slower, so the kept candidate fails there and a smaller one takes its place; one more run
    then times around that one, and its choice stands."""
    model = _model()
    graph = trace_channel_graph(model, SHAPE)
    cost = LatencyCost.fit(LatencyTable.read(table_path), graph)
    dense = list(graph.group_sizes)
    fraction = 0.9
    aim = (1 - DEFAULT_MARGIN) * fraction
    runs: list[list[list[int]]] = []

    def scripted(model: nn.Module, graph: Any, nets: list[list[int]], backend: Any, protocol: TimingProtocol, **_: Any) -> list[list[Measurement]]:
        runs.append([list(n) for n in nets])
        out = []
        for net in nets:
            share = cost.exact(net) / cost.exact(dense)
            slow = 1.1 if len(runs) == 2 and aim - 0.04 < share <= aim else 1.0
            ms = cost.exact(net) * slow
            out.append([Measurement(ms, ms, ms, ms, 3, 1, False, 0.0)] * protocol.rounds)
        return out

    monkeypatch.setattr(verify, "measure_rounds", scripted)
    check = meet_measured_budget(
        model, graph, [fraction] * len(graph.group_sizes), Budget.fraction_of_dense(cost, fraction), backend_for_table(LatencyTable.read(table_path).meta),
        fraction=fraction, protocol=LIGHT,
    )  # fmt: skip
    assert len(runs) == 3 and len(check.dense_runs_ms) == 3
    kept = next(r for r in check.candidates if tuple(r["channels"]) == check.channels)
    assert any(net == list(check.channels) for net in runs[2])  # the moved choice was timed in the last run
    assert kept["measured_fraction"] <= aim
