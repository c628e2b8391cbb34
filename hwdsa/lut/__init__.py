"""Latency lookup tables and the cost model built on them: table → grid → fit → LatencyCost → rounding.

`hwdsa.lut.network` ties them to whole models: profile a model's grid, calibrate against pruned copies;
`hwdsa.lut.verify` times a pruned network on the device and corrects its rounding to the budget.

Names are imported lazily, so reading or merging a table (pandas) does not import torch or scikit-learn.
"""

from __future__ import annotations

from hwdsa._lazy import attach

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hwdsa.lut.calibrate import Calibration as Calibration
    from hwdsa.lut.calibrate import attach_calibration as attach_calibration
    from hwdsa.lut.calibrate import calibrations as calibrations
    from hwdsa.lut.calibrate import fit_calibration as fit_calibration
    from hwdsa.lut.cost_model import LatencyCost as LatencyCost
    from hwdsa.lut.grid import GridConfig as GridConfig
    from hwdsa.lut.grid import GridPlan as GridPlan
    from hwdsa.lut.grid import grid_specs as grid_specs
    from hwdsa.lut.grid import plan_grid as plan_grid
    from hwdsa.lut.network import calibrate_table as calibrate_table
    from hwdsa.lut.network import latency_table_for as latency_table_for
    from hwdsa.lut.network import profile_network as profile_network
    from hwdsa.lut.rounding import round_for_budgets as round_for_budgets
    from hwdsa.lut.rounding import round_to_latency_optimal as round_to_latency_optimal
    from hwdsa.lut.table import LatencyTable as LatencyTable
    from hwdsa.lut.table import TableMeta as TableMeta
    from hwdsa.lut.table import load_packaged_table as load_packaged_table
    from hwdsa.lut.table import packaged_tables as packaged_tables
    from hwdsa.lut.verify import MeasuredBudget as MeasuredBudget
    from hwdsa.lut.verify import meet_measured_budget as meet_measured_budget

_LAZY: dict[str, str] = {
    "LatencyTable": "hwdsa.lut.table",
    "TableMeta": "hwdsa.lut.table",
    "packaged_tables": "hwdsa.lut.table",
    "load_packaged_table": "hwdsa.lut.table",
    "GridConfig": "hwdsa.lut.grid",
    "GridPlan": "hwdsa.lut.grid",
    "plan_grid": "hwdsa.lut.grid",
    "grid_specs": "hwdsa.lut.grid",
    "LatencyCost": "hwdsa.lut.cost_model",
    "Calibration": "hwdsa.lut.calibrate",
    "fit_calibration": "hwdsa.lut.calibrate",
    "attach_calibration": "hwdsa.lut.calibrate",
    "calibrations": "hwdsa.lut.calibrate",
    "round_to_latency_optimal": "hwdsa.lut.rounding",
    "round_for_budgets": "hwdsa.lut.rounding",
    "profile_network": "hwdsa.lut.network",
    "calibrate_table": "hwdsa.lut.network",
    "latency_table_for": "hwdsa.lut.network",
    "MeasuredBudget": "hwdsa.lut.verify",
    "meet_measured_budget": "hwdsa.lut.verify",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = attach(__name__, _LAZY)
