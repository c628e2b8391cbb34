"""Physical pruning: a `PruningPlan` (the kept channels of every group) and the surgery that applies it.

The flow (design note, section 6): the search ends with channel counts or masks → `plan_from_channels`,
`plan_from_keep_ratios` or `plan_from_masks` turn them into a `PruningPlan` (model-independent, JSON) →
`prune_` slices every convolution, BatchNorm and linear layer of the model to the kept channels, so the
smaller dense network computes exactly what the masked network computed → `save_pruned` stores the
weights with the plan and a SHA-256 digest of the weights, and `load_pruned` checks the file's integrity,
rebuilds the architecture from the model registry, applies the plan's shapes and loads the weights, with
no pickled code (`torch.load(weights_only=True)`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import operator
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from hwdsa._io import atomic_path, write_text_atomic
from hwdsa.costs import check_channels, check_keep_ratios
from hwdsa.errors import CheckpointError, ConfigError, HwdsaError, KeepRatioError, TracingError
from hwdsa.graph.structure import ChannelGraph, LayerNode
from hwdsa.masking import has_mask_hooks

_log = logging.getLogger(__name__)

__all__ = [
    "PruningPlan",
    "Rounding",
    "load_pruned",
    "plan_from_channels",
    "plan_from_keep_ratios",
    "plan_from_masks",
    "prune",
    "prune_",
    "round_channels",
    "save_pruned",
]

_PLAN_KIND = "hwdsa.PruningPlan"
_FILE_KIND = "hwdsa.pruned_model"
# 2: the payload records "weights_sha256", a digest of the state dict, that `load_pruned` verifies.
_FILE_VERSION = 2
# Older versions still read, with a warning: their weights carry no digest to verify.
_UNDIGESTED_VERSIONS = (1,)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_JSON_SCALARS = (str, int, float, bool, type(None))

Rounding = Literal["nearest", "up", "down"]
_ROUNDINGS: tuple[str, ...] = ("nearest", "up", "down")
# Slack on float round-off: 0.3 · 10 is 3.0000000000000004 and must not round up to 4.
_EPS = 1e-9


# ---------------------------------------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PruningPlan:
    """Which channels of every channel group survive pruning: a model-independent, JSON-serialisable record.

    Attributes:
        group_sizes: channel count of every group of the dense network (checked against a traced graph).
        kept: per group, the kept channel indices, sorted ascending, at least one.
        model_name: the model registry name of the dense architecture, if it came from the zoo.
        input_shape: (C, H, W) the dense network was traced with.
        num_classes: the classifier's output size, to rebuild the dense architecture.
        model_kwargs: further keyword arguments of `create_model` (JSON scalars only, e.g. `in_channels`).

    Example:
        >>> plan = PruningPlan(group_sizes=(4, 2), kept=((0, 3), (1,)))
        >>> plan.channels, plan.keep_ratios
        ((2, 1), (0.5, 0.5))
        >>> PruningPlan.from_json(plan.to_json()) == plan
        True
    """

    group_sizes: tuple[int, ...]
    kept: tuple[tuple[int, ...], ...]
    model_name: str | None = None
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)

    schema_version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        sizes = _int_tuple(self.group_sizes, "group_sizes")
        if not sizes or any(c < 1 for c in sizes):
            raise ConfigError(f"a pruning plan needs at least one group and positive group sizes; got {list(sizes)}")
        if isinstance(self.kept, (str, bytes)) or not isinstance(self.kept, Sequence):
            raise ConfigError(f"kept must be one list of channel indices per group; got {type(self.kept).__name__}")
        if len(self.kept) != len(sizes):
            raise ConfigError(f"a pruning plan needs one list of kept channels per group ({len(sizes)}); got {len(self.kept)}")
        kept = tuple(_int_tuple(k, f"kept[{g}]") for g, k in enumerate(self.kept))
        for g, (k, size) in enumerate(zip(kept, sizes)):
            if not k:
                raise KeepRatioError(f"group {g} keeps no channel; every group keeps at least one (of {size})")
            if any(b <= a for a, b in zip(k, k[1:])):
                raise ConfigError(f"group {g}: kept channels must be sorted ascending without repeats; got {list(k)[:16]}")
            if k[0] < 0 or k[-1] >= size:
                raise ConfigError(f"group {g}: kept channel indices must lie in 0..{size - 1}; got {k[0]}..{k[-1]}")
        object.__setattr__(self, "group_sizes", sizes)
        object.__setattr__(self, "kept", kept)
        if self.model_name is not None and not isinstance(self.model_name, str):
            raise ConfigError(f"model_name must be a string or None; got {self.model_name!r}")
        if self.input_shape is not None:
            shape = _int_tuple(self.input_shape, "input_shape")
            if not shape or any(s < 1 for s in shape):
                raise ConfigError(f"input_shape must be positive sizes such as (3, 32, 32); got {list(shape)}")
            object.__setattr__(self, "input_shape", shape)
        if self.num_classes is not None and (
            isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1
        ):
            raise ConfigError(f"num_classes must be a positive integer or None; got {self.num_classes!r}")
        if not isinstance(self.model_kwargs, Mapping):
            raise ConfigError(f"model_kwargs must be a mapping; got {type(self.model_kwargs).__name__}")
        kwargs = dict(self.model_kwargs)
        for key, value in kwargs.items():
            if not isinstance(key, str) or not _is_json_value(value):
                raise ConfigError(
                    f"model_kwargs must map names to JSON values (numbers, strings, lists) so the plan stays "
                    f"model-independent; got {key!r}: {type(value).__name__}"
                )
        object.__setattr__(self, "model_kwargs", kwargs)  # a copy: later changes to the caller's dict do not leak in

    # -- derived -------------------------------------------------------------------------------
    @property
    def channels(self) -> tuple[int, ...]:
        """Kept channel count of every group."""
        return tuple(len(k) for k in self.kept)

    @property
    def keep_ratios(self) -> tuple[float, ...]:
        """Kept fraction of every group."""
        return tuple(len(k) / c for k, c in zip(self.kept, self.group_sizes))

    def to_masks(self, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> list[Tensor]:
        """0/1 masks, one [C_g] vector per group: the masked dense network equals the pruned one."""
        masks = []
        for k, size in zip(self.kept, self.group_sizes):
            m = torch.zeros(size, dtype=dtype, device=device)
            m[list(k)] = 1
            masks.append(m)
        return masks

    def check_graph(self, graph: ChannelGraph) -> None:
        """Raise `ConfigError` unless the plan's groups are the groups of `graph` (same count and sizes)."""
        sizes = graph.group_sizes
        if sizes == self.group_sizes:
            return
        where = (
            f"{len(self.group_sizes)} groups vs {len(sizes)}"
            if len(sizes) != len(self.group_sizes)
            else "group {} has {} channels in the plan, {} in the model".format(
                *next((g, a, b) for g, (a, b) in enumerate(zip(self.group_sizes, sizes)) if a != b)
            )
        )
        made_for = f" (made for {self.model_name!r})" if self.model_name else ""
        raise ConfigError(
            f"the pruning plan{made_for} does not fit this model's channel groups: {where}. Use the plan with "
            "the dense architecture it was made from, traced before pruning."
        )

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with `kind` and `schema_version`."""
        return {
            "kind": _PLAN_KIND,
            "schema_version": self.schema_version,
            "model_name": self.model_name,
            "input_shape": list(self.input_shape) if self.input_shape is not None else None,
            "num_classes": self.num_classes,
            "model_kwargs": dict(self.model_kwargs),
            "group_sizes": list(self.group_sizes),
            "kept": [list(k) for k in self.kept],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningPlan:
        """Validate and build a plan from `to_dict()` output; unknown keys and versions are refused."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a pruning plan must be a JSON object; got {type(data).__name__}")
        if data.get("kind") != _PLAN_KIND:
            raise ConfigError(f"not a pruning plan: expected kind {_PLAN_KIND!r}, got {data.get('kind')!r}")
        version = data.get("schema_version")
        if version != cls.schema_version:
            raise ConfigError(
                f"pruning plan schema_version {version!r} is not supported (this hwdsa reads version "
                f"{cls.schema_version}); a newer hwdsa may have written it"
            )
        known = {"kind", "schema_version", "model_name", "input_shape", "num_classes", "model_kwargs", "group_sizes", "kept"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"pruning plan has unknown fields {unknown}; valid fields: {sorted(known)}")
        missing = sorted({"group_sizes", "kept"} - set(data))
        if missing:
            raise ConfigError(f"pruning plan lacks the required fields {missing}")
        return cls(
            group_sizes=data["group_sizes"],
            kept=data["kept"],
            model_name=data.get("model_name"),
            input_shape=data.get("input_shape"),
            num_classes=data.get("num_classes"),
            model_kwargs=data.get("model_kwargs") or {},
        )

    def to_json(self) -> str:
        """The plan as a JSON document (one line per group's kept channels)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> PruningPlan:
        """Parse and validate a plan written by `to_json` (or `save`)."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
            raise ConfigError(f"a pruning plan must be JSON: {exc}") from exc
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the plan as JSON to `path` atomically."""
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PruningPlan:
        """Read a plan written by `save`."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"no pruning plan at {path}") from None
        return cls.from_json(text)


