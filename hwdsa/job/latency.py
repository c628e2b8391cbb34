"""The latency side of a pruning job: which table prices each budget, checked against this host before any
training (device, calibration, feasibility), the candidates timed here (`--verify-latency`), and the dense
and pruned networks timed for the report.

A latency budget without a table is priced on this host: `latency_backend` (default ONNX Runtime, one thread)
is profiled once into the per-user table cache, keyed by this device's fingerprint, and reused.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from hwdsa._io import write_json_atomic
from hwdsa.costs import Budget, CostModel, build_cost, dense_reference
from hwdsa.distributed import barrier, broadcast_object, is_main_process
from hwdsa.errors import ConfigError
from hwdsa.graph import ChannelGraph
from hwdsa.job.config import PruneJobConfig
from hwdsa.job.report import MeasuredLatency
from hwdsa.lut.table import LatencyTable, TableMeta

if TYPE_CHECKING:
    from hwdsa.profilers.base import TimingProtocol

_log = logging.getLogger("hwdsa.job")

__all__ = ["DEFAULT_LATENCY_BACKEND", "JobLatency", "host_table"]

#: A dense network measuring further than this from its calibration's figure (or than the timing's own
#: spread, if larger) means the machine no longer runs as when the table was calibrated.
STALE_CALIBRATION = 0.08
#: No timing noise excuses more than this: a calibration further off is stale however noisy the timing was.
MAX_SPREAD = 0.25
#: What a latency budget without a table is profiled on: the CPU deployment runtime.
DEFAULT_LATENCY_BACKEND = "onnxruntime"


def host_table(model_name: str, model: nn.Module, input_shape: tuple[int, ...], backend_name: str | None = None) -> str:
    """This host's table for the model, from the per-user cache; profiled and calibrated first if missing.

    A latency budget without a table is priced for this machine: `backend_name` (default ONNX Runtime,
    one thread) is profiled for the layers this model's channel groups can produce, calibrated, and kept
    in the cache (`hwdsa.lut.cache`), keyed by this device's fingerprint; the next job on this host
    finds it and measures nothing.
    """
    import inspect

    from hwdsa.lut.cache import cached_table_path
    from hwdsa.lut.network import latency_table_for
    from hwdsa.profilers.backend import get_backend, get_backend_class
    from hwdsa.profilers.device import backend_fingerprint, fingerprint_id

    name = backend_name or DEFAULT_LATENCY_BACKEND
    takes_threads = "num_threads" in inspect.signature(get_backend_class(name).__init__).parameters
    options: dict[str, Any] = {"num_threads": 1} if takes_threads else {}
    backend = get_backend(name, **options)
    path = cached_table_path(
        fingerprint_id(backend_fingerprint(backend)), backend.name, "fp32", 1, threads=options.get("num_threads"), model=model_name
    )
    if is_main_process():
        if path.is_file():
            _log.info("latency table of this host from the cache: %s", path)
        else:
            _log.info("no latency table for %s on this host yet: profiling %s into %s (once)", model_name, name, path)
        latency_table_for(model, input_shape, backend, path, name=model_name)  # measures only what is missing
    barrier()
    return str(path)


class JobLatency:
    """The tables, checks and timings of one job's latency budgets (the job's budgets of other costs included)."""

    def __init__(self, config: PruneJobConfig, out: Path) -> None:
        self.config = config
        self.out = out
        self.tables: dict[str, str] = {}  # budget name -> the table that prices it (absolute path)
        self.latency_table: str | None = None  # the first of them: the one --verify-latency times with

    def resolve_budgets(self, model: nn.Module, graph: ChannelGraph, input_shape: tuple[int, ...]) -> list[Budget]:
        """Every budget's cost model (profiling this device if asked), each checked for feasibility."""
        from hwdsa.dsa.projection import check_feasible

        cfg = self.config
        latency_specs = [s for s in cfg.budgets if s.cost == "latency"]
        default_table = cfg.latency_table
        if default_table is None and cfg.target_device is None and any(s.table is None for s in latency_specs):
            default_table = self._cached_table(model, input_shape)
        budgets = []
        self.tables = {}
        for spec in cfg.budgets:
            if spec.cost != "latency":
                budgets.append(spec.resolve(build_cost(spec.cost, graph)))
                continue
            table = spec.table or default_table
            meta = None if table is None else LatencyTable.read(table).meta  # read once for the checks below
            if table is not None and meta is not None:
                self._check_table_device(table, meta)
            cost = build_cost("latency", graph, latency_table=table)
            if table is not None and meta is not None:
                self._warn_about_speed(cost, table, meta)
                # this host's cache table is the job's to keep current; a table the user named is refused instead
                cached = spec.table is None and cfg.latency_table is None
                if cfg.target_device is None and self._check_calibration_current(model, graph, cost, table, meta, refit=cached):
                    cost = build_cost("latency", graph, latency_table=table)
            if len(latency_specs) > 1:  # one network for several devices: a budget, and a name, per table
                assert table is not None  # build_cost refused a latency budget without a table
                cost.name = f"latency@{Path(table).stem}"
            self.tables[cost.name] = str(Path(table).resolve()) if table is not None else ""
            budgets.append(spec.resolve(cost))
        self.latency_table = next(iter(self.tables.values()), None)
        for budget in budgets:
            if cfg.fixed_keep_ratios is None:
                check_feasible(budget.cost, budget.limit, cfg.admm.lower_bounds(graph.group_sizes))
            dense = budget.cost.dense
            if budget.limit >= dense:
                unit = f" {budget.cost.unit}" if budget.cost.unit else ""
                _log.warning(
                    "the %s budget (%.6g%s) is at or above the dense network's %s (%.6g%s): the dense network already "
                    "meets it, so no channel needs pruning",
                    budget.cost.name, budget.limit, unit, budget.cost.name, dense, unit,
                )  # fmt: skip
        return budgets

    def _check_table_device(self, table: str, meta: TableMeta) -> None:
        """Refuse a table measured on another machine unless `target_device` names that device on purpose."""
        from hwdsa.errors import BackendUnavailableError, TableError
        from hwdsa.lut.network import backend_for_table

        target = self.config.target_device
        if target is not None:
            if meta.device != target:
                raise ConfigError(f"{table} was measured on {meta.device!r}, but --target-device is {target!r}")
            return
        differences = meta.host_differences()
        if not differences:
            try:
                backend_for_table(meta)
            except (TableError, BackendUnavailableError) as exc:
                differences = [str(exc)]
        if differences:
            raise ConfigError(
                f"{table} was measured on another device ({meta.device!r}, {meta.backend}): "
                + "; ".join(differences)
                + ". A table answers only for the machine that measured it. Profile this one (hwdsa prune ... "
                f"--latency-backend {meta.backend}, or hwdsa profile; `hwdsa info` lists this host and its tables), "
                f"or, to prune for that device on purpose, pass --target-device {meta.device!r}"
            )

    def _cached_table(self, model: nn.Module, input_shape: tuple[int, ...]) -> str:
        return host_table(self.config.model, model, input_shape, self.config.latency_backend)

    def _warn_about_speed(self, cost: CostModel, table: str, meta: TableMeta) -> None:
        """Say so where a choice will cost speed or accuracy on the table's device."""
        from hwdsa.lut.cost_model import LatencyCost

        multiple = meta.channel_multiple
        round_to = self.config.round_to
        if multiple > 1 and round_to is not None and round_to % multiple:
            _log.warning(
                "--round-to %d is off %s's channel lattice (multiples of %d): counts off it run on slower kernels "
                "(about 2x on ONNX Runtime's CPU convolutions); use --round-to %d, or leave it out (rounding then keeps to "
                "the lattice by itself)",
                round_to, table, multiple, multiple,
            )  # fmt: skip
        if isinstance(cost, LatencyCost) and cost.calibration is None:
            _log.warning(
                "%s has no calibration for %s: latency is priced as the plain sum of its layers' times, which misses "
                "whole-network costs (typically 5-40%% off); calibrate it first: hwdsa fit %s --model %s",
                table, self.config.model, table, self.config.model,
            )  # fmt: skip

    def _check_calibration_current(
        self, model: nn.Module, graph: ChannelGraph, cost: CostModel, table: str, meta: TableMeta, *, refit: bool
    ) -> bool:
        """Time the dense network once: a calibration made when this machine ran at another level (another
        load, another CPU under the same name) would set every fraction of dense against a stale figure.

        A stale calibration is refitted in `table` when `refit` (this host's cache table, which the job keeps),
        else refused with the command that refits it. Returns whether it was refitted (on every rank)."""
        if not is_main_process():
            return broadcast_object(False)
        stale = self._stale_calibration(model, graph, cost, table, meta)
        if stale is not None and not refit:
            raise ConfigError(stale + f". Refit it: hwdsa fit {table} --model {self.config.model}")
        if stale is not None:
            self._refit_calibration(model, graph, cost, table, meta, stale)
        return broadcast_object(stale is not None)

    def _refit_calibration(self, model: nn.Module, graph: ChannelGraph, cost: CostModel, table: str, meta: TableMeta, why: str) -> None:
        """Fit the calibration again as it was fitted (its networks' count, the table's protocol), written atomically."""
        from hwdsa.lut.cost_model import LatencyCost
        from hwdsa.lut.network import backend_for_table, calibrate_table

        assert isinstance(cost, LatencyCost) and cost.calibration is not None
        old = cost.calibration
        _log.warning("%s: refitting the calibration of this host's cached table (%d networks)", why, old.n_points)
        refitted, cal = calibrate_table(
            LatencyTable.read(table), model, graph.input_shape, backend_for_table(meta), name=self.config.model,
            networks=max(3, old.n_points), protocol=self._table_protocol(meta), method=old.method,  # type: ignore[arg-type]
        )  # fmt: skip
        refitted.write(table)
        _log.info("calibration refitted: the dense network %.4g ms (was %.4g ms), %s", cal.dense_ms, old.dense_ms, cal.describe())

    @staticmethod
    def _table_protocol(meta: TableMeta) -> TimingProtocol:
        """The table's own timing protocol: the calibration's figure was taken with it, and the statistic must match."""
        from hwdsa.profilers.base import TimingProtocol

        known = {f.name for f in dataclasses.fields(TimingProtocol)}
        return TimingProtocol(**{k: v for k, v in meta.protocol.items() if k in known})

    def _stale_calibration(self, model: nn.Module, graph: ChannelGraph, cost: CostModel, table: str, meta: TableMeta) -> str | None:
        """Why the table's calibration no longer describes this machine, or None when it does."""
        from hwdsa.lut.cost_model import LatencyCost
        from hwdsa.lut.network import backend_for_table, measure_rounds
        from hwdsa.profilers.base import Measurement, quietest

        if not isinstance(cost, LatencyCost) or cost.measured_dense is None:
            return None
        backend = backend_for_table(meta)
        protocol = self._table_protocol(meta)
        then = cost.measured_dense
        timings: list[Measurement] = []
        for _ in range(2):  # a busy moment is not a stale calibration: a second look before refusing
            timings += measure_rounds(model, graph, [list(graph.group_sizes)], backend, protocol)[0]
            now = quietest(timings)
            spread = min(MAX_SPREAD, max(STALE_CALIBRATION, (now.q3_ms - now.q1_ms) / now.median_ms))
            if abs(now.median_ms / then - 1.0) <= spread:
                break
        if abs(now.median_ms / then - 1.0) > spread:
            return (
                f"the dense network measures {now.median_ms:.4g} ms here now, but {table}'s calibration recorded "
                f"{then:.4g} ms ({now.median_ms / then - 1:+.0%}, more than the timing's spread {spread:.0%}): this machine "
                "no longer runs as it did when the table was calibrated"
            )
        _log.info("calibration current: the dense network measures %.4g ms (calibrated %.4g ms)", now.median_ms, then)
        return None

    def measure(
        self, model: nn.Module, graph: ChannelGraph, channels: list[int], budgets: list[Budget], timings: dict[str, float]
    ) -> tuple[MeasuredLatency | None, str | None]:
        """Time the dense and the pruned network together on the latency budget's device (or `measure_backend`).

        Returns the measurement, or None and why not (no backend asked for, the budget's table is of
        another device, the backend cannot run here).
        """
        from hwdsa.errors import BackendUnavailableError, TableError
        from hwdsa.lut.network import backend_for_table, measure_rounds
        from hwdsa.profilers.backend import get_backend
        from hwdsa.profilers.base import paired_fraction, quietest

        cfg = self.config
        latency = next((b for b in budgets if b.cost.name in self.tables), None)
        if not is_main_process():
            return None, "timed on the main process only"
        try:
            if latency is not None:
                backend = backend_for_table(LatencyTable.read(self.tables[latency.cost.name]).meta)
            elif cfg.measure_backend is not None:
                backend = get_backend(cfg.measure_backend, num_threads=1)
            else:
                return None, "not timed (measure_backend is None)"
        except (TableError, BackendUnavailableError) as exc:
            return None, f"not timed here: {exc}"
        t0 = time.perf_counter()
        dense_channels = list(graph.group_sizes)
        rounds = measure_rounds(model, graph, [dense_channels, channels], backend, rounds=cfg.measure_rounds)
        timings["measure_latency_s"] = time.perf_counter() - t0
        dense, pruned = (quietest(r) for r in rounds)
        # the pruned network as a fraction of the dense one timed just before it in each round (the machine's
        # drift cancels), expressed against the dense network's quietest round
        pruned_ms = paired_fraction(rounds[0], rounds[1]) * dense.median_ms
        predicted: dict[str, float | None] = {"predicted_dense_ms": None, "predicted_pruned_ms": None, "budget_ms": None}
        requested = None
        if latency is not None:
            spec = cfg.budgets[budgets.index(latency)]
            requested = latency.limit / dense_reference(latency.cost)
            predicted = {
                "predicted_dense_ms": latency.cost.exact(dense_channels),
                "predicted_pruned_ms": latency.cost.exact(channels),
                # a fraction of the dense latency is held against the dense network as timed now
                "budget_ms": requested * dense.median_ms if spec.fraction is not None else latency.limit,
            }
        measured = MeasuredLatency(
            backend=backend.name,
            device=backend.device_description(),
            dense_ms=dense.median_ms,
            dense_iqr_ms=dense.q3_ms - dense.q1_ms,
            pruned_ms=pruned_ms,
            pruned_iqr_ms=pruned.q3_ms - pruned.q1_ms,
            rounds=cfg.measure_rounds,
            requested_fraction=requested,
            **predicted,
        )
        return measured, None

    def verify(
        self, model: nn.Module, graph: ChannelGraph, ratios: list[float], budget: Budget, table_path: str | None,
        timings: dict[str, Any],
    ) -> list[int]:  # fmt: skip
        """`hwdsa.lut.verify.meet_measured_budget` on the main process; every rank gets its counts."""
        from hwdsa.lut.network import backend_for_table
        from hwdsa.lut.verify import meet_measured_budget

        channels: list[int] = []
        if is_main_process():
            assert table_path is not None  # a latency budget always has its table
            backend = backend_for_table(LatencyTable.read(table_path).meta)
            spec = self.config.budgets[0]
            t0 = time.perf_counter()
            check = meet_measured_budget(
                model, graph, ratios, budget, backend, fraction=spec.fraction, multiple=self.config.round_to,
                margin=self.config.verify_margin,
            )  # fmt: skip
            timings["verify_latency_s"] = time.perf_counter() - t0
            write_json_atomic(self.out / "latency_check.json", check.to_json())
            channels = list(check.channels)
        return broadcast_object(channels)
