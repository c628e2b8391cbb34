"""Budget adherence: prune to 30/50/70% of the dense latency with DSA, then measure the pruned network.

For every table (backend) and model: first the table's calibration for the model is refitted in this
session, as a user runs `hwdsa fit` on the device right before pruning (`hwdsa.lut.network.calibrate_table`,
on a copy: the shipped table is not rewritten); then a short DSA search under the table's `LatencyCost`
on a small CIFAR-10 subset (accuracy is not the point here), and two roundings of the searched keep
ratios: the cost model's latency-optimal rounding (`hwdsa.lut.rounding.round_for_budgets`, what
`hwdsa prune --latency F` keeps) and the one corrected by timing on the device
(`hwdsa.lut.verify.meet_measured_budget`, what `--verify-latency` keeps). Both pruned networks and
the dense one are then timed end to end in the same interleaved rounds. Reported: measured latency
divided by the requested budget (the fraction times the dense model's measured latency; goal 0.95
to 1.02). Training runs on core 0, timing on core 1 (the script moves itself between them). Writes
`latency_budget.{json,csv,md,png}`.

    .venv/bin/python benchmarks/latency_budget.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from hwdsa._io import write_json_atomic, write_text_atomic
from hwdsa.costs import Budget, FlopsCost
from hwdsa.data import load_dataset, make_loader
from hwdsa.dsa.allocator import AdmmConfig
from hwdsa.dsa.search import DsaSearch, SearchConfig
from hwdsa.graph import trace_channel_graph
from hwdsa.lut.cost_model import LatencyCost
from hwdsa.lut.grid import paddings_from_model
from hwdsa.lut.network import backend_for_table, calibrate_table, fractions_of_reference, measure_rounds
from hwdsa.lut.rounding import round_for_budgets
from hwdsa.lut.table import LatencyTable, packaged_tables
from hwdsa.lut.verify import meet_measured_budget
from hwdsa.models import create_model, default_input_shape
from hwdsa.profilers.base import Measurement, TimingProtocol, quietest
from hwdsa.training import TrainConfig

from _command import portable_args, portable_path
from _runs import host_record, table_models
from _plots import pyplot, save_figure

_log = logging.getLogger("benchmarks.latency_budget")

GOAL = (0.95, 1.02)


def _on_core(core: int) -> None:
    """Pin this process's (single) compute thread: training on core 0, timing on core 1 (if the machine has it)."""
    if hasattr(os, "sched_setaffinity") and core < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {core})


def _backend(table: LatencyTable) -> Any:
    return backend_for_table(table.meta)


def recalibrate(table_path: Path, model_name: str, args: argparse.Namespace) -> tuple[LatencyTable, dict[str, Any]]:
    """The table with `model_name`'s calibration refitted now (timed on core 1), as `hwdsa fit` would; in memory only.

    Returns the calibrated copy and what changed: the dense latency the shipped calibration predicted and the
    fresh one predicts, and the fresh fit's scale, offset and error.
    """
    table = LatencyTable.read(table_path)
    model = create_model(model_name)
    shape = default_input_shape(model_name)
    graph = trace_channel_graph(model, shape)
    shipped = LatencyCost.fit(table, graph, paddings=paddings_from_model(model))
    protocol = TimingProtocol(warmup=args.warmup, repeats=args.repeats, min_run_ms=args.min_run_ms, rounds=args.calibration_rounds)
    _on_core(1)
    t0 = time.perf_counter()
    fresh, cal = calibrate_table(
        table, model, shape, _backend(table), name=model_name, networks=args.calibration_networks, seed=args.seed,
        protocol=protocol,
    )  # fmt: skip
    _on_core(0)
    cost = LatencyCost.fit(fresh, graph, paddings=paddings_from_model(model), calibration=cal)
    info = {
        "calibration": "refitted",
        "calibration_s": time.perf_counter() - t0,
        "calibration_fit": cal.describe(),
        "calibration_rmse_ms": cal.rmse_ms,
        "calibration_max_rel_error": cal.max_rel_error,
        "calibration_dense_measured_ms": cal.dense_ms,
        "shipped_dense_predicted_ms": shipped.dense if shipped.calibration is not None else float("nan"),
    }
    _log.info(
        "%s %s: recalibrated in %.0f s: latency = %s (max error %.1f%%); dense %.4g ms measured, %.4g ms predicted",
        table.meta.backend, model_name, info["calibration_s"], cal.describe(), 100 * cal.max_rel_error, cal.dense_ms, cost.dense,
    )  # fmt: skip
    return fresh, info


