"""The command-line flags of a backend and of the timing protocol, shared by the edge agent
(`python -m hwdsa.profilers`) and `hwdsa profile` / `hwdsa fit`; the standard library only, so the agent
still runs on a board without torch."""

from __future__ import annotations

import argparse
import json
from typing import Any

from hwdsa.errors import ConfigError

from .backend import list_backends
from .base import TimingProtocol


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
    """--backend and its options, --out, --no-resume and the timing protocol (the agent's and `hwdsa profile`'s).

    The backend names listed in the help are the registry's (third-party ones included); a name that is
    not registered is refused by the registry when the backend is made, with the valid names."""
    names = ", ".join(info.name for info in list_backends())
    p.add_argument(
        "--backend", required=default is None, default=default,
        help=f"backend name: {names} (which of them can run here: python -m hwdsa.profilers list-backends)" + (f"; default {default}" if default else ""),
    )  # fmt: skip
    add_backend_option_arguments(p)
    p.add_argument("--out", required=True, help="the latency table to write (.csv)")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming an interrupted run")
    add_protocol_arguments(p)


def protocol_from_args(args: argparse.Namespace) -> TimingProtocol:
    """The `TimingProtocol` of the flags `add_protocol_arguments` added."""
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
    """The backend's keyword options from the flags `add_backend_option_arguments` added (only those given)."""
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