def _int_tuple(values: Any, what: str) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ConfigError(f"{what} must be a list of integers; got {type(values).__name__}")
    out = []
    for v in values:
        try:
            if isinstance(v, bool):
                raise TypeError
            out.append(operator.index(v))  # int, numpy and 0-d torch integers; never floats
        except TypeError:
            raise ConfigError(f"{what} must hold integers only; got {v!r}") from None
    return tuple(out)


def _is_json_value(value: Any) -> bool:
    if isinstance(value, _JSON_SCALARS):
        return not isinstance(value, float) or math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_is_json_value(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_json_value(v) for k, v in value.items())
    return False


# ---------------------------------------------------------------------------------------------------------
# making plans
# ---------------------------------------------------------------------------------------------------------
def round_channels(
    targets: Sequence[float],
    group_sizes: Sequence[int],
    *,
    multiple: int | None = None,
    mode: Rounding = "nearest",
) -> list[int]:
    """Round real channel counts (e.g. α·C) to whole channels, or to multiples of `multiple`.

    Rules, per group of size C with step s = `multiple` (1 when None):
      - "nearest": the nearest multiple of s, halves rounded up (2.5 → 3 with s = 1; 12 → 16 with s = 8;
        note `round()` and `torch.round` send halves to the even neighbour instead);
        "up": the next multiple at or above; "down": the multiple at or below, so no group gets more
        channels than asked, except through the minimum below;
      - at least min(s, C) channels: one channel, or one whole multiple;
      - at most C: a count above C becomes C, the whole group, even when C is not a multiple of s (a group
        smaller than s stays whole), the same bounds as `hwdsa.dsa.search.channels_within_budgets`.

    Example:
        >>> round_channels([12.0, 3.2, 40.0], [64, 64, 40], multiple=8)
        [16, 8, 40]
        >>> round_channels([12.0, 3.2, 40.0], [64, 64, 40], multiple=8, mode="down")
        [8, 8, 40]
    """
    if len(targets) != len(group_sizes):
        raise KeepRatioError(f"expected {len(group_sizes)} channel counts (one per group), got {len(targets)}")
    if mode not in _ROUNDINGS:
        raise ConfigError(f"unknown rounding mode {mode!r}; valid modes: {', '.join(_ROUNDINGS)}")
    step = _check_multiple(multiple)
    out = []
    for g, (x, size) in enumerate(zip(targets, group_sizes)):
        x = float(x)
        if not math.isfinite(x) or x <= 0:
            raise KeepRatioError(f"group {g}: channel count must be positive and finite; got {x}")
        q = x / step
        k = math.floor(q + 0.5 + _EPS) if mode == "nearest" else (math.ceil(q - _EPS) if mode == "up" else math.floor(q + _EPS))
        out.append(min(int(size), max(k * step, min(step, int(size)))))
    return out


