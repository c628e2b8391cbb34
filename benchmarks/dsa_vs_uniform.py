"""DSA's mask-gradient estimator ablated on full CIFAR-10, and DSA against uniform pruning at equal epochs.

Every run starts from the committed dense ResNet-20 (`benchmarks/dense/resnet20_cifar10.pt`, 45,000 training
images, the last 5,000 per-class tail held out) and prunes it to a FLOPs budget (50% by default). Settings are
judged on the held-out images only; the test set is reported, never used to choose.

Stages (`--stage`):
- `short`: the estimator ablation, {authors' straight-through, leak 1e-3, mask after activation} ×
  {β2 constant 1, β2 rising 1→5}, a few search and fine-tune epochs, seeds 0 and 1, plus uniform.
- `full`: the best two settings of `short` on held-out images (or `--methods`) and uniform, the full protocol, seeds 0-2.
- `scratch`: DSA from random weights with the best setting of `short` (one seed), its wall time beside pre-train +
  search + fine-tune.
- `report`: only gather the finished runs into `dsa_vs_uniform.{md,json,csv,png}`.

Uniform prunes every group at the one keep ratio that meets the budget (channels by BatchNorm |γ|) and
fine-tunes for the search's epochs plus the fine-tuning epochs: every row trains its weights as long.
Each finished run is a JSON file under `benchmarks/results/dsa_vs_uniform/` keyed by its configuration;
rerunning a stage skips finished runs, so the suite completes over several sessions.

    taskset -c 1 python benchmarks/dsa_vs_uniform.py --data-root PATH/TO/cifar10 --stage short
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from hwdsa._io import write_json_atomic, write_text_atomic
from hwdsa.costs import Budget, FlopsCost, uniform_keep_ratio
from hwdsa.dsa.allocator import AdmmConfig
from hwdsa.dsa.process import Beta2Schedule
from hwdsa.job import BudgetSpec, PruneJobConfig
from hwdsa.graph import trace_channel_graph
from hwdsa.models import create_model
from hwdsa.training import TrainConfig

from _runs import cached_run, finished_runs, format_interval, paired_interval
from _plots import pyplot, save_figure

_log = logging.getLogger("benchmarks.dsa_vs_uniform")
HERE = Path(__file__).resolve().parent

#: The expected-latency smoothing acts on latency staircases only; it is pinned off here so that these FLOPs runs keep
#: their keys (which hash the whole configuration) whatever `AdmmConfig`'s default becomes.
_FLOPS_ADMM = AdmmConfig(smooth_costs=False)
ESTIMATORS: dict[str, tuple[AdmmConfig, str]] = {
    "authors": (replace(_FLOPS_ADMM, mask_leak=0.0, mask_placement="before_activation"), "straight-through, mask before the activation (the authors')"),
    "leak": (replace(_FLOPS_ADMM, mask_leak=1e-3, mask_placement="before_activation"), "straight-through, mask before the activation, dropped channels at 1e-3 in the ratio step"),
    "after": (replace(_FLOPS_ADMM, mask_leak=0.0, mask_placement="after_activation"), "straight-through, mask where the layers read the channels (after the activation)"),
}
BETA2: dict[str, Beta2Schedule] = {
    "const": Beta2Schedule(1.0),
    "rising": Beta2Schedule(1.0, 5.0, "linear"),
}
STAGES = {"short": (2, 2, [0, 1]), "full": (5, 15, [0, 1, 2]), "scratch": (30, 15, [0])}  # search, fine-tune epochs, seeds


def dsa_methods() -> dict[str, AdmmConfig]:
    """Every estimator × β2 schedule, named "estimator+schedule"."""
    return {f"{e}+{b}": replace(admm, beta2=schedule) for e, (admm, _) in ESTIMATORS.items() for b, schedule in BETA2.items()}


def configs(args: argparse.Namespace, stage: str, search_epochs: int, finetune_epochs: int) -> dict[str, PruneJobConfig]:
    """The runs of one stage, by method name (uniform included), before the seed is set."""
    base = PruneJobConfig(
        model="resnet20",
        dataset="cifar10",
        data_root=args.data_root,
        budgets=(BudgetSpec("flops", fraction=args.flops),),
        weights=args.weights,
        search=TrainConfig(epochs=search_epochs, lr=0.02),
        finetune=TrainConfig(epochs=finetune_epochs, lr=0.02),
        batch_size=128,
        subset_per_class=args.subset_per_class,
        device="cpu",
        admm=_FLOPS_ADMM,
    )
    methods = dsa_methods()
    chosen = list(methods) if stage == "short" else args.methods
    unknown = sorted(set(chosen) - set(methods))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; valid: {', '.join(methods)}")
    if stage == "scratch":
        return {f"{m} from scratch": replace(base, weights=None, from_scratch=True, admm=methods[m]) for m in chosen}
    graph = trace_channel_graph(create_model("resnet20"), (3, 32, 32))
    ratio = uniform_keep_ratio(Budget.fraction_of_dense(FlopsCost(graph), args.flops), len(graph.groups))
    uniform = replace(base, fixed_keep_ratios=(ratio,), finetune=TrainConfig(epochs=search_epochs + finetune_epochs, lr=0.02))
    return {"uniform": uniform, **{m: replace(base, admm=methods[m]) for m in chosen}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=[*STAGES, "report"], default="report")
    p.add_argument("--data-root", help="CIFAR-10 (the npz folder or the python pickles)")
    p.add_argument("--weights", default=str(HERE / "dense" / "resnet20_cifar10.pt"), help="the dense model to prune")
    p.add_argument("--flops", type=float, default=0.5)
    p.add_argument(
        "--methods", nargs="+", help="full and scratch stages: which DSA settings (default: the best two of the short stage on held-out images)"
    )
    p.add_argument("--seeds", type=int, nargs="+", help="default: the stage's")
    p.add_argument("--search-epochs", type=int, help="default: the stage's")
    p.add_argument("--finetune-epochs", type=int, help="default: the stage's")
    p.add_argument("--subset-per-class", type=int, help="a smaller training set, for a quick check of the suite only")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=str(HERE / "results"))
    p.add_argument("--work", default="runs/dsa_vs_uniform", help="scratch folder for checkpoints (not committed)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    results = Path(args.results)
    runs_dir = results / "dsa_vs_uniform"
    if args.stage != "report":
        if not args.data_root:
            raise SystemExit("give --data-root: the CIFAR-10 folder (the npz files or the python pickles)")
        if args.stage != "short" and not args.methods:
            args.methods = best_of_short(runs_dir, 2 if args.stage == "full" else 1)
            _log.info("the short stage's best on held-out images: %s", ", ".join(args.methods))
        search_epochs, finetune_epochs, seeds = STAGES[args.stage]
        search_epochs = args.search_epochs or search_epochs
        finetune_epochs = args.finetune_epochs or finetune_epochs
        for seed in args.seeds or seeds:
            for method, cfg in configs(args, args.stage, search_epochs, finetune_epochs).items():
                name = f"{args.stage}-{method.replace(' ', '_')}-seed{seed}"
                meta = {"stage": args.stage, "method": method, "seed": seed}
                cached_run(name, replace(cfg, seed=seed), runs_dir, Path(args.work), meta)
    write_report(runs_dir, results)
    return 0


def best_of_short(runs_dir: Path, n: int) -> list[str]:
    """The `n` DSA settings of the short stage with the best mean held-out accuracy (never the test set)."""
    rows = [_row(r) for r in finished_runs(runs_dir)] if runs_dir.is_dir() else []
    short = [r for r in rows if r["stage"] == "short" and r["method"] != "uniform"]
    seeds = STAGES["short"][2]
    missing = [(m, s) for m in dsa_methods() for s in seeds if not any(r["method"] == m and r["seed"] == s for r in short)]
    if missing:
        raise SystemExit(f"the short stage is unfinished ({len(missing)} runs missing, e.g. {missing[0]}): run --stage short first, or name --methods")
    mean = {m: statistics.mean(r["heldout_top1"] for r in short if r["method"] == m) for m in dsa_methods()}
    return sorted(mean, key=lambda m: -mean[m])[:n]


def _row(run: dict[str, Any]) -> dict[str, Any]:
    report, config, meta = run["report"], run["config"], run["meta"]
    timings = report["timings"]
    return {
        "stage": meta["stage"],
        "method": meta["method"],
        "seed": meta["seed"],
        "search_epochs": config["search"]["epochs"] if config["fixed_keep_ratios"] is None else 0,
        "finetune_epochs": config["finetune"]["epochs"],
        "heldout_top1": report["pruned"]["heldout_accuracy"],
        "test_top1": report["pruned"]["accuracy"],
        "heldout_after_surgery": report["pruned"].get("accuracy_after_surgery"),
        "test_before_finetune": report["pruned"]["accuracy_before_finetune"],
        "flops_fraction": report["pruned"]["flops_fraction"],
        "params_fraction": report["pruned"]["params_fraction"],
        "core_minutes": timings["total_s"] / 60,
        "channels": " ".join(str(c) for c in report["channels"]),
        "dense_test_top1": report["dense"]["accuracy"],
        "dense_heldout_top1": report["dense"]["heldout_accuracy"],
    }


def write_report(runs_dir: Path, results: Path) -> None:
    """Gather every finished run into the stage tables, paired intervals against uniform, and the plot."""
    rows = [_row(r) for r in finished_runs(runs_dir)] if runs_dir.is_dir() else []
    if not rows:
        _log.info("no finished runs under %s yet", runs_dir)
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(results / "dsa_vs_uniform.csv", buf.getvalue())
    dense = next((r for r in rows if r["dense_test_top1"] is not None), None)
    md = [
        "# DSA estimator ablation and DSA vs uniform, ResNet-20 on full CIFAR-10",
        "",
        "From the committed dense model"
        + (f" (test top-1 {dense['dense_test_top1']:.4f}, held-out {dense['dense_heldout_top1']:.4f})" if dense else "")
        + ", FLOPs ≤ 50%. Held-out = the last 500 training images of each class (5,000): no weight is trained on "
        "them, settings are ranked on them; DSA's ratio steps do read them (as in the paper), so against uniform the "
        "test column is the fair one. Uniform fine-tunes for the search's epochs plus the fine-tuning epochs. "
        "Accuracy before fine-tuning is after BatchNorm recalibration on 4,096 training images. "
        "Paired differences are per seed against uniform, with a 95% Student-t interval over seeds (from 3 seeds on; fewer give none).",
        "",
    ]
    summary: dict[str, Any] = {}
    for stage in ("short", "full", "scratch"):
        stage_rows = [r for r in rows if r["stage"] == stage]
        if not stage_rows:
            continue
        md += [
            f"## Stage: {stage}",
            "",
            "| method | seeds | held-out top-1 | held-out − uniform (95% CI) | test top-1 | test − uniform (95% CI) | test before FT | FLOPs | params | core-min/run |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        uniform = {r["seed"]: r for r in stage_rows if r["method"] == "uniform"}
        by_method: dict[str, list[dict[str, Any]]] = {}
        for r in stage_rows:
            by_method.setdefault(r["method"], []).append(r)
        ranked = sorted(by_method, key=lambda m: -statistics.mean(r["heldout_top1"] for r in by_method[m]))
        summary[stage] = {}
        for method in ranked:
            rs = by_method[method]
            held = [r["heldout_top1"] for r in rs]
            intervals = {}
            pairs = 0
            for split in ("heldout_top1", "test_top1"):
                diffs = [r[split] - uniform[r["seed"]][split] for r in rs if r["seed"] in uniform]
                intervals[split] = paired_interval(diffs) if diffs and method != "uniform" else None
                pairs = len(diffs)
            summary[stage][method] = {
                "seeds": [r["seed"] for r in rs],
                "heldout_mean": statistics.mean(held),
                "heldout_std": statistics.stdev(held) if len(held) > 1 else 0.0,
                "test_mean": statistics.mean(r["test_top1"] for r in rs),
                "minus_uniform_heldout": intervals["heldout_top1"],
                "minus_uniform_test": intervals["test_top1"],
            }
            ci = {k: "" if v is None else format_interval(v, pairs) for k, v in intervals.items()}
            md.append(
                f"| {method} | {len(rs)} | {100 * statistics.mean(held):.2f} ± {100 * summary[stage][method]['heldout_std']:.2f} | "
                f"{ci['heldout_top1']} | {100 * summary[stage][method]['test_mean']:.2f} | {ci['test_top1']} | "
                f"{100 * statistics.mean(r['test_before_finetune'] for r in rs):.2f} | "
                f"{statistics.mean(r['flops_fraction'] for r in rs):.3f} | {statistics.mean(r['params_fraction'] for r in rs):.3f} | "
                f"{statistics.mean(r['core_minutes'] for r in rs):.1f} |"
            )
        md.append("")
    md += _scratch_against_pretrained(rows)
    md += ["Estimators:", *[f"- {name}: {text}" for name, (_, text) in ESTIMATORS.items()], "- β2: const = 1 throughout (the authors' default); rising = 1 → 5 linearly over the search.", ""]
    md += ["Reproduce: `taskset -c 1 python benchmarks/dsa_vs_uniform.py --data-root PATH/TO/cifar10 --stage short`, then `--stage full` "
           "(the short stage's best two on held-out images) and `--stage scratch` (its best).", ""]
    write_text_atomic(results / "dsa_vs_uniform.md", "\n".join(md))
    write_json_atomic(results / "dsa_vs_uniform.json", {"summary": summary, "runs": rows})
    _plot(results / "dsa_vs_uniform.png", rows)
    print("\n".join(md))


def _scratch_against_pretrained(rows: list[dict[str, Any]]) -> list[str]:
    """The from-scratch runs beside the pre-trained flow of the same setting: accuracy, and the wall time of the
    whole path (dense pre-training, from the committed model's record, plus the full stage's search and fine-tuning)."""
    dense_record = HERE / "dense" / "resnet20_cifar10.json"
    record = json.loads(dense_record.read_text()) if dense_record.is_file() else {}
    pretrain_min = float(record["train_wall_min"]) if "train_wall_min" in record else None
    pretrain_epochs = record.get("train", {}).get("epochs", "?")
    lines = []
    for r in (r for r in rows if r["stage"] == "scratch"):
        setting = r["method"].removesuffix(" from scratch")
        full = [f for f in rows if f["stage"] == "full" and f["method"] == setting]
        if not full or pretrain_min is None:
            continue
        path_min = pretrain_min + statistics.mean(f["core_minutes"] for f in full)
        lines.append(
            f"From scratch ({setting}, seed {r['seed']}, {r['search_epochs']} search + {r['finetune_epochs']} fine-tuning epochs): "
            f"test top-1 {100 * r['test_top1']:.2f}% in {r['core_minutes']:.0f} core-minutes, against "
            f"{100 * statistics.mean(f['test_top1'] for f in full):.2f}% for the pre-trained path ({len(full)} seeds) in "
            f"{path_min:.0f} core-minutes: the dense model's {pretrain_min:.0f} ({pretrain_epochs} epochs) plus "
            f"{statistics.mean(f['core_minutes'] for f in full):.0f} of search and fine-tuning "
            f"(ratio {r['core_minutes'] / path_min:.2f}; wall clock, one core each, the other core busy; time a run spent "
            "paused while other work was timed counts)."
        )
    return lines + [""] if lines else []


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    plt = pyplot()

    stages = [s for s in ("short", "full") if any(r["stage"] == s for r in rows)]
    if not stages:
        return
    fig, axes = plt.subplots(len(stages), 2, figsize=(13, 4.2 * len(stages)), squeeze=False, gridspec_kw={"width_ratios": [1, 1.6]})
    for (ax1, ax2), stage in zip(axes, stages):
        stage_rows = [r for r in rows if r["stage"] == stage]
        methods = sorted({r["method"] for r in stage_rows}, key=lambda m: (m != "uniform", m))
        for i, m in enumerate(methods):
            accs = [100 * r["heldout_top1"] for r in stage_rows if r["method"] == m]
            ax1.bar(i, statistics.mean(accs), color=f"C{i}", alpha=0.7)
            ax1.scatter([i] * len(accs), accs, color="k", s=12, zorder=3)
            first = next(r for r in stage_rows if r["method"] == m)
            sizes = [int(c) for c in first["channels"].split()]
            ax2.plot(range(len(sizes)), sizes, "o-" if m != "uniform" else "s--", ms=3, color=f"C{i}", label=m, alpha=0.8)
        low = min(100 * r["heldout_top1"] for r in stage_rows)
        ax1.set_ylim(low - 1.5, None)
        ax1.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        ax1.set_ylabel("held-out top-1 (%)")
        ax1.set_title(f"{stage}: held-out accuracy per seed")
        ax2.set_xlabel("channel group (execution order)")
        ax2.set_ylabel("channels kept (first seed)")
        ax2.set_title(f"{stage}: what each method kept")
        ax2.legend(fontsize=7, ncol=2)
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
