"""How far the search's differentiable latency cost sits from the table's exact price, and what that does to a projection.

The budget surface is made monotone so that the cost never decreases when a channel is added: `cummax` (the
default, a running maximum: never under-prices) or `isotonic` (least squares, then monotone). On a lattice
backend the running maximum lifts every count above a slow small one (ONNX Runtime's 1/2/4-channel fallback
kernels) to its latency. Measured here on a table of this host: the relative difference between the
differentiable cost at whole-channel ratios and the exact price of the same counts, over random networks on
the table's lattice; and, for budgets of 30/50/70% of dense, the projection of the dense ratios onto the
budget rounded as `hwdsa prune` rounds (latency-optimal, exact prices), to show whether the surface changes
the allocation the exact rounding ends on. No timing: a table of this host is read, nothing is measured.

    python benchmarks/cost_surface.py --table ~/.cache/hwdsa/onnxruntime-fp32-b1-t1-<fingerprint>-resnet20.csv
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import get_args

import numpy as np
import torch

from hwdsa.channels import round_channels
from hwdsa.costs import Budget
from hwdsa.dsa.projection import project_onto_budget
from hwdsa.graph import trace_channel_graph
from hwdsa.lut.cost_model import LatencyCost
from hwdsa.lut.fit import Monotone
from hwdsa.lut.grid import paddings_from_model
from hwdsa.lut.rounding import round_for_budgets
from hwdsa.lut.table import LatencyTable
from hwdsa.models import create_model, default_input_shape


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", required=True)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--networks", type=int, default=200)
    args = p.parse_args(argv)
    table = LatencyTable.read(args.table)
    model = create_model(args.model)
    graph = trace_channel_graph(model, default_input_shape(args.model))
    sizes = graph.group_sizes
    multiple = table.meta.channel_multiple
    rng = random.Random(0)
    nets = [round_channels([rng.uniform(0.15, 1) * c for c in sizes], sizes, multiple=multiple) for _ in range(args.networks)]
    print(f"# Differentiable cost against exact price ({Path(args.table).name}, {table.meta.device}, {args.model})\n")
    print("| surface | cost / exact − 1 at whole channels: mean | max | min | 30%: exact / limit, channels | 50% | 70% |")
    print("|---|---|---|---|---|---|---|")
    for monotone in get_args(Monotone):
        cost = LatencyCost.fit(table, graph, paddings=paddings_from_model(model), monotone=monotone)
        rel = np.array([float(cost(torch.tensor([c / s for c, s in zip(ch, sizes)], dtype=torch.float64))) / cost.exact(ch) - 1 for ch in nets])
        cells = []
        for fraction in (0.3, 0.5, 0.7):
            budget = Budget.fraction_of_dense(cost, fraction)
            z = project_onto_budget(torch.ones(len(sizes), dtype=torch.float64), cost, budget.limit, lower=0.05)
            ch = round_for_budgets(z, [budget], sizes)
            cells.append(f"{cost.exact(ch) / budget.limit:.3f} {ch}")
        print(f"| {monotone} | {rel.mean():+.2%} | {rel.max():+.2%} | {rel.min():+.2%} | " + " | ".join(cells) + " |")
    print(f"\nReproduce: `python benchmarks/cost_surface.py --table {Path(args.table).name} --model {args.model}` (the table from this "
          "host's cache, `hwdsa info`); no timing, the table is only read.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
