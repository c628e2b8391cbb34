"""Whole networks against a table (`hwdsa.lut.network`): real profiling, pruning and end-to-end timing on this CPU."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

from hwdsa.errors import ConfigError
from hwdsa.graph import trace_channel_graph
from hwdsa.lut.calibrate import calibrations
from hwdsa.lut.cost_model import LatencyCost
from hwdsa.lut.grid import GridConfig
from hwdsa.lut.network import (
    calibrate_table,
    calibration_networks,
    deployable,
    fractions_of_reference,
    independent_channels,
    interleave_reference,
    measure_pruned,
    measure_rounds,
    profile_network,
    pruned_network,
    random_channels,
    time_against_dense,
)
from hwdsa.lut.table import LatencyTable
from hwdsa.models import create_model
from hwdsa.profilers.base import Measurement, TimingProtocol
from hwdsa.profilers.torch_cpu import TorchCpuBackend

LIGHT = TimingProtocol(warmup=1, repeats=5, max_attempts=1, min_run_ms=0.05, rounds=1)
SHAPE = (1, 12, 12)
GRID = GridConfig("cpu", cpu_points=2)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("small_cnn", in_channels=1)


@pytest.fixture(scope="module")
def table_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("net") / "t.csv"
    profile_network(_model(), SHAPE, "torch_cpu", path, grid=GRID, protocol=LIGHT, network_name="small_cnn", num_threads=1)
    return path


def test_random_channels_stay_in_range() -> None:
    graph = trace_channel_graph(_model(), SHAPE)
    rng = random.Random(0)
    totals = []
    for _ in range(40):
        ch = random_channels(graph, rng, low=0.2)
        assert all(max(1, round(0.2 * c)) <= k <= c for k, c in zip(ch, graph.group_sizes))
        totals.append(sum(ch) / sum(graph.group_sizes))
    assert min(totals) < 0.4 and max(totals) > 0.8  # the networks span small to nearly dense
    with pytest.raises(ConfigError, match="low must lie in"):
        random_channels(graph, rng, low=0.0)


def test_random_channels_on_a_lattice() -> None:
    graph = trace_channel_graph(create_model("resnet20"), (3, 32, 32))
    rng = random.Random(1)
    seen = set()
    for _ in range(60):
        ch = random_channels(graph, rng, multiple=8)
        assert all(k % 8 == 0 and 8 <= k <= c for k, c in zip(ch, graph.group_sizes))
        seen.update(ch)
    assert {8, 16, 64} <= seen and len(seen) > 5  # heavily pruned to whole groups, and in between
    narrow = trace_channel_graph(_model(), SHAPE)  # groups no wider than the lattice stay whole, as rounding keeps them
    for _ in range(10):
        ch = random_channels(narrow, rng, multiple=16)
        assert all(k == c for k, c in zip(ch, narrow.group_sizes) if c <= 16)
    with pytest.raises(ConfigError, match="multiple must be >= 1"):
        random_channels(graph, rng, multiple=0)
    nets = calibration_networks(graph, 5, seed=3, multiple=8)
    assert nets[0] == list(graph.group_sizes) and len(nets) == 5
    assert nets == calibration_networks(graph, 5, seed=3, multiple=8)  # seeded


def test_independent_channels_give_uneven_allocations_a_width_draw_rarely_gives() -> None:
    """Wide first stage beside a narrow last one: groups drawn on their own reach it, a width-first draw barely does."""
    graph = trace_channel_graph(create_model("resnet20"), (3, 32, 32))
    sizes = graph.group_sizes

    def uneven(ch: list[int]) -> bool:
        return ch[0] / sizes[0] >= 0.75 and ch[-1] / sizes[-1] <= 0.4

    rng = random.Random(0)
    drawn = [independent_channels(graph, rng, multiple=8) for _ in range(200)]
    assert all(k % 8 == 0 and 8 <= k <= c for ch in drawn for k, c in zip(ch, sizes))
    widths = [random_channels(graph, rng, multiple=8) for _ in range(200)]
    assert sum(map(uneven, drawn)) > 3 * max(1, sum(map(uneven, widths)))
    with pytest.raises(ConfigError, match="low must lie in"):
        independent_channels(graph, rng, low=1.5)


def test_pruned_and_folded_network_computes_the_same_as_the_pruned_one() -> None:
    model = _model().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    graph = trace_channel_graph(model, SHAPE)
    channels = [max(1, c // 2) for c in graph.group_sizes]
    pruned = pruned_network(model, graph, channels).eval()
    folded = deployable(pruned)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), pruned(x), rtol=1e-4, atol=1e-5)
    assert trace_channel_graph(pruned, SHAPE).group_sizes == tuple(channels)


def test_measure_pruned_times_each_network(table_path: Path) -> None:
    from hwdsa.profilers import get_backend

    model = _model()
    graph = trace_channel_graph(model, SHAPE)
    nets = [list(graph.group_sizes), [1] * len(graph.group_sizes)]
    ms = measure_pruned(model, graph, nets, get_backend("torch_cpu", num_threads=1), LIGHT, rounds=2)
    assert len(ms) == 2 and all(m > 0 for m in ms)
    per_round = measure_rounds(model, graph, nets, get_backend("torch_cpu", num_threads=1), dataclasses.replace(LIGHT, rounds=3))
    assert [len(r) for r in per_round] == [3, 3]  # the protocol's rounds, per network
    assert all(m.median_ms > 0 for r in per_round for m in r)
    with pytest.raises(ConfigError, match="rounds must be >= 1"):
        measure_pruned(model, graph, nets, get_backend("torch_cpu"), LIGHT, rounds=0)


def test_calibration_is_stored_and_survives_extending_the_table(table_path: Path, tmp_path: Path) -> None:
    model = _model()
    table = LatencyTable.read(table_path)
    calibrated, cal = calibrate_table(
        table, model, SHAPE, "torch_cpu", name="small_cnn", networks=3, protocol=LIGHT, rounds=1, interpolation="ceil:4", num_threads=1
    )
    assert cal.n_points == 3 and calibrated.meta.extra["interpolation"] == "ceil:4"
    path = calibrated.write(tmp_path / "t.csv")
    cost = LatencyCost.fit(LatencyTable.read(path), trace_channel_graph(model, SHAPE))
    assert cost.calibration == cal and cost.layers[0].interpolation == "ceil:4"  # the table's own pricing
    # profiling a second input size into the same file keeps the first network's calibration and pricing
    profile_network(model, (1, 10, 10), "torch_cpu", path, grid=GRID, protocol=LIGHT, network_name="small10", num_threads=1)
    extended = LatencyTable.read(path)
    assert set(extended.meta.extra["networks"]) == {"small_cnn", "small10"}
    assert calibrations(extended)["small_cnn"] == cal and extended.meta.extra["interpolation"] == "ceil:4"
    assert len(extended) > len(table)


def test_calibration_on_another_backend_is_refused(table_path: Path) -> None:
    with pytest.raises(ConfigError, match="calibrate with --backend torch_cpu"):
        calibrate_table(LatencyTable.read(table_path), _model(), SHAPE, "onnxruntime", name="x", networks=3, protocol=LIGHT)
    with pytest.raises(ConfigError, match="at least 3 networks"):
        calibrate_table(LatencyTable.read(table_path), _model(), SHAPE, "torch_cpu", name="x", networks=2)


class _DisturbedOnce(TorchCpuBackend):
    """torch_cpu, with another tenant's load landing on the first timing of the third network timed (+60%): the
    second pruned network, timed after the dense one and the first pruned one."""

    def __init__(self) -> None:
        super().__init__(num_threads=1)
        self.timings = 0
        self.undisturbed_ms = 0.0

    def measure_network(self, model_or_onnx: object, input_shape: Sequence[int], protocol: TimingProtocol | None = None, *, precision: str = "fp32") -> Measurement:
        m = super().measure_network(model_or_onnx, input_shape, protocol, precision=precision)
        self.timings += 1
        if self.timings == 3:
            self.undisturbed_ms = m.median_ms
            return dataclasses.replace(m, median_ms=1.6 * m.median_ms, q1_ms=1.6 * m.q1_ms, q3_ms=1.6 * m.q3_ms)
        return m


def test_calibration_times_again_a_network_from_a_disturbed_window(table_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    backend = _DisturbedOnce()
    quiet = TimingProtocol(warmup=3, repeats=15, max_attempts=1, min_run_ms=0.2, rounds=1)
    with caplog.at_level("INFO", logger="hwdsa.lut.network"):
        _, cal = calibrate_table(LatencyTable.read(table_path), _model(), SHAPE, backend, name="small_cnn", networks=6, protocol=quiet, rounds=1)
    # the first refit times the disturbed network again (and, on a busy machine, any other that its noise put above)
    assert "networks measured over 4% off the fit; timing them again" in caplog.text
    assert backend.timings >= 9  # 5 pruned networks and the dense one twice, then at least one again with the dense one
    assert cal.residuals_ms[2] < 0.2 * backend.undisturbed_ms  # no longer hanging 60% above the fit


def test_log_width_draw_covers_small_networks() -> None:
    """A log-uniform width puts as many networks in [0.1, 0.32) as in [0.32, 1]; a uniform one a quarter."""
    graph = trace_channel_graph(create_model("vgg16"), (3, 32, 32))

    def share_narrow(draw: str) -> float:
        rng = random.Random(0)
        nets = [random_channels(graph, rng, draw=draw) for _ in range(400)]  # type: ignore[arg-type]
        mean_ratio = [sum(k / c for k, c in zip(ch, graph.group_sizes)) / len(ch) for ch in nets]
        return sum(r < 0.32 for r in mean_ratio) / len(nets)

    assert share_narrow("log") > 0.4
    assert share_narrow("uniform") < 0.3
    with pytest.raises(ConfigError, match="draw must be"):
        random_channels(graph, random.Random(0), draw="normal")  # type: ignore[arg-type]
    first = calibration_networks(graph, 24, seed=0)
    assert first[0] == list(graph.group_sizes)
    assert sum(sum(k / c for k, c in zip(ch, graph.group_sizes)) / len(ch) < 0.32 for ch in first[1:]) >= 6


def test_fractions_pair_each_network_with_the_reference_timed_before_it() -> None:
    """References at 0 and 3: networks 1-2 are divided by the first, 4 by the second, round by round."""
    m = lambda ms: Measurement(ms, ms, ms, ms, 3, 1, False, 0.0)  # noqa: E731
    per_round = [[m(2.0), m(4.0)], [m(1.0), m(2.0)], [m(1.5), m(2.0)], [m(1.0), m(8.0)], [m(0.5), m(2.0)]]
    out = fractions_of_reference(per_round, [True, False, False, True, False])
    assert out == [[1.0, 1.0], [0.5, 0.5], [0.75, 0.5], [1.0, 1.0], [0.5, 0.25]]
    with pytest.raises(ValueError, match="reference first"):
        fractions_of_reference(per_round, [False, True, False, True, False])
    with pytest.raises(ValueError, match="one flag per network"):
        fractions_of_reference(per_round, [True])


def test_the_reference_is_interleaved_before_every_few_networks() -> None:
    timed, is_reference, places = interleave_reference([[1], [2], [3]], [9], 2)
    assert timed == [[9], [1], [2], [9], [3]] and is_reference == [True, False, False, True, False] and places == [1, 2, 4]
    with pytest.raises(ValueError, match="every"):
        interleave_reference([[1]], [9], 0)


class _Drifting(TorchCpuBackend):
    """torch_cpu on a machine whose level moves between rounds (x2, x1, x2), with one more spike (x3) on the pruned
    network's timing in the quiet round; the undisturbed medians are kept. Two networks per round."""

    def __init__(self) -> None:
        super().__init__(num_threads=1)
        self.raw: list[float] = []

    def measure_network(self, model_or_onnx: object, input_shape: Sequence[int], protocol: TimingProtocol | None = None, *, precision: str = "fp32") -> Measurement:
        m = super().measure_network(model_or_onnx, input_shape, protocol, precision=precision)
        self.raw.append(m.median_ms)
        position, level = len(self.raw) - 1, (2.0, 1.0, 2.0)[(len(self.raw) - 1) // 2]
        factor = level * (3.0 if position == 3 else 1.0)
        return dataclasses.replace(m, median_ms=factor * m.median_ms, q1_ms=factor * m.q1_ms, q3_ms=factor * m.q3_ms)


def test_a_fraction_of_dense_is_taken_within_each_round_and_its_ms_on_the_dense_networks_quietest_level() -> None:
    """The quietest rounds of the two networks come from different levels (the dense one's from the quiet round, the
    pruned one's from a loud one): their ratio is about twice the true fraction; the median of the per-round ratios
    lies among the undisturbed ratios."""
    backend = _Drifting()
    model = _model()
    graph = trace_channel_graph(model, SHAPE)
    pruned = [max(1, c // 2) for c in graph.group_sizes]
    quiet = TimingProtocol(warmup=3, repeats=15, max_attempts=1, min_run_ms=0.2, rounds=3)
    timing = time_against_dense(model, graph, [pruned], backend, quiet)
    dense_raw, pruned_raw = backend.raw[0::2], backend.raw[1::2]
    expected = sorted([pruned_raw[0] / dense_raw[0], 3.0 * pruned_raw[1] / dense_raw[1], pruned_raw[2] / dense_raw[2]])[1]
    assert timing.fractions == [pytest.approx(expected)]
    assert timing.dense_ms == pytest.approx(min(2.0 * dense_raw[0], dense_raw[1], 2.0 * dense_raw[2]))
    assert timing.latencies_ms == [pytest.approx(expected * timing.dense_ms)]
    undisturbed = [p / d for p, d in zip(pruned_raw, dense_raw)]
    quietest_ratio = min(2.0 * pruned_raw[0], 3.0 * pruned_raw[1], 2.0 * pruned_raw[2]) / timing.dense_ms
    assert min(undisturbed) <= timing.fractions[0] <= max(undisturbed) and quietest_ratio > 1.4 * max(undisturbed)
