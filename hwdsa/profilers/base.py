"""What a profiler measures (LayerSpec), what it returns (Measurement), and the one timing protocol.

Standard library only: the edge agent (`python -m hwdsa.profilers`) imports this on a board that has
nothing but its inference backend installed.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

LAYER_KINDS = ("conv", "linear")
ACTIVATIONS = ("none", "relu", "relu6", "hardswish", "silu")
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class LayerSpec:
    """One layer configuration as the deployed engine runs it; the key of a lookup-table row.

    A convolution carries its BatchNorm folded in (so it always has a bias) and its activation fused.
    `groups` equals `in_channels` (and `out_channels`) for a depthwise convolution. A linear layer has
    kernel (1, 1), stride (1, 1) and input size (1, 1). Hashable, so entries that share a shape are
    measured once.
    """

    kind: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    in_size: tuple[int, int] = (1, 1)
    activation: str = "none"
    batch_size: int = 1
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"LayerSpec.kind must be one of {LAYER_KINDS}; got {self.kind!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"LayerSpec.activation must be one of {ACTIVATIONS}; got {self.activation!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"LayerSpec.precision must be one of {PRECISIONS}; got {self.precision!r}")
        for name in ("in_channels", "out_channels", "groups", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"LayerSpec.{name} must be >= 1; got {getattr(self, name)}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"LayerSpec: groups={self.groups} must divide in_channels={self.in_channels} "
                f"and out_channels={self.out_channels}"
            )

    @property
    def is_depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels == self.out_channels

    @property
    def out_size(self) -> tuple[int, int]:
        """Spatial output size (height, width) of the layer."""
        if self.kind == "linear":
            return (1, 1)
        h = (self.in_size[0] + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1
        w = (self.in_size[1] + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1
        return (h, w)

    def to_row(self) -> dict[str, Any]:
        """Flat dict (one scalar per column) for CSV tables."""
        return {
            "kind": self.kind,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_h": self.kernel[0],
            "kernel_w": self.kernel[1],
            "stride_h": self.stride[0],
            "stride_w": self.stride[1],
            "pad_h": self.padding[0],
            "pad_w": self.padding[1],
            "groups": self.groups,
            "in_h": self.in_size[0],
            "in_w": self.in_size[1],
            "activation": self.activation,
            "batch_size": self.batch_size,
            "precision": self.precision,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> LayerSpec:
        """Inverse of `to_row` (values may be strings, as read from CSV)."""
        return cls(
            kind=str(row["kind"]),
            in_channels=int(row["in_channels"]),
            out_channels=int(row["out_channels"]),
            kernel=(int(row["kernel_h"]), int(row["kernel_w"])),
            stride=(int(row["stride_h"]), int(row["stride_w"])),
            padding=(int(row["pad_h"]), int(row["pad_w"])),
            groups=int(row["groups"]),
            in_size=(int(row["in_h"]), int(row["in_w"])),
            activation=str(row["activation"]),
            batch_size=int(row["batch_size"]),
            precision=str(row["precision"]),
        )


SPEC_COLUMNS = tuple(LayerSpec("conv", 1, 1).to_row())


@dataclass(frozen=True)
class Measurement:
    """Latency statistics of one timed callable, in milliseconds, with the conditions they were taken in.

    `noisy` is True when the spread stayed above the protocol's limit after every re-measurement;
    `load_avg` is the 1-minute system load when the measurement ended (so a busy machine is visible).
    """

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    repeats: int
    attempts: int
    noisy: bool
    load_avg: float

    @property
    def rel_iqr(self) -> float:
        """Interquartile range relative to the median: the protocol's noise measure."""
        return (self.q3_ms - self.q1_ms) / self.median_ms if self.median_ms > 0 else float("inf")

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


MEASUREMENT_COLUMNS = tuple(Measurement(1.0, 1.0, 1.0, 1.0, 1, 1, False, 0.0).to_row())


@dataclass(frozen=True)
class TimingProtocol:
    """How every latency in hwdsa is taken: profilers, calibration and deployed engines alike.

    Warm-up runs are discarded; `repeats` timed runs give median and quartiles; when the relative
    interquartile range exceeds `max_rel_iqr` the whole measurement is repeated (up to `max_attempts`)
    and the quietest attempt is kept, flagged `noisy` if even that one was over the limit.
    A timed run shorter than `min_run_ms` is repeated `inner` times inside one sample, so the timer's
    resolution and Python overhead do not dominate sub-microsecond kernels.

    A latency is the *quietest* of `rounds` such measurements taken at different times (the one with
    the lowest median; see `quietest`). On a shared or virtualised machine the latency level moves in
    windows of seconds (other tenants' load on shared caches and memory: +25-40% was seen on this
    project's 2-vCPU VM), which a median inside one measurement cannot see. Runs that measure many
    items interleave the rounds (`profile_specs` makes `rounds` passes over the table,
    `hwdsa.lut.network.measure_pruned` round-robins its networks), so each item gets several windows.
    """

    warmup: int = 10
    repeats: int = 50
    max_rel_iqr: float = 0.10
    max_attempts: int = 3
    min_run_ms: float = 0.2
    rounds: int = 3

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.repeats < 3 or self.max_attempts < 1 or self.rounds < 1:
            raise ValueError("TimingProtocol needs warmup >= 0, repeats >= 3, max_attempts >= 1 and rounds >= 1")
        if not self.max_rel_iqr > 0:
            raise ValueError("TimingProtocol.max_rel_iqr must be positive")


