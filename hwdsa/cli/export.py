"""`hwdsa export`: a pruned network (from `hwdsa prune`) to ONNX, ONNX Runtime and TensorRT, verified and timed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hwdsa.errors import ConfigError
from hwdsa.export.formats import FORMATS
from hwdsa.profilers.base import PRECISIONS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="pruned.pt written by `hwdsa prune` (or its output folder)")
    p.add_argument("--out", default=None, help="output folder (default: <run>/export)")
    p.add_argument(
        "--formats", nargs="+", default=None, choices=FORMATS,
        help="default: all of them, leaving out (with the reason) a backend not installed here; named "
        "explicitly, a missing backend is an error unless --skip-unavailable",
    )
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="precision of the artefacts (default fp32; int8 is calibrated on training images)")
    p.add_argument("--batch-size", type=int, default=1, help="batch the artefacts are timed (and engines optimised) at")
    p.add_argument("--data", dest="dataset", help="data set for verification and INT8 calibration (default: the one it was pruned on)")
    p.add_argument("--data-root")
    p.add_argument("--calibration-samples", type=int, default=512, help="training images INT8 is calibrated on")
    p.add_argument("--verify-samples", type=int, default=256, help="test images every artefact must match PyTorch on")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument(
        "--threads", type=int, default=None,
        help="ONNX Runtime intra-op threads (default: the latency table's, else ONNX Runtime's own)",
    )
    p.add_argument(
        "--latency-table", default=None,
        help="latency table to predict the pruned network's latency with (default: the one the run was pruned with)",
    )
    p.add_argument("--warmup", type=int, default=10, help="timing protocol: discarded runs first (default 10)")
    p.add_argument("--repeats", type=int, default=50, help="timing protocol: timed runs per attempt (default 50)")
    p.add_argument("--skip-unavailable", action="store_true", help="report backends not installed here (e.g. TensorRT) as skipped instead of failing")
    p.add_argument("--json", action="store_true", help="print report.json instead of a table")


def _ms(value: float | None) -> str | None:
    return None if value is None else f"{value:.4g}"


def run(args: argparse.Namespace) -> int:
    import torch

    from hwdsa.cli._common import format_table
    from hwdsa.data import load_dataset, make_loader
    from hwdsa.export import export_model
    from hwdsa.export.onnx import DEFAULT_OPSET
    from hwdsa.export.targets import latency_targets_from_run
    from hwdsa.profilers.base import TimingProtocol
    from hwdsa.surgery import load_pruned

    for flag, value in (("--batch-size", args.batch_size), ("--calibration-samples", args.calibration_samples),
                        ("--verify-samples", args.verify_samples)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1; got {value}")
    try:
        protocol = TimingProtocol(warmup=args.warmup, repeats=args.repeats)
    except ValueError as exc:
        raise ConfigError(f"--warmup/--repeats: {exc}") from None
    path = Path(args.model)
    if path.is_dir():
        path = path / "pruned.pt"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; pass the pruned.pt written by `hwdsa prune` or its folder")
    model, plan = load_pruned(path)
    extra = torch.load(path, map_location="cpu", weights_only=True).get("extra", {})
    dataset = args.dataset or extra.get("dataset")
    if not dataset:
        raise ConfigError("which data set verifies the export? pass --data (and --data-root)")
    targets = latency_targets_from_run(path.parent, plan, latency_table=args.latency_table)
    threads = args.threads if args.threads is not None else targets.table_options.get("num_threads") or None

    splits = load_dataset(dataset, args.data_root or extra.get("data_root") or None, subset_per_class=max(1, args.calibration_samples // 10))
    verify = torch.cat([x for x, _ in make_loader(splits.test, 64, train=False)])[: args.verify_samples]
    calib = torch.cat([x for x, _ in make_loader(splits.train, 128, train=False)])[: args.calibration_samples]
    out = Path(args.out) if args.out else path.parent / "export"
    reports = export_model(
        model.eval(),
        out,
        input_shape=(args.batch_size, *splits.input_shape),
        formats=list(args.formats or FORMATS),
        precision=args.precision,
        calibration_data=calib if args.precision == "int8" else None,
        verify_batches=list(torch.split(verify, 64)),
        name=plan.model_name,
        opset=args.opset or DEFAULT_OPSET,
        threads=threads,
        protocol=protocol,
        skip_unavailable=args.skip_unavailable or args.formats is None,
        latency_targets=targets,
    )
    if args.json:
        print(json.dumps(json.loads((out / "report.json").read_text(encoding="utf-8")), indent=2))
        return 0
    rows = []
    notes = []
    for r in reports:
        if r.is_skipped:
            rows.append([r.backend, r.precision, "skipped", None, None, None, None, None, None])
            notes.append(f"{r.backend} skipped: {r.skipped_reason}")
            continue
        c = r.comparison
        rows.append([
            r.backend, r.precision, _ms(r.measured_latency_ms),
            _ms(r.predicted_latency_ms), None if r.ratio_to_prediction is None else f"{r.ratio_to_prediction:.2f}",
            _ms(r.budget_latency_ms), None if r.ratio_to_budget is None else f"{r.ratio_to_budget:.2f}",
            None if c is None else f"{c.max_abs_error:.2e}", Path(r.artefact_path).name,
        ])
        if r.fp32_latency_ms is not None and r.speedup_over_fp32 is not None:
            budget = "" if r.budget_latency_ms is None else f"; against the budget {r.budget_latency_ms:.4g} ms: {r.precision} " \
                f"{r.ratio_to_budget:.2f}, fp32 {r.fp32_latency_ms / r.budget_latency_ms:.2f}"
            verdict = "faster" if r.speedup_over_fp32 >= 1.0 else "SLOWER"
            notes.append(
                f"{r.backend}: {r.precision} is {verdict} than fp32 on this device: {_ms(r.measured_latency_ms)} ms vs "
                f"{r.fp32_latency_ms:.4g} ms ({r.speedup_over_fp32:.2f}x){budget}"
                + ("" if r.speedup_over_fp32 >= 1.0 else f"; ship fp32 here")
            )
        if r.measured is not None:
            for label, note, value in (("prediction", r.prediction_note, r.predicted_latency_ms),
                                       ("budget", r.budget_note, r.budget_latency_ms)):
                if value is None and note:
                    notes.append(f"{r.backend}: no {label}: {note}")
    header = [
        "backend", "precision", "measured ms", "predicted ms", "measured/predicted", "budget ms", "measured/budget",
        "max |Δ| vs PyTorch", "artefact",
    ]
    print(format_table(rows, header))
    timed = next((r for r in reports if r.measured is not None), None)
    if timed is not None:
        print(f"timed on {timed.device} by the profilers' {timed.timing_backend} backend (median of the timing protocol)")
    for note in dict.fromkeys(notes):
        print(f"note: {note}")
    print(f"report: {out / 'report.json'}")
    return 0
