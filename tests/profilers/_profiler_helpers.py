"""Shared pieces of the profiler tests: tiny specs, a light protocol, and running the agent in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from hwdsa.profilers.backend import Backend
from hwdsa.profilers.base import LayerSpec, Measurement, TimingProtocol

REPO = Path(__file__).resolve().parents[2]

#: Few repeats, so the whole profiler suite stays well under a minute on 2 shared cores.
LIGHT = TimingProtocol(warmup=1, repeats=5, max_attempts=2, min_run_ms=0.05, rounds=1)


def conv(
    cin: int,
    cout: int,
    *,
    act: str = "relu",
    size: int = 8,
    groups: int = 1,
    stride: tuple[int, int] = (1, 1),
    precision: str = "fp32",
    batch_size: int = 1,
) -> LayerSpec:
    """A 3x3 'same' convolution spec on a small input."""
    return LayerSpec(
        "conv", cin, cout, kernel=(3, 3), stride=stride, padding=(1, 1), groups=groups, in_size=(size, size),
        activation=act, batch_size=batch_size, precision=precision,
    )  # fmt: skip


def tiny_specs() -> list[LayerSpec]:
    """Six distinct small specs covering conv, depthwise, strided, every activation and linear."""
    return [
        conv(4, 8),
        conv(8, 8, act="relu6"),
        conv(8, 8, act="none", groups=8),
        conv(8, 16, act="hardswish", stride=(2, 2)),
        conv(4, 4, act="silu"),
        LayerSpec("linear", 16, 10),
    ]


def check_measurement(m: Measurement, protocol: TimingProtocol = LIGHT) -> None:
    """The invariants every measurement must satisfy."""
    assert m.median_ms > 0 and m.min_ms > 0
    assert m.min_ms <= m.q1_ms <= m.median_ms <= m.q3_ms
    assert m.repeats == protocol.repeats
    assert 1 <= m.attempts <= protocol.max_attempts


def macs(spec: LayerSpec) -> int:
    """Multiply-accumulates of one layer spec (its batch included)."""
    if spec.kind == "linear":
        return spec.batch_size * spec.in_channels * spec.out_channels
    oh, ow = spec.out_size
    kh, kw = spec.kernel
    return spec.batch_size * (spec.in_channels // spec.groups) * spec.out_channels * kh * kw * oh * ow


#: Pairs of (small, big) layers for `assert_more_work_is_slower`: the big one has twice the channels in and
#: out and twice the side (16x the MACs), or four times the features (16x), sizes at which the work, not
#: the call overhead, sets the time on a CPU.
MORE_WORK = {
    "conv": (conv(16, 16, size=16), conv(32, 32, size=32)),
    "linear": (LayerSpec("linear", 256, 256), LayerSpec("linear", 1024, 1024)),
}


def assert_more_work_is_slower(backend: Backend, small: LayerSpec, big: LayerSpec, *, min_ratio: float = 1.5) -> None:
    """`big` (at least 8x the MACs of `small`) is measured at least `min_ratio` times slower: timings track work.

    Each is measured twice, alternately, and its lower median kept (noise only adds time), so one disturbed
    measurement cannot decide; the true ratio is several times `min_ratio` on every CPU backend here.
    """
    assert macs(big) >= 8 * macs(small), "the pair must differ by at least 8x the work"
    medians: dict[LayerSpec, list[float]] = {small: [], big: []}
    for spec in (small, big, small, big):
        m = backend.measure(spec, LIGHT)
        check_measurement(m)
        medians[spec].append(m.median_ms)
    fast, slow = min(medians[small]), min(medians[big])
    assert slow >= min_ratio * fast, f"{backend.name}: {macs(big) / macs(small):.0f}x the MACs took {slow:.4g} ms vs {fast:.4g} ms"


# Run code with torch, pandas and friends blocked, as on a board that has only numpy and onnxruntime.
BLOCKED = ("torch", "torchvision", "pandas", "onnx", "onnxslim", "sklearn", "scipy", "tqdm", "matplotlib")
_BLOCK_PRELUDE = (
    "import sys\n"
    f"for _m in {BLOCKED!r}:\n"
    "    sys.modules[_m] = None  # any import of it now raises ImportError\n"
)


def run_without_torch(code: str, *, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter in which torch, pandas, onnx and tqdm cannot be imported."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-c", _BLOCK_PRELUDE + code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def agent_code(argv: Sequence[str]) -> str:
    """Code that runs `python -m hwdsa.profilers ARGV` via runpy (after the blocking prelude)."""
    return (
        "import runpy\n"
        f"sys.argv = ['hwdsa.profilers', *{list(argv)!r}]\n"
        "try:\n"
        "    runpy.run_module('hwdsa.profilers', run_name='__main__', alter_sys=True)\n"
        "finally:\n"
        "    loaded = sorted(m for m in sys.modules if m.split('.')[0] in " + repr(BLOCKED) + " and sys.modules[m] is not None)\n"
        "    print('LOADED-BLOCKED=' + ','.join(loaded), file=sys.stderr)\n"
    )
