"""`hwdsa profile` and `hwdsa fit` on a tiny model with the real PyTorch CPU backend, and `hwdsa prune --latency`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from hwdsa.cli import main
from hwdsa.graph import trace_channel_graph
from hwdsa.lut.calibrate import calibrations, graph_signature
from hwdsa.lut.cost_model import LatencyCost
from hwdsa.lut.grid import GridConfig, plan_grid
from hwdsa.lut.table import MAGIC, LatencyTable
from hwdsa.models import create_model
from hwdsa.profilers.backend import Backend

SHAPE = (1, 12, 12)
MODEL = ["--model", "small_cnn", "--input-shape", "1,12,12"]
LIGHT = ["--warmup", "1", "--repeats", "5", "--max-attempts", "1", "--min-run-ms", "0.05", "--rounds", "1"]
GRID = ["--grid", "cpu", "--cpu-points", "2"]


def _profile(out: Path, *extra: str) -> int:
    return main(["-q", "profile", *MODEL, "--backend", "torch_cpu", "--threads", "1", *GRID, *LIGHT, "--out", str(out), *extra])


def _graph():  # type: ignore[no-untyped-def]
    return trace_channel_graph(create_model("small_cnn", in_channels=1), SHAPE)


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "cpu.csv"
    assert _profile(out, "--note", "test run") == 0
    return out


def test_profile_covers_every_grid_point_of_the_model(profiled: Path) -> None:
    table = LatencyTable.read(profiled, expect_backend="torch_cpu")
    wanted = plan_grid(_graph(), config=GridConfig("cpu", cpu_points=2)).specs()
    assert table.missing(wanted) == [] and len(table) == len(wanted)
    assert (table.frame["median_ms"] > 0).all()
    assert table.meta.extra["networks"]["small_cnn"]["input_shape"] == list(SHAPE)
    assert table.meta.extra["note"] == "test run" and table.meta.extra["backend_options"] == {"num_threads": 1}


def test_fit_calibrates_and_stores_it_with_the_table(profiled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "calibrated.csv"
    argv = ["fit", str(profiled), *MODEL, "--networks", "4", "--rounds", "1", *LIGHT, "--out", str(out), "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    table = LatencyTable.read(out)
    cal = calibrations(table)["small_cnn"]
    assert cal.n_points == 4 and cal.graph_signature == graph_signature(_graph())
    assert summary["scale"] == pytest.approx(cal.scale) and summary["dense_ms"] > 0
    # the cost model picks the stored calibration up by itself
    cost = LatencyCost.fit(table, _graph())
    assert cost.calibration == cal
    assert cost.dense == pytest.approx(cal.apply(
        cost.layer_sum_ms(cost.group_sizes, weight_bandwidth_gbps=cal.weight_bandwidth_gbps), cost.weights_mb(cost.group_sizes)
    ))
    assert summary["dense_ms"] == pytest.approx(cost.dense) and summary["dense_measured_ms"] == cal.dense_ms > 0
    assert cost.measured_dense == cal.dense_ms  # what --latency 0.5 takes half of
    assert len(table) == len(LatencyTable.read(profiled))  # the measurements are untouched


def test_fit_without_calibration_only_checks_coverage(profiled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", str(profiled), *MODEL, "--no-calibrate"]) == 0
    assert "5 layers, 4 channel groups" in capsys.readouterr().out
    assert not LatencyTable.read(profiled).meta.calibration


def test_fit_refuses_a_table_that_lacks_the_models_layers(profiled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["fit", str(profiled), "--model", "small_cnn", "--input-shape", "1,16,16", "--no-calibrate"]
    assert main(argv) == 2
    assert "table" in capsys.readouterr().err


def test_fit_refuses_a_table_from_another_device(profiled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    head, _, body = profiled.read_text().partition("\n")
    meta = json.loads(head[len(MAGIC) :])
    meta["device"] = "Some Other CPU (64 cores)"
    foreign = tmp_path / "foreign.csv"
    foreign.write_text(MAGIC + json.dumps(meta) + "\n" + body)
    assert main(["fit", str(foreign), *MODEL, "--networks", "3", *LIGHT]) == 2
    err = capsys.readouterr().err
    assert "measured on 'Some Other CPU (64 cores)'" in err and "calibrate it on that device" in err


def test_bad_flags_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--model", "small_cnn", "--input-shape", "1x12", "--backend", "torch_cpu", "--out", str(tmp_path / "t.csv")]) == 2
    assert "--input-shape takes C,H,W" in capsys.readouterr().err
    assert main(["profile", *MODEL, "--backend", "nope", "--out", str(tmp_path / "t.csv")]) == 2
    assert "torch_cpu" in capsys.readouterr().err  # the valid names are listed
    assert not (tmp_path / "t.csv").exists()


def test_interrupted_profile_resumes_and_matches_an_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, profiled: Path
) -> None:
    out = tmp_path / "t.csv"
    calls = {"n": 0}
    real = Backend.measure

    def measure_then_interrupt(self: Backend, spec, protocol=None):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self, spec, protocol)

    monkeypatch.setattr(Backend, "measure", measure_then_interrupt)
    assert _profile(out) == 1  # interrupted: the CLI says how to resume
    assert not out.exists()
    monkeypatch.setattr(Backend, "measure", real)
    counted = {"n": 0}

    def counting(self: Backend, spec, protocol=None):  # type: ignore[no-untyped-def]
        counted["n"] += 1
        return real(self, spec, protocol)

    monkeypatch.setattr(Backend, "measure", counting)
    assert _profile(out) == 0
    full = LatencyTable.read(profiled)
    resumed = LatencyTable.read(out)
    assert counted["n"] == len(full) - 4  # the four finished entries were not measured again
    assert sorted(resumed.specs(), key=repr) == sorted(full.specs(), key=repr)


def test_prune_to_a_latency_budget_with_a_table(profiled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole path: table → LatencyCost → DSA search → latency-optimal rounding → report."""
    argv = [
        "-q", "prune", "--model", "small_cnn", "--data", "digits", "--subset-per-class", "8", "--from-scratch",
        "--search-epochs", "1", "--finetune-epochs", "0", "--batch-size", "32",
        "--latency", "0.6", "--latency-table", str(profiled), "--out", str(tmp_path / "run"), "--json",
    ]  # fmt: skip
    # digits are upsampled to 28x28; the table was profiled at 12x12, so it must be refused clearly first
    assert main(argv) == 2
    assert "table" in capsys.readouterr().err
    table28 = tmp_path / "t28.csv"
    assert main(["-q", "profile", "--model", "small_cnn", "--input-shape", "1,28,28", "--backend", "torch_cpu", "--threads", "1",
                 *GRID, *LIGHT, "--out", str(table28)]) == 0  # fmt: skip
    capsys.readouterr()
    argv[argv.index(str(profiled))] = str(table28)
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    budget = report["budgets"]["latency"]
    assert budget["unit"] == "ms" and budget["fraction_of_dense"] == pytest.approx(0.6)
    check = report.get("latency_check")
    if check is None:  # the model chose the counts: its price keeps to the limit
        assert budget["value"] <= budget["limit"] * (1 + 1e-9)
    else:  # timed on this machine (--verify-latency): the device chose them, whatever the model prices them at
        assert check["channels"] == report["channels"] and check["met"] == (check["measured_ms"] <= check["target_ms"])
    cost = LatencyCost.fit(LatencyTable.read(table28), trace_channel_graph(create_model("small_cnn", in_channels=1), (1, 28, 28)))
    assert cost.exact(report["channels"]) == pytest.approx(budget["value"])


