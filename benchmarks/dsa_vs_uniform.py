"""DSA against uniform pruning at the same FLOPs and the same fine-tuning epochs, over several seeds.

One dense model is pre-trained once and shared; for each seed, DSA searches an allocation at the FLOPs
budget (then surgery + fine-tuning), and the uniform baseline prunes every group at the one ratio that
meets the same budget (channels chosen by the same BatchNorm importance), then fine-tunes for the same
number of epochs. Writes `dsa_vs_uniform.{json,csv,md,png}` to the output folder.

    python benchmarks/dsa_vs_uniform.py --data-root ../shared/data/cifar10 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from hwdsa._io import write_json_atomic, write_text_atomic
from hwdsa.costs import Budget, FlopsCost
from hwdsa.data import load_dataset, make_loader
from hwdsa.dsa.allocator import AdmmConfig
from hwdsa.dsa.process import Beta2Schedule
from hwdsa.errors import ConfigError
from hwdsa.flows import BudgetSpec, PruneJob, PruneJobConfig, uniform_keep_ratio
from hwdsa.graph import trace_channel_graph
from hwdsa.models import create_model
from hwdsa.training import TrainConfig, evaluate, fit

_log = logging.getLogger("benchmarks.dsa_vs_uniform")


def pretrain(args: argparse.Namespace, path: Path) -> float:
    """Train the shared dense model once (seed 0) and save its state dict; returns its test accuracy."""
    t0 = time.perf_counter()
    torch.manual_seed(0)
    splits = load_dataset(args.dataset, args.data_root, subset_per_class=args.per_class, seed=0)
    train = make_loader(splits.train, args.batch_size, train=True, seed=0)
    test = make_loader(splits.test, 256, train=False, seed=0)
    model = create_model(args.model, num_classes=splits.num_classes)
    fit(model, train, TrainConfig(epochs=args.pretrain_epochs, lr=0.1), torch.device("cpu"), desc="pretrain")
    acc = evaluate(model, test, torch.device("cpu"))
    torch.save(model.state_dict(), path)
    write_json_atomic(path.with_suffix(".json"), {"accuracy": acc, "seconds": time.perf_counter() - t0, "epochs": args.pretrain_epochs})
    return acc


METHODS = {
    "dsa": "DSA as in the paper: straight-through mask gradient, β2 1→5, ADMM defaults of `AdmmConfig` but `mask_leak=0` (the published estimator).",
    "uniform": "every group at the one keep ratio that meets the budget, channels by BatchNorm |γ|.",
    "uniform_long": "uniform, fine-tuned for the search's epochs as well.",
    "dsa_dropped_only": "dropped channels' slope only (∂m/∂p = 1 − m), β2 1→100 exponential.",
    "dsa_leaky_st": "dsa with dropped channels at 1e-3 in the ratio step, so the ReLU after the mask passes "
    "their slope (`mask_leak`).",
    "dsa_leaky_dropped_only": "dsa_dropped_only with the 1e-3 mask leak.",
    "dsa_dropped_reweighted": "dropped channels' slope divided by their drop probability (∂m/∂p = (1 − m)/(1 − p), "
    "unbiased for the slope at m = 0), the 1e-3 mask leak, β2 1→100 exponential.",
}


def run_job(cfg: PruneJobConfig, out: Path) -> dict[str, Any]:
    """A finished job's report when `out` holds one for the same config (a rerun adds seeds), else run it."""
    report_path, config_path = out / "report.json", out / "config.json"
    if report_path.is_file() and config_path.is_file():
        try:  # from_dict gives fields added since the run their defaults
            same = PruneJobConfig.from_dict(json.loads(config_path.read_text())) == cfg
        except (ConfigError, TypeError):
            same = False
        if same:
            _log.info("reusing %s", report_path)
            return dict(json.loads(report_path.read_text()))
    return PruneJob(cfg, out).run(resume=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-root", default="../shared/data/cifar10")
    p.add_argument("--per-class", type=int, default=500, help="class-balanced training subset (CPU budget)")
    p.add_argument("--flops", type=float, default=0.5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pretrain-epochs", type=int, default=30)
    p.add_argument("--search-epochs", type=int, default=5)
    p.add_argument("--finetune-epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--work", default="runs/bench_dsa_vs_uniform", help="scratch folder for checkpoints")
    p.add_argument("--long-uniform", action="store_true", help="also run uniform fine-tuned for search + fine-tune epochs")
    p.add_argument("--dropped-only", action="store_true", help="also run DSA with the dropped-only mask gradient, β2 1→100")
    p.add_argument(
        "--leaky-st",
        action="store_true",
        help="also run DSA with the paper's straight-through gradient and a 1e-3 mask leak (otherwise as dsa)",
    )
    p.add_argument(
        "--leaky-dropped-only",
        action="store_true",
        help="also run DSA with the dropped-only gradient and a 1e-3 mask leak (the ablation of --reweighted)",
    )
    p.add_argument(
        "--reweighted",
        action="store_true",
        help="also run DSA with the dropped-reweighted mask gradient (unbiased slope at m=0) and a 1e-3 mask "
        "leak (the slope through a ReLU at 0), β2 1→100",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    out, work = Path(args.out), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    dense_path = work / "dense.pt"
    if not dense_path.is_file():
        pretrain(args, dense_path)
    pretrained = json.loads(dense_path.with_suffix(".json").read_text())
    dense_acc = pretrained["accuracy"]
    shape = load_dataset(args.dataset, args.data_root, subset_per_class=1).input_shape
    graph = trace_channel_graph(create_model(args.model), shape)
    cost = FlopsCost(graph)
    ratio = uniform_keep_ratio(Budget.fraction_of_dense(cost, args.flops), len(graph.groups))

    base = PruneJobConfig(
        model=args.model,
        dataset=args.dataset,
        data_root=args.data_root,
        budgets=(BudgetSpec("flops", fraction=args.flops),),
        weights=str(dense_path),
        search=TrainConfig(epochs=args.search_epochs, lr=0.02),
        finetune=TrainConfig(epochs=args.finetune_epochs, lr=0.02),
        batch_size=args.batch_size,
        subset_per_class=args.per_class,
        device="cpu",
    )
    rows = []
    allocations: dict[str, list[float]] = {}
    methods = {
        "dsa": replace(base, admm=AdmmConfig(mask_leak=0.0)),  # the paper's estimator exactly (no leak)
        "uniform": replace(base, fixed_keep_ratios=(ratio,)),
        # The control for DSA's extra training: uniform fine-tuned for the search's epochs too.
        "uniform_long": replace(
            base, fixed_keep_ratios=(ratio,), finetune=TrainConfig(epochs=args.search_epochs + args.finetune_epochs, lr=0.02)
        ),
    }
    if not args.long_uniform:
        del methods["uniform_long"]
    if args.dropped_only:
        # DSA with the one-sided mask gradient and near-deterministic masks by the end (see hwdsa.dsa.process).
        admm = AdmmConfig(mask_gradient="dropped_only", beta2=Beta2Schedule(1.0, 100.0, "exponential"))
        methods["dsa_dropped_only"] = replace(base, admm=admm)
    if args.leaky_st:
        # The paper's estimator with the dropped channels' slope through the ReLU restored (see AdmmConfig.mask_leak).
        methods["dsa_leaky_st"] = replace(base, admm=AdmmConfig(mask_leak=1e-3))  # hwdsa's default
    if args.leaky_dropped_only:
        admm = AdmmConfig(mask_gradient="dropped_only", mask_leak=1e-3, beta2=Beta2Schedule(1.0, 100.0, "exponential"))
        methods["dsa_leaky_dropped_only"] = replace(base, admm=admm)
    if args.reweighted:
        # The same settings with the dropped side reweighted by 1/(1 − p) (see hwdsa.dsa.process.sample_masks)
        # and dropped channels leaking 1e-3 in the ratio step, so a ReLU after the mask passes their slope.
        admm = AdmmConfig(
            mask_gradient="dropped_reweighted", mask_leak=1e-3, beta2=Beta2Schedule(1.0, 100.0, "exponential")
        )
        methods["dsa_dropped_reweighted"] = replace(base, admm=admm)
    for seed in args.seeds:
        for method, method_cfg in methods.items():
            _log.info("seed %d: %s", seed, method)
            report = run_job(replace(method_cfg, seed=seed), work / f"{method}_seed{seed}")
            dense_acc = report["dense"]["accuracy"]
            rows.append(
                {
                    "method": method,
                    "seed": seed,
                    "accuracy": report["pruned"]["accuracy"],
                    "accuracy_before_finetune": report["pruned"]["accuracy_before_finetune"],
                    "flops_fraction": report["pruned"]["flops_fraction"],
                    "params_fraction": report["pruned"]["params_fraction"],
                    "seconds": report["timings"]["total_s"],
                }
            )
            allocations[f"{method}_seed{seed}"] = [c / g for c, g in zip(report["channels"], graph.group_sizes)]

    summary = {}
    for method in methods:
        accs = [r["accuracy"] for r in rows if r["method"] == method]
        summary[method] = {
            "mean_accuracy": statistics.mean(accs),
            "std_accuracy": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "min_accuracy": min(accs),
            "max_accuracy": max(accs),
            "mean_flops_fraction": statistics.mean(r["flops_fraction"] for r in rows if r["method"] == method),
        }
    accuracy = {(r["method"], r["seed"]): r["accuracy"] for r in rows}
    searched = [m for m in methods if m.startswith("dsa")]
    paired = {m: [accuracy[m, seed] - accuracy["uniform", seed] for seed in args.seeds] for m in searched}
    result = {
        "setup": {k: v for k, v in vars(args).items() if k not in ("out", "work")},
        "dense_accuracy": dense_acc,
        "pretrain_seconds": pretrained["seconds"],
        "uniform_keep_ratio": ratio,
        "summary": summary,
        "runs": rows,
        "allocations": allocations,
        "minus_uniform_per_seed": paired,
        "beats_uniform": {m: summary[m]["mean_accuracy"] > summary["uniform"]["mean_accuracy"] for m in searched},
        "compute_seconds": pretrained["seconds"] + sum(r["seconds"] for r in rows),
        "wall_seconds": time.perf_counter() - t0,
        "command": "python benchmarks/" + Path(__file__).name + " " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    write_json_atomic(out / "dsa_vs_uniform.json", result)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(out / "dsa_vs_uniform.csv", buf.getvalue())
    md = [
        f"# DSA vs uniform pruning, {args.model} on {args.dataset} ({args.per_class}/class), FLOPs ≤ {args.flops:.0%}",
        "",
        f"Dense accuracy {dense_acc:.4f}; uniform keep ratio {ratio:.3f}; seeds {args.seeds}; "
        f"search {args.search_epochs} + fine-tune {args.finetune_epochs} epochs (uniform: fine-tune {args.finetune_epochs}"
        + (f"; uniform_long: fine-tune {args.search_epochs + args.finetune_epochs}" if args.long_uniform else "")
        + f"). Pre-training {args.pretrain_epochs} epochs once, shared by every run.",
        "",
        *[
            f"{m} − uniform, paired by seed: {', '.join(f'{d:+.4f}' for d in diffs)} (mean {statistics.mean(diffs):+.4f})."
            for m, diffs in paired.items()
        ],
        "",
        f"Compute: {result['compute_seconds'] / 60:.1f} min in all, pre-training {pretrained['seconds'] / 60:.1f} min "
        "(each run on one CPU core, at times shared with other jobs).",
        "",
        "| method | mean top-1 | std | min | max | FLOPs fraction |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for method, s in summary.items():
        md.append(
            f"| {method} | {s['mean_accuracy']:.4f} | {s['std_accuracy']:.4f} | {s['min_accuracy']:.4f} | "
            f"{s['max_accuracy']:.4f} | {s['mean_flops_fraction']:.3f} |"
        )
    md += ["", "Methods:", *[f"- {m}: {METHODS[m]}" for m in summary if m in METHODS]]
    md += ["", f"Reproduce: `{result['command']}`", ""]
    write_text_atomic(out / "dsa_vs_uniform.md", "\n".join(md))
    _plot(out / "dsa_vs_uniform.png", rows, allocations, summary, args)
    print("\n".join(md))
    return 0


def _plot(path: Path, rows: list[dict[str, Any]], allocations: dict[str, list[float]], summary: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hwdsa._io import atomic_path

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 2.2]})
    methods = list(summary)
    for i, m in enumerate(methods):
        accs = [r["accuracy"] for r in rows if r["method"] == m]
        ax1.bar(i, summary[m]["mean_accuracy"], yerr=summary[m]["std_accuracy"], capsize=6, color=f"C{i}", alpha=0.8)
        ax1.scatter([i] * len(accs), accs, color="k", zorder=3, s=12)
    ax1.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
    lo = min(r["accuracy"] for r in rows)
    ax1.set_ylim(max(0.0, lo - 0.05), None)
    ax1.set_ylabel("test top-1 after fine-tuning")
    ax1.set_title(f"FLOPs ≤ {args.flops:.0%}: mean ± std over {len(args.seeds)} seeds")
    for name, alloc in allocations.items():
        method = name.rsplit("_seed", 1)[0]
        style = "-" if name.startswith("dsa") else "--"  # uniform runs overlap: one ratio for every seed
        first = next(n for n in allocations if n.rsplit("_seed", 1)[0] == method) == name  # one legend entry per method
        color = f"C{methods.index(method)}" if method in methods else None
        ax2.plot(range(len(alloc)), alloc, style, marker="o", ms=3, color=color, label=method if first else None, alpha=0.7)
    ax2.set_xlabel("channel group (execution order)")
    ax2.set_ylabel("kept fraction of channels")
    ax2.set_title("allocation per group")
    ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
