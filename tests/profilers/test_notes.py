"""Conditions met once per layer are summarised in one line at the end of a run, not warned per layer."""

from __future__ import annotations

import logging

import pytest

from hwdsa.profilers import TimingProtocol
from hwdsa.profilers.backend import get_backend


def test_notes_are_counted_and_taken_once() -> None:
    backend = get_backend("onnxruntime", num_threads=1)
    for _ in range(3):
        backend.note("a condition")
    backend.note("another")
    assert backend.take_notes() == {"a condition": 3, "another": 1}
    assert backend.take_notes() == {}


def test_profiling_tiny_layers_on_onnxruntime_logs_one_summary_line(tmp_path: object, caplog: pytest.LogCaptureFixture) -> None:
    from pathlib import Path

    from hwdsa.lut.grid import GridConfig
    from hwdsa.lut.network import profile_network
    from hwdsa.models import create_model

    backend = get_backend("onnxruntime", num_threads=1)
    with caplog.at_level(logging.INFO, logger="hwdsa.profilers"):
        profile_network(
            create_model("small_cnn", in_channels=1, widths=(4, 8, 8, 8)), (1, 28, 28), backend, Path(str(tmp_path)) / "t.csv",
            grid=GridConfig("cpu", cpu_points=3), protocol=TimingProtocol(warmup=1, repeats=5, max_attempts=1, rounds=1),
        )  # fmt: skip
    per_layer = [r for r in caplog.records if "take nearly all of the fastest run" in r.getMessage()]
    assert per_layer == [] or all(r.levelno == logging.DEBUG for r in per_layer)
    summaries = [r for r in caplog.records if "layer timings (each one with -v)" in r.getMessage()]
    assert len(summaries) <= 1
    if summaries:
        assert summaries[0].levelno == logging.WARNING
