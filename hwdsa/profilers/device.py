"""Stable names and fingerprints of the device a table was measured on (stdlib only).

A latency table is only valid on the device it was measured on, and `hwdsa.lut` refuses a table whose
`device` differs from the expected one, so the string must not change between runs on one machine:
no clock speeds, no load, no driver version (that goes into `versions`).

The name does not tell every two hosts apart (a cloud "AMD EPYC" with or without AVX-512, a VM that masks
flags), so every new table also records a *fingerprint* (`cpu_fingerprint`, `cuda_fingerprint`): the
facts that change which kernels run, compared field by field with `fingerprint_differences` and named
by `fingerprint_id`, which also keys the per-user table cache (`hwdsa.lut.cache`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from hwdsa.errors import BackendUnavailableError

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


# ---------------------------------------------------------------------------------------------------
# Fingerprints: the facts that tell two hosts apart where the device name does not
# ---------------------------------------------------------------------------------------------------
#
# A fingerprint is a plain JSON object (it is stored in every table header as "fingerprint", and its
# `fingerprint_id` as "fingerprint_id"). It holds only facts that stay put between sessions on one
# machine and change the kernels a library picks: no clock speed, load, microcode or serial number.
#
# CPU ("kind": "cpu"):
#   arch           platform.machine() ("x86_64", "aarch64")
#   vendor         /proc/cpuinfo vendor_id ("GenuineIntel", "AuthenticAMD"), or the ARM "CPU implementer"
#   model_name     the model name as `cpu_description` reads it ("AMD EPYC 7B13 64-Core Processor")
#   family, model, stepping
#                  x86: "cpu family", "model", "stepping"; ARM: "CPU architecture", "CPU part",
#                  "r<variant>p<revision>"; the distinct values over all cores, comma-joined (big.LITTLE)
#   logical_cores  os.cpu_count() (the count `cpu_description` names)
#   isa            {flag: present} for every flag of `X86_ISA_FLAGS` or `ARM_ISA_FLAGS` (whichever the
#                  cpuinfo has): the instruction sets that decide which kernels run
#   cache_kib      {"L1d": 48, "L2": 1024, "L3": 32768} from sysfs, or None where sysfs has none
# CUDA ("kind": "cuda"):
#   name, compute_capability ("9.0"), cuda_driver (the driver's CUDA version, "12.4"), memory_mib
# Another device ("kind": "device", from `backend_fingerprint` for a third-party backend):
#   description    the backend's `device_description()`
#
# The id hashes the whole object, so growing a flag list changes every id: comparisons of a table with
# a host go through `fingerprint_differences`, which compares only what both sides recorded.

#: x86 flags (as /proc/cpuinfo spells them) whose presence changes the kernels oneDNN, MLAS or XNNPACK run.
X86_ISA_FLAGS: tuple[str, ...] = (
    "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "avx_vnni",
)  # fmt: skip
#: ARM "Features" that do the same (neon: 32-bit kernels; asimd: its AArch64 name; dot product, int8 matmul, SVE).
ARM_ISA_FLAGS: tuple[str, ...] = ("neon", "asimd", "asimdhp", "asimddp", "i8mm", "sve", "sve2")

_ARM_IMPLEMENTERS = {
    "0x41": "Arm", "0x42": "Broadcom", "0x43": "Cavium", "0x48": "HiSilicon", "0x4e": "NVIDIA",
    "0x51": "Qualcomm", "0x61": "Apple", "0xc0": "Ampere",
}  # fmt: skip
_FINGERPRINT_ID_CHARS = 12
_SYSFS = "/sys"
_CACHE_DIR = "devices/system/cpu/cpu0/cache"
_LABELS = {
    "kind": "device kind",
    "arch": "architecture",
    "vendor": "CPU vendor",
    "model_name": "CPU model",
    "family": "CPU family",
    "model": "CPU model number",
    "stepping": "CPU stepping",
    "logical_cores": "cores",
    "name": "GPU",
    "compute_capability": "compute capability",
    "cuda_driver": "CUDA driver",
    "memory_mib": "GPU memory (MiB)",
    "description": "device",
}


class _MeasuringBackend(Protocol):
    """What `backend_fingerprint` needs of a `hwdsa.profilers.Backend` (this module imports none)."""

    def device_description(self) -> str: ...

    def options(self) -> dict[str, Any]: ...


def _cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    """/proc/cpuinfo as one {key: value} per blank-line-separated block (first value of a key wins)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current.setdefault(key.strip(), value.strip())
    if current:
        blocks.append(current)
    return blocks


