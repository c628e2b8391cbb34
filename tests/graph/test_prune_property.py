"""Property test of tracer + masks + surgery + costs on a few hundred random small CNNs.

The property (design note, sections 3 and 6): for every model the tracer accepts and every pruning plan,

  (a) in eval mode the masked dense network (`ChannelMasks` set to `plan.to_masks()`) computes exactly what
      the physically pruned network (`prune(model, graph, plan)`) computes, and
  (b) the pruned network's MACs and parameters, counted by forward hooks on the pruned network itself, are
      what `FlopsCost(graph).exact(plan.channels)` and `ParamsCost(graph).exact(plan.channels)` predict
      from the graph alone (and what `hwdsa.counting` measures);

and the tracer either accepts a model or refuses it with a `TracingError` (`NoPrunableLayerError` included)
that says why. Refusals are valid answers, but the generator only uses operations the tracer is meant to
handle, so the refusal rate is bounded: the test cannot pass by refusing everything.

Each model comes from a seed: `random_spec(seed)` draws a plain-data description (a list of blocks and a
head), `build(spec)` turns it into an `nn.Module` whose forward torch.fx can trace, and `random_plan` draws
keep ratios (1 channel, every channel, anything between) and importances. A failure names the seed and
the model (`pytest tests/graph/test_prune_property.py -k "match[17]"` reruns seed 17;
`describe(random_spec(17))` prints the model again). About 15-25 s on one core.

Covered: plain, depthwise, grouped (and channel-multiplier) convolutions with and without bias; BatchNorm
present (affine or not), absent, or after the activation; ReLU, ReLU6, LeakyReLU, GELU, SiLU, Hardswish,
Tanh, ELU, x * 2 as modules or functions, and operations with f(0) != 0 (Sigmoid, Hardsigmoid, x + 0.5,
x - 0.5) as activations; a BatchNorm on its own (after an add, an activation, over a concatenation);
residual blocks (identity or projection shortcut, added by +, torch.add or Tensor.add) with Dropout /
Identity / torchvision's StochasticDepth on the branch; squeeze-excite gating
x * gate(conv(relu(conv(pool(x))))) with a Sigmoid or Hardsigmoid gate, full-resolution attention
x * sigmoid(conv1x1(x)), spatial gating by a one-channel map (and adding a one-channel map, f(0) != 0 too);
torch.cat along channels (of x itself, of activations of x, of convolutions); max/avg pooling; heads with
adaptive pooling or `mean`, flatten (torch.flatten, nn.Flatten, view, with and without spatial positions
left), a hidden Linear (with BatchNorm1d sometimes) and Dropout, or a convolution / pooled map as the
network's output.
"""

from __future__ import annotations

import copy
import functools
import math
import random
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from hwdsa.costs import FlopsCost, ParamsCost
from hwdsa.counting import count_flops, count_params
from hwdsa.errors import NoPrunableLayerError, TracingError
from hwdsa.graph import ChannelGraph, trace_channel_graph
from hwdsa.importance import group_importance
from hwdsa.masking import ChannelMasks
from hwdsa.surgery import PruningPlan, plan_from_channels, plan_from_keep_ratios, prune

N_MODELS = 300
SEEDS = range(N_MODELS)
PLANS_PER_MODEL = 2
MAX_REFUSAL_RATE = 0.30
# Masked and pruned outputs are compared in float64: removing a channel only changes the summation order,
# while a channel that leaks through a mask changes the output by the order of a weight.
ATOL, RTOL = 1e-5, 1e-4


