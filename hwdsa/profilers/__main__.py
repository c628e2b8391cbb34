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

from hwdsa.errors import HwdsaError

from .cli_flags import add_backend_arguments, backend_options_from_args, protocol_from_args
from .tablefile import partial_path


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
