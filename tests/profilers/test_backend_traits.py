# mypy: allow-subclassing-any
"""Backend traits (`Backend.stepped_latency`, `Backend.onnxruntime_provider`) read through the registry:
built-in values, a third-party backend's defaults, and rounding following the trait."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from _profiler_helpers import REPO
from hwdsa.profilers import BACKENDS, Backend, Session, register_backend
from hwdsa.profilers.backend import backend_for_provider, has_stepped_latency, provider_backends
from hwdsa.profilers.base import LayerSpec

#: The traits the built-in backends had as hard-coded sets before they moved onto the classes.
BUILTIN_STEPPED = {"torch_cuda", "tensorrt", "onnxruntime_cuda", "onnxruntime_tensorrt"}
BUILTIN_PROVIDERS = {
    "CPUExecutionProvider": "onnxruntime",
    "CUDAExecutionProvider": "onnxruntime_cuda",
    "TensorrtExecutionProvider": "onnxruntime_tensorrt",
}


class _PlainBackend(Backend):
    """A third-party backend that sets no trait."""

    name = "test_plain"

    @classmethod
    def check_available(cls) -> None:
        return None

    @contextlib.contextmanager
    def session(self, spec: LayerSpec) -> Iterator[Session]:
        raise NotImplementedError
        yield  # pragma: no cover


class _SteppedBackend(_PlainBackend):
    name = "test_stepped"
    stepped_latency = True


class _FrobProviderBackend(_PlainBackend):
    name = "test_frob_provider"
    onnxruntime_provider = "FrobExecutionProvider"


@pytest.fixture
def third_party() -> Iterator[None]:
    classes: list[type[Backend]] = [_PlainBackend, _SteppedBackend, _FrobProviderBackend]
    for cls in classes:
        register_backend(cls.name, cls)
    yield
    for cls in classes:
        BACKENDS._entries.pop(cls.name, None)  # the registry has no public removal; keep the global clean


def test_builtin_traits_are_the_former_hard_coded_sets() -> None:
    stepped = {n for n in BACKENDS.names() if has_stepped_latency(n)}
    assert BUILTIN_STEPPED <= stepped
    assert {n for n in ("onnxruntime", "torch_cpu") if n in stepped} == set()
    assert all(has_stepped_latency(n) for n in BUILTIN_STEPPED) and not has_stepped_latency("onnxruntime")
    assert not has_stepped_latency("not-a-backend")  # a table from an unknown backend: not stepped
    assert {p: n for p, n in provider_backends().items() if n in BUILTIN_PROVIDERS.values()} == BUILTIN_PROVIDERS
    assert backend_for_provider("CUDAExecutionProvider") == "onnxruntime_cuda"


def test_a_third_party_backend_gets_the_default_traits(third_party: None) -> None:
    assert _PlainBackend.stepped_latency is False and _PlainBackend.onnxruntime_provider is None
    assert not has_stepped_latency("test_plain")
    assert "test_plain" not in provider_backends().values()
    # setting a trait on the class is all it takes
    assert has_stepped_latency("test_stepped")
    assert backend_for_provider("FrobExecutionProvider") == "test_frob_provider"


def test_a_builtin_provider_is_not_taken_over_by_a_third_party_backend(third_party: None) -> None:
    class _Rival(_PlainBackend):
        name = "aaa_rival"  # sorts before every built-in name
        onnxruntime_provider = "CPUExecutionProvider"

    register_backend("aaa_rival", _Rival)
    try:
        assert backend_for_provider("CPUExecutionProvider") == "onnxruntime"
    finally:
        BACKENDS._entries.pop("aaa_rival", None)


def test_a_registered_backend_that_cannot_import_has_no_trait_and_breaks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    register_backend("test_unimportable", "hwdsa_no_such_module:Backend")
    try:
        assert not has_stepped_latency("test_unimportable")
        assert provider_backends()["CPUExecutionProvider"] == "onnxruntime"
    finally:
        BACKENDS._entries.pop("test_unimportable", None)
    assert "test_unimportable" in caplog.text


def _lut_helpers() -> object:
    lut_tests = str(Path(REPO) / "tests" / "lut")
    if lut_tests not in sys.path:
        sys.path.insert(0, lut_tests)
    import _lut_helpers

    return _lut_helpers


def test_rounding_follows_the_trait_of_the_tables_backend(third_party: None) -> None:
    """A table from a stepped backend rounds to its measured step points; from a plain one, to whole channels."""
    import torch

    from hwdsa.costs import Budget
    from hwdsa.lut.cost_model import LatencyCost
    from hwdsa.lut.grid import GridConfig
    from hwdsa.lut.rounding import round_for_budgets, round_to_latency_optimal

    helpers: object = _lut_helpers()
    conv, graph_of, macs_latency, synthetic_table = (
        getattr(helpers, n) for n in ("conv", "graph_of", "macs_latency", "synthetic_table")
    )
    graph = graph_of([conv("a", [(None, 3)], 0, 64), conv("b", [(0, 64)], 1, 64)], [64, 64])
    table = synthetic_table(graph, macs_latency, config=GridConfig("cpu", cpu_points=3))
    ratios = torch.tensor([0.53, 0.41])
    searched = [0.53 * 64, 0.41 * 64]
    counts = {}
    for backend in ("test_plain", "test_stepped"):
        cost = LatencyCost.fit(table.with_meta(backend=backend), graph)
        budget = Budget.fraction_of_dense(cost, 0.5)
        counts[backend] = round_for_budgets(ratios, [budget], cost.group_sizes)
        assert cost.exact(counts[backend]) <= budget.limit
        if backend == "test_stepped":
            assert counts[backend] == list(round_to_latency_optimal(searched, cost, budget.limit))  # step points
            assert all(k in cost.step_points(g) for g, k in enumerate(counts[backend]))
        else:
            assert counts[backend] == list(round_to_latency_optimal(searched, cost, budget.limit, multiple=1))
    assert counts["test_plain"] != counts["test_stepped"]
