"""How well the calibrated latency cost predicts the measured latency of randomly pruned networks.

For every table and model: N randomly pruned networks (`hwdsa.lut.network.random_channels`: a random overall width, uneven per group; a seed other
than the calibration's, so none of them was used for fitting or calibration) are timed end to end on
the table's own backend, in two independent passes of interleaved rounds, together with the networks
the table's calibration is refitted on (the load of this shared machine moves the latency level, so
a calibration from an earlier hour describes another machine state; the shipped one is reported
too). Reported per backend and
model: the share of networks predicted within ±5% and ±10% of the measured latency (the mean of the
two passes), the mean absolute percentage error, and the same for the FLOPs proxy (latency assumed
proportional to FLOPs, scaled on the measured dense model). The two passes against each other give
the measurement's own repeatability: no predictor can beat it. Writes
`latency_prediction.{json,csv,md,png}` and `latency_prediction_networks.csv` (every network timed, calibration
networks included, with its layer sum and weight footprint: enough to fit and judge another calibration form offline).

    taskset -c 1 .venv/bin/python benchmarks/latency_prediction.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from hwdsa._io import write_json_atomic, write_text_atomic
from hwdsa.costs import FlopsCost
from hwdsa.graph import trace_channel_graph
from hwdsa.lut.calibrate import Calibration, fit_calibration
from hwdsa.lut.cost_model import LatencyCost
from hwdsa.lut.grid import paddings_from_model
from hwdsa.lut.network import (
    DENSE_EVERY,
    backend_for_table,
    calibration_networks,
    fractions_of_reference,
    independent_channels,
    interleave_reference,
    measure_rounds,
    random_channels,
)
from hwdsa.lut.table import LatencyTable, packaged_tables
from hwdsa.models import create_model, default_input_shape
from hwdsa.profilers.base import TimingProtocol, quietest

from _command import portable_args
from _plots import pyplot, save_figure
from _runs import table_models

_log = logging.getLogger("benchmarks.latency_prediction")

#: The networks a latency budget of 20% or more of the dense network keeps (the budget benchmark's are 30-70%).
BUDGET_RANGE_FROM = 0.2
GOAL_WITHIN_10 = 0.95
GOAL_WITHIN_5 = 0.85
#: The held-out sets the goal is judged on (each one on its own).
GOAL_SETS = ("cost_model", "independent", "dsa_produced")
#: The result files whose DSA-produced networks form a held-out set (run from the repository's root).
DSA_RESULTS = ["benchmarks/results/latency_budget.json", "benchmarks/results/equal_latency/arch/*.json"]


def _errors(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    rel = np.abs(pred / meas - 1.0)
    return {
        "within_5": float(np.mean(rel <= 0.05)),
        "within_10": float(np.mean(rel <= 0.10)),
        "mape": float(np.mean(rel)),
        "max_error": float(np.max(rel)),
    }


def _meets_goal(errors: dict[str, float] | None) -> bool:
    return errors is None or (errors["within_10"] >= GOAL_WITHIN_10 and errors["within_5"] >= GOAL_WITHIN_5)


def _distinct(draw: Any, n: int, *, exclude: list[list[int]]) -> list[list[int]]:
    """`n` networks from `draw()`, none twice and none in `exclude` (the calibration networks)."""
    out: list[list[int]] = []
    for _ in range(100 * n):
        if len(out) == n:
            break
        ch = draw()
        if ch not in exclude and ch not in out:
            out.append(ch)
    if len(out) < n:
        raise SystemExit(f"only {len(out)} distinct random networks in {100 * n} draws: ask for fewer")
    return out


def _backend(table: LatencyTable) -> Any:
    return backend_for_table(table.meta)


def _subset_errors(cost: LatencyCost, nets: list[list[int]], measured: np.ndarray, keep: Any) -> dict[str, Any] | None:
    """`_errors` over the networks for which `keep(channels)` holds (None when there are none), with their count."""
    idx = [i for i, ch in enumerate(nets) if keep(ch)]
    if not idx:
        return None
    return {**_errors(np.array([cost.exact(nets[i]) for i in idx]), measured[idx]), "networks": len(idx)}


def dsa_networks(model_name: str, backend: str, files: list[str], sizes: tuple[int, ...]) -> list[list[int]]:
    """Every distinct channel vector DSA produced for `model_name` on `backend`'s tables in the given result files: the budget benchmark's
    (`latency_budget.json`: searched, verified and every rounding `--verify-latency` timed) and the equal-latency
    benchmark's architectures (`equal_latency/arch/*.json`)."""
    found: list[list[int]] = []

    def add(ch: Any) -> None:
        vec = [int(c) for c in (ch.split() if isinstance(ch, str) else ch)]
        if len(vec) == len(sizes) and vec not in found:
            found.append(vec)

    for name in files:
        for path in sorted(Path().glob(name)) if any(c in name for c in "*?[") else [Path(name)]:
            if not path.is_file():
                continue
            data = json.loads(path.read_text())
            for row in data.get("rows", []) if "rows" in data else [data]:
                if row.get("model", "resnet20") != model_name or row.get("backend", "onnxruntime") != backend:
                    continue
                if str(row.get("method", "dsa")).startswith("dsa"):
                    for key in ("channels", "verified_channels"):
                        if row.get(key) is not None:
                            add(row[key])
                    for cand in row.get("verify_rows", []):
                        add(cand["channels"])
    return found


