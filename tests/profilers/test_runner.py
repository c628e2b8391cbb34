"""Resumable profiling runs and end-to-end timing (profilers/runner.py), with real CPU backends."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from _profiler_helpers import LIGHT, check_measurement, conv, tiny_specs
from hwdsa.errors import ConfigError, TableError
from hwdsa.profilers import get_backend, paired_fraction, profile_specs, quietest, read_table
from hwdsa.profilers.base import round_ratios
from hwdsa.profilers.base import LayerSpec, Measurement, TimingProtocol
from hwdsa.profilers.tablefile import partial_path, write_table

BACKENDS = ["torch_cpu", "onnxruntime"]


class _Recorder:
    """An `on_entry` hook that records what was measured and can stop the run like Ctrl-C."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.seen: list[tuple[LayerSpec, Measurement]] = []

    def __call__(self, spec: LayerSpec, m: Measurement) -> None:
        self.seen.append((spec, m))
        if self.stop_after is not None and len(self.seen) >= self.stop_after:
            raise KeyboardInterrupt


@pytest.mark.parametrize("backend", BACKENDS)
def test_measures_each_shape_once_and_writes_the_table(tmp_path: Path, backend: str) -> None:
    specs = tiny_specs()
    rec = _Recorder()
    rows = profile_specs([*specs, *specs[:3], specs[0]], get_backend(backend, num_threads=1), LIGHT,
                         out_path=tmp_path / "t.csv", on_entry=rec)  # fmt: skip
    assert [s for s, _ in rec.seen] == specs  # duplicates measured once, first-seen order
    assert [s for s, _ in rows] == specs
    for _, m in rows:
        check_measurement(m)
    meta, entries = read_table(tmp_path / "t.csv")
    assert entries == rows
    assert meta["backend"] == backend and meta["rows"] == len(specs) and meta["precision"] == "fp32"
    assert meta["protocol"]["repeats"] == LIGHT.repeats and meta["backend_options"]["num_threads"] == 1
    assert "cores" in meta["device"] and "python" in meta["versions"]
    assert not partial_path(tmp_path / "t.csv").exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_interrupted_run_resumes_where_it_stopped(tmp_path: Path, backend: str) -> None:
    specs = tiny_specs()
    be = get_backend(backend, num_threads=1)
    out = tmp_path / "t.csv"
    first = _Recorder(stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        profile_specs(specs, be, LIGHT, out_path=out, on_entry=first)
    assert not out.exists()  # no half table, only the partial file
    assert len(partial_path(out).read_text(encoding="utf-8").splitlines()) == 1 + 3

    second = _Recorder()
    rows = profile_specs(specs, be, LIGHT, out_path=out, on_entry=second)
    assert [s for s, _ in second.seen] == specs[3:]  # only the missing entries were measured
    assert rows[:3] == first.seen  # the earlier measurements, kept as they were
    assert not partial_path(out).exists()

    uninterrupted = profile_specs(specs, be, LIGHT, out_path=tmp_path / "full.csv")
    assert [s for s, _ in rows] == [s for s, _ in uninterrupted]
    assert read_table(out)[1] == rows


def test_rounds_are_passes_and_the_quietest_is_kept(tmp_path: Path) -> None:
    """rounds=3: three passes over the table (not three back-to-back timings), resumable mid-pass."""
    specs = tiny_specs()[:4]
    be = get_backend("onnxruntime", num_threads=1)
    proto = dataclasses.replace(LIGHT, rounds=3)
    out = tmp_path / "t.csv"
    first = _Recorder(stop_after=6)  # all of pass 1 and half of pass 2
    with pytest.raises(KeyboardInterrupt):
        profile_specs(specs, be, proto, out_path=out, on_entry=first)
    assert [s for s, _ in first.seen] == [*specs, *specs[:2]]  # pass order, not entry by entry
    second = _Recorder()
    rows = profile_specs(specs, be, proto, out_path=out, on_entry=second)
    assert [s for s, _ in second.seen] == [*specs[2:], *specs]  # the rest of pass 2, then pass 3
    measured: dict[LayerSpec, list[Measurement]] = {}
    for spec, m in [*first.seen, *second.seen]:
        measured.setdefault(spec, []).append(m)
    assert all(len(ms) == 3 for ms in measured.values())
    for spec, m in rows:  # each entry is its quietest round, kept whole
        assert m == min(measured[spec], key=lambda r: r.median_ms)
    assert read_table(out)[0]["protocol"]["rounds"] == 3


def test_quietest_is_the_lowest_median() -> None:
    slow = Measurement(2.0, 1.9, 2.2, 1.8, 5, 1, False, 0.5)
    quiet = Measurement(1.5, 1.4, 1.9, 1.3, 5, 2, True, 0.1)
    assert quietest([slow, quiet, slow]) is quiet
    with pytest.raises(ValueError, match="at least one"):
        quietest([])


def _at(ms: float) -> Measurement:
    return Measurement(ms, 0.95 * ms, 1.05 * ms, 0.9 * ms, 5, 1, False, 0.0)


def test_a_paired_fraction_cancels_a_drifting_level() -> None:
    """The machine's level moves between rounds; within a round both networks see the same one. The quietest of
    each alone come from different rounds and miss the true ratio, the paired one does not."""
    level = [1.0, 1.3, 0.9, 1.2, 1.1]
    dense = [_at(2.0 * x) for x in level]
    pruned = [_at(0.5 * 2.0 * x * (1.15 if r == 2 else 1.0)) for r, x in enumerate(level)]  # one round disturbed
    assert round_ratios(dense, pruned) == pytest.approx([0.5, 0.5, 0.575, 0.5, 0.5])
    assert paired_fraction(dense, pruned) == pytest.approx(0.5)
    assert quietest(pruned).median_ms / quietest(dense).median_ms != pytest.approx(0.5, rel=0.01)
    with pytest.raises(ValueError, match="same rounds"):
        paired_fraction(dense, pruned[:-1])
    with pytest.raises(ValueError, match="same rounds"):
        round_ratios([], [])


def test_resume_false_starts_over(tmp_path: Path) -> None:
    specs = tiny_specs()[:3]
    be = get_backend("onnxruntime", num_threads=1)
    with pytest.raises(KeyboardInterrupt):
        profile_specs(specs, be, LIGHT, out_path=tmp_path / "t.csv", on_entry=_Recorder(stop_after=2))
    rec = _Recorder()
    profile_specs(specs, be, LIGHT, out_path=tmp_path / "t.csv", resume=False, on_entry=rec)
    assert [s for s, _ in rec.seen] == specs


def test_partial_file_of_another_backend_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "t.csv"
    with pytest.raises(KeyboardInterrupt):
        profile_specs(tiny_specs(), get_backend("torch_cpu", num_threads=1), LIGHT, out_path=out, on_entry=_Recorder(1))
    with pytest.raises(TableError, match=r"written by a run with other settings \(differs in .*backend"):
        profile_specs(tiny_specs(), get_backend("onnxruntime", num_threads=1), LIGHT, out_path=out)
    with pytest.raises(TableError, match="differs in protocol"):
        profile_specs(tiny_specs(), get_backend("torch_cpu", num_threads=1), TimingProtocol(warmup=1, repeats=6, rounds=1), out_path=out)


def test_extending_an_existing_table_keeps_its_rows(tmp_path: Path) -> None:
    specs = tiny_specs()
    be = get_backend("onnxruntime", num_threads=1)
    out = tmp_path / "t.csv"
    old = profile_specs(specs[:4], be, LIGHT, out_path=out)
    rec = _Recorder()
    new = profile_specs(specs[2:], be, LIGHT, out_path=out, on_entry=rec)
    assert [s for s, _ in rec.seen] == specs[4:]  # specs 2 and 3 came from the existing table
    assert new[:2] == old[2:]
    assert [s for s, _ in read_table(out)[1]] == [*specs[2:], *specs[:2]]  # requested first, then the kept rows


def test_a_table_whose_protocol_has_the_old_empty_extra_is_read_and_extended(tmp_path: Path) -> None:
    # tables written before TimingProtocol lost its `extra` field record `"extra": {}` in their protocol
    specs = tiny_specs()
    be = get_backend("onnxruntime", num_threads=1)
    out = tmp_path / "t.csv"
    profile_specs(specs[:2], be, LIGHT, out_path=out)
    meta, entries = read_table(out)
    write_table(out, entries, {**meta, "protocol": {**meta["protocol"], "extra": {}}})
    assert read_table(out)[0]["protocol"]["extra"] == {}
    rec = _Recorder()
    profile_specs(specs[1:3], be, LIGHT, out_path=out, on_entry=rec)
    assert [s for s, _ in rec.seen] == specs[2:3]  # spec 1 came from the old table: same conditions


def test_existing_table_of_other_conditions_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "t.csv"
    profile_specs(tiny_specs()[:1], get_backend("onnxruntime", num_threads=1), LIGHT, out_path=out)
    with pytest.raises(TableError, match="already holds a table measured under other conditions"):
        profile_specs(tiny_specs()[:1], get_backend("torch_cpu", num_threads=1), LIGHT, out_path=out)


def test_bad_spec_lists(tmp_path: Path) -> None:
    be = get_backend("torch_cpu", num_threads=1)
    with pytest.raises(ConfigError, match="one latency table holds one precision and one batch size"):
        profile_specs([conv(4, 8), conv(4, 8, batch_size=2)], be, LIGHT, out_path=tmp_path / "t.csv")
    with pytest.raises(ConfigError, match="no layer specs to profile"):
        profile_specs([], be, LIGHT, out_path=tmp_path / "t.csv")
    with pytest.raises(ConfigError, match="measures precision"):
        profile_specs([conv(4, 8, precision="fp16")], be, LIGHT, out_path=tmp_path / "t.csv")
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_corrupted_existing_table_names_the_way_out(tmp_path: Path) -> None:
    out = tmp_path / "t.csv"
    out.write_text("garbage\n", encoding="utf-8")
    be = get_backend("onnxruntime", num_threads=1)
    with pytest.raises(TableError, match=r"not an hwdsa latency table.*pass resume=False"):
        profile_specs(tiny_specs()[:1], be, LIGHT, out_path=out)
    rows = profile_specs(tiny_specs()[:1], be, LIGHT, out_path=out, resume=False)
    assert read_table(out)[1] == rows
