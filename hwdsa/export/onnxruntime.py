"""ONNX Runtime sessions from ONNX files, a runner over torch tensors, and session timing.

onnxruntime is imported inside the functions only, so `import hwdsa.export` does not load it.
`onnxruntime.get_available_providers()` lists the providers compiled into the wheel, not the ones that
can run here: onnxruntime-gpu lists TensorRT and CUDA on a machine with neither, then prints a page of
errors and falls back to the CPU. `session_from_onnx` therefore asks only for providers whose hardware
and libraries are present, and checks which ones the session really uses.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hwdsa.errors import BackendUnavailableError, ConfigError, ExportError
from hwdsa.profilers.backend import Backend, CallableSession
from hwdsa.profilers.base import Measurement, TimingProtocol
from hwdsa.profilers.onnxruntime import import_onnxruntime

if TYPE_CHECKING:
    import onnxruntime as ort

_log = logging.getLogger(__name__)

#: Preference order when the caller names no provider.
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_NEEDS_CUDA = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}


def provider_usable(provider: str) -> bool:
    """Whether a listed provider can run here (hardware and libraries present), without loading it."""
    if provider not in _NEEDS_CUDA:
        return True
    if not torch.cuda.is_available():
        return False
    if provider == "TensorrtExecutionProvider":
        from hwdsa.export.tensorrt import is_available

        return is_available()
    return True


def default_providers() -> list[str]:
    """The providers `session_from_onnx` asks for by default: TensorRT > CUDA > CPU, those usable here."""
    available = set(import_onnxruntime().get_available_providers())
    chosen = [p for p in PROVIDER_PREFERENCE if p in available and provider_usable(p)]
    return chosen or ["CPUExecutionProvider"]


def session_from_onnx(
    path: str | os.PathLike[str],
    *,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    optimize: bool = True,
) -> ort.InferenceSession:
    """An ONNX Runtime session for the ONNX file at `path`.

    Args:
        path: the .onnx file.
        providers: execution providers in preference order. None picks TensorRT > CUDA > CPU among
            those usable here. Named providers must all be available, and the first one must be
            the one the session ends up using (no silent fall-back to the CPU).
        threads: intra-op threads (None: ONNX Runtime's default, one per physical core).
        optimize: apply ONNX Runtime's graph optimisations (default). False runs the graph as written:
            a Q/DQ graph then computes its exact fake-quantised semantics instead of using INT8 kernels.

    Raises:
        ConfigError: an unknown provider or a bad thread count.
        BackendUnavailableError: a requested provider cannot run here.
        ExportError: ONNX Runtime cannot load the file.
    """
    ort_module = import_onnxruntime()
    if threads is not None and int(threads) < 1:
        raise ConfigError(f"threads must be >= 1 or None; got {threads}")
    available = list(ort_module.get_available_providers())
    if providers is None:
        requested = default_providers()
        explicit = False
    else:
        requested = list(providers)
        unknown = [p for p in requested if p not in available]
        if not requested or unknown:
            raise ConfigError(
                f"unknown or unavailable ONNX Runtime provider(s) {unknown or requested}; "
                f"available: {', '.join(available)}"
            )
        unusable = [p for p in requested if not provider_usable(p)]
        if unusable:
            raise BackendUnavailableError(
                f"ONNX Runtime provider(s) {unusable} cannot run here: "
                + ("no CUDA device is visible" if not torch.cuda.is_available() else "TensorRT is not installed")
                + f"; usable here: {', '.join(default_providers())}"
            )
        explicit = True
    options = ort_module.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    if not optimize:
        options.graph_optimization_level = ort_module.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort_module.InferenceSession(os.fspath(path), sess_options=options, providers=requested)
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, NoSuchFile, ...)
        raise ExportError(f"ONNX Runtime cannot load {os.fspath(path)}: {type(exc).__name__}: {exc}") from exc
    used = list(session.get_providers())
    if explicit and used[0] != requested[0]:
        raise BackendUnavailableError(
            f"ONNX Runtime could not use {requested[0]} for {os.fspath(path)} (it fell back to {used[0]}); "
            "check the provider's libraries and device, or ask for another provider"
        )
    if used[0] != requested[0]:
        _log.warning("ONNX Runtime fell back from %s to %s", requested[0], used[0])
    _log.info("ONNX Runtime session for %s on %s", os.fspath(path), ", ".join(used))
    return session


def _run(session: ort.InferenceSession, outputs: list[str], arrays: Mapping[str, np.ndarray]) -> list[Any]:
    """`session.run`, with ONNX Runtime's input errors (wrong name, shape or type) as ConfigError."""
    try:
        return list(session.run(outputs, dict(arrays)))
    except Exception as exc:  # ORT's InvalidArgument & co. are not importable without loading ORT
        expected = {i.name: i.shape for i in session.get_inputs()}
        given = {name: tuple(a.shape) for name, a in arrays.items()}
        raise ConfigError(
            f"ONNX Runtime cannot run the graph on inputs {given} (it expects {expected}): "
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        ) from exc


class OrtRunner:
    """Runs an ONNX Runtime session on torch tensors (Polygraphy's OnnxrtRunner, minus the framework).

    `runner(x)` feeds a single-input model and returns its first output as a CPU tensor;
    `runner.infer(feeds)` takes and returns every named tensor.
    """

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    @property
    def provider(self) -> str:
        """The provider that runs the graph (the first one the session uses)."""
        return str(self.session.get_providers()[0])

    @property
    def name(self) -> str:
        return f"onnxruntime[{self.provider}]"

    def infer(self, feeds: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, torch.Tensor]:
        """Run the session on named inputs; returns every output by name, as CPU tensors."""
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ConfigError(f"missing input(s) {missing}; the graph's inputs are {self.input_names}")
        arrays = {
            name: (value.detach().cpu().float().numpy() if isinstance(value, torch.Tensor) else value)
            for name, value in feeds.items()
        }
        outputs = _run(self.session, self.output_names, arrays)
        return {name: torch.from_numpy(np.asarray(out)) for name, out in zip(self.output_names, outputs)}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.input_names) != 1:
            raise ConfigError(f"runner(x) needs a single-input graph; this one has {self.input_names}: use infer()")
        return self.infer({self.input_names[0]: x})[self.output_names[0]]


def time_session(
    session: ort.InferenceSession,
    inputs: torch.Tensor | np.ndarray | Mapping[str, torch.Tensor | np.ndarray],
    protocol: TimingProtocol | None = None,
) -> Measurement:
    """Latency of `session.run` on fixed inputs under hwdsa's one timing protocol.

    A single tensor feeds a single-input graph. The time includes ONNX Runtime's host-device copies
    when a GPU provider runs the graph (`session.run` returns host arrays, so it is synchronous).
    `Backend.time_session` applies the protocol and keeps the quietest of its rounds, the statistic of
    a latency table. (`hwdsa export` times an artefact through the profilers backend of its provider
    instead, which binds inputs on the device as the tables do.)
    """
    names = [i.name for i in session.get_inputs()]
    if isinstance(inputs, Mapping):
        feeds = dict(inputs)
    else:
        if len(names) != 1:
            raise ConfigError(f"pass a dict of inputs: the graph has inputs {names}")
        feeds = {names[0]: inputs}
    arrays = {
        name: (value.detach().cpu().float().numpy() if isinstance(value, torch.Tensor) else np.asarray(value))
        for name, value in feeds.items()
    }
    outputs = [o.name for o in session.get_outputs()]
    _run(session, outputs, arrays)  # fail here, with a clear message, rather than inside the timing loop
    return Backend.time_session(CallableSession(lambda: session.run(outputs, arrays)), protocol)
