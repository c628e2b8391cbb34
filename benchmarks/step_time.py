"""Wall time of one DSA search step relative to one plain training step of the dense model, in one run.

A DSA step is a weight step with sampled masks plus, every `update_every` steps, a ratio step on a held-out
batch (keep probabilities, implicit gradient, projection). Both are timed on the same real batches,
alternating rounds so that machine drift affects both alike. Writes `step_time.json` and `step_time.md`.

    python benchmarks/step_time.py --data-root PATH/TO/cifar10 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from hwdsa._io import write_json_atomic, write_text_atomic
from hwdsa.costs import Budget, FlopsCost
from hwdsa.data import load_dataset, make_loader
from hwdsa.dsa.search import DsaSearch, SearchConfig
from hwdsa.graph import trace_channel_graph
from hwdsa.models import create_model
from hwdsa.training import TrainConfig, make_optimizer, train_epoch

from _command import reproduce_command


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-root", required=True, help="CIFAR-10 (the npz folder or the python pickles)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)
    splits = load_dataset(args.dataset, args.data_root, subset_per_class=max(1, args.batch_size * (args.steps + 2) // 10 + 1), seed=0)
    loader = make_loader(splits.train, args.batch_size, train=True, seed=0)
    batches = []
    for x, y in loader:
        batches.append((x.to(device), y.to(device)))
        if len(batches) == args.steps:
            break
    model = create_model(args.model, num_classes=splits.num_classes).to(device)
    graph = trace_channel_graph(model, splits.input_shape)
    budget = Budget.fraction_of_dense(FlopsCost(graph), 0.5)
    cfg = TrainConfig(epochs=1, lr=0.01)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    load_before = os.getloadavg()[0]
    dense_ms, dsa_ms = [], []
    # CPU time of this process too: on a core other jobs share, wall time counts their slices, CPU time does not.
    dense_cpu_ms, dsa_cpu_ms = [], []
    search_cfg = SearchConfig(train=cfg)
    for _ in range(args.rounds + 1):  # the first round warms up both paths and is discarded
        dense = copy.deepcopy(model)
        opt = make_optimizer(dense, cfg)
        sync()
        t, c = time.perf_counter(), time.process_time()
        train_epoch(dense, batches, opt, None, device)
        sync()
        dense_ms.append((time.perf_counter() - t) * 1e3 / len(batches))
        dense_cpu_ms.append((time.process_time() - c) * 1e3 / len(batches))
        search = DsaSearch(copy.deepcopy(model), graph, [budget], search_cfg, device)
        sync()
        t, c = time.perf_counter(), time.process_time()
        search.run(batches, batches)
        sync()
        dsa_ms.append((time.perf_counter() - t) * 1e3 / len(batches))
        dsa_cpu_ms.append((time.process_time() - c) * 1e3 / len(batches))
    dense_ms, dsa_ms, dense_cpu_ms, dsa_cpu_ms = dense_ms[1:], dsa_ms[1:], dense_cpu_ms[1:], dsa_cpu_ms[1:]
    ratios = [d / b for d, b in zip(dsa_ms, dense_ms)]
    cpu_ratios = [d / b for d, b in zip(dsa_cpu_ms, dense_cpu_ms)]
    result = {
        "model": args.model,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "batch_size": args.batch_size,
        "steps_per_round": len(batches),
        "rounds": args.rounds,
        "update_every": search_cfg.admm.update_every,
        "dense_ms_per_step": dense_ms,
        "dsa_ms_per_step": dsa_ms,
        "ratio_per_round": ratios,
        "ratio_median": statistics.median(ratios),
        "dense_cpu_ms_per_step": dense_cpu_ms,
        "dsa_cpu_ms_per_step": dsa_cpu_ms,
        "cpu_ratio_per_round": cpu_ratios,
        "cpu_ratio_median": statistics.median(cpu_ratios),
        "command": reproduce_command(__file__, argv),
    }
    out = Path(args.out)
    write_json_atomic(out / "step_time.json", result)
    md = [
        f"# DSA search step vs dense training step ({args.model}, batch {args.batch_size}, {device})",
        "",
        "| round | dense ms/step | DSA ms/step | wall ratio | dense CPU ms/step | DSA CPU ms/step | CPU ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *[
            f"| {i + 1} | {d:.1f} | {s:.1f} | {r:.2f} | {dc:.1f} | {sc:.1f} | {rc:.2f} |"
            for i, (d, s, r, dc, sc, rc) in enumerate(zip(dense_ms, dsa_ms, ratios, dense_cpu_ms, dsa_cpu_ms, cpu_ratios))
        ],
        "",
        f"Median wall-time ratio {result['ratio_median']:.2f}, CPU-time ratio {result['cpu_ratio_median']:.2f} "
        f"(a ratio step every {search_cfg.admm.update_every} weight steps, included). The DSA step includes the per-step importance read-out, keep probabilities, sampled masks, "
        "and the amortised ratio step with its held-out forward/backward and projection.",
        "",
        f"CPU cores {result['cpu_affinity']}, {result['torch_threads']} torch thread(s); 1-min load average "
        f"{load_before:.1f} before, {result['load_average_1min'][1]:.1f} after (where other jobs "
        "share the core, wall times drift with their load; the process's CPU time does not, so its ratio is the "
        "steadier one).",
        "",
        f"Reproduce: `{result['command']}`",
        "",
    ]
    write_text_atomic(out / "step_time.md", "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
