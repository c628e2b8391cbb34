"""Whole networks against a latency table: profile a model's grid, time pruned copies, calibrate.

This is the glue the `hwdsa profile` / `hwdsa fit` verbs and `hwdsa prune --latency` share: the grid
of a traced model goes to a profiler backend (resumably), randomly pruned copies of the model are
timed end to end on the same backend, and the fitted calibration is stored with the table.

Example:
    >>> from hwdsa.lut.network import calibrate_table, profile_network  # doctest: +SKIP
    >>> table = profile_network(model, (3, 32, 32), "onnxruntime", "cpu.csv", num_threads=1)  # doctest: +SKIP
    >>> table, cal = calibrate_table(table, model, (3, 32, 32), "onnxruntime", name="resnet20", num_threads=1)  # doctest: +SKIP
    >>> table.write("cpu.csv")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import random
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from hwdsa.channels import round_channels
from hwdsa.errors import ConfigError, TableError
from hwdsa.graph import ChannelGraph, trace_channel_graph
from hwdsa.lut.calibrate import Calibration, CalibrationMethod, attach_calibration, fit_calibration
from hwdsa.lut.cost_model import LatencyCost
from hwdsa.lut.fit import parse_interpolation
from hwdsa.lut.grid import GridConfig, paddings_from_model, plan_grid
from hwdsa.lut.table import LatencyTable, TableMeta
from hwdsa.profilers.backend import Backend, OnnxBackend, resolve_backend
from hwdsa.profilers.base import Measurement, TimingProtocol, quietest, round_ratios
from hwdsa.profilers.runner import profile_specs

_log = logging.getLogger(__name__)

#: The smallest keep ratio of a randomly pruned network's groups (see `random_channels`).
MIN_KEEP_RATIO = 0.1
#: How `random_channels` draws a network's overall width: uniformly, or log-uniformly (footprints spread evenly).
WidthDraw = Literal["uniform", "log"]
#: The dense network is timed before every this many networks when their fractions of it are taken
#: (`time_against_dense`): each network's fraction is taken against the dense timing just before it in the same
#: round, a few networks' time away (the dense network is also the noisiest one timed alone: VGG-16's 59 MB of
#: weights stream from memory; 5% run to run here).
DENSE_EVERY = 4


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise ConfigError(f"input_shape must be (C, H, W) with positive sizes, e.g. (3, 32, 32); got {tuple(input_shape)}")
    return shape


def profile_network(
    model: nn.Module,
    input_shape: Sequence[int],
    backend: Backend | str,
    out_path: str | os.PathLike[str],
    *,
    grid: GridConfig | None = None,
    protocol: TimingProtocol | None = None,
    batch_size: int = 1,
    precision: str = "fp32",
    resume: bool = True,
    network_name: str | None = None,
    extra_meta: dict[str, Any] | None = None,
    **backend_options: Any,
) -> LatencyTable:
    """Measure every grid point of `model`'s conv/linear layers (pruned and fixed) into a table.

    Layers whose channels pruning cannot change get one point, measured once; layers that share a
    shape share entries. Resumable like `hwdsa.profilers.profile_specs`, whose progress bar shows an
    ETA. The table's metadata records the networks it covers (`"networks"`), so extending one file
    with a second model keeps the first one's entries and name.

    Args:
        model: the dense network (only traced; its weights do not matter).
        input_shape: (C, H, W) of one input.
        backend: a Backend, or a registered name (`backend_options` go to its constructor).
        out_path: the table file to write (extended when it already holds a compatible table).
        grid: how densely each channel axis is sampled (default: `GridConfig()`).
        protocol: timing protocol (default `TimingProtocol()`).
        batch_size, precision: of the layers as deployed.
        resume: reuse entries of an interrupted run or an existing table (False starts over).
        network_name: recorded in the table's metadata (default: the model's class name).
        extra_meta: more header metadata (e.g. a note on the machine's load).

    Raises:
        ConfigError: a bad input shape, or the backend cannot run `precision`.
        TableError: `out_path` holds a table measured under other conditions (and `resume` is True).
    """
    shape = _check_shape(input_shape)
    graph = trace_channel_graph(model, shape)
    cfg = grid or GridConfig()
    plan = plan_grid(graph, batch_size=batch_size, precision=precision, config=cfg, paddings=paddings_from_model(model))
    be = resolve_backend(backend, **backend_options)
    name = network_name or type(model).__name__
    out = Path(out_path)
    networks: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    if resume and out.is_file():
        try:
            old = LatencyTable.read(out)
        except TableError:  # profile_specs reports an unreadable table with the right advice
            pass
        else:
            networks = dict(old.meta.extra.get("networks", {}))
            if old.meta.calibration:  # extending a table keeps its measurements, so its calibrations stay valid
                meta["calibration"] = dict(old.meta.calibration)
            if "interpolation" in old.meta.extra:  # ... and so does the pricing they were fitted under
                meta["interpolation"] = old.meta.extra["interpolation"]
    networks[name] = {"input_shape": list(shape), "grid": {k: getattr(cfg, k) for k in ("mode", "multiple", "max_points", "cpu_points")}}
    meta.update(networks=networks, **(extra_meta or {}))
    specs = plan.specs()
    _log.info("profiling %s: %d layers, %d distinct layer configurations on %s", name, len(plan.layers), len(specs), be.name)
    profile_specs(specs, be, protocol, out_path=out, resume=resume, extra_meta=meta)
    return LatencyTable.read(out)


def deployable(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with BatchNorms folded into the convolutions before them.

    The table prices each convolution with its BatchNorm folded (as a deployed engine runs it), so
    the end-to-end time it is compared with must fold them too; ONNX export folds them by itself.
    Falls back to the unfolded copy when `torch.fx` cannot trace the model.
    """
    net = copy.deepcopy(model).cpu().eval()
    try:
        from torch.fx.experimental.optimization import fuse

        fused: nn.Module = fuse(net)
        return fused.eval()
    except Exception as exc:  # fx tracing fails on data-dependent control flow: time the model as it is
        _log.info("cannot fold BatchNorms of %s for timing (%s); timing it unfolded", type(model).__name__, exc)
        return net


def random_channels(
    graph: ChannelGraph,
    rng: random.Random,
    *,
    low: float = MIN_KEEP_RATIO,
    multiple: int = 1,
    draw: WidthDraw = "uniform",
) -> list[int]:
    """Channel counts of a randomly pruned network, at a random overall width.

    A network-wide width is drawn from U(low, 1) (`draw="uniform"`) or log-uniformly between low
    and 1 (`"log"`), and each group keeps width·U(0.6, 1.4) of its channels (clipped to [low, 1], at
    least one channel). Independent per-group ratios would put every network near the same total size
    (their mean), so a calibration fitted on them would extrapolate to the small networks a 30% budget
    asks for; drawing the width first spreads the networks from heavily pruned to dense, while the
    per-group spread keeps the allocations uneven. Weights and FLOPs grow as the width squared: a
    uniform width puts few networks at small footprints, a log-uniform one as many in every
    decade of footprint (what `calibration_networks` needs to see a cache capacity from both sides).

    `multiple` puts the counts on a backend's channel lattice (`Backend.channel_multiple`): each
    count is rounded to a multiple of it (at least one multiple) or kept whole, as `hwdsa prune`
    rounds for that backend (`hwdsa.lut.rounding`); a group no wider than `multiple` is kept whole.
    """
    if not 0 < low <= 1:
        raise ConfigError(f"low must lie in (0, 1]; got {low}")
    if multiple < 1:
        raise ConfigError(f"multiple must be >= 1; got {multiple}")
    if draw not in ("uniform", "log"):
        raise ConfigError(f"draw must be 'uniform' or 'log'; got {draw!r}")
    width = rng.uniform(low, 1.0) if draw == "uniform" else math.exp(rng.uniform(math.log(low), 0.0))
    ratios = [min(1.0, max(low, width * rng.uniform(0.6, 1.4))) for _ in graph.group_sizes]
    return round_channels([r * c for r, c in zip(ratios, graph.group_sizes)], graph.group_sizes, multiple=multiple)


def independent_channels(graph: ChannelGraph, rng: random.Random, *, low: float = 0.25, multiple: int = 1) -> list[int]:
    """Channel counts with every group's keep ratio drawn from U(low, 1) on its own (on the lattice `multiple`).

    Unlike `random_channels` (one overall width, groups 0.6-1.4 times it), wide early stages beside narrow
    late ones occur: the allocations a search may produce and a calibration fitted on width-first draws
    has not seen. Held-out networks for the prediction benchmark.
    """
    if not 0 < low <= 1:
        raise ConfigError(f"low must lie in (0, 1]; got {low}")
    sizes = graph.group_sizes
    return round_channels([rng.uniform(low, 1.0) * c for c in sizes], sizes, multiple=multiple)


def pruned_network(model: nn.Module, graph: ChannelGraph, channels: Sequence[int]) -> nn.Module:
    """A copy of `model` with `channels[g]` channels kept in group g (latency does not depend on which)."""
    from hwdsa.surgery import plan_from_channels, prune

    importance = [torch.arange(c, 0, -1, dtype=torch.float32) for c in graph.group_sizes]
    plan = plan_from_channels(graph, importance, channels)
    return prune(model, graph, plan)


def measure_pruned(
    model: nn.Module,
    graph: ChannelGraph,
    channels_list: Sequence[Sequence[int]],
    backend: Backend,
    protocol: TimingProtocol | None = None,
    *,
    rounds: int | None = None,
    batch_size: int = 1,
    precision: str = "fp32",
) -> list[float]:
    """End-to-end latency (ms) of `model` pruned to each of `channels_list`, BatchNorms folded, on `backend`.

    Each network is timed `rounds` times (default: the protocol's), round-robin, and its latency is
    its quietest round (`hwdsa.profilers.quietest`: the lowest round median). On a shared machine the
    latency level moves in windows of seconds; interleaving gives every network several windows, and
    the quietest round is the one the others' load disturbed least, the same statistic the table's
    entries are taken with (`TimingProtocol.rounds`).
    """
    per_round = measure_rounds(
        model, graph, channels_list, backend, protocol, rounds=rounds, batch_size=batch_size, precision=precision
    )
    return [quietest(ms).median_ms for ms in per_round]


def measure_rounds(
    model: nn.Module,
    graph: ChannelGraph,
    channels_list: Sequence[Sequence[int]],
    backend: Backend,
    protocol: TimingProtocol | None = None,
    *,
    rounds: int | None = None,
    batch_size: int = 1,
    precision: str = "fp32",
) -> list[list[Measurement]]:
    """Every round of `measure_pruned`: one measurement per network per round, in round-robin order.

    Network i of round r is timed right after network i-1 of the same round, so ratios taken within a
    round compare networks under the same machine state. A network may be listed more than once (a
    reference timed between others, as `hwdsa.lut.verify` times the dense one): it is built once and
    timed at each of its places.
    """
    proto = protocol or TimingProtocol()
    n_rounds = proto.rounds if rounds is None else rounds
    if n_rounds < 1:
        raise ConfigError(f"rounds must be >= 1; got {n_rounds}")
    one_round = dataclasses.replace(proto, rounds=1)
    shape = (batch_size, *graph.input_shape[-3:])
    with tempfile.TemporaryDirectory(prefix="hwdsa-nets-") as tmp:
        built: dict[tuple[int, ...], object] = {}  # a network listed twice (a reference timed often) is built once
        nets: list[object] = []
        for channels in channels_list:
            key = tuple(int(c) for c in channels)
            if key not in built:
                net = deployable(pruned_network(model, graph, channels))
                if isinstance(backend, OnnxBackend):  # export once, not once per round
                    from hwdsa.profilers.layers import onnx_from_network

                    path = Path(tmp) / f"net{len(built)}.onnx"
                    built[key] = str(onnx_from_network(net, path, input_shape=shape, precision=precision))
                else:
                    built[key] = net
            nets.append(built[key])
        samples: list[list[Measurement]] = [[] for _ in nets]
        for _ in range(n_rounds):
            for i, artefact in enumerate(nets):
                samples[i].append(backend.measure_network(artefact, shape, one_round, precision=precision))
    return samples


def interleave_reference(
    networks: Sequence[Sequence[int]], reference: Sequence[int], every: int
) -> tuple[list[list[int]], list[bool], list[int]]:
    """`networks` with `reference` timed before every `every` of them, for `measure_rounds` and then
    `fractions_of_reference`: the list to time, which of its places are the reference, and where each network went."""
    if every < 1:
        raise ValueError(f"every must be >= 1; got {every}")
    timed: list[list[int]] = []
    is_reference: list[bool] = []
    places: list[int] = []
    for i, net in enumerate(networks):
        if i % every == 0:
            timed.append(list(reference))
            is_reference.append(True)
        places.append(len(timed))
        timed.append(list(net))
        is_reference.append(False)
    return timed, is_reference, places


def fractions_of_reference(per_round: Sequence[Sequence[Measurement]], is_reference: Sequence[bool]) -> list[list[float]]:
    """Each network's per-round ratios to the reference timed last before it in the same round (`measure_rounds`).

    A reference (the dense network, timed every few networks) sits at the positions `is_reference` marks, the first
    of them before every other network. The median of a network's ratios is its `paired_fraction`; the lists are
    returned whole so that a check timing the same network in several runs can pool them. A reference's own
    entry is its ratio to itself.
    """
    if len(per_round) != len(is_reference) or not is_reference or not is_reference[0]:
        raise ValueError("fractions_of_reference() needs one flag per network and a reference first")
    out: list[list[float]] = []
    ref = 0
    for i, rounds in enumerate(per_round):
        if is_reference[i]:
            ref = i
        out.append(round_ratios(per_round[ref], rounds))
    return out


@dataclasses.dataclass(frozen=True)
class DenseRelativeTiming:
    """Networks timed with the dense network between them (`time_against_dense`), as fractions of it.

    On a shared machine whose level drifts over seconds, a fraction taken within a round (both timings a few
    networks apart) repeats far better than a ratio of two networks' quietest rounds, which come from two
    different moments (`hwdsa.profilers.paired_fraction`). A network's latency in ms is its fraction times the
    dense network's quietest round, so that every latency of one run stands on one level.
    """

    #: The dense network's quietest round (`quietest`) in this run.
    dense_ms: float
    #: Each network's per-round ratios to the dense timing before it in the same round.
    round_ratios: list[list[float]]

    @property
    def fractions(self) -> list[float]:
        """Each network's fraction of dense: the median of its round ratios (`paired_fraction`)."""
        return [statistics.median(r) for r in self.round_ratios]

    @property
    def latencies_ms(self) -> list[float]:
        """Each network's fraction of dense times the dense network's quietest round."""
        return [f * self.dense_ms for f in self.fractions]


def time_against_dense(
    model: nn.Module,
    graph: ChannelGraph,
    channels_list: Sequence[Sequence[int]],
    backend: Backend,
    protocol: TimingProtocol | None = None,
    *,
    rounds: int | None = None,
    every: int = DENSE_EVERY,
    batch_size: int = 1,
    precision: str = "fp32",
) -> DenseRelativeTiming:
    """Time `model` pruned to each of `channels_list` in interleaved rounds (`measure_rounds`) with the dense
    network before every `every` of them, and take each one's fraction of dense paired by round."""
    nets, is_dense, places = interleave_reference(channels_list, list(graph.group_sizes), every)
    per_round = measure_rounds(model, graph, nets, backend, protocol, rounds=rounds, batch_size=batch_size, precision=precision)
    dense_ms = min(quietest(r).median_ms for r, d in zip(per_round, is_dense) if d)
    ratios = fractions_of_reference(per_round, is_dense)
    return DenseRelativeTiming(dense_ms, [ratios[i] for i in places])


#: Networks a calibration is fitted on by default (the dense one and N-1 random prunings): with 8, two
#: default runs on one quiet host gave 47% and 100% of held-out networks within ±10% (issue 14).
DEFAULT_CALIBRATION_NETWORKS = 16
#: A calibration network measured this far off the fit (a share of its latency) is timed again ...
REMEASURE_ABOVE = 0.04
#: ... at most this many times (each pass times only the networks still off).
REMEASURE_PASSES = 2


def calibrate_table(
    table: LatencyTable,
    model: nn.Module,
    input_shape: Sequence[int],
    backend: Backend | str,
    *,
    name: str,
    networks: int = DEFAULT_CALIBRATION_NETWORKS,
    seed: int = 0,
    protocol: TimingProtocol | None = None,
    rounds: int | None = None,
    method: CalibrationMethod = "huber",
    interpolation: str | None = None,
    anchor_dense: bool = False,
    **backend_options: Any,
) -> tuple[LatencyTable, Calibration]:
    """Fit the calibration of `model` on `table` from end-to-end timings and store it in a copy of the table.

    The networks timed are the dense model and `networks - 1` randomly pruned copies (seeded, on the
    table's channel lattice: `TableMeta.channel_multiple`), timed in `rounds` interleaved rounds (default:
    the protocol's) on `backend`, which must be the table's own: a calibration against another backend or
    device would be meaningless. Each pruned network's latency is its fraction of the dense network,
    paired by round, times the dense network's quietest round (`time_against_dense`), as a budget's
    measured check takes it. The dense network's measurement is kept with the calibration
    (`Calibration.dense_ms`): a budget given as a fraction (`--latency 0.5`) is that fraction of what the
    dense network measured, whatever the fit's error there. `anchor_dense` makes the fit itself go through
    that measurement (the dense network is often the outlier of a memory-bound model: it alone exceeds a
    cache, so this is off by default).
    Networks measured more than `REMEASURE_ABOVE` off the first fit (timed in a window of a shared machine
    that disturbed them and the dense timing unlike) are timed again, their rounds pooled, and the fit is
    redone (at most `REMEASURE_PASSES` times).
    `interpolation` (see `LatencyCost.fit`) is stored in the table's metadata with the calibration,
    which is fitted under it; None keeps the table's. Write the returned table to keep both with it.

    Raises:
        ConfigError: fewer than 3 networks, or the backend differs from the table's.
        TableError: the table lacks entries the model needs, or the fit is degenerate.
    """
    if networks < 3:
        raise ConfigError(f"calibration needs at least 3 networks (dense + 2 pruned); got {networks}")
    be = resolve_backend(backend, **backend_options)
    if be.name != table.meta.backend:
        raise ConfigError(
            f"the table was measured with {table.meta.backend!r} but calibration would time with {be.name!r}: "
            f"calibrate with --backend {table.meta.backend}"
        )
    shape = _check_shape(input_shape)
    graph = trace_channel_graph(model, shape)
    if interpolation is not None and interpolation != table.meta.extra.get("interpolation", "linear"):
        parse_interpolation(interpolation)
        if table.meta.calibration:
            _log.warning("interpolation changes to %r: the table's other calibrations were fitted without it; refit them", interpolation)
        table = table.with_meta(extra={**table.meta.extra, "interpolation": interpolation})
    cost = LatencyCost.fit(table, graph, calibration=None, paddings=paddings_from_model(model))
    chosen = calibration_networks(graph, networks, seed=seed, multiple=table.meta.channel_multiple)
    # Every pruned network is timed as a fraction of the dense one in the same rounds, and its ms are that fraction
    # of the dense network's quietest round: the statistic the measured check of a budget (`hwdsa.lut.verify`) and
    # the benchmarks judge a network by. Fitted on each network's own quietest round instead, the calibration saw
    # fractions up to 4% lower than the check then measured on an Intel Xeon VM whose level drifted 6-10%.
    dense_levels: list[float] = []
    ratios: list[list[float]] = [[] for _ in chosen]

    def time_again(which: list[int]) -> list[float]:
        """Time the pruned networks `which` (indices into `chosen`) once more, pool their ratios, and return every
        network's latency as it stands (the dense network's is its quietest round over all runs)."""
        run = time_against_dense(
            model, graph, [chosen[i] for i in which], be, protocol, rounds=rounds, batch_size=table.meta.batch_size, precision=table.meta.precision
        )  # fmt: skip
        dense_levels.append(run.dense_ms)
        for i, r in zip(which, run.round_ratios):
            ratios[i].extend(r)
        dense = min(dense_levels)
        return [dense] + [statistics.median(r) * dense for r in ratios[1:]]

    measured = time_again(list(range(1, len(chosen))))
    cal = fit_calibration(cost, list(zip(chosen, measured)), method=method, anchor=0 if anchor_dense else None)
    for attempt in range(REMEASURE_PASSES):
        # A network timed in a window the machine's load disturbed unevenly (its round and the dense timing
        # before it unlike) sits far off the fit: time those again, pooling their rounds, and refit, so a
        # calibration does not hang on luck.
        off = [i for i, (r, m) in enumerate(zip(cal.residuals_ms, measured)) if i > 0 and abs(r) > REMEASURE_ABOVE * m]
        if not off:
            break
        _log.info("calibration: %d of %d networks measured over %.0f%% off the fit; timing them again", len(off), len(chosen), 100 * REMEASURE_ABOVE)
        measured = time_again(off)
        cal = fit_calibration(cost, list(zip(chosen, measured)), method=method, anchor=0 if anchor_dense else None)
    cal = dataclasses.replace(cal, dense_ms=float(measured[0]))
    return attach_calibration(table, name, cal), cal


def calibration_networks(graph: ChannelGraph, networks: int, *, seed: int = 0, multiple: int = 1) -> list[list[int]]:
    """The networks `calibrate_table` times: the dense one, then `networks - 1` seeded random prunings.

    Their widths are drawn log-uniformly (`random_channels(draw="log")`): the calibration's terms
    that grow with the weight footprint (a floor, a spill step at a cache capacity, a √footprint term) are only
    identified with networks on both sides of the capacity, and a uniform width puts few networks at
    small footprints (VGG-16, 24 networks: 2 under 2 MB of weights and 3 in 2-10 MB, against 4 and 7 drawn
    log-uniformly).
    """
    rng = random.Random(seed)
    return [list(graph.group_sizes)] + [
        random_channels(graph, rng, multiple=multiple, draw="log") for _ in range(networks - 1)
    ]


def backend_for_table(meta: TableMeta, **overrides: Any) -> Backend:
    """The table's backend, built with the options it was measured with (`overrides` win), on this machine.

    Raises:
        TableError: this machine is not the device the table was measured on: timings here would
            describe another device.
        BackendUnavailableError: the backend cannot run here.
    """
    from hwdsa.profilers.backend import get_backend

    options: dict[str, Any] = {k: v for k, v in meta.extra.get("backend_options", {}).items() if k != "provider"}
    if options.get("num_threads") == 0:
        options.pop("num_threads")  # 0 records "the library's default"
    options.update(overrides)
    backend = get_backend(meta.backend, **options)
    here = backend.device_description()
    if here != meta.device:
        raise TableError(
            f"the table was measured on {meta.device!r} but this machine is {here!r}: calibrate it on that device "
            "(timings from another one would be meaningless), or profile this one with `hwdsa profile`"
        )
    return backend


def latency_table_for(
    model: nn.Module,
    input_shape: Sequence[int],
    backend: Backend | str,
    out_path: str | os.PathLike[str],
    *,
    name: str,
    grid: GridConfig | None = None,
    protocol: TimingProtocol | None = None,
    networks: int = DEFAULT_CALIBRATION_NETWORKS,
    **backend_options: Any,
) -> Path:
    """A calibrated table for `model` at `out_path`, profiling and calibrating only what is missing.

    What `hwdsa prune --latency-backend NAME` runs when it is given a device instead of a table; a
    rerun (or `--resume`) finds the finished table and calibration and measures nothing again. The
    grid defaults to "gpu" mode (every multiple of 8 on narrow axes) on GPU backends
    (`Backend.stepped_latency`) and on backends with a channel lattice (ONNX Runtime's
    NCHWc kernels pad outputs to 16-channel blocks: a staircase too), else "cpu".
    """

    be = resolve_backend(backend, **backend_options)
    if grid is None:  # staircases need every multiple; smooth CPU latency interpolates from a few points
        stepped = be.stepped_latency or be.channel_multiple > 1
        grid = GridConfig("gpu") if stepped else GridConfig("cpu")
    table = profile_network(model, input_shape, be, out_path, grid=grid, protocol=protocol, network_name=name)
    graph = trace_channel_graph(model, _check_shape(input_shape))
    from hwdsa.lut.calibrate import calibrations, graph_signature

    sig = graph_signature(graph)
    if not any(c.graph_signature == sig for c in calibrations(table).values()):
        table, _ = calibrate_table(table, model, input_shape, be, name=name, networks=networks, protocol=protocol)
        table.write(out_path)
    return Path(out_path)


__all__ = [
    "DENSE_EVERY",
    "MIN_KEEP_RATIO",
    "DenseRelativeTiming",
    "backend_for_table",
    "calibrate_table",
    "calibration_networks",
    "latency_table_for",
    "deployable",
    "fractions_of_reference",
    "interleave_reference",
    "measure_pruned",
    "measure_rounds",
    "profile_network",
    "pruned_network",
    "random_channels",
    "time_against_dense",
]