def _distinct(values: Sequence[str | None]) -> str | None:
    """The distinct non-empty values in first-seen order, comma-joined (None when there are none)."""
    seen = list(dict.fromkeys(v for v in values if v))
    return ",".join(seen) if seen else None


def _size_kib(text: str) -> int | None:
    """A sysfs cache size ("48K", "32M", "1024") in KiB."""
    text = text.strip().upper()
    scale = {"K": 1, "M": 1024, "G": 1024 * 1024}
    try:
        if text and text[-1] in scale:
            return int(text[:-1]) * scale[text[-1]]
        return int(text) // 1024
    except ValueError:
        return None


def _caches(sysfs_root: Path) -> dict[str, int] | None:
    """L1d, L2, L3 (and any other data/unified level) of cpu0 in KiB, or None where sysfs has none."""
    out: dict[str, int] = {}
    for index in sorted((sysfs_root / _CACHE_DIR).glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = _size_kib((index / "size").read_text())
        except OSError:
            continue
        if kind == "Instruction" or size is None:
            continue
        out[f"L{level}d" if kind == "Data" else f"L{level}"] = size
    return dict(sorted(out.items())) or None


def _arm_revision(block: Mapping[str, str]) -> str | None:
    """ARM's "r<variant>p<revision>" ("CPU variant: 0x1", "CPU revision: 1" -> "r1p1")."""
    if "CPU revision" not in block:
        return None
    try:
        variant = str(int(block.get("CPU variant", "0"), 0))
    except ValueError:
        variant = block.get("CPU variant", "?")
    return f"r{variant}p{block['CPU revision']}"


def _read_model(path: Path) -> str | None:
    try:
        text = path.read_bytes().rstrip(b"\x00").decode(errors="replace").strip()
    except OSError:
        return None
    return text or None


def cpu_fingerprint(
    cpuinfo: str | None = None,
    *,
    sysfs_root: str | os.PathLike[str] | None = None,
    logical_cores: int | None = None,
    arch: str | None = None,
) -> dict[str, Any]:
    """This host's CPU fingerprint: a JSON object of stable facts (keys: see the comment above).

    Args:
        cpuinfo: the text of /proc/cpuinfo (read from the system when None). For tests; injected text
            also sets `logical_cores` to its number of "processor" entries unless that is given.
        sysfs_root: where sysfs is mounted (default /sys), for the cache sizes and the board model.
        logical_cores: the core count (default: os.cpu_count(), as `cpu_description` counts).
        arch: the machine type (default platform.machine()).

    Example:
        >>> fp = cpu_fingerprint("processor: 0\\nvendor_id: GenuineIntel\\nmodel name: Xeon\\nflags: avx2 fma\\n",
        ...                      sysfs_root="/nonexistent", arch="x86_64")
        >>> fp["vendor"], fp["logical_cores"], [f for f, on in fp["isa"].items() if on]
        ('GenuineIntel', 1, ['avx2', 'fma'])
    """
    injected = cpuinfo is not None
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    root = Path(sysfs_root if sysfs_root is not None else _SYSFS)
    blocks = _cpuinfo_blocks(cpuinfo)
    cores = [b for b in blocks if "processor" in b and b["processor"].isdigit()] or blocks[:1]
    first = cores[0] if cores else {}
    merged: dict[str, str] = {}
    for block in blocks:
        for key, value in block.items():
            merged.setdefault(key, value)

    if sysfs_root is None:
        board = _board_model()
    else:
        board = _read_model(root / "firmware/devicetree/base/model")
    model_name = _cpuinfo_model(cpuinfo) or board or platform.processor() or platform.machine() or "unknown CPU"

    if "flags" in first or "flags" in merged:
        present, known = set((first.get("flags") or merged["flags"]).split()), X86_ISA_FLAGS
    elif "Features" in first or "Features" in merged:
        present, known = set((first.get("Features") or merged["Features"]).split()), ARM_ISA_FLAGS
    else:
        present, known = set(), ()

    vendor: str | None
    if "vendor_id" in merged:  # x86
        vendor = merged["vendor_id"]
        family = _distinct([b.get("cpu family") for b in cores])
        model = _distinct([b.get("model") for b in cores])
        stepping = _distinct([b.get("stepping") for b in cores])
    else:  # ARM (and others: whatever of these they have)
        vendor = merged.get("CPU implementer") or None
        family = _distinct([b.get("CPU architecture") for b in cores])
        model = _distinct([b.get("CPU part") for b in cores])
        stepping = _distinct([_arm_revision(b) for b in cores])
    if logical_cores is None:
        counted = sum(1 for b in blocks if "processor" in b and b["processor"].isdigit())
        logical_cores = counted if injected and counted else (os.cpu_count() or 1)
    return {
        "kind": "cpu",
        "arch": arch if arch is not None else platform.machine(),
        "vendor": vendor,
        "model_name": " ".join(model_name.split()),
        "family": family,
        "model": model,
        "stepping": stepping,
        "logical_cores": int(logical_cores),
        "isa": {flag: flag in present for flag in known},
        "cache_kib": _caches(root),
    }


def cuda_fingerprint(index: int = 0) -> dict[str, Any]:
    """The fingerprint of CUDA device `index`: name, compute capability, the driver's CUDA version, memory.

    Raises:
        BackendUnavailableError: no NVIDIA driver or no such device here (as `cuda_description`).
    """
    import ctypes

    from ._cuda import driver

    drv = driver()
    major, minor = drv.compute_capability(index)
    total = ctypes.c_size_t()
    # _cuda binds no memory query; its checked call and device handle do the rest.
    drv._call("cuDeviceTotalMem_v2", ctypes.byref(total), drv._device(index))  # noqa: SLF001
    return {
        "kind": "cuda",
        "name": drv.device_name(index),
        "compute_capability": f"{major}.{minor}",
        "cuda_driver": drv.driver_version(),
        "memory_mib": int(total.value) // (1024 * 1024),
    }


def cuda_fingerprints() -> list[dict[str, Any]]:
    """The fingerprint of every CUDA device, by index.

    Raises:
        BackendUnavailableError: no NVIDIA driver or no device here.
    """
    from ._cuda import driver

    return [cuda_fingerprint(i) for i in range(driver().device_count())]


def host_fingerprint(kind: str = "cpu", index: int = 0) -> dict[str, Any]:
    """This host's fingerprint of a device kind: "cpu", or "cuda" (GPU `index`).

    Raises:
        BackendUnavailableError: kind "cuda" on a host without a usable CUDA device.
        ValueError: another kind.
    """
    if kind == "cpu":
        return cpu_fingerprint()
    if kind == "cuda":
        return cuda_fingerprint(index)
    raise ValueError(f"no fingerprint of device kind {kind!r} on this host; kinds: cpu, cuda")


def backend_fingerprint(backend: _MeasuringBackend) -> dict[str, Any]:
    """The fingerprint of the device a backend measures, for its table's header.

    The CPU's when the backend describes the CPU; the GPU's (its "device" option) when it describes
    that CUDA device; otherwise a "device" fingerprint holding only the backend's description.
    """
    description = backend.device_description()
    cpu = cpu_fingerprint()
    if description == fingerprint_device_name(cpu):
        return cpu
    index = backend.options().get("device", 0)
    if isinstance(index, int) and not isinstance(index, bool):
        try:
            gpu = cuda_fingerprint(index)
        except BackendUnavailableError:
            pass
        else:
            if fingerprint_device_name(gpu) == description:
                return gpu
    return {"kind": "device", "description": description}


def fingerprint_id(fp: Mapping[str, Any]) -> str:
    """A short stable id of a fingerprint: the first 12 hex digits of the SHA-256 of its canonical JSON."""
    canonical = json.dumps(fp, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:_FINGERPRINT_ID_CHARS]


def fingerprint_device_name(fp: Mapping[str, Any]) -> str:
    """The `device` string a table of this fingerprint has: `cpu_description`'s or `cuda_description`'s form."""
    kind = fp.get("kind")
    if kind == "cpu":
        return f"{fp.get('model_name')} ({fp.get('logical_cores')} cores)"
    if kind == "cuda":
        return f"{fp.get('name')} (compute capability {fp.get('compute_capability')})"
    return str(fp.get("description") or fp.get("name") or "unknown device")


def _kib(size: int) -> str:
    if size >= 1024 * 1024 and size % (1024 * 1024) == 0:
        return f"{size // (1024 * 1024)} GiB"
    if size >= 1024 and size % 1024 == 0:
        return f"{size // 1024} MiB"
    return f"{size} KiB"


def _on(isa: Any) -> list[str]:
    return [flag for flag, on in isa.items() if on] if isinstance(isa, Mapping) else []


def describe_fingerprint(fp: Mapping[str, Any]) -> str:
    """One line for humans, e.g. "AMD EPYC 7B13 (AuthenticAMD x86_64, family 25, model 1, stepping 1), 2 logical
    cores; ISA sse4_2 avx avx2 fma; caches L1d 32 KiB, L2 512 KiB, L3 32 MiB"."""
    kind = fp.get("kind")
    if kind == "cuda":
        return (
            f"{fp.get('name')}, compute capability {fp.get('compute_capability')}, "
            f"{fp.get('memory_mib')} MiB, CUDA driver {fp.get('cuda_driver')}"
        )
    if kind != "cpu":
        return fingerprint_device_name(fp)
    vendor = str(fp.get("vendor") or "unknown vendor")
    vendor = f"{_ARM_IMPLEMENTERS[vendor]} ({vendor})" if vendor in _ARM_IMPLEMENTERS else vendor
    ids = ", ".join(f"{k} {fp[k]}" for k in ("family", "model", "stepping") if fp.get(k))
    text = f"{fp.get('model_name')} ({vendor} {fp.get('arch')}{', ' + ids if ids else ''}), {fp.get('logical_cores')} logical cores"
    text += f"; ISA {' '.join(_on(fp.get('isa'))) or '(none of the listed)'}"
    caches = fp.get("cache_kib")
    if isinstance(caches, Mapping) and caches:
        text += "; caches " + ", ".join(f"{level} {_kib(int(size))}" for level, size in caches.items())
    return text


def fingerprint_differences(table: Mapping[str, Any], here: Mapping[str, Any]) -> list[str]:
    """What differs between a table's fingerprint and this host's, one line each ([] when none).

    Only what both recorded is compared (a fingerprint from another hwdsa version may have more or fewer
    keys or ISA flags); cache sizes are skipped where either side could not read them.
    """
    if table.get("kind") != here.get("kind"):
        return [f"device kind: {table.get('kind')} in the table, {here.get('kind')} here"]
    out: list[str] = []
    for key in [k for k in table if k in here and k not in ("kind", "isa", "cache_kib")]:
        if table[key] != here[key]:
            label = _LABELS.get(key, key)
            out.append(f"{label}: {table[key]!r} in the table, {here[key]!r} here")
    theirs, ours = table.get("isa"), here.get("isa")
    if isinstance(theirs, Mapping) and isinstance(ours, Mapping):
        common = [f for f in theirs if f in ours]
        lost = [f for f in common if theirs[f] and not ours[f]]
        gained = [f for f in common if ours[f] and not theirs[f]]
        if lost:
            out.append(f"ISA: {', '.join(lost)} present in the table, absent here")
        if gained:
            out.append(f"ISA: {', '.join(gained)} absent in the table, present here")
    theirs, ours = table.get("cache_kib"), here.get("cache_kib")
    if isinstance(theirs, Mapping) and isinstance(ours, Mapping):
        changed = [k for k in theirs if k in ours and theirs[k] != ours[k]]
        if changed:
            out.append(
                "caches: "
                + ", ".join(f"{k} {_kib(int(theirs[k]))} in the table, {_kib(int(ours[k]))} here" for k in changed)
            )
    return out


__all__ = [
    "ARM_ISA_FLAGS",
    "X86_ISA_FLAGS",
    "backend_fingerprint",
    "cpu_description",
    "cpu_fingerprint",
    "cuda_description",
    "cuda_fingerprint",
    "cuda_fingerprints",
    "describe_fingerprint",
    "fingerprint_device_name",
    "fingerprint_differences",
    "fingerprint_id",
    "host_fingerprint",
]
