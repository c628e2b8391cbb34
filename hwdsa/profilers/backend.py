"""Backend: one way of running a layer on a device, and the registry of backends (stdlib only).

Polygraphy's split: a backend *prepares* a layer in `session(spec)` (build the module, the ONNX
Runtime session or the TensorRT engine) and the base class *times* it in `measure()`, which owns
warm-up, repeats, synchronisation and the re-measurement of noisy entries through the one timing
protocol (`profilers.base.time_callable` / `time_samples`). A backend never times anything itself.

Backends are listed in `BACKENDS` as "module:Class" strings, so listing them imports neither torch,
onnxruntime nor TensorRT; third-party packages add theirs through the entry-point group
`hwdsa.backends` (``name = "package.module:Class"``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

from hwdsa._registry import Registry
from hwdsa._version import __version__
from hwdsa.errors import BackendUnavailableError, ConfigError

from ._compat import override
from .base import LayerSpec, Measurement, TimingProtocol, quietest, time_callable, time_samples
from .device import cpu_description
from .specs import input_shape as spec_input_shape
from .specs import spec_label

_log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "hwdsa.backends"


class Session(ABC):
    """One prepared layer or network: `run_once()` executes it once on a fixed input.

    Asynchronous backends override `synchronize()`; backends with a device timer (CUDA events) set
    `has_device_timer` and implement `device_sample(inner)`, which `Backend.measure` then prefers.
    """

    has_device_timer: ClassVar[bool] = False

    @abstractmethod
    def run_once(self) -> None:
        """Execute the layer once (enqueue it, for an asynchronous device)."""

    def synchronize(self) -> None:
        """Wait until queued work has finished; a no-op for synchronous backends."""

    def device_sample(self, inner: int) -> float:
        """Run `inner` times between two device timestamps; milliseconds per run."""
        raise NotImplementedError(f"{type(self).__name__} has no device timer")


class CallableSession(Session):
    """A session around a callable run on the host clock (`synchronize`: wait for asynchronous work, if any)."""

    def __init__(self, fn: Callable[[], object], synchronize: Callable[[], object] | None = None) -> None:
        self._fn = fn
        self._sync = synchronize

    @override
    def run_once(self) -> None:
        self._fn()

    @override
    def synchronize(self) -> None:
        if self._sync is not None:
            self._sync()


class Backend(ABC):
    """Base of every profiling backend.

    Subclasses set `name`, `description`, `install_hint` and `precisions`, implement
    `check_available()` (raise `BackendUnavailableError` saying what is missing) and `session(spec)`,
    and may implement `network_session` for end-to-end timing. They never time anything themselves.

    The traits below tell the rest of hwdsa how to treat a backend's timings. They are class
    attributes, read from the registered class (`has_stepped_latency`, `backend_for_provider`), so a
    third-party backend registered through the `hwdsa.backends` entry point sets them like a built-in one.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    install_hint: ClassVar[str] = ""
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    #: Latency is a staircase in the channel count (GPU kernels compute whole tiles of channels):
    #: `hwdsa prune` rounds a table of this backend to its measured step points
    #: (`hwdsa.lut.rounding.round_for_budgets`) and `hwdsa.lut.network` profiles it on the "gpu" grid.
    #: False (the default): latency is smooth in the count, rounded to `channel_multiple`.
    stepped_latency: ClassVar[bool] = False
    #: The ONNX Runtime execution provider whose sessions this backend times, or None (the default):
    #: `hwdsa export` times an ONNX Runtime artefact with the registered backend of its session's
    #: provider (`backend_for_provider`).
    onnxruntime_provider: ClassVar[str | None] = None

    # ------------------------------------------------------------------ notes
    def note(self, condition: str) -> None:
        """Count a condition met while measuring (e.g. one per tiny layer), for one summary line at the end
        of a run (`take_notes`) instead of a warning per layer."""
        notes: dict[str, int] = self.__dict__.setdefault("_notes", {})
        notes[condition] = notes.get(condition, 0) + 1

    def take_notes(self) -> dict[str, int]:
        """The conditions counted since the last call, and how often each was met."""
        notes: dict[str, int] = self.__dict__.pop("_notes", {})
        return notes

    # ------------------------------------------------------------------ capability
    @classmethod
    @abstractmethod
    def check_available(cls) -> None:
        """Raise `BackendUnavailableError` (what is missing, how to install it) if this backend cannot run here."""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this backend cannot run here, or None when it can. Never raises."""
        try:
            cls.check_available()
        except BackendUnavailableError as exc:
            return str(exc)
        except Exception as exc:  # a half-installed library can fail any way; report it, never raise
            return f"{type(exc).__name__} while checking {cls.name or cls.__name__}: {exc}"
        return None

    @classmethod
    def is_available(cls) -> bool:
        """Whether this backend can run here (library installed, device present). Never raises."""
        return cls.unavailable_reason() is None

    # ------------------------------------------------------------------ what subclasses provide
    @abstractmethod
    def session(self, spec: LayerSpec) -> AbstractContextManager[Session]:
        """Prepare `spec` (module, ONNX Runtime session, engine) on a fixed input; release it on exit."""

    def network_session(
        self, model: object, input_shape: Sequence[int], *, precision: str = "fp32"
    ) -> AbstractContextManager[Session]:
        """Prepare a whole network (an nn.Module or an ONNX file, depending on the backend)."""
        raise ConfigError(f"backend {self.name!r} cannot time whole networks")

    def options(self) -> dict[str, Any]:
        """The settings that change latency (threads, providers, CUDA graphs), for the table's metadata."""
        return {}

    @property
    def channel_multiple(self) -> int:
        """The channel alignment this backend's fast kernels need (1: any count runs as fast as its size says).

        Recorded with the table (`"channel_multiple"`): calibration draws its random prunings on this
        lattice and `hwdsa prune` rounds counts to it, because off-lattice counts fall back to slower
        kernels that a table sampled on the lattice does not price.
        """
        return 1

    def versions(self) -> dict[str, str]:
        """Versions of the libraries that produced the timings (recorded in the table's metadata)."""
        return {"python": platform.python_version(), "hwdsa": __version__}

    def device_description(self) -> str:
        """A stable name of the device this backend measures (see `hwdsa.profilers.device`)."""
        return cpu_description()

    # ------------------------------------------------------------------ public API (owns the timing)
    def check_spec(self, spec: LayerSpec) -> None:
        """Refuse a spec this backend cannot measure as specified (rather than measure something else)."""
        if not isinstance(spec, LayerSpec):
            raise ConfigError(f"expected a LayerSpec; got {type(spec).__name__}: {spec!r}")
        if spec.precision not in self.precisions:
            raise ConfigError(
                f"backend {self.name!r} measures precision(s) {self.precisions}; got {spec.precision!r} for "
                f"{spec_label(spec)}: choose a backend that runs {spec.precision} (see list_backends())"
            )

    def measure(self, spec: LayerSpec, protocol: TimingProtocol | None = None) -> Measurement:
        """Latency of one layer under `protocol`: warm-up, repeats, median/quartiles, noisy re-measurement."""
        self.check_spec(spec)
        with self.session(spec) as session:
            return self.time_session(session, protocol)

    def measure_network(
        self,
        model_or_onnx: object,
        input_shape: Sequence[int],
        protocol: TimingProtocol | None = None,
        *,
        precision: str = "fp32",
    ) -> Measurement:
        """End-to-end latency of a whole network on a fixed input of `input_shape` (batch first)."""
        if precision not in self.precisions:
            raise ConfigError(f"backend {self.name!r} measures precision(s) {self.precisions}; got {precision!r}")
        shape = _check_shape(input_shape)
        with self.network_session(model_or_onnx, shape, precision=precision) as session:
            return self.time_session(session, protocol)

    @staticmethod
    def time_session(session: Session, protocol: TimingProtocol | None = None) -> Measurement:
        """Apply the timing protocol to a prepared session (device timer when it has one).

        The protocol's rounds run back to back here, and the quietest is kept; runs over many items
        interleave them instead (`profile_specs`, `hwdsa.lut.network.measure_pruned`).
        """
        p = protocol or TimingProtocol()
        rounds = []
        for _ in range(p.rounds):
            if session.has_device_timer:
                rounds.append(time_samples(session.device_sample, p))
            else:
                rounds.append(time_callable(session.run_once, p, synchronize=session.synchronize))
        return quietest(rounds)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ConfigError(f"input_shape must be a sequence of ints, batch first; got {input_shape!r}") from None
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ConfigError(f"input_shape must be batch first with every dimension >= 1; got {shape}")
    return shape


