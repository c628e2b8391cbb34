"""What a channel group below the backend's lattice costs in a network, against what the table says.

ONNX Runtime's CPU kernels work in blocks of channels (`Backend.channel_multiple`, 8 here); the latency table
also measures the counts below the block (1, 2, 4), each layer timed alone, and the search may choose them.
Inside a network a layer off the block may need layout reorders that a layer timed alone does not show, so
the table can under-price such a network (the prediction benchmark's DSA-produced networks, most of them with
groups at 1-4 channels, were predicted up to 10% low on this host). This measures it directly: from a base
network on the lattice, one group at a time is set to 1, 2 and 4 channels, and every variant is timed with its
base in the same interleaved rounds (one thread, the networks in shuffled order). Reported per group and
count: the latency saved against the base, measured and as the table (with its calibration) predicts it.
Measured on the AMD EPYC host (`7a9b5131f1f2`): the table over-prices such a cut by 0.002 ms on average, and the
largest errors (+0.009 to +0.011 ms) are the variants that fall under the calibration's spill capacity (0.25 MB
of weights there), whose step the prediction drops and the network does not.

    taskset -c 1 python benchmarks/sublattice_cost.py --pause "$(pgrep -f equal_latency)"

Writes `sublattice_cost.{json,md}`.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from hwdsa._io import write_json_atomic, write_text_atomic
from hwdsa.costs import build_cost
from hwdsa.graph import trace_channel_graph
from hwdsa.job.latency import host_table
from hwdsa.lut.network import backend_for_table, measure_rounds
from hwdsa.lut.table import LatencyTable
from hwdsa.models import create_model
from hwdsa.profilers.base import TimingProtocol

from _command import reproduce_command
from _runs import host_record, paused

_log = logging.getLogger("benchmarks.sublattice_cost")
HERE = Path(__file__).resolve().parent
INPUT_SHAPE = (3, 32, 32)
#: ResNet-20's groups (3 stages of 16, 32 and 64 channels, four groups each), at two points on the lattice.
BASES: dict[str, list[int]] = {
    "dense": [16, 16, 16, 16, 32, 32, 32, 32, 64, 64, 64, 64],
    "half": [8, 8, 8, 8, 16, 16, 16, 16, 32, 32, 32, 32],
}
COUNTS = (1, 2, 4)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument("--pause", default="", help="PIDs to SIGSTOP while timing (other work on this machine)")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    model = create_model("resnet20").eval()
    graph = trace_channel_graph(model, INPUT_SHAPE)
    table = host_table("resnet20", model, INPUT_SHAPE)
    cost = build_cost("latency", graph, latency_table=table)
    backend = backend_for_table(LatencyTable.read(table).meta)
    nets: list[tuple[str, int | None, int | None, list[int]]] = []
    for base, channels in BASES.items():
        nets.append((base, None, None, channels))
        nets += [(base, g, c, [c if h == g else x for h, x in enumerate(channels)]) for g in range(len(channels)) for c in COUNTS]
    order = list(range(len(nets)))
    random.Random(0).shuffle(order)
    protocol = TimingProtocol(warmup=10, repeats=args.repeats, max_attempts=1)
    pids = [int(x) for x in args.pause.split()]
    with paused(pids):
        per_net = measure_rounds(model, graph, [nets[i][3] for i in order], backend, protocol, rounds=args.rounds)
    measured = {i: statistics.median(m.min_ms for m in per_net[k]) for k, i in enumerate(order)}
    base_at = {name: next(i for i, n in enumerate(nets) if n[0] == name and n[1] is None) for name in BASES}
    rows: list[dict[str, Any]] = []
    for i, (base, g, c, channels) in enumerate(nets):
        if g is None:
            continue
        b = base_at[base]
        saved = measured[b] - measured[i]
        predicted_saved = cost.exact(nets[b][3]) - cost.exact(channels)
        rows.append({"base": base, "group": g, "channels": c, "base_channels": nets[b][3][g], "measured_ms": measured[i],
                     "measured_saved_ms": saved, "predicted_saved_ms": predicted_saved, "unseen_ms": predicted_saved - saved})  # fmt: skip
    host = host_record()
    result = {"host": host, "table": Path(table).name, "rounds": args.rounds, "repeats": args.repeats, "when": time.strftime("%Y-%m-%d %H:%M"),
              "statistic": "median over rounds of each round's minimum", "paused_other_processes": bool(pids),
              "base_ms": {name: measured[i] for name, i in base_at.items()},
              "base_predicted_ms": {name: cost.exact(nets[i][3]) for name, i in base_at.items()}, "rows": rows}  # fmt: skip
    out = Path(args.out)
    write_json_atomic(out / "sublattice_cost.json", result)
    write_text_atomic(out / "sublattice_cost.md", _markdown(result, argv))
    return 0


def _markdown(r: dict[str, Any], argv: list[str] | None) -> str:
    lines = [
        "# A group below the channel lattice: latency saved, measured against the table's prediction",
        "",
        f"ResNet-20, ONNX Runtime fp32, batch 1, one thread, on {r['host']['cpu']} (`{r['host']['fingerprint']}`), {r['when']}; "
        f"table `{r['table']}` with its calibration. {r['rounds']} interleaved rounds of {r['repeats']} runs, {r['statistic']}"
        + (", other processes paused." if r["paused_other_processes"] else "."),
        "",
        "Bases: " + "; ".join(f"`{n}` {BASES[n]} measured {r['base_ms'][n]:.4f} ms, predicted {r['base_predicted_ms'][n]:.4f} ms" for n in BASES) + ".",
        "*Unseen* is the table's predicted saving minus the measured one: latency the network pays that the table does not price.",
        "",
        "| base | group | channels (from) | measured ms | saved, measured ms | saved, predicted ms | unseen ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        lines.append(f"| {x['base']} | {x['group']} | {x['channels']} ({x['base_channels']}) | {x['measured_ms']:.4f} | "
                     f"{x['measured_saved_ms']:+.4f} | {x['predicted_saved_ms']:+.4f} | {x['unseen_ms']:+.4f} |")  # fmt: skip
    lines += ["", "Per count, mean over groups and bases: " + "; ".join(
        f"{c} channels: unseen {statistics.mean(x['unseen_ms'] for x in r['rows'] if x['channels'] == c):+.4f} ms" for c in COUNTS) + ".",
        "", f"Reproduce: `{reproduce_command('sublattice_cost.py', argv)}`", ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
