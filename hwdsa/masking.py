"""Channel masks applied during the search: forward hooks that multiply each group's mask sites by its mask.

A mask zeroes a channel at every mask site of its group (the BatchNorm outputs, before the activation),
so a masked channel contributes nothing downstream; that is exactly the network `hwdsa.surgery.prune`
builds by removing the channel (design note, sections 3 and 6).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from hwdsa.errors import KeepRatioError, TracingError
from hwdsa.graph.structure import ChannelGraph

_log = logging.getLogger(__name__)

__all__ = ["ChannelMasks", "has_mask_hooks"]

_HOOK_TAG = "_hwdsa_channel_mask"


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


class ChannelMasks:
    """Forward hooks that multiply every mask site of every channel group by the group's current mask.

    The search sets new masks each step with `set_masks`; a mask may carry gradient (the straight-through
    estimator of the allocator) and the product passes it on. Hooks sit on the modules themselves, so they
    fire inside DistributedDataParallel (pass the wrapper or its inner module) and inside a `torch.fx`
    GraphModule traced from the model (fx keeps the same submodule objects).

    Args:
        model: the network `graph` was traced from, or a (Distributed)DataParallel wrapper of it.
        graph: its channel structure.

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

    def __init__(self, model: nn.Module, graph: ChannelGraph) -> None:
        inner = model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model
        self.model = inner
        self.graph = graph
        self.group_sizes = graph.group_sizes
        self._masks: list[Tensor] | None = None
        self._handles: list[RemovableHandle] = []
        sites: list[tuple[int, str, nn.Module]] = []
        for group in graph.groups:
            for site in group.mask_sites:
                try:
                    module = inner.get_submodule(site)
                except AttributeError:
                    raise TracingError(
                        f"the model has no submodule {site!r} (a mask site of group {group.index}); "
                        "trace the channel graph from this model"
                    ) from None
                sites.append((group.index, site, module))
        for index, site, module in sites:
            self._handles.append(module.register_forward_hook(_MaskHook(self, index, site)))
        _log.debug("installed %d mask hooks on %d groups", len(self._handles), len(graph.groups))

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
        getattr(hook, _HOOK_TAG, False) for module in model.modules() for hook in module._forward_hooks.values()
    )