def check_threads(num_threads: int | None) -> int | None:
    """Validate a thread-count option (None: the library's default)."""
    if num_threads is None:
        return None
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ConfigError(f"num_threads must be a positive integer or None; got {num_threads!r}")
    return num_threads


class OnnxBackend(Backend):
    """A backend that runs ONNX graphs (ONNX Runtime, TensorRT).

    A layer is run from the ONNX file a bundle provides for it (`onnx_files`, on a board without
    torch); failing that, it is exported to a temporary file on the host with torch
    (`hwdsa.profilers.layers.onnx_from_spec`).
    """

    #: File endings `measure_network` reads as the backend's own compiled networks rather than ONNX.
    engine_suffixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, onnx_files: Mapping[LayerSpec, str | os.PathLike[str]] | None = None) -> None:
        self.onnx_files: dict[LayerSpec, Path] = {spec: Path(p) for spec, p in (onnx_files or {}).items()}

    @abstractmethod
    def onnx_session(
        self, onnx_path: Path, *, precision: str, input_shape: Sequence[int] | None = None
    ) -> AbstractContextManager[Session]:
        """Prepare the graph in `onnx_path` for timing; `input_shape` fixes dynamic input dimensions."""

    def file_session(self, path: Path, *, precision: str, input_shape: Sequence[int]) -> AbstractContextManager[Session]:
        """Prepare the network file `path` given to `measure_network`: an ONNX graph here; a backend that
        also runs its own compiled files (`engine_suffixes`) dispatches on them."""
        return self.onnx_session(path, precision=precision, input_shape=input_shape)

    @contextlib.contextmanager
    def onnx_file(self, spec: LayerSpec) -> Iterator[Path]:
        """The ONNX file of `spec`: the bundle's, or one exported with torch to a temporary file."""
        path = self.onnx_files.get(spec)
        if path is not None:
            yield path
            return
        try:
            from .layers import onnx_from_spec
        except ImportError as exc:
            raise BackendUnavailableError(
                f"no ONNX file for {spec_label(spec)} and no torch here to export one ({exc}): build a bundle on "
                "the host (`python -m hwdsa.profilers bundle`) and run it here (`python -m hwdsa.profilers run`)"
            ) from exc
        with tempfile.TemporaryDirectory(prefix="hwdsa-layer-") as tmp:
            yield onnx_from_spec(spec, Path(tmp) / "layer.onnx")

    @override
    @contextlib.contextmanager
    def session(self, spec: LayerSpec) -> Iterator[Session]:
        with self.onnx_file(spec) as path:
            with self.onnx_session(path, precision=spec.precision, input_shape=spec_input_shape(spec)) as s:
                yield s

    @override
    @contextlib.contextmanager
    def network_session(
        self, model: object, input_shape: Sequence[int], *, precision: str = "fp32"
    ) -> Iterator[Session]:
        if isinstance(model, (str, os.PathLike)):
            path = Path(model)
            if not path.is_file():
                raise ConfigError(f"{'engine' if path.suffix in self.engine_suffixes else 'ONNX'} file {path} does not exist")
            with self.file_session(path, precision=precision, input_shape=input_shape) as s:
                yield s
            return
        try:
            from .layers import onnx_from_network
        except ImportError as exc:
            raise BackendUnavailableError(
                f"timing an nn.Module with {self.name!r} needs torch to export it to ONNX ({exc}); "
                "pass an ONNX file instead"
            ) from exc
        with tempfile.TemporaryDirectory(prefix="hwdsa-net-") as tmp:
            onnx_path = onnx_from_network(model, Path(tmp) / "network.onnx", input_shape=input_shape, precision=precision)
            with self.onnx_session(onnx_path, precision=precision, input_shape=input_shape) as s:
                yield s


