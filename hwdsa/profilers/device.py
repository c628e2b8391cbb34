"""Stable names of the device a table was measured on (stdlib only): CPU model and cores, or GPU and capability.

A latency table is only valid on the device it was measured on, and `hwdsa.lut` refuses a table whose
`device` differs from the expected one, so the string must not change between runs on one machine:
no clock speeds, no load, no driver version (that goes into `versions`).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

_CPUINFO_KEYS = ("model name", "Model", "Hardware", "cpu model", "Processor")


def _cpuinfo_model(text: str) -> str | None:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip(), value.strip())
    for key in _CPUINFO_KEYS:
        if key in fields:
            return fields[key]
    return None


def _board_model() -> str | None:
    """The board name on ARM systems (Jetson, Raspberry Pi), whose /proc/cpuinfo names no CPU model."""
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            text = Path(path).read_bytes().rstrip(b"\x00").decode(errors="replace").strip()
        except OSError:
            continue
        if text:
            return text
    return None


def cpu_description(cpuinfo: str | None = None) -> str:
    """E.g. "AMD EPYC 7B13 (2 cores)": the CPU model name from /proc/cpuinfo and the logical core count.

    Args:
        cpuinfo: the text of /proc/cpuinfo (read from the system when None); for tests.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    model = _cpuinfo_model(cpuinfo) or _board_model() or platform.processor() or platform.machine() or "unknown CPU"
    return f"{' '.join(model.split())} ({os.cpu_count() or 1} cores)"


def cuda_description(index: int = 0) -> str:
    """E.g. "NVIDIA H100 80GB HBM3 (compute capability 9.0)", read through the CUDA driver.

    Raises:
        BackendUnavailableError: no NVIDIA driver or device here.
    """
    from ._cuda import describe_device

    return describe_device(index)


__all__ = ["cpu_description", "cuda_description"]
