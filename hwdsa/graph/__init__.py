"""Channel structure of a network: tracing with torch.fx into groups of coupled channels."""

from hwdsa.graph.structure import ChannelGraph as ChannelGraph
from hwdsa.graph.structure import ChannelGroup as ChannelGroup
from hwdsa.graph.structure import InputSegment as InputSegment
from hwdsa.graph.structure import LayerNode as LayerNode
from hwdsa.graph.structure import NormNode as NormNode
from hwdsa.graph.tracer import symbolic_trace as symbolic_trace
from hwdsa.graph.tracer import trace_channel_graph as trace_channel_graph

__all__ = ["ChannelGraph", "ChannelGroup", "InputSegment", "LayerNode", "NormNode", "symbolic_trace", "trace_channel_graph"]
