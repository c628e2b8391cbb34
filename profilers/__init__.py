"""Device profilers: per-layer latency of LayerSpecs on a backend, into a latency-table file.

Importing this package loads neither torch, onnxruntime nor TensorRT: backends import their library
when used, and the torch-side builders live in `hwdsa.profilers.layers` (host only). So the edge agent
`python -m hwdsa.profilers run BUNDLE ...` works on a board with the standard library, numpy and one
inference backend.

Example:
    >>> from hwdsa.profilers import LayerSpec, TimingProtocol, get_backend
    >>> spec = LayerSpec("conv", 8, 16, kernel=(3, 3), padding=(1, 1), in_size=(8, 8), activation="relu")
    >>> get_backend("torch_cpu", num_threads=1).measure(spec, TimingProtocol(warmup=1, repeats=5)).median_ms > 0
    True
"""

from __future__ import annotations

from hwdsa.profilers.backend import BACKENDS as BACKENDS
from hwdsa.profilers.backend import Backend as Backend
from hwdsa.profilers.backend import BackendInfo as BackendInfo
from hwdsa.profilers.backend import OnnxBackend as OnnxBackend
from hwdsa.profilers.backend import Session as Session
from hwdsa.profilers.backend import device_description as device_description
from hwdsa.profilers.backend import get_backend as get_backend
from hwdsa.profilers.backend import get_backend_class as get_backend_class
from hwdsa.profilers.backend import list_backends as list_backends
from hwdsa.profilers.backend import register_backend as register_backend
from hwdsa.profilers.base import LayerSpec as LayerSpec
from hwdsa.profilers.base import Measurement as Measurement
from hwdsa.profilers.base import TimingProtocol as TimingProtocol
from hwdsa.profilers.bundle import Bundle as Bundle
from hwdsa.profilers.bundle import read_bundle as read_bundle
from hwdsa.profilers.bundle import run_bundle as run_bundle
from hwdsa.profilers.bundle import write_bundle as write_bundle
from hwdsa.profilers.runner import measure_network as measure_network
from hwdsa.profilers.runner import profile_specs as profile_specs
from hwdsa.profilers.specs import dedupe_specs as dedupe_specs
from hwdsa.profilers.specs import read_specs as read_specs
from hwdsa.profilers.specs import write_specs as write_specs
from hwdsa.profilers.tablefile import make_meta as make_meta
from hwdsa.profilers.tablefile import read_table as read_table
from hwdsa.profilers.tablefile import write_table as write_table

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendInfo",
    "Bundle",
    "LayerSpec",
    "Measurement",
    "OnnxBackend",
    "Session",
    "TimingProtocol",
    "dedupe_specs",
    "device_description",
    "get_backend",
    "get_backend_class",
    "list_backends",
    "make_meta",
    "measure_network",
    "profile_specs",
    "read_bundle",
    "read_specs",
    "read_table",
    "register_backend",
    "run_bundle",
    "write_bundle",
    "write_specs",
    "write_table",
]