def _check_multiple(multiple: int | None) -> int:
    if multiple is None:
        return 1
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ConfigError(f"round_to must be a positive integer (e.g. 8) or None; got {multiple!r}")
    return multiple


def _check_importance(graph: ChannelGraph, importance: Sequence[Tensor]) -> list[Tensor]:
    if len(importance) != len(graph.groups):
        raise ConfigError(f"expected one importance vector per channel group ({len(graph.groups)}), got {len(importance)}")
    out = []
    for g, (imp, size) in enumerate(zip(importance, graph.group_sizes)):
        t = torch.as_tensor(imp).detach().to("cpu", torch.float64)
        if t.dim() != 1 or t.numel() != size:
            raise ConfigError(f"group {g}: expected an importance vector of shape ({size},), got {tuple(t.shape)}")
        if torch.isnan(t).any():
            raise ConfigError(f"group {g}: importance contains NaN; the weights have diverged")
        out.append(t)
    return out


def _top_k(importance: Tensor, k: int) -> tuple[int, ...]:
    # A stable descending sort keeps equal scores in index order: ties go to the lower index, exactly
    # like `hwdsa.dsa.process.deterministic_masks`, so the plan matches the masks evaluated in the search.
    order = torch.sort(importance, descending=True, stable=True).indices[:k]
    return tuple(sorted(int(i) for i in order))


def _meta(
    graph: ChannelGraph, model_name: str | None, num_classes: int | None, model_kwargs: Mapping[str, Any] | None
) -> dict[str, Any]:
    return {
        "model_name": model_name,
        "input_shape": tuple(graph.input_shape),
        "num_classes": num_classes,
        "model_kwargs": dict(model_kwargs or {}),
    }


