"""What the repository ships reads the same on any machine: no result, table note or README names a path
of the machine that produced it, or the developers' `../shared` folder, which a user's clone does not have."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Absolute paths of the machines that ran the benchmarks, and the developers' shared folder.
MACHINE_PATH = re.compile(r"(/work/|/tmp/|/root/|/home/[a-z]|\.\./shared|shared/data/)")
SHIPPED = [
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    *sorted(p for p in (REPO / "benchmarks" / "results").rglob("*") if p.suffix in (".md", ".json", ".csv")),
    *sorted((REPO / "hwdsa" / "lut" / "tables").glob("*.md")),
    *sorted((REPO / "benchmarks" / "dense").glob("*.json")),
]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_no_machine_path(path: Path) -> None:
    hits = [
        f"line {i}: {line.strip()[:160]}"
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if MACHINE_PATH.search(line)
    ]
    assert not hits, f"{path.relative_to(REPO)} names a path of one machine:\n" + "\n".join(hits[:5])
