"""`PruningPlan`: which channels of every group survive, model-independent and JSON; and the ways to make one.

`plan_from_channels`, `plan_from_keep_ratios` and `plan_from_masks` turn the search's counts, ratios or
masks into a plan, keeping the most important channels of each group.
"""

from __future__ import annotations

import json
import math
import operator
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from hwdsa._io import write_text_atomic
from hwdsa.channels import Rounding, round_channels
from hwdsa.costs import check_channels, check_keep_ratios
from hwdsa.errors import ConfigError, KeepRatioError
from hwdsa.graph.structure import ChannelGraph

__all__ = ["PruningPlan", "plan_from_channels", "plan_from_keep_ratios", "plan_from_masks"]

_PLAN_KIND = "hwdsa.PruningPlan"
_JSON_SCALARS = (str, int, float, bool, type(None))


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