def plan_from_channels(
    graph: ChannelGraph,
    importance: Sequence[Tensor],
    channels: Sequence[int],
    *,
    round_to: int | None = None,
    rounding: Rounding = "nearest",
    model_name: str | None = None,
    num_classes: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> PruningPlan:
    """Keep the `channels[g]` most important channels of every group (ties: the lower index).

    Args:
        graph: the dense network's channel structure.
        importance: one [C_g] vector per group (e.g. `hwdsa.importance.group_importance`).
        channels: the count to keep per group, each in 1..C_g.
        round_to: round counts to multiples of this (e.g. 8 for tensor cores); see `round_channels`.
        rounding: "nearest", "up" or "down" (only used with `round_to`).
        model_name, num_classes, model_kwargs: recorded so `load_pruned` can rebuild the architecture.

    Raises:
        KeepRatioError: wrong number of counts, or a count outside 1..C_g.
        ConfigError: malformed importance or `round_to`.
    """
    check_channels(channels, graph.group_sizes)
    counts = [int(c) for c in channels]
    if round_to is not None:
        counts = round_channels(counts, graph.group_sizes, multiple=round_to, mode=rounding)
    imp = _check_importance(graph, importance)
    kept = tuple(_top_k(t, k) for t, k in zip(imp, counts))
    return PruningPlan(graph.group_sizes, kept, **_meta(graph, model_name, num_classes, model_kwargs))


def plan_from_keep_ratios(
    graph: ChannelGraph,
    importance: Sequence[Tensor],
    keep_ratios: Tensor | Sequence[float],
    *,
    round_to: int | None = None,
    rounding: Rounding = "nearest",
    model_name: str | None = None,
    num_classes: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> PruningPlan:
    """Keep round(α_g·C_g) channels of every group (at least one), the most important ones.

    Counts are rounded from α·C directly (to whole channels, or to multiples of `round_to`) with
    `round_channels`, so a multiple is never the rounding of an already rounded count.

    Args:
        graph: the dense network's channel structure.
        importance: one [C_g] vector per group (e.g. `hwdsa.importance.group_importance`).
        keep_ratios: one ratio in (0, 1] per group (a tensor or a list).
        round_to: round counts to multiples of this (e.g. 8); see `round_channels`.
        rounding: "nearest" (halves up), "up" or "down", to whole channels or to multiples.
        model_name, num_classes, model_kwargs: recorded so `load_pruned` can rebuild the architecture.

    Raises:
        KeepRatioError: wrong number of ratios, or a ratio outside (0, 1].
        ConfigError: malformed importance, `round_to` or `rounding`.
    """
    ratios = torch.as_tensor(keep_ratios, dtype=torch.float64).detach().cpu()
    check_keep_ratios(ratios, len(graph.groups))
    targets = [float(r) * c for r, c in zip(ratios, graph.group_sizes)]
    counts = round_channels(targets, graph.group_sizes, multiple=round_to, mode=rounding)
    imp = _check_importance(graph, importance)
    kept = tuple(_top_k(t, k) for t, k in zip(imp, counts))
    return PruningPlan(graph.group_sizes, kept, **_meta(graph, model_name, num_classes, model_kwargs))


def plan_from_masks(
    graph: ChannelGraph,
    masks: Sequence[Tensor],
    *,
    model_name: str | None = None,
    num_classes: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> PruningPlan:
    """Keep exactly the channels whose mask is 1 (binary masks, e.g. `RatioAllocator.eval_masks`).

    Raises:
        KeepRatioError: wrong number or shape of masks, a mask that is not 0/1, or one that keeps nothing.
    """
    if len(masks) != len(graph.groups):
        raise KeepRatioError(f"expected one mask per channel group ({len(graph.groups)}), got {len(masks)}")
    kept = []
    for g, (mask, size) in enumerate(zip(masks, graph.group_sizes)):
        m = torch.as_tensor(mask).detach().cpu()
        if m.dim() != 1 or m.numel() != size:
            raise KeepRatioError(f"group {g}: expected a mask of shape ({size},), got {tuple(m.shape)}")
        if m.dtype != torch.bool:
            if not bool(((m == 0) | (m == 1)).all()):
                raise KeepRatioError(
                    f"group {g}: masks must be binary (0/1) to define kept channels; got values such as "
                    f"{m[(m != 0) & (m != 1)][:3].tolist()}. Use deterministic masks (top-k), not probabilities."
                )
            m = m != 0
        idx = tuple(int(i) for i in m.nonzero().flatten())
        if not idx:
            raise KeepRatioError(f"group {g}: the mask keeps no channel; every group keeps at least one")
        kept.append(idx)
    return PruningPlan(graph.group_sizes, tuple(kept), **_meta(graph, model_name, num_classes, model_kwargs))


# ---------------------------------------------------------------------------------------------------------
# surgery
# ---------------------------------------------------------------------------------------------------------
def _module(model: nn.Module, name: str, types: tuple[type[nn.Module], ...], what: str) -> nn.Module:
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        raise TracingError(f"the model has no {what} {name!r} named by the channel graph; trace the graph from this model") from None
    if not isinstance(mod, types):
        raise TracingError(f"{name!r} is a {type(mod).__name__} in this model but a {what} in the channel graph")
    if nn.utils.parametrize.is_parametrized(mod):
        raise ConfigError(
            f"{name!r} has parametrizations (weight norm, spectral norm, ...); remove them "
            "(torch.nn.utils.parametrize.remove_parametrizations) before pruning"
        )
    return mod


_Layer = nn.modules.conv._ConvNd | nn.Linear
_Norm = nn.modules.batchnorm._BatchNorm


def _check_matches(model: nn.Module, graph: ChannelGraph) -> tuple[dict[str, _Layer], dict[str, _Norm]]:
    """Every layer and norm of the graph, checked against the model before anything is changed."""
    layers: dict[str, _Layer] = {}
    for layer in graph.layers:
        is_conv = layer.kind == "conv"
        mod = _module(model, layer.name, _CONV if is_conv else (nn.Linear,), "convolution" if is_conv else "linear layer")
        assert isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear))
        if isinstance(mod, nn.modules.conv._ConvNd):
            dims = (mod.in_channels, mod.out_channels)
        else:
            dims = (mod.in_features, mod.out_features)
        if (int(dims[0]), int(dims[1])) != (layer.in_channels, layer.out_channels):
            raise TracingError(
                f"layer {layer.name!r} has {dims[0]} inputs and {dims[1]} outputs, the channel graph says "
                f"{layer.in_channels} and {layer.out_channels}: the model was changed (or pruned) after tracing"
            )
        layers[layer.name] = mod
    norms: dict[str, _Norm] = {}
    for norm in graph.norms:
        bn = _module(model, norm.name, _NORM, "BatchNorm")
        assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
        if int(bn.num_features) != norm.channels:
            raise TracingError(
                f"BatchNorm {norm.name!r} has {bn.num_features} channels, the channel graph says {norm.channels}: "
                "the model was changed (or pruned) after tracing"
            )
        norms[norm.name] = bn
    return layers, norms


def _replace(module: nn.Module, name: str, dim: int, index: Tensor) -> None:
    """Keep only `index` along `dim` of the parameter or buffer `name` (a new tensor; grads dropped)."""
    old = getattr(module, name, None)
    if old is None:
        return
    new = old.detach().index_select(dim, index.to(old.device))
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        setattr(module, name, new)  # a registered buffer stays registered


def _input_index(layer: LayerNode, kept: list[Tensor]) -> Tensor | None:
    """Kept input channels (or features, for a flatten-fed linear) of `layer`; None when all are kept."""
    parts = []
    pruned = False
    for seg in layer.in_segments:
        if seg.group is None or kept[seg.group].numel() == seg.channels:
            parts.append(torch.arange(seg.offset, seg.offset + seg.channels))
        else:
            parts.append(kept[seg.group] + seg.offset)
            pruned = True
    if not pruned:
        return None
    channels = torch.cat(parts)
    f = layer.features_per_channel
    if f == 1:
        return channels
    # flatten of (N, C, H, W) is channel-major: channel c owns features c·H·W ... c·H·W + H·W − 1.
    return (channels[:, None] * f + torch.arange(f)[None, :]).flatten()


def prune_(model: nn.Module, graph: ChannelGraph, plan: PruningPlan) -> nn.Module:
    """Remove the channels `plan` drops from `model`, in place; return `model`.

    Slices every convolution (output channels of producers; input channels of consumers at each input
    segment's offset; a depthwise convolution's weight, bias and `groups` together), every BatchNorm
    (affine parameters and running statistics) and every linear layer (input features, H·W per channel
    after a flatten; output features of hidden layers), and updates `in_channels`, `out_channels`,
    `groups`, `num_features`, `in_features`, `out_features` so `repr`, `count_flops` and exporters see the
    new sizes. The model stays an instance of its own class. New parameters replace the old ones: build the
    optimizer after pruning. A group whose channels are all kept is left untouched.

    Args:
        model: the dense network `graph` was traced from (not a DistributedDataParallel wrapper).
        graph: its channel structure, traced before pruning.
        plan: the channels to keep; its group sizes must be the graph's.

    Raises:
        ConfigError: the plan does not fit the graph, the model still carries `ChannelMasks` hooks, is wrapped
            in DistributedDataParallel, or has parametrized layers.
        TracingError: the model does not match the graph (changed or already pruned after tracing).

    Example:
        >>> from hwdsa.graph.tracer import trace_channel_graph
        >>> from hwdsa.importance import group_importance
        >>> from hwdsa.models import create_model
        >>> net = create_model("resnet20")
        >>> graph = trace_channel_graph(net, (3, 32, 32))
        >>> plan = plan_from_keep_ratios(graph, group_importance(net, graph), [0.5] * len(graph.groups))
        >>> prune_(net, graph, plan).conv1
        Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
    """
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        raise ConfigError("prune the module inside the DistributedDataParallel/DataParallel wrapper (model.module), then wrap it again")
    if has_mask_hooks(model):
        raise ConfigError("the model still carries ChannelMasks hooks; call masks.remove() before pruning")
    plan.check_graph(graph)
    layers, norms = _check_matches(model, graph)
    params_before = sum(p.numel() for p in model.parameters())
    kept = [torch.tensor(k, dtype=torch.long) for k in plan.kept]
    full = [len(k) == c for k, c in zip(plan.kept, plan.group_sizes)]

    with torch.no_grad():
        for layer in graph.layers:
            mod = layers[layer.name]
            out_index = None if layer.out_group is None or full[layer.out_group] else kept[layer.out_group]
            if layer.kind == "conv" and layer.is_depthwise:
                in_group = layer.in_segments[0].group if len(layer.in_segments) == 1 else None
                if in_group != layer.out_group:
                    raise TracingError(f"depthwise convolution {layer.name!r} reads group {in_group} but writes {layer.out_group}")
                if out_index is not None:
                    _replace(mod, "weight", 0, out_index)
                    _replace(mod, "bias", 0, out_index)
                    assert isinstance(mod, nn.modules.conv._ConvNd)
                    mod.in_channels = mod.out_channels = mod.groups = int(out_index.numel())
                continue
            in_index = _input_index(layer, kept)
            if layer.kind == "conv" and layer.conv_groups != 1 and (in_index is not None or out_index is not None):
                raise TracingError(
                    f"grouped convolution {layer.name!r} (groups={layer.conv_groups}) cannot be pruned; the tracer should "
                    "have frozen its channels"
                )
            if out_index is not None:
                _replace(mod, "weight", 0, out_index)
                _replace(mod, "bias", 0, out_index)
            if in_index is not None:
                _replace(mod, "weight", 1, in_index)
            if isinstance(mod, nn.modules.conv._ConvNd):
                mod.out_channels = int(mod.weight.shape[0])
                mod.in_channels = int(mod.weight.shape[1]) * mod.groups
            else:
                mod.out_features = int(mod.weight.shape[0])
                mod.in_features = int(mod.weight.shape[1])
        for norm in graph.norms:
            if norm.group is None or full[norm.group]:
                continue
            bn = norms[norm.name]
            index = kept[norm.group]
            for name in ("weight", "bias", "running_mean", "running_var"):
                _replace(bn, name, 0, index)
            bn.num_features = int(index.numel())

    _log.info(
        "pruned %s: %d -> %d parameters, channels %s",
        type(model).__name__,
        params_before,
        sum(p.numel() for p in model.parameters()),
        list(plan.channels),
    )
    return model


def prune(model: nn.Module, graph: ChannelGraph, plan: PruningPlan) -> nn.Module:
    """A pruned deep copy of `model`; `model` itself is unchanged (see `prune_`)."""
    if has_mask_hooks(model):
        raise ConfigError("the model still carries ChannelMasks hooks; call masks.remove() before pruning")
    return prune_(copy.deepcopy(model), graph, plan)


# ---------------------------------------------------------------------------------------------------------
# saving and loading without pickled code
# ---------------------------------------------------------------------------------------------------------
def _check_extra(value: Any, where: str) -> None:
    if isinstance(value, _JSON_SCALARS) or isinstance(value, Tensor):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_extra(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{where}: keys must be strings; got {k!r}")
            _check_extra(v, f"{where}[{k!r}]")
        return
    raise ConfigError(
        f"{where} is a {type(value).__name__}; save_pruned stores only numbers, strings, lists, dicts and tensors "
        "so the file loads with torch.load(weights_only=True) (serialise it to a JSON string first)"
    )


def _weights_digest(state: Mapping[str, Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and raw bytes, in sorted name order.

    torch.load never checks a file's zip checksums, so without this a flipped bit in a weight loads as a
    silently different network. Names, dtypes and shapes are hashed too: an entry renamed, retyped or
    reshaped no longer matches.
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode() + b"\n")
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _first_non_finite(state: Mapping[str, Tensor]) -> tuple[str, int] | None:
    """The first floating-point tensor (state-dict order) holding NaN or inf, with its count of such values."""
    for name, t in state.items():
        if t.is_floating_point() or t.is_complex():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                return name, bad
    return None


def save_pruned(
    path: str | os.PathLike[str],
    model: nn.Module,
    plan: PruningPlan,
    *,
    extra: Mapping[str, Any] | None = None,
    model_name: str | None = None,
    num_classes: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Write the pruned weights and the plan that shapes them to `path` atomically (a `torch.save` file).

    The file holds only tensors and plain data ({"state_dict", "weights_sha256", "plan" (JSON),
    "model_name", "num_classes", "model_kwargs", "extra"}), never pickled classes: `load_pruned` rebuilds
    the architecture from the model registry. "weights_sha256" is a digest of the state dict (every
    tensor's name, dtype, shape and bytes) that `load_pruned` verifies, so corrupted weights are refused
    instead of loading as a different network. `model_name`, `num_classes` and `model_kwargs` default to
    the plan's; given, they are recorded in the saved plan too (`load_pruned` returns it).

    Args:
        path: destination file (conventionally `*.pt`).
        model: the pruned network (`prune(model, graph, plan)`).
        plan: the plan it was pruned with.
        extra: anything else to keep beside it (numbers, strings, lists, dicts, tensors), e.g. a report.

    Raises:
        ConfigError: `extra` holds something that would need pickled code, or the model is wrapped in DDP.
    """
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        raise ConfigError("save the module inside the DistributedDataParallel/DataParallel wrapper (model.module)")
    extra_dict = dict(extra or {})
    _check_extra(extra_dict, "extra")
    # The arguments complete the plan's record, so the plan in the file and the file's fields agree.
    plan = replace(
        plan,
        model_name=model_name if model_name is not None else plan.model_name,
        num_classes=num_classes if num_classes is not None else plan.num_classes,
        model_kwargs=model_kwargs if model_kwargs is not None else plan.model_kwargs,
    )
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    non_finite = _first_non_finite(state)
    if non_finite is not None:  # saved anyway (the run's only result), but load_pruned will refuse it
        _log.warning(
            "saving %s with %d non-finite values in %r: the weights have diverged and load_pruned will refuse the file",
            path, non_finite[1], non_finite[0],
        )  # fmt: skip
    payload = {
        "format": _FILE_KIND,
        "format_version": _FILE_VERSION,
        "state_dict": state,
        "weights_sha256": _weights_digest(state),
        "plan": plan.to_json(),
        "model_name": plan.model_name,
        "num_classes": plan.num_classes,
        "model_kwargs": json.dumps(dict(plan.model_kwargs)),
        "extra": extra_dict,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    _log.info("saved pruned %s to %s", type(model).__name__, path)
    return Path(path)


_REDO = "re-export it with hwdsa.surgery.save_pruned from the pruned model, or re-run the job that wrote it (hwdsa prune)"


def _read_payload(p: Path, map_location: str | torch.device) -> dict[str, Any]:
    """`torch.load(weights_only=True)` of `p`, then the zip's CRC-32s, which torch itself never checks."""
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # zip, unpickler and storage errors all mean "not a readable file"
        raise CheckpointError(
            f"cannot read the pruned model {p}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}. "
            "The file is truncated, corrupted, or was not written by hwdsa.surgery.save_pruned"
        ) from exc
    if zipfile.is_zipfile(p):  # the CRCs also cover the pickle (plan, extra), which the weights' digest does not
        try:
            with zipfile.ZipFile(p) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise CheckpointError(f"{p} is corrupted: its zip checksums cannot be checked ({type(exc).__name__}: {exc}); {_REDO}") from exc
        if bad is not None:
            member = bad.split("/", 1)[-1]  # without the archive's root folder, a temporary name
            raise CheckpointError(f"{p} is corrupted: the zip checksum of its member {member} does not match its bytes; {_REDO}")
    if not isinstance(payload, dict) or payload.get("format") != _FILE_KIND:
        raise CheckpointError(f"{p} is not a pruned model written by hwdsa.surgery.save_pruned (no {_FILE_KIND!r} marker)")
    return payload


def _checked_state(p: Path, payload: Mapping[str, Any]) -> dict[str, Tensor]:
    """The saved state dict, verified against its digest (version 2 on) and refused if not finite."""
    version = payload.get("format_version")
    if version != _FILE_VERSION and version not in _UNDIGESTED_VERSIONS:
        raise CheckpointError(
            f"{p} has format version {version!r}; this hwdsa reads version {_FILE_VERSION} (and version "
            f"{', '.join(map(str, _UNDIGESTED_VERSIONS))} without a digest); a newer hwdsa may have written it"
        )
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise CheckpointError(f"{p} holds no state_dict of named tensors; the file is corrupted; {_REDO}")
    if version == _FILE_VERSION:
        expected = payload.get("weights_sha256")
        if not isinstance(expected, str):
            raise CheckpointError(f"{p} is corrupted: it lacks the digest of its weights (weights_sha256); {_REDO}")
        if _weights_digest(state) != expected:
            raise CheckpointError(
                f"{p} is corrupted: its weights do not match the SHA-256 digest save_pruned recorded (a damaged "
                f"copy, a disk error, or an edit made outside save_pruned); {_REDO}"
            )
    else:
        _log.warning(
            "%s has format version %s, written before save_pruned recorded a digest of the weights: their integrity "
            "cannot be checked. Save it again with save_pruned to upgrade it", p, version,
        )  # fmt: skip
    non_finite = _first_non_finite(state)
    if non_finite is not None:
        name, count = non_finite
        raise CheckpointError(
            f"{p} holds non-finite weights: {name!r} has {count} NaN or inf values (the training diverged, or the "
            f"file is corrupted); {_REDO}, from weights that stay finite"
        )
    return state


def _one_line(exc: BaseException, limit: int = 600) -> str:
    """The exception's message on one line (the CLI prints errors as one line), cut at `limit` characters."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


def _plan_misfit(p: Path, what: str, exc: BaseException) -> CheckpointError:
    return CheckpointError(f"{p}: the saved plan does not fit the {what} architecture: {_one_line(exc)}")


def _runs_on(model: nn.Module, shape: tuple[int, ...]) -> None:
    """One plain forward pass on zeros: fx's shape propagation would print a raw traceback on a misfit."""
    was_training = model.training
    param = next(model.parameters(), None)
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(shape, device=param.device if param is not None else "cpu"))
    finally:
        model.train(was_training)


def load_pruned(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[nn.Module, PruningPlan]:
    """Rebuild a pruned network written by `save_pruned`: architecture, plan's shapes, then weights.

    The file's integrity is checked first: the zip's CRC-32s, then the SHA-256 digest of the weights that
    `save_pruned` records (format version 2); the weights must also be finite. A version 1 file, written
    before the digest existed, still loads, with a logged warning that its weights' integrity cannot be
    checked (the zip checksums and the finiteness check still apply): refusing it would strand pruned models
    that took hours to make, and saving it again upgrades it. Newer versions are refused.

    The dense architecture comes from `model` when given (it is pruned in place and returned), else from
    the model registry by the saved name. It is traced at the plan's input shape, pruned with the plan,
    and the weights are loaded with `torch.load(weights_only=True)` and a strict `load_state_dict`. The
    `extra` dict saved beside it is `torch.load(path, weights_only=True)["extra"]`.

    Raises:
        CheckpointError: the file is missing, corrupted (checksums, digest, non-finite weights), not written
            by `save_pruned`, saved without a model name (pass `model=`), or its weights or plan do not fit
            the architecture, whatever field of the plan is at fault.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"no pruned model at {p}")
    payload = _read_payload(p, map_location)
    state = _checked_state(p, payload)
    try:
        plan = PruningPlan.from_json(payload["plan"])
        kwargs = json.loads(payload.get("model_kwargs") or "{}")
        if not isinstance(kwargs, dict):
            raise ConfigError(f"model_kwargs must be a JSON object; got {type(kwargs).__name__}")
    except (HwdsaError, KeyError, ValueError, TypeError) as exc:  # KeepRatioError too: a group keeping nothing
        raise CheckpointError(
            f"{p} holds a malformed pruning plan: {exc}. The saved plan does not fit any architecture; {_REDO}"
        ) from exc
    name = payload.get("model_name")
    num_classes = payload.get("num_classes")
    # save_pruned writes these fields from the plan; a disagreement means an edit or damage after saving.
    for field_name, recorded, in_plan in (
        ("model_name", name, plan.model_name),
        ("num_classes", num_classes, plan.num_classes),
        ("model_kwargs", kwargs, dict(plan.model_kwargs)),
    ):
        if recorded != in_plan:
            raise CheckpointError(
                f"{p}: the saved plan does not fit the file's own record of the architecture: the plan has "
                f"{field_name}={in_plan!r}, the file {recorded!r}; {_REDO}"
            )
    what = f"{name!r}" if model is None else type(model).__name__

    from hwdsa.graph.tracer import trace_channel_graph  # heavy (fx); only loading needs it

    if model is None:
        if name is None:
            raise CheckpointError(
                f"{p} was saved without a model name, so its architecture cannot be rebuilt from the registry; "
                "pass the dense network as load_pruned(path, model=...)"
            )
        from hwdsa.models import create_model

        build_kwargs = dict(kwargs)
        if num_classes is not None:
            build_kwargs["num_classes"] = num_classes
        try:
            model = create_model(name, **build_kwargs)
        except (HwdsaError, TypeError, ValueError, RuntimeError) as exc:
            raise _plan_misfit(p, what, exc) from exc
        what = type(model).__name__
    input_shape = plan.input_shape
    if input_shape is None:
        if name is None:
            raise CheckpointError(f"{p}: the plan records no input shape to trace the architecture with")
        from hwdsa.models import default_input_shape

        try:
            input_shape = default_input_shape(name)
        except (HwdsaError, KeyError, TypeError) as exc:
            raise _plan_misfit(p, what, exc) from exc
    # A batch dimension keeps the shape unambiguous: (C, D, H, W) of a 3-D network would read as (N, C, H, W).
    shape = (2, *input_shape) if len(input_shape) >= 3 else tuple(input_shape)
    try:
        _runs_on(model, shape)
    except Exception as exc:  # a plan's input shape or model_kwargs (in_channels, ...) the network cannot run
        raise CheckpointError(
            f"{p}: the saved plan does not fit the {what} architecture: it does not run on the plan's input shape "
            f"{shape}: {type(exc).__name__}: {_one_line(exc, 300)}"
        ) from exc
    try:
        graph = trace_channel_graph(model, shape)
        prune_(model, graph, plan)
    except HwdsaError as exc:  # ConfigError, TracingError (NoPrunableLayerError), ...
        raise _plan_misfit(p, what, exc) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{p}: the saved weights do not fit the pruned {type(model).__name__}: {_one_line(exc)}"
        ) from exc
    return model, plan
