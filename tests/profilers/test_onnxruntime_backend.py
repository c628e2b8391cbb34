"""ONNX Runtime backends (profilers/onnxruntime.py): real CPU measurements; GPU providers skip here."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from _profiler_helpers import LIGHT, MORE_WORK, assert_more_work_is_slower, check_measurement, conv, tiny_specs
from hwdsa.errors import BackendUnavailableError, ConfigError, ExportError
from hwdsa.profilers import get_backend, get_backend_class, measure_network
from hwdsa.profilers.base import LayerSpec
from hwdsa.profilers.layers import onnx_from_spec
from hwdsa.profilers.onnxruntime import nchwc_block_size
from hwdsa.profilers.specs import input_shape as spec_input_shape


def test_measures_every_layer_kind() -> None:
    be = get_backend("onnxruntime", num_threads=1)
    for spec in tiny_specs():
        check_measurement(be.measure(spec, LIGHT))


@pytest.mark.parametrize("kind", sorted(MORE_WORK))
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_bigger_layer_is_slower_at_every_precision(precision: str, kind: str) -> None:
    """Timings track work: 16x the MACs is measured at least 1.5x slower (several times in practice)."""
    small, big = (replace(spec, precision=precision) for spec in MORE_WORK[kind])
    assert_more_work_is_slower(get_backend("onnxruntime", num_threads=1), small, big)


def test_uses_the_bundle_file_when_given(tmp_path: Path) -> None:
    spec = conv(4, 8)
    path = onnx_from_spec(spec, tmp_path / "layer.onnx")
    be = get_backend("onnxruntime", num_threads=1, onnx_files={spec: path})
    check_measurement(be.measure(spec, LIGHT))
    path.write_bytes(b"not onnx")  # proves the file is the one being loaded
    with pytest.raises(ExportError, match="ONNX Runtime cannot load"):
        be.measure(spec, LIGHT)


def test_layout_reorders_of_an_isolated_layer_are_measured(tmp_path: Path) -> None:
    """NCHWc wraps a convolution timed alone in reorders its network does not run; ORT's profiler times them."""
    spec = LayerSpec("conv", 16, 16, kernel=(3, 3), padding=(1, 1), in_size=(16, 16), activation="relu")
    path = onnx_from_spec(spec, tmp_path / "conv.onnx")
    be = get_backend("onnxruntime", num_threads=1)
    shape = spec_input_shape(spec)
    reorders = be.boundary_reorder_ms(path, precision="fp32", input_shape=shape)  # type: ignore[attr-defined]
    assert 0.0 < reorders < 0.5  # a ReorderInput and a ReorderOutput of 16x16x16 floats: microseconds
    plain = get_backend("onnxruntime", num_threads=1, graph_optimization_level="extended")
    assert plain.boundary_reorder_ms(path, precision="fp32", input_shape=shape) == 0.0  # type: ignore[attr-defined]
    linear = LayerSpec("linear", 64, 10)
    fc = onnx_from_spec(linear, tmp_path / "fc.onnx")
    assert be.boundary_reorder_ms(fc, precision="fp32", input_shape=spec_input_shape(linear)) == 0.0  # type: ignore[attr-defined]
    check_measurement(be.measure(spec, LIGHT))  # the subtracted timing is still a valid measurement
    assert not list(tmp_path.glob("*.json"))  # the profiler's files stay out of the way


def test_options_are_recorded() -> None:
    assert get_backend("onnxruntime", num_threads=2).options() == {
        "provider": "CPUExecutionProvider", "num_threads": 2, "boundary_reorders": "subtract"
    }
    # without the NCHWc transformer there are no layout reorders to subtract, and no channel lattice
    plain = get_backend("onnxruntime", num_threads=2, graph_optimization_level="extended")
    assert "boundary_reorders" not in plain.options() and plain.channel_multiple == 1
    assert nchwc_block_size() in (8, 16) and get_backend("onnxruntime").channel_multiple == 8  # x86 here
    with pytest.raises(ConfigError, match="boundary_reorders must be one of"):
        get_backend("onnxruntime", boundary_reorders="drop")
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
