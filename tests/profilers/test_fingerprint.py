"""Device fingerprints (profilers/device.py) and their place in a new table's header (tablefile, runner)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from _profiler_helpers import LIGHT, conv
from hwdsa.errors import BackendUnavailableError
from hwdsa.profilers import _cuda, get_backend, profile_specs, read_table
from hwdsa.profilers.device import (
    ARM_ISA_FLAGS,
    X86_ISA_FLAGS,
    backend_fingerprint,
    cpu_description,
    cpu_fingerprint,
    cuda_fingerprint,
    cuda_fingerprints,
    describe_fingerprint,
    fingerprint_device_name,
    fingerprint_differences,
    fingerprint_id,
    host_fingerprint,
)
from hwdsa.profilers.tablefile import make_meta, write_table

_AVX2 = "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2"
_AVX512 = _AVX2 + " avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8"


def _x86(vendor: str, model_name: str, family: int, model: int, stepping: int, flags: str, *, cores: int = 4, mhz: float = 2000.0) -> str:
    """A /proc/cpuinfo text of `cores` identical x86 processors."""
    block = (
        "processor\t: {n}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
        "model name\t: {model_name}\nstepping\t: {stepping}\nmicrocode\t: 0x2b000590\ncpu MHz\t\t: {mhz:.3f}\n"
        "cache size\t: 107520 KB\ncpu cores\t: {cores}\nflags\t\t: {flags}\nbogomips\t: {bogo:.2f}\n"
    )
    return "\n".join(
        block.format(n=n, vendor=vendor, family=family, model=model, model_name=model_name, stepping=stepping,
                     mhz=mhz + 17 * n, cores=cores, flags=flags, bogo=2 * mhz)  # fmt: skip
        for n in range(cores)
    )


def xeon(**kw: Any) -> str:
    return _x86("GenuineIntel", "Intel(R) Xeon(R) Platinum 8480+", 6, 143, 8, _AVX512, **kw)


def epyc(**kw: Any) -> str:
    return _x86("AuthenticAMD", "AMD EPYC 7B12 64-Core Processor", 23, 49, 0, _AVX2, **kw)


ARM = "".join(
    f"processor\t: {n}\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes crc32 asimddp {'sve ' if part == '0xd40' else ''}i8mm\n"
    f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: {part}\nCPU revision\t: 1\n\n"
    for n, part in enumerate(["0xd05", "0xd05", "0xd40", "0xd40"])
) + "Hardware\t: Test SoC\nSerial\t\t: 0000000012345678\n"


def _sysfs(root: Path, caches: dict[str, tuple[int, str, str]]) -> Path:
    """A fake sysfs with cpu0's cache indices: name -> (level, type, size)."""
    for i, (level, kind, size) in enumerate(caches.values()):
        d = root / "devices/system/cpu/cpu0/cache" / f"index{i}"
        d.mkdir(parents=True)
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    return root


SPR_CACHES = {"l1d": (1, "Data", "48K"), "l1i": (1, "Instruction", "32K"), "l2": (2, "Unified", "2048K"), "l3": (3, "Unified", "105M")}


class TestThisHost:
    def test_is_json_and_stable(self) -> None:
        fp = cpu_fingerprint()
        assert json.loads(json.dumps(fp)) == fp
        assert cpu_fingerprint() == fp and fingerprint_id(cpu_fingerprint()) == fingerprint_id(fp)
        assert re.fullmatch(r"[0-9a-f]{12}", fingerprint_id(fp))

    def test_reads_the_real_cpuinfo(self) -> None:
        fp = cpu_fingerprint()
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        assert fp["kind"] == "cpu" and fp["logical_cores"] >= 1
        assert fp == cpu_fingerprint(text, sysfs_root="/sys", logical_cores=fp["logical_cores"])
        if "vendor_id" in text:  # an x86 host: its vendor and flags as the kernel lists them
            assert fp["vendor"] in text and set(fp["isa"]) == set(X86_ISA_FLAGS)
            flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split())  # type: ignore[union-attr]
            assert {f for f, on in fp["isa"].items() if on} == flags & set(X86_ISA_FLAGS)
        if Path("/sys/devices/system/cpu/cpu0/cache/index0").is_dir():
            assert fp["cache_kib"] and all(v > 0 for v in fp["cache_kib"].values())

    def test_names_the_device_as_cpu_description_does(self) -> None:
        assert fingerprint_device_name(cpu_fingerprint()) == cpu_description()
        assert host_fingerprint("cpu") == cpu_fingerprint()
        with pytest.raises(ValueError, match="kind"):
            host_fingerprint("tpu")

    def test_holds_nothing_that_varies(self) -> None:
        text = json.dumps(cpu_fingerprint()).lower()
        assert "mhz" not in text and "bogomips" not in text and "microcode" not in text