def search_one(
    table_path: Path, table: LatencyTable, calibration: dict[str, Any], model_name: str, fraction: float, splits: Any,
    args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    """DSA under the (recalibrated) table's latency cost, then latency-optimal rounding (on core 0); nothing is timed."""
    torch.manual_seed(args.seed)
    model = create_model(model_name, num_classes=splits.num_classes)
    shape = default_input_shape(model_name)
    graph = trace_channel_graph(model, shape)
    cost = LatencyCost.fit(table, graph, paddings=paddings_from_model(model))
    if cost.calibration is None:
        raise SystemExit(f"{table_path} holds no calibration for {model_name}: run `hwdsa fit {table_path} --model {model_name}` first")
    budget = Budget.fraction_of_dense(cost, fraction)
    train = make_loader(splits.train, args.batch_size, train=True, seed=args.seed)
    holdout = make_loader(splits.holdout, args.batch_size, train=True, seed=args.seed)
    _on_core(0)
    t0 = time.perf_counter()
    config = SearchConfig(TrainConfig(epochs=args.search_epochs, lr=0.02), AdmmConfig(), args.seed)
    result = DsaSearch(model, graph, [budget], config, torch.device("cpu")).run(train, holdout)
    search_s = time.perf_counter() - t0
    channels = round_for_budgets(torch.tensor(result.keep_ratios), [budget], graph.group_sizes)
    label = table.meta.backend + (
        f" ({table.meta.extra['backend_options']['graph_optimization_level']})"
        if "graph_optimization_level" in table.meta.extra.get("backend_options", {})
        else ""
    )
    flops = FlopsCost(graph)
    _log.info("%s %s %.0f%%: searched in %.0f s, predicted %.4g ms for a budget of %.4g ms", label, model_name, 100 * fraction, search_s, cost.exact(channels), budget.limit)
    return {
        "table": portable_path(table_path),  # no path of the machine that ran it
        "backend": label,
        "model": model_name,
        "budget_fraction": fraction,
        "budget_ms": budget.limit,
        "predicted_ms": cost.exact(channels),
        "dense_predicted_ms": cost.dense,
        "predicted_fraction": cost.exact(channels) / cost.dense,
        "searched_ratio_cost_ms": float(cost(torch.tensor(result.keep_ratios, dtype=torch.float64))),
        "flops_fraction": flops.exact(channels) / flops.dense,
        "channels": " ".join(map(str, channels)),
        "keep_ratios": [float(r) for r in result.keep_ratios],
        "search_s": search_s,
        **calibration,
    }


def verify_all(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """`hwdsa prune --verify-latency`'s step for every search (on core 1): time, correct the rounding, keep the counts."""
    protocol = TimingProtocol(warmup=args.warmup, repeats=args.repeats, min_run_ms=args.min_run_ms, rounds=args.rounds)
    _on_core(1)
    for r in rows:
        table = LatencyTable.read(r["calibrated_table"])
        model = create_model(r["model"])
        graph = trace_channel_graph(model, default_input_shape(r["model"]))
        cost = LatencyCost.fit(table, graph, paddings=paddings_from_model(model))
        budget = Budget.fraction_of_dense(cost, r["budget_fraction"])
        t0 = time.perf_counter()
        check = meet_measured_budget(model, graph, r["keep_ratios"], budget, _backend(table), fraction=r["budget_fraction"], protocol=protocol)
        r["verified_channels"] = " ".join(map(str, check.channels))
        r["verify_candidates"] = len(check.candidates)
        r["verify_extended"] = sum(1 for c in check.candidates if c["stage"] == "extended")
        r["verify_dense_runs_ms"] = list(check.dense_runs_ms)
        r["verify_own_over_target"] = check.measured_over_target  # as the check itself timed it
        r["verify_aim_over_target"] = check.aim_ms / check.target_ms
        r["verify_rows"] = list(check.candidates)
        r["verify_s"] = time.perf_counter() - t0
        r["verified_predicted_ms"] = cost.exact(check.channels)
    _on_core(0)


def measure_all(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Time every pruned network (model-only and verified rounding) and its dense model in the same rounds (core 1).

    Two passes over every (table, model), minutes apart. A pruned network's fraction of dense is paired by round
    (`hwdsa.profilers.paired_fraction`: each round's ratio to the dense network timed just before it, the median
    over the rounds of both passes), the statistic the device check now uses; each pass alone gives the verified
    ratio again, this machine's own pass-to-pass spread. Milliseconds are the quietest round of both passes.
    """
    protocol = TimingProtocol(warmup=args.warmup, repeats=args.repeats, min_run_ms=args.min_run_ms, rounds=args.rounds)
    _on_core(1)
    # Per (table, model): what to time, built once. The dense network before each budget's pair, as the device
    # check times it: the requested latency is a fraction of it.
    groups: list[tuple[list[dict[str, Any]], Any, Any, Any, list[list[int]]]] = []
    for table_path, model_name in dict.fromkeys((r["table"], r["model"]) for r in rows):
        model = create_model(model_name)
        graph = trace_channel_graph(model, default_input_shape(model_name))
        sel = [r for r in rows if r["table"] == table_path and r["model"] == model_name]
        dense = list(graph.group_sizes)
        nets: list[list[int]] = []
        for r in sel:
            nets += [dense, [int(c) for c in r["channels"].split()], [int(c) for c in r["verified_channels"].split()]]
        groups.append((sel, model, graph, _backend(LatencyTable.read(sel[0]["calibrated_table"])), nets))
    passes: list[list[list[list[Measurement]]]] = [[], []]
    for timed in passes:
        for _, model, graph, backend, nets in groups:
            timed.append(measure_rounds(model, graph, nets, backend, protocol))
    for (sel, _, _, _, nets), first, second in zip(groups, *passes):
        is_dense = [i % 3 == 0 for i in range(len(nets))]
        ratios = [fractions_of_reference(one, is_dense) for one in (first, second)]
        dense_per_pass = [min(quietest(one[j]).median_ms for j in range(0, len(nets), 3)) for one in (first, second)]
        dense_ms = min(dense_per_pass)
        for k, (rk, dense_one) in enumerate(zip(ratios, dense_per_pass), start=1):
            for i, r in enumerate(sel):
                r[f"verified_over_requested_pass{k}"] = statistics.median(rk[3 * i + 2]) / r["budget_fraction"]
                r[f"dense_measured_ms_pass{k}"] = dense_one
        for i, r in enumerate(sel):
            fraction, verified_fraction = (statistics.median(ratios[0][3 * i + j] + ratios[1][3 * i + j]) for j in (1, 2))
            r["measured_ms"] = fraction * dense_ms
            r["verified_measured_ms"] = verified_fraction * dense_ms
            r["dense_measured_ms"] = dense_ms
            r["measured_over_budget"] = r["measured_ms"] / r["budget_ms"]
            r["measured_fraction_of_measured_dense"] = fraction
            # The budget as the user states it: a fraction of the dense model's latency, timed in the same rounds.
            r["measured_over_requested"] = fraction / r["budget_fraction"]
            r["verified_over_requested"] = verified_fraction / r["budget_fraction"]
            r["within_goal"] = GOAL[0] <= r["measured_over_requested"] <= GOAL[1]
            r["verified_within_goal"] = GOAL[0] <= r["verified_over_requested"] <= GOAL[1]
            _log.info(
                "%s %s %.0f%%: measured / requested %.3f from the model's rounding, %.3f verified on the device",
                r["backend"], r["model"], 100 * r["budget_fraction"], r["measured_over_requested"], r["verified_over_requested"],
            )  # fmt: skip
    _on_core(0)


def out_dir(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tables", nargs="+", default=None, help="calibrated tables (default: the packaged hwdsa/lut/tables/cpu-*.csv)")
    p.add_argument("--models", nargs="+", default=["resnet20", "vgg16"])
    p.add_argument("--budgets", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    p.add_argument("--data-root", help="CIFAR-10 (the npz folder or the python pickles); not needed with --resume-searched")
    p.add_argument("--per-class", type=int, default=20, help="CIFAR-10 training images per class for the short search")
    p.add_argument("--search-epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds of the device check and the final timing")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--min-run-ms", type=float, default=2.0)
    p.add_argument("--calibration-networks", type=int, default=24, help="networks timed to refit each calibration (`hwdsa fit --networks`)")
    p.add_argument("--calibration-rounds", type=int, default=7, help="interleaved rounds per calibration network (`hwdsa fit --rounds`)")
    p.add_argument("--shipped-calibration", action="store_true", help="search with the tables' stored calibrations, no refit")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--search-only", action="store_true", help="only search (core 0) and keep the result; time later with --resume-searched")
    p.add_argument("--resume-searched", action="store_true", help="time the networks a --search-only run found")
    args = p.parse_args(argv)
    if not args.resume_searched and not args.data_root:
        p.error("--data-root is needed to search (the CIFAR-10 folder: the npz files or the python pickles)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(1)
    tables = [Path(t) for t in args.tables] if args.tables else [v for k, v in packaged_tables().items() if k.startswith("cpu-")]
    splits = None if args.resume_searched else load_dataset("cifar10", args.data_root, subset_per_class=args.per_class, test_per_class=1, seed=args.seed)
    searched = out_dir(args) / "latency_budget.searched.json"
    if args.resume_searched and searched.is_file():
        rows = json.loads(searched.read_text())
    else:
        rows = []
        work = out_dir(args) / ".latency_budget"  # the refitted tables, for the timing phase
        work.mkdir(exist_ok=True)
        for t, m in table_models(tables, args.models):
            if args.shipped_calibration:
                table, info = LatencyTable.read(t), {"calibration": "shipped"}
            else:
                table, info = recalibrate(t, m, args)  # right before its searches, as a user would
            calibrated = table.write(work / f"{t.stem}-{m}.csv")
            for f in args.budgets:
                rows.append({**search_one(t, table, info, m, f, splits, args), "calibrated_table": str(calibrated)})
        write_json_atomic(searched, rows)  # the searches are the slow part: keep them for --resume-searched
    if args.search_only:
        return 0
    verify_all(rows, args)
    measure_all(rows, args)
    searched.unlink(missing_ok=True)
    shutil.rmtree(out_dir(args) / ".latency_budget", ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ratios = [r["measured_over_requested"] for r in rows]
    verified = [r["verified_over_requested"] for r in rows]
    result = {
        "goal": list(GOAL),
        "host": host_record(),
        "args": portable_args(args),
        "within_goal": sum(r["within_goal"] for r in rows),
        "verified_within_goal": sum(r["verified_within_goal"] for r in rows),
        "runs": len(rows),
        "measured_over_requested": {"min": min(ratios), "max": max(ratios), "mean": sum(ratios) / len(ratios)},
        "verified_over_requested": {"min": min(verified), "max": max(verified), "mean": sum(verified) / len(verified)},
        "rows": rows,
    }
    write_json_atomic(out / "latency_budget.json", result)
    buf = io.StringIO()
    flat = [{k: v for k, v in r.items() if k != "verify_rows"} for r in rows]  # the candidates stay in the JSON
    w = csv.DictWriter(buf, fieldnames=list(flat[0]))
    w.writeheader()
    w.writerows(flat)
    write_text_atomic(out / "latency_budget.csv", buf.getvalue())
    md = _markdown(result, args)
    write_text_atomic(out / "latency_budget.md", md)
    _plot(out / "latency_budget.png", rows)
    print(md)
    return 0


def _markdown(result: dict[str, Any], args: argparse.Namespace) -> str:
    host = result.get("host")
    lines = [
        "## Latency budget adherence",
        "",
        f"Host: {host['cpu']} (fingerprint `{host['fingerprint']}`)." if host else "Host: not recorded (an earlier Intel Xeon, AVX-512, with the shipped tables).",
        "",
        f"DSA search ({args.search_epochs} epochs on {args.per_class} CIFAR-10 images per class, from random weights) under "
        "each table's calibrated latency cost, then two roundings of the searched keep ratios: the cost model's "
        "(`hwdsa prune --latency F`) and the one checked on the device (`hwdsa prune --latency F --verify-latency`: the "
        "roundings under 0.7-1.15 times the budget timed together with the dense network, which is timed before every 4 "
        "of them, each candidate's fraction of dense paired by round; the largest measured within 0.985 of the budget "
        "(`--verify-margin 0.015`) kept; when all measure over that, the fastest one's measured error rescales the limits "
        "and a lower set is timed: *extended*). Then the dense network and both pruned ones timed end to end in two "
        f"passes of {args.rounds} interleaved rounds on core 1, the dense network before each pair. *measured / "
        "requested* = the pruned network's fraction of dense (each round's ratio to the dense network timed just before "
        "it, the median over the rounds of both passes: `hwdsa.profilers.paired_fraction`) / budget fraction: the budget "
        "as `--latency 0.5` states it; *each pass* gives the verified ratio from one pass alone, this machine's own "
        "pass-to-pass spread. "
        + (
            "Each table's calibration for the model was refitted in this session right before its searches, as `hwdsa fit` "
            f"does ({args.calibration_networks} networks, {args.calibration_rounds} interleaved rounds, on core 1; the "
            "shipped tables are unchanged). "
            if not args.shipped_calibration
            else "The searches used the calibrations stored in the tables (`--shipped-calibration`). "
        )
        + f"Goal: measured / requested in [{GOAL[0]}, {GOAL[1]}]: {result['within_goal']} of {result['runs']} runs meet it "
        f"from the cost model alone, {result['verified_within_goal']} of {result['runs']} verified on the device.",
        "",
        "| backend | model | budget | cost model: measured / requested | goal | verified: measured / requested | goal "
        "| each pass (verified) | candidates timed (extended) | check's own measured / target | check's dense ms (per run) "
        "| predicted fraction | measured fraction | dense measured ms | FLOPs fraction |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['backend']} | {r['model']} | {r['budget_fraction']:.0%} | {r['measured_over_requested']:.3f} | "
            f"{'met' if r['within_goal'] else 'missed'} | {r['verified_over_requested']:.3f} | "
            f"{'met' if r['verified_within_goal'] else 'missed'} | "
            f"{r['verified_over_requested_pass1']:.3f} / {r['verified_over_requested_pass2']:.3f} | "
            f"{r['verify_candidates']} ({r.get('verify_extended', 0)}) | "
            f"{r.get('verify_own_over_target', float('nan')):.3f} | {' / '.join(f'{d:.3g}' for d in r['verify_dense_runs_ms'])} | "
            f"{r['predicted_fraction']:.3f} | "
            f"{r['measured_fraction_of_measured_dense']:.3f} | {r['dense_measured_ms']:.3f} | {r['flops_fraction']:.3f} |"
        )
    cals = {(r["backend"], r["model"]): r for r in result["rows"] if r.get("calibration") == "refitted"}
    if cals:
        lines += [
            "",
            "Calibrations refitted in this session:",
            "",
            "| backend | model | calibration | rmse ms | max error | dense ms measured | dense ms predicted |",
            "|---|---|---|---|---|---|---|",
        ]
        for (backend, model), r in cals.items():
            lines.append(
                f"| {backend} | {model} | {r['calibration_fit']} | {r['calibration_rmse_ms']:.3g} | "
                f"{100 * r['calibration_max_rel_error']:.1f}% | {r['calibration_dense_measured_ms']:.4g} | {r['dense_predicted_ms']:.4g} |"
            )
    return "\n".join(lines) + "\n"


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    groups = list(dict.fromkeys((r["backend"], r["model"]) for r in rows))
    for ax, key, title in (
        (axes[0], "measured_over_requested", "cost model's rounding"),
        (axes[1], "verified_over_requested", "verified on the device (--verify-latency)"),
    ):
        for k, (backend, model) in enumerate(groups):
            sel = [r for r in rows if r["backend"] == backend and r["model"] == model]
            ax.plot([r["budget_fraction"] for r in sel], [r[key] for r in sel], marker="o", label=f"{backend}, {model}", color=f"C{k}")
        ax.axhspan(GOAL[0], GOAL[1], color="C2", alpha=0.15, label="goal 0.95–1.02")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xlabel("latency budget (fraction of the dense model's measured latency)")
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("measured / requested latency")
    axes[0].legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