def quietest(measurements: Iterable[Measurement]) -> Measurement:
    """The measurement of the quietest round: the lowest median (see `TimingProtocol.rounds`).

    Contention only ever adds time, so across rounds the lowest median is the one least disturbed;
    its quartiles, noise flag and load average are kept with it. Against the median over rounds of each
    round's minimum, on the same samples (`benchmarks/timing_statistic.py`), it repeated better between
    passes minutes apart in one of two comparisons on this project's shared VMs and worse in the other;
    the minimum over all rounds was the most repeatable in both. It is hwdsa's statistic for a latency in
    milliseconds (a table entry, a calibration network); a *fraction* of a reference timed in the same rounds
    is `paired_fraction`'s.
    """
    ms = list(measurements)
    if not ms:
        raise ValueError("quietest() needs at least one measurement")
    return min(ms, key=lambda m: m.median_ms)


def paired_fraction(reference: Sequence[Measurement], measurements: Sequence[Measurement]) -> float:
    """A network's latency as a fraction of a reference's: the median over rounds of each round's ratio of medians.

    Round r of `measurements` must have been timed right after round r of `reference` (the same interleaved
    round, `hwdsa.lut.network.measure_rounds`). Where the machine's level drifts over seconds, both sides of a
    ratio taken within a round move together, and the drift cancels; the quietest of each side alone comes
    from two different moments. On the same samples (`benchmarks/timing_statistic.py`, an Intel Xeon VM whose
    level moved 6-10% between passes five minutes apart) this repeated a fraction of dense to 0.8% mean (2.1%
    max) between passes, against 1.8% (4.8%) for the ratio of the quietest rounds. Budgets are fractions of
    the dense network, so checks and reports of a budget take them this way.
    """
    return statistics.median(round_ratios(reference, measurements))


def round_ratios(reference: Sequence[Measurement], measurements: Sequence[Measurement]) -> list[float]:
    """Each round's median over the reference's median in the same round: what `paired_fraction` takes the median of."""
    if not reference or len(reference) != len(measurements):
        raise ValueError(f"paired rounds need the same rounds of both; got {len(reference)} and {len(measurements)}")
    return [m.median_ms / r.median_ms for r, m in zip(reference, measurements)]


def _quartiles(samples: list[float]) -> tuple[float, float, float]:
    q1, med, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, med, q3


def _load_avg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on every platform
        return float("nan")


def time_callable(
    fn: Callable[[], object],
    protocol: TimingProtocol | None = None,
    *,
    synchronize: Callable[[], None] | None = None,
) -> Measurement:
    """Time `fn` under `protocol`; `synchronize` waits for asynchronous work (e.g. CUDA) to finish.

    Backends whose device has its own timer (CUDA events) use `time_samples` with their own sampler
    instead, so both paths share the statistics and the re-measurement rule.
    """
    sync = synchronize or (lambda: None)

    def sample(inner: int) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        return (time.perf_counter() - start) * 1e3 / inner

    return time_samples(sample, protocol)


def time_samples(sample: Callable[[int], float], protocol: TimingProtocol | None = None) -> Measurement:
    """Apply the protocol to a sampler: `sample(inner)` runs the work `inner` times, returns ms per run."""
    p = protocol or TimingProtocol()
    for _ in range(p.warmup):
        sample(1)
    probe = sample(1)
    inner = 1 if probe >= p.min_run_ms else min(1000, max(1, int(p.min_run_ms / max(probe, 1e-6)) + 1))
    best: Measurement | None = None
    for attempt in range(1, p.max_attempts + 1):
        samples = [sample(inner) for _ in range(p.repeats)]
        q1, med, q3 = _quartiles(samples)
        m = Measurement(
            median_ms=med,
            q1_ms=q1,
            q3_ms=q3,
            min_ms=min(samples),
            repeats=p.repeats,
            attempts=attempt,
            noisy=(q3 - q1) / med > p.max_rel_iqr if med > 0 else True,
            load_avg=_load_avg(),
        )
        if best is None or m.rel_iqr < best.rel_iqr:
            best = Measurement(**{**m.to_row(), "attempts": attempt})
        if not m.noisy:
            break
    assert best is not None  # the loop runs at least once (max_attempts >= 1)
    return Measurement(**{**best.to_row(), "attempts": attempt})
