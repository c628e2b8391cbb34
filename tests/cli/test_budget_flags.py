"""Budget flags of `hwdsa prune`: fractions of the dense cost, and absolute latency times."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwdsa.cli import main
from hwdsa.cli._common import parse_fraction, parse_latency
from hwdsa.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.5", (0.5, None)),
        ("1", (1.0, None)),
        ("2.5ms", (None, 2.5)),
        (" 2.5 ms ", (None, 2.5)),
        ("800us", (None, 0.8)),
        ("0.01s", (None, 10.0)),
        (".5s", (None, 500.0)),
        ("+3ms", (None, 3.0)),
        ("1e-1ms", (None, 0.1)),
    ],
)
def test_parse_latency_reads_fractions_and_times(text: str, expected: tuple[float | None, float | None]) -> None:
    fraction, ms = parse_latency(text)
    assert fraction == pytest.approx(expected[0]) if expected[0] is not None else fraction is None
    assert ms == pytest.approx(expected[1]) if expected[1] is not None else ms is None


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("-1ms", r"--latency: a latency budget in ms must be positive .*got -1ms$"),
        ("0ms", r"a latency budget in ms must be positive .*got 0ms$"),
        ("-0.5us", r"a latency budget in us must be positive .*got -0.5us$"),
        ("-2 s", r"a latency budget in s must be positive .*got -2 s$"),
        ("1e400ms", r"a latency budget in ms must be positive and finite"),
    ],
)
def test_parse_latency_refuses_non_positive_times_as_times(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as caught:
        parse_latency(text)
    assert "fraction" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("-0.5", r"--latency expects a fraction of the dense cost in \(0, 1\], e.g. 0.5; got '-0.5'$"),
        ("0", r"--latency expects a fraction of the dense cost in \(0, 1\]"),
        ("nan", r"--latency expects a fraction of the dense cost in \(0, 1\]"),
        ("1.5", r"fraction of the dense cost in \(0, 1\], e.g. 0.5; got '1.5'; an absolute time needs a unit, e.g. 1.5ms"),
        ("fast", r"a fraction of the dense latency in \(0, 1\], e.g. 0.5, or a time with a unit \(2.5ms, 800us, 0.01s\); got 'fast'"),
        ("2.5 minutes", r"or a time with a unit"),
    ],
)
def test_parse_latency_refuses_bad_fractions_as_fractions(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_latency(text)


def test_parse_fraction_refuses_out_of_range() -> None:
    assert parse_fraction("0.25", "--flops") == 0.25
    for text in ("0", "-0.1", "1.01", "inf", "half"):
        with pytest.raises(ConfigError, match=r"--flops expects a fraction of the dense cost in \(0, 1\]"):
            parse_fraction(text, "--flops")


@pytest.mark.parametrize(
    ("flag", "message", "unwanted"),
    [
        ("--latency=-1ms", "a latency budget in ms must be positive", "fraction"),
        ("--latency=0us", "a latency budget in us must be positive", "fraction"),
        ("--latency=1.5", "expects a fraction of the dense cost in (0, 1]", None),
        ("--flops=-0.5", "--flops expects a fraction of the dense cost in (0, 1]", None),
    ],
)
def test_prune_refuses_bad_budgets_before_doing_anything(
    flag: str, message: str, unwanted: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["prune", "--model", "small_cnn", "--data", "digits", "--from-scratch", flag, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hwdsa prune: error: ") and message in err and "Traceback" not in err
    assert unwanted is None or unwanted not in err
    assert not out.exists()


def test_a_channel_floor_without_a_rounding_that_keeps_it_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["prune", "--model", "small_cnn", "--data", "digits", "--from-scratch", "--flops", "0.5", "--min-channels", "8"]
    assert main([*argv, "--round-to", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--min-channels" in err and "add --round-to 8" in err and "Traceback" not in err
    assert not out.exists()
