"""A minimal ctypes binding of the CUDA driver API (libcuda), for boards that have no torch or cuda-python.

The TensorRT backend needs device memory, a stream and events; the device description needs a GPU's
name and compute capability. The driver library ships with every NVIDIA driver (desktop and Jetson),
so binding it with ctypes (as Polygraphy binds libcudart) adds no dependency. The device's *primary*
context is the one made current: it is the context the CUDA runtime inside TensorRT also uses, so
pointers and streams made here are valid there.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys
from typing import Any

from hwdsa.errors import BackendUnavailableError

_log = logging.getLogger(__name__)

_LIB_NAMES = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
_ATTR_CC_MAJOR = 75  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
_ATTR_CC_MINOR = 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR
_EVENT_DEFAULT = 0
_STREAM_NON_BLOCKING = 1


class CudaError(BackendUnavailableError):
    """A CUDA driver call failed (no device, out of memory, a driver too old for the libraries)."""


class CudaDriver:
    """The handful of driver-API calls hwdsa's profilers need; every call checks its status code."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        self._contexts: dict[int, int] = {}
        self._call("cuInit", ctypes.c_uint(0))

    # ------------------------------------------------------------------ plumbing
    def _error_text(self, code: int) -> str:
        text = ctypes.c_char_p()
        try:
            self._lib.cuGetErrorString(ctypes.c_int(code), ctypes.byref(text))
        except AttributeError:  # pragma: no cover - every driver since CUDA 6 has it
            return f"CUDA error {code}"
        raw = text.value
        return raw.decode(errors="replace") if raw else f"CUDA error {code}"

    def _call(self, name: str, *args: Any) -> None:
        fn = getattr(self._lib, name)
        code = int(fn(*args))
        if code != 0:
            raise CudaError(f"CUDA driver call {name} failed with error {code}: {self._error_text(code)}")

    # ------------------------------------------------------------------ devices
    def driver_version(self) -> str:
        """The driver's CUDA version, e.g. "12.4"."""
        v = ctypes.c_int()
        self._call("cuDriverGetVersion", ctypes.byref(v))
        return f"{v.value // 1000}.{(v.value % 1000) // 10}"

    def device_count(self) -> int:
        n = ctypes.c_int()
        self._call("cuDeviceGetCount", ctypes.byref(n))
        return int(n.value)

    def _device(self, index: int) -> ctypes.c_int:
        dev = ctypes.c_int()
        self._call("cuDeviceGet", ctypes.byref(dev), ctypes.c_int(index))
        return dev

    def device_name(self, index: int = 0) -> str:
        buf = ctypes.create_string_buffer(256)
        self._call("cuDeviceGetName", buf, ctypes.c_int(len(buf)), self._device(index))
        return buf.value.decode(errors="replace").strip()

    def compute_capability(self, index: int = 0) -> tuple[int, int]:
        major, minor = ctypes.c_int(), ctypes.c_int()
        dev = self._device(index)
        self._call("cuDeviceGetAttribute", ctypes.byref(major), ctypes.c_int(_ATTR_CC_MAJOR), dev)
        self._call("cuDeviceGetAttribute", ctypes.byref(minor), ctypes.c_int(_ATTR_CC_MINOR), dev)
        return int(major.value), int(minor.value)

    def make_current(self, index: int = 0) -> None:
        """Make device `index`'s primary context current on this thread (retained once per process)."""
        if index not in self._contexts:
            ctx = ctypes.c_void_p()
            self._call("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), self._device(index))
            self._contexts[index] = int(ctx.value or 0)
        self._call("cuCtxSetCurrent", ctypes.c_void_p(self._contexts[index]))

    # ------------------------------------------------------------------ memory
    def mem_alloc(self, nbytes: int) -> int:
        ptr = ctypes.c_uint64()
        self._call("cuMemAlloc_v2", ctypes.byref(ptr), ctypes.c_size_t(max(1, int(nbytes))))
        return int(ptr.value)

    def mem_free(self, ptr: int) -> None:
        self._call("cuMemFree_v2", ctypes.c_uint64(ptr))

    def memcpy_htod(self, dst: int, src_host_ptr: int, nbytes: int) -> None:
        self._call("cuMemcpyHtoD_v2", ctypes.c_uint64(dst), ctypes.c_void_p(src_host_ptr), ctypes.c_size_t(nbytes))

    # ------------------------------------------------------------------ streams and events
    def stream_create(self) -> int:
        stream = ctypes.c_void_p()
        self._call("cuStreamCreate", ctypes.byref(stream), ctypes.c_uint(_STREAM_NON_BLOCKING))
        return int(stream.value or 0)

    def stream_synchronize(self, stream: int) -> None:
        self._call("cuStreamSynchronize", ctypes.c_void_p(stream))

    def stream_destroy(self, stream: int) -> None:
        self._call("cuStreamDestroy_v2", ctypes.c_void_p(stream))

    def event_create(self) -> int:
        event = ctypes.c_void_p()
        self._call("cuEventCreate", ctypes.byref(event), ctypes.c_uint(_EVENT_DEFAULT))
        return int(event.value or 0)

    def event_record(self, event: int, stream: int) -> None:
        self._call("cuEventRecord", ctypes.c_void_p(event), ctypes.c_void_p(stream))

    def event_synchronize(self, event: int) -> None:
        self._call("cuEventSynchronize", ctypes.c_void_p(event))

    def event_elapsed_ms(self, start: int, end: int) -> float:
        ms = ctypes.c_float()
        self._call("cuEventElapsedTime", ctypes.byref(ms), ctypes.c_void_p(start), ctypes.c_void_p(end))
        return float(ms.value)

    def event_destroy(self, event: int) -> None:
        self._call("cuEventDestroy_v2", ctypes.c_void_p(event))


@functools.lru_cache(maxsize=1)
def _load() -> CudaDriver:
    errors = []
    for name in _LIB_NAMES:
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
            continue
        return CudaDriver(lib)
    raise BackendUnavailableError(
        "no NVIDIA driver here: the CUDA driver library (libcuda) cannot be loaded "
        f"({'; '.join(errors)}); install the NVIDIA driver on a machine with an NVIDIA GPU"
    )


def driver() -> CudaDriver:
    """The process-wide driver binding, with at least one device.

    Raises:
        BackendUnavailableError: no driver library, the driver fails to initialise, or no device.
    """
    drv = _load()
    if drv.device_count() < 1:
        raise BackendUnavailableError("the NVIDIA driver is installed but reports no CUDA device")
    return drv


def cuda_error_or_none() -> str | None:
    """Why CUDA cannot be used here, or None when a device is usable. Never raises."""
    try:
        driver()
    except BackendUnavailableError as exc:
        return str(exc)
    except Exception as exc:  # a broken driver install can fail in unexpected ways; report, don't crash
        return f"the CUDA driver failed to initialise: {type(exc).__name__}: {exc}"
    return None


def describe_device(index: int = 0) -> str:
    """A stable name of CUDA device `index`: "<name> (compute capability X.Y)"."""
    drv = driver()
    major, minor = drv.compute_capability(index)
    return f"{drv.device_name(index)} (compute capability {major}.{minor})"
