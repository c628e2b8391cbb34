"""Base importance of every channel of every channel group, read from the weights (design note, section 3).

A group's *members* are its mask sites (`ChannelGroup.mask_sites`): the BatchNorm after each producer (or
the producer itself when it has none) and every other BatchNorm of the group. Each member scores the
group's channels with an importance *criterion*; the members' scores are then combined into one vector
per group by an *aggregation* (`aggregate_importance`: "first", the authors' choice, or
"sum_normalized"). Both are registries, so a new criterion or aggregation is one decorated function.

Everything returned is detached: importance steers the keep probabilities but takes no gradient.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from hwdsa._registry import Registry
from hwdsa.errors import ConfigError, TracingError
from hwdsa.graph.structure import ChannelGraph

_log = logging.getLogger(__name__)

__all__ = [
    "IMPORTANCE_AGGREGATIONS",
    "IMPORTANCE_CRITERIA",
    "aggregate_importance",
    "group_importance",
    "list_importance_criteria",
    "list_importance_modes",
    "member_importance",
]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

Criterion = Callable[[nn.Module, nn.Module | None], Tensor]
"""Scores a group's channels as seen by one member: (mask-site module, the layer producing its input or
None) → a [C] non-negative tensor."""

IMPORTANCE_CRITERIA: Registry[Criterion] = Registry("importance criterion")


# ---------------------------------------------------------------------------------------------------------
# importance aggregation over a group's members
# ---------------------------------------------------------------------------------------------------------
Aggregation = Callable[[Sequence[Tensor]], Tensor]

IMPORTANCE_AGGREGATIONS: Registry[Aggregation] = Registry("importance aggregation")


@IMPORTANCE_AGGREGATIONS.register("first", description="the first member's importance (the authors' choice)")
def _first(per_member: Sequence[Tensor]) -> Tensor:
    return per_member[0]


@IMPORTANCE_AGGREGATIONS.register(
    "sum_normalized", description="sum over members of each member's importance divided by its own mean"
)
def _sum_normalized(per_member: Sequence[Tensor]) -> Tensor:
    # Dividing by the mean (not the max) makes every member count equally, and one outlier channel
    # does not shrink the rest of its member's scores.
    stacked = torch.stack(list(per_member))
    scale = stacked.mean(dim=1, keepdim=True).clamp_min(torch.finfo(stacked.dtype).tiny)
    return (stacked / scale).sum(dim=0)


@IMPORTANCE_AGGREGATIONS.register("mean", description="plain mean over members of the raw importances")
def _mean(per_member: Sequence[Tensor]) -> Tensor:
    return torch.stack(list(per_member)).mean(dim=0)


def aggregate_importance(per_member: Sequence[Tensor], mode: str = "first") -> Tensor:
    """Combine the importances of a channel group's members (e.g. each member BatchNorm's |γ|) into one.

    Modes (`IMPORTANCE_AGGREGATIONS.names()`): "first" (the authors'), "sum_normalized" (Σ_m b_m / mean(b_m),
    scale-free across members), "mean" (raw mean). The result is detached.

    Args:
        per_member: one non-negative importance vector [C] per member, all of the group's size C.
        mode: a registered aggregation name.

    Returns:
        The group's importance [C].

    Example:
        >>> aggregate_importance([torch.tensor([1.0, 3.0]), torch.tensor([10.0, 10.0])], "sum_normalized").tolist()
        [1.5, 2.5]
    """
    fn = IMPORTANCE_AGGREGATIONS.get(mode)
    members = list(per_member)
    if not members:
        raise ConfigError("a channel group needs at least one member to take importance from; got none")
    shape = members[0].shape
    for i, m in enumerate(members):
        if m.dim() != 1 or m.shape != shape or m.numel() == 0:
            raise ConfigError(
                f"every member's importance must be a non-empty vector with the group's {tuple(shape)} shape; "
                f"member {i} has shape {tuple(m.shape)}"
            )
        if m.device != members[0].device:
            raise ConfigError(f"member {i}'s importance is on {m.device}, member 0's on {members[0].device}")
    return fn([m.detach() for m in members])


def _filter_l1(module: nn.Module) -> Tensor:
    weight = getattr(module, "weight", None)
    if not isinstance(module, (*_CONV, nn.Linear)) or not isinstance(weight, Tensor):
        raise TracingError(
            f"cannot score channels by the filters of a {type(module).__name__}; expected a convolution or linear layer"
        )
    # Conv weights are [C_out, C_in/groups, k...] and linear weights [out, in]: one filter per row.
    return weight.detach().abs().flatten(1).sum(dim=1)


def _bn_scale(norm: nn.Module) -> Tensor:
    assert isinstance(norm, _NORM)
    if norm.weight is None:
        # Without affine parameters every channel leaves the BatchNorm at the same scale: all score 1
        # (ties are then broken by channel index wherever channels are ranked).
        device = norm.running_mean.device if norm.running_mean is not None else None
        return torch.ones(norm.num_features, device=device)
    return norm.weight.detach().abs()


@IMPORTANCE_CRITERIA.register(
    "bn_scale", description="|γ| of a BatchNorm member; the L1 norm of the output filters of a layer without one"
)
def bn_scale(site: nn.Module, producer: nn.Module | None) -> Tensor:
    """The paper's criterion: |γ| where the member is a BatchNorm, else the member layer's filter L1 norms."""
    if isinstance(site, _NORM):
        return _bn_scale(site)
    return _filter_l1(site)


@IMPORTANCE_CRITERIA.register(
    "l1_filter", description="L1 norm of the producing layer's output filters (|γ| for a BatchNorm with no producer)"
)
def l1_filter(site: nn.Module, producer: nn.Module | None) -> Tensor:
    """Filter L1 norms (Li et al., ICLR 2017) of the layer that produces the member's channels.

    A group's extra BatchNorms (those not right after one of its producers) have no filters of their own
    and score by |γ|.
    """
    if producer is not None:
        return _filter_l1(producer)
    if isinstance(site, _NORM):
        return _bn_scale(site)
    return _filter_l1(site)


def list_importance_criteria() -> list[str]:
    """Names accepted as `criterion=` by `member_importance` and `group_importance`."""
    return IMPORTANCE_CRITERIA.names()


def list_importance_modes() -> list[str]:
    """Names accepted as `mode=` by `group_importance` (the aggregations over a group's members)."""
    return IMPORTANCE_AGGREGATIONS.names()


def member_importance(model: nn.Module, graph: ChannelGraph, *, criterion: str = "bn_scale") -> list[list[Tensor]]:
    """Importance of every channel as seen by each member of each group.

    Args:
        model: the network `graph` was traced from (a DistributedDataParallel wrapper is unwrapped).
        graph: its channel structure.
        criterion: a name from `list_importance_criteria()`; "bn_scale" is the paper's.

    Returns:
        Per group (in group order), per member (ordered as `group.mask_sites`), a detached float [C] tensor
        on the member's device.

    Raises:
        TracingError: a mask site is missing from `model` or scores the wrong number of channels (the graph
            was traced from another model).
        ConfigError: unknown criterion (the message lists the valid ones).
    """
    score = IMPORTANCE_CRITERIA.get(criterion)
    inner = _unwrap(model)
    out: list[list[Tensor]] = []
    for group in graph.groups:
        # The tracer lists one site per producer first (its BatchNorm, or the producer itself), in the
        # producers' order, then the group's other BatchNorms.
        producers: list[str | None] = list(group.producers[: len(group.mask_sites)])
        producers += [None] * (len(group.mask_sites) - len(producers))
        members: list[Tensor] = []
        for site, producer in zip(group.mask_sites, producers):
            module = _submodule(inner, site)
            value = score(module, _submodule(inner, producer) if producer is not None else None).detach()
            if value.dim() != 1 or value.numel() != group.channels:
                raise TracingError(
                    f"group {group.index}: mask site {site!r} scores {tuple(value.shape)} channels but the group has "
                    f"{group.channels}; was the graph traced from this model (and before any pruning)?"
                )
            members.append(value if value.is_floating_point() else value.float())
        out.append(members)
    return out


def group_importance(
    model: nn.Module, graph: ChannelGraph, mode: str = "first", *, criterion: str = "bn_scale"
) -> list[Tensor]:
    """One importance vector per channel group: the members' scores combined by `mode`.

    Args:
        model: the network `graph` was traced from.
        graph: its channel structure.
        mode: a name from `list_importance_modes()`: "first" (the group's first member, the authors'
            choice) or "sum_normalized" (each member divided by its mean, then summed).
        criterion: how each member scores channels (`list_importance_criteria()`).

    Returns:
        A detached [C_g] tensor per group, in group order.

    Example:
        >>> from hwdsa.graph.tracer import trace_channel_graph
        >>> from hwdsa.models import create_model
        >>> net = create_model("resnet20")
        >>> graph = trace_channel_graph(net, (3, 32, 32))
        >>> [tuple(t.shape) for t in group_importance(net, graph, "sum_normalized")][:4]
        [(16,), (16,), (16,), (16,)]
    """
    IMPORTANCE_AGGREGATIONS.get(mode)  # fail on a bad mode before any work, with the list of valid ones
    return [aggregate_importance(members, mode) for members in member_importance(model, graph, criterion=criterion)]


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a (Distributed)DataParallel wrapper, whose submodule names the graph uses."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        inner: nn.Module = model.module
        return inner
    return model


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise TracingError(
            f"the model has no submodule {name!r} named by the channel graph; trace the graph from this model"
        ) from None
