"""`hwdsa export`: a pruned network (from `hwdsa prune`) to ONNX, ONNX Runtime and TensorRT, verified and timed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hwdsa.cli._common import format_table
from hwdsa.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="pruned.pt written by `hwdsa prune` (or its output folder)")
    p.add_argument("--out", default=None, help="output folder (default: <run>/export)")
    p.add_argument("--formats", nargs="+", default=["onnx", "onnxruntime", "tensorrt"], choices=["onnx", "onnxruntime", "tensorrt"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    p.add_argument("--batch-size", type=int, default=1, help="batch the artefacts are timed (and engines optimised) at")
    p.add_argument("--data", dest="dataset", help="data set for verification and INT8 calibration (default: the one it was pruned on)")
    p.add_argument("--data-root")
    p.add_argument("--calibration-samples", type=int, default=512)
    p.add_argument("--skip-unavailable", action="store_true", help="leave out backends not installed here (e.g. TensorRT) instead of failing")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    import torch

    from hwdsa.data import load_dataset, make_loader
    from hwdsa.export import export_model
    from hwdsa.export.tensorrt import is_available as tensorrt_available
    from hwdsa.surgery import load_pruned

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
    splits = load_dataset(dataset, args.data_root or extra.get("data_root") or None, subset_per_class=max(1, args.calibration_samples // 10))
    verify = [x for x, _ in make_loader(splits.test, 64, train=False)][:4]
    calib = torch.cat([x for x, _ in make_loader(splits.train, 128, train=False)])[: args.calibration_samples]
    formats = list(args.formats)
    if args.skip_unavailable and "tensorrt" in formats and not tensorrt_available():
        formats.remove("tensorrt")
    out = Path(args.out) if args.out else path.parent / "export"
    reports = export_model(
        model.eval(),
        out,
        input_shape=(args.batch_size, *splits.input_shape),
        formats=formats,
        precision=args.precision,
        calibration_data=calib if args.precision == "int8" else None,
        verify_batches=verify,
        name=plan.model_name,
    )
    if args.json:
        print((out / "report.json").read_text())
        return 0
    rows = []
    for r in reports:
        m, c = r.measured, r.comparison
        rows.append([r.backend, r.precision, None if m is None else m.median_ms, None if c is None else c.max_abs_error, Path(r.artefact_path).name])
    print(format_table(rows, ["backend", "precision", "median ms", "max |Δ| vs PyTorch", "artefact"]))
    print(f"report: {out / 'report.json'}")
    return 0
