"""The Backend base class and the backend registry (profilers/backend.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from _profiler_helpers import LIGHT, REPO, conv
from hwdsa.errors import BackendUnavailableError, ConfigError
from hwdsa.profilers import BACKENDS, Backend, Session, get_backend, get_backend_class, list_backends, register_backend
from hwdsa.profilers.backend import resolve_backend
from hwdsa.profilers.base import LayerSpec, TimingProtocol

BUILTIN = ["onnxruntime", "onnxruntime_cuda", "onnxruntime_tensorrt", "tensorrt", "torch_cpu", "torch_cuda"]


class _ConstantSession(Session):
    """A session with a device timer that reports a fixed time: checks which timer `measure` uses."""

    has_device_timer = True

    def __init__(self) -> None:
        self.calls = 0

    def run_once(self) -> None:
        self.calls += 1

    def device_sample(self, inner: int) -> float:
        self.calls += inner
        return 0.125


class _BusyThenQuietSession(Session):
    """A device timer that reads 0.2 ms per run during the first round's samples, 0.1 ms afterwards."""

    has_device_timer = True

    def __init__(self, busy_samples: int) -> None:
        self.samples = 0
        self.busy_samples = busy_samples

    def run_once(self) -> None:
        pass

    def device_sample(self, inner: int) -> float:
        self.samples += 1
        return 0.2 if self.samples <= self.busy_samples else 0.1


class _TimerBackend(Backend):
    name = "test_timer"
    description = "test backend with a constant device timer"
    precisions = ("fp32",)

    def __init__(self) -> None:
        self.sessions: list[_ConstantSession] = []

    @classmethod
    def check_available(cls) -> None:
        return None

    @contextlib.contextmanager
    def session(self, spec: LayerSpec) -> Iterator[Session]:
        s = _ConstantSession()
        self.sessions.append(s)
        yield s


class _MissingBackend(_TimerBackend):
    name = "test_missing"

    @classmethod
    def check_available(cls) -> None:
        raise BackendUnavailableError("the Frobnicator SDK is not installed: pip install frobnicator")


class _BrokenBackend(_TimerBackend):
    name = "test_broken"

    @classmethod
    def check_available(cls) -> None:
        raise RuntimeError("driver exploded")


@pytest.fixture
def registered() -> Iterator[None]:
    names = {"test_timer": _TimerBackend, "test_missing": _MissingBackend, "test_broken": _BrokenBackend}
    for name, cls in names.items():
        register_backend(name, cls, description=cls.description)
    yield
    for name in names:
        BACKENDS._entries.pop(name, None)  # the registry has no public removal; keep the global clean


class TestRegistry:
    def test_builtins_are_listed(self) -> None:
        names = [info.name for info in list_backends()]
        assert set(BUILTIN) <= set(names)
        assert all(info.available is None for info in list_backends())  # nothing checked, nothing imported

    def test_availability_is_reported(self) -> None:
        infos = {i.name: i for i in list_backends(check_availability=True)}
        assert infos["torch_cpu"].available is True and infos["onnxruntime"].available is True
        for info in infos.values():
            assert info.available is (info.reason is None)

    def test_unknown_name_lists_valid_names(self) -> None:
        with pytest.raises(ConfigError, match=r"unknown backend 'nope'; valid names: .*onnxruntime.*torch_cpu"):
            get_backend("nope")

    def test_unavailable_backend_says_what_to_install(self, registered: None) -> None:
        with pytest.raises(BackendUnavailableError, match="backend 'test_missing' is not available here: .*pip install frobnicator"):
            get_backend("test_missing")
        assert isinstance(BackendUnavailableError("x"), ImportError)  # catchable as an ImportError too

    @pytest.mark.parametrize("name", BUILTIN)
    def test_unavailable_builtins_say_what_to_install(self, name: str) -> None:
        cls = get_backend_class(name)
        if cls.is_available():
            pytest.skip(f"{name} is available on this machine")
        with pytest.raises(BackendUnavailableError, match=rf"backend '{name}' is not available here: .*(install|NVIDIA)"):
            get_backend(name)

    def test_is_available_never_raises(self, registered: None) -> None:
        cls = get_backend_class("test_broken")
        assert cls.is_available() is False
        assert "RuntimeError while checking test_broken: driver exploded" in (cls.unavailable_reason() or "")

    def test_bad_option(self) -> None:
        with pytest.raises(ConfigError, match=r"backend 'torch_cpu' does not take the options \['bogus'\]"):
            get_backend("torch_cpu", bogus=1)

    def test_bad_thread_count(self) -> None:
        with pytest.raises(ConfigError, match="num_threads must be a positive integer or None; got 0"):
            get_backend("onnxruntime", num_threads=0)

    def test_duplicate_registration(self, registered: None) -> None:
        with pytest.raises(ConfigError, match="backend 'test_timer' is already registered"):
            register_backend("test_timer", _TimerBackend)

    def test_non_backend_target(self) -> None:
        register_backend("test_not_a_backend", "hwdsa.profilers.specs:dedupe_specs")
        try:
            with pytest.raises(ConfigError, match="is not a hwdsa.profilers.Backend subclass"):
                get_backend("test_not_a_backend")
        finally:
            BACKENDS._entries.pop("test_not_a_backend", None)

    def test_resolve_refuses_options_with_an_instance(self) -> None:
        be = get_backend("torch_cpu")
        assert resolve_backend(be) is be
        with pytest.raises(ConfigError, match="apply only when the backend is given by name"):
            resolve_backend(be, num_threads=1)


