"""What a pruning job is asked to do: its budgets, phases' training settings and the latency options."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hwdsa.costs import Budget, CostModel
from hwdsa.dsa.allocator import AdmmConfig
from hwdsa.dsa.process import Beta2Schedule
from hwdsa.errors import ConfigError
from hwdsa.training import TrainConfig

__all__ = ["BudgetSpec", "PruneJobConfig"]


#: (section, setting, value): settings added after results were keyed on this configuration, and the value at
#: which each changes nothing.
_LATER_NEUTRAL: tuple[tuple[str, str, Any], ...] = (
    ("admm", "min_channels", 1),
    ("admm", "settle_fraction", 0.0),
    ("admm", "settle_restart", False),
)


@dataclass(frozen=True)
class BudgetSpec:
    """A budget as the user states it: a fraction of the dense cost, or an absolute value in the cost's unit.

    A latency budget may name its own `table` (one network for several devices: one budget per table);
    without one it is priced with the job's `latency_table` (or the table `latency_backend` profiles).
    """

    cost: str
    fraction: float | None = None
    absolute: float | None = None
    table: str | None = None

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.absolute is None):
            raise ConfigError(f"budget on {self.cost}: give exactly one of a fraction or an absolute value")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ConfigError(f"budget on {self.cost}: a fraction must lie in (0, 1]; got {self.fraction}")
        if self.absolute is not None and not self.absolute > 0:
            raise ConfigError(f"budget on {self.cost}: must be positive; got {self.absolute}")
        if self.table is not None and self.cost != "latency":
            raise ConfigError(f"budget on {self.cost}: only a latency budget is priced with a table")

    def resolve(self, cost: CostModel) -> Budget:
        if self.fraction is not None:
            return Budget.fraction_of_dense(cost, self.fraction)
        assert self.absolute is not None
        return Budget(cost, self.absolute)


@dataclass(frozen=True)
class PruneJobConfig:
    """Everything a pruning job needs; written as `config.json` next to its outputs."""

    model: str = "small_cnn"
    dataset: str = "mnist"
    data_root: str | None = None
    budgets: tuple[BudgetSpec, ...] = (BudgetSpec("latency", fraction=0.5),)
    """Default: half the dense network's latency, measured on this machine (ONNX Runtime, one thread)."""
    from_scratch: bool = False
    weights: str | None = None
    pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, lr=0.1))
    search: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=4, lr=0.02))
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=6, lr=0.02))
    admm: AdmmConfig = field(default_factory=AdmmConfig)
    batch_size: int = 128
    subset_per_class: int | None = None
    holdout_fraction: float = 0.1
    round_to: int | None = None
    seed: int = 0
    device: str = "auto"
    latency_table: str | None = None
    latency_backend: str | None = None
    """The backend a latency budget without a table is priced on (default ONNX Runtime, one thread): profiled on
    this host once into the per-user table cache (`hwdsa.lut.cache`), reused by later jobs."""
    fixed_keep_ratios: tuple[float, ...] | None = None
    """Skip the search and prune every group at these ratios (the uniform baseline uses this)."""
    verify_latency: bool | None = None
    """Time candidate roundings on the table's backend (this machine must be its device) and keep the largest
    whose measured latency meets the latency budget (`hwdsa.lut.verify`). None (the default): on exactly when
    the one budget is a latency budget on this machine (no `target_device`); see `verifies_latency`."""
    verify_margin: float = 0.015
    """The share of the budget `verify_latency` keeps free for the noise of the timing itself
    (`hwdsa.lut.verify.DEFAULT_MARGIN`)."""
    target_device: str | None = None
    """Prune for a device that is not this machine (an edge board profiled with `python -m hwdsa.profilers`):
    its name as its tables record it. Without it, a latency table measured elsewhere is refused."""
    measure_backend: str | None = "onnxruntime"
    """Time the dense and the pruned network on this backend (one thread) for the report when no latency
    budget's table names the device to time on; None skips the timing."""
    measure_rounds: int = 7
    """Interleaved rounds of that timing (each network keeps its quietest)."""

    def __post_init__(self) -> None:
        if not self.budgets and self.fixed_keep_ratios is None:
            raise ConfigError("give at least one budget, e.g. --flops 0.5")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1; got {self.batch_size}")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError(f"--round-to must be >= 1; got {self.round_to}")
        if self.verify_latency and not self._one_latency_budget:
            raise ConfigError("--verify-latency checks a latency budget: give exactly one budget, --latency")
        if self.verify_latency and self.target_device is not None:
            raise ConfigError(
                f"--verify-latency times candidates on this machine, but --target-device names another ({self.target_device}): "
                "drop one of them (verify on the target itself by running hwdsa there)"
            )
        if not 0 <= self.verify_margin < 0.5:
            raise ConfigError(f"--verify-margin is a share of the budget in [0, 0.5), e.g. 0.015; got {self.verify_margin}")
        if self.admm.min_channels > 1 and (self.round_to is None or self.round_to < self.admm.min_channels):
            raise ConfigError(
                f"the search keeps at least {self.admm.min_channels} channels per group (--min-channels), but the rounding "
                f"after it may go lower ({'its default lattice allows 1, 2, 4' if self.round_to is None else f'--round-to {self.round_to}'}): "
                f"add --round-to {self.admm.min_channels} so that the network keeps the floor the search assumed"
            )

    @property
    def _one_latency_budget(self) -> bool:
        return [b.cost for b in self.budgets] == ["latency"]

    @property
    def verifies_latency(self) -> bool:
        """Whether the job times its candidate roundings here (`verify_latency`, or its default)."""
        if self.verify_latency is not None:
            return self.verify_latency
        return self._one_latency_budget and self.target_device is None and self.fixed_keep_ratios is None

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON; a setting added later is left out at the value that reproduces the behaviour
        before it existed (`_LATER_NEUTRAL`), so that results recorded before it keep their keys."""
        d = asdict(self)
        d["admm"]["beta2"] = asdict(self.admm.beta2)
        for section, key, neutral in _LATER_NEUTRAL:
            if d[section].get(key) == neutral:
                del d[section][key]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruneJobConfig:
        """Inverse of `to_dict` (a JSON config file); unknown keys are refused."""
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; valid keys: {sorted(known)}")
        d = dict(d)
        for key in ("pretrain", "search", "finetune"):
            if key in d and isinstance(d[key], dict):
                d[key] = TrainConfig(**d[key])
        if isinstance(d.get("admm"), dict):
            admm = dict(d["admm"])
            if isinstance(admm.get("beta2"), dict):
                admm["beta2"] = Beta2Schedule(**admm["beta2"])
            d["admm"] = AdmmConfig(**admm)
        if "budgets" in d:
            d["budgets"] = tuple(b if isinstance(b, BudgetSpec) else BudgetSpec(**b) for b in d["budgets"])
        if d.get("fixed_keep_ratios") is not None:
            d["fixed_keep_ratios"] = tuple(d["fixed_keep_ratios"])
        return cls(**d)