def test_prune_profiles_this_host_into_the_cache_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--latency without a table: this host is profiled and calibrated into the cache, and the next job reuses it."""
    import hwdsa.lut.network as network
    from hwdsa.profilers.base import TimingProtocol

    monkeypatch.setenv("HWDSA_CACHE", str(tmp_path / "cache"))
    # What is tested here is the cache. The staleness check has tests of its own; with this light protocol on a host
    # whose level drifts 10% within seconds (an Intel Xeon VM here), it refused the second job now and then.
    import hwdsa.job.latency as job_latency

    monkeypatch.setattr(job_latency, "STALE_CALIBRATION", job_latency.MAX_SPREAD)
    real = network.latency_table_for
    light = TimingProtocol(warmup=2, repeats=10, max_attempts=1, min_run_ms=0.05, rounds=3)  # the calibration check times against it
    # the same call `hwdsa prune` makes, on a coarser grid and a lighter protocol to keep the test short
    monkeypatch.setattr(network, "latency_table_for", lambda *a, **k: real(*a, grid=GridConfig("cpu", cpu_points=2), protocol=light, networks=3, **k))
    from hwdsa.profilers.backend import get_backend_class

    ort = get_backend_class("onnxruntime")
    measured: list[object] = []
    real_measure = ort.measure
    monkeypatch.setattr(ort, "measure", lambda self, *a, **k: measured.append(a) or real_measure(self, *a, **k))
    argv = [
        "-q", "prune", "--model", "small_cnn", "--data", "digits", "--subset-per-class", "8", "--from-scratch",
        "--search-epochs", "1", "--finetune-epochs", "0", "--batch-size", "32", "--latency", "0.7", "--json",
    ]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    report = json.loads(capsys.readouterr().out)
    budget = report["budgets"]["latency"]
    table = LatencyTable.read(budget["table"], expect_backend="onnxruntime")
    assert Path(budget["table"]).parent == tmp_path / "cache" and "small_cnn" in calibrations(table)
    assert table.meta.fingerprint_id in Path(budget["table"]).name
    assert budget["value"] <= budget["limit"] * (1 + 1e-9)
    first = len(measured)
    assert first > 0
    assert main([*argv, "--out", str(tmp_path / "again")]) == 0
    assert len(measured) == first, "the second job on this host measures no layer"


def test_prune_refuses_a_calibration_this_machine_no_longer_matches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The dense network is timed once before any work: against a calibration twice as slow, prune says to refit."""
    model = ["--model", "small_cnn", "--input-shape", "1,28,28"]
    table = tmp_path / "t.csv"
    assert main(["-q", "profile", *model, "--backend", "torch_cpu", "--threads", "1", *GRID, *LIGHT, "--out", str(table)]) == 0
    assert main(["-q", "fit", str(table), *model, "--networks", "3", "--rounds", "1", *LIGHT]) == 0
    import dataclasses

    from hwdsa.lut.calibrate import attach_calibration

    cal = calibrations(LatencyTable.read(table))["small_cnn"]
    assert cal.dense_ms is not None
    stale = tmp_path / "stale.csv"
    attach_calibration(LatencyTable.read(table), "small_cnn", dataclasses.replace(cal, dense_ms=2 * cal.dense_ms)).write(stale)
    capsys.readouterr()
    argv = ["prune", "--data", "digits", "--subset-per-class", "20", "--from-scratch", "--search-epochs", "1",
            "--latency", "0.6", "--latency-table", str(stale), "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no longer runs as it did when the table was calibrated" in err and f"hwdsa fit {stale} --model small_cnn" in err


def test_prune_refits_a_stale_calibration_of_this_hosts_cached_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The cache table is the job's own: a calibration this machine no longer matches is fitted again, not refused."""
    import dataclasses

    import hwdsa.lut.network as network
    from hwdsa.lut.calibrate import attach_calibration
    from hwdsa.profilers.base import TimingProtocol

    monkeypatch.setenv("HWDSA_CACHE", str(tmp_path / "cache"))
    real = network.latency_table_for
    light = TimingProtocol(warmup=2, repeats=10, max_attempts=1, min_run_ms=0.05, rounds=3)
    monkeypatch.setattr(network, "latency_table_for", lambda *a, **k: real(*a, grid=GridConfig("cpu", cpu_points=2), protocol=light, networks=3, **k))
    argv = [
        "-q", "prune", "--model", "small_cnn", "--data", "digits", "--subset-per-class", "8", "--from-scratch",
        "--search-epochs", "1", "--finetune-epochs", "0", "--batch-size", "32", "--latency", "0.7",
        "--latency-backend", "torch_cpu", "--json",
    ]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    path = Path(json.loads(capsys.readouterr().out)["budgets"]["latency"]["table"])
    cal = calibrations(LatencyTable.read(path))["small_cnn"]
    assert cal.dense_ms is not None
    attach_calibration(LatencyTable.read(path), "small_cnn", dataclasses.replace(cal, dense_ms=3 * cal.dense_ms)).write(path)
    with caplog.at_level(logging.INFO, logger="hwdsa.job"):
        assert main([*argv, "--out", str(tmp_path / "again")]) == 0
    assert "refitting the calibration of this host's cached table (3 networks)" in caplog.text
    refitted = calibrations(LatencyTable.read(path))["small_cnn"]
    assert refitted.dense_ms is not None and refitted.dense_ms < 2 * cal.dense_ms and refitted.created_at != cal.created_at
    assert refitted.n_points == cal.n_points
