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

from .backend import BACKENDS as BACKENDS
from .backend import Backend as Backend
from .backend import BackendInfo as BackendInfo
from .backend import OnnxBackend as OnnxBackend
from .backend import Session as Session
from .backend import device_description as device_description
from .backend import get_backend as get_backend
from .backend import get_backend_class as get_backend_class
from .backend import list_backends as list_backends
from .backend import register_backend as register_backend
from .base import LayerSpec as LayerSpec
from .base import Measurement as Measurement
from .base import TimingProtocol as TimingProtocol
from .base import paired_fraction as paired_fraction
from .base import quietest as quietest
from .bundle import Bundle as Bundle
from .bundle import read_bundle as read_bundle
from .bundle import run_bundle as run_bundle
from .bundle import write_bundle as write_bundle
from .runner import measure_network as measure_network
from .runner import profile_specs as profile_specs
from .specs import dedupe_specs as dedupe_specs
from .specs import read_specs as read_specs
from .specs import write_specs as write_specs
from .tablefile import make_meta as make_meta
from .tablefile import read_table as read_table
from .tablefile import write_table as write_table

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
    "paired_fraction",
    "quietest",
    "read_bundle",
    "read_specs",
    "read_table",
    "register_backend",
    "run_bundle",
    "write_bundle",
    "write_specs",
    "write_table",
]