class TestSyntheticHosts:
    def test_xeon_with_avx512_and_epyc_with_avx2_differ(self, tmp_path: Path) -> None:
        x = cpu_fingerprint(xeon(), sysfs_root=tmp_path / "none", arch="x86_64")
        e = cpu_fingerprint(epyc(), sysfs_root=tmp_path / "none", arch="x86_64")
        assert x["vendor"] == "GenuineIntel" and e["vendor"] == "AuthenticAMD"
        assert (x["family"], x["model"], x["stepping"]) == ("6", "143", "8")
        assert x["logical_cores"] == e["logical_cores"] == 4  # counted from the injected text
        assert x["isa"]["avx512f"] and x["isa"]["amx_tile"] and not e["isa"]["avx512f"] and e["isa"]["avx2"]
        assert x["cache_kib"] is None  # no sysfs
        assert fingerprint_id(x) != fingerprint_id(e)
        diff = fingerprint_differences(x, e)
        assert "CPU vendor: 'GenuineIntel' in the table, 'AuthenticAMD' here" in diff
        assert "CPU model: 'Intel(R) Xeon(R) Platinum 8480+' in the table, 'AMD EPYC 7B12 64-Core Processor' here" in diff
        isa = [d for d in diff if d.startswith("ISA:")]
        assert isa == ["ISA: avx512f, avx512bw, avx512vl, avx512_vnni, avx512_bf16, amx_tile, amx_bf16, amx_int8 present in the table, absent here"]
        assert fingerprint_differences(e, x)[-1].endswith("absent in the table, present here")

    def test_clock_speed_does_not_change_the_id(self, tmp_path: Path) -> None:
        slow = cpu_fingerprint(epyc(mhz=1500.0), sysfs_root=tmp_path, arch="x86_64")
        fast = cpu_fingerprint(epyc(mhz=3350.5), sysfs_root=tmp_path, arch="x86_64")
        assert fast == slow and fingerprint_id(fast) == fingerprint_id(slow)
        assert fingerprint_differences(slow, fast) == []

    def test_same_cpu_model_without_avx512_differs(self, tmp_path: Path) -> None:
        # A VM that masks AVX-512 runs other kernels on the same model: the name alone would not tell.
        full = cpu_fingerprint(xeon(), sysfs_root=tmp_path, arch="x86_64")
        masked = cpu_fingerprint(xeon().replace(" avx512f", ""), sysfs_root=tmp_path, arch="x86_64")
        assert fingerprint_device_name(full) == fingerprint_device_name(masked)
        assert fingerprint_id(full) != fingerprint_id(masked)
        assert fingerprint_differences(full, masked) == ["ISA: avx512f present in the table, absent here"]

    def test_core_count_and_caches(self, tmp_path: Path) -> None:
        sysfs = _sysfs(tmp_path / "sys", SPR_CACHES)
        four = cpu_fingerprint(xeon(cores=4), sysfs_root=sysfs, arch="x86_64")
        two = cpu_fingerprint(xeon(cores=2), sysfs_root=sysfs, arch="x86_64")
        assert four["cache_kib"] == {"L1d": 48, "L2": 2048, "L3": 105 * 1024}  # no L1i
        assert fingerprint_differences(four, two) == ["cores: 4 in the table, 2 here"]
        assert cpu_fingerprint(xeon(), sysfs_root=sysfs, logical_cores=8, arch="x86_64")["logical_cores"] == 8
        other = _sysfs(tmp_path / "sys2", {**SPR_CACHES, "l3": (3, "Unified", "60M")})
        smaller = cpu_fingerprint(xeon(cores=4), sysfs_root=other, arch="x86_64")
        assert fingerprint_differences(four, smaller) == ["caches: L3 105 MiB in the table, 60 MiB here"]
        assert fingerprint_differences(four, {**smaller, "cache_kib": None}) == []  # unknown here: not compared

    def test_arm_big_little(self, tmp_path: Path) -> None:
        (tmp_path / "firmware/devicetree/base").mkdir(parents=True)
        (tmp_path / "firmware/devicetree/base/model").write_bytes(b"Test Board Rev 1\x00")
        fp = cpu_fingerprint(ARM, sysfs_root=tmp_path, arch="aarch64")
        assert fp["vendor"] == "0x41" and fp["model_name"] == "Test SoC" and fp["logical_cores"] == 4
        assert fp["family"] == "8" and fp["model"] == "0xd05,0xd40" and fp["stepping"] == "r1p1"
        assert set(fp["isa"]) == set(ARM_ISA_FLAGS)
        assert {f for f, on in fp["isa"].items() if on} == {"asimd", "asimddp", "i8mm"}  # cpu0's features
        assert "Serial" not in json.dumps(fp) and "12345678" not in json.dumps(fp)
        assert "Arm (0x41)" in describe_fingerprint(fp)
        board = cpu_fingerprint(ARM.replace("Hardware\t: Test SoC\n", ""), sysfs_root=tmp_path, arch="aarch64")
        assert board["model_name"] == "Test Board Rev 1"  # Jetson-style: the device-tree model
        assert fingerprint_differences(fp, cpu_fingerprint(xeon(), sysfs_root=tmp_path, arch="x86_64"))[:2] == [
            "architecture: 'aarch64' in the table, 'x86_64' here",
            "CPU vendor: '0x41' in the table, 'GenuineIntel' here",
        ]

    def test_only_what_both_recorded_is_compared(self, tmp_path: Path) -> None:
        fp = cpu_fingerprint(xeon(), sysfs_root=tmp_path, arch="x86_64")
        older = {**fp, "isa": {k: v for k, v in fp["isa"].items() if k != "amx_int8"}}
        older.pop("stepping")
        newer = {**fp, "isa": {**fp["isa"], "avx10": True}, "future_key": 1}
        assert fingerprint_differences(older, newer) == []
        assert fingerprint_differences({"kind": "cuda", "name": "A"}, fp) == ["device kind: cuda in the table, cpu here"]

    def test_describe(self, tmp_path: Path) -> None:
        text = describe_fingerprint(cpu_fingerprint(xeon(), sysfs_root=_sysfs(tmp_path, SPR_CACHES), arch="x86_64"))
        assert text.startswith("Intel(R) Xeon(R) Platinum 8480+ (GenuineIntel x86_64, family 6, model 143, stepping 8), 4 logical cores")
        assert "ISA sse4_2 avx avx2 fma avx512f" in text and "caches L1d 48 KiB, L2 2 MiB, L3 105 MiB" in text


