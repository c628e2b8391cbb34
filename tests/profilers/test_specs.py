"""Spec helpers: dedupe, input shapes, labels, the specs file (profilers/specs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _profiler_helpers import conv, tiny_specs
from hwdsa.errors import ConfigError
from hwdsa.profilers.base import LayerSpec
from hwdsa.profilers.specs import (
    common_precision_and_batch,
    dedupe_specs,
    input_shape,
    read_specs,
    spec_label,
    write_specs,
)


def test_dedupe_keeps_first_seen_order() -> None:
    a, b, c = conv(4, 8), conv(8, 8), LayerSpec("linear", 16, 10)
    assert dedupe_specs([b, a, b, c, a, conv(8, 8)]) == [b, a, c]


def test_dedupe_rejects_non_specs() -> None:
    with pytest.raises(ConfigError, match="expected LayerSpec entries; got dict"):
        dedupe_specs([conv(4, 8), {"kind": "conv"}])  # type: ignore[list-item]


def test_input_shapes() -> None:
    assert input_shape(conv(4, 8, size=10, batch_size=2)) == (2, 4, 10, 10)
    assert input_shape(LayerSpec("linear", 16, 10, batch_size=3)) == (3, 16)


def test_labels_are_distinct_and_readable() -> None:
    labels = [spec_label(s) for s in tiny_specs()]
    assert len(set(labels)) == len(labels)
    assert labels[0] == "conv 4->8 k3x3 s1 @8x8 +relu b1 fp32"
    assert " dw " in labels[2] and labels[-1] == "linear 16->10 b1 fp32"


def test_common_precision_and_batch() -> None:
    assert common_precision_and_batch(tiny_specs()) == ("fp32", 1)
    with pytest.raises(ConfigError, match=r"mix precisions \['fp16', 'fp32'\]"):
        common_precision_and_batch([conv(4, 8), conv(4, 8, precision="fp16")])
    with pytest.raises(ConfigError, match=r"batch sizes \[1, 4\]"):
        common_precision_and_batch([conv(4, 8), conv(4, 8, batch_size=4)])
    with pytest.raises(ConfigError, match="no layer specs to profile"):
        common_precision_and_batch([])


def test_specs_file_round_trip(tmp_path: Path) -> None:
    specs = tiny_specs()
    path = write_specs(tmp_path / "specs.json", [*specs, specs[0]])
    assert read_specs(path) == specs


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("not json", "cannot read specs file"),
        ('{"format": "other"}', "is not an hwdsa specs file"),
        ('{"format": "hwdsa-layer-specs", "schema_version": 7, "specs": []}', "schema_version 7 is not supported"),
        ('{"format": "hwdsa-layer-specs", "schema_version": 1, "specs": [{"kind": "conv"}]}', "spec 0: layer spec lacks"),
    ],
)
def test_bad_specs_files(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "specs.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=match):
        read_specs(path)


def test_invalid_spec_values_are_reported(tmp_path: Path) -> None:
    row = conv(4, 8).to_row()
    row["activation"] = "gelu"
    path = tmp_path / "specs.json"
    path.write_text(json.dumps({"format": "hwdsa-layer-specs", "schema_version": 1, "specs": [row]}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"invalid layer spec .*activation must be one of .*got .gelu."):
        read_specs(path)


def test_missing_specs_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no specs file at"):
        read_specs(tmp_path / "nope.json")
