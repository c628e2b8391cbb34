# mypy: allow-subclassing-any
"""TensorRT backend (profilers/tensorrt.py): runtime tests where TensorRT and a GPU exist, and a mypy --strict
check against the installed `tensorrt-stubs` everywhere."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from _profiler_helpers import LIGHT, REPO, check_measurement, conv
from hwdsa.errors import BackendUnavailableError
from hwdsa.profilers import get_backend, get_backend_class
from hwdsa.profilers.base import LayerSpec

_REASON = get_backend_class("tensorrt").unavailable_reason()
requires_tensorrt = pytest.mark.skipif(_REASON is not None, reason=f"TensorRT backend unavailable: {_REASON}")


@pytest.mark.skipif(_REASON is None, reason="TensorRT is available here; the unavailable path cannot be shown")
def test_unavailable_says_what_to_install() -> None:
    with pytest.raises(BackendUnavailableError, match=r"backend 'tensorrt' is not available here: .*(tensorrt>=10|NVIDIA)"):
        get_backend("tensorrt")


@requires_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_measures_a_conv(precision: str) -> None:
    be = get_backend("tensorrt")
    check_measurement(be.measure(conv(16, 32, size=16, precision=precision), LIGHT))
    assert "compute capability" in be.device_description()
    assert "tensorrt" in be.versions()


@requires_tensorrt
def test_measures_a_linear_and_a_network(tmp_path: Path) -> None:
    import torch

    from hwdsa.profilers import measure_network

    be = get_backend("tensorrt")
    check_measurement(be.measure(LayerSpec("linear", 64, 10), LIGHT))
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    check_measurement(measure_network(net, (1, 3, 32, 32), be, LIGHT))


# ------------------------------------------------------------------------------------------------
# Static check. tensorrt-stubs installs `tensorrt/` and `tensorrt_bindings/` as .pyi files without a
# py.typed marker, and a few of its generated signatures are not valid Python (a parameter named `in`,
# a parameter without default after defaulted ones). mypy therefore silently treats `tensorrt` as Any
# when run against site-packages. Here the stubs are copied, the unparseable signatures are relaxed to
# (*args, **kwargs), and mypy --strict runs with the copy on MYPYPATH, so every other TensorRT call in
# profilers/tensorrt.py is checked for real (a probe file proves the stubs are in effect).
# ------------------------------------------------------------------------------------------------


def _stub_dirs() -> list[Path]:
    roots = {Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["platlib"])}
    found = []
    for name in ("tensorrt", "tensorrt_bindings"):
        for root in roots:
            if (root / name / "__init__.pyi").is_file():
                found.append(root / name)
                break
    return found


def _sanitised_stubs(dest: Path) -> Path:
    for src in _stub_dirs():
        for pyi in src.glob("*.pyi"):
            out = []
            for line in pyi.read_text(encoding="utf-8").splitlines():
                text = line.strip()
                if text.startswith("def ") and text.endswith(":"):
                    try:
                        ast.parse(text + " ...")
                    except SyntaxError:
                        m = re.match(r"(\s*)def (\w+)\((self)?.*\)( -> .+)?:$", line)
                        assert m is not None, line
                        indent, name, is_method, ret = m.groups()
                        args = ("self, " if is_method else "") + "*args: typing.Any, **kwargs: typing.Any"
                        line = f"{indent}def {name}({args}){ret or ''}:"
                out.append(line)
            target = dest / src.name / pyi.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("import typing\n" + "\n".join(out) + "\n", encoding="utf-8")
    return dest


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed (pip install 'hwdsa[test]')")
@pytest.mark.skipif(len(_stub_dirs()) < 2, reason="tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
def test_mypy_strict_against_tensorrt_stubs(tmp_path: Path) -> None:
    stubs = _sanitised_stubs(tmp_path / "stubs")
    probe = tmp_path / "probe.py"
    probe.write_text("import tensorrt as trt\n\nflag = trt.BuilderFlag.NOT_A_FLAG\n", encoding="utf-8")
    config = tmp_path / "mypy.ini"
    config.write_text(
        "[mypy]\nstrict = True\npython_version = 3.11\nignore_missing_imports = True\n"
        f"mypy_path = {stubs}\ncache_dir = {tmp_path / 'cache'}\n"
        # the generated stubs have errors of their own; other people's modules are checked elsewhere
        "[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]\nignore_errors = True\n"
        "[mypy-torch.*,hwdsa.export.*,onnx.*,onnxruntime.*]\nfollow_imports = skip\n"
        # the package the checked file sits in: followed for its types, its own errors reported elsewhere
        "[mypy-hwdsa,hwdsa.*]\nfollow_imports = silent\n",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "hwdsa/profilers/tensorrt.py", str(probe)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert [e for e in errors if "hwdsa/profilers/tensorrt.py" in e] == [], proc.stdout
    # the stubs are really in effect: a misspelt TensorRT attribute is caught
    assert len(errors) == 1 and "probe.py" in errors[0] and "NOT_A_FLAG" in errors[0], proc.stdout


# ------------------------------------------------------------------------------------------------
# The one builder configuration, and engine files timed as they are (no TensorRT needed)
# ------------------------------------------------------------------------------------------------


def test_builder_settings_are_checked_and_shared_by_the_backend() -> None:
    from hwdsa.errors import ConfigError
    from hwdsa.profilers.tensorrt import BuilderSettings, TensorRTBackend

    assert BuilderSettings() == BuilderSettings(1 << 30, None)
    with pytest.raises(ConfigError, match=r"workspace_bytes must be >= 1 MiB; got 1024"):
        BuilderSettings(1024)
    with pytest.raises(ConfigError, match=r"builder_optimization_level must be in \[0, 5\] or None; got 6"):
        TensorRTBackend(builder_optimization_level=6)
    be = TensorRTBackend(workspace_bytes=1 << 28, builder_optimization_level=2)
    assert be.builder_settings == BuilderSettings(1 << 28, 2)
    assert be.options() == {"device": 0, "workspace_bytes": 1 << 28, "builder_optimization_level": 2}
    assert be.stepped_latency and be.onnxruntime_provider is None


def test_static_profile_fixes_the_first_inputs_dynamic_dimensions() -> None:
    from hwdsa.errors import ConfigError
    from hwdsa.profilers.tensorrt import static_profile

    policy = static_profile("layer.onnx", (2, 8, 4, 4))
    assert policy(0, "input", (-1, 8, 4, 4)) == ((2, 8, 4, 4),) * 3
    assert policy(1, "other", (3,)) is None
    with pytest.raises(ConfigError, match=r"layer.onnx: input other has dynamic dimensions \(-1, 3\); pass input_shape"):
        policy(1, "other", (-1, 3))
    with pytest.raises(ConfigError, match="pass input_shape"):
        static_profile("layer.onnx", None)(0, "input", (-1, 8, 4, 4))


def test_an_engine_file_is_timed_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`measure_network(engine_path, ...)` deserializes the file itself (what `hwdsa export` ships) instead of
    building from ONNX; the base class's protocol and statistic time it."""
    import contextlib
    from collections.abc import Iterator

    from hwdsa.errors import ConfigError
    from hwdsa.profilers import Session
    from hwdsa.profilers.tensorrt import TensorRTBackend

    seen: list[tuple[bytes, tuple[int, ...], str]] = []

    class _Constant(Session):
        has_device_timer = True

        def run_once(self) -> None:
            pass

        def device_sample(self, inner: int) -> float:
            return 0.5

    @contextlib.contextmanager
    def engine_session(self: TensorRTBackend, data: bytes, *, input_shape: tuple[int, ...], source: str) -> Iterator[Session]:
        seen.append((data, tuple(input_shape), source))
        yield _Constant()

    monkeypatch.setattr(TensorRTBackend, "engine_session", engine_session)
    monkeypatch.setattr(TensorRTBackend, "onnx_session", lambda *a, **k: pytest.fail("an engine file must not be rebuilt"))
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"plan")
    m = TensorRTBackend().measure_network(engine, (4, 3, 8, 8), LIGHT, precision="fp16")
    check_measurement(m)
    assert m.median_ms == 0.5 and seen == [(b"plan", (4, 3, 8, 8), str(engine))]
    with pytest.raises(ConfigError, match=r"engine file .*absent.engine does not exist"):
        TensorRTBackend().measure_network(tmp_path / "absent.engine", (4, 3, 8, 8), LIGHT)
