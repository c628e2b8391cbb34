"""The edge agent: `python -m hwdsa.profilers {list-backends,run,bundle,profile}`.

On the board (standard library + numpy + one backend; no torch, no pandas; install hwdsa there with
`pip install --no-deps hwdsa`, which pulls in none of the host dependencies)::

    python -m hwdsa.profilers list-backends
    python -m hwdsa.profilers run BUNDLE_DIR --backend onnxruntime --threads 4 --out table.csv

`run` is resumable: after Ctrl-C or a kill, the same command measures only what is missing. On the
host (with torch), `bundle` turns a specs file (`hwdsa.profilers.write_specs`) into the bundle to copy
to the board, and `profile` measures a specs file directly with any backend.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from hwdsa.errors import ConfigError, HwdsaError

from .base import TimingProtocol
from .tablefile import partial_path


def add_protocol_arguments(p: argparse.ArgumentParser) -> None:
    """The timing-protocol flags (read them with `protocol_from_args`)."""
    d = TimingProtocol()
    g = p.add_argument_group("timing protocol")
    g.add_argument("--warmup", type=int, default=d.warmup, help=f"discarded runs first (default {d.warmup})")
    g.add_argument("--repeats", type=int, default=d.repeats, help=f"timed runs per attempt (default {d.repeats})")
    g.add_argument(
        "--max-rel-iqr", type=float, default=d.max_rel_iqr,
        help=f"re-measure when (q3-q1)/median exceeds this (default {d.max_rel_iqr})",
    )  # fmt: skip
    g.add_argument("--max-attempts", type=int, default=d.max_attempts, help=f"attempts per entry (default {d.max_attempts})")
    g.add_argument(
        "--min-run-ms", type=float, default=d.min_run_ms,
        help=f"shorter runs are repeated inside one sample (default {d.min_run_ms} ms)",
    )  # fmt: skip
    g.add_argument(
        "--rounds", type=int, default=d.rounds,
        help="measurements at different times, the quietest (lowest median) kept: passes over the table when "
        f"profiling, interleaved rounds over the networks when calibrating (default {d.rounds})",
    )  # fmt: skip


def add_backend_option_arguments(p: argparse.ArgumentParser, *, from_table: bool = False) -> None:
    """--threads, --device, --backend-option (read them with `backend_options_from_args`); `from_table`:
    unset flags fall back to what the table being calibrated recorded (`hwdsa fit`)."""
    if from_table:
        threads, device, option = "default: the ones the table was measured with", "", " (default: the table's)"
    else:
        threads, device, option = "CPU backends; default: the library's", "; default 0", ""
    p.add_argument("--threads", type=int, default=None, help=f"intra-op threads ({threads})")
    p.add_argument("--device", type=int, default=None, help=f"GPU index (CUDA backends{device})")
    p.add_argument(
        "--backend-option", action="append", default=[], metavar="KEY=VALUE",
        help=f"another backend option{option}, VALUE as JSON (e.g. workspace_bytes=2147483648); repeatable",
    )  # fmt: skip


def add_backend_arguments(p: argparse.ArgumentParser, *, default: str | None) -> None:
    """--backend and its options, --out, --no-resume and the timing protocol (the agent's and `hwdsa profile`'s)."""
    p.add_argument("--backend", required=default is None, default=default, help="backend name (see list-backends)")
    add_backend_option_arguments(p)
    p.add_argument("--out", required=True, help="the latency table to write (.csv)")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming an interrupted run")
    add_protocol_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hwdsa.profilers", description="Profile per-layer latency into an hwdsa latency table."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    # The same flags after the sub-command (`run ... -q`); SUPPRESS keeps them from resetting the above.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list-backends", parents=[common], help="list the backends and whether each can run here")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("run", parents=[common], help="time a bundle's ONNX layers on this device (the edge agent)")
    p.add_argument("bundle", help="bundle directory made on the host by `bundle`")
    add_backend_arguments(p, default="onnxruntime")

    p = sub.add_parser("bundle", parents=[common], help="host: export a specs file's layers to a bundle for a board (needs torch)")
    p.add_argument("specs", help="specs file (JSON, from hwdsa.profilers.write_specs)")
    p.add_argument("--out", required=True, help="bundle directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle directory")

    p = sub.add_parser("profile", parents=[common], help="host: measure a specs file's layers with any backend")
    p.add_argument("specs", help="specs file (JSON, from hwdsa.profilers.write_specs)")
    add_backend_arguments(p, default=None)
    return parser


def protocol_from_args(args: argparse.Namespace) -> TimingProtocol:
    try:
        return TimingProtocol(
            warmup=args.warmup,
            repeats=args.repeats,
            max_rel_iqr=args.max_rel_iqr,
            max_attempts=args.max_attempts,
            min_run_ms=args.min_run_ms,
            rounds=args.rounds,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def backend_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.threads is not None:
        options["num_threads"] = args.threads
    if args.device is not None:
        options["device"] = args.device
    for item in args.backend_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--backend-option takes KEY=VALUE; got {item!r}")
        try:
            options[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = value  # a bare string
    return options


@contextlib.contextmanager
def _redirect_progress() -> Iterator[None]:
    """Keep log lines from tearing the progress bar (when tqdm is installed)."""
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ImportError:
        yield
        return
    with logging_redirect_tqdm():
        yield


def _summary(out: str, n: int) -> str:
    from .tablefile import read_table

    meta, entries = read_table(out)
    noisy = sum(m.noisy for _, m in entries)
    return (
        f"wrote {out}: {meta['rows']} rows ({n} requested) on {meta['device']} with {meta['backend']}, "
        f"{meta['precision']}, batch {meta['batch_size']}" + (f"; {noisy} noisy" if noisy else "")
    )


def _cmd_list(args: argparse.Namespace) -> int:
    from .backend import list_backends

    infos = list_backends(check_availability=True)
    if args.json:
        print(json.dumps([{"name": i.name, "description": i.description, "available": i.available, "reason": i.reason} for i in infos], indent=1))
        return 0
    width = max(len(i.name) for i in infos)
    for i in infos:
        status = "available" if i.available else f"unavailable: {i.reason}"
        print(f"{i.name:<{width}}  {i.description}  [{status}]")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .bundle import read_bundle, run_bundle

    bundle = read_bundle(args.bundle)
    protocol = protocol_from_args(args)
    with _redirect_progress():
        items = run_bundle(
            bundle, args.backend, protocol, out_path=args.out, resume=not args.no_resume, **backend_options_from_args(args)
        )
    print(_summary(args.out, len(items)))
    return 0


def _cmd_bundle(args: argparse.Namespace) -> int:
    from .bundle import write_bundle
    from .specs import read_specs

    bundle = write_bundle(read_specs(args.specs), args.out, overwrite=args.overwrite)
    print(f"wrote bundle {bundle.path}: {len(bundle.entries)} layer(s), {bundle.precision}, batch {bundle.batch_size}")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from .backend import get_backend
    from .runner import profile_specs
    from .specs import read_specs

    specs = read_specs(args.specs)
    backend = get_backend(args.backend, **backend_options_from_args(args))
    with _redirect_progress():
        items = profile_specs(specs, backend, protocol_from_args(args), out_path=args.out, resume=not args.no_resume)
    print(_summary(args.out, len(items)))
    return 0


_COMMANDS = {"list-backends": _cmd_list, "run": _cmd_run, "bundle": _cmd_bundle, "profile": _cmd_profile}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 for an HwdsaError, 130 when interrupted)."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _COMMANDS[args.command](args)
    except HwdsaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        where = f" in {partial_path(out)}" if out and args.command in ("run", "profile") else ""
        print(f"interrupted: finished entries are saved{where}; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
