"""`hwdsa prune`: the main job — prune a model to a budget and write the pruned model and its report."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from hwdsa.cli._common import format_table, parse_fraction, parse_latency, read_config_file
from hwdsa.errors import ConfigError

if TYPE_CHECKING:
    from hwdsa.job import PruneJobConfig, PruneReport


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="JSON file with PruneJobConfig fields; flags override it")
    p.add_argument("--model", help="model name (see hwdsa.models.list_models()); default small_cnn")
    p.add_argument("--data", dest="dataset", help="data set: mnist (default), digits, cifar10, fashion_mnist, imagefolder")
    p.add_argument("--data-root", help="folder of the data set (cifar10, fashion_mnist, imagefolder)")
    p.add_argument("--flops", help="FLOPs budget as a fraction of the dense model's, e.g. 0.5 (no budget flag: --latency 0.5)")
    p.add_argument("--params", help="parameter budget as a fraction of the dense model's, e.g. 0.4")
    p.add_argument(
        "--latency", action="append",
        help="latency budget: a fraction of the dense model's (0.5) or a time (2.5ms); repeat it, each with its "
        "--latency-table, to prune one network for several devices",
    )  # fmt: skip
    p.add_argument(
        "--latency-table", action="append",
        help="lookup table (CSV from `hwdsa profile`) for --latency; the i-th table prices the i-th --latency",
    )  # fmt: skip
    p.add_argument(
        "--latency-backend",
        help="without --latency-table, the backend to price --latency on (default onnxruntime, one thread): this host is "
        "profiled for the model once, into the table cache ($HWDSA_CACHE or ~/.cache/hwdsa), and reused",
    )
    p.add_argument(
        "--target-device",
        help="prune for another device than this machine (e.g. an edge board), named as its --latency-table records it; "
        "without it a table measured elsewhere is refused",
    )
    p.add_argument(
        "--verify-latency", action=argparse.BooleanOptionalAction, default=None,
        help="after the search, time candidate roundings on the table's backend (this machine must be the table's "
        "device) against the dense network, and keep the largest whose measured latency meets --latency (default: on "
        "when the one budget is a latency budget on this machine)",
    )  # fmt: skip
    p.add_argument(
        "--verify-margin", type=float,
        help="share of the budget --verify-latency keeps free for timing noise: it keeps the largest candidate measured "
        "within (1 - margin) x the budget (default 0.015)",
    )  # fmt: skip
    p.add_argument("--from-scratch", action="store_true", default=None, help="search from random weights (no pre-training)")
    p.add_argument("--weights", help="state dict of a pre-trained dense model to start from")
    p.add_argument("--pretrain-epochs", type=int, help="epochs to pre-train the dense model when no --weights are given")
    p.add_argument("--search-epochs", type=int, help="epochs of the DSA search")
    p.add_argument("--finetune-epochs", type=int, help="epochs of fine-tuning after surgery")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--subset-per-class", type=int, help="use a class-balanced subset of the training set")
    p.add_argument("--round-to", type=int, help="round channel counts to a multiple (e.g. 8)")
    p.add_argument(
        "--min-channels", type=int,
        help="the fewest channels the search keeps in any group (with --round-to at least as large), e.g. 8, the CPU "
        "runtimes' channel lattice, below which a channel saves less time than it costs accuracy (default 1)",
    )  # fmt: skip
    p.add_argument(
        "--settle-fraction", type=float,
        help="the final fraction of the search that trains the weights of the chosen channels only, under fixed "
        "masks (default 0: the search ends with random masks)",
    )  # fmt: skip
    p.add_argument(
        "--settle-restart", action="store_true", default=None,
        help="restart the learning rate's cosine at the settle point, so that the settle phase trains the cut network "
        "at the full rate (needs --settle-fraction)",
    )  # fmt: skip
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1")
    p.add_argument("--out", default="runs/prune", help="output folder (default runs/prune)")
    p.add_argument("--resume", action="store_true", help="continue a killed job from its last checkpoint")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")


def config_from_args(args: argparse.Namespace) -> PruneJobConfig:
    from hwdsa.job import BudgetSpec, PruneJobConfig

    base = PruneJobConfig.from_dict(read_config_file(args.config)) if args.config else PruneJobConfig()
    budgets = []
    if args.flops is not None:
        budgets.append(BudgetSpec("flops", fraction=parse_fraction(args.flops, "--flops")))
    if args.params is not None:
        budgets.append(BudgetSpec("params", fraction=parse_fraction(args.params, "--params")))
    latencies, tables = args.latency or [], args.latency_table or []
    if len(tables) > 1 and len(tables) != len(latencies):
        raise ConfigError(
            f"{len(latencies)} --latency budget(s) and {len(tables)} --latency-table(s): give one table per budget, in order "
            "(--latency 0.5 --latency-table A.csv --latency 0.6 --latency-table B.csv)"
        )
    if len(latencies) > 1 and len(tables) < len(latencies):
        raise ConfigError("several --latency budgets need one --latency-table each, in the same order")
    for i, text in enumerate(latencies):
        fraction, ms = parse_latency(text)
        table = tables[i] if len(tables) > 1 else None
        budgets.append(BudgetSpec("latency", fraction=fraction, absolute=ms, table=table))
    changes = {
        k: v
        for k, v in {
            "model": args.model,
            "dataset": args.dataset,
            "data_root": args.data_root,
            "from_scratch": args.from_scratch,
            "weights": args.weights,
            "batch_size": args.batch_size,
            "subset_per_class": args.subset_per_class,
            "round_to": args.round_to,
            "seed": args.seed,
            "device": args.device,
            "latency_table": tables[0] if len(tables) == 1 else None,
            "latency_backend": args.latency_backend,
            "verify_latency": args.verify_latency,
            "verify_margin": args.verify_margin,
            "target_device": args.target_device,
        }.items()
        if v is not None
    }
    if budgets:
        changes["budgets"] = tuple(budgets)
    admm = {k: v for k, v in (("min_channels", args.min_channels), ("settle_fraction", args.settle_fraction), ("settle_restart", args.settle_restart)) if v is not None}
    if admm:
        changes["admm"] = replace(base.admm, **admm)
    for phase, epochs in (("pretrain", args.pretrain_epochs), ("search", args.search_epochs), ("finetune", args.finetune_epochs)):
        if epochs is not None:
            changes[phase] = replace(getattr(base, phase), epochs=epochs)
    return replace(base, **changes)


def run(args: argparse.Namespace) -> int:
    from hwdsa.distributed import is_main_process
    from hwdsa.job import PruneJob

    config = config_from_args(args)
    report = PruneJob(config, args.out).run(resume=args.resume)
    if not is_main_process():
        return 0
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report, config, args.out)
    missed = report.latency is not None and report.latency.met is False
    if missed and config.verifies_latency:
        lat = report.latency
        assert lat is not None and lat.budget_ms is not None
        print(
            f"hwdsa prune: the pruned network measured {lat.pruned_ms:.4g} ms against a budget of {lat.budget_ms:.4g} ms "
            f"(over by more than the timing's spread, {lat.tolerance_ms:.2g} ms): rerun with a larger --verify-margin, "
            "on a quieter machine, or with a lower budget",
            file=sys.stderr,
        )
        return 3
    return 0


def print_report(report: PruneReport, config: PruneJobConfig, out: str) -> None:
    """The result as a table: accuracy, FLOPs, parameters, and latency predicted and measured."""
    d, p = report.dense, report.pruned
    rows: list[list[Any]] = [
        ["top-1 accuracy", d.accuracy, p.accuracy, None if d.accuracy is None else p.accuracy - d.accuracy],
        ["FLOPs (MACs)", d.flops, p.flops, p.flops_fraction],
        ["parameters", d.params, p.params, p.params_fraction],
    ]
    lat = report.latency
    if lat is not None and lat.predicted_dense_ms is not None and lat.predicted_pruned_ms is not None:
        rows.append(["latency (ms, predicted)", lat.predicted_dense_ms, lat.predicted_pruned_ms, lat.predicted_pruned_ms / lat.predicted_dense_ms])
    if lat is not None:
        rows.append([
            f"latency (ms, measured on {lat.backend})",
            f"{lat.dense_ms:.4g} ± {lat.dense_iqr_ms / 2:.2g}",
            f"{lat.pruned_ms:.4g} ± {lat.pruned_iqr_ms / 2:.2g}",
            lat.measured_fraction,
        ])
        rows.append(["speed-up (measured)", None, f"{lat.speedup:.2f}x", None])
    print(f"\n{config.model} on {config.dataset}, budgets: "
          + ", ".join(f"{k} ≤ {v.fraction_of_dense:.0%} of dense" for k, v in report.budgets.items()))
    print(format_table(rows, ["", "dense", "pruned", "change / fraction"]))
    if lat is not None and lat.requested_fraction is not None:
        verdict = "met" if lat.met else "MISSED"
        print(
            f"latency budget {verdict}: measured {lat.measured_fraction:.3f} of dense against {lat.requested_fraction:.3f} "
            f"requested ({lat.pruned_ms:.4g} ms vs {lat.budget_ms:.4g} ms; timing spread ±{lat.tolerance_ms:.2g} ms, "
            f"{lat.rounds} interleaved rounds on {lat.device})"
        )
    elif lat is None and report.latency_note:
        print(f"latency: {report.latency_note}")
    t = report.timings
    print("time: " + ", ".join(f"{k} {v:.1f}" for k, v in t.items() if k.endswith("_s")) + " (seconds)")
    print(f"outputs in {out}/: pruned.pt, allocation.csv, report.json, config.json")
