"""`hwdsa fit`: fit a model's latency cost to a table and calibrate it against end-to-end timings.

The per-layer sum misses launch overhead, fusion, the operators the table does not hold and the
weights a network streams from beyond the caches, so a handful of randomly pruned copies of the model
(on the table's channel lattice) are timed whole on the table's own backend (on this machine, which
must be the table's device) and ``latency ≈ scale · Σ max(layer, weights / bandwidth) + offset`` is
fitted on relative errors (`hwdsa.lut.calibrate.fit_calibration`). The calibration, with the dense
network's measured latency, is stored in the table's header, so `hwdsa prune --latency-table` picks it up.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwdsa.errors import ConfigError

if TYPE_CHECKING:
    from hwdsa.profilers.backend import Backend


def add_arguments(p: argparse.ArgumentParser) -> None:
    from hwdsa.cli.profile import add_model_arguments
    from hwdsa.lut.calibrate import CALIBRATION_METHODS
    from hwdsa.lut.network import DEFAULT_CALIBRATION_NETWORKS
    from hwdsa.profilers.cli_flags import add_backend_option_arguments, add_protocol_arguments

    p.add_argument("table", help="latency table (.csv from `hwdsa profile`)")
    add_model_arguments(p)
    p.add_argument("--name", help="name the calibration is stored under (default: the model's)")
    p.add_argument(
        "--networks",
        type=int,
        default=DEFAULT_CALIBRATION_NETWORKS,
        help=f"networks timed end to end: the dense one and N-1 random prunings (default {DEFAULT_CALIBRATION_NETWORKS})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random prunings")
    p.add_argument(
        "--interpolation", default=None,
        help="how counts between grid points are priced: linear, ceil, or ceil:N (padded to multiples of N, e.g. "
        "ceil:16 for ONNX Runtime's NCHWc kernels on AVX-512); stored with the table (default: the table's, else linear)",
    )  # fmt: skip
    p.add_argument("--method", default="huber", choices=CALIBRATION_METHODS, help="regression of the calibration (default huber)")
    p.add_argument(
        "--anchor-dense", action="store_true",
        help="make the fit go through the dense network's measurement (default: fit it like the others; --latency 0.5 "
        "is half of its measured latency either way)",
    )  # fmt: skip
    add_backend_option_arguments(p, from_table=True)
    p.add_argument("--out", help="where to write the calibrated table (default: overwrite TABLE)")
    p.add_argument("--no-calibrate", action="store_true", help="only check that the table prices the model (no timing)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    add_protocol_arguments(p)


def backend_for_table(meta: Any, args: argparse.Namespace) -> Backend:
    """The table's backend with the options it was measured with, overridden by the flags given."""
    from hwdsa.lut.network import backend_for_table as for_table
    from hwdsa.profilers.cli_flags import backend_options_from_args

    return for_table(meta, **backend_options_from_args(args))


def run(args: argparse.Namespace) -> int:
    from hwdsa.cli.profile import build_model
    from hwdsa.graph import trace_channel_graph
    from hwdsa.lut.cost_model import LatencyCost
    from hwdsa.lut.grid import paddings_from_model
    from hwdsa.lut.network import calibrate_table
    from hwdsa.lut.table import LatencyTable
    from hwdsa.profilers.cli_flags import protocol_from_args

    table = LatencyTable.read(args.table)
    model, shape = build_model(args)
    graph = trace_channel_graph(model, shape)
    cost = LatencyCost.fit(  # refuses a table that lacks the model's entries
        table, graph, calibration=None, paddings=paddings_from_model(model), interpolation=args.interpolation
    )
    summary: dict[str, Any] = {
        "table": args.table,
        "model": args.model,
        "layers": len(cost.layers),
        "groups": len(cost.group_sizes),
        "dense_layer_sum_ms": cost.dense,
    }
    if not args.no_calibrate:
        if args.networks < 3:
            raise ConfigError(f"--networks must be >= 3 (a scale and an offset are fitted); got {args.networks}")
        backend = backend_for_table(table.meta, args)
        table, cal = calibrate_table(
            table, model, shape, backend, name=args.name or args.model, networks=args.networks, seed=args.seed,
            protocol=protocol_from_args(args), method=args.method, interpolation=args.interpolation,
            anchor_dense=args.anchor_dense,
        )  # fmt: skip
        out = Path(args.out or args.table)
        table.write(out)
        summary.update(
            calibration=args.name or args.model,
            fit=cal.describe(),
            weight_bandwidth_gbps=cal.weight_bandwidth_gbps,
            spill_ms=cal.spill_ms,
            spill_above_mb=cal.spill_above_mb,
            footprint_ms=cal.footprint_ms,
            stream_ms_per_mb=cal.stream_ms_per_mb,
            stream_above_mb=cal.stream_above_mb,
            scale=cal.scale,
            offset_ms=cal.offset_ms,
            rmse_ms=cal.rmse_ms,
            max_rel_error=cal.max_rel_error,
            dense_ms=cost.with_calibration(cal).dense,
            dense_measured_ms=cal.dense_ms,
            written=str(out),
        )
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.model}: {summary['layers']} layers, {summary['groups']} channel groups priced by {args.table}; dense layer sum {cost.dense:.4g} ms")
    if not args.no_calibrate:
        print(
            f"calibration {summary['calibration']!r}: latency ≈ {summary['fit']} "
            f"over {args.networks} networks (rmse {summary['rmse_ms']:.3g} ms, max error {100 * summary['max_rel_error']:.1f}%); "
            f"dense {summary['dense_measured_ms']:.4g} ms measured, {summary['dense_ms']:.4g} ms predicted; "
            f"written to {summary['written']}"
        )
    return 0
