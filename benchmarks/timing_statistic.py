"""Which statistic of interleaved timing rounds repeats best on a shared machine.

Every latency hwdsa reports is one number taken from several interleaved rounds (each round times every
network once, `hwdsa.lut.network.measure_rounds`). Two ways to combine the rounds are compared here on the
*same* samples, so only the statistic differs:

- `quietest`: the lowest round median (`hwdsa.profilers.base.quietest`, hwdsa's statistic);
- `median_of_minima`: the median over rounds of each round's minimum (the independent timer's);
- and, for reference, `min_of_minima` and `median_of_medians`;
- paired by round, for fractions of dense only: each round's ratio of a network to the dense network timed in
  the same round, then the median over rounds (`paired_minima`: of the round minima; `paired_medians`: of the
  round medians). A machine whose level drifts over seconds moves both sides of a ratio together.

The last `--duplicates` prunings are timed a second time at the end of every round: an identical network at
another place in the same rounds, so its two results differ by the statistic's noise within one pass.

The networks are the dense model and prunings drawn per group independently on the backend's channel
lattice (wide early and narrow late stages occur, unlike a width-first draw). Timing runs on one core with
ONNX Runtime, one thread; `--pause PID` stops other processes (a training run on the other core) while a
pass runs, so each pass is quiet and the passes, `--gap-s` apart, see different machine states. Reported:
for each statistic, the pass-to-pass difference per network (ms) and per fraction of dense, mean and max
over networks and pass pairs. Writes `timing_statistic.{json,md}`.

    python benchmarks/timing_statistic.py --core 1 --pause "$(pgrep -f train)"
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hwdsa._io import write_json_atomic, write_text_atomic
from hwdsa.graph import trace_channel_graph
from hwdsa.lut.network import independent_channels, measure_rounds
from hwdsa.models import create_model, default_input_shape
from hwdsa.profilers.backend import get_backend
from hwdsa.profilers.base import Measurement, TimingProtocol

from _command import reproduce_command
from _runs import host_record, paused

_log = logging.getLogger("benchmarks.timing_statistic")

STATISTICS: dict[str, Callable[[Sequence[Measurement]], float]] = {
    "quietest": lambda ms: min(m.median_ms for m in ms),
    "median_of_minima": lambda ms: statistics.median(m.min_ms for m in ms),
    "min_of_minima": lambda ms: min(m.min_ms for m in ms),
    "median_of_medians": lambda ms: statistics.median(m.median_ms for m in ms),
}


#: Fractions of dense from the rounds of both: (dense's rounds, the network's rounds) -> the network's fraction.
PAIRED: dict[str, Callable[[Sequence[Measurement], Sequence[Measurement]], float]] = {
    "paired_minima": lambda dense, ms: statistics.median(m.min_ms / d.min_ms for d, m in zip(dense, ms)),
    "paired_medians": lambda dense, ms: statistics.median(m.median_ms / d.median_ms for d, m in zip(dense, ms)),
}


def fraction_repeatability(per_pass: list[np.ndarray]) -> dict[str, float]:
    """Pass-to-pass |a/b − 1| of each pruned network's fraction of dense, over all pass pairs."""
    frac = [np.abs(a / b - 1.0) for a, b in itertools.combinations(per_pass, 2)]
    return {"fraction_mean": float(np.mean(frac)), "fraction_max": float(np.max(frac))}


def duplicate_spread(fractions: list[np.ndarray], duplicates: int) -> dict[str, float]:
    """|a/a' − 1| of each duplicated network's two fractions of dense within one pass, over all passes."""
    if not duplicates:
        return {}
    unique = len(fractions[0]) - duplicates
    d = [np.abs(f[unique - duplicates : unique] / f[unique:] - 1.0) for f in fractions]
    return {"duplicate_mean": float(np.mean(d)), "duplicate_max": float(np.max(d))}