# ---------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------

BACKENDS: Registry[type[Backend]] = Registry("backend")
BACKENDS.register("torch_cpu", "hwdsa.profilers.torch_cpu:TorchCpuBackend", description="PyTorch eager on the CPU (fp32)")
BACKENDS.register(
    "torch_cuda",
    "hwdsa.profilers.torch_cuda:TorchCudaBackend",
    description="PyTorch on a CUDA GPU with CUDA graphs and CUDA-event timing (fp32, fp16)",
)
BACKENDS.register(
    "onnxruntime", "hwdsa.profilers.onnxruntime:OrtCpuBackend", description="ONNX Runtime, CPU execution provider"
)
BACKENDS.register(
    "onnxruntime_cuda",
    "hwdsa.profilers.onnxruntime:OrtCudaBackend",
    description="ONNX Runtime, CUDA execution provider",
)
BACKENDS.register(
    "onnxruntime_tensorrt",
    "hwdsa.profilers.onnxruntime:OrtTensorrtBackend",
    description="ONNX Runtime, TensorRT execution provider",
)
BACKENDS.register(
    "tensorrt",
    "hwdsa.profilers.tensorrt:TensorRTBackend",
    description="TensorRT 10 engines, CUDA-event timing (fp32, fp16, int8)",
)
_BUILTIN = frozenset(BACKENDS.names())
_entry_points_loaded = False


