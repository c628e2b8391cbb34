"""PyTorch CUDA backend (profilers/torch_cuda.py): runs where a CUDA device is visible, skips with the reason elsewhere."""

from __future__ import annotations

import pytest

from _profiler_helpers import LIGHT, check_measurement, conv
from hwdsa.errors import BackendUnavailableError, ConfigError
from hwdsa.profilers import get_backend, get_backend_class, measure_network
from hwdsa.profilers.base import LayerSpec

_REASON = get_backend_class("torch_cuda").unavailable_reason()
requires_cuda = pytest.mark.skipif(_REASON is not None, reason=f"torch_cuda unavailable: {_REASON}")


@pytest.mark.skipif(_REASON is None, reason="a CUDA device is visible; the unavailable path cannot be shown")
def test_unavailable_says_why() -> None:
    with pytest.raises(BackendUnavailableError, match="backend 'torch_cuda' is not available here: .*CUDA"):
        get_backend("torch_cuda")


@requires_cuda
@pytest.mark.parametrize("cuda_graphs", [True, False])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_measures_with_and_without_graphs(precision: str, cuda_graphs: bool) -> None:
    import torch

    tf32 = torch.backends.cudnn.allow_tf32
    be = get_backend("torch_cuda", cuda_graphs=cuda_graphs)
    check_measurement(be.measure(conv(16, 32, size=16, precision=precision), LIGHT))
    check_measurement(be.measure(LayerSpec("linear", 64, 10, precision=precision), LIGHT))
    assert torch.backends.cudnn.allow_tf32 == tf32  # settings restored
    assert "compute capability" in be.device_description()


@requires_cuda
def test_network_and_bad_precision() -> None:
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    check_measurement(measure_network(net, (1, 3, 32, 32), "torch_cuda", LIGHT, precision="fp16"))
    assert next(net.parameters()).device.type == "cpu"  # the caller's model is left where it was
    with pytest.raises(ConfigError, match="measures precision"):
        get_backend("torch_cuda").measure(conv(4, 8, precision="int8"), LIGHT)


def test_bad_device_index() -> None:
    cls = get_backend_class("torch_cuda")
    with pytest.raises(ConfigError, match="device must be a CUDA device index >= 0; got -1"):
        cls(device=-1)
