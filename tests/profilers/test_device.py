"""Device descriptions (profilers/device.py) and the CUDA driver binding (profilers/_cuda.py)."""

from __future__ import annotations

import os
from pathlib import Path

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


def test_cpu_description_ignores_what_changes_between_runs() -> None:
    # clock speed and BogoMIPS move with load and power state; the description must not
    busy = X86.replace("model name", "cpu MHz\t\t: 3500.123\nbogomips\t: 4890.85\nmodel name")
    idle = X86.replace("model name", "cpu MHz\t\t: 1500.000\nbogomips\t: 4891.02\nmodel name")
    assert busy != idle and cpu_description(busy) == cpu_description(idle) == cpu_description(X86)


def test_cpu_description_reads_this_machines_cpuinfo() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo here")
    assert cpu_description() == cpu_description(cpuinfo.read_text(encoding="utf-8", errors="replace"))
    assert cpu_description().endswith(f"({os.cpu_count()} cores)")


def test_cuda_driver_state_is_reported_not_raised() -> None:
    reason = _cuda.cuda_error_or_none()
    if reason is None:  # a machine with an NVIDIA driver and device
        assert "compute capability" in cuda_description(0)
    else:
        assert "NVIDIA" in reason or "CUDA" in reason
        with pytest.raises(BackendUnavailableError, match="NVIDIA|CUDA"):
            cuda_description(0)
