"""Per-layer surfaces: interpolation weights, monotone envelopes, and reading a network's grid from a table."""

from __future__ import annotations

import numpy as np
import pytest

from _lut_helpers import macs_latency, measurement, mobile_graph, residual_graph, synthetic_table
from hwdsa.errors import TableError
from hwdsa.lut.fit import fit_layers, interp_weights, isotonic_surface, monotone_envelope
from hwdsa.lut.grid import GridConfig, plan_grid
from hwdsa.lut.table import LatencyTable


class TestInterpolation:
    def test_linear_weights(self) -> None:
        w = interp_weights([2, 4, 8], 2, 8)
        assert w.shape == (7, 3)
        np.testing.assert_allclose(w.sum(axis=1), 1.0)
        np.testing.assert_allclose(w[1], [0.5, 0.5, 0.0])  # count 3
        np.testing.assert_allclose(w[4], [0.0, 0.5, 0.5])  # count 6
        np.testing.assert_allclose(w[[0, 2, 6]], np.eye(3))  # grid points are exact

    def test_ceil_weights(self) -> None:
        w = interp_weights([2, 4, 8], 2, 8, "ceil")
        assert w[1].tolist() == [0.0, 1.0, 0.0] and w[3].tolist() == [0.0, 0.0, 1.0]

    def test_points_must_cover_the_axis(self) -> None:
        with pytest.raises(TableError, match="must be increasing and cover \\[1, 8\\]"):
            interp_weights([2, 8], 1, 8)
        with pytest.raises(TableError, match="interpolation must be"):
            interp_weights([1, 8], 1, 8, "cubic")  # type: ignore[arg-type]


class TestMonotone:
    def test_envelope_is_the_running_maximum(self) -> None:
        raw = np.array([[1.0, 3.0, 2.0], [0.5, 4.0, 3.5], [2.0, 2.0, 5.0]])
        env = monotone_envelope(raw)
        assert np.all(np.diff(env, axis=0) >= 0) and np.all(np.diff(env, axis=1) >= 0)
        assert np.all(env >= raw)
        assert env.tolist() == [[1.0, 3.0, 3.0], [1.0, 4.0, 4.0], [2.0, 4.0, 5.0]]

    def test_isotonic_is_monotone_and_denoises(self) -> None:
        """Measured: on noisy samples of a monotone surface, isotonic regression lands closer to the
        truth than the running maximum, which keeps the noise's peaks (so it is the better `monotone`
        setting for noisy CPU tables; the running maximum stays the safe default)."""
        rng = np.random.default_rng(0)
        ci, co = np.meshgrid(np.arange(1, 17), np.arange(1, 17), indexing="ij")
        truth = 0.05 + 1e-3 * ci * co
        errs_iso, errs_max = [], []
        for _ in range(5):
            noisy = truth * (1 + 0.08 * rng.standard_normal(truth.shape))
            iso = isotonic_surface(noisy)
            assert np.all(np.diff(iso, axis=0) >= 0) and np.all(np.diff(iso, axis=1) >= 0)
            errs_iso.append(np.abs(iso - truth).mean())
            errs_max.append(np.abs(monotone_envelope(noisy) - truth).mean())
        assert np.mean(errs_iso) < 0.9 * np.mean(errs_max)  # about 20% lower with 8% noise