class TestBackendBase:
    def test_device_timer_is_preferred(self, registered: None) -> None:
        be = get_backend("test_timer")
        m = be.measure(conv(4, 8), LIGHT)
        assert m.median_ms == m.q1_ms == m.q3_ms == 0.125 and not m.noisy
        # warm-up, the probe and the repeats all went through device_sample
        assert be.sessions[0].calls >= LIGHT.warmup + 1 + LIGHT.repeats  # type: ignore[attr-defined]

    def test_unsupported_precision_is_refused(self, registered: None) -> None:
        with pytest.raises(ConfigError, match=r"backend 'test_timer' measures precision\(s\) \('fp32',\); got 'fp16'"):
            get_backend("test_timer").measure(conv(4, 8, precision="fp16"), LIGHT)

    def test_network_timing_not_supported_by_default(self, registered: None) -> None:
        with pytest.raises(ConfigError, match="cannot time whole networks"):
            get_backend("test_timer").measure_network(object(), (1, 3, 8, 8), LIGHT)

    def test_bad_input_shape(self) -> None:
        with pytest.raises(ConfigError, match="input_shape must be batch first"):
            get_backend("torch_cpu").measure_network(object(), (3,), LIGHT)

    def test_versions_and_repr(self) -> None:
        be = get_backend("torch_cpu", num_threads=1)
        assert {"python", "hwdsa", "torch"} <= set(be.versions())
        assert repr(be) == "TorchCpuBackend(num_threads=1)"


def test_import_loads_no_heavy_library() -> None:
    """`import hwdsa.profilers` and listing backends import neither torch, onnxruntime nor tensorrt."""
    code = (
        "import sys, hwdsa.profilers as p\n"
        "p.list_backends()\n"
        "print(sorted(m for m in ('torch', 'onnxruntime', 'tensorrt', 'pandas', 'onnx') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "[]"


def test_third_party_backend_from_entry_point(tmp_path: Path) -> None:
    """A distribution that declares `hwdsa.backends` entry points gets its backend registered."""
    (tmp_path / "frob_backend.py").write_text(
        textwrap.dedent(
            """
            import contextlib
            from hwdsa.profilers import Backend

            class FrobBackend(Backend):
                name = "frob"

                @classmethod
                def check_available(cls):
                    return None

                @contextlib.contextmanager
                def session(self, spec):
                    raise NotImplementedError
                    yield
            """
        ),
        encoding="utf-8",
    )
    dist = tmp_path / "frob-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: frob\nVersion: 1.0\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text("[hwdsa.backends]\nfrob = frob_backend:FrobBackend\n", encoding="utf-8")
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "from hwdsa.profilers import get_backend, list_backends\n"
        "info = {i.name: i for i in list_backends()}['frob']\n"
        "print(info.description, type(get_backend('frob')).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "third-party backend (frob) FrobBackend"


@pytest.mark.parametrize(
    "module", ["hwdsa.profilers", "hwdsa.profilers.backend", "hwdsa.profilers.runner", "hwdsa.profilers.specs"]
)
def test_docstring_examples_run(module: str) -> None:
    """The `Example:` blocks run."""
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def test_time_session_keeps_the_quietest_round() -> None:
    proto = TimingProtocol(warmup=2, repeats=5, max_attempts=1, rounds=3)
    per_round = proto.warmup + 1 + proto.repeats  # warm-up, the probe, the timed samples
    busy = Backend.time_session(_BusyThenQuietSession(per_round), dataclasses.replace(proto, rounds=1))
    assert busy.median_ms == 0.2  # one round: the disturbed one
    assert Backend.time_session(_BusyThenQuietSession(per_round), proto).median_ms == 0.1
    with pytest.raises(ValueError, match="rounds >= 1"):
        TimingProtocol(rounds=0)
