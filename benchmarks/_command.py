"""The command line a result file records: what reproduces it, without paths of the machine that ran it."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

#: Flags whose value belongs to the machine that ran the benchmark (a folder, its process ids), and what a reader
#: substitutes.
_MACHINE_PATHS = {"--data-root": "PATH/TO/cifar10", "--work": "WORK", "--pause": '"$(pgrep -f TRAINING)"'}


def reproduce_command(script: str, argv: Sequence[str] | None = None) -> str:
    """`python benchmarks/<script> <flags>` with every machine-specific value replaced by a placeholder."""
    args = list(sys.argv[1:] if argv is None else argv)
    out: list[str] = []
    skip_next = False
    for i, arg in enumerate(args):
        if skip_next:
            skip_next = False
            continue
        flag, eq, value = arg.partition("=")
        if flag in _MACHINE_PATHS:
            out.append(f"{flag} {_MACHINE_PATHS[flag]}")
            skip_next = not eq and i + 1 < len(args)
        elif os.path.isabs(arg):
            out.append(Path(arg).name)
        else:
            out.append(arg)
    return " ".join(["python", f"benchmarks/{Path(script).name}", *out])


def portable_path(path: str | os.PathLike[str]) -> str:
    """A file as a result file records it: relative to the working folder when inside it (a table in the
    repository), else its file name (a table in the per-user cache)."""
    rel = os.path.relpath(path)
    return Path(path).name if rel.startswith("..") else rel


def portable_args(args: object) -> dict[str, object]:
    """An argparse namespace as a result file records it: machine folders as their placeholders, any other
    absolute path (a table in the per-user cache) as its file name."""
    flags = {flag.lstrip("-").replace("-", "_"): placeholder for flag, placeholder in _MACHINE_PATHS.items()}

    def portable(v: object) -> object:
        if isinstance(v, str) and os.path.isabs(v):
            return portable_path(v)
        if isinstance(v, list):
            return [portable(x) for x in v]
        return v

    return {k: (flags[k] if k in flags and v is not None else portable(v)) for k, v in vars(args).items()}

