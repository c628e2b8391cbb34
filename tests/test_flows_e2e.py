"""`hwdsa prune` end to end on real data (scikit-learn digits): the promised outputs, the budget, both flows.

The search itself (budgets, resume of a killed search, DDP ranks agreeing) is tested in tests/dsa/test_search.py;
here the whole job runs through the CLI's `main` and its artefacts are checked as a user would read them.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from hwdsa.cli import main
from hwdsa.counting import count_flops
from hwdsa.data import load_dataset, make_loader
from hwdsa.job import PruneJobConfig
from hwdsa.surgery import load_pruned
from hwdsa.training import evaluate

# Tiny but real: 30 digits per class, a few epochs; the whole module runs in a few seconds.
TINY = ["--data", "digits", "--subset-per-class", "30", "--batch-size", "16", "--search-epochs", "2", "--finetune-epochs", "1"]
PRETRAINED = [*TINY, "--pretrain-epochs", "3", "--finetune-epochs", "2", "--flops", "0.5"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """One pre-trained job shared by the checks below (the expensive part runs once)."""
    out = tmp_path_factory.mktemp("pretrained") / "run"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["-q", "prune", *PRETRAINED, "--out", str(out)])
    assert code == 0
    return out, json.loads((out / "report.json").read_text()), buf.getvalue()


class TestPretrainedFlow:
    def test_writes_the_promised_files_and_no_checkpoint(self, pretrained: tuple[Path, dict[str, Any], str]) -> None:
        out, _, _ = pretrained
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
            "allocation.csv",
            "config.json",
            "pruned.pt",
            "report.json",
        ]

    def test_prints_the_result_table(self, pretrained: tuple[Path, dict[str, Any], str]) -> None:
        _, report, printed = pretrained
        assert "top-1 accuracy" in printed and "FLOPs (MACs)" in printed and "parameters" in printed
        assert str(report["pruned"]["flops"]) in printed

    def test_report_has_accuracy_flops_params_and_time(self, pretrained: tuple[Path, dict[str, Any], str]) -> None:
        _, report, _ = pretrained
        assert report["flow"] == "pretrained" and report["dataset"] == "digits"
        for phase in ("dense", "pruned"):
            assert 0.0 <= report[phase]["accuracy"] <= 1.0
            assert report[phase]["flops"] > 0 and report[phase]["params"] > 0
        assert report["dense"]["accuracy"] > 0.3, "three epochs on digits learn something"
        assert report["pruned"]["params"] < report["dense"]["params"]
        for key in ("pretrain_s", "search_s", "finetune_s", "total_s", "cpu_s"):
            assert report["timings"][key] > 0
        assert len(report["search_history"]) == 2

    def test_pruned_flops_are_within_the_budget(self, pretrained: tuple[Path, dict[str, Any], str]) -> None:
        _, report, _ = pretrained
        budget = report["budgets"]["flops"]
        assert budget["fraction_of_dense"] == pytest.approx(0.5)
        assert report["pruned"]["flops"] <= budget["limit"]
        assert budget["value"] == pytest.approx(report["pruned"]["flops"])
        assert report["pruned"]["flops_fraction"] > 0.4, "the allocation uses its budget"

    def test_allocation_csv_matches_the_report(self, pretrained: tuple[Path, dict[str, Any], str]) -> None:
        out, report, _ = pretrained
        with (out / "allocation.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == ["group", "channels", "kept", "kept_fraction", "keep_ratio", "producers", "consumers"]
        assert [int(r["kept"]) for r in rows] == report["channels"] and len(rows) == report["groups"]
        for r in rows:
            assert 1 <= int(r["kept"]) <= int(r["channels"])
            assert 0 < float(r["keep_ratio"]) <= 1 and r["producers"]

    def test_pruned_model_reloads_and_reproduces_its_accuracy(self, pretrained: tuple[Path, dict[str, Any], str]) -> None:
        out, report, _ = pretrained
        model, plan = load_pruned(out / "pruned.pt")
        assert list(plan.channels) == report["channels"]
        splits = load_dataset("digits", subset_per_class=30, seed=0)
        assert count_flops(model, splits.input_shape) == report["pruned"]["flops"]
        accuracy = evaluate(model, make_loader(splits.test, 256, train=False, seed=0), torch.device("cpu"))
        assert accuracy == pytest.approx(report["pruned"]["accuracy"])
        x, _ = next(iter(make_loader(splits.test, 8, train=False, seed=0)))
        assert model.eval()(x).shape == (8, 10)

    def test_config_json_reloads_to_the_same_config(self, pretrained: tuple[Path, dict[str, Any], str]) -> None:
        out, _, _ = pretrained
        cfg = PruneJobConfig.from_dict(json.loads((out / "config.json").read_text()))
        assert cfg.dataset == "digits" and cfg.subset_per_class == 30 and cfg.pretrain.epochs == 3 and cfg.finetune.epochs == 2
        assert json.loads(json.dumps(cfg.to_dict())) == json.loads((out / "config.json").read_text())


def test_from_scratch_under_two_budgets_with_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["-q", "prune", *TINY, "--from-scratch", "--flops", "0.5", "--params", "0.4", "--json", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert report["flow"] == "from_scratch"
    assert report["dense"]["accuracy"] is None and "pretrain_s" not in report["timings"]
    for name in ("flops", "params"):
        assert report["budgets"][name]["value"] <= report["budgets"][name]["limit"]
    assert report["pruned"]["params_fraction"] <= 0.4 and report["pruned"]["flops_fraction"] <= 0.5
    model, _ = load_pruned(out / "pruned.pt")
    assert model.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--flops", "1.5"], r"--flops expects a fraction of the dense cost in \(0, 1\]"),
        (["--flops", "0.001"], "smallest reachable"),
        (["--flops", "0.5", "--verify-latency"], "--verify-latency checks a latency budget"),
        (["--flops", "0.5", "--verify-margin", "0.6"], r"--verify-margin is a share of the budget in \[0, 0.5\)"),
    ],
)
def test_bad_budgets_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], match: str) -> None:
    code = main(["-q", "prune", *TINY, "--from-scratch", *flags, "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("hwdsa prune: error:")
    assert re.search(match, err), err


@pytest.mark.parametrize("kill_at", ["pretrain 3/3", "search 2/2", "finetune 2/2"])
def test_a_killed_job_resumes_to_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pretrained: tuple[Path, dict[str, Any], str], kill_at: str
) -> None:
    """Kill the job as an epoch of one phase starts (after earlier epochs were checkpointed), rerun with --resume."""
    import hwdsa.dsa.search
    import hwdsa.job.run

    argv = ["-q", "prune", *PRETRAINED]

    real_epoch, real_tqdm = getattr(hwdsa.job.run, "train_epoch"), getattr(hwdsa.dsa.search, "tqdm")  # noqa: B009

    def killing_epoch(*args: Any, desc: str = "", **kwargs: Any) -> float:
        if desc == kill_at:
            raise KeyboardInterrupt
        return float(real_epoch(*args, desc=desc, **kwargs))

    def killing_tqdm(*args: Any, desc: str = "", **kwargs: Any) -> Any:
        if desc == kill_at:
            raise KeyboardInterrupt
        return real_tqdm(*args, desc=desc, **kwargs)

    monkeypatch.setattr(hwdsa.job.run, "train_epoch", killing_epoch)
    monkeypatch.setattr(hwdsa.dsa.search, "tqdm", killing_tqdm)
    out = tmp_path / "killed"
    assert main([*argv, "--out", str(out)]) == 1
    assert (out / "checkpoint.pt").is_file() and not (out / "report.json").exists()
    monkeypatch.undo()
    assert main([*argv, "--out", str(out), "--resume"]) == 0

    straight_dir, straight, _ = pretrained
    resumed = json.loads((out / "report.json").read_text())
    assert resumed["channels"] == straight["channels"] and resumed["keep_ratios"] == straight["keep_ratios"]
    assert resumed["pruned"]["accuracy"] == straight["pruned"]["accuracy"]
    a, _ = load_pruned(straight_dir / "pruned.pt")
    b, _ = load_pruned(out / "pruned.pt")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


def test_fixed_ratio_baseline_keeps_its_ratios_within_the_budget(tmp_path: Path) -> None:
    """The uniform baseline (`fixed_keep_ratios`) prunes every group at its ratio, not re-allocated to fill the budget."""
    from dataclasses import replace

    from hwdsa.job import BudgetSpec, PruneJob

    base = PruneJobConfig()
    cfg = replace(
        base,
        dataset="digits",
        subset_per_class=30,
        batch_size=16,
        from_scratch=True,
        fixed_keep_ratios=(0.5,),
        budgets=(BudgetSpec("flops", fraction=0.9),),  # loose: a filling rounding would grow the groups
        finetune=replace(base.finetune, epochs=1),
    )
    report = PruneJob(cfg, tmp_path / "run").run()
    with (tmp_path / "run" / "allocation.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["kept"]) for r in rows] == [max(1, round(0.5 * int(r["channels"]))) for r in rows]
    assert report.pruned.flops_fraction < 0.5


@pytest.mark.parametrize("settle", [[], ["--settle-fraction", "0.5"]], ids=["after-search", "at-settle-point"])
def test_verify_latency_times_the_pruned_network_on_the_tables_device(
    small_ort_table: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, settle: list[str]
) -> None:
    """`--verify-latency`: the counts kept are ones that were timed here against the dense network; a settling search
    is checked at its settle point, and its last epoch trains the network the check kept."""
    table = small_ort_table
    out = tmp_path / "run"
    argv = [
        "prune", *TINY, "--from-scratch", "--latency", "0.8", "--latency-table", str(table), "--verify-latency",
        "--verify-margin", "0.03", *settle, "--out", str(out),
    ]  # fmt: skip
    with caplog.at_level("INFO", logger="hwdsa.dsa.search"):
        assert main(["-q", *argv]) == 0
    report = json.loads((out / "report.json").read_text())
    settled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("settled at")]
    assert settled == ([f"settled at {report['channels']} channels: the rest of the search trains that network's weights"] if settle else [])
    history = [epoch["mean_keep_ratio"] for epoch in report["search_history"]]
    assert (history[0] == history[1]) == bool(settle), "the ratios stop at the settle point, and only there"
    check = report["latency_check"]
    assert check == json.loads((out / "latency_check.json").read_text())
    assert report["channels"] == check["channels"] and any(c["channels"] == check["channels"] for c in check["candidates"])
    assert check["target_ms"] == pytest.approx(0.8 * check["dense_measured_ms"])
    assert check["aim_ms"] == pytest.approx(0.97 * check["target_ms"])  # --verify-margin 0.03
    assert check["met"] == (check["measured_ms"] <= check["target_ms"])
    assert report["timings"]["verify_latency_s"] > 0
    assert "latency (ms, measured on onnxruntime)" in capsys.readouterr().out


def test_resume_under_a_changed_budget_reruns_the_search_and_meets_the_new_budget(
    tmp_path: Path, pretrained: tuple[Path, dict[str, Any], str], caplog: pytest.LogCaptureFixture
) -> None:
    """--resume with another --flops reuses the pre-training (same inputs) and reruns search and fine-tuning."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(pretrained[0], out)
    flags = [f for f in PRETRAINED if f not in ("--flops", "0.5")]
    with caplog.at_level("INFO", logger="hwdsa.job"):
        assert main(["prune", *flags, "--flops", "0.3", "--out", str(out), "--resume"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["budgets"]["flops"]["fraction_of_dense"] == pytest.approx(0.3)
    assert report["pruned"]["flops_fraction"] <= 0.3
    assert report["dense"]["accuracy"] == pretrained[1]["dense"]["accuracy"], "the pre-training was reused"
    assert "pretrain_s" not in report["timings"] and report["timings"]["search_s"] > 0
    messages = caplog.text
    assert "reusing the finished pretrain phase" in messages
    assert re.search(r"rerunning the search phase \(changed: budgets\)", messages), messages


def test_resume_with_other_data_reruns_the_pretraining(
    tmp_path: Path, pretrained: tuple[Path, dict[str, Any], str], caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(pretrained[0], out)
    flags = [("20" if f == "30" else f) for f in PRETRAINED]  # --subset-per-class 20: another training set
    with caplog.at_level("INFO", logger="hwdsa.job"):
        assert main(["prune", *flags, "--out", str(out), "--resume"]) == 0
    assert re.search(r"rerunning the pretrain phase \(changed: subset_per_class\)", caplog.text), caplog.text
    assert json.loads((out / "report.json").read_text())["timings"]["pretrain_s"] > 0


def test_a_budget_the_dense_network_meets_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="hwdsa.job"):
        assert main(["-q", "prune", *TINY, "--from-scratch", "--flops", "1.0", "--out", str(tmp_path / "run")]) == 0
    assert "the dense network already meets it" in caplog.text


def test_one_network_for_two_devices_with_a_latency_budget_each(tmp_path: Path) -> None:
    """--latency A --latency-table TA --latency B --latency-table TB: both budgets met, each priced by its table."""
    from hwdsa.lut.grid import GridConfig
    from hwdsa.lut.network import profile_network
    from hwdsa.models import create_model
    from hwdsa.profilers import TimingProtocol

    tables = {}
    for backend in ("onnxruntime", "torch_cpu"):
        tables[backend] = tmp_path / f"{backend}.csv"
        profile_network(
            create_model("small_cnn", in_channels=1), (1, 28, 28), backend, tables[backend], grid=GridConfig("cpu", cpu_points=3),
            protocol=TimingProtocol(warmup=1, repeats=5, max_attempts=1, rounds=1), num_threads=1,
        )  # fmt: skip
    out = tmp_path / "run"
    argv = [
        "-q", "prune", *TINY, "--from-scratch", "--latency", "0.8", "--latency-table", str(tables["onnxruntime"]),
        "--latency", "0.7", "--latency-table", str(tables["torch_cpu"]), "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    budgets = json.loads((out / "report.json").read_text())["budgets"]
    assert set(budgets) == {"latency@onnxruntime", "latency@torch_cpu"}
    for name, backend, fraction in (("latency@onnxruntime", "onnxruntime", 0.8), ("latency@torch_cpu", "torch_cpu", 0.7)):
        assert budgets[name]["fraction_of_dense"] == pytest.approx(fraction)
        assert budgets[name]["value"] <= budgets[name]["limit"] * (1 + 1e-9)
        assert budgets[name]["value_kind"] == "predicted" and budgets[name]["table"] == str(tables[backend].resolve())


def test_latency_budgets_and_tables_must_pair_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["prune", *TINY, "--latency", "0.5", "--latency", "0.6", "--latency-table", "a.csv", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert "several --latency budgets need one --latency-table each" in capsys.readouterr().err


def test_every_report_times_the_dense_and_the_pruned_network(pretrained: tuple[Path, dict[str, Any], str]) -> None:
    """A FLOPs job still reports measured latency (ONNX Runtime, one thread), kept apart from any prediction."""
    _, report, printed = pretrained
    lat = report["latency"]
    assert lat["backend"] == "onnxruntime" and lat["rounds"] >= 1
    assert lat["dense_ms"] > 0 and lat["pruned_ms"] > 0 and lat["dense_iqr_ms"] >= 0
    assert lat["speedup"] == pytest.approx(lat["dense_ms"] / lat["pruned_ms"])
    assert lat["measured_fraction"] == pytest.approx(lat["pruned_ms"] / lat["dense_ms"])
    assert lat["predicted_pruned_ms"] is None and lat["budget_ms"] is None and lat["met"] is None  # no latency budget
    assert "latency (ms, measured on onnxruntime)" in printed and "speed-up (measured)" in printed


def test_a_latency_report_holds_measured_against_requested(
    small_ort_table: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = small_ort_table
    out = tmp_path / "run"
    assert main(["-q", "prune", *TINY, "--from-scratch", "--latency", "0.9", "--latency-table", str(table), "--out", str(out)]) == 0
    lat = json.loads((out / "report.json").read_text())["latency"]
    assert lat["requested_fraction"] == pytest.approx(0.9)
    assert lat["budget_ms"] == pytest.approx(0.9 * lat["dense_ms"]), "a fraction is held against the dense network as timed"
    assert lat["predicted_pruned_ms"] > 0 and lat["predicted_dense_ms"] > lat["predicted_pruned_ms"]
    assert lat["met"] == (lat["pruned_ms"] <= lat["budget_ms"] + lat["tolerance_ms"])
    assert re.search(r"latency budget (met|MISSED): measured 0\.\d+ of dense against 0\.900 requested", capsys.readouterr().out)


@pytest.fixture(scope="module")
def small_ort_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ONNX Runtime table of the small CNN, measured on this machine."""
    from hwdsa.lut.grid import GridConfig
    from hwdsa.lut.network import profile_network
    from hwdsa.models import create_model
    from hwdsa.profilers import TimingProtocol

    table = tmp_path_factory.mktemp("table") / "ort.csv"
    profile_network(
        create_model("small_cnn", in_channels=1), (1, 28, 28), "onnxruntime", table, grid=GridConfig("cpu", cpu_points=3),
        protocol=TimingProtocol(warmup=1, repeats=5, max_attempts=1, rounds=1), num_threads=1,
    )  # fmt: skip
    return table


def _moved_to(table: Path, device: str, out: Path) -> Path:
    """The same table, its header saying it was measured on `device`."""
    header, _, body = table.read_text().partition("\n")
    moved = json.loads(header.split(" ", 2)[2])
    moved["device"] = device
    out.write_text(" ".join(header.split(" ", 2)[:2]) + " " + json.dumps(moved) + "\n" + body)
    return out


def test_a_table_of_another_device_is_refused_before_any_training(
    small_ort_table: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = _moved_to(small_ort_table, "Some Other CPU (64 cores)", tmp_path / "other.csv")
    out = tmp_path / "run"
    code = main(["prune", *TINY, "--latency", "0.8", "--latency-table", str(other), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "measured on another device ('Some Other CPU (64 cores)'" in err and "--target-device" in err
    assert not (out / "checkpoint.pt").exists() and not (out / ".pretrain.done.pt").exists(), "refused before training"


def test_pruning_for_a_named_target_device_is_an_explicit_choice(
    small_ort_table: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = _moved_to(small_ort_table, "Some Other CPU (64 cores)", tmp_path / "other.csv")
    flags = [*TINY, "--from-scratch", "--latency", "0.8", "--latency-table", str(other), "--target-device", "Some Other CPU (64 cores)"]
    assert main(["-q", "prune", *flags, "--verify-latency", "--out", str(tmp_path / "v")]) == 2
    assert "--verify-latency times candidates on this machine" in capsys.readouterr().err
    assert main(["-q", "prune", *flags, "--out", str(tmp_path / "run")]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["latency"] is None and "not timed here" in report["latency_note"]


def test_the_shipped_tables_of_another_host_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hwdsa.lut import packaged_tables
    from hwdsa.lut.table import LatencyTable
    from hwdsa.profilers.backend import get_backend

    table = packaged_tables()["cpu-onnxruntime-fp32-b1"]
    if LatencyTable.read(table).meta.device == get_backend("onnxruntime", num_threads=1).device_description():
        pytest.skip("this host is the one the shipped table was measured on")
    argv = ["prune", *TINY, "--latency", "0.5", "--latency-table", str(table), "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "measured on another device" in capsys.readouterr().err


def test_choices_that_cost_speed_are_warned_about(small_ort_table: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An uncalibrated table, and --round-to off the ONNX Runtime table's channel lattice (multiples of 8)."""
    argv = ["-q", "prune", *TINY, "--from-scratch", "--latency", "0.9", "--latency-table", str(small_ort_table), "--round-to", "4"]
    with caplog.at_level("WARNING", logger="hwdsa.job"):
        assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    assert "--round-to 4 is off" in caplog.text and "channel lattice (multiples of 8)" in caplog.text
    assert "has no calibration for small_cnn" in caplog.text and f"hwdsa fit {small_ort_table} --model small_cnn" in caplog.text


def test_a_table_whose_fingerprint_differs_is_refused(small_ort_table: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Same CPU name, other instruction set (a VM that masks AVX-512, another stepping): another device."""
    header, _, body = small_ort_table.read_text().partition("\n")
    meta = json.loads(header.split(" ", 2)[2])
    assert meta["fingerprint"]["kind"] == "cpu", "tables profiled here record this host's fingerprint"
    meta["fingerprint"]["logical_cores"] = 64
    edited = tmp_path / "edited.csv"
    edited.write_text(" ".join(header.split(" ", 2)[:2]) + " " + json.dumps(meta) + "\n" + body)
    assert main(["prune", *TINY, "--latency", "0.8", "--latency-table", str(edited), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "measured on another device" in err and "cores: 64 in the table" in err


def test_a_channel_floor_holds_in_the_search_and_in_the_network(tmp_path: Path) -> None:
    """--min-channels 8 --round-to 8 under a tight budget: without the floor the first group (16 channels) goes
    below 8; with it every searched ratio and every kept count stays at 8 or more."""
    flags = ["--from-scratch", *TINY, "--flops", "0.08", "--json"]
    reports = {}
    for name, extra in (("free", []), ("floor", ["--min-channels", "8", "--round-to", "8"])):
        out = tmp_path / name
        assert main(["-q", "prune", *flags, *extra, "--out", str(out)]) == 0
        reports[name] = json.loads((out / "report.json").read_text())
    sizes = [16, 32, 64, 128]
    assert min(reports["free"]["channels"]) < 8, "the budget should push a group below the floor without one"
    assert all(c >= 8 for c in reports["floor"]["channels"]), reports["floor"]["channels"]
    assert all(r * c >= 8 - 1e-3 for r, c in zip(reports["floor"]["keep_ratios"], sizes))
    assert reports["floor"]["pruned"]["flops"] <= reports["floor"]["budgets"]["flops"]["limit"]


def test_a_settled_search_keeps_the_channels_it_trained_and_old_configs_keep_their_keys(tmp_path: Path) -> None:
    """--settle-fraction 0.5 of two search epochs: the ratios stop after the first (the job's surgery check holds the
    pruned network to the masked one), with the learning rate restarted there or not; a job without the flags writes
    no settle_fraction or settle_restart, so that results keyed before the settings existed keep their keys."""
    flags = ["--from-scratch", *TINY, "--flops", "0.4", "--round-to", "4", "--json"]
    configs, histories = {}, {}
    for name, extra in (("plain", []), ("settled", ["--settle-fraction", "0.5"]), ("restarted", ["--settle-fraction", "0.5", "--settle-restart"])):
        out = tmp_path / name
        assert main(["-q", "prune", *flags, *extra, "--out", str(out)]) == 0
        configs[name] = json.loads((out / "config.json").read_text())
        report = json.loads((out / "report.json").read_text())
        assert report["pruned"]["flops"] <= report["budgets"]["flops"]["limit"]
        assert all(c % 4 == 0 or c == s for c, s in zip(report["channels"], [16, 32, 64, 128]))
        histories[name] = [epoch["mean_keep_ratio"] for epoch in report["search_history"]]
    assert "settle_fraction" not in configs["plain"]["admm"] and "settle_restart" not in configs["plain"]["admm"]
    assert configs["settled"]["admm"]["settle_fraction"] == 0.5 and "settle_restart" not in configs["settled"]["admm"]
    assert configs["restarted"]["admm"]["settle_restart"] is True
    assert histories["plain"][0] != histories["plain"][1], "the ratios move in both epochs of a plain search"
    assert histories["settled"][0] == histories["settled"][1], "and in the first only when it settles halfway"
    assert histories["restarted"] == histories["settled"], "the restart moves the weights' rate, not the ratios"


def _torchrun_rank(rank: int, port: int, out: str) -> None:
    """One rank of a two-process `hwdsa prune`, with the environment torchrun gives it."""
    import os

    import torch.distributed as dist

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    assert main(["-q", "prune", "--from-scratch", *TINY, "--flops", "0.5", "--device", "cpu", "--out", out]) == 0
    Path(out, f"rank{rank}-left").write_text(str(not dist.is_initialized()))


def test_a_job_under_torchrun_leaves_the_process_group_it_joined(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_torchrun_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}-left").read_text() for r in range(2)] == ["True", "True"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["pruned"]["flops"] <= report["budgets"]["flops"]["limit"]
