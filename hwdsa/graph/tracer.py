"""Derive channel groups from any CNN by tracing it with `torch.fx` (design note, section 2).

Each tensor's channel dimension is a union-find element. Operations that force two tensors to keep the
same channels (residual `add`, `mul` gating, BatchNorm, depthwise convolution, activations) merge
elements; convolutions and linear layers start new ones; `cat` lays elements side by side. Elements that
touch the network's input or output, or a grouped convolution, are frozen. What remains, with at least
one producing layer, is a channel group.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from hwdsa.errors import NoPrunableLayerError, TracingError
from hwdsa.graph.structure import ChannelGraph, ChannelGroup, InputSegment, LayerNode, NormNode

_log = logging.getLogger(__name__)

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

# Channel-wise operations: channel c of the output depends on channel c of the input only. The tracer
# lets a group pass through every one of them, but a masked channel (zero at its mask site) stays zero
# only through those that map 0 to 0. One rule decides both: an operation whose f(0) != 0 marks the
# channels that pass through it "not zero when masked", and a layer that reads such channels freezes
# their group, because removing them (surgery) would not compute what masking them did.
_ACTIVATION_MODULES: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.Hardswish: "hardswish",
    nn.SiLU: "silu",
}
_ZERO_PRESERVING_MODULES: tuple[type[nn.Module], ...] = (
    *_ACTIVATION_MODULES,
    nn.LeakyReLU,
    nn.GELU,
    nn.Tanh,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.Mish,
    nn.Hardtanh,
    nn.Softsign,
    nn.Tanhshrink,
    nn.Hardshrink,
    nn.Softshrink,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_NONZERO_AT_ZERO_MODULES: tuple[type[nn.Module], ...] = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid)
# Drop-path / stochastic depth (torchvision, timm) and DropBlock: the identity at inference, a per-sample
# or per-block zeroing and rescaling in training; channel-wise and zero-preserving either way. Matched by
# class name so that timm need not be installed; traced as leaves (their training branch reads shapes).
_DROP_MODULE_NAMES = frozenset({"StochasticDepth", "DropPath", "DropBlock2d", "DropBlock3d"})
_ACTIVATION_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu",
    torch.relu: "relu",
    F.relu6: "relu6",
    F.hardswish: "hardswish",
    F.silu: "silu",
    "relu": "relu",
    "relu_": "relu",
}
_ZERO_PRESERVING_FUNCTIONS: set[Any] = {
    *_ACTIVATION_FUNCTIONS,
    F.relu_,
    torch.relu_,
    F.leaky_relu,
    F.gelu,
    F.elu,
    F.selu,
    F.celu,
    F.mish,
    F.hardtanh,
    torch.tanh,
    F.dropout,
    F.dropout2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.avg_pool2d,
    F.max_pool2d,
    operator.neg,
    torch.neg,
    "tanh",
    "neg",
    "contiguous",
    "clone",
    "detach",
}
_NONZERO_AT_ZERO_FUNCTIONS: set[Any] = {torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus, F.logsigmoid, torch.exp, torch.cos, "sigmoid", "exp", "cos"}
_ADD = {operator.add, operator.iadd, torch.add, "add", "add_", operator.sub, operator.isub, torch.sub, "sub", "sub_"}
_MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
_DIV = {operator.truediv, operator.itruediv, torch.div, "div", "div_"}
_FLATTEN = {torch.flatten, "flatten", "view", "reshape"}
_REDUCE = {torch.mean, "mean", "sum", torch.sum, "amax"}
_NON_TENSOR = {getattr, "size", "dim", "numel"}


@dataclass(frozen=True)
class _Channels:
    """Where a tensor's channels (dim 1) come from: union-find elements side by side."""

    segments: tuple[tuple[int, int], ...]  # (element, channels)
    per_channel: int = 1  # features per channel after flatten of C×H×W
    # Per segment: None while a masked channel is still zero here, else the node that made it non-zero.
    nonzero_by: tuple[str | None, ...] = ()

    def __post_init__(self) -> None:
        if not self.nonzero_by:
            object.__setattr__(self, "nonzero_by", (None,) * len(self.segments))

    @property
    def total(self) -> int:
        return sum(c for _, c in self.segments)

    def made_nonzero(self, by: str) -> _Channels:
        """These channels after an operation with f(0) != 0: masked channels are no longer zero."""
        return _Channels(self.segments, self.per_channel, tuple(n or by for n in self.nonzero_by))

    def zeroed(self) -> _Channels:
        """These channels after a mask site (BatchNorm of a group): masked channels are zero again."""
        return _Channels(self.segments, self.per_channel)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.channels: list[int] = []
        self.frozen: list[bool] = []

    def new(self, channels: int, frozen: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.channels.append(channels)
        self.frozen.append(frozen)
        return len(self.parent) - 1

    def find(self, e: int) -> int:
        while self.parent[e] != e:
            self.parent[e] = self.parent[self.parent[e]]
            e = self.parent[e]
        return e

    def union(self, a: int, b: int, where: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.channels[ra] != self.channels[rb]:
            raise TracingError(f"{where}: cannot couple {self.channels[ra]} channels with {self.channels[rb]}")
        self.parent[rb] = ra
        self.frozen[ra] = self.frozen[ra] or self.frozen[rb]

    def freeze(self, e: int) -> None:
        self.frozen[self.find(e)] = True


def _shape(node: torch.fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return None
    return tuple(int(s) for s in meta.shape)


def _target_name(node: torch.fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", repr(t))


class _Tracer:
    """One pass over an fx graph that fills the union-find and collects layers and norms."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.uf = _UnionFind()
        self.values: dict[torch.fx.Node, _Channels | None] = {}
        self.layers: list[tuple[torch.fx.Node, dict[str, Any]]] = []
        self.norms: list[tuple[str, int]] = []
        self.calls: dict[str, int] = {}

    # -- helpers -------------------------------------------------------------------------------
    def _fail(self, node: torch.fx.Node, why: str) -> TracingError:
        return TracingError(
            f"cannot group channels at node {node.name!r} ({node.op} {_target_name(node)}): {why}. "
            "Supported: Conv/Linear/BatchNorm modules, element-wise activations and pooling, residual add/mul, "
            "cat along channels, flatten before a linear layer."
        )

    def _tensor_args(self, node: torch.fx.Node) -> list[_Channels]:
        out = []
        for a in node.all_input_nodes:
            v = self.values.get(a)
            if v is not None:
                out.append(v)
        return out

    def _single_input(self, node: torch.fx.Node) -> _Channels:
        first = node.args[0] if node.args else None
        if not isinstance(first, torch.fx.Node) or self.values.get(first) is None:
            raise self._fail(node, "expected a feature-map tensor as first argument")
        v = self.values[first]
        assert v is not None
        return v

    def _read_by_layer(self, node: torch.fx.Node, x: _Channels) -> None:
        """A layer reads `x`: freeze the groups whose masked channels are not zero here (see the module rule)."""
        for (element, _), by in zip(x.segments, x.nonzero_by):
            if by is not None and not self.uf.frozen[self.uf.find(element)]:
                _log.info(
                    "channels read by %r are not prunable: %s maps a zero (masked) channel to a non-zero value, so "
                    "removing the channel would change the output",
                    node.name,
                    by,
                )
                self.uf.freeze(element)

    def _count_call(self, node: torch.fx.Node, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.calls[name] > 1:
            raise self._fail(node, f"module {name!r} is called more than once; shared weights cannot be pruned")

    # -- node kinds ----------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            self.values[node] = self._visit(node)

    def _visit(self, node: torch.fx.Node) -> _Channels | None:
        shape = _shape(node)
        if node.op == "placeholder":
            if shape is None or len(shape) < 2:
                return None
            return _Channels(((self.uf.new(shape[1], frozen=True), shape[1]),))
        if node.op == "get_attr":
            raise self._fail(node, "the forward reads a parameter or buffer directly, outside a module")
        if node.op == "output":
            for v in self._tensor_args(node):
                for e, _ in v.segments:
                    self.uf.freeze(e)
            return None
        if node.op == "call_module":
            return self._visit_module(node, shape)
        return self._visit_function(node, shape)

    def _visit_module(self, node: torch.fx.Node, shape: tuple[int, ...] | None) -> _Channels | None:
        name = str(node.target)
        mod = self.modules[name]
        if isinstance(mod, _CONV):
            self._count_call(node, name)
            return self._conv(node, name, mod, shape)
        if isinstance(mod, nn.Linear):
            self._count_call(node, name)
            return self._linear(node, name, mod, shape)
        if isinstance(mod, _NORM):
            self._count_call(node, name)
            x = self._single_input(node)
            if len(x.segments) != 1:
                # BatchNorm over a concatenation: couple each part separately is impossible to express
                # as one group; freeze the parts instead of guessing.
                for e, _ in x.segments:
                    self.uf.freeze(e)
            self.norms.append((name, x.segments[0][0] if len(x.segments) == 1 else -1))
            return x.zeroed()  # every BatchNorm of a group is one of its mask sites
        if isinstance(mod, _ZERO_PRESERVING_MODULES) or _is_drop_module(mod):
            return self._single_input(node)
        if isinstance(mod, _NONZERO_AT_ZERO_MODULES):
            return self._single_input(node).made_nonzero(f"{node.name} ({type(mod).__name__})")
        if isinstance(mod, nn.Flatten):
            return self._flatten(node, shape, int(mod.start_dim))
        raise self._fail(node, f"unsupported module type {type(mod).__name__}")

    def _conv(self, node: torch.fx.Node, name: str, mod: nn.Module, shape: tuple[int, ...] | None) -> _Channels:
        assert isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        x = self._single_input(node)
        if x.per_channel != 1:
            raise self._fail(node, "convolution over a flattened tensor")
        in_shape = _shape(node.args[0]) if isinstance(node.args[0], torch.fx.Node) else None
        if shape is None or in_shape is None:
            raise self._fail(node, "shape propagation gave no shape")
        groups = int(mod.groups)
        info: dict[str, Any] = {"kind": "conv", "module": mod, "input": x, "in_shape": in_shape, "out_shape": shape}
        if groups == 1:
            self._read_by_layer(node, x)
            out = _Channels(((self.uf.new(mod.out_channels), mod.out_channels),))
        elif groups == mod.in_channels == mod.out_channels and len(x.segments) == 1:
            # Depthwise: output channel c is input channel c, and the layer is a mask site of that group.
            out = x.zeroed()
            info["depthwise"] = True
        else:
            # A grouped (non-depthwise) convolution ties channels across groups in ways one keep ratio per
            # group cannot express: keep its inputs and outputs whole.
            for e, _ in x.segments:
                self.uf.freeze(e)
            out = _Channels(((self.uf.new(mod.out_channels, frozen=True), mod.out_channels),))
        info["output"] = out
        self.layers.append((node, info))
        return out

    def _linear(self, node: torch.fx.Node, name: str, mod: nn.Linear, shape: tuple[int, ...] | None) -> _Channels:
        x = self._single_input(node)
        if shape is None or len(shape) != 2:
            raise self._fail(node, "linear layers are supported on (batch, features) inputs only")
        if x.total * x.per_channel != mod.in_features:
            raise self._fail(node, f"expected {mod.in_features} input features, traced {x.total * x.per_channel}")
        self._read_by_layer(node, x)
        out = _Channels(((self.uf.new(mod.out_features), mod.out_features),))
        self.layers.append((node, {"kind": "linear", "module": mod, "input": x, "output": out}))
        return out

    def _flatten(self, node: torch.fx.Node, shape: tuple[int, ...] | None, start_dim: int) -> _Channels:
        x = self._single_input(node)
        first = node.args[0]
        in_shape = _shape(first) if isinstance(first, torch.fx.Node) else None
        if in_shape is None or shape is None:
            raise self._fail(node, "shape propagation gave no shape")
        if len(shape) != 2 or shape[0] != in_shape[0] or start_dim not in (1, -len(in_shape) + 1):
            raise self._fail(node, f"only flattening (N, C, ...) to (N, C·...) is supported; got {in_shape} → {shape}")
        spatial = 1
        for s in in_shape[2:]:
            spatial *= s
        return _Channels(x.segments, x.per_channel * spatial, x.nonzero_by)

    def _visit_function(self, node: torch.fx.Node, shape: tuple[int, ...] | None) -> _Channels | None:
        target = node.target
        inputs = self._tensor_args(node)
        if target in _NON_TENSOR or (not inputs and shape is None):
            return None
        if target in _ZERO_PRESERVING_FUNCTIONS:
            return self._single_input(node)
        if target in _NONZERO_AT_ZERO_FUNCTIONS:
            return self._single_input(node).made_nonzero(f"{node.name} ({_target_name(node)})")
        if target in _ADD:
            return self._add(node, inputs)
        if target in _MUL:
            return self._mul(node, inputs)
        if target in _DIV:
            return self._div(node, inputs)
        if target in (torch.cat, "cat"):
            return self._cat(node, shape)
        if target in _FLATTEN:
            x_shape = _shape(node.args[0]) if isinstance(node.args[0], torch.fx.Node) else None
            if x_shape is not None and shape is not None and x_shape == shape:
                return self._single_input(node)
            start = node.args[1] if target in (torch.flatten, "flatten") and len(node.args) > 1 else 1
            return self._flatten(node, shape, int(node.kwargs.get("start_dim", start)))  # type: ignore[arg-type]
        if target in _REDUCE:
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            dims_t = dims if isinstance(dims, (tuple, list)) else (dims,)
            if dims is None or 1 in dims_t or -(len(_shape(node.args[0]) or ())) + 1 in dims_t:  # type: ignore[arg-type]
                raise self._fail(node, "reduction over the channel dimension")
            return self._single_input(node)
        if not inputs:
            return None
        raise self._fail(node, "unsupported operation on a feature map")

    def _couple(self, node: torch.fx.Node, a: _Channels, b: _Channels) -> None:
        """Two operands of an element-wise operation: their channels are the same channels."""
        if a.per_channel != b.per_channel or [c for _, c in a.segments] != [c for _, c in b.segments]:
            raise self._fail(node, f"operands have different channel layouts ({a.total} vs {b.total} channels)")
        for (ea, _), (eb, _) in zip(a.segments, b.segments):
            self.uf.union(ea, eb, f"node {node.name!r}")

    @staticmethod
    def _broadcast(a: _Channels, b: _Channels) -> tuple[_Channels, _Channels] | None:
        """(feature map, single-channel map) when one operand broadcasts over the other's channels."""
        if a.total == 1 and b.total != 1:
            return b, a
        if b.total == 1 and a.total != 1:
            return a, b
        return None

    def _add(self, node: torch.fx.Node, inputs: list[_Channels]) -> _Channels:
        """x ± y couples x and y; x ± c and x ± (one-channel map) keep masked channels zero only if c is 0."""
        if len(inputs) == 1:
            constants = [a for a in node.args if not isinstance(a, torch.fx.Node)]
            if all(isinstance(c, (int, float)) and c == 0 for c in constants):
                return inputs[0]
            return inputs[0].made_nonzero(f"{node.name} ({_target_name(node)} of a constant)")
        a, b = inputs[0], inputs[1]
        pair = self._broadcast(a, b)
        if pair is not None:
            return pair[0].made_nonzero(f"{node.name} ({_target_name(node)} of a one-channel map)")
        self._couple(node, a, b)
        return _Channels(a.segments, a.per_channel, tuple(x or y for x, y in zip(a.nonzero_by, b.nonzero_by)))

    def _mul(self, node: torch.fx.Node, inputs: list[_Channels]) -> _Channels:
        """x · y couples x and y (gating); a product is zero where either factor is."""
        if len(inputs) == 1:
            return inputs[0]  # x · c
        a, b = inputs[0], inputs[1]
        pair = self._broadcast(a, b)
        if pair is not None:
            return pair[0]  # spatial gating by a one-channel map
        self._couple(node, a, b)
        return _Channels(a.segments, a.per_channel, tuple(x if x and y else None for x, y in zip(a.nonzero_by, b.nonzero_by)))

    def _div(self, node: torch.fx.Node, inputs: list[_Channels]) -> _Channels:
        """x / c and x / (one-channel map) keep masked channels zero; dividing by a feature map is refused."""
        first = node.args[0] if node.args else None
        if not isinstance(first, torch.fx.Node) or self.values.get(first) is None:
            raise self._fail(node, "division by a feature map (a masked channel would divide by zero)")
        numerator = self.values[first]
        assert numerator is not None
        if len(inputs) == 1:
            return numerator
        pair = self._broadcast(inputs[0], inputs[1])
        if pair is None or pair[0] is not numerator:
            raise self._fail(node, "division by a feature map (a masked channel would divide by zero)")
        return numerator

    def _cat(self, node: torch.fx.Node, shape: tuple[int, ...] | None) -> _Channels:
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if shape is None or dim not in (1, 1 - len(shape)):
            raise self._fail(node, f"concatenation along dim {dim}; only the channel dimension (1) is supported")
        if not isinstance(tensors, (list, tuple)):
            raise self._fail(node, "expected a list of tensors")
        parts: list[tuple[int, int]] = []
        nonzero_by: list[str | None] = []
        per_channel = None
        for t in tensors:
            v = self.values.get(t) if isinstance(t, torch.fx.Node) else None
            if v is None:
                raise self._fail(node, "concatenating a tensor whose channels are unknown")
            if per_channel not in (None, v.per_channel):
                raise self._fail(node, "concatenating flattened tensors of different spatial sizes")
            per_channel = v.per_channel
            parts.extend(v.segments)
            nonzero_by.extend(v.nonzero_by)
        return _Channels(tuple(parts), per_channel or 1, tuple(nonzero_by))


def _activation_after(node: torch.fx.Node, modules: dict[str, nn.Module]) -> tuple[str | None, str]:
    """The BatchNorm module directly after `node` (if any) and the activation after that."""
    bn: str | None = None
    cur = node
    users = list(cur.users)
    if len(users) == 1 and users[0].op == "call_module" and isinstance(modules[str(users[0].target)], _NORM):
        bn = str(users[0].target)
        cur = users[0]
        users = list(cur.users)
    if len(users) == 1:
        u = users[0]
        if u.op == "call_module":
            act = _ACTIVATION_MODULES.get(type(modules[str(u.target)]))
            if act:
                return bn, act
        elif u.target in _ACTIVATION_FUNCTIONS:
            return bn, _ACTIVATION_FUNCTIONS[u.target]
    return bn, "none"


def _is_drop_module(module: nn.Module) -> bool:
    return any(cls.__name__ in _DROP_MODULE_NAMES for cls in type(module).__mro__)


class _LeafTracer(torch.fx.Tracer):
    """fx's tracer, with drop-path modules kept whole (their training branch reads the input's shape)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return _is_drop_module(m) or super().is_leaf_module(m, module_qualified_name)


def _as_batched(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        return (2, *shape)
    if len(shape) in (2, 4, 5) and all(s > 0 for s in shape):
        return shape
    raise TracingError(f"input_shape must be (C, H, W) or (N, C, H, W); got {tuple(input_shape)}")


def symbolic_trace(model: nn.Module) -> torch.fx.GraphModule:
    """`torch.fx.symbolic_trace` with an error that says what to change when tracing fails."""
    if not isinstance(model, nn.Module):
        raise TracingError(f"expected a torch.nn.Module, got {type(model).__name__}")
    try:
        tracer = _LeafTracer()
        graph = tracer.trace(model)
        name = model.__class__.__name__
        return torch.fx.GraphModule(tracer.root, graph, name)
    except Exception as exc:  # fx raises many kinds (TraceError, TypeError, NotImplementedError, ...)
        raise TracingError(
            f"torch.fx cannot trace {type(model).__name__}: {type(exc).__name__}: {exc}. "
            "hwdsa needs a forward pass without data-dependent Python control flow; wrap such code in a leaf "
            "module or rewrite it with tensor operations."
        ) from exc


def trace_channel_graph(model: nn.Module, input_shape: Sequence[int]) -> ChannelGraph:
    """Trace `model` and derive its channel groups, layers and BatchNorms.

    Args:
        model: any CNN built from standard modules; it is not modified (its mode is restored).
        input_shape: (C, H, W) or (N, C, H, W) of the input the network is deployed with; spatial sizes
            of every layer (needed by FLOPs and latency) come from propagating it.

    Raises:
        TracingError: the model cannot be traced or grouped; the message names the node and why.
        NoPrunableLayerError: tracing worked but no channel may be pruned.

    Example:
        >>> import torchvision
        >>> graph = trace_channel_graph(torchvision.models.resnet18(), (3, 64, 64))
        >>> len(graph.groups)
        12
    """
    gm = symbolic_trace(model)
    batched = _as_batched(input_shape)
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        example = torch.zeros(batched, device=param.device if param is not None else "cpu")
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except TracingError:
        raise
    except Exception as exc:
        raise TracingError(
            f"running {type(model).__name__} on an input of shape {batched} failed: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        model.train(was_training)

    tracer = _Tracer(gm)
    tracer.run()
    uf = tracer.uf

    # Groups, numbered by first producing layer in execution order.
    group_of_root: dict[int, int] = {}
    for _, info in tracer.layers:
        root = uf.find(info["output"].segments[0][0])
        if not uf.frozen[root] and root not in group_of_root:
            group_of_root[root] = len(group_of_root)

    def group_of(element: int) -> int | None:
        return group_of_root.get(uf.find(element))

    if not group_of_root:
        raise NoPrunableLayerError(
            f"{type(model).__name__} has no prunable channel group: every convolution or linear output is tied "
            "to the network's input or output, or sits in a grouped convolution"
        )

    layers: list[LayerNode] = []
    producers: dict[int, list[str]] = {g: [] for g in group_of_root.values()}
    consumers: dict[int, list[str]] = {g: [] for g in group_of_root.values()}
    sites: dict[int, list[str]] = {g: [] for g in group_of_root.values()}
    for node, info in tracer.layers:
        name = str(node.target)
        mod = info["module"]
        x: _Channels = info["input"]
        out_group = group_of(info["output"].segments[0][0])
        segments = []
        offset = 0
        for e, c in x.segments:
            segments.append(InputSegment(group_of(e), c, offset))
            offset += c
        is_dw = bool(info.get("depthwise"))
        bn, activation = _activation_after(node, tracer.modules)
        if info["kind"] == "conv":
            layer = LayerNode(
                name=name,
                kind="conv",
                in_channels=int(mod.in_channels),
                out_channels=int(mod.out_channels),
                in_segments=tuple(segments),
                out_group=out_group,
                is_depthwise=is_dw,
                conv_groups=int(mod.groups),
                kernel_size=tuple(int(k) for k in mod.kernel_size),
                stride=tuple(int(s) for s in mod.stride),
                in_spatial=tuple(info["in_shape"][2:]),
                out_spatial=tuple(info["out_shape"][2:]),
                has_bias=mod.bias is not None,
                padding=tuple(int(p) for p in mod.padding) if not isinstance(mod.padding, str) else (),
                activation=activation,
            )
        else:
            layer = LayerNode(
                name=name,
                kind="linear",
                in_channels=int(mod.in_features),
                out_channels=int(mod.out_features),
                in_segments=tuple(segments),
                out_group=out_group,
                is_depthwise=False,
                conv_groups=1,
                kernel_size=(),
                stride=(),
                in_spatial=(),
                out_spatial=(),
                has_bias=mod.bias is not None,
                features_per_channel=x.per_channel,
                activation=activation,
            )
        layers.append(layer)
        if out_group is not None:
            producers[out_group].append(name)
            sites[out_group].append(bn or name)
        if not is_dw:
            for seg in segments:
                if seg.group is not None and name not in consumers[seg.group]:
                    consumers[seg.group].append(name)

    norms: list[NormNode] = []
    norm_names: dict[int, list[str]] = {g: [] for g in group_of_root.values()}
    for name, element in tracer.norms:
        mod = tracer.modules[name]
        g = group_of(element) if element >= 0 else None
        norms.append(NormNode(name, g, int(mod.num_features), bool(mod.affine)))
        if g is not None:
            norm_names[g].append(name)
            if name not in sites[g]:
                sites[g].append(name)

    groups = tuple(
        ChannelGroup(
            index=g,
            channels=uf.channels[root],
            producers=tuple(producers[g]),
            consumers=tuple(consumers[g]),
            norms=tuple(norm_names[g]),
            mask_sites=tuple(sites[g]),
        )
        for root, g in sorted(group_of_root.items(), key=lambda kv: kv[1])
    )
    tracked = {layer.name for layer in layers} | {n.name for n in norms}
    fixed_params = sum(
        p.numel() for mname, mod in model.named_modules() if mname not in tracked for p in mod.parameters(recurse=False)
    )
    _log.debug("traced %s: %d groups, %d layers", type(model).__name__, len(groups), len(layers))
    return ChannelGraph(
        groups=groups,
        layers=tuple(layers),
        norms=tuple(norms),
        input_shape=batched[1:],
        fixed_params=int(fixed_params),
    )
