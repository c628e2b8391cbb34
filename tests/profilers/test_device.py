"""Device descriptions (profilers/device.py) and the CUDA driver binding (profilers/_cuda.py)."""

from __future__ import annotations

import os

import pytest

from hwdsa.errors import BackendUnavailableError
from hwdsa.profilers import _cuda
from hwdsa.profilers.device import cpu_description, cuda_description

X86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13  64-Core Processor\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13  64-Core Processor\n"
ARM = "processor\t: 0\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\n"


def test_cpu_description_from_cpuinfo() -> None:
    assert cpu_description(X86) == f"AMD EPYC 7B13 64-Core Processor ({os.cpu_count()} cores)"


def test_cpu_description_without_model_name_still_names_something() -> None:
    text = cpu_description(ARM)  # Jetson-style cpuinfo: falls back to the board model or the machine type
    assert text.endswith(f"({os.cpu_count()} cores)") and len(text) > len(" (1 cores)")


def test_cpu_description_is_stable() -> None:
    assert cpu_description() == cpu_description()
    assert "cores)" in cpu_description()


def test_cuda_driver_state_is_reported_not_raised() -> None:
    reason = _cuda.cuda_error_or_none()
    if reason is None:  # a machine with an NVIDIA driver and device
        assert "compute capability" in cuda_description(0)
    else:
        assert "NVIDIA" in reason or "CUDA" in reason
        with pytest.raises(BackendUnavailableError, match="NVIDIA|CUDA"):
            cuda_description(0)
