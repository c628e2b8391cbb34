"""Resource costs as differentiable functions of the per-group keep ratios, and budgets on them.

FlopsCost and ParamsCost implement the `CostModel` protocol that the latency cost model
(`hwdsa.lut.cost_model.LatencyCost`) implements too, so DSA meets any of them, or several at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from hwdsa._registry import Registry
from hwdsa.errors import ConfigError, KeepRatioError
from hwdsa.graph.structure import ChannelGraph, LayerNode


@runtime_checkable
class CostModel(Protocol):
    """A resource cost of a network as a function of its channel groups' keep ratios.

    `__call__` takes a 1-D tensor with one keep ratio per group (in (0, 1]) and returns a scalar tensor
    that is differentiable in every ratio and non-decreasing in each. `exact` prices integer channel
    counts, and equals a measurement of the physically pruned network.
    """

    name: str
    unit: str
    group_sizes: tuple[int, ...]

    def __call__(self, keep_ratios: Tensor) -> Tensor: ...

    def exact(self, channels: Sequence[int]) -> float: ...

    @property
    def dense(self) -> float: ...


@runtime_checkable
class SpreadAwareCost(CostModel, Protocol):
    """A cost whose value at a keep ratio depends on how far the kept count may stray from α·C.

    A staircase (a latency table measured on a channel lattice) is flat between its steps; its expected
    value over a spread of counts is not. FLOPs and parameters are not staircases and do not implement it.
    """

    def with_spread(self, std: Tensor) -> CostModel:
        """This cost, priced by default at the expected value under kept-count std `std` (channels per group)."""
        ...


def check_keep_ratios(keep_ratios: Tensor, n_groups: int) -> None:
    """Raise `KeepRatioError` unless `keep_ratios` is a 1-D vector of `n_groups` values in (0, 1]."""
    if keep_ratios.dim() != 1 or keep_ratios.numel() != n_groups:
        raise KeepRatioError(
            f"expected one keep ratio per channel group ({n_groups}), got a tensor of shape {tuple(keep_ratios.shape)}"
        )
    if not torch.isfinite(keep_ratios).all():
        raise KeepRatioError("keep ratios must be finite")
    lo, hi = float(keep_ratios.min()), float(keep_ratios.max())
    if lo <= 0.0 or hi > 1.0:
        raise KeepRatioError(f"keep ratios must lie in (0, 1]; got values in [{lo:.4g}, {hi:.4g}]")


def check_channels(channels: Sequence[int], group_sizes: Sequence[int]) -> None:
    """Raise `KeepRatioError` unless `channels` has one count per group, each in 1..group size."""
    if len(channels) != len(group_sizes):
        raise KeepRatioError(f"expected {len(group_sizes)} channel counts (one per group), got {len(channels)}")
    for i, (c, size) in enumerate(zip(channels, group_sizes)):
        if not 1 <= int(c) <= size:
            raise KeepRatioError(f"group {i}: channel count {c} outside 1..{size}")


def dense_reference(cost: CostModel) -> float:
    """What fractions of `cost` are fractions of: the dense network's measured value where the cost
    carries one (`measured_dense` of a calibrated `LatencyCost`), else its modelled `dense`."""
    measured = getattr(cost, "measured_dense", None)
    return float(cost.dense if measured is None else measured)


@dataclass(frozen=True)
class Budget:
    """An upper bound `limit` (in the cost's unit) on one cost model."""

    cost: CostModel
    limit: float

    def __post_init__(self) -> None:
        if not self.limit > 0:
            raise ConfigError(f"a budget must be positive; got {self.limit} {self.cost.unit}")

    @classmethod
    def fraction_of_dense(cls, cost: CostModel, fraction: float) -> Budget:
        """A budget of `fraction` times the dense network's cost (e.g. 0.5 for half the FLOPs).

        A cost that carries a measurement of the dense network (`measured_dense`: a calibrated
        `LatencyCost`) is taken at that measurement: half the latency means half of what was timed.
        """
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"a budget fraction must lie in (0, 1]; got {fraction}")
        return cls(cost, fraction * dense_reference(cost))

    def is_met(self, keep_ratios: Tensor, rtol: float = 1e-6) -> bool:
        """Whether the cost at `keep_ratios` is within the limit (up to a relative tolerance)."""
        return float(self.cost(keep_ratios)) <= self.limit * (1.0 + rtol)


