"""ONNX Runtime backends (profilers/onnxruntime.py): real CPU measurements; GPU providers skip here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _profiler_helpers import LIGHT, check_measurement, conv, tiny_specs
from hwdsa.errors import BackendUnavailableError, ConfigError, ExportError
from hwdsa.profilers import get_backend, get_backend_class, measure_network
from hwdsa.profilers.base import LayerSpec
from hwdsa.profilers.layers import onnx_from_spec


def test_measures_every_layer_kind() -> None:
    be = get_backend("onnxruntime", num_threads=1)
    for spec in tiny_specs():
        check_measurement(be.measure(spec, LIGHT))


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_lower_precisions_run_on_the_cpu(precision: str) -> None:
    check_measurement(get_backend("onnxruntime", num_threads=1).measure(LayerSpec("linear", 16, 8, precision=precision), LIGHT))


def test_uses_the_bundle_file_when_given(tmp_path: Path) -> None:
    spec = conv(4, 8)
    path = onnx_from_spec(spec, tmp_path / "layer.onnx")
    be = get_backend("onnxruntime", num_threads=1, onnx_files={spec: path})
    check_measurement(be.measure(spec, LIGHT))
    path.write_bytes(b"not onnx")  # proves the file is the one being loaded
    with pytest.raises(ExportError, match="ONNX Runtime cannot load"):
        be.measure(spec, LIGHT)


def test_options_are_recorded() -> None:
    assert get_backend("onnxruntime", num_threads=2).options() == {"provider": "CPUExecutionProvider", "num_threads": 2}
    assert get_backend("onnxruntime").options()["num_threads"] == 0  # ONNX Runtime's default


def test_network_from_module_and_from_file(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 14 * 14, 10))
    check_measurement(measure_network(net, (1, 3, 16, 16), "onnxruntime", LIGHT, num_threads=1))
    path = onnx_from_spec(conv(3, 8), tmp_path / "net.onnx")
    check_measurement(measure_network(path, (1, 3, 8, 8), "onnxruntime", LIGHT, num_threads=1))


def test_missing_onnx_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ONNX file .*missing.onnx does not exist"):
        measure_network(tmp_path / "missing.onnx", (1, 3, 8, 8), "onnxruntime", LIGHT)


@pytest.mark.parametrize("name", ["onnxruntime_cuda", "onnxruntime_tensorrt"])
def test_gpu_providers(name: str) -> None:
    cls = get_backend_class(name)
    if not cls.is_available():
        with pytest.raises(BackendUnavailableError, match=r"(Provider|NVIDIA|TensorRT)"):
            get_backend(name)
        pytest.skip(f"{name} cannot run here: {cls.unavailable_reason()}")
    be = get_backend(name)
    check_measurement(be.measure(conv(8, 16), LIGHT))
    assert "compute capability" in be.device_description()


def test_graph_optimization_level_is_an_option_of_the_table_identity() -> None:
    be = get_backend("onnxruntime", num_threads=1, graph_optimization_level="extended")
    assert be.options() == {"provider": "CPUExecutionProvider", "num_threads": 1, "graph_optimization_level": "extended"}
    check_measurement(be.measure(conv(16, 16), LIGHT))
    with pytest.raises(ConfigError, match="graph_optimization_level must be one of"):
        get_backend("onnxruntime", graph_optimization_level="max")
