"""The cut: slice every convolution, BatchNorm and linear layer of a model to a plan's kept channels.

The smaller dense network computes exactly what the masked network computed (`hwdsa.equivalence` checks
it at run time), and stays an instance of its own class.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor, nn

from hwdsa.errors import ConfigError, TracingError
from hwdsa.graph.structure import ChannelGraph, LayerNode
from hwdsa.masking import has_mask_hooks
from hwdsa.surgery.plan import PruningPlan

_log = logging.getLogger("hwdsa.surgery")

__all__ = ["prune", "prune_"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


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