def _load_entry_points() -> None:
    """Register third-party backends from the `hwdsa.backends` entry-point group (once, lazily)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    try:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception as exc:  # broken distribution metadata must not break the built-in backends
        _log.warning("cannot read the %s entry points: %s", ENTRY_POINT_GROUP, exc)
        return
    for ep in eps:
        if ep.name in BACKENDS:
            _log.warning("ignoring entry point %s = %s: backend %r is already registered", ep.name, ep.value, ep.name)
            continue
        dist = getattr(getattr(ep, "dist", None), "name", None)
        BACKENDS.register(ep.name, ep.value, description=f"third-party backend ({dist or ep.value})")


def register_backend(
    name: str, target: type[Backend] | str, *, description: str = "", override: bool = False
) -> None:
    """Register a backend class (or a lazy "module:Class" string) under `name`."""
    _load_entry_points()
    BACKENDS.register(name, target, description=description, override=override)


@dataclass(frozen=True)
class BackendInfo:
    """A registry entry as `list_backends` reports it; `available`/`reason` only when checked."""

    name: str
    description: str
    available: bool | None = None
    reason: str | None = None


def list_backends(*, check_availability: bool = False) -> list[BackendInfo]:
    """Every registered backend; with `check_availability`, whether each can run here (imports them)."""
    _load_entry_points()
    out = []
    for name in BACKENDS.names():
        info = BackendInfo(name, BACKENDS.description(name) if name in _BUILTIN else _describe_lazily(name))
        if check_availability:
            try:
                reason = get_backend_class(name).unavailable_reason()
            except (BackendUnavailableError, ConfigError) as exc:
                reason = str(exc)
            except Exception as exc:  # a broken third-party module must not break the listing
                reason = f"cannot import backend {name!r}: {type(exc).__name__}: {exc}"
            info = BackendInfo(info.name, info.description, available=reason is None, reason=reason)
        out.append(info)
    return out


def _describe_lazily(name: str) -> str:
    # Registry.description() resolves the entry (imports it); for third-party entries that may fail,
    # and listing must not, so read the stored text directly.
    entry = BACKENDS._entries.get(name)  # noqa: SLF001 - the registry exposes no lazy description accessor
    return entry.description if entry is not None else ""


def get_backend_class(name: str) -> type[Backend]:
    """The backend class registered as `name` (imports its module, not its library).

    Raises:
        ConfigError: unknown name (the message lists the valid ones), or not a Backend subclass.
        BackendUnavailableError: the backend's module cannot be imported here.
    """
    _load_entry_points()
    try:
        cls = BACKENDS.get(name)
    except ImportError as exc:
        raise BackendUnavailableError(f"backend {name!r} cannot be imported here: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigError(f"backend {name!r} is registered as {cls!r}, which is not a hwdsa.profilers.Backend subclass")
    return cls


def _registered_classes() -> Iterator[tuple[str, type[Backend]]]:
    """(name, class) of every registered backend that imports here: built-in ones first, then third-party ones."""
    _load_entry_points()
    names = BACKENDS.names()
    for name in [n for n in names if n in _BUILTIN] + [n for n in names if n not in _BUILTIN]:
        try:
            cls = get_backend_class(name)
        except Exception as exc:  # a broken third-party module must not hide the other backends' traits
            _log.warning("backend %r is skipped: %s: %s", name, type(exc).__name__, exc)
            continue
        yield name, cls


def has_stepped_latency(name: str) -> bool:
    """Whether the backend registered as `name` has `Backend.stepped_latency` (False for an unknown name).

    A table records its backend by name; a backend that is registered but cannot be imported here
    counts as not stepped, with a warning.
    """
    _load_entry_points()
    if name not in BACKENDS:
        return False
    try:
        return bool(get_backend_class(name).stepped_latency)
    except Exception as exc:  # as in _registered_classes: report, never raise
        _log.warning("backend %r cannot be imported to read its traits (%s: %s); not stepped", name, type(exc).__name__, exc)
        return False


def provider_backends() -> dict[str, str]:
    """ONNX Runtime execution provider -> the registered backend that times it (`Backend.onnxruntime_provider`).

    Where several backends name one provider the built-in one wins, then the first by name.
    """
    out: dict[str, str] = {}
    for name, cls in _registered_classes():
        if cls.onnxruntime_provider is not None:
            out.setdefault(cls.onnxruntime_provider, name)
    return out


def backend_for_provider(provider: str) -> str | None:
    """The registered backend that times ONNX Runtime sessions on `provider`, or None."""
    return provider_backends().get(provider)


def get_backend(name: str, **options: Any) -> Backend:
    """A ready backend instance: `get_backend("onnxruntime", num_threads=1)`.

    Raises:
        ConfigError: unknown name (valid names listed) or an option the backend does not take.
        BackendUnavailableError: the backend is known but cannot run here (the message says what to install).

    Example:
        >>> from hwdsa.profilers import get_backend
        >>> get_backend("torch_cpu", num_threads=1).name
        'torch_cpu'
    """
    cls = get_backend_class(name)
    reason = cls.unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} is not available here: {reason}")
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"backend {name!r} does not take the options {sorted(options)}: {exc}") from None


def resolve_backend(backend: Backend | str, **options: Any) -> Backend:
    """`backend` itself when it is an instance, else `get_backend(backend, **options)`."""
    if isinstance(backend, Backend):
        if options:
            raise ConfigError(f"options {sorted(options)} apply only when the backend is given by name")
        return backend
    if isinstance(backend, str):
        return get_backend(backend, **options)
    raise ConfigError(f"backend must be a Backend or a registered name; got {type(backend).__name__}")


def device_description(backend: Backend | str) -> str:
    """A stable name of the device `backend` measures: CPU model and core count, or GPU and capability.

    Example:
        >>> "cores" in device_description("torch_cpu")
        True
    """
    return resolve_backend(backend).device_description()


__all__ = [
    "BACKENDS",
    "ENTRY_POINT_GROUP",
    "Backend",
    "BackendInfo",
    "CallableSession",
    "OnnxBackend",
    "Session",
    "backend_for_provider",
    "device_description",
    "get_backend",
    "get_backend_class",
    "has_stepped_latency",
    "list_backends",
    "provider_backends",
    "register_backend",
    "resolve_backend",
]