# ---------------------------------------------------------------------------------------------------------
# the vocabulary
# ---------------------------------------------------------------------------------------------------------
class Fn(nn.Module):
    """A parameter-free function as a module; fx traces through it, so the call is recorded as a function."""

    def __init__(self, label: str, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.label = label
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.label


def _add_half(x: Tensor) -> Tensor:
    return x + 0.5


def _sub_half(x: Tensor) -> Tensor:
    return x - 0.5


def _times_two(x: Tensor) -> Tensor:
    return x * 2.0


def _max_pool_2(x: Tensor) -> Tensor:
    return F.max_pool2d(x, 2)


def _adaptive_avg_1(x: Tensor) -> Tensor:
    return F.adaptive_avg_pool2d(x, 1)


# label -> factory. Activations that map 0 to 0 ...
ZERO_PRESERVING: dict[str, Callable[[], nn.Module]] = {
    "ReLU": nn.ReLU,
    "ReLU(inplace)": lambda: nn.ReLU(inplace=True),
    "F.relu": lambda: Fn("F.relu", F.relu),
    "torch.relu": lambda: Fn("torch.relu", torch.relu),
    "ReLU6": nn.ReLU6,
    "F.relu6": lambda: Fn("F.relu6", F.relu6),
    "LeakyReLU": lambda: nn.LeakyReLU(0.1),
    "F.leaky_relu": lambda: Fn("F.leaky_relu", F.leaky_relu),
    "GELU": nn.GELU,
    "F.gelu": lambda: Fn("F.gelu", F.gelu),
    "SiLU": nn.SiLU,
    "F.silu": lambda: Fn("F.silu", F.silu),
    "Hardswish": nn.Hardswish,
    "F.hardswish": lambda: Fn("F.hardswish", F.hardswish),
    "Tanh": nn.Tanh,
    "torch.tanh": lambda: Fn("torch.tanh", torch.tanh),
    "ELU": nn.ELU,
    "x*2": lambda: Fn("x*2", _times_two),
}
# ... and operations with f(0) != 0: after them a masked channel is no longer zero.
NONZERO_AT_ZERO: dict[str, Callable[[], nn.Module]] = {
    "Sigmoid": nn.Sigmoid,
    "torch.sigmoid": lambda: Fn("torch.sigmoid", torch.sigmoid),
    "Hardsigmoid": nn.Hardsigmoid,
    "F.hardsigmoid": lambda: Fn("F.hardsigmoid", F.hardsigmoid),
    "x+0.5": lambda: Fn("x+0.5", _add_half),
    "x-0.5": lambda: Fn("x-0.5", _sub_half),
}
ACTIVATIONS = {**ZERO_PRESERVING, **NONZERO_AT_ZERO}
GATES = ["Sigmoid", "torch.sigmoid", "Hardsigmoid", "F.hardsigmoid"]
DROPS: dict[str, Callable[[], nn.Module]] = {
    "Dropout": lambda: nn.Dropout(0.2),
    "Dropout2d": lambda: nn.Dropout2d(0.2),
    "Identity": nn.Identity,
    "StochasticDepth": lambda: torchvision.ops.StochasticDepth(0.2, "row"),
}


def _activation(rng: random.Random) -> str:
    """Mostly zero-preserving activations; about one in five maps 0 to a non-zero value."""
    pool = NONZERO_AT_ZERO if rng.random() < 0.2 else ZERO_PRESERVING
    return rng.choice(sorted(pool))


# ---------------------------------------------------------------------------------------------------------
# specs: plain data, drawn from a seed
# ---------------------------------------------------------------------------------------------------------
Spec = dict[str, Any]


def _conv_out(size: int, k: int, stride: int) -> int:
    return (size + 2 * (k // 2) - k) // stride + 1


def _conv_spec(
    rng: random.Random, cin: int, size: int, *, cout: int | None = None, style: str = "plain", act: bool = True
) -> Spec:
    """One convolution with optional BatchNorm and activation (in either order)."""
    k = rng.choice([1, 3, 3])
    stride = 2 if size >= 4 and rng.random() < 0.2 else 1
    groups = 1
    if style == "depthwise":
        groups, cout = cin, cin
    elif style == "multiplier":
        groups, cout = cin, 2 * cin
    elif style == "grouped":
        divisors = [g for g in range(2, cin) if cin % g == 0]
        if divisors:
            groups = rng.choice(divisors)
            cout = groups * rng.randint(max(1, 4 // groups), max(1, 16 // groups))
    if cout is None:
        cout = rng.randint(4, 16)
    norm = rng.choices(["bn", "bn-noaffine", None], weights=[6, 1, 3])[0]
    return {
        "kind": "conv",
        "cin": cin,
        "cout": cout,
        "k": k,
        "stride": stride,
        "groups": groups,
        "bias": norm is None or rng.random() < 0.3,
        "norm": norm,
        "act": _activation(rng) if act and rng.random() < 0.85 else None,
        "act_first": norm is not None and rng.random() < 0.15,  # conv → act → BN
    }


def _stride_size(spec: Spec, size: int) -> int:
    return _conv_out(size, spec["k"], spec["stride"])


def random_spec(seed: int) -> Spec:
    """A random small CNN as plain data; shapes are tracked so every spec builds and runs."""
    rng = random.Random(seed)
    input_size = size = rng.choice([8, 12])
    stem = _conv_spec(rng, 3, size)
    blocks: list[Spec] = [stem]
    c, size = stem["cout"], _stride_size(stem, size)
    multi = False  # the current tensor is a concatenation (several channel segments)
    for _ in range(rng.randint(1, 5)):
        kinds = ["conv", "dw", "grouped", "act", "bn", "pool", "drop", "cat", "sgate", "sadd"]
        weights = [5, 2, 1, 1, 1, 1, 1, 2, 1, 0.5]
        if not multi:  # these couple x with a new single-segment tensor: the tracer would refuse a concatenation
            kinds += ["res", "se", "attn"]
            weights += [4, 2, 1]
        kind = rng.choices(kinds, weights=weights)[0]
        if kind == "conv":
            b = _conv_spec(rng, c, size)
        elif kind == "dw":
            b = _conv_spec(rng, c, size, style="depthwise")
        elif kind == "grouped":
            b = _conv_spec(rng, c, size, style=rng.choice(["grouped", "multiplier"]) if c <= 16 else "grouped")
        elif kind == "act":
            b = {"kind": "act", "act": _activation(rng)}
        elif kind == "bn":  # after a residual add, an activation, or over a concatenation
            b = {"kind": "bn", "c": c, "affine": rng.random() < 0.8}
        elif kind == "drop":
            b = {"kind": "drop", "op": rng.choice(sorted(DROPS))}
        elif kind == "pool":
            if size < 2:
                continue
            b = {"kind": "pool", "op": rng.choice(["MaxPool2d(2)", "AvgPool2d(2)", "F.max_pool2d(2)", "MaxPool2d(3,2,1)"])}
        elif kind == "cat":
            parts: list[Spec] = []
            for _ in range(rng.randint(2, 3)):
                r = rng.random()
                if r < 0.25:
                    parts.append({"kind": "identity", "cout": c})
                elif r < 0.4:
                    parts.append({"kind": "act", "act": _activation(rng), "cout": c})
                else:
                    p = _conv_spec(rng, c, size)
                    p["stride"] = 1  # branches must keep the spatial size
                    parts.append(p)
            b = {"kind": "cat", "parts": parts, "dim": rng.choice([1, 1, -3])}
        elif kind == "res":
            cout = c if rng.random() < 0.7 else rng.randint(4, 16)
            stride = 2 if size >= 4 and rng.random() < 0.2 else 1
            proj = cout != c or stride != 1 or rng.random() < 0.15
            first = _conv_spec(rng, c, size, cout=rng.randint(4, 16))
            first["stride"] = stride
            second = _conv_spec(rng, first["cout"], size, cout=cout, act=False)
            second["stride"] = 1
            b = {
                "kind": "res",
                "cin": c,
                "cout": cout,
                "branch": [first, second],
                "drop": rng.choice([None, None, *sorted(DROPS)]),
                "shortcut": {"kind": "conv", "cin": c, "cout": cout, "k": 1, "stride": stride, "groups": 1, "bias": False,
                             "norm": rng.choice(["bn", None]), "act": None, "act_first": False} if proj else None,
                "shortcut_first": rng.random() < 0.5,
                "add": rng.choice(["+", "+", "torch.add", ".add"]),
                "post": _activation(rng) if rng.random() < 0.7 else None,
            }
        elif kind == "se":
            b = {"kind": "se", "c": c, "mid": rng.randint(2, max(2, c // 2)), "gate": rng.choice(GATES),
                 "pool": rng.choice(["AdaptiveAvgPool2d", "mean"]), "gate_first": rng.random() < 0.5}
        elif kind == "attn":
            b = {"kind": "attn", "c": c, "norm": rng.random() < 0.5, "gate": rng.choice(GATES),
                 "gate_first": rng.random() < 0.5}
        elif kind == "sgate":
            b = {"kind": "sgate", "c": c, "k": rng.choice([1, 3]), "gate": rng.choice(GATES),
                 "gate_first": rng.random() < 0.5}
        else:  # "sadd": x + (one-channel map), a spatial bias
            b = {"kind": "sadd", "c": c, "k": rng.choice([1, 3])}
        blocks.append(b)
        # track the shape
        if b["kind"] == "conv":
            c, size, multi = b["cout"], _stride_size(b, size), False
        elif b["kind"] == "pool":
            size = size // 2 if b["op"] != "MaxPool2d(3,2,1)" else _conv_out(size, 3, 2)
        elif b["kind"] == "cat":
            c, multi = sum(p["cout"] for p in b["parts"]), True
        elif b["kind"] == "res":
            c, size = b["cout"], _conv_out(size, 1, b["shortcut"]["stride"] if b["shortcut"] else 1)
    head = _head_spec(rng, c, size)
    return {"input": (3, input_size, input_size), "blocks": blocks, "head": head}


def _head_spec(rng: random.Random, c: int, size: int) -> Spec:
    kind = rng.choices(["linear", "map", "pooled"], weights=[8, 1, 1])[0]
    if kind == "map":
        return {"kind": "map", "cin": c, "classes": rng.randint(2, 6)}  # a 1x1 conv's map is the output
    if kind == "pooled":
        return {"kind": "pooled"}  # x.mean((2, 3)) is the output
    pools = ["AdaptiveAvgPool2d(1)", "AdaptiveMaxPool2d(1)", "F.adaptive_avg_pool2d(1)", "mean", None]
    if size >= 2:
        pools.append("AdaptiveAvgPool2d(2)")
    pool = rng.choice(pools)
    positions = 4 if pool == "AdaptiveAvgPool2d(2)" else (size * size if pool is None else 1)
    hidden = rng.randint(4, 16) if rng.random() < 0.4 else None
    return {
        "kind": "linear",
        "pool": pool,
        "flatten": rng.choice(["torch.flatten", "nn.Flatten", "view", "x.flatten"]),
        "features": c * positions,
        "hidden": hidden,
        "hidden_bn": hidden is not None and rng.random() < 0.4,
        "hidden_act": _activation(rng) if hidden is not None else None,
        "dropout": rng.random() < 0.3,
        "classes": rng.randint(2, 10),
    }


def _conv_style(s: Spec) -> str:
    if s["groups"] == 1:
        return "conv"
    if s["groups"] == s["cin"] == s["cout"]:
        return "depthwise conv"
    return "channel-multiplier conv" if s["groups"] == s["cin"] else "grouped conv"


def ops_in(spec: Spec) -> set[str]:
    """The vocabulary a spec uses: activation / drop labels, conv styles, block and head kinds."""
    ops: set[str] = set()

    def conv(s: Spec) -> None:
        ops.add(_conv_style(s))
        ops.update(x for x in (s["act"], s["norm"]) if x)

    for b in spec["blocks"]:
        ops.add(b["kind"])
        if b["kind"] == "conv":
            conv(b)
        elif b["kind"] in ("act", "drop"):
            ops.add(b.get("act") or b["op"])
        elif b["kind"] == "cat":
            for p in b["parts"]:
                if p["kind"] == "conv":
                    conv(p)
                elif p["kind"] == "act":
                    ops.add(p["act"])
        elif b["kind"] == "res":
            for c in [*b["branch"], *([b["shortcut"]] if b["shortcut"] else [])]:
                conv(c)
            ops.update(x for x in (b["drop"], b["post"]) if x)
        elif b["kind"] in ("se", "attn", "sgate"):
            ops.add(b["gate"])
    h = spec["head"]
    ops.add(f"{h['kind']} head")
    if h["kind"] == "linear":
        ops.update(x for x in (h["pool"] or "flatten C*H*W", h["flatten"], h["hidden_act"]) if x)
        ops.update(x for x, on in (("hidden fc", h["hidden"]), ("BatchNorm1d", h["hidden_bn"])) if on)
    return ops


def _conv_text(s: Spec) -> str:
    kind = "dw" if s["groups"] == s["cin"] == s["cout"] else (f"g{s['groups']}" if s["groups"] > 1 else "")
    flags = (",s2" if s["stride"] == 2 else "") + (",bias" if s["bias"] else "")
    parts = [f"conv{s['k']}x{s['k']}{kind}({s['cin']}→{s['cout']}{flags})"]
    post = [x for x in (s["norm"], s["act"]) if x]
    if s["act_first"]:
        post.reverse()
    return "-".join(parts + post)


def describe(spec: Spec) -> str:
    """One line per block: enough to rebuild the model by hand."""
    lines = [f"input {spec['input']}"]
    for b in spec["blocks"]:
        k = b["kind"]
        if k == "conv":
            text = _conv_text(b)
        elif k in ("act", "drop", "pool"):
            text = b.get("act") or b.get("op")
        elif k == "bn":
            text = f"BatchNorm2d({b['c']}{'' if b['affine'] else ', affine=False'})"
        elif k == "cat":
            parts = [
                "x" if p["kind"] == "identity" else (p["act"] + "(x)" if p["kind"] == "act" else _conv_text(p))
                for p in b["parts"]
            ]
            text = f"cat(dim={b['dim']})[{', '.join(parts)}]"
        elif k == "res":
            short = _conv_text(b["shortcut"]) if b["shortcut"] else "x"
            branch = " → ".join(_conv_text(s) for s in b["branch"]) + (f" → {b['drop']}" if b["drop"] else "")
            text = f"res[{short} {b['add']} ({branch})]" + (f" → {b['post']}" if b["post"] else "")
        elif k == "se":
            text = f"x * {b['gate']}(conv1x1(relu(conv1x1({b['c']}→{b['mid']})({b['pool']}(x)))))"
        elif k == "attn":
            text = f"x * {b['gate']}({'bn(' if b['norm'] else ''}conv1x1({b['c']}→{b['c']})(x){')' if b['norm'] else ''})"
        elif k == "sgate":
            text = f"x * {b['gate']}(conv{b['k']}x{b['k']}({b['c']}→1)(x))"
        else:
            text = f"x + conv{b['k']}x{b['k']}({b['c']}→1)(x)"
        lines.append(text)
    h = spec["head"]
    if h["kind"] == "map":
        lines.append(f"head: conv1x1({h['cin']}→{h['classes']}) map as output")
    elif h["kind"] == "pooled":
        lines.append("head: x.mean((2, 3)) as output")
    else:
        hidden = ""
        if h["hidden"]:
            hidden = f" → fc({h['hidden']}){' → BatchNorm1d' if h['hidden_bn'] else ''} → {h['hidden_act']}"
        lines.append(
            f"head: {h['pool'] or 'no pool'} → {h['flatten']} → {'Dropout → ' if h['dropout'] else ''}"
            f"fc({h['features']}){hidden} → fc({h['classes']})"
        )
    return " | ".join(lines)


# ---------------------------------------------------------------------------------------------------------
# the builder
# ---------------------------------------------------------------------------------------------------------
def _conv(s: Spec) -> nn.Sequential:
    conv = nn.Conv2d(s["cin"], s["cout"], s["k"], s["stride"], s["k"] // 2, groups=s["groups"], bias=s["bias"])
    post: list[nn.Module] = []
    if s["norm"]:
        post.append(nn.BatchNorm2d(s["cout"], affine=s["norm"] == "bn"))
    if s["act"]:
        post.append(ACTIVATIONS[s["act"]]())
    if s["act_first"]:
        post.reverse()
    return nn.Sequential(conv, *post)


class Residual(nn.Module):
    def __init__(self, s: Spec) -> None:
        super().__init__()
        self.branch = nn.Sequential(*(_conv(c) for c in s["branch"]), *([DROPS[s["drop"]]()] if s["drop"] else []))
        self.shortcut = _conv(s["shortcut"]) if s["shortcut"] else None
        self.post = ACTIVATIONS[s["post"]]() if s["post"] else None
        self.shortcut_first = s["shortcut_first"]
        self.add = s["add"]

    def forward(self, x: Tensor) -> Tensor:
        y = self.branch(x)
        short = x if self.shortcut is None else self.shortcut(x)
        a, b = (short, y) if self.shortcut_first else (y, short)
        if self.add == "torch.add":
            out = torch.add(a, b)
        elif self.add == ".add":
            out = a.add(b)
        else:
            out = a + b
        return out if self.post is None else self.post(out)


class SqueezeExcite(nn.Module):
    """x * gate(conv1x1(relu(conv1x1(pool(x))))), as in SE-Net / MobileNetV3."""

    def __init__(self, s: Spec) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1) if s["pool"] == "AdaptiveAvgPool2d" else None
        self.reduce = nn.Conv2d(s["c"], s["mid"], 1)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(s["mid"], s["c"], 1)
        self.gate = ACTIVATIONS[s["gate"]]()
        self.gate_first = s["gate_first"]

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool(x) if self.pool is not None else x.mean((2, 3), keepdim=True)
        g = self.gate(self.expand(self.relu(self.reduce(pooled))))
        return g * x if self.gate_first else x * g


class Gate(nn.Module):
    """x * gate(conv(x)): full-resolution channel attention (c → c) or spatial gating (c → 1)."""

    def __init__(self, c: int, out: int, k: int, norm: bool, gate: str, gate_first: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, out, k, padding=k // 2)
        self.norm = nn.BatchNorm2d(out) if norm else None
        self.gate = ACTIVATIONS[gate]()
        self.gate_first = gate_first

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        g = self.gate(y if self.norm is None else self.norm(y))
        return g * x if self.gate_first else x * g


class SpatialBias(nn.Module):
    """x + conv(x → 1): a one-channel map broadcast-added over every channel."""

    def __init__(self, c: int, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, 1, k, padding=k // 2)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x)


class Concat(nn.Module):
    def __init__(self, s: Spec) -> None:
        super().__init__()
        parts: list[nn.Module] = []
        for p in s["parts"]:
            if p["kind"] == "identity":
                parts.append(nn.Identity())
            elif p["kind"] == "act":
                parts.append(ACTIVATIONS[p["act"]]())
            else:
                parts.append(_conv(p))
        self.parts = nn.ModuleList(parts)
        self.dim = s["dim"]

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([p(x) for p in self.parts], dim=self.dim)


def _pool(op: str) -> nn.Module:
    return {
        "MaxPool2d(2)": lambda: nn.MaxPool2d(2),
        "AvgPool2d(2)": lambda: nn.AvgPool2d(2),
        "F.max_pool2d(2)": lambda: Fn("F.max_pool2d(2)", _max_pool_2),
        "MaxPool2d(3,2,1)": lambda: nn.MaxPool2d(3, 2, 1),
    }[op]()


class Head(nn.Module):
    def __init__(self, s: Spec) -> None:
        super().__init__()
        self.kind = s["kind"]
        if self.kind == "map":
            self.conv = nn.Conv2d(s["cin"], s["classes"], 1)
            return
        if self.kind == "pooled":
            return
        pool = s["pool"]
        self.pool_kind = pool
        self.pool = {
            "AdaptiveAvgPool2d(1)": lambda: nn.AdaptiveAvgPool2d(1),
            "AdaptiveMaxPool2d(1)": lambda: nn.AdaptiveMaxPool2d(1),
            "AdaptiveAvgPool2d(2)": lambda: nn.AdaptiveAvgPool2d(2),
            "F.adaptive_avg_pool2d(1)": lambda: Fn("F.adaptive_avg_pool2d(1)", _adaptive_avg_1),
        }[pool]() if pool not in (None, "mean") else None
        self.flatten_kind = s["flatten"]
        self.flatten = nn.Flatten() if s["flatten"] == "nn.Flatten" else None
        self.dropout = nn.Dropout(0.3) if s["dropout"] else None
        layers: list[nn.Module] = []
        features = s["features"]
        if s["hidden"]:
            layers.append(nn.Linear(features, s["hidden"]))
            if s["hidden_bn"]:
                layers.append(nn.BatchNorm1d(s["hidden"]))
            layers.append(ACTIVATIONS[s["hidden_act"]]())
            features = s["hidden"]
        layers.append(nn.Linear(features, s["classes"]))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "map":
            return self.conv(x)
        if self.kind == "pooled":
            return x.mean((2, 3))
        if self.pool_kind == "mean":
            x = x.mean((2, 3))
        elif self.pool is not None:
            x = self.pool(x)
        if self.flatten is not None:
            x = self.flatten(x)
        elif self.flatten_kind == "torch.flatten":
            x = torch.flatten(x, 1)
        elif self.flatten_kind == "view":
            x = x.view(x.size(0), -1)
        else:
            x = x.flatten(1)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.mlp(x)


class RandomNet(nn.Module):
    def __init__(self, spec: Spec) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for b in spec["blocks"]:
            k = b["kind"]
            if k == "conv":
                blocks.append(_conv(b))
            elif k == "act":
                blocks.append(ACTIVATIONS[b["act"]]())
            elif k == "bn":
                blocks.append(nn.BatchNorm2d(b["c"], affine=b["affine"]))
            elif k == "drop":
                blocks.append(DROPS[b["op"]]())
            elif k == "pool":
                blocks.append(_pool(b["op"]))
            elif k == "cat":
                blocks.append(Concat(b))
            elif k == "res":
                blocks.append(Residual(b))
            elif k == "se":
                blocks.append(SqueezeExcite(b))
            elif k == "attn":
                blocks.append(Gate(b["c"], b["c"], 1, b["norm"], b["gate"], b["gate_first"]))
            elif k == "sgate":
                blocks.append(Gate(b["c"], 1, b["k"], False, b["gate"], b["gate_first"]))
            elif k == "sadd":
                blocks.append(SpatialBias(b["c"], b["k"]))
            else:
                raise AssertionError(k)
        self.blocks = nn.ModuleList(blocks)
        self.head = Head(spec["head"])

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def build(spec: Spec, seed: int) -> nn.Module:
    """The model of `spec`, with seeded weights and random BatchNorm statistics and affine parameters, in eval mode."""
    torch.manual_seed(seed)
    model = RandomNet(spec)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                # A BatchNorm of a zero channel is then not zero: a channel that leaks past a mask shows.
                m.running_mean.uniform_(-1.0, 1.0)
                m.running_var.uniform_(0.5, 2.0)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-1.0, 1.0)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# plans and the independent counter
# ---------------------------------------------------------------------------------------------------------
def random_plan(rng: random.Random, model: nn.Module, graph: ChannelGraph) -> PruningPlan:
    """Per group 1 channel, every channel or anything between; importances random or from the weights."""
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    if rng.random() < 0.5:
        importance = [torch.rand(c, generator=gen) for c in graph.group_sizes]
    else:
        importance = group_importance(model, graph, rng.choice(["first", "sum_normalized"]))
    counts = []
    for size in graph.group_sizes:
        r = rng.random()
        counts.append(1 if r < 0.2 else size if r < 0.35 else rng.randint(1, size))
    if rng.random() < 0.5:
        return plan_from_channels(graph, importance, counts)
    # ratios that round to the same counts (halves round up), and tiny ratios that still keep one channel
    ratios = [
        1e-6 if k == 1 and rng.random() < 0.5 else (k - rng.uniform(0.0, 0.49)) / size
        for k, size in zip(counts, graph.group_sizes)
    ]
    return plan_from_keep_ratios(graph, importance, ratios)


def hook_count(model: nn.Module, x: Tensor) -> tuple[int, int]:
    """Per-sample MACs and parameters of `model`, from the tensor shapes its layers see on `x`.

    Conventions of `hwdsa.counting` (and of `FlopsCost` / `ParamsCost`): MACs are those of convolutions
    (output elements · input channels / groups · kernel elements) and linear layers (outputs · inputs);
    bias additions, BatchNorm, activations, pooling and element-wise operations cost nothing. Parameters are
    every parameter: convolution and linear weights and biases, BatchNorm affine weight and bias (its running
    statistics are buffers, not counted). Each module runs once (the tracer refuses shared modules).
    """
    macs = params = 0

    def conv_hook(mod: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal macs, params
        assert isinstance(mod, nn.Conv2d)
        per_output = inputs[0].shape[1] // mod.groups * math.prod(mod.weight.shape[2:])
        macs += out[0].numel() * per_output
        params += out.shape[1] * per_output + (out.shape[1] if mod.bias is not None else 0)

    def linear_hook(mod: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal macs, params
        assert isinstance(mod, nn.Linear)
        macs += out[0].numel() * inputs[0].shape[-1]
        params += out.shape[-1] * inputs[0].shape[-1] + (out.shape[-1] if mod.bias is not None else 0)

    def norm_hook(mod: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal params
        assert isinstance(mod, nn.modules.batchnorm._BatchNorm)
        params += 2 * out.shape[1] if mod.affine else 0

    hooks = {nn.Conv2d: conv_hook, nn.Linear: linear_hook, nn.BatchNorm1d: norm_hook, nn.BatchNorm2d: norm_hook}
    handles = []
    for m in model.modules():
        hook = hooks.get(type(m))
        if hook is not None:
            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return macs, params


# ---------------------------------------------------------------------------------------------------------
# the property
# ---------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def traced(seed: int) -> tuple[Spec, nn.Module, ChannelGraph | None, TracingError | None]:
    """(spec, model, graph or None, refusal or None) of `seed`; cached so both tests trace each model once."""
    spec = random_spec(seed)
    model = build(spec, seed)
    try:
        graph = trace_channel_graph(model, spec["input"])
    except TracingError as exc:  # NoPrunableLayerError is one; anything else fails the test
        return spec, model, None, exc
    return spec, model, graph, None


def _assert_same(measured: int, predicted: float, what: str) -> None:
    # The cost models evaluate a quadratic form in float64: equal up to round-off (a real miss is >= 1).
    assert abs(measured - predicted) <= 1e-9 * max(1.0, abs(predicted)), f"{what}: {measured} != {predicted}"


def check_plan(model: nn.Module, graph: ChannelGraph, plan: PruningPlan, x: Tensor) -> None:
    with ChannelMasks(model, graph) as masks, torch.no_grad():
        masks.set_masks(plan.to_masks())
        masked = model(x)
    pruned = prune(model, graph, plan)
    with torch.no_grad():
        out = pruned(x)
    torch.testing.assert_close(out, masked, atol=ATOL, rtol=RTOL, msg=lambda m: f"(a) masked dense != pruned: {m}")

    macs, params = hook_count(pruned, x)
    _assert_same(macs, FlopsCost(graph).exact(plan.channels), "(b) pruned MACs by hooks != FlopsCost.exact")
    _assert_same(params, ParamsCost(graph).exact(plan.channels), "(b) pruned parameters by hooks != ParamsCost.exact")
    # hwdsa.counting measures the same thing its own way (float32: it feeds zeros of the default dtype).
    assert count_params(pruned) == params, f"(b) count_params {count_params(pruned)} != hook count {params}"
    measured = count_flops(copy.deepcopy(pruned).float(), graph.input_shape)
    assert measured == macs, f"(b) count_flops {measured} != hook count {macs}"


@pytest.mark.parametrize("seed", SEEDS)
def test_masked_equals_pruned_and_costs_match(seed: int) -> None:
    spec, model, graph, refusal = traced(seed)
    suspects = sorted(ops_in(spec) & {*NONZERO_AT_ZERO, "sadd"})
    where = f"seed {seed}: {describe(spec)}\n(operations with f(0) != 0 outside gates in this model: {suspects or 'none'})"
    if refusal is not None:
        assert str(refusal).strip(), f"{where}: refused with an empty message ({type(refusal).__name__})"
        return  # a valid refusal; test_refusal_rate bounds how many there are
    assert graph is not None
    rng = random.Random(10_000 + seed)
    x = torch.randn((3, *spec["input"]), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    model = copy.deepcopy(model).double()
    try:
        dense_macs, dense_params = hook_count(model, x)
        _assert_same(dense_macs, FlopsCost(graph).dense, "dense MACs by hooks != FlopsCost.dense")
        _assert_same(dense_params, ParamsCost(graph).dense, "dense parameters by hooks != ParamsCost.dense")
        for i in range(PLANS_PER_MODEL):
            plan = random_plan(rng, model, graph)
            try:
                check_plan(model, graph, plan, x)
            except AssertionError as exc:
                raise AssertionError(f"plan {i} keeps {list(plan.channels)} of {list(plan.group_sizes)}: {exc}") from None
    except Exception as exc:
        raise AssertionError(f"{where}\n{type(exc).__name__}: {exc}") from exc


def _refusal_reason(exc: TracingError) -> str:
    if isinstance(exc, NoPrunableLayerError):
        return "no prunable group (NoPrunableLayerError)"
    text = str(exc)
    m = re.search(r"unsupported module type (\w+)", text) or re.search(r"at node '[^']*' \((\w+ [^)]*)\): ([^.]*)", text)
    if m:
        return " ".join(m.groups())
    return f"{type(exc).__name__}: {text[:100]}"


def test_refusal_rate() -> None:
    refused = {seed: traced(seed)[3] for seed in SEEDS if traced(seed)[3] is not None}
    reasons = Counter(_refusal_reason(exc) for exc in refused.values() if exc is not None)
    rate = len(refused) / len(SEEDS)
    assert rate < MAX_REFUSAL_RATE, (
        f"{len(refused)} of {len(SEEDS)} random models refused ({rate:.0%}); reasons: {reasons.most_common()}; "
        f"seeds: {sorted(refused)[:30]}"
    )


def test_generator_covers_the_vocabulary() -> None:
    """Every operation of the vocabulary occurs in some model, so the property is checked on all of them."""
    seen: Counter[str] = Counter()
    for seed in SEEDS:
        seen.update(ops_in(random_spec(seed)))
    wanted = [
        *ACTIVATIONS, *DROPS, "conv", "depthwise conv", "grouped conv", "channel-multiplier conv", "bn", "bn-noaffine",
        "act", "pool", "cat", "res", "se", "attn", "sgate", "sadd", "linear head", "map head", "pooled head",
        "hidden fc", "BatchNorm1d", "AdaptiveAvgPool2d(2)", "flatten C*H*W", "view", "nn.Flatten", "mean",
    ]
    missing = [op for op in wanted if seen[op] < 3]
    assert not missing, f"generated fewer than 3 times in {len(SEEDS)} models: {missing}"
