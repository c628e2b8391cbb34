"""ONNX Runtime sessions: provider choice, loading errors, the runner, and timing under the shared protocol."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hwdsa.errors import BackendUnavailableError, ConfigError, ExportError
from hwdsa.export.onnx import onnx_from_module
from hwdsa.export.onnxruntime import PROVIDER_PREFERENCE, OrtRunner, default_providers, session_from_onnx, time_session
from hwdsa.profilers.base import Measurement, TimingProtocol

from _export_helpers import ConvBnRelu

FAST = TimingProtocol(warmup=1, repeats=5, max_attempts=1, rounds=1)


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return onnx_from_module(ConvBnRelu().eval(), tmp_path_factory.mktemp("ort") / "m.onnx", input_shape=(1, 1, 28, 28))


def test_default_providers_follow_the_preference_and_what_runs_here(small_onnx: Path) -> None:
    chosen = default_providers()
    assert chosen[-1] == "CPUExecutionProvider"
    assert chosen == sorted(chosen, key=PROVIDER_PREFERENCE.index)
    if not torch.cuda.is_available():
        # onnxruntime-gpu lists CUDA and TensorRT here although neither can run: they must not be asked for.
        assert chosen == ["CPUExecutionProvider"]
    session = session_from_onnx(small_onnx)
    assert session.get_providers()[0] == chosen[0]


def test_threads_are_applied(small_onnx: Path) -> None:
    session = session_from_onnx(small_onnx, providers=["CPUExecutionProvider"], threads=1)
    assert session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(ConfigError, match="threads must be >= 1 or None; got 0"):
        session_from_onnx(small_onnx, threads=0)


def test_unknown_provider_lists_the_available_ones(small_onnx: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown or unavailable ONNX Runtime provider\(s\) \['FpgaExecutionProvider'\]; available: .*CPUExecutionProvider"):
        session_from_onnx(small_onnx, providers=["FpgaExecutionProvider"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
def test_gpu_provider_without_gpu_is_refused_not_silently_cpu(small_onnx: Path) -> None:
    with pytest.raises(BackendUnavailableError, match=r"\['CUDAExecutionProvider'\] cannot run here: no CUDA device"):
        session_from_onnx(small_onnx, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_unloadable_file_is_an_export_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(ExportError, match=r"ONNX Runtime cannot load .*bad.onnx"):
        session_from_onnx(bad, providers=["CPUExecutionProvider"])


def test_runner_infers_by_name_and_reports_missing_inputs(small_onnx: Path) -> None:
    runner = OrtRunner(session_from_onnx(small_onnx, providers=["CPUExecutionProvider"]))
    assert runner.name == "onnxruntime[CPUExecutionProvider]"
    assert runner.input_names == ["input"] and runner.output_names == ["output"]
    x = np.zeros((3, 1, 28, 28), dtype=np.float32)
    assert runner.infer({"input": x})["output"].shape == (3, 10)
    with pytest.raises(ConfigError, match=r"missing input\(s\) \['input'\]"):
        runner.infer({"image": x})


def test_time_session_uses_the_shared_protocol(small_onnx: Path) -> None:
    session = session_from_onnx(small_onnx, providers=["CPUExecutionProvider"], threads=1)
    measured = time_session(session, torch.randn(1, 1, 28, 28), FAST)
    assert isinstance(measured, Measurement)
    assert measured.repeats == 5 and 0 < measured.min_ms <= measured.median_ms <= measured.q3_ms
    by_name = time_session(session, {"input": np.zeros((1, 1, 28, 28), np.float32)}, FAST)
    assert by_name.median_ms > 0


def test_time_session_reports_shape_errors_before_timing(small_onnx: Path) -> None:
    session = session_from_onnx(small_onnx, providers=["CPUExecutionProvider"])
    with pytest.raises(ConfigError, match=r"cannot run the graph on inputs \{'input': \(1, 3, 28, 28\)\} \(it expects \{'input': \['batch', 1, 28, 28\]\}\)"):
        time_session(session, torch.randn(1, 3, 28, 28), FAST)
    with pytest.raises(ConfigError, match=r"cannot run the graph on inputs \{.input.: \(2, 1, 14, 14\)\}"):
        OrtRunner(session)(torch.randn(2, 1, 14, 14))
