"""`hwdsa bench`: listing, running a benchmark script with its arguments, and the gathered report."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwdsa.cli import main
from hwdsa.cli.bench import default_benchmarks_dir, list_benchmarks

SCRIPT = '''"""Writes a one-row table and a plot.

More text that the listing does not show.
"""
import sys
from pathlib import Path


def main(argv):
    out = Path(argv[argv.index("--out") + 1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "toy.md").write_text("# toy\\n\\n| n |\\n|---|\\n| " + argv[-1] + " |\\n")
    (out / "toy.png").write_bytes(b"\\x89PNG")
    return 0
'''


@pytest.fixture()
def suite(tmp_path: Path) -> Path:
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "toy.py").write_text(SCRIPT, encoding="utf-8")
    (folder / "_helpers.py").write_text("X = 1\n", encoding="utf-8")
    return folder


def test_the_checkout_ships_its_suite() -> None:
    names = list_benchmarks(default_benchmarks_dir())
    assert {"dsa_vs_uniform", "step_time"} <= set(names) and all(names.values())


def test_list_run_and_report(suite: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--benchmarks-dir", str(suite), "--list"]) == 0
    listing = capsys.readouterr().out
    assert "toy" in listing and "Writes a one-row table" in listing and "_helpers" not in listing

    results = suite / "results"
    assert main(["bench", "--benchmarks-dir", str(suite), "toy", "--", "--out", str(results), "42"]) == 0
    assert "| 42 |" in (results / "toy.md").read_text()

    assert main(["bench", "--benchmarks-dir", str(suite), "--report"]) == 0
    report = (results / "REPORT.md").read_text()
    assert report.startswith("# hwdsa benchmark report") and "\n## toy\n" in report and "| 42 |" in report and "![toy.png](toy.png)" in report


def test_a_plot_goes_with_the_result_named_most_like_it(suite: Path) -> None:
    """`toy.md` and another host's `toy-abc.md`: each gets its own plot only."""
    results = suite / "results"
    results.mkdir()
    for stem in ("toy", "toy-abc"):
        (results / f"{stem}.md").write_text(f"## {stem}\n")
        (results / f"{stem}.png").write_bytes(b"")
    assert main(["bench", "--benchmarks-dir", str(suite), "--report"]) == 0
    parts = (results / "REPORT.md").read_text().split("---")
    toy = next(p for p in parts if "## toy\n" in p)
    other = next(p for p in parts if "## toy-abc\n" in p)
    assert "![toy.png](toy.png)" in toy and "toy-abc.png" not in toy and "![toy-abc.png](toy-abc.png)" in other


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--benchmarks-dir", "{suite}/missing", "--list"], "no benchmarks folder"),
        (["--benchmarks-dir", "{suite}", "nope"], "unknown benchmark 'nope'; available: toy"),
        (["--benchmarks-dir", "{suite}", "--report"], "no results folder"),
        (["--benchmarks-dir", "{suite}"], "name a benchmark to run"),
    ],
)
def test_bad_requests_say_what_to_do(suite: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *(a.format(suite=suite) for a in argv)]) == 2
    assert message in capsys.readouterr().err