def repeatability(per_pass: list[np.ndarray]) -> dict[str, float]:
    """Pass-to-pass |a/b − 1| of each network's latency and of its fraction of dense (network 0), over all pass pairs."""
    ms, frac = [], []
    for a, b in itertools.combinations(per_pass, 2):
        ms.extend(np.abs(a / b - 1.0).tolist())
        frac.extend(np.abs((a[1:] / a[0]) / (b[1:] / b[0]) - 1.0).tolist())
    return {
        "ms_mean": float(np.mean(ms)),
        "ms_max": float(np.max(ms)),
        "fraction_mean": float(np.mean(frac)),
        "fraction_max": float(np.max(frac)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--networks", type=int, default=14, help="pruned networks beside the dense one")
    p.add_argument("--multiple", type=int, default=8, help="channel lattice of the draws (ONNX Runtime's)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--repeats", type=int, default=100, help="timed runs per network per round")
    p.add_argument("--duplicates", type=int, default=3, help="prunings timed twice in every round (within-pass noise)")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--gap-s", type=float, default=300.0, help="seconds between passes")
    p.add_argument("--core", type=int, default=None, help="pin the timing to this core")
    p.add_argument("--pause", default="", help="PIDs (space or comma separated) to stop while a pass runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--name", default="timing_statistic", help="file name of the results (without suffix)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})
    pids = [int(x) for x in args.pause.replace(",", " ").split()]

    model = create_model(args.model)
    graph = trace_channel_graph(model, default_input_shape(args.model))
    rng = random.Random(args.seed)
    nets = [list(graph.group_sizes)] + [independent_channels(graph, rng, multiple=args.multiple) for _ in range(args.networks)]
    if not 0 <= args.duplicates <= args.networks:
        p.error(f"--duplicates must be between 0 and --networks ({args.networks})")
    nets += nets[len(nets) - args.duplicates :]  # timed again at the end of each round
    backend = get_backend("onnxruntime", num_threads=1)
    protocol = TimingProtocol(warmup=10, repeats=args.repeats, max_attempts=1)
    passes: list[list[list[Measurement]]] = []
    started = []
    for k in range(args.passes):
        if k:
            _log.info("waiting %.0f s before pass %d", args.gap_s, k + 1)
            time.sleep(args.gap_s)
        with paused(pids):
            started.append(time.strftime("%H:%M:%S"))
            t0 = time.perf_counter()
            passes.append(measure_rounds(model, graph, nets, backend, protocol, rounds=args.rounds))
            _log.info("pass %d: %d networks x %d rounds in %.0f s", k + 1, len(nets), args.rounds, time.perf_counter() - t0)

    results = {}
    unique = len(nets) - args.duplicates
    for name, stat in STATISTICS.items():
        per_pass = [np.array([stat(rounds) for rounds in one]) for one in passes]
        fractions = [x[1:] / x[0] for x in per_pass]
        results[name] = {"repeatability": {**repeatability([x[:unique] for x in per_pass]), **duplicate_spread(fractions, args.duplicates)},
                         "ms": [x.tolist() for x in per_pass]}  # fmt: skip
    for name, paired in PAIRED.items():
        fractions = [np.array([paired(one[0], rounds) for rounds in one[1:]]) for one in passes]
        results[name] = {"repeatability": {**fraction_repeatability([f[: unique - 1] for f in fractions]), **duplicate_spread(fractions, args.duplicates)},
                         "fractions": [f.tolist() for f in fractions]}  # fmt: skip
    record: dict[str, Any] = {
        "host": host_record(),
        "command": reproduce_command("timing_statistic.py", argv),
        "model": args.model,
        "networks": nets,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "passes_started": started,
        "gap_s": args.gap_s,
        "paused_other_processes": bool(pids),
        "duplicates": args.duplicates,
        "statistics": results,
        # every round's minimum and median per network, per pass: any other statistic can be judged offline
        "rounds_min_ms": [[[m.min_ms for m in rounds] for rounds in one] for one in passes],
        "rounds_median_ms": [[[m.median_ms for m in rounds] for rounds in one] for one in passes],
    }
    out = Path(args.out)
    write_json_atomic(out / f"{args.name}.json", record)
    write_text_atomic(out / f"{args.name}.md", markdown(record))
    print(markdown(record))
    return 0


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Timing statistic: which combination of interleaved rounds repeats best",
        "",
        f"Host: {r['host']['cpu']} (fingerprint `{r['host']['fingerprint']}`). {r['model']}: the dense network and "
        f"{len(r['networks']) - 1 - r.get('duplicates', 0)} prunings drawn per group independently, ONNX Runtime, one thread, one core; "
        f"{r['rounds']} interleaved rounds of {r['repeats']} runs per pass, {len(r['passes_started'])} passes "
        f"{r['gap_s']:.0f} s apart (started {', '.join(r['passes_started'])})"
        + (", other processes paused during each pass." if r["paused_other_processes"] else "."),
        "",
        "Pass-to-pass difference (all pass pairs, all networks), the same samples for every statistic; *same network "
        f"twice*: the last {r.get('duplicates', 0)} prunings timed again at the end of every round, the difference between "
        "their two fractions of dense within one pass (all passes). The paired statistics give fractions only:",
        "",
        "| statistic | ms: mean | ms: max | fraction of dense: mean | fraction of dense: max | same network twice: mean | max |",
        "|---|---|---|---|---|---|---|",
    ]

    def pct(q: dict[str, float], key: str) -> str:
        return f"{q[key]:.2%}" if key in q else "–"

    for name, s in r["statistics"].items():
        q = s["repeatability"]
        cells = [pct(q, k) for k in ("ms_mean", "ms_max", "fraction_mean", "fraction_max", "duplicate_mean", "duplicate_max")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Reproduce: `{r['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
