"""The edge agent `python -m hwdsa.profilers` (profilers/__main__.py), run where torch and pandas cannot load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _profiler_helpers import _BLOCK_PRELUDE, LIGHT, agent_code, check_measurement, conv, run_without_torch, tiny_specs
from hwdsa.profilers import read_table, write_bundle, write_specs
from hwdsa.profilers.__main__ import main
from hwdsa.profilers.tablefile import partial_path

LIGHT_FLAGS = ["--warmup", str(LIGHT.warmup), "--repeats", str(LIGHT.repeats), "--max-attempts", "2", "--min-run-ms", "0.05", "--rounds", "1"]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("agent") / "bundle"
    write_bundle(tiny_specs(), path)
    return path


def test_agent_runs_a_bundle_without_torch_or_pandas(bundle_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "table.csv"
    argv = ["run", str(bundle_dir), "--backend", "onnxruntime", "--threads", "1", "--out", str(out), *LIGHT_FLAGS]
    proc = run_without_torch(agent_code(argv), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED-BLOCKED=\n" in proc.stderr  # torch, pandas, onnx, tqdm were never imported
    assert f"wrote {out}: 6 rows" in proc.stdout
    meta, entries = read_table(out)
    assert [s for s, _ in entries] == tiny_specs()
    for _, m in entries:
        check_measurement(m, LIGHT)
    assert meta["backend"] == "onnxruntime" and meta["backend_options"] == {
        "provider": "CPUExecutionProvider", "num_threads": 1, "boundary_reorders": "subtract"
    }
    assert meta["channel_multiple"] == 8 and meta["protocol"]["rounds"] == 1
    assert "torch" not in meta["versions"] and "onnxruntime" in meta["versions"]
    # and the host reads it with the full validating reader
    from hwdsa.lut.table import LatencyTable

    assert len(LatencyTable.read(out, expect_backend="onnxruntime")) == 6


def test_agent_lists_backends_without_torch(tmp_path: Path) -> None:
    proc = run_without_torch(agent_code(["list-backends", "--json"]), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = {b["name"]: b for b in json.loads(proc.stdout)}
    assert listed["onnxruntime"]["available"] is True
    assert listed["torch_cpu"]["available"] is False and "PyTorch is not installed" in listed["torch_cpu"]["reason"]


def test_killed_agent_resumes(bundle_dir: Path, tmp_path: Path) -> None:
    """SIGKILL the agent mid-run (no chance to clean up), rerun the same command: only the rest is measured."""
    out = tmp_path / "table.csv"
    # Slow enough (>= 50 samples of >= 2 ms per entry) that the kill lands mid-run.
    argv = ["run", str(bundle_dir), "--threads", "1", "--out", str(out), "--warmup", "1", "--repeats", "50",
            "--min-run-ms", "2", "--max-attempts", "1", "--rounds", "1", "-q"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", _BLOCK_PRELUDE + agent_code(argv)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    partial = partial_path(out)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if partial.exists() and len(partial.read_bytes().splitlines()) >= 1 + 2:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the agent finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not out.exists()
    before = {json.dumps(json.loads(line)["spec"]): json.loads(line)["measurement"] for line in partial.read_bytes().splitlines()[1:] if line.strip()}  # noqa: E501
    assert 2 <= len(before) < 6
    rerun = run_without_torch(agent_code(argv), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    _, entries = read_table(out)
    assert [s for s, _ in entries] == tiny_specs()
    kept = {json.dumps(s.to_row()): m.to_row() for s, m in entries}
    for key, m in before.items():  # entries measured before the kill were not measured again
        assert kept[key] == m
    assert not partial.exists()


def test_host_commands_bundle_and_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    specs = write_specs(tmp_path / "specs.json", [conv(4, 8), conv(8, 8), conv(4, 8)])
    assert main(["bundle", str(specs), "--out", str(tmp_path / "b")]) == 0
    assert "wrote bundle" in capsys.readouterr().out
    assert main(["profile", str(specs), "--backend", "torch_cpu", "--threads", "1", "--out", str(tmp_path / "t.csv"), *LIGHT_FLAGS]) == 0
    assert "2 rows (2 requested)" in capsys.readouterr().out
    assert read_table(tmp_path / "t.csv")[0]["backend"] == "torch_cpu"


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["run", "{tmp}", "--out", "{tmp}/t.csv"], "is not a profile bundle"),
        (["run", "{bundle}", "--out", "{tmp}/t.csv", "--repeats", "2"], "repeats >= 3"),
        (["run", "{bundle}", "--out", "{tmp}/t.csv", "--backend", "nope"], "unknown backend 'nope'; valid names"),
        (["run", "{bundle}", "--out", "{tmp}/t.csv", "--backend-option", "oops"], "--backend-option takes KEY=VALUE"),
        (["run", "{bundle}", "--out", "{tmp}/t.csv", "--backend", "torch_cpu"], "does not run ONNX files"),
        (["profile", "{tmp}/missing.json", "--backend", "torch_cpu", "--out", "{tmp}/t.csv"], "no specs file at"),
    ],
)
def test_errors_are_one_line_and_exit_2(
    argv: list[str], match: str, bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.format(tmp=tmp_path, bundle=bundle_dir) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0]
