"""The stdlib table format and the resume log (profilers/tablefile.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from _profiler_helpers import conv
from hwdsa.errors import TableError
from hwdsa.profilers.base import MEASUREMENT_COLUMNS, SPEC_COLUMNS, LayerSpec, Measurement
from hwdsa.profilers.tablefile import (
    MAGIC,
    PartialLog,
    make_meta,
    partial_path,
    read_table,
    write_table,
)


def _m(median: float, *, noisy: bool = False, load: float = 0.5) -> Measurement:
    return Measurement(median, median * 0.9, median * 1.1, median * 0.8, 5, 1, noisy, load)


def _items() -> list[tuple[LayerSpec, Measurement]]:
    # Awkward floats on purpose: the text round trip must be exact.
    return [
        (conv(4, 8), _m(0.1 + 0.2)),
        (conv(8, 8, act="none", groups=8), _m(1 / 3, noisy=True)),
        (LayerSpec("linear", 16, 10), _m(2.5e-4, load=float("nan"))),
    ]


def _meta() -> dict[str, object]:
    return make_meta(device="Test CPU (2 cores)", backend="onnxruntime", precision="fp32", batch_size=1,
                     protocol={"repeats": 5}, backend_options={"num_threads": 1})  # fmt: skip


class TestTableFile:
    def test_round_trip_is_exact(self, tmp_path: Path) -> None:
        path = write_table(tmp_path / "t.csv", _items(), _meta())
        meta, entries = read_table(path)
        assert meta["rows"] == 3 and meta["device"] == "Test CPU (2 cores)"
        assert meta["backend_options"] == {"num_threads": 1}
        assert [s for s, _ in entries] == [s for s, _ in _items()]
        for (_, got), (_, want) in zip(entries, _items()):
            for field in MEASUREMENT_COLUMNS:
                a, b = getattr(got, field), getattr(want, field)
                assert (math.isnan(a) and math.isnan(b)) if isinstance(b, float) and math.isnan(b) else a == b

    def test_layout(self, tmp_path: Path) -> None:
        lines = write_table(tmp_path / "t.csv", _items(), _meta()).read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith(MAGIC)
        header = json.loads(lines[0][len(MAGIC) :])
        assert list(header)[:5] == ["schema_version", "device", "backend", "precision", "batch_size"]
        assert header["rows"] == 3 and header["schema_version"] == 1
        assert lines[1].split(",") == [*SPEC_COLUMNS, *MEASUREMENT_COLUMNS]
        assert len(lines) == 2 + 3

    def test_lut_reader_reads_it(self, tmp_path: Path) -> None:
        """The pandas reader of the other half of the format (hwdsa.lut) accepts what we write."""
        from hwdsa.lut.table import LatencyTable

        path = write_table(tmp_path / "t.csv", _items(), _meta())
        table = LatencyTable.read(path, expect_device="Test CPU (2 cores)", expect_backend="onnxruntime")
        assert [table.lookup(s) for s, _ in _items()] == [m.median_ms for _, m in _items()]
        assert table.meta.extra["backend_options"] == {"num_threads": 1}
        # and the other way round: what LatencyTable.write writes, the stdlib reader reads
        table.write(tmp_path / "back.csv")
        assert [s for s, _ in read_table(tmp_path / "back.csv")[1]] == [s for s, _ in _items()]

    def test_write_refuses_mixed_precision(self, tmp_path: Path) -> None:
        items = [*_items(), (conv(4, 8, precision="fp16"), _m(1.0))]
        with pytest.raises(TableError, match="one table holds one precision and batch size"):
            write_table(tmp_path / "t.csv", items, _meta())
        assert not (tmp_path / "t.csv").exists()

    def test_write_refuses_duplicates(self, tmp_path: Path) -> None:
        with pytest.raises(TableError, match="appears twice"):
            write_table(tmp_path / "t.csv", [*_items(), _items()[0]], _meta())

    def test_write_refuses_incomplete_meta(self, tmp_path: Path) -> None:
        with pytest.raises(TableError, match="lacks device"):
            write_table(tmp_path / "t.csv", _items(), {"schema_version": 1, "backend": "x", "precision": "fp32", "batch_size": 1})

    def test_bad_precision_in_meta(self) -> None:
        with pytest.raises(TableError, match="precision must be one of"):
            make_meta(device="d", backend="b", precision="fp64", batch_size=1)

    def test_truncated_file_is_refused(self, tmp_path: Path) -> None:
        path = write_table(tmp_path / "t.csv", _items(), _meta())
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        path.write_text("".join(lines[:-1]), encoding="utf-8")
        with pytest.raises(TableError, match="header says 3 rows but the file holds 2"):
            read_table(path)

    @pytest.mark.parametrize(
        ("mutate", "match"),
        [
            (lambda text: "hello\n" + text, "not an hwdsa latency table"),
            (lambda text: text.replace('"rows": 3', '"rows": 3,,'), "not valid JSON"),
            (lambda text: text.replace("median_ms", "med"), "lacks column"),
            (lambda text: text.replace('"schema_version": 1', '"schema_version": 9'), "schema_version 9 is not supported"),
        ],
    )
    def test_malformed_files(self, tmp_path: Path, mutate: object, match: str) -> None:
        path = write_table(tmp_path / "t.csv", _items(), _meta())
        path.write_text(mutate(path.read_text(encoding="utf-8")), encoding="utf-8")  # type: ignore[operator]
        with pytest.raises(TableError, match=match):
            read_table(path)

    def test_newer_schema_version_says_what_to_do(self, tmp_path: Path) -> None:
        path = write_table(tmp_path / "t.csv", _items(), _meta())
        text = path.read_text(encoding="utf-8")
        # a newer format may also have renamed keys: its version is refused first, with the remedy
        path.write_text(text.replace('"schema_version": 1', '"schema_version": 2').replace('"device"', '"board"'), encoding="utf-8")
        with pytest.raises(TableError, match="schema_version 2 is not supported by hwdsa .*newer hwdsa wrote it: upgrade hwdsa"):
            read_table(path)
        path.write_text(text.replace('"schema_version": 1', '"schema_version": 1.0'), encoding="utf-8")
        with pytest.raises(TableError, match="'schema_version' must be an integer; got 1.0"):
            read_table(path)

    def test_value_rules_name_the_line(self, tmp_path: Path) -> None:
        path = write_table(tmp_path / "t.csv", _items(), _meta())
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        cells = lines[3].split(",")
        q1 = [*SPEC_COLUMNS, *MEASUREMENT_COLUMNS].index("q1_ms")
        cells[q1] = "99.0"  # above its median
        lines[3] = ",".join(cells)
        path.write_text("".join(lines), encoding="utf-8")
        with pytest.raises(TableError, match="quartiles out of order .* at line 4$"):
            read_table(path)

    def test_non_positive_median_is_refused(self, tmp_path: Path) -> None:
        path = write_table(tmp_path / "t.csv", [(conv(4, 8), _m(0.5))], _meta())
        path.write_text(path.read_text(encoding="utf-8").replace(",0.5,", ",0.0,"), encoding="utf-8")
        with pytest.raises(TableError, match="median_ms must be a positive number"):
            read_table(path)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(TableError, match="no latency table at"):
            read_table(tmp_path / "nope.csv")


def _full_log(tmp_path: Path) -> tuple[PartialLog, list[str]]:
    """A partial log holding every item, and its lines."""
    log = PartialLog(tmp_path / "t.csv.partial", _meta())
    log.open()
    for item in _items():
        log.append(*item)
    log.close()
    return log, log.path.read_text(encoding="utf-8").splitlines(keepends=True)


class TestPartialLog:
    def test_append_and_load(self, tmp_path: Path) -> None:
        log = PartialLog(partial_path(tmp_path / "t.csv"), _meta())
        assert log.path.name == "t.csv.partial"
        assert log.load() == {}
        log.open()
        for spec, m in _items()[:2]:
            log.append(spec, m)
        log.close()
        again = PartialLog(log.path, {**_meta(), "created_at": "later", "host": "elsewhere"})  # volatile keys differ
        assert again.load() == {s: [m] for s, m in _items()[:2]}

    def test_torn_last_line_is_dropped_and_truncated(self, tmp_path: Path) -> None:
        log = PartialLog(tmp_path / "t.csv.partial", _meta())
        log.open()
        log.append(*_items()[0])
        log.close()
        good_size = log.path.stat().st_size
        with open(log.path, "a", encoding="utf-8") as handle:  # a kill in the middle of a write
            handle.write('{"spec": {"kind": "co')
        assert log.load() == {s: [m] for s, m in _items()[:1]}
        assert log.path.stat().st_size == good_size  # the next append starts on a clean line
        log.open()
        log.append(*_items()[1])
        log.close()
        assert log.load() == {s: [m] for s, m in _items()[:2]}

    def test_rounds_of_one_spec_accumulate(self, tmp_path: Path) -> None:
        log = PartialLog(tmp_path / "t.csv.partial", _meta())
        (spec, first), (_, second) = _items()[0], _items()[1]
        log.open()
        log.append(spec, first)
        log.append(spec, second)  # the same spec's second round
        log.close()
        assert log.load() == {spec: [first, second]}

    def test_other_conditions_are_refused(self, tmp_path: Path) -> None:
        log = PartialLog(tmp_path / "t.csv.partial", _meta())
        log.open()
        log.append(*_items()[0])
        log.close()
        other = PartialLog(log.path, {**_meta(), "backend_options": {"num_threads": 2}})
        with pytest.raises(TableError, match=r"other settings \(differs in backend_options"):
            other.load()

    def test_corrupted_middle_line_is_refused(self, tmp_path: Path) -> None:
        log, lines = _full_log(tmp_path)
        lines[2] = "garbage\n"
        log.path.write_text("".join(lines), encoding="utf-8")
        with pytest.raises(TableError, match="line 3: corrupted entry"):
            log.load()

    def test_bad_value_in_a_middle_line_is_refused(self, tmp_path: Path) -> None:
        log, lines = _full_log(tmp_path)
        lines[1] = lines[1].replace('"median_ms": ', '"median_ms": -')  # the table's rules apply to each line
        log.path.write_text("".join(lines), encoding="utf-8")
        with pytest.raises(TableError, match="line 2: corrupted entry .*'median_ms' must be positive"):
            log.load()

    def test_not_a_partial_file(self, tmp_path: Path) -> None:
        path = tmp_path / "t.csv.partial"
        path.write_text('{"x": 1}\n', encoding="utf-8")
        with pytest.raises(TableError, match="not an hwdsa partial table"):
            PartialLog(path, _meta()).load()
