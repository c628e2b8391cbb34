"""Channel masks applied during the search: hooks that multiply a group's channels by the group's mask.

Two placements compute the same forward pass for masks in {0, 1}, the network `hwdsa.surgery.prune`
builds by removing the masked channels (design note, sections 3 and 6):

- "before_activation" (the authors'): at every mask site of the group (its BatchNorm outputs), so the
  activation sees a zero. Where a ReLU follows, a dropped channel's slope ∂L/∂m is zero (ReLU'(0) = 0):
  the ratio step learns nothing about adding it back.
- "after_activation": where the channels are read, on the input of every layer that consumes the group
  (after the activation, any pooling, and a residual sum), by forward pre-hooks on those layers. A
  masked channel reaches no layer, as before, and its slope is the first-order effect of adding the
  activated channel back to every layer that reads it. Consumer layers are never shared (the tracer
  refuses that), so a hook on a layer is exact where a hook on a shared activation module would not be.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from hwdsa.errors import ConfigError, KeepRatioError, TracingError
from hwdsa.graph.structure import ChannelGraph, LayerNode

_log = logging.getLogger(__name__)

__all__ = ["MASK_PLACEMENTS", "ChannelMasks", "MaskPlacement", "has_mask_hooks"]

_HOOK_TAG = "_hwdsa_channel_mask"
MaskPlacement = Literal["before_activation", "after_activation"]
MASK_PLACEMENTS: tuple[MaskPlacement, ...] = ("before_activation", "after_activation")


class _MaskHook:
    """The forward hook of one mask site: `output * mask` broadcast over channel dim 1."""

    def __init__(self, owner: ChannelMasks, group: int, site: str) -> None:
        self.owner = owner
        self.group = group
        self.site = site
        setattr(self, _HOOK_TAG, True)

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        mask = self.owner._masks[self.group] if self.owner._masks is not None else None
        if mask is None:
            return None  # no mask set: the module's output passes unchanged
        if not isinstance(output, Tensor) or output.dim() < 2 or output.shape[1] != mask.shape[0]:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise TracingError(
                f"mask site {self.site!r} (group {self.group}) produced {shape}, expected a tensor with "
                f"{mask.shape[0]} channels in dim 1; was the model pruned or changed after the masks were installed?"
            )
        if mask.dtype != output.dtype or mask.device != output.device:
            mask = mask.to(device=output.device, dtype=output.dtype)  # e.g. half outputs under autocast
        return output * mask.view(-1, *([1] * (output.dim() - 2)))


class _ReadMaskHook:
    """The forward pre-hook of one consumer layer: its input times the masks of the groups it reads."""

    def __init__(self, owner: ChannelMasks, layer: LayerNode) -> None:
        self.owner = owner
        self.layer = layer
        setattr(self, _HOOK_TAG, True)

    def __call__(self, module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...] | None:
        masks = self.owner._masks
        if masks is None or not inputs or not isinstance(inputs[0], Tensor):
            return None
        x = inputs[0]
        parts = [
            masks[seg.group] if seg.group is not None else masks[0].new_ones(seg.channels) for seg in self.layer.in_segments
        ]
        mask = torch.cat(parts) if len(parts) > 1 else parts[0]
        if self.layer.features_per_channel > 1:
            mask = mask.repeat_interleave(self.layer.features_per_channel)
        if mask.shape[0] != x.shape[1]:
            raise TracingError(
                f"layer {self.layer.name!r} read {x.shape[1]} channels, its masks cover {mask.shape[0]}; "
                "was the model pruned or changed after the masks were installed?"
            )
        mask = mask.to(device=x.device, dtype=x.dtype)
        return (x * mask.view(-1, *([1] * (x.dim() - 2))), *inputs[1:])


class ChannelMasks:
    """Forward hooks that multiply every mask site of every channel group by the group's current mask.

    The search sets new masks each step with `set_masks`; a mask may carry gradient (the straight-through
    estimator of the allocator) and the product passes it on. Hooks sit on the modules themselves, so they
    fire inside DistributedDataParallel (pass the wrapper or its inner module) and inside a `torch.fx`
    GraphModule traced from the model (fx keeps the same submodule objects).

    Args:
        model: the network `graph` was traced from, or a (Distributed)DataParallel wrapper of it.
        graph: its channel structure.
        placement: where the masks multiply (see the module docstring); the forward pass is the same.

    Example:
        >>> import torch
        >>> from hwdsa.graph.tracer import trace_channel_graph
        >>> from hwdsa.models import create_model
        >>> net = create_model("resnet20").eval()
        >>> graph = trace_channel_graph(net, (3, 32, 32))
        >>> with ChannelMasks(net, graph) as masks:
        ...     masks.set_masks([torch.ones(c) for c in graph.group_sizes])
        ...     y = net(torch.randn(1, 3, 32, 32))
        >>> tuple(y.shape)
        (1, 10)
    """

    def __init__(self, model: nn.Module, graph: ChannelGraph, placement: MaskPlacement = "before_activation") -> None:
        if placement not in MASK_PLACEMENTS:
            raise ConfigError(f"unknown mask placement {placement!r}; valid: {', '.join(MASK_PLACEMENTS)}")
        inner = model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model
        self.model = inner
        self.graph = graph
        self.placement = placement
        self.group_sizes = graph.group_sizes
        self._masks: list[Tensor] | None = None
        self._handles: list[RemovableHandle] = []
        if placement == "after_activation":
            for layer in graph.layers:
                if layer.is_depthwise or all(seg.group is None for seg in layer.in_segments):
                    continue  # a depthwise layer's output is its input's group, read (and masked) downstream
                module = self._submodule(layer.name, "a layer reading a channel group")
                self._handles.append(module.register_forward_pre_hook(_ReadMaskHook(self, layer)))
            _log.debug("installed %d read-mask hooks on %d groups", len(self._handles), len(graph.groups))
            return
        sites = [(g.index, site, self._submodule(site, f"a mask site of group {g.index}")) for g in graph.groups for site in g.mask_sites]
        for index, site, module in sites:
            self._handles.append(module.register_forward_hook(_MaskHook(self, index, site)))
        _log.debug("installed %d mask hooks on %d groups", len(self._handles), len(graph.groups))

    def _submodule(self, name: str, what: str) -> nn.Module:
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            raise TracingError(f"the model has no submodule {name!r} ({what}); trace the channel graph from this model") from None

    # -- masks ---------------------------------------------------------------------------------
    def set_masks(self, masks: Sequence[Tensor]) -> None:
        """Use `masks` (one [C_g] tensor per group, in group order) from the next forward pass on.

        Masks are moved to the model's device and floating dtype; gradients flow through them.

        Raises:
            KeepRatioError: wrong number of masks, or a mask whose shape is not its group's [C_g].
            RuntimeError: the hooks were removed.
        """
        if not self._handles:
            raise RuntimeError("these ChannelMasks were removed; create new ones to mask the model again")
        if len(masks) != len(self.group_sizes):
            raise KeepRatioError(f"expected one mask per channel group ({len(self.group_sizes)}), got {len(masks)}")
        # Read the device and dtype now, not at construction: the model may have moved since.
        param = next(self.model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.get_default_dtype()
        converted: list[Tensor] = []
        for g, (mask, size) in enumerate(zip(masks, self.group_sizes)):
            if not isinstance(mask, Tensor):
                raise KeepRatioError(f"group {g}: a mask must be a tensor, got {type(mask).__name__}")
            if mask.dim() != 1 or mask.shape[0] != size:
                raise KeepRatioError(f"group {g}: expected a mask of shape ({size},), got {tuple(mask.shape)}")
            converted.append(mask.to(device=device, dtype=dtype))
        self._masks = converted

    @property
    def masks(self) -> list[Tensor] | None:
        """The masks in use, or None when every mask site passes its output unchanged."""
        return None if self._masks is None else list(self._masks)

    def clear(self) -> None:
        """Stop masking (the hooks stay installed and pass outputs unchanged until `set_masks`)."""
        self._masks = None

    def remove(self) -> None:
        """Remove every hook; the model computes exactly what it computed before. Idempotent."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._masks = None

    @property
    def is_installed(self) -> bool:
        """Whether the hooks are still on the model."""
        return bool(self._handles)

    # -- context manager -------------------------------------------------------------------------
    def __enter__(self) -> ChannelMasks:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()


def has_mask_hooks(model: nn.Module) -> bool:
    """Whether any module of `model` still carries a `ChannelMasks` hook (surgery refuses such a model)."""
    return any(
        getattr(hook, _HOOK_TAG, False)
        for module in model.modules()
        for hook in (*module._forward_hooks.values(), *module._forward_pre_hooks.values())
    )