def run_one(table_path: Path, model_name: str, args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    table = LatencyTable.read(table_path)
    model = create_model(model_name)
    shape = default_input_shape(model_name)
    graph = trace_channel_graph(model, shape)
    cost = LatencyCost.fit(table, graph, paddings=paddings_from_model(model))
    shipped = cost.calibration
    if shipped is None:
        raise SystemExit(f"{table_path} holds no calibration for {model_name}: run `hwdsa fit {table_path} --model {model_name}` first")
    backend = _backend(table)
    flops = FlopsCost(graph)
    multiple = table.meta.channel_multiple
    # The calibration networks (as `hwdsa fit` draws them: seed 0, on the table's channel lattice) and the
    # test networks (another seed, same lattice: the counts `hwdsa prune` produces for this backend) are
    # timed in the same interleaved rounds, so both see the same states of this shared machine.
    cal_nets = calibration_networks(graph, args.calibration_networks, seed=0, multiple=multiple)
    # `hwdsa fit`'s draw before it went log-uniform (uniform overall width), for comparison
    uniform_rng = random.Random(0)
    uniform_nets = [list(graph.group_sizes)] + [
        random_channels(graph, uniform_rng, multiple=multiple) for _ in range(args.calibration_networks - 1)
    ]
    test_rng = random.Random(args.seed)
    used = cal_nets + uniform_nets
    test_nets = _distinct(lambda: random_channels(graph, test_rng, multiple=multiple), args.networks, exclude=used)
    # Off the lattice (any count): what the table does not price for a lattice backend; reported, not the goal.
    off_nets = _distinct(lambda: random_channels(graph, test_rng), args.off_lattice if multiple > 1 else 0, exclude=used)
    # Two more held-out sets: groups drawn independently (wide early and narrow late stages occur), and the
    # networks DSA produced for this model in the budget and equal-latency benchmarks (what pruning asks about).
    indep_rng = random.Random(args.seed + 1)
    indep_nets = _distinct(lambda: independent_channels(graph, indep_rng, multiple=multiple), args.independent, exclude=used + test_nets)
    dsa_nets = [ch for ch in dsa_networks(model_name, table.meta.backend, args.dsa_networks, graph.group_sizes) if ch not in used]
    nets = cal_nets + test_nets + off_nets + uniform_nets + indep_nets + dsa_nets
    protocol = TimingProtocol(warmup=args.warmup, repeats=args.repeats, min_run_ms=args.min_run_ms, rounds=args.rounds)
    # the dense network before every DENSE_EVERY networks, as the device check times it: each network's fraction of
    # dense is also taken paired by round (`hwdsa.profilers.paired_fraction`), free of the level's drift between rounds
    dense_net = list(graph.group_sizes)
    timed, is_dense, places = interleave_reference(nets, dense_net, DENSE_EVERY)
    t0 = time.perf_counter()
    passes = [measure_rounds(model, graph, timed, backend, protocol) for _ in range(2)]
    seconds = time.perf_counter() - t0
    pass1, pass2 = (np.array([quietest(p[i]).median_ms for i in places]) for p in passes)
    measured = np.minimum(pass1, pass2)  # the quietest of all 2 x rounds rounds, as one longer measurement
    ratios = [fractions_of_reference(p, is_dense) for p in passes]
    frac1, frac2 = (np.array([statistics.median(r[i]) for i in places]) for r in ratios)
    frac = np.array([statistics.median(ratios[0][i] + ratios[1][i]) for i in places])  # both passes' rounds pooled
    k, n, n_off = len(cal_nets), len(test_nets), len(off_nets)
    bounds = np.cumsum([0] + [len(x) for x in (cal_nets, test_nets, off_nets, uniform_nets, indep_nets, dsa_nets)]).tolist()
    set_bounds = [(name, bounds[i], bounds[i + 1]) for i, name in enumerate(("calibration", "random", "off_lattice", "uniform_draw", "independent", "dsa_produced"))]
    cal_pairs = list(zip(cal_nets, measured[:k].tolist()))
    n_uni, n_ind = len(uniform_nets), len(indep_nets)
    uniform_pairs = list(zip(uniform_nets, measured[k + n + n_off : k + n + n_off + n_uni].tolist()))
    rest = measured[k + n + n_off + n_uni :]
    indep_meas, dsa_meas = rest[:n_ind], rest[n_ind:]
    fresh = fit_calibration(cost, cal_pairs)  # as `hwdsa fit` fits it
    refitted = cost.with_calibration(fresh)
    all_predicted = np.array([refitted.exact(ch) for ch in test_nets + off_nets])
    all_predicted_shipped = np.array([cost.exact(ch) for ch in test_nets + off_nets])
    plain = cost.with_calibration(fit_calibration(cost, cal_pairs, spill=False, footprint=False, stream=False))
    predicted_plain = np.array([plain.exact(ch) for ch in test_nets])
    uniform = cost.with_calibration(fit_calibration(cost, uniform_pairs))
    predicted_uniform = np.array([uniform.exact(ch) for ch in test_nets])
    predicted, predicted_shipped = all_predicted[:n], all_predicted_shipped[:n]
    flops_proxy = measured[0] * np.array([flops.exact(ch) / flops.dense for ch in test_nets])
    meas, p1, p2 = measured[k : k + n], pass1[k : k + n], pass2[k : k + n]
    off_meas = measured[k + n : k + n + n_off]

    # As `hwdsa fit` fits it (`calibrate_table`): each calibration network's ms are its fraction of dense, paired by
    # round, times the dense network's quietest round. The fit above (`refitted`, on each network's own quietest
    # round, as `hwdsa fit` fitted it before) stays for the ms columns and as the fractions' comparison.
    # The dense level is the quietest round of the dense timings interleaved between the networks, as there.
    dense_level = min(quietest(p[i]).median_ms for p in passes for i, ref in enumerate(is_dense) if ref)
    paired_ms = frac[:k] * dense_level
    paired_ms[0] = dense_level  # the dense network itself
    paired_cal = fit_calibration(cost, list(zip(cal_nets, paired_ms.tolist())))
    paired_fit = cost.with_calibration(paired_cal)

    def predicted_fraction(model: LatencyCost, chs: list[list[int]], dense_ms: float | None = None) -> np.ndarray:
        """The cost model's price over the dense network's price, or over `dense_ms` (the dense network's measured
        latency, against which `hwdsa prune --latency F` sets its limit: `Calibration.dense_ms`)."""
        return np.array([model.exact(ch) / (dense_ms or model.exact(dense_net)) for ch in chs])

    lo_ind, lo_dsa = bounds[4], bounds[5]
    held_out = {"cost_model": (test_nets, frac[k : k + n]), "independent": (indep_nets, frac[lo_ind : lo_ind + n_ind]), "dsa_produced": (dsa_nets, frac[lo_dsa:])}

    def fraction_errors(model: LatencyCost, dense_ms: float) -> dict[str, Any]:
        """Errors of `model`'s fractions of dense, over its own dense price and over `dense_ms` (its calibration's)."""
        return {
            **{key: _errors(predicted_fraction(model, chs), f) if chs else None for key, (chs, f) in held_out.items()},
            "over_measured_dense": {key: _errors(predicted_fraction(model, chs, dense_ms), f) if chs else None for key, (chs, f) in held_out.items()},
        }  # fmt: skip

    fraction: dict[str, Any] = {
        **fraction_errors(paired_fit, dense_level),
        "quietest_fit": fraction_errors(refitted, float(measured[0])),
        "flops_proxy": _errors(np.array([flops.exact(ch) / flops.dense for ch in test_nets]), frac[k : k + n]),
        "repeatability": _errors(frac1[k : k + n], frac2[k : k + n]),
        "repeatability_all_held_out": _errors(frac1[k:], frac2[k:]),
    }
    label = f"{table.meta.backend}" + (
        f" ({table.meta.extra['backend_options']['graph_optimization_level']})"
        if "graph_optimization_level" in table.meta.extra.get("backend_options", {})
        else ""
    )
    summary = {
        "table": table_path.name,
        "backend": label,
        "device": table.meta.device,
        "model": model_name,
        "networks": args.networks,
        "interpolation": str(table.meta.extra.get("interpolation", "linear")),
        "dense_measured_ms": float(measured[0]),
        "dense_level_paired_ms": dense_level,
        "dense_predicted_ms": refitted.dense,
        "dense_predicted_shipped_ms": cost.dense,
        "calibration": fresh.to_json(),
        "calibration_paired": paired_cal.to_json(),
        "shipped_calibration": shipped.to_json(),
        "cost_model_without_spill": _errors(predicted_plain, meas),
        "cost_model_uniform_draw": _errors(predicted_uniform, meas),
        "calibration_uniform_draw": uniform.calibration.to_json() if uniform.calibration is not None else None,
        "cost_model": _errors(predicted, meas),
        "cost_model_shipped_calibration": _errors(predicted_shipped, meas),
        "flops_proxy": _errors(flops_proxy, meas),
        "repeatability": _errors(p1, p2),
        "channel_multiple": multiple,
        "off_lattice": _errors(all_predicted[n:], off_meas) if off_nets else None,
        "off_lattice_networks": len(off_nets),
        "independent": _errors(np.array([refitted.exact(ch) for ch in indep_nets]), indep_meas) if indep_nets else None,
        "independent_networks": len(indep_nets),
        "dsa_produced": _errors(np.array([refitted.exact(ch) for ch in dsa_nets]), dsa_meas) if dsa_nets else None,
        "dsa_produced_networks": len(dsa_nets),
        "dsa_produced_below_lattice": _subset_errors(refitted, dsa_nets, dsa_meas, lambda ch: min(ch) < multiple),
        "dsa_produced_on_lattice": _subset_errors(refitted, dsa_nets, dsa_meas, lambda ch: min(ch) >= multiple),
        "fraction_of_dense": fraction,
        # Every network timed, the calibration's own included, so that other calibration forms can be fitted and
        # judged later from this file alone (same host, same rounds).
        "network_rows": [
            {"set": name, "model": model_name, "backend": label, "channels": " ".join(map(str, ch)), "measured_ms": float(ms),
             "pass1_ms": float(a), "pass2_ms": float(b), "layer_sum_ms": cost.layer_sum_ms(ch), "weights_mb": cost.weights_mb(ch),
             "predicted_ms": refitted.exact(ch), "error": refitted.exact(ch) / float(ms) - 1,
             "measured_fraction": float(f), "pass1_fraction": float(f1), "pass2_fraction": float(f2),
             "predicted_fraction": refitted.exact(ch) / refitted.exact(dense_net),
             "predicted_fraction_paired_fit": paired_fit.exact(ch) / paired_fit.exact(dense_net)}
            for name, lo, hi in set_bounds
            for ch, ms, a, b, f, f1, f2 in zip(nets[lo:hi], measured[lo:hi], pass1[lo:hi], pass2[lo:hi], frac[lo:hi], frac1[lo:hi], frac2[lo:hi])
        ],  # fmt: skip
        "seconds": seconds,
    }
    summary["meets_goal_ms"] = all(_meets_goal(summary[key]) for key in GOAL_SETS)
    summary["meets_goal_fraction"] = all(_meets_goal(fraction[key]) for key in GOAL_SETS)
    rows = [
        {
            "table": table_path.name, "backend": label, "model": model_name, "network": i, "channels": " ".join(map(str, ch)),
            "measured_ms": float(meas[i]), "pass1_ms": float(p1[i]), "pass2_ms": float(p2[i]),
            "predicted_ms": float(predicted[i]), "predicted_shipped_ms": float(predicted_shipped[i]),
            "predicted_without_spill_ms": float(predicted_plain[i]),
            "predicted_uniform_draw_ms": float(predicted_uniform[i]),
            "weights_mb": cost.weights_mb(ch),
            "flops_proxy_ms": float(flops_proxy[i]), "measured_fraction_of_dense": float(meas[i] / measured[0]),
            "measured_fraction_paired": float(frac[k + i]), "predicted_fraction": float(predicted[i] / refitted.exact(dense_net)),
        }  # fmt: skip
        for i, ch in enumerate(test_nets)
    ]
    _log.info("%s %s: %s (shipped calibration: %s)", label, model_name, summary["cost_model"], summary["cost_model_shipped_calibration"])
    return summary, rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tables", nargs="+", default=None, help="calibrated tables (default: the packaged hwdsa/lut/tables/cpu-*.csv)")
    p.add_argument("--models", nargs="+", default=["resnet20", "vgg16"])
    p.add_argument("--networks", type=int, default=60, help="random networks per backend and model (not used for calibration)")
    p.add_argument("--seed", type=int, default=1000, help="seed of the test networks (the calibration networks use `hwdsa fit`'s seed, 0)")
    p.add_argument("--calibration-networks", type=int, default=24, help="networks the calibration is refitted on (dense + N-1 random; the shipped tables used 24)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds per pass (two passes; the quietest round is kept)")
    p.add_argument("--independent", type=int, default=30, help="held-out networks whose groups are drawn independently")
    p.add_argument(
        "--dsa-networks",
        nargs="*",
        default=DSA_RESULTS,
        help="result files whose DSA-produced networks are a held-out set",
    )
    p.add_argument("--off-lattice", type=int, default=20, help="extra networks at any channel count, for tables with a channel lattice (reported, not the goal)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--min-run-ms", type=float, default=2.0)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--conditions", default="the other core idle", help="what else ran on the machine, for the report")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    tables = [Path(t) for t in args.tables] if args.tables else [v for k, v in packaged_tables().items() if k.startswith("cpu-")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summaries, rows = [], []
    for path, model in table_models(tables, args.models):
        s, r = run_one(path, model, args)
        summaries.append(s)
        rows.extend(r)
    by_backend: dict[str, Any] = {}
    for label in dict.fromkeys(s["backend"] for s in summaries):
        sel = [r for r in rows if r["backend"] == label]
        meas = np.array([r["measured_ms"] for r in sel])
        by_backend[label] = {
            "networks": len(sel),
            "cost_model": _errors(np.array([r["predicted_ms"] for r in sel]), meas),
            "cost_model_shipped_calibration": _errors(np.array([r["predicted_shipped_ms"] for r in sel]), meas),
            "cost_model_without_spill": _errors(np.array([r["predicted_without_spill_ms"] for r in sel]), meas),
            "cost_model_uniform_draw": _errors(np.array([r["predicted_uniform_draw_ms"] for r in sel]), meas),
            "flops_proxy": _errors(np.array([r["flops_proxy_ms"] for r in sel]), meas),
            "repeatability": _errors(np.array([r["pass1_ms"] for r in sel]), np.array([r["pass2_ms"] for r in sel])),
        }
        in_range = [r for r in sel if r["measured_fraction_of_dense"] >= BUDGET_RANGE_FROM]
        by_backend[label]["budget_range_networks"] = len(in_range)
        by_backend[label]["cost_model_budget_range"] = (
            _errors(np.array([r["predicted_ms"] for r in in_range]), np.array([r["measured_ms"] for r in in_range]))
            if in_range
            else None
        )
        by_backend[label]["meets_goal"] = by_backend[label]["cost_model"]["within_10"] >= GOAL_WITHIN_10
    timed = [row for s_ in summaries for row in s_.pop("network_rows")]
    hbuf = io.StringIO()
    hw = csv.DictWriter(hbuf, fieldnames=list(timed[0]))
    hw.writeheader()
    hw.writerows(timed)
    write_text_atomic(out / "latency_prediction_networks.csv", hbuf.getvalue())
    result = {"goal_within_10": GOAL_WITHIN_10, "args": portable_args(args), "per_backend": by_backend, "per_model": summaries}
    write_json_atomic(out / "latency_prediction.json", result)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(out / "latency_prediction.csv", buf.getvalue())
    write_text_atomic(out / "latency_prediction.md", _markdown(result, args))
    _plot(out / "latency_prediction.png", rows, summaries)
    print(_markdown(result, args))
    return 0


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _cell(e: dict[str, float] | None, n: int | None = None) -> str:
    """±5% / ±10% / max of one set's errors, and its size."""
    return "—" if e is None else f"{_pct(e['within_5'])} / {_pct(e['within_10'])} / {_pct(e['max_error'])}" + (f" of {n}" if n else "")


def _markdown(result: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "## Latency prediction on randomly pruned networks",
        "",
        f"{args.networks} random networks per backend and model (`random_channels`: overall width U(0.1, 1), each group "
        f"0.6-1.4 times it, on the table's channel lattice; seed {args.seed}), none used for fitting or calibration. The "
        f"table's calibration is refitted on {args.calibration_networks} other networks (dense + random, seed 0, widths drawn "
        "log-uniformly as `hwdsa fit` draws them) timed in the same interleaved rounds as the test networks, as a user runs "
        "`hwdsa fit` before pruning: the latency level of this shared VM moves between sessions. *shipped calibration* is "
        "the one stored in the table, fitted earlier; *no footprint term* is the refitted calibration without any "
        "term of the network's weight footprint (spill step, √footprint or stream beyond a capacity); *uniform draw* is the calibration fitted on as many networks drawn "
        "as `hwdsa fit` drew them before (overall width U(0.1, 1), few small footprints), timed in the same rounds. "
        f"Timing: two passes of {args.rounds} interleaved rounds ({args.repeats} samples of >= "
        f"{args.min_run_ms} ms), the quietest round kept, pinned to one core ({args.conditions}). *Measured* is "
        "the quietest of both passes; *repeatability* compares the two passes with each other, the measurement's own noise. "
        "*Off the lattice*: extra networks at any channel count, which `hwdsa prune` does not produce for a backend with a "
        "lattice (reported, not part of the goal). Two more held-out sets, per model: *independent groups* (every group's "
        "keep ratio drawn from U(0.25, 1) on its own, on the lattice: wide early beside narrow late stages, which the "
        "width-first draws rarely give) and *DSA-produced* (every network DSA searched, verified or timed as a candidate for "
        "this model on this backend in `latency_budget.json` and the equal-latency benchmark). Goal: >= 95% within ±10% and >= 85% within ±5% on each set. "
        f"Judged twice: on the latency in ms, and on the *fraction of dense*, which is what a budget is (`--latency 0.5`): "
        f"the dense network is timed before every {DENSE_EVERY} networks in every round, and a network's measured fraction is "
        "the median over both passes' rounds of its ratio to the dense network timed just before it "
        "(`hwdsa.profilers.paired_fraction`), its predicted fraction the cost model's price over the dense network's, "
        "the calibration fitted as `hwdsa fit` fits it: each calibration network's ms are its paired fraction times the "
        "dense network's quietest round (`hwdsa.lut.network.time_against_dense`); *fitted on quietest rounds* is the "
        "calibration the ms columns use, fitted on each network's own quietest round (as `hwdsa fit` fitted it before). "
        "On a VM whose level drifts between rounds, the ms of two networks timed minutes apart carry the drift; the ratio "
        "within a round does not.",
        "",
        "| backend | networks | cost model ±5% | ±10% | MAPE | max | ±10% at >= 20% of dense (networks) | no footprint term ±10% "
        "| uniform draw ±10% | shipped calibration ±10% | FLOPs proxy ±10% | MAPE | repeatability ±10% | MAPE | goal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, b in result["per_backend"].items():
        c, sc, f, r = b["cost_model"], b["cost_model_shipped_calibration"], b["flops_proxy"], b["repeatability"]
        nf, br = b["cost_model_without_spill"], b.get("cost_model_budget_range")
        in_range = "—" if br is None else f"{_pct(br['within_10'])} ({b['budget_range_networks']})"
        lines.append(
            f"| {label} | {b['networks']} | {_pct(c['within_5'])} | {_pct(c['within_10'])} | {100 * c['mape']:.1f}% | {_pct(c['max_error'])} "
            f"| {in_range} | {_pct(nf['within_10'])} | {_pct(b['cost_model_uniform_draw']['within_10'])} | {_pct(sc['within_10'])} "
            f"| {_pct(f['within_10'])} | {100 * f['mape']:.1f}% | {_pct(r['within_10'])} | {100 * r['mape']:.1f}% | {'met' if b['meets_goal'] else 'missed'} |"
        )
    lines += [
        "",
        "Per model:",
        "",
        "| backend | model | calibration | dense measured ms | dense predicted ms | cost ±5% | ±10% | MAPE | no footprint ±10% "
        "| uniform draw ±10% | shipped cal. ±10% | FLOPs ±10% | repeat ±10% | off the lattice ±10% "
        "| independent groups ±5% / ±10% / max | DSA-produced ±5% / ±10% / max |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result["per_model"]:
        c, sc, f, r = s["cost_model"], s["cost_model_shipped_calibration"], s["flops_proxy"], s["repeatability"]
        off = s.get("off_lattice")
        lines.append(
            f"| {s['backend']} | {s['model']} | {Calibration.from_json(s['calibration']).describe()} | "
            f"{s['dense_measured_ms']:.3f} | {s['dense_predicted_ms']:.3f} | "
            f"{_pct(c['within_5'])} | {_pct(c['within_10'])} | {100 * c['mape']:.1f}% | "
            f"{_pct(s['cost_model_without_spill']['within_10'])} | {_pct(s['cost_model_uniform_draw']['within_10'])} | "
            f"{_pct(sc['within_10'])} | "
            f"{_pct(f['within_10'])} | {_pct(r['within_10'])} | "
            + (f"{_pct(off['within_10'])} of {s['off_lattice_networks']} |" if off else "— |")
            + "".join(
                f" {_pct(e['within_5'])} / {_pct(e['within_10'])} / {_pct(e['max_error'])} of {s[key + '_networks']} |" if e else " — |"
                for key in ("independent", "dsa_produced")
                for e in [s.get(key)]
            )
        )
    lines += [
        "",
        "Fraction of dense, paired by round (predicted fraction / measured fraction − 1):",
        "",
        "| backend | model | random ±5% / ±10% / max | independent groups ±5% / ±10% / max | DSA-produced ±5% / ±10% / max "
        "| FLOPs fraction ±10% | repeatability ±5% / ±10% (random; all held-out) | goal on the fraction | goal in ms "
        "| price over the measured dense latency, as the budget's limit is set: random / independent / DSA-produced ±5% / ±10% "
        "| fitted on quietest rounds: random / independent / DSA-produced ±5% / ±10% |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result["per_model"]:
        fr = s.get("fraction_of_dense")
        if not fr:
            continue

        rep, rep_all = fr["repeatability"], fr["repeatability_all_held_out"]
        lines.append(
            f"| {s['backend']} | {s['model']} | {_cell(fr['cost_model'], s['networks'])} | {_cell(fr['independent'], s['independent_networks'])} "
            f"| {_cell(fr['dsa_produced'], s['dsa_produced_networks'])} | {_pct(fr['flops_proxy']['within_10'])} "
            f"| {_pct(rep['within_5'])} / {_pct(rep['within_10'])}; {_pct(rep_all['within_5'])} / {_pct(rep_all['within_10'])} "
            f"| {'met' if s['meets_goal_fraction'] else 'missed'} | {'met' if s['meets_goal_ms'] else 'missed'} | "
            + " | ".join(
                "; ".join("—" if e is None else f"{_pct(e['within_5'])} / {_pct(e['within_10'])}" for e in sets)
                for sets in (fr["over_measured_dense"].values(), [fr["quietest_fit"][key] for key in ("cost_model", "independent", "dsa_produced")])
            )
            + " |"
        )
    lines += ["", "DSA-produced networks with a group below the table's channel lattice (1, 2 or 4 channels on ONNX Runtime) against those on it:", ""]
    for s in result["per_model"]:
        for key, what in (("dsa_produced_below_lattice", "below the lattice"), ("dsa_produced_on_lattice", "on the lattice")):
            e = s.get(key)
            if e:
                lines.append(f"- {s['backend']} {s['model']}, {what}: {e['networks']} networks, {_pct(e['within_5'])} within ±5%, "
                             f"{_pct(e['within_10'])} within ±10%, MAPE {100 * e['mape']:.1f}%, max {_pct(e['max_error'])}")
    return "\n".join(lines) + "\n"


def _plot(path: Path, rows: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> None:
    plt = pyplot()

    labels = list(dict.fromkeys(s["backend"] for s in summaries))
    models = list(dict.fromkeys(s["model"] for s in summaries))
    fig, axes = plt.subplots(len(models), len(labels), figsize=(4.6 * len(labels), 4.2 * len(models)), squeeze=False)
    for j, label in enumerate(labels):
        for i, model in enumerate(models):
            ax = axes[i][j]
            sel = [r for r in rows if r["backend"] == label and r["model"] == model]
            if not sel:
                ax.set_visible(False)
                continue
            meas = np.array([r["measured_ms"] for r in sel])
            ax.scatter(meas, [r["flops_proxy_ms"] for r in sel], s=10, marker="x", color="0.6", label="FLOPs proxy")
            ax.scatter(meas, [r["predicted_ms"] for r in sel], s=12, color="C0", label="latency cost model")
            lo, hi = float(meas.min()) * 0.8, float(meas.max()) * 1.2
            xs = np.linspace(lo, hi, 10)
            ax.plot(xs, xs, "k-", lw=0.8)
            ax.fill_between(xs, xs * 0.9, xs * 1.1, color="C2", alpha=0.15, label="±10%")
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            ax.set_xlabel("measured end-to-end latency (ms)")
            ax.set_ylabel("predicted (ms)")
            ax.set_title(f"{label}, {model}", fontsize=9)
            ax.legend(fontsize=7, loc="upper left")
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
