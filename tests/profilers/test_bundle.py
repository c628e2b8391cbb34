"""Profile bundles: host export, stdlib read-back, running on an ONNX backend (profilers/bundle.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _profiler_helpers import LIGHT, check_measurement, conv, tiny_specs
from hwdsa.errors import ConfigError
from hwdsa.profilers import read_bundle, read_table, run_bundle, write_bundle


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundles") / "b"
    write_bundle([*tiny_specs(), tiny_specs()[0]], path)
    return path


def test_bundle_layout(bundle_dir: Path) -> None:
    bundle = read_bundle(bundle_dir)
    assert bundle.specs == tiny_specs()  # deduplicated
    assert (bundle.precision, bundle.batch_size) == ("fp32", 1)
    assert sorted(p.name for p in bundle_dir.iterdir()) == [*[f"layer_{i:05d}.onnx" for i in range(6)], "specs.json"]
    doc = json.loads((bundle_dir / "specs.json").read_text(encoding="utf-8"))
    assert doc["format"] == "hwdsa-profile-bundle" and doc["entries"][0]["input_shape"] == [1, 4, 8, 8]
    assert not [p for p in bundle_dir.parent.iterdir() if p.name.startswith(".")]  # no temporary directory left


def test_run_bundle(bundle_dir: Path, tmp_path: Path) -> None:
    rows = run_bundle(bundle_dir, "onnxruntime", LIGHT, out_path=tmp_path / "t.csv", num_threads=1)
    assert [s for s, _ in rows] == tiny_specs()
    for _, m in rows:
        check_measurement(m)
    assert read_table(tmp_path / "t.csv")[1] == rows


def test_torch_backends_cannot_run_bundles(bundle_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="backend 'torch_cpu' does not run ONNX files"):
        run_bundle(bundle_dir, "torch_cpu", LIGHT, out_path=tmp_path / "t.csv")


def test_existing_directory_is_not_overwritten(bundle_dir: Path) -> None:
    with pytest.raises(ConfigError, match="already exists; choose another path or pass overwrite=True"):
        write_bundle(tiny_specs(), bundle_dir)


def test_overwrite(tmp_path: Path) -> None:
    write_bundle([conv(4, 8)], tmp_path / "b")
    bundle = write_bundle([conv(8, 8), conv(4, 4)], tmp_path / "b", overwrite=True)
    assert bundle.specs == [conv(8, 8), conv(4, 4)]
    assert len(list((tmp_path / "b").glob("*.onnx"))) == 2


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_corrupted_copy_is_detected(bundle_dir: Path, tmp_path: Path) -> None:
    copy = _copy(bundle_dir, tmp_path / "copy")
    with open(copy / "layer_00002.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ConfigError, match="layer_00002.onnx does not match its SHA-256"):
        read_bundle(copy)


def test_missing_file_is_detected(bundle_dir: Path, tmp_path: Path) -> None:
    copy = _copy(bundle_dir, tmp_path / "copy")
    (copy / "layer_00001.onnx").unlink()
    with pytest.raises(ConfigError, match="layer_00001.onnx is missing; copy the whole bundle directory"):
        read_bundle(copy)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a profile bundle: it has no specs.json"):
        read_bundle(tmp_path)
    (tmp_path / "specs.json").write_text('{"format": "hwdsa-profile-bundle", "schema_version": 2}', encoding="utf-8")
    with pytest.raises(ConfigError, match="bundle schema_version 2 is not supported"):
        read_bundle(tmp_path)


def test_path_escape_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    copy = _copy(bundle_dir, tmp_path / "copy")
    doc = json.loads((copy / "specs.json").read_text(encoding="utf-8"))
    doc["entries"][0]["onnx"] = "../elsewhere.onnx"
    (copy / "specs.json").write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ConfigError, match="must be a plain file name inside the bundle"):
        read_bundle(copy)
