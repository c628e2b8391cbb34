"""hwdsa: prune CNNs to a measured latency budget with Differentiable Sparsity Allocation.

Public names are imported lazily, so that `import hwdsa.profilers` works on an edge board with
only an inference backend installed (no torch), and `import hwdsa` initialises neither CUDA,
ONNX Runtime nor TensorRT.
"""

from __future__ import annotations

from hwdsa._lazy import attach

from typing import TYPE_CHECKING

from hwdsa._version import __version__ as __version__

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time each name is imported on first use
    from hwdsa.costs import Budget as Budget, CostModel as CostModel, FlopsCost as FlopsCost, ParamsCost as ParamsCost
    from hwdsa.counting import count_flops as count_flops, count_params as count_params
    from hwdsa.data import load_dataset as load_dataset, make_loader as make_loader
    from hwdsa.dsa.allocator import AdmmConfig as AdmmConfig
    from hwdsa.dsa.search import DsaSearch as DsaSearch, SearchConfig as SearchConfig, SearchResult as SearchResult
    from hwdsa.export import export_model as export_model
    from hwdsa.graph import ChannelGraph as ChannelGraph, trace_channel_graph as trace_channel_graph
    from hwdsa.job import BudgetSpec as BudgetSpec, PruneJob as PruneJob, PruneJobConfig as PruneJobConfig, PruneReport as PruneReport
    from hwdsa.lut import LatencyCost as LatencyCost, LatencyTable as LatencyTable
    from hwdsa.models import create_model as create_model, list_models as list_models
    from hwdsa.surgery import PruningPlan as PruningPlan, load_pruned as load_pruned, prune as prune, save_pruned as save_pruned

# public name → module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    # structure and costs
    "trace_channel_graph": "hwdsa.graph",
    "ChannelGraph": "hwdsa.graph",
    "CostModel": "hwdsa.costs",
    "Budget": "hwdsa.costs",
    "FlopsCost": "hwdsa.costs",
    "ParamsCost": "hwdsa.costs",
    "count_flops": "hwdsa.counting",
    "count_params": "hwdsa.counting",
    # surgery
    "PruningPlan": "hwdsa.surgery",
    "prune": "hwdsa.surgery",
    "save_pruned": "hwdsa.surgery",
    "load_pruned": "hwdsa.surgery",
    # DSA and the end-to-end job
    "DsaSearch": "hwdsa.dsa.search",
    "SearchConfig": "hwdsa.dsa.search",
    "SearchResult": "hwdsa.dsa.search",
    "AdmmConfig": "hwdsa.dsa.allocator",
    "PruneJob": "hwdsa.job",
    "PruneJobConfig": "hwdsa.job",
    "BudgetSpec": "hwdsa.job",
    "PruneReport": "hwdsa.job",
    # models and data
    "create_model": "hwdsa.models",
    "list_models": "hwdsa.models",
    "load_dataset": "hwdsa.data",
    "make_loader": "hwdsa.data",
    # latency and deployment
    "LatencyTable": "hwdsa.lut",
    "LatencyCost": "hwdsa.lut",
    "export_model": "hwdsa.export",
}

__all__ = ["__version__", *_LAZY]


__getattr__, __dir__ = attach(__name__, _LAZY)
