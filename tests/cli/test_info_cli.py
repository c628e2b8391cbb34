"""`hwdsa info`: this host's fingerprint, its backends, and which cached tables were measured on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hwdsa.cli import main
from hwdsa.lut.cache import cached_table_path
from hwdsa.profilers.base import LayerSpec, Measurement
from hwdsa.profilers.device import cpu_description, cpu_fingerprint, describe_fingerprint, fingerprint_device_name, fingerprint_id
from hwdsa.profilers.tablefile import make_meta, write_table

ITEMS = [(LayerSpec("conv", 4, 8, kernel=(3, 3), padding=(1, 1), in_size=(8, 8)), Measurement(0.5, 0.45, 0.55, 0.4, 30, 1, False, 0.2))]


def _table(path: Path, fingerprint: dict[str, Any] | None, *, device: str | None = None) -> Path:
    device = device or (fingerprint_device_name(fingerprint) if fingerprint else cpu_description())
    meta = make_meta(device=device, backend="onnxruntime", precision="fp32", batch_size=1,
                     backend_options={"num_threads": 2}, fingerprint=fingerprint)  # fmt: skip
    return write_table(path, ITEMS, meta)


def _edited(fp: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint of a machine with the same CPU name but AVX-512 the other way round and twice the cores."""
    return {**fp, "logical_cores": 2 * fp["logical_cores"], "isa": {**fp["isa"], "avx512f": not fp["isa"]["avx512f"]}}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("HWDSA_CACHE", str(tmp_path / "cache"))
    here = cpu_fingerprint()
    other = _edited(here)
    return {
        "here": _table(cached_table_path(fingerprint_id(here), "onnxruntime", "fp32", 1, threads=2), here),
        "other": _table(cached_table_path(fingerprint_id(other), "onnxruntime", "fp32", 1, threads=2), other, device=cpu_description()),
    }


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["info", "--json", *argv]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_json_reports_this_host_and_which_cached_table_matches(cache: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    info = _json(capsys, "--no-backends")
    here = cpu_fingerprint()
    assert info["cpu"]["fingerprint"] == here and info["cpu"]["fingerprint_id"] == fingerprint_id(here)
    assert info["cpu"]["description"] == describe_fingerprint(here)
    assert info["cache"]["dir"] == str(cache["here"].parent) and info["cache"]["exists"]
    tables = {Path(t["path"]): t for t in info["cache"]["tables"]}
    assert set(tables) == {cache["here"], cache["other"]}
    mine, other = tables[cache["here"]], tables[cache["other"]]
    assert mine["matches_host"] and mine["differences"] == [] and mine["fingerprint_id"] == fingerprint_id(here)
    assert mine["threads"] == 2 and mine["backend"] == "onnxruntime" and mine["compared_by"] == "fingerprint"
    assert not other["matches_host"]
    n = here["logical_cores"]
    flag = "absent in the table, present here" if here["isa"]["avx512f"] else "present in the table, absent here"
    assert other["differences"] == [f"cores: {2 * n} in the table, {n} here", f"ISA: avx512f {flag}"]
    assert info["backends"] is None and info["tables"] == []
    if info["cuda"]["devices"]:  # pragma: no cover - a machine with an NVIDIA GPU
        assert info["cuda"]["unavailable"] is None and info["cuda"]["devices"][0]["fingerprint"]["kind"] == "cuda"
    else:
        assert "NVIDIA" in info["cuda"]["unavailable"] or "CUDA" in info["cuda"]["unavailable"]


def test_text_output(cache: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--no-backends"]) == 0
    out = capsys.readouterr().out
    here = cpu_fingerprint()
    assert f"fingerprint {fingerprint_id(here)}" in out and here["model_name"] in out
    assert f"Table cache  {cache['here'].parent}" in out
    rows = {line.split()[0]: line for line in out.splitlines() if ".csv  " in line}  # table rows
    assert rows[cache["here"].name].rstrip().endswith("yes")
    assert rows[cache["other"].name].rstrip().endswith("no: 2 differences (below)")
    n = here["logical_cores"]
    assert f"{cache['other'].name} was measured on another device:\n    - cores: {2 * n} in the table, {n} here\n    - ISA: avx512f" in out
    assert "CUDA" in out


def test_backends_with_versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    monkeypatch.setenv("HWDSA_CACHE", str(tmp_path / "empty"))
    info = _json(capsys)
    backends = {b["name"]: b for b in info["backends"]}
    assert {"torch_cpu", "onnxruntime", "tensorrt"} <= set(backends)
    assert backends["torch_cpu"]["available"] and backends["torch_cpu"]["versions"] == {"torch": str(torch.__version__)}
    for b in backends.values():
        assert b["available"] == (b["reason"] is None)
        assert b["available"] or b["versions"] == {}
    assert info["cache"]["tables"] == [] and not info["cache"]["exists"]
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch_cpu" in out and f"torch {torch.__version__}" in out and "no tables yet" in out


def test_explicit_tables_and_old_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HWDSA_CACHE", str(tmp_path / "empty"))
    old_same = _table(tmp_path / "old_same.csv", None, device=cpu_description())
    old_other = _table(tmp_path / "old_other.csv", None, device="AMD EPYC 7B13 (64 cores)")
    junk = tmp_path / "junk.csv"
    junk.write_text("nope\n")
    info = _json(capsys, "--no-backends", "--table", str(old_same), "--table", str(old_other), "--table", str(junk))
    same, other, bad = info["tables"]
    assert same["matches_host"] and same["compared_by"] == "device name" and same["fingerprint_id"] is None
    assert not other["matches_host"] and "predates device fingerprints" in other["differences"][0]
    assert "not an hwdsa latency table" in bad["error"]
    assert main(["info", "--no-backends", "--table", str(old_same), "--table", str(junk)]) == 0
    out = capsys.readouterr().out
    assert "yes (by device name: the table has no fingerprint)" in out
    assert "junk.csv: unreadable:" in out and "not an hwdsa latency table" in out
