"""The `hwdsa` command: one sub-command per step of the user's loop (profile → fit → prune → export → bench)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from tqdm.contrib.logging import logging_redirect_tqdm

from hwdsa._version import __version__
from hwdsa.errors import HwdsaError

# verb → (module, one-line help). Modules are imported only when their verb runs or help is built.
VERBS: dict[str, tuple[str, str]] = {
    "profile": ("hwdsa.cli.profile", "measure per-layer latency on this device into a lookup table"),
    "fit": ("hwdsa.cli.fit", "fit and calibrate a latency cost model to a lookup table"),
    "prune": ("hwdsa.cli.prune", "prune a network to a FLOPs, parameter or latency budget with DSA"),
    "export": ("hwdsa.cli.export", "export a pruned network to ONNX, ONNX Runtime and TensorRT, verified and timed"),
    "bench": ("hwdsa.cli.bench", "run the benchmark suite and write its report"),
    "info": ("hwdsa.cli.info", "show this host's device fingerprint, backends and cached latency tables"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hwdsa", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hwdsa {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, (module_name, help_text) in VERBS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(verb, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 success, 2 bad input, 1 interrupted)."""
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.quiet else (logging.INFO if args.verbose <= 1 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        with logging_redirect_tqdm():
            return int(args._run(args))
    except HwdsaError as exc:
        print(f"hwdsa {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hwdsa {args.verb}: interrupted (rerun with --resume to continue where it stopped)", file=sys.stderr)
        return 1
