"""compare_outputs: real ONNX artefacts checked against PyTorch, and the failures it must catch."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from hwdsa.errors import ConfigError, ExportError
from hwdsa.export.compare import DEFAULT_TOLERANCES, ComparisonReport, Tolerance, compare_outputs
from hwdsa.export.onnx import onnx_from_module
from hwdsa.export.onnxruntime import OrtRunner, session_from_onnx


def _runner_for(model: nn.Module, path: Path) -> OrtRunner:
    return OrtRunner(session_from_onnx(onnx_from_module(model, path, input_shape=(1, 1, 28, 28)), providers=["CPUExecutionProvider"]))


@pytest.fixture(scope="module")
def digits_runner(digits_net: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> OrtRunner:
    return _runner_for(digits_net, tmp_path_factory.mktemp("cmp") / "net.onnx")


class _Broken:
    """A runner whose artefact is broken in a way no real exporter produces on purpose (NaN, wrong shape)."""

    name = "broken"

    def __init__(self, output: torch.Tensor) -> None:
        self.output = output

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.output.expand(len(x), *self.output.shape[1:])


def test_matching_artefact_passes_and_reports(digits_net: nn.Module, digits_runner: OrtRunner, digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = digits
    loader = [(images[i : i + 50], labels[i : i + 50]) for i in range(1400, 1500, 50)]  # DataLoader-style pairs
    report = compare_outputs(digits_net, digits_runner, loader, precision="fp32")
    assert report.passed and report.n_batches == 2 and report.n_samples == 100
    assert report.max_abs_error < 1e-4 and report.top1_agreement == 1.0
    assert report.tolerance == DEFAULT_TOLERANCES["fp32"]
    assert ComparisonReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def test_an_artefact_of_other_weights_fails_with_the_errors_in_the_message(
    digits_net: nn.Module, digits: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    images, _ = digits
    drifted = copy.deepcopy(digits_net)
    with torch.no_grad():
        drifted.head.bias.add_(0.05)  # what a stale or wrongly exported artefact looks like
    runner = _runner_for(drifted, tmp_path / "drifted.onnx")
    with pytest.raises(ExportError, match=r"max abs error 0\.05\d*, max rel error [\d.e+-]+, .*errors exceed \|d\| <= 0\.0001 \* max\|ref\|"):
        compare_outputs(digits_net, runner, [images[:64]], precision="fp32")
    report = compare_outputs(digits_net, runner, [images[:64]], precision="fp32", raise_on_failure=False)
    assert not report.passed and report.max_abs_error == pytest.approx(0.05, rel=1e-3)
    # The same drift is well inside the INT8 tolerance, whose point is the decision.
    assert compare_outputs(digits_net, runner, [images[:64]], precision="int8").passed


def test_swapped_classes_fail_the_top1_check(digits_net: nn.Module, digits: tuple[torch.Tensor, torch.Tensor], tmp_path: Path) -> None:
    images, _ = digits
    swapped = copy.deepcopy(digits_net)
    with torch.no_grad():
        swapped.head.weight.copy_(swapped.head.weight.roll(1, dims=0))
        swapped.head.bias.copy_(swapped.head.bias.roll(1, dims=0))
    runner = _runner_for(swapped, tmp_path / "swapped.onnx")
    loose = Tolerance(rtol=math.inf, atol=math.inf, min_top1_agreement=0.9)
    with pytest.raises(ExportError, match=r"top-1 agreement 0\.\d+ < 0\.9"):
        compare_outputs(digits_net, runner, [images[1400:1600]], precision="int8", tolerance=loose)


def test_nan_outputs_fail(digits_net: nn.Module) -> None:
    with pytest.raises(ExportError, match="the runner produced NaN or Inf"):
        compare_outputs(digits_net, _Broken(torch.full((1, 10), math.nan)), [torch.zeros(2, 1, 28, 28)], precision="fp16")


def test_shape_mismatch_and_empty_input_are_config_errors(digits_net: nn.Module) -> None:
    with pytest.raises(ConfigError, match=r"batch 0: broken returned shape \(2, 5\), the reference \(2, 10\)"):
        compare_outputs(digits_net, _Broken(torch.zeros(1, 5)), [torch.zeros(2, 1, 28, 28)], precision="fp32")
    with pytest.raises(ConfigError, match="verification batches is empty"):
        compare_outputs(digits_net, _Broken(torch.zeros(1, 10)), [], precision="fp32")
    with pytest.raises(ConfigError, match="verification batches: batch 0 is a str"):
        compare_outputs(digits_net, _Broken(torch.zeros(1, 10)), ["image.png"], precision="fp32")


def test_reference_training_mode_is_restored() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    net.train()
    compare_outputs(net, _Broken(torch.zeros(1, 10)), [torch.zeros(1, 1, 28, 28)], precision="fp32", raise_on_failure=False)
    assert net.training


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rtol": -1.0, "atol": 0.0}, r"rtol >= 0 and atol >= 0; got rtol=-1.0"),
        ({"rtol": 0.0, "atol": 0.0, "min_top1_agreement": 1.5}, r"min_top1_agreement must be in \[0, 1\]; got 1.5"),
    ],
)
def test_bad_tolerances_are_refused(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Tolerance(**kwargs)


def test_unknown_precision_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"precision must be one of \('fp32', 'fp16', 'int8'\); got 'int4'"):
        Tolerance.for_precision("int4")
