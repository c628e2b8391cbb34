"""The installed distribution: lazy public names, the folder mapping, the README's commands and the CLI verbs."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import hwdsa
from hwdsa.cli import VERBS, build_parser

REPO = Path(__file__).resolve().parents[1]


def test_every_public_name_resolves_to_its_module_object() -> None:
    for name, module in hwdsa._LAZY.items():
        assert getattr(hwdsa, name) is getattr(importlib.import_module(module), name), name
    assert set(hwdsa.__all__) == {"__version__", *hwdsa._LAZY}


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hwdsa.nope  # noqa: B018


def test_import_hwdsa_loads_no_heavy_library() -> None:
    code = "import sys, hwdsa, hwdsa.profilers; print(sorted(m for m in ('torch', 'onnxruntime', 'tensorrt') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.strip() == "[]"


def test_folders_are_mapped_into_the_namespace_not_top_level(tmp_path: Path) -> None:
    # run outside the checkout, as a user would: the repository root must not be what makes this work
    code = (
        "import importlib.util, hwdsa.lut, hwdsa.profilers; "
        "print(hwdsa.lut.__file__); print(hwdsa.profilers.__file__); "
        "print(importlib.util.find_spec('profilers'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path, timeout=120)
    lut_file, profilers_file, top_level = out.stdout.strip().splitlines()
    assert Path(lut_file).parent == REPO / "hwdsa" / "lut" and Path(profilers_file).parent == REPO / "hwdsa" / "profilers"
    assert top_level == "None"  # no generic top-level name of ours in site-packages (a PyPI `lut` exists)


def _readme_commands() -> list[str]:
    """The fenced bash blocks before the README's first paragraph, one command line each."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    head = text.split("\n\n", 3)
    blocks = re.findall(r"```bash\n(.*?)\n```", "\n\n".join(head[:3]), flags=re.S)
    return [b.strip() for b in blocks]


def _normalise(command: str) -> list[str]:
    """Split on `&&` and drop pip's quiet flag, which only changes what is printed."""
    return [" ".join(t for t in shlex.split(part) if t != "-q") for part in command.split("&&")]


def test_readme_starts_with_the_two_fresh_machine_commands() -> None:
    setup_and_run, setup_and_test = _readme_commands()
    assert setup_and_run.startswith("python3 -m venv .venv") and setup_and_run.endswith(".venv/bin/hwdsa prune")
    assert setup_and_test.startswith("python3 -m venv .venv") and "pytest" in setup_and_test


def test_ci_runs_the_readme_test_command() -> None:
    _, setup_and_test = _readme_commands()
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    ci_lines = [line for line in ci.splitlines() if line and not line.startswith("#")]
    readme_steps = _normalise(setup_and_test)
    # .ci/run makes the venv on its own line (and upgrades pip between), then runs the rest verbatim
    assert readme_steps[0] == "python3 -m venv .venv" and readme_steps[0] in ci_lines
    assert any(_normalise(line) == readme_steps[1:] for line in ci_lines), "README's test command and .ci/run differ"


def test_readme_default_job_needs_no_data_path() -> None:
    from hwdsa.cli.prune import config_from_args

    cfg = config_from_args(build_parser().parse_args(["prune"]))
    assert cfg.data_root is None and cfg.dataset in {"mnist", "digits"}
    # the main job is the hardware-aware one: half the dense latency measured here, verified by timing
    assert [(b.cost, b.fraction, b.table) for b in cfg.budgets] == [("latency", 0.5, None)]
    assert cfg.latency_table is None and cfg.verifies_latency


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_has_help(verb: str) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([verb, "--help"])
    assert exc.value.code == 0