class TestCuda:
    def test_fingerprint_or_the_same_error_as_cuda_description(self) -> None:
        if _cuda.cuda_error_or_none() is not None:
            with pytest.raises(BackendUnavailableError, match="NVIDIA|CUDA"):
                cuda_fingerprint(0)
            with pytest.raises(BackendUnavailableError):
                cuda_fingerprints()
            return
        fp = cuda_fingerprint(0)  # pragma: no cover - a machine with an NVIDIA driver and device
        assert fp["kind"] == "cuda" and re.fullmatch(r"\d+\.\d+", fp["compute_capability"])
        assert fp["memory_mib"] > 0 and re.fullmatch(r"\d+\.\d+", fp["cuda_driver"])
        assert cuda_fingerprints()[0] == fp and cuda_fingerprint(0) == fp
        from hwdsa.profilers.device import cuda_description

        assert fingerprint_device_name(fp) == cuda_description(0)

    def test_fields_through_a_fake_driver(self, monkeypatch: pytest.MonkeyPatch) -> None:
        class FakeDriver:  # what _cuda.CudaDriver answers on a machine with one H100
            def device_count(self) -> int:
                return 1

            def device_name(self, index: int = 0) -> str:
                return "NVIDIA H100 80GB HBM3"

            def compute_capability(self, index: int = 0) -> tuple[int, int]:
                return 9, 0

            def driver_version(self) -> str:
                return "12.4"

            def _device(self, index: int) -> int:
                if index != 0:
                    raise _cuda.CudaError(f"no device {index}")
                return index

            def _call(self, name: str, *args: Any) -> None:
                assert name == "cuDeviceTotalMem_v2"
                args[0]._obj.value = 81559 * 1024 * 1024  # the c_size_t behind byref()

        monkeypatch.setattr(_cuda, "driver", lambda: FakeDriver())
        fp = cuda_fingerprint(0)
        assert fp == {"kind": "cuda", "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "cuda_driver": "12.4", "memory_mib": 81559}
        assert cuda_fingerprints() == [fp] and host_fingerprint("cuda", 0) == fp
        with pytest.raises(BackendUnavailableError, match="no device 1"):
            cuda_fingerprint(1)
        # a GPU backend's table gets the GPU's fingerprint: its description names that device
        assert backend_fingerprint(_FakeBackend("NVIDIA H100 80GB HBM3 (compute capability 9.0)", {"device": 0})) == fp
        assert backend_fingerprint(_FakeBackend("NVIDIA H100 80GB HBM3 (compute capability 9.0)", {"device": 1}))["kind"] == "device"

    def test_differences(self) -> None:
        h100 = {"kind": "cuda", "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "cuda_driver": "12.4", "memory_mib": 81559}
        a10 = {**h100, "name": "NVIDIA A10G", "compute_capability": "8.6", "memory_mib": 22731}
        assert fingerprint_differences(h100, a10) == [
            "GPU: 'NVIDIA H100 80GB HBM3' in the table, 'NVIDIA A10G' here",
            "compute capability: '9.0' in the table, '8.6' here",
            "GPU memory (MiB): 81559 in the table, 22731 here",
        ]
        assert fingerprint_device_name(a10) == "NVIDIA A10G (compute capability 8.6)"
        assert "CUDA driver 12.4" in describe_fingerprint(h100)


class _FakeBackend:
    def __init__(self, description: str, options: dict[str, Any] | None = None) -> None:
        self.description, self._options = description, options or {}

    def device_description(self) -> str:
        return self.description

    def options(self) -> dict[str, Any]:
        return self._options


class TestTableHeader:
    def test_backend_fingerprint(self) -> None:
        assert backend_fingerprint(_FakeBackend(cpu_description(), {"num_threads": 1})) == cpu_fingerprint()
        other = backend_fingerprint(_FakeBackend("Acme NPU v2", {"device": 0}))
        assert other == {"kind": "device", "description": "Acme NPU v2"}
        assert fingerprint_device_name(other) == "Acme NPU v2"

    def test_make_meta_records_fingerprint_and_id(self, tmp_path: Path) -> None:
        fp = cpu_fingerprint()
        meta = make_meta(device=cpu_description(), backend="onnxruntime", precision="fp32", batch_size=1, fingerprint=fp)
        assert meta["fingerprint"] == fp and meta["fingerprint_id"] == fingerprint_id(fp)
        back, _ = read_table(write_table(tmp_path / "t.csv", [], meta))
        assert back["fingerprint"] == fp and back["fingerprint_id"] == fingerprint_id(fp)
        plain = make_meta(device="d", backend="b", precision="fp32", batch_size=1)
        assert "fingerprint" not in plain and "fingerprint_id" not in plain

    def test_a_profiled_table_records_this_host(self, tmp_path: Path) -> None:
        profile_specs([conv(4, 8)], get_backend("torch_cpu", num_threads=1), LIGHT, out_path=tmp_path / "t.csv")
        meta, _ = read_table(tmp_path / "t.csv")
        assert meta["fingerprint"] == cpu_fingerprint()
        assert meta["fingerprint_id"] == fingerprint_id(cpu_fingerprint())
        assert meta["device"] == fingerprint_device_name(meta["fingerprint"])

    def test_a_failing_fingerprint_does_not_stop_profiling(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
        import hwdsa.profilers.runner as runner

        def broken(backend: object) -> dict[str, Any]:
            raise OSError("no /proc here")

        monkeypatch.setattr(runner, "backend_fingerprint", broken)
        profile_specs([conv(4, 8)], get_backend("torch_cpu", num_threads=1), LIGHT, out_path=tmp_path / "t.csv")
        meta, _ = read_table(tmp_path / "t.csv")
        assert "fingerprint" not in meta and "cannot fingerprint" in caplog.text
