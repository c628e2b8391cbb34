"""`hwdsa bench`: run the benchmark suite's scripts and gather their results into one report.

The suite lives in the source checkout's `benchmarks/` folder (one script a benchmark, each with a
`main(argv)` that writes `<name>.{json,csv,md,png}` under its output folder). `hwdsa bench --list` shows
them, `hwdsa bench NAME -- ARGS` runs one, and `hwdsa bench --report` writes `REPORT.md`, which puts every
result table and plot of the results folder on one page.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
from pathlib import Path

from hwdsa._io import write_text_atomic
from hwdsa.errors import ConfigError

REPORT_NAME = "REPORT.md"


def default_benchmarks_dir() -> Path:
    """`benchmarks/` beside the package in a source checkout (an editable install keeps it there)."""
    return Path(__file__).resolve().parents[2] / "benchmarks"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="benchmark to run (see --list)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark, after `--`")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--report", action="store_true", help=f"write {REPORT_NAME} from the results folder")
    p.add_argument("--benchmarks-dir", type=Path, default=None, help="the suite's folder (default: the checkout's)")
    p.add_argument("--results", type=Path, default=None, help="results folder (default: BENCHMARKS_DIR/results)")


def list_benchmarks(folder: Path) -> dict[str, str]:
    """Benchmark name → the first line of its docstring, read without importing the script."""
    if not folder.is_dir():
        raise ConfigError(
            f"no benchmarks folder at {folder}: the suite ships with the source checkout "
            "(git clone, then `pip install -e .`), or pass --benchmarks-dir"
        )
    out: dict[str, str] = {}
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        out[path.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
    return out


def run_benchmark(folder: Path, name: str, argv: list[str]) -> int:
    """Import `folder/name.py` and call its `main(argv)`."""
    known = list_benchmarks(folder)
    if name not in known:
        raise ConfigError(f"unknown benchmark {name!r}; available: {', '.join(known) or 'none'}")
    spec = importlib.util.spec_from_file_location(f"benchmarks.{name}", folder / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    # As `python benchmarks/NAME.py` would: the suite's own helpers (`_runs.py`) import from its folder.
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec.loader.exec_module(module)
    main = getattr(module, "main", None)
    if main is None:
        raise ConfigError(f"benchmark {name!r} has no main(argv) function")
    return int(main(argv) or 0)


def build_report(results: Path) -> Path:
    """Write `results/REPORT.md`: each result's Markdown table, followed by its plots."""
    if not results.is_dir():
        raise ConfigError(f"no results folder at {results}: run a benchmark first (hwdsa bench --list)")
    sections = []
    tables = [md for md in sorted(results.glob("*.md")) if md.name not in (REPORT_NAME, "README.md")]
    # a plot belongs to the result whose name is the longest start of its own (`latency_budget-<host>.png` to
    # `latency_budget-<host>.md`, not to `latency_budget.md`)
    owner = {png.name: max((md.stem for md in tables if png.stem.startswith(md.stem)), key=len, default=None) for png in results.glob("*.png")}
    for md in tables:
        # one level below the report's title, whatever level each result starts at
        lines = md.read_text(encoding="utf-8").strip().splitlines()
        top = min((len(x) - len(x.lstrip("#")) for x in lines if x.startswith("#")), default=2)
        body = "\n".join("#" * (2 - top) + x if x.startswith("#") and top < 2 else x for x in lines)
        plots = sorted(name for name, stem in owner.items() if stem == md.stem)
        sections.append("\n\n".join([body, *(f"![{p}]({p})" for p in plots)]))
    if not sections:
        raise ConfigError(f"{results} holds no result tables (*.md): run a benchmark first (hwdsa bench --list)")
    out = results / REPORT_NAME
    write_text_atomic(out, "# hwdsa benchmark report\n\n" + "\n\n---\n\n".join(sections) + "\n")
    return out


def run(args: argparse.Namespace) -> int:
    folder = args.benchmarks_dir or default_benchmarks_dir()
    results = args.results or folder / "results"
    if args.list:
        for name, summary in list_benchmarks(folder).items():
            print(f"{name:24s} {summary}")
        return 0
    if args.report:
        print(build_report(results))
        return 0
    if args.name is None:
        raise ConfigError("name a benchmark to run (hwdsa bench --list), or pass --report")
    argv = args.args[1:] if args.args[:1] == ["--"] else args.args
    return run_benchmark(folder, args.name, argv)
