"""`hwdsa profile`: measure a model's layers over its channel grid on one backend, into a latency table.

Resumable (Ctrl-C, then the same command continues), with a progress bar and ETA. Writing into an
existing table of the same device and backend adds the model's entries to it (shared shapes are
measured once). Calibrate the table afterwards with `hwdsa fit`.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from hwdsa.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn


def parse_input_shape(text: str | None, model: str) -> tuple[int, int, int]:
    """`3,32,32` → (3, 32, 32); None → the model's default input shape."""
    from hwdsa.models import default_input_shape

    if text is None:
        return default_input_shape(model)
    try:
        parts = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise ConfigError(f"--input-shape takes C,H,W with positive sizes, e.g. 3,32,32; got {text!r}")
    return parts[0], parts[1], parts[2]


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--model, --input-shape, --num-classes (shared with `hwdsa fit`)."""
    p.add_argument("--model", required=True, help="model name (see hwdsa.models.list_models())")
    p.add_argument("--input-shape", help="C,H,W of one input (default: the model's, e.g. 3,32,32 for CIFAR models)")
    p.add_argument("--num-classes", type=int, default=10, help="classifier outputs (sets the last layer's size; default 10)")


def build_model(args: argparse.Namespace) -> tuple[nn.Module, tuple[int, int, int]]:
    """The zoo model named by --model (random weights: latency does not depend on them) and its input shape."""
    from hwdsa.models import create_model

    shape = parse_input_shape(args.input_shape, args.model)
    kwargs = {"in_channels": shape[0]} if args.model == "small_cnn" else {}
    return create_model(args.model, num_classes=args.num_classes, **kwargs), shape


def add_arguments(p: argparse.ArgumentParser) -> None:
    from hwdsa.lut.grid import GRID_MODES
    from hwdsa.profilers.base import PRECISIONS
    from hwdsa.profilers.cli_flags import add_backend_arguments

    add_model_arguments(p)
    add_backend_arguments(p, default=None)
    g = p.add_argument_group("grid (which channel counts are measured; see hwdsa.lut.grid.GridConfig)")
    g.add_argument("--grid", default="gpu", choices=GRID_MODES, help="gpu: every multiple (steps); cpu: geometric; full: every count (default gpu)")
    g.add_argument("--grid-multiple", type=int, default=8, help="step of the gpu grid, snap of the cpu grid (default 8)")
    g.add_argument("--grid-max-points", type=int, default=32, help="most multiples per axis in gpu mode (default 32)")
    g.add_argument("--cpu-points", type=int, default=10, help="geometric points per axis in cpu mode (default 10)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size the layers are timed at (default 1)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="precision the layers are timed at (default fp32; a backend refuses one it does not measure)")
    p.add_argument("--note", help="free text stored in the table's metadata (e.g. what else loaded the machine)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def run(args: argparse.Namespace) -> int:
    from hwdsa.lut.grid import GridConfig
    from hwdsa.lut.network import profile_network
    from hwdsa.profilers.cli_flags import backend_options_from_args, protocol_from_args
    from hwdsa.profilers.backend import get_backend

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1; got {args.batch_size}")
    model, shape = build_model(args)
    grid = GridConfig(args.grid, multiple=args.grid_multiple, max_points=args.grid_max_points, cpu_points=args.cpu_points)
    backend = get_backend(args.backend, **backend_options_from_args(args))
    table = profile_network(
        model,
        shape,
        backend,
        args.out,
        grid=grid,
        protocol=protocol_from_args(args),
        batch_size=args.batch_size,
        precision=args.precision,
        resume=not args.no_resume,
        network_name=args.model,
        extra_meta={"note": args.note} if args.note else None,
    )
    noisy = int(table.frame["noisy"].sum())
    summary = {
        "table": args.out,
        "rows": len(table),
        "noisy_rows": noisy,
        "device": table.meta.device,
        "backend": table.meta.backend,
        "precision": table.meta.precision,
        "batch_size": table.meta.batch_size,
        "networks": table.meta.networks,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"wrote {args.out}: {len(table)} rows ({noisy} noisy) for {', '.join(summary['networks'])} on {table.meta.device} "
        f"with {table.meta.backend}, {table.meta.precision}, batch {table.meta.batch_size}"
    )
    shape_flag = f" --input-shape {args.input_shape}" if args.input_shape else ""
    print(f"next: hwdsa fit {args.out} --model {args.model}{shape_flag}  (calibrates it against end-to-end timings)")
    return 0
