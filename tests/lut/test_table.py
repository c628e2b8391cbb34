"""LatencyTable: file round trip, every refusal of a bad table, lookup, merge, packaged tables."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pandas as pd
import pytest

from hwdsa.errors import TableError
from hwdsa.lut.table import COLUMNS, MAGIC, LatencyTable, TableMeta, load_packaged_table, packaged_tables
from hwdsa.profilers.base import LayerSpec, Measurement


def _spec(cin: int, cout: int, **kw: object) -> LayerSpec:
    return LayerSpec("conv", cin, cout, kernel=(3, 3), padding=(1, 1), in_size=(8, 8), activation="relu", **kw)  # type: ignore[arg-type]


def _table(n: int = 6, *, device: str = "cpu-test", seed: int = 0, **meta: object) -> LatencyTable:
    rng = random.Random(seed)
    items = []
    for i in range(1, n + 1):
        med = rng.uniform(0.01, 2.0)
        items.append((_spec(i, 2 * i), Measurement(med, med * 0.97, med * 1.04, med * 0.9, 30, 1, i == 3, 1.25)))
    return LatencyTable.from_measurements(items, device=device, backend="torch_cpu", host="h", **meta)  # type: ignore[arg-type]


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


class TestRoundTrip:
    def test_write_read_equal(self, tmp_path: Path) -> None:
        table = _table(versions={"torch": "2.5"}, protocol={"repeats": 30})
        table = table.with_meta(calibration={"net": {"scale": 1.0}}, extra={"note": "kept"})
        path = table.write(tmp_path / "t.csv")
        back = LatencyTable.read(path)
        pd.testing.assert_frame_equal(back.frame, table.frame)
        assert back.meta == table.meta
        assert back.meta.extra == {"note": "kept"}
        assert back == table

    def test_floats_round_trip_exactly(self, tmp_path: Path) -> None:
        rng = random.Random(1)
        items = []
        for i in range(1, 200):
            med = rng.uniform(1e-4, 50.0)
            items.append((_spec(i, i), Measurement(med, med * rng.uniform(0.5, 1), med * rng.uniform(1, 2), med / 3, 7, 2, False, rng.random())))
        table = LatencyTable.from_measurements(items, device="d", backend="b")
        back = LatencyTable.read(table.write(tmp_path / "t.csv"))
        assert back.frame["median_ms"].tolist() == table.frame["median_ms"].tolist()
        assert back.frame["q1_ms"].tolist() == table.frame["q1_ms"].tolist()

    def test_nan_load_average_is_allowed(self, tmp_path: Path) -> None:
        m = Measurement(1.0, 0.9, 1.1, 0.8, 10, 1, False, float("nan"))
        table = LatencyTable.from_measurements([(_spec(4, 4), m)], device="d", backend="b")
        back = LatencyTable.read(table.write(tmp_path / "t.csv"))
        assert math.isnan(back.measurement(_spec(4, 4)).load_avg)
        assert back == table

    def test_empty_table(self, tmp_path: Path) -> None:
        table = LatencyTable.from_measurements([], device="d", backend="b")
        back = LatencyTable.read(table.write(tmp_path / "t.csv"))
        assert len(back) == 0 and back.meta == table.meta

    def test_header_format(self, tmp_path: Path) -> None:
        path = _table(3).write(tmp_path / "t.csv")
        lines = _lines(path)
        assert lines[0].startswith(MAGIC)
        meta = json.loads(lines[0][len(MAGIC) :])
        assert meta["rows"] == 3 and meta["schema_version"] == 1 and meta["device"] == "cpu-test"
        assert lines[1].strip().split(",") == list(COLUMNS)
        assert len(lines) == 2 + 3

    def test_write_is_atomic_and_replaces(self, tmp_path: Path) -> None:
        path = tmp_path / "sub" / "t.csv"
        _table(3).write(path)
        _table(5).write(path)
        assert len(LatencyTable.read(path)) == 5
        assert sorted(p.name for p in path.parent.iterdir()) == ["t.csv"]  # no temporary left behind


def _write_variant(tmp_path: Path, edit: object) -> Path:
    """Write a valid table, then let `edit(lines)` corrupt its lines."""
    path = _table(4).write(tmp_path / "t.csv")
    lines = _lines(path)
    edit(lines)  # type: ignore[operator]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def _set_cell(lines: list[str], row: int, column: str, value: str) -> None:
    cells = lines[2 + row].rstrip("\n").split(",")
    cells[COLUMNS.index(column)] = value
    lines[2 + row] = ",".join(cells) + "\n"


def _set_meta(lines: list[str], **changes: object) -> None:
    meta = json.loads(lines[0][len(MAGIC) :])
    meta.update(changes)
    lines[0] = MAGIC + json.dumps(meta) + "\n"


class TestRefusals:
    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(TableError, match="no latency table at"):
            LatencyTable.read(tmp_path / "absent.csv")

    def test_malformed_header(self, tmp_path: Path) -> None:
        path = _write_variant(tmp_path, lambda ls: ls.__setitem__(0, "kind,in_channels\n"))
        with pytest.raises(TableError, match="not an hwdsa latency table"):
            LatencyTable.read(path)

    def test_bad_json(self, tmp_path: Path) -> None:
        path = _write_variant(tmp_path, lambda ls: ls.__setitem__(0, MAGIC + '{"device": "x", \n'))
        with pytest.raises(TableError, match="not valid JSON"):
            LatencyTable.read(path)

    def test_json_not_an_object(self, tmp_path: Path) -> None:
        path = _write_variant(tmp_path, lambda ls: ls.__setitem__(0, MAGIC + "[1, 2]\n"))
        with pytest.raises(TableError, match="must be a JSON object"):
            LatencyTable.read(path)

    def test_missing_meta_key(self, tmp_path: Path) -> None:
        def edit(ls: list[str]) -> None:
            meta = json.loads(ls[0][len(MAGIC) :])
            del meta["device"]
            ls[0] = MAGIC + json.dumps(meta) + "\n"

        with pytest.raises(TableError, match="lacks 'device'"):
            LatencyTable.read(_write_variant(tmp_path, edit))

    def test_unsupported_schema_version(self, tmp_path: Path) -> None:
        path = _write_variant(tmp_path, lambda ls: _set_meta(ls, schema_version=99))
        with pytest.raises(TableError, match="schema_version 99 is not supported"):
            LatencyTable.read(path)

    def test_missing_column(self, tmp_path: Path) -> None:
        def drop_median(ls: list[str]) -> None:
            i = COLUMNS.index("median_ms")
            for k in range(1, len(ls)):
                cells = ls[k].rstrip("\n").split(",")
                del cells[i]
                ls[k] = ",".join(cells) + "\n"

        with pytest.raises(TableError, match="missing column.*median_ms"):
            LatencyTable.read(_write_variant(tmp_path, drop_median))

    def test_truncated_file(self, tmp_path: Path) -> None:
        path = _write_variant(tmp_path, lambda ls: ls.pop())
        with pytest.raises(TableError, match="says 4 rows but the file holds 3.*truncated"):
            LatencyTable.read(path)

    def test_truncated_inside_a_row(self, tmp_path: Path) -> None:
        path = _write_variant(tmp_path, lambda ls: ls.__setitem__(-1, ls[-1][:25]))
        with pytest.raises(TableError, match="empty or NaN"):
            LatencyTable.read(path)

    def test_truncated_before_header(self, tmp_path: Path) -> None:
        path = _write_variant(tmp_path, lambda ls: ls.__delitem__(slice(1, None)))
        with pytest.raises(TableError, match="header .* is missing"):
            LatencyTable.read(path)

    def test_more_rows_than_declared(self, tmp_path: Path) -> None:
        path = _write_variant(tmp_path, lambda ls: _set_meta(ls, rows=2))
        with pytest.raises(TableError, match="says 2 rows but the file holds 4"):
            LatencyTable.read(path)

    def test_nan_median(self, tmp_path: Path) -> None:
        path = _write_variant(tmp_path, lambda ls: _set_cell(ls, 1, "median_ms", "nan"))
        with pytest.raises(TableError, match="'median_ms' is empty or NaN at line 4"):
            LatencyTable.read(path)

    def test_infinite_median(self, tmp_path: Path) -> None:
        path = _write_variant(tmp_path, lambda ls: _set_cell(ls, 0, "median_ms", "inf"))
        with pytest.raises(TableError, match="NaN or infinity"):
            LatencyTable.read(path)

    def test_negative_median(self, tmp_path: Path) -> None:
        path = _write_variant(tmp_path, lambda ls: _set_cell(ls, 2, "median_ms", "-0.5"))
        with pytest.raises(TableError, match="'median_ms' must be positive.*-0.5 at line 5"):
            LatencyTable.read(path)

    def test_quartiles_out_of_order(self, tmp_path: Path) -> None:
        path = _write_variant(tmp_path, lambda ls: _set_cell(ls, 0, "q1_ms", "99.0"))
        with pytest.raises(TableError, match="quartiles out of order"):
            LatencyTable.read(path)

    def test_non_numeric_cell(self, tmp_path: Path) -> None:
        path = _write_variant(tmp_path, lambda ls: _set_cell(ls, 0, "in_channels", "sixteen"))
        with pytest.raises(TableError, match="'in_channels' must be numeric; got 'sixteen'"):
            LatencyTable.read(path)

    def test_fractional_channel_count(self, tmp_path: Path) -> None:
        path = _write_variant(tmp_path, lambda ls: _set_cell(ls, 0, "out_channels", "2.5"))
        with pytest.raises(TableError, match="must hold integers"):
            LatencyTable.read(path)

    def test_unknown_activation(self, tmp_path: Path) -> None:
        path = _write_variant(tmp_path, lambda ls: _set_cell(ls, 0, "activation", "gelu"))
        with pytest.raises(TableError, match="'activation' must be one of"):
            LatencyTable.read(path)

    def test_bad_bool(self, tmp_path: Path) -> None:
        path = _write_variant(tmp_path, lambda ls: _set_cell(ls, 0, "noisy", "maybe"))
        with pytest.raises(TableError, match="'noisy' must be True or False"):
            LatencyTable.read(path)

    def test_duplicate_key(self, tmp_path: Path) -> None:
        def dup(ls: list[str]) -> None:
            ls[3] = ls[2]

        with pytest.raises(TableError, match="duplicate layer specs at line 3, 4"):
            LatencyTable.read(_write_variant(tmp_path, dup))

    def test_row_precision_differs_from_header(self, tmp_path: Path) -> None:
        path = _write_variant(tmp_path, lambda ls: _set_cell(ls, 1, "precision", "fp16"))
        with pytest.raises(TableError, match="must equal the header's precision 'fp32'"):
            LatencyTable.read(path)

    def test_groups_must_divide(self, tmp_path: Path) -> None:
        path = _write_variant(tmp_path, lambda ls: _set_cell(ls, 2, "groups", "2"))  # in_channels 3
        with pytest.raises(TableError, match="'groups' must divide"):
            LatencyTable.read(path)

    def test_foreign_device(self, tmp_path: Path) -> None:
        path = _table(2, device="jetson-orin").write(tmp_path / "t.csv")
        assert len(LatencyTable.read(path, expect_device="jetson-orin")) == 2
        with pytest.raises(TableError, match="measured with device 'jetson-orin', expected 'rtx-4090'"):
            LatencyTable.read(path, expect_device="rtx-4090")

    def test_foreign_backend_precision_batch(self, tmp_path: Path) -> None:
        path = _table(2).write(tmp_path / "t.csv")
        with pytest.raises(TableError, match="backend 'torch_cpu', expected 'tensorrt'"):
            LatencyTable.read(path, expect_backend="tensorrt")
        with pytest.raises(TableError, match="precision 'fp32', expected 'fp16'"):
            LatencyTable.read(path, expect_precision="fp16")
        with pytest.raises(TableError, match="batch_size 1, expected 8"):
            LatencyTable.read(path, expect_batch_size=8)

    def test_constructor_validates_too(self) -> None:
        frame = _table(3).frame.copy()
        frame.loc[1, "median_ms"] = 0.0
        with pytest.raises(TableError, match="must be positive"):
            LatencyTable(frame, _table(1).meta)

    def test_bad_meta_values(self) -> None:
        with pytest.raises(TableError, match="'batch_size' must be a positive integer"):
            TableMeta(device="d", backend="b", precision="fp32", batch_size=0)
        with pytest.raises(TableError, match="'precision' must be one of"):
            TableMeta(device="d", backend="b", precision="fp64", batch_size=1)
        with pytest.raises(TableError, match="'device' must be a non-empty string"):
            TableMeta(device="", backend="b", precision="fp32", batch_size=1)
        with pytest.raises(TableError, match="'channel_multiple' must be a positive integer"):
            TableMeta(device="d", backend="b", precision="fp32", batch_size=1, extra={"channel_multiple": 0})

    def test_channel_multiple_is_read_and_checked_on_load(self, tmp_path: Path) -> None:
        assert _table(2).meta.channel_multiple == 1  # tables without one: any count
        path = _table(2).with_meta(extra={"channel_multiple": 8}).write(tmp_path / "t.csv")
        assert LatencyTable.read(path).meta.channel_multiple == 8
        lines = _lines(path)
        lines[0] = lines[0].replace('"channel_multiple": 8', '"channel_multiple": "8"')
        path.write_text("".join(lines), encoding="utf-8")
        with pytest.raises(TableError, match="'channel_multiple' must be a positive integer; got '8'"):
            LatencyTable.read(path)

    def test_networks_name_the_models_a_table_was_profiled_for(self, tmp_path: Path) -> None:
        assert _table(2).meta.networks == []  # a table without the record
        profiled = {"vgg16": {"input_shape": [3, 32, 32]}, "resnet20": {"input_shape": [3, 32, 32]}}
        path = _table(2).with_meta(extra={"networks": profiled}).write(tmp_path / "t.csv")
        assert LatencyTable.read(path).meta.networks == ["resnet20", "vgg16"]
        with pytest.raises(TableError, match="'networks' must map model names"):
            _ = _table(2).with_meta(extra={"networks": ["resnet20"]}).meta.networks


class TestLookup:
    def test_lookup_and_measurement(self) -> None:
        table = _table(4)
        spec = _spec(2, 4)
        row = table.frame.iloc[1]
        assert table.lookup(spec) == row["median_ms"]
        m = table.measurement(spec)
        assert m.median_ms == row["median_ms"] and m.repeats == 30
        assert spec in table and _spec(2, 5) not in table
        assert table.specs()[1] == spec

    def test_missing_entry_raises(self) -> None:
        table = _table(4)
        with pytest.raises(TableError, match="no entry for LayerSpec.*in_channels=9.*profile it"):
            table.lookup(_spec(9, 9))
        assert table.missing([_spec(1, 2), _spec(9, 9), _spec(9, 9)]) == [_spec(9, 9)]

    def test_meta_is_a_copy(self) -> None:
        versions = {"torch": "1"}
        meta = TableMeta(device="d", backend="b", precision="fp32", batch_size=1, versions=versions)
        versions["torch"] = "2"
        assert meta.versions == {"torch": "1"}


class TestMerge:
    def _pair(self) -> tuple[LatencyTable, LatencyTable]:
        a = LatencyTable.from_measurements(
            [(_spec(1, 1), Measurement(1.0, 0.9, 1.1, 0.8, 10, 1, False, 0.0)), (_spec(2, 2), Measurement(2.0, 1.0, 3.0, 0.8, 10, 1, True, 0.0))],
            device="d", backend="b", versions={"v": "1"}, host="h",
        )  # fmt: skip
        b = LatencyTable.from_measurements(
            [(_spec(2, 2), Measurement(2.2, 2.1, 2.3, 2.0, 10, 1, False, 0.0)), (_spec(3, 3), Measurement(3.0, 2.9, 3.1, 2.8, 10, 1, False, 0.0))],
            device="d", backend="b", versions={"v": "1"}, host="h",
        )  # fmt: skip
        return a, b

    def test_duplicate_refused_by_default(self) -> None:
        a, b = self._pair()
        with pytest.raises(TableError, match="1 spec.* more than one table"):
            LatencyTable.concat([a, b])

    @pytest.mark.parametrize(("rule", "expected"), [("keep_first", 2.0), ("keep_last", 2.2), ("keep_quietest", 2.2)])
    def test_duplicate_rules(self, rule: str, expected: float) -> None:
        a, b = self._pair()
        merged = LatencyTable.concat([a, b], on_duplicate=rule)  # type: ignore[arg-type]
        assert len(merged) == 3
        assert merged.lookup(_spec(2, 2)) == expected
        assert merged.lookup(_spec(1, 1)) == 1.0 and merged.lookup(_spec(3, 3)) == 3.0

    def test_merge_disjoint_and_drop_calibration(self) -> None:
        a, b = self._pair()
        a = a.with_meta(calibration={"net": {"scale": 1.0}})
        b_only = LatencyTable(b.frame.iloc[1:], b.meta)
        merged = a.merge(b_only)
        assert len(merged) == 3
        assert merged.meta.calibration == {}
        assert merged.meta.device == "d" and merged.meta.versions == {"v": "1"}

    def test_foreign_device_refused(self) -> None:
        a, _ = self._pair()
        other = _table(2, device="other")
        with pytest.raises(TableError, match="device differs"):
            LatencyTable.concat([a, other], on_duplicate="keep_last")

    def test_version_mismatch(self) -> None:
        a, b = self._pair()
        b = b.with_meta(versions={"v": "2"})
        with pytest.raises(TableError, match="library versions differ"):
            LatencyTable.concat([a, b], on_duplicate="keep_last")
        merged = LatencyTable.concat([a, b], on_duplicate="keep_last", allow_version_mismatch=True)
        assert merged.meta.versions == {"v": "1"}

    def test_bad_rule(self) -> None:
        a, b = self._pair()
        with pytest.raises(TableError, match="on_duplicate must be"):
            LatencyTable.concat([a, b], on_duplicate="average")  # type: ignore[arg-type]
        with pytest.raises(TableError, match="at least one table"):
            LatencyTable.concat([])


class TestPackaged:
    def test_packaged_tables_read(self) -> None:
        import hwdsa.lut

        readme = Path(hwdsa.lut.__file__).parent / "tables" / "README.md"
        tables = packaged_tables()
        for name, path in tables.items():
            table = LatencyTable.read(path)
            assert len(table) > 0, name
            assert f"| {name} |" in readme.read_text(encoding="utf-8"), f"{name} is not documented in {readme}"
        assert all(p.suffix == ".csv" for p in tables.values())

    def test_unknown_packaged_table(self) -> None:
        with pytest.raises(TableError, match="no packaged latency table 'nope'"):
            load_packaged_table("nope")


def test_reads_what_the_edge_agent_writes(tmp_path: Path) -> None:
    """The stdlib writer of `hwdsa.profilers.tablefile` and this reader agree on the format."""
    tablefile = pytest.importorskip("hwdsa.profilers.tablefile", reason="profilers/tablefile.py not written yet")
    table = _table(5)
    items = list(zip(table.specs(), (table.measurement(s) for s in table.specs())))
    writer = getattr(tablefile, "write_table", None)
    if writer is None:
        pytest.skip("hwdsa.profilers.tablefile has no write_table(path, items, meta)")
    path = tmp_path / "agent.csv"
    writer(path, items, table.meta.to_json(len(items)))
    back = LatencyTable.read(path)
    assert [back.lookup(s) for s, _ in items] == [m.median_ms for _, m in items]


@pytest.mark.parametrize(
    "edit",
    [
        lambda ls: ls.__setitem__(0, "kind,in_channels\n"),
        lambda ls: _set_meta(ls, schema_version=2),
        lambda ls: _set_meta(ls, schema_version=True),
        lambda ls: _set_meta(ls, rows="4"),
        lambda ls: ls.pop(),
        lambda ls: ls.__setitem__(-1, ls[-1][:25]),
        lambda ls: _set_cell(ls, 0, "in_channels", "sixteen"),
        lambda ls: _set_cell(ls, 2, "median_ms", "-0.5"),
        lambda ls: _set_cell(ls, 0, "q1_ms", "99.0"),
        lambda ls: _set_cell(ls, 1, "precision", "fp16"),
        lambda ls: ls.__setitem__(3, ls[2]),
    ],
)
def test_both_readers_refuse_alike(tmp_path: Path, edit: object) -> None:
    """One owner of the format: the stdlib reader of the board and this one refuse with the same message."""
    from hwdsa.profilers.tablefile import read_table

    path = _write_variant(tmp_path, edit)
    with pytest.raises(TableError) as ours:
        LatencyTable.read(path)
    with pytest.raises(TableError) as board:
        read_table(path)
    assert str(ours.value) == str(board.value)


def test_reading_a_table_needs_neither_torch_nor_sklearn() -> None:
    """Tables are handled where only pandas is installed (merging results from an edge board)."""
    import subprocess
    import sys

    code = "import sys, hwdsa.lut; hwdsa.lut.LatencyTable; print('torch' in sys.modules, 'sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
