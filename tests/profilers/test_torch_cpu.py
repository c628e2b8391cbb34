"""PyTorch eager CPU backend (profilers/torch_cpu.py): real measurements on tiny layers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _profiler_helpers import LIGHT, MORE_WORK, assert_more_work_is_slower, check_measurement, conv, tiny_specs
from hwdsa.errors import ConfigError
from hwdsa.profilers import get_backend, measure_network


@pytest.mark.parametrize("spec", tiny_specs(), ids=lambda s: f"{s.kind}-{s.activation}-g{s.groups}")
def test_measures_every_layer_kind(spec: object) -> None:
    check_measurement(get_backend("torch_cpu", num_threads=1).measure(spec, LIGHT))  # type: ignore[arg-type]


def test_thread_setting_is_applied_and_restored() -> None:
    before = torch.get_num_threads()
    be = get_backend("torch_cpu", num_threads=1)
    with be.session(conv(4, 8)) as session:
        assert torch.get_num_threads() == 1
        assert torch.is_inference_mode_enabled()
        session.run_once()
    assert torch.get_num_threads() == before
    assert be.options() == {"num_threads": 1}


@pytest.mark.parametrize("kind", sorted(MORE_WORK))
def test_bigger_layer_is_slower(kind: str) -> None:
    """Timings track work: 16x the MACs is measured at least 1.5x slower (several times in practice)."""
    assert_more_work_is_slower(get_backend("torch_cpu", num_threads=1), *MORE_WORK[kind])


def test_refuses_half_and_int8() -> None:
    with pytest.raises(ConfigError, match=r"backend 'torch_cpu' measures precision\(s\) \('fp32',\); got 'int8'"):
        get_backend("torch_cpu").measure(conv(4, 8, precision="int8"), LIGHT)


def test_network_end_to_end_leaves_the_model_alone() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3)).train()
    weight = net[0].weight.detach().clone()
    m = measure_network(net, (1, 3, 16, 16), "torch_cpu", LIGHT, num_threads=1)
    check_measurement(m)
    assert net.training and net[0].weight.dtype is torch.float32
    torch.testing.assert_close(net[0].weight.detach(), weight)


def test_network_must_be_a_module(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="times torch.nn.Module networks; got PosixPath"):
        measure_network(tmp_path / "net.onnx", (1, 3, 8, 8), "torch_cpu", LIGHT)
