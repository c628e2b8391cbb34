"""TensorRT: absent here (clear errors), record checks in pure Python, typing against the stubs, and real
engine builds where TensorRT and a GPU exist."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hwdsa.errors import BackendUnavailableError, ConfigError, EngineMismatchError
from hwdsa.export.onnx import onnx_from_module
from hwdsa.profilers.tensorrt import import_tensorrt
from hwdsa.export.tensorrt import (
    EngineRecord,
    ProfileShape,
    TensorSpec,
    check_engine_record,
    engine_from_file,
    engine_from_onnx,
    is_available,
    read_engine_record,
    record_path,
)

from _export_helpers import ConvBnRelu

REPO = Path(__file__).resolve().parents[2]
HAS_TENSORRT = is_available()
requires_tensorrt = pytest.mark.skipif(
    not HAS_TENSORRT,
    reason="needs TensorRT >= 10 and a CUDA device (an importable `tensorrt` that is only tensorrt-stubs does not count)",
)
ENV: dict[str, Any] = {"tensorrt_version": "10.13.0.35", "device_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def _tensorrt_runtime_installed() -> bool:
    try:
        import_tensorrt()
    except BackendUnavailableError:
        return False
    return True


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path: Path = onnx_from_module(ConvBnRelu().eval(), tmp_path_factory.mktemp("trt") / "m.onnx", input_shape=(1, 1, 28, 28))
    return path


# --------------------------------------------------------------------------------------------------
# TensorRT absent
# --------------------------------------------------------------------------------------------------


@pytest.mark.skipif(_tensorrt_runtime_installed(), reason="TensorRT is installed here")
def test_missing_tensorrt_says_how_to_install() -> None:
    with pytest.raises(BackendUnavailableError, match=r"TensorRT is not installed.*pip install 'tensorrt>=10'"):
        import_tensorrt()
    assert not is_available()


@pytest.mark.skipif(_tensorrt_runtime_installed(), reason="TensorRT is installed here")
def test_engine_functions_raise_backend_unavailable(small_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        engine_from_onnx(small_onnx, tmp_path / "m.engine", input_shape=(1, 1, 28, 28))
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        engine_from_file(tmp_path / "m.engine")
    assert not list(tmp_path.iterdir())


def test_stub_only_tensorrt_is_not_mistaken_for_the_runtime() -> None:
    """tensorrt-stubs installs a `tensorrt/` folder of .pyi files: `import tensorrt` then yields an empty
    namespace package, which `pytest.importorskip` accepts. `import_tensorrt` must not."""
    try:
        import tensorrt
    except ImportError:
        pytest.skip("no `tensorrt` importable at all here")
    if hasattr(tensorrt, "Builder"):
        pytest.skip("the real TensorRT is installed here")
    with pytest.raises(BackendUnavailableError, match=r"has no runtime \(only type stubs"):
        import_tensorrt()


# --------------------------------------------------------------------------------------------------
# Argument checks happen before TensorRT is needed
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision": "int8"}, r"INT8 needs calibration data: .*m.onnx has no Q/DQ nodes"),
        ({"precision": "fp64"}, r"precision must be one of \('fp32', 'fp16', 'int8'\); got 'fp64'"),
        ({"workspace_bytes": 1024}, r"workspace_bytes must be >= 1 MiB; got 1024"),
        ({"batch_profile": (4, 2, 8)}, r"batch_profile must be \(min, opt, max\) with 1 <= min <= opt <= max; got \(4, 2, 8\)"),
        ({"input_shape": (0, 1, 28, 28)}, r"input_shape must be batch-first with every dimension >= 1"),
    ],
)
def test_bad_build_arguments_are_config_errors(kwargs: dict[str, object], match: str, small_onnx: Path, tmp_path: Path) -> None:
    arguments: dict[str, object] = {"input_shape": (1, 1, 28, 28), **kwargs}
    with pytest.raises(ConfigError, match=match):
        engine_from_onnx(small_onnx, tmp_path / "m.engine", **arguments)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


def test_missing_onnx_and_qdq_at_the_wrong_precision_are_config_errors(
    small_onnx: Path, digits: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    from hwdsa.export.quantize import qdq_onnx_from_onnx

    with pytest.raises(ConfigError, match=r"ONNX file .*nowhere.onnx does not exist"):
        engine_from_onnx(tmp_path / "nowhere.onnx", tmp_path / "m.engine", input_shape=(1, 1, 28, 28))
    qdq = qdq_onnx_from_onnx(small_onnx, tmp_path / "q.onnx", calibration_data=digits[0][:32])
    with pytest.raises(ConfigError, match=r"has Q/DQ nodes \(an INT8 graph\); build it with precision='int8'"):
        engine_from_onnx(qdq, tmp_path / "m.engine", precision="fp16", input_shape=(1, 1, 28, 28))


# --------------------------------------------------------------------------------------------------
# The record beside each engine: pure Python, no TensorRT needed
# --------------------------------------------------------------------------------------------------


def _write_engine(path: Path, data: bytes, **overrides: object) -> EngineRecord:
    """Write engine bytes and the record engine_from_onnx would write beside them."""
    record = EngineRecord(
        **ENV,
        precision="fp16",
        strongly_typed=False,
        inputs=(TensorSpec("input", (-1, 1, 28, 28), "FLOAT"),),
        outputs=(TensorSpec("output", (-1, 10), "FLOAT"),),
        profile=(ProfileShape("input", (1, 1, 28, 28), (4, 1, 28, 28), (8, 1, 28, 28)),),
        workspace_bytes=1 << 30,
        build_time_s=12.5,
        onnx_path="m.onnx",
        onnx_sha256="0" * 64,
        engine_sha256=hashlib.sha256(data).hexdigest(),
        hwdsa_version="0.1.0",
        built_at="2025-01-01T00:00:00+00:00",
    )
    record = dataclasses.replace(record, **overrides)  # type: ignore[arg-type]
    path.write_bytes(data)
    record_path(path).write_text(json.dumps(record.to_dict()), encoding="utf-8")
    return record


def test_record_round_trips_and_a_matching_engine_passes(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    written = _write_engine(engine, os.urandom(4096))
    assert record_path(engine).name == "m.engine.json"
    assert read_engine_record(engine) == written
    assert EngineRecord.from_dict(json.loads(json.dumps(written.to_dict()))) == written
    assert check_engine_record(engine, **ENV) == written
    assert check_engine_record(engine, data=engine.read_bytes(), **ENV) == written


def test_corrupted_engine_is_refused(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    data = bytearray(os.urandom(4096))
    _write_engine(engine, bytes(data))
    data[100] ^= 0xFF
    engine.write_bytes(bytes(data))
    with pytest.raises(EngineMismatchError, match=r"m.engine is corrupted or was replaced: its sha256 [0-9a-f]{16}\.\.\. differs"):
        check_engine_record(engine, **ENV)


def test_engine_without_record_is_refused(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    _write_engine(engine, b"plan")
    record_path(engine).unlink()
    with pytest.raises(EngineMismatchError, match=r"m.engine has no record \(.*m.engine.json is missing\)"):
        check_engine_record(engine, **ENV)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"tensorrt_version": "10.0.1.6"}, r"built with TensorRT 10.0.1.6; this is TensorRT 10.13.0.35"),
        ({"device_name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}, r"built for NVIDIA A100-SXM4-80GB \(compute capability 8.0\); this device is NVIDIA H100"),
        ({"compute_capability": "8.9"}, r"compute capability 8.9\); this device is .* \(9.0\)"),
    ],
)
def test_engine_from_another_version_or_device_is_refused(overrides: dict[str, str], match: str, tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    _write_engine(engine, b"plan", **overrides)
    with pytest.raises(EngineMismatchError, match=match):
        check_engine_record(engine, **ENV)


def test_malformed_records_are_refused(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    _write_engine(engine, b"plan")
    rpath = record_path(engine)
    rpath.write_text("{not json", encoding="utf-8")
    with pytest.raises(EngineMismatchError, match="is unreadable"):
        check_engine_record(engine, **ENV)
    good = _write_engine(engine, b"plan").to_dict()
    rpath.write_text(json.dumps({**good, "schema_version": 99}), encoding="utf-8")
    with pytest.raises(EngineMismatchError, match="schema_version is 99; this hwdsa reads 1"):
        check_engine_record(engine, **ENV)
    rpath.write_text(json.dumps({k: v for k, v in good.items() if k != "engine_sha256"}), encoding="utf-8")
    with pytest.raises(EngineMismatchError, match=r"engine record is malformed \(KeyError: 'engine_sha256'\)"):
        check_engine_record(engine, **ENV)
    rpath.write_text("[]", encoding="utf-8")
    with pytest.raises(EngineMismatchError, match="is not a JSON object"):
        check_engine_record(engine, **ENV)


def test_missing_engine_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"engine file .*absent.engine does not exist"):
        check_engine_record(tmp_path / "absent.engine", **ENV)


# --------------------------------------------------------------------------------------------------
# Typing: the module is checked against tensorrt-stubs, and a wrong API call is caught
# --------------------------------------------------------------------------------------------------


def _installed_stub_dirs() -> list[Path]:
    purelib = Path(sysconfig.get_paths()["purelib"])
    return [purelib / name for name in ("tensorrt", "tensorrt_bindings") if (purelib / name / "__init__.pyi").is_file()]


def _usable_stubs(dest: Path) -> Path:
    """A copy of the installed tensorrt-stubs that mypy can read.

    As shipped (10.13.0.35.1) the stubs cannot be used: the `tensorrt/` folder has no `py.typed`, so
    mypy skips it as an untyped installed package (and `ignore_missing_imports` turns every TensorRT
    name into Any, checking nothing), and five generated signatures are not valid Python (a parameter
    named `in`; a parameter without default after defaults), which stops mypy outright. This copy goes on
    MYPYPATH, and each unparsable `def` line gets a permissive (*args, **kwargs) signature; none of them
    (plugin callbacks, add_scale_nd) is used by hwdsa.
    """
    for source_dir in _installed_stub_dirs():
        target_dir = dest / source_dir.name
        target_dir.mkdir(parents=True, exist_ok=True)
        for stub in source_dir.glob("*.pyi"):
            lines = []
            for line in stub.read_text(encoding="utf-8").splitlines():
                stripped = line.strip()
                if stripped.startswith("def "):
                    try:
                        ast.parse(stripped + "\n    ...")
                    except SyntaxError:
                        match = re.match(r"def (\w+)\(.*\)( -> .*)?:\s*$", stripped)
                        assert match, f"cannot repair stub line: {stripped}"
                        indent = line[: len(line) - len(line.lstrip())]
                        line = f"{indent}def {match.group(1)}(self, *args: typing.Any, **kwargs: typing.Any){match.group(2) or ''}:"
                lines.append(line)
            text = "\n".join(lines) + "\n"
            if "import typing\n" not in text:
                text = "import typing\n" + text
            ast.parse(text)
            (target_dir / stub.name).write_text(text, encoding="utf-8")
    return dest


def _mypy_config(path: Path) -> Path:
    """The project's [tool.mypy] settings, plus: the stubs' own errors silenced, heavy libraries skipped
    (only the TensorRT calls are under test here, and following torch takes ~30 s), other hwdsa modules
    followed silently."""
    settings = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]
    lines = ["[mypy]"]
    for key in ("python_version", "strict", "ignore_missing_imports"):
        if key in settings:
            value = settings[key]
            lines.append(f"{key} = {value if not isinstance(value, bool) else str(value)}")
    lines += [
        "[mypy-tensorrt.*,tensorrt_bindings.*,tensorrt_libs]",
        "ignore_errors = True",
        "[mypy-torch.*,numpy.*,onnx.*,onnxruntime.*,onnxslim.*]",
        "follow_imports = skip",
        "[mypy-hwdsa.*]",
        "follow_imports = silent",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


WRONG_API = '''\
from __future__ import annotations

import tensorrt as trt


def build(logger: trt.ILogger) -> None:
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    config = builder.create_builder_config()
    config.set_memory_pool_limit("workspace", 1 << 30)
    builder.build_engine(network, config)
'''


def test_tensorrt_module_type_checks_against_the_stubs_and_wrong_calls_fail(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install 'hwdsa[test]')")
    if len(_installed_stub_dirs()) < 2:
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
    stubs = _usable_stubs(tmp_path / "stubs")
    wrong = tmp_path / "wrong_api.py"
    wrong.write_text(WRONG_API, encoding="utf-8")
    module = REPO / "hwdsa" / "export" / "tensorrt.py"
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(_mypy_config(tmp_path / "mypy.ini")),
         "--cache-dir", str(tmp_path / "cache"), "--no-error-summary", str(module), str(wrong)],
        cwd=REPO, env={**os.environ, "MYPYPATH": str(stubs)}, capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    module_errors = [line for line in output.splitlines() if line.startswith(str(module)) or line.startswith("hwdsa/export/tensorrt.py")]
    assert not module_errors, "\n".join(module_errors)
    # The deliberate mistakes are caught: proof that mypy read the stubs and did not treat TensorRT as Any.
    assert 'Argument 1 to "set_memory_pool_limit" of "IBuilderConfig" has incompatible type "str"; expected "MemoryPoolType"' in output, output
    assert '"Builder" has no attribute "build_engine"' in output, output


# --------------------------------------------------------------------------------------------------
# Real engines (TensorRT >= 10 and a GPU)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_onnx(digits_net: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path: Path = onnx_from_module(digits_net, tmp_path_factory.mktemp("trt-digits") / "digits.onnx", input_shape=(4, 1, 28, 28))
    return path


@requires_tensorrt
@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_builds_runs_with_dynamic_batch_and_matches(
    precision: str, digits_onnx: Path, digits_net: nn.Module, digits: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    from hwdsa.export.compare import compare_outputs
    from hwdsa.export.tensorrt import TrtRunner, time_engine
    from hwdsa.profilers.base import TimingProtocol

    images, _ = digits
    engine = tmp_path / f"m.{precision}.engine"
    record = engine_from_onnx(digits_onnx, engine, precision=precision, input_shape=(4, 1, 28, 28), batch_profile=(1, 4, 64))
    assert record == read_engine_record(engine)
    assert record.precision == precision and record.inputs[0].shape == (-1, 1, 28, 28) and record.inputs[0].dtype == "FLOAT"
    # Strongly typed (the only mode TensorRT 11 keeps): FP16 is built from an FP16 graph made beside the engine.
    assert record.strongly_typed
    assert Path(record.onnx_path) == (tmp_path / "m.fp16.fp16.onnx" if precision == "fp16" else digits_onnx)
    assert record.profile[0].max == (64, 1, 28, 28) and record.engine_sha256 == hashlib.sha256(engine.read_bytes()).hexdigest()
    runner = TrtRunner.from_file(engine)
    assert runner(images[:1].cuda()).shape == (1, 10) and runner(images[:4]).is_cuda
    report = compare_outputs(digits_net, runner, [images[:1], images[1:5], images[1400:1464]], precision=precision)
    assert report.passed
    measured = time_engine(runner, images[:4], TimingProtocol(warmup=2, repeats=5, max_attempts=1))
    assert measured.median_ms > 0
    with pytest.raises(ConfigError, match="outside the engine's profile"):
        runner(torch.zeros(65, 1, 28, 28))


@requires_tensorrt
@pytest.mark.tensorrt
@pytest.mark.gpu
def test_int8_engine_from_calibration_data(
    digits_onnx: Path, digits_net: nn.Module, digits: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    from hwdsa.export.compare import compare_outputs
    from hwdsa.export.tensorrt import TrtRunner

    images, _ = digits
    engine = tmp_path / "m.int8.engine"
    record = engine_from_onnx(digits_onnx, engine, precision="int8", input_shape=(4, 1, 28, 28), calibration_data=images[:256])
    assert record.strongly_typed and Path(record.onnx_path) == tmp_path / "m.int8.qdq.onnx"
    report = compare_outputs(digits_net, TrtRunner.from_file(engine), list(torch.split(images[1400:], 100)), precision="int8")
    assert report.passed and report.top1_agreement is not None and report.top1_agreement >= 0.95


@requires_tensorrt
@pytest.mark.tensorrt
@pytest.mark.gpu
def test_engine_from_file_refuses_a_corrupted_engine(digits_onnx: Path, tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    engine_from_onnx(digits_onnx, engine, input_shape=(1, 1, 28, 28))
    assert engine_from_file(engine).num_io_tensors == 2
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    with pytest.raises(EngineMismatchError, match="corrupted or was replaced"):
        engine_from_file(engine)


def test_a_graph_of_another_precision_is_refused_before_tensorrt_is_needed(small_onnx: Path, tmp_path: Path) -> None:
    """Engines are strongly typed: the graph's types are the engine's precision, so they must agree."""
    from hwdsa.export.quantize import fp16_onnx_from_onnx

    half = fp16_onnx_from_onnx(small_onnx, tmp_path / "h.onnx")
    for precision in ("fp32", "int8"):
        with pytest.raises(ConfigError, match=r"h.onnx is an FP16 graph; build it with precision='fp16', or pass the FP32 graph"):
            engine_from_onnx(half, tmp_path / "m.engine", precision=precision, input_shape=(1, 1, 28, 28), calibration_data=torch.zeros(2, 1, 28, 28))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.onnx"]


# --------------------------------------------------------------------------------------------------
# One builder: export builds through the profilers' import guard, logger and builder configuration
# --------------------------------------------------------------------------------------------------


def test_export_uses_the_profilers_import_guard_logger_and_builder_settings() -> None:
    import hwdsa.export.tensorrt as export_trt
    import hwdsa.profilers.tensorrt as profilers_trt

    assert export_trt.import_tensorrt is profilers_trt.import_tensorrt
    assert export_trt.trt_logger is profilers_trt.trt_logger
    assert vars(export_trt)["build_engine"] is profilers_trt.build_engine
    assert export_trt.TensorSpec is profilers_trt.TensorSpec and export_trt.ProfileShape is profilers_trt.ProfileShape
    assert export_trt.DEFAULT_WORKSPACE_BYTES == profilers_trt.DEFAULT_WORKSPACE_BYTES


def test_a_bad_builder_optimization_level_is_a_config_error(small_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"builder_optimization_level must be in \[0, 5\] or None; got 9"):
        engine_from_onnx(small_onnx, tmp_path / "m.engine", input_shape=(1, 1, 28, 28), builder_optimization_level=9)
    assert not list(tmp_path.iterdir())


def test_engine_from_onnx_builds_through_the_shared_builder(
    small_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TensorRT stood in for: the settings and the dynamic-batch profile reach `build_engine`, and the record says so."""
    import hwdsa.export.tensorrt as export_trt
    from hwdsa.profilers.tensorrt import BuilderSettings, BuiltEngine, ProfilePolicy

    calls: list[tuple[str, BuilderSettings]] = []

    def fake_build(onnx_path: Path, *, precision: str, profile_for: ProfilePolicy, settings: BuilderSettings,
                   device: int | None = None) -> BuiltEngine:
        calls.append((precision, settings))
        ranges = profile_for(0, "input", (-1, 1, 28, 28))
        assert ranges is not None
        return BuiltEngine(
            data=b"plan", build_time_s=0.5, inputs=(TensorSpec("input", (-1, 1, 28, 28), "FLOAT"),),
            outputs=(TensorSpec("output", (-1, 10), "FLOAT"),), profile=(ProfileShape("input", *ranges),),
        )

    monkeypatch.setattr(export_trt, "import_tensorrt", lambda: None)
    monkeypatch.setattr(export_trt, "require_cuda", lambda: None)
    monkeypatch.setattr(export_trt, "current_environment", lambda: dict(ENV))
    monkeypatch.setattr(export_trt, "build_engine", fake_build)
    engine = tmp_path / "m.engine"
    record = engine_from_onnx(small_onnx, engine, input_shape=(2, 1, 28, 28), batch_profile=(1, 2, 8),
                              workspace_bytes=1 << 26, builder_optimization_level=4)
    assert calls == [("fp32", BuilderSettings(1 << 26, 4))]
    assert record.profile == (ProfileShape("input", (1, 1, 28, 28), (2, 1, 28, 28), (8, 1, 28, 28)),)
    assert record.builder_optimization_level == 4 and record.workspace_bytes == 1 << 26 and record.strongly_typed
    assert read_engine_record(engine) == record and engine.read_bytes() == b"plan"


def test_the_shipped_profile_policy() -> None:
    from hwdsa.export.tensorrt import _batch_profile

    policy = _batch_profile((4, 3, 8, 8), (1, 4, 16))
    assert policy(0, "input", (-1, 3, 8, 8)) == ((1, 3, 8, 8), (4, 3, 8, 8), (16, 3, 8, 8))
    assert policy(0, "input", (4, 3, 8, 8)) is None  # a static graph stays static
    with pytest.raises(ConfigError, match=r"input_shape \(4, 3, 8, 8\) does not match the graph's input input of shape \(-1, 3, 9, 9\)"):
        policy(0, "input", (-1, 3, 9, 9))
    with pytest.raises(ConfigError, match=r"dynamic dimensions \(-1, 3, -1, 8\) other than the batch"):
        policy(0, "input", (-1, 3, -1, 8))


def test_records_written_before_the_optimization_level_was_recorded_still_read(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    written = _write_engine(engine, b"plan")
    data = written.to_dict()
    del data["builder_optimization_level"]
    record_path(engine).write_text(json.dumps(data), encoding="utf-8")
    assert read_engine_record(engine) == written and written.builder_optimization_level is None