class TestFitLayers:
    def test_full_grid(self) -> None:
        graph = residual_graph(8, 8)
        table = synthetic_table(graph, macs_latency)
        layers = fit_layers(table, graph)
        assert [fl.name for fl in layers] == ["stem", "block.conv1", "block.conv2", "fc"]
        conv1 = layers[1]
        assert conv1.raw_ms.shape == (8, 8)
        spec = conv1.grid.spec_at(5, 7)
        assert conv1.latency_ms(5, 7) == table.lookup(spec)
        assert conv1.is_measured(5, 7)

    def test_points_are_inferred_from_a_coarser_table(self) -> None:
        graph = residual_graph(16, 16)
        table = synthetic_table(graph, macs_latency, config=GridConfig("cpu", cpu_points=4))
        conv1 = fit_layers(table, graph)[1]
        assert conv1.grid.in_points[0] == 1 and conv1.grid.in_points[-1] == 16
        assert len(conv1.grid.in_points) < 16
        assert not conv1.is_measured(7, 7)
        # interpolated between the measured points
        assert conv1.latency_ms(1, 1) < conv1.latency_ms(7, 7) < conv1.latency_ms(16, 16)

    def test_depthwise_and_concat(self) -> None:
        graph = mobile_graph()
        table = synthetic_table(graph, macs_latency, config=GridConfig("gpu"))
        layers = {fl.name: fl for fl in fit_layers(table, graph)}
        dw = layers["dw"]
        assert dw.grid.shape == "diag" and dw.raw_ms.shape == (5,)
        assert dw.latency_ms(16, 16) == table.lookup(dw.grid.spec_at(16, 16))
        fuse = layers["fuse"]
        assert fuse.grid.in_points[0] == 2 and fuse.grid.in_points[-1] == 40

    def test_strict_grid_names_missing_specs(self) -> None:
        graph = residual_graph(16, 16)
        table = synthetic_table(graph, macs_latency, config=GridConfig("cpu", cpu_points=4))
        with pytest.raises(TableError, match="layer .stem.: the latency table lacks 12 entries \\(points of the requested grid\\).*hwdsa profile"):
            fit_layers(table, graph, grid=GridConfig("full"))

    def test_missing_corner_is_refused(self) -> None:
        graph = residual_graph(8, 8)
        table = synthetic_table(graph, macs_latency)
        spec = fit_layers(table, graph)[1].grid.spec_at(8, 8)
        keep = [(s, measurement(table.lookup(s))) for s in table.specs() if s != spec]
        partial = LatencyTable.from_measurements(keep, device="toy-device", backend="synthetic")
        with pytest.raises(TableError, match="block.conv1.*lacks 1 entry \\(the corners of its channel grid\\).*in_channels=8, out_channels=8"):
            fit_layers(partial, graph)

    def test_missing_inner_point_coarsens_the_grid(self) -> None:
        graph = residual_graph(8, 8)
        table = synthetic_table(graph, macs_latency)
        spec = plan_grid(graph, config=GridConfig("full")).layer("block.conv1").spec_at(4, 5)
        keep = [(s, measurement(table.lookup(s))) for s in table.specs() if s != spec]
        partial = LatencyTable.from_measurements(keep, device="toy-device", backend="synthetic")
        conv1 = fit_layers(partial, graph)[1]
        assert 4 not in conv1.grid.in_points and conv1.grid.out_points == tuple(range(1, 9))

    def test_batch_size_comes_from_the_table(self) -> None:
        graph = residual_graph(8, 8)
        table = synthetic_table(graph, macs_latency)
        other = LatencyTable.from_measurements(
            [(s, measurement(1.0)) for s in plan_grid(graph, batch_size=4, config=GridConfig("full")).specs()],
            device="toy-device", backend="synthetic", batch_size=4,
        )  # fmt: skip
        assert len(fit_layers(table, graph)) == 4
        assert all(fl.grid.base.batch_size == 4 for fl in fit_layers(other, graph))


class TestBlockInterpolation:
    def test_counts_are_padded_to_the_block_then_interpolated(self) -> None:
        from hwdsa.lut.fit import interp_at, interp_weights

        w = interp_weights([1, 8, 16, 32], 1, 32, "ceil:16")
        assert np.allclose(w.sum(axis=1), 1.0)
        assert interp_at([1, 8, 16, 32], 9, "ceil:16") == ((2, 1.0),)  # 9 is priced as 16, not between 8 and 16
        assert interp_at([1, 8, 16, 32], 17, "ceil:16") == ((3, 1.0),)
        assert interp_at([1, 64, 128], 65, "ceil:16") == ((1, 0.75), (2, 0.25))  # 80: linear between 64 and 128
        assert interp_at([1, 2, 3], 3, "ceil:16") == ((2, 1.0),)  # never beyond the last point

    def test_bad_names_are_refused(self) -> None:
        from hwdsa.lut.fit import parse_interpolation

        assert parse_interpolation("ceil:8") == ("align", 8)
        for bad in ("cubic", "ceil:0", "ceil:x", "ceil:"):
            with pytest.raises(TableError, match="'linear', 'ceil' or 'ceil:N'"):
                parse_interpolation(bad)
