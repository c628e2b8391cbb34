"""`hwdsa fit`: not available yet (its issue has not landed)."""

from __future__ import annotations

import argparse

from hwdsa.errors import HwdsaError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    raise HwdsaError("'hwdsa fit' is not implemented yet in this version; see the issue tracker")
