"""The per-user table cache (lut/cache.py) and the device fingerprint of TableMeta (lut/table.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from hwdsa.errors import ConfigError, TableError
from hwdsa.lut.cache import cache_dir, cached_table_path, find_cached_tables, list_cached_tables
from hwdsa.lut.table import MAGIC, LatencyTable, TableMeta
from hwdsa.profilers.base import LayerSpec, Measurement
from hwdsa.profilers.device import cpu_description, cpu_fingerprint, fingerprint_device_name, fingerprint_id
from hwdsa.profilers.tablefile import make_meta, write_table

ITEMS = [(LayerSpec("conv", 4, 8, kernel=(3, 3), padding=(1, 1), in_size=(8, 8)), Measurement(0.5, 0.45, 0.55, 0.4, 30, 1, False, 0.2))]


def _xeon() -> dict[str, Any]:
    """This host's fingerprint as if measured on another machine: a Xeon with AVX-512 and AMX, 4 cores."""
    fp = cpu_fingerprint()
    return {
        **fp,
        "vendor": "GenuineIntel",
        "model_name": "Intel(R) Xeon(R) Platinum 8480+",
        "logical_cores": fp["logical_cores"] + 2,
        "isa": {**fp["isa"], "avx512f": not fp["isa"].get("avx512f", False)},
    }


def _write(path: Path, *, fingerprint: dict[str, Any] | None, device: str | None = None, threads: int = 1, **kw: Any) -> Path:
    if fingerprint is not None and device is None:
        device = fingerprint_device_name(fingerprint)
    meta = make_meta(device=device or cpu_description(), backend=kw.pop("backend", "onnxruntime"), precision="fp32",
                     batch_size=1, backend_options={"num_threads": threads}, fingerprint=fingerprint, **kw)  # fmt: skip
    return write_table(path, ITEMS, meta)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("HWDSA_CACHE", str(root))
    return root