class QuadraticCost:
    """A cost that is exactly ½·αᵀQα + cᵀα + const in the keep ratios α (FLOPs and parameters are).

    Q and c are non-negative, so the cost is non-decreasing in every ratio on the positive orthant, and the
    budget projection can use the exact KKT path (`quadratic_terms`). Built from per-layer bilinear terms
    w·(Σ_i x_i + a0)·(x_j + b0) in the channel counts x = α ⊙ C.
    """

    name = "quadratic"
    unit = ""

    def __init__(self, group_sizes: Sequence[int]) -> None:
        self.group_sizes = tuple(int(c) for c in group_sizes)
        n = len(self.group_sizes)
        self._q = torch.zeros(n, n, dtype=torch.float64)  # over channel counts x
        self._c = torch.zeros(n, dtype=torch.float64)
        self._const = 0.0

    # -- building ------------------------------------------------------------------------------
    def _add_bilinear(self, weight: float, a: Sequence[int | None], a_fixed: float, b: int | None, b_fixed: float) -> None:
        """Add weight·(Σ_{i∈a} x_i + a_fixed)·(x_b + b_fixed) (b None: only b_fixed)."""
        for i in a:
            if i is None:
                continue
            if b is not None:
                if i == b:
                    self._q[i, i] += 2 * weight
                else:
                    self._q[i, b] += weight
                    self._q[b, i] += weight
            self._c[i] += weight * b_fixed
        if b is not None:
            self._c[b] += weight * a_fixed
        self._const += weight * a_fixed * b_fixed

    def _add_linear(self, weight: float, group: int | None, fixed: float) -> None:
        """Add weight·(x_group) or weight·fixed when the channels are not prunable."""
        if group is None:
            self._const += weight * fixed
        else:
            self._c[group] += weight

    def _add_const(self, value: float) -> None:
        self._const += value

    # -- the protocol --------------------------------------------------------------------------
    def quadratic_terms(self) -> tuple[Tensor, Tensor, float]:
        """(Q, c, const) over keep ratios: cost(α) = ½αᵀQα + cᵀα + const, float64."""
        sizes = torch.tensor(self.group_sizes, dtype=torch.float64)
        return self._q * sizes[:, None] * sizes[None, :], self._c * sizes, self._const

    def __call__(self, keep_ratios: Tensor) -> Tensor:
        check_keep_ratios(keep_ratios.detach(), len(self.group_sizes))
        q, c, const = self.quadratic_terms()
        a = keep_ratios.to(torch.float64)
        q, c = q.to(a.device), c.to(a.device)
        value = 0.5 * a @ q @ a + c @ a + const
        return value.to(keep_ratios.dtype)

    def exact(self, channels: Sequence[int]) -> float:
        """The cost at integer channel counts (equals a count on the physically pruned network)."""
        check_channels(channels, self.group_sizes)
        x = torch.tensor([float(c) for c in channels], dtype=torch.float64)
        return float(0.5 * x @ self._q @ x + self._c @ x + self._const)

    @property
    def dense(self) -> float:
        return self.exact(self.group_sizes)


def _segment_terms(layer: LayerNode) -> tuple[list[int | None], float]:
    """Groups feeding a layer's input, and the number of fixed input channels."""
    groups: list[int | None] = [s.group for s in layer.in_segments if s.group is not None]
    fixed = float(sum(s.channels for s in layer.in_segments if s.group is None))
    return groups, fixed


class FlopsCost(QuadraticCost):
    """Multiply-accumulates (MACs, the usual "FLOPs" of pruning papers) of every conv and linear layer.

    A convolution from groups i to group j costs C_i·α_i · C_j·α_j · k² · H_out·W_out / conv_groups; a
    depthwise one is linear in its group; a linear layer counts its input features (× spatial positions
    when fed by a flatten) times its outputs. Bias additions, BatchNorm and activations are not counted,
    matching `hwdsa.counting.count_flops`.
    """

    name = "flops"
    unit = "MACs"

    def __init__(self, graph: ChannelGraph) -> None:
        super().__init__(graph.group_sizes)
        for layer in graph.layers:
            if layer.kind == "conv":
                spatial = float(layer.kernel_elems * layer.out_positions)
                if layer.is_depthwise:
                    self._add_linear(spatial, layer.out_group, float(layer.out_channels))
                    continue
                groups, fixed = _segment_terms(layer)
                weight = spatial / layer.conv_groups
            else:
                groups, fixed = _segment_terms(layer)
                weight = float(layer.features_per_channel)
            self._add_bilinear(weight, groups, fixed, layer.out_group, 0.0 if layer.out_group is not None else float(layer.out_channels))


class ParamsCost(QuadraticCost):
    """Trainable parameters: conv and linear weights and biases, BatchNorm affine parameters, the rest fixed."""

    name = "params"
    unit = "parameters"

    def __init__(self, graph: ChannelGraph) -> None:
        super().__init__(graph.group_sizes)
        for layer in graph.layers:
            out_fixed = 0.0 if layer.out_group is not None else float(layer.out_channels)
            if layer.kind == "conv" and layer.is_depthwise:
                self._add_linear(float(layer.kernel_elems + layer.has_bias), layer.out_group, float(layer.out_channels))
                continue
            groups, fixed = _segment_terms(layer)
            weight = float(layer.kernel_elems) / layer.conv_groups if layer.kind == "conv" else float(layer.features_per_channel)
            self._add_bilinear(weight, groups, fixed, layer.out_group, out_fixed)
            if layer.has_bias:
                self._add_linear(1.0, layer.out_group, float(layer.out_channels))
        for norm in graph.norms:
            if norm.affine:
                self._add_linear(2.0, norm.group, float(norm.channels))
        self._add_const(float(graph.fixed_params))


# ---------------------------------------------------------------------------------------------------------
# the costs a budget may be stated in, by name
# ---------------------------------------------------------------------------------------------------------
CostBuilder = Callable[..., CostModel]
COSTS: Registry[CostBuilder] = Registry("cost")
COSTS.register("flops", "hwdsa.costs:FlopsCost", description="multiply-accumulates of every convolution and linear layer")
COSTS.register("params", "hwdsa.costs:ParamsCost", description="weights and biases of every layer")
COSTS.register(
    "latency", "hwdsa.lut.cost_model:latency_cost_from_table", description="milliseconds on a device, from its lookup table"
)


def build_cost(name: str, graph: ChannelGraph, **options: Any) -> CostModel:
    """The cost model registered as `name` for this graph (`COSTS.names()`); `options` go to its builder
    (a latency cost takes `latency_table`, the table's path)."""
    return COSTS.get(name)(graph, **options)


def uniform_keep_ratio(budget: Budget, n_groups: int, lower: float = 1e-3) -> float:
    """The one keep ratio that, given to every group, meets `budget` exactly (bisection; cost is monotone)."""
    lo, hi = lower, 1.0
    if float(budget.cost(torch.full((n_groups,), hi, dtype=torch.float64))) <= budget.limit:
        return 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float(budget.cost(torch.full((n_groups,), mid, dtype=torch.float64))) <= budget.limit:
            lo = mid
        else:
            hi = mid
    return lo

