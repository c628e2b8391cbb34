"""The channel structure of a traced network: groups of coupled channels and the layers that read/write them.

Everything downstream (costs, masks, surgery, latency grids) reads this one description, the way every
Torch-Pruning pruner reads its dependency graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class InputSegment:
    """A contiguous run of a layer's input channels that come from one channel group.

    `group` is None where the channels are fixed (the image, or a tensor pruning may not change).
    `offset` is the first input channel of the segment (concatenation makes several segments).
    """

    group: int | None
    channels: int
    offset: int


@dataclass(frozen=True)
class LayerNode:
    """A convolution or linear layer, with where its input channels come from and where its outputs go.

    For a depthwise convolution `out_group` equals its single input segment's group and
    `is_depthwise` is True: pruning slices its weight's first dimension and its `groups` together.
    A linear layer fed by `flatten` of a C×H×W map reads `features_per_channel` = H·W inputs per channel.
    """

    name: str
    kind: Literal["conv", "linear"]
    in_channels: int
    out_channels: int
    in_segments: tuple[InputSegment, ...]
    out_group: int | None
    is_depthwise: bool
    conv_groups: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    in_spatial: tuple[int, ...]
    out_spatial: tuple[int, ...]
    has_bias: bool
    features_per_channel: int = 1
    padding: tuple[int, ...] = ()
    activation: str = "none"
    """The activation applied right after the layer (through its BatchNorm), as the deployed engine fuses it."""

    @property
    def kernel_elems(self) -> int:
        """Product of the kernel's spatial sizes (1 for linear layers)."""
        n = 1
        for k in self.kernel_size:
            n *= k
        return n

    @property
    def out_positions(self) -> int:
        """Number of output positions (H_out·W_out; 1 for linear layers on 2-D input)."""
        n = 1
        for s in self.out_spatial:
            n *= s
        return n


@dataclass(frozen=True)
class NormNode:
    """A BatchNorm over the channels of one group (or fixed channels when `group` is None)."""

    name: str
    group: int | None
    channels: int
    affine: bool = True


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be pruned together: one keep ratio, one mask, one set of kept indices.

    `producers`: layers whose output channels are these channels (convs, linears, depthwise convs).
    `consumers`: layers that read these channels as (part of) their input.
    `norms`: BatchNorms over these channels.
    `mask_sites`: modules whose output (channel dim 1) the group's mask multiplies during the search:
    the BatchNorm right after each producer, else the producer itself, plus every other BatchNorm of the
    group (an affine shift would otherwise leak through a masked channel).
    """

    index: int
    channels: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    norms: tuple[str, ...]
    mask_sites: tuple[str, ...]


@dataclass(frozen=True)
class ChannelGraph:
    """Result of tracing a model: its channel groups, layers (in execution order) and BatchNorms."""

    groups: tuple[ChannelGroup, ...]
    layers: tuple[LayerNode, ...]
    norms: tuple[NormNode, ...]
    input_shape: tuple[int, ...]
    fixed_params: int
    """Parameters in modules pruning never changes (counted once, as a constant of every cost)."""

    @property
    def group_sizes(self) -> tuple[int, ...]:
        """Channel count of every group, in group order."""
        return tuple(g.channels for g in self.groups)

    def layer(self, name: str) -> LayerNode:
        """The layer called `name` (a module's qualified name)."""
        for node in self.layers:
            if node.name == name:
                return node
        raise KeyError(f"no layer named {name!r}; layers: {', '.join(n.name for n in self.layers)}")