class TestCacheDir:
    def test_env_var_first(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HWDSA_CACHE", str(tmp_path / "c"))
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert cache_dir() == tmp_path / "c"

    def test_then_xdg_then_home(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("HWDSA_CACHE", raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert cache_dir() == tmp_path / "xdg" / "hwdsa"
        monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        assert cache_dir() == tmp_path / "home" / ".cache" / "hwdsa"
        monkeypatch.delenv("XDG_CACHE_HOME")
        assert cache_dir() == tmp_path / "home" / ".cache" / "hwdsa"

    def test_not_created_by_asking(self, cache: Path) -> None:
        assert cache_dir() == cache and not cache.exists()
        assert list_cached_tables() == []


class TestCachedTablePath:
    def test_name(self, cache: Path) -> None:
        assert cached_table_path("7a9b5131f1f2", "onnxruntime", "fp32", 1) == cache / "onnxruntime-fp32-b1-7a9b5131f1f2.csv"
        assert cached_table_path("7a9b5131f1f2", "torch_cpu", "fp16", 8, threads=4, model="resnet18") == (
            cache / "torch_cpu-fp16-b8-t4-7a9b5131f1f2-resnet18.csv"
        )

    def test_unsafe_characters_are_replaced(self, cache: Path) -> None:
        assert cached_table_path("ab", "my backend", "fp32", 1, model="../x/y z").name == "my_backend-fp32-b1-ab-x_y_z.csv"

    @pytest.mark.parametrize(
        ("args", "match"),
        [
            (("ab", "onnxruntime", "fp64", 1), "precision"),
            (("ab", "onnxruntime", "fp32", 0), "batch_size"),
            (("ab", "onnxruntime", "fp32", 1, 0), "threads"),
            (("//", "onnxruntime", "fp32", 1), "fingerprint_id"),
        ],
    )
    def test_refuses(self, cache: Path, args: tuple[Any, ...], match: str) -> None:
        with pytest.raises(ConfigError, match=match):
            cached_table_path(*args)


class TestListing:
    def test_lists_readable_tables_and_skips_the_rest(self, cache: Path, caplog: pytest.LogCaptureFixture) -> None:
        here, there = cpu_fingerprint(), _xeon()
        mine = _write(cached_table_path(fingerprint_id(here), "onnxruntime", "fp32", 1, threads=1), fingerprint=here)
        other = _write(cached_table_path(fingerprint_id(there), "onnxruntime", "fp32", 1, threads=2), fingerprint=there, threads=2)
        (cache / "broken.csv").write_text("not a table\n")
        (cache / ".onnxruntime-fp32-b1-x.csv.abc.tmp").write_text("half")  # an atomic write in progress
        (cache / "notes.txt").write_text("ignored")
        with caplog.at_level(logging.WARNING, logger="hwdsa.lut.cache"):
            listed = list_cached_tables()
        assert sorted(p for p, _ in listed) == sorted([mine, other])
        assert "broken.csv" in caplog.text and "not an hwdsa latency table" in caplog.text
        by_path = dict(listed)
        assert by_path[mine].fingerprint_id == fingerprint_id(here) and by_path[other].fingerprint == there

    def test_find_filters_on_the_header(self, cache: Path) -> None:
        here = cpu_fingerprint()
        a = _write(cache / "a.csv", fingerprint=here)
        b = _write(cache / "b.csv", fingerprint=here, threads=4, backend="torch_cpu")
        c = _write(cache / "c.csv", fingerprint=_xeon())
        old = _write(cache / "d.csv", fingerprint=None)
        assert [p for p, _ in find_cached_tables(fingerprint_id(here))] == [a, b]
        assert [p for p, _ in find_cached_tables(fingerprint_id(here), "onnxruntime", "fp32", 1, threads=1)] == [a]
        assert [p for p, _ in find_cached_tables(threads=4)] == [b]
        assert [p for p, _ in find_cached_tables(backend="onnxruntime")] == [a, c, old]
        assert find_cached_tables(precision="fp16") == [] and find_cached_tables(batch_size=2) == []
        assert [p for p, _ in find_cached_tables(directory=cache, fingerprint_id=fingerprint_id(_xeon()))] == [c]

    def test_a_missing_folder_is_an_empty_cache(self, tmp_path: Path) -> None:
        assert list_cached_tables(tmp_path / "none") == []


class TestTableMetaFingerprint:
    def test_round_trip_through_latency_table(self, tmp_path: Path) -> None:
        fp = cpu_fingerprint()
        path = _write(tmp_path / "t.csv", fingerprint=fp)
        table = LatencyTable.read(path)
        assert table.meta.fingerprint == fp and table.meta.fingerprint_id == fingerprint_id(fp)
        assert "fingerprint" not in table.meta.extra and "fingerprint_id" not in table.meta.extra
        again = LatencyTable.read(table.write(tmp_path / "again.csv"))
        assert again.meta == table.meta
        header = json.loads((tmp_path / "again.csv").read_text().splitlines()[0][len(MAGIC) :])
        assert header["fingerprint"] == fp and header["fingerprint_id"] == fingerprint_id(fp)

    def test_the_id_follows_the_fingerprint_not_the_stored_id(self, tmp_path: Path) -> None:
        path = _write(tmp_path / "t.csv", fingerprint=cpu_fingerprint())
        lines = path.read_text().splitlines(keepends=True)
        header = json.loads(lines[0][len(MAGIC) :])
        header["fingerprint"]["model_name"] = "Edited CPU"
        path.write_text(MAGIC + json.dumps(header) + "\n" + "".join(lines[1:]))
        meta = LatencyTable.read(path).meta
        assert meta.fingerprint_id == fingerprint_id(meta.fingerprint or {}) != header["fingerprint_id"]
        assert meta.host_differences(cpu_fingerprint()) == [f"CPU model: 'Edited CPU' in the table, '{cpu_fingerprint()['model_name']}' here"]

    def test_same_host_has_no_differences(self, tmp_path: Path) -> None:
        meta = LatencyTable.read(_write(tmp_path / "t.csv", fingerprint=cpu_fingerprint())).meta
        assert meta.host_differences(cpu_fingerprint()) == [] and meta.host_differences() == []

    def test_another_host_says_what_differs(self, tmp_path: Path) -> None:
        here = cpu_fingerprint()
        meta = LatencyTable.read(_write(tmp_path / "t.csv", fingerprint=_xeon())).meta
        diff = meta.host_differences()
        assert diff == meta.host_differences(here)
        if here["vendor"] != "GenuineIntel":
            assert f"CPU vendor: 'GenuineIntel' in the table, {here['vendor']!r} here" in diff
        else:  # an Intel host: the same vendor is no difference
            assert not any(line.startswith("CPU vendor") for line in diff)
        assert f"CPU model: 'Intel(R) Xeon(R) Platinum 8480+' in the table, {here['model_name']!r} here" in diff
        assert f"cores: {here['logical_cores'] + 2} in the table, {here['logical_cores']} here" in diff
        flag = "present in the table, absent here" if not here["isa"]["avx512f"] else "absent in the table, present here"
        assert f"ISA: avx512f {flag}" in diff

    def test_old_table_without_fingerprint_loads_and_compares_by_name(self, tmp_path: Path) -> None:
        same = LatencyTable.read(_write(tmp_path / "same.csv", fingerprint=None, device=cpu_description())).meta
        assert same.fingerprint is None and same.fingerprint_id is None
        assert same.host_differences() == [] and same.host_differences(cpu_fingerprint()) == []
        other = LatencyTable.read(_write(tmp_path / "other.csv", fingerprint=None, device="AMD EPYC 7B13 (64 cores)")).meta
        [line] = other.host_differences()
        assert line.startswith(f"device: 'AMD EPYC 7B13 (64 cores)' in the table, {cpu_description()!r} here")
        assert "predates device fingerprints" in line

    def test_gpu_table_on_a_host_without_that_gpu(self, tmp_path: Path) -> None:
        gpu = {"kind": "cuda", "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "cuda_driver": "12.4", "memory_mib": 81559}
        meta = TableMeta(device=fingerprint_device_name(gpu), backend="torch_cuda", precision="fp16", batch_size=1,
                         extra={"backend_options": {"device": 7}}, fingerprint=gpu)  # fmt: skip
        [line] = meta.host_differences()  # no 8th GPU here, whatever this host has
        assert line.startswith("device: 'NVIDIA H100 80GB HBM3 (compute capability 9.0)' in the table, no CUDA device 7 here")
        assert meta.host_differences(cpu_fingerprint()) == ["device kind: cuda in the table, cpu here"]
        third = TableMeta(device="Acme NPU", backend="acme", precision="fp32", batch_size=1,
                          fingerprint={"kind": "device", "description": "Acme NPU"})  # fmt: skip
        assert "cannot be checked here" in third.host_differences()[0]
        assert third.host_differences({"kind": "device", "description": "Acme NPU"}) == []

    def test_malformed_fingerprint_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(TableError, match="'fingerprint' must be a JSON object"):
            TableMeta(device="d", backend="b", precision="fp32", batch_size=1, fingerprint="abc")  # type: ignore[arg-type]
        path = _write(tmp_path / "t.csv", fingerprint=None, device="d")
        lines = path.read_text().splitlines(keepends=True)
        header = json.loads(lines[0][len(MAGIC) :])
        path.write_text(MAGIC + json.dumps({**header, "fingerprint": [1, 2]}) + "\n" + "".join(lines[1:]))
        with pytest.raises(TableError, match="fingerprint"):
            LatencyTable.read(path)
