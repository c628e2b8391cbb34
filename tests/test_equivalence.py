"""The surgery guard: the pruned network computes what the masked dense network computed, or the job stops."""

from __future__ import annotations

import pytest
import torch

from hwdsa.equivalence import check_pruned_matches_masked
from hwdsa.errors import SurgeryMismatchError
from hwdsa.graph import trace_channel_graph
from hwdsa.importance import group_importance
from hwdsa.models import create_model
from hwdsa.surgery import plan_from_keep_ratios, prune


def _pruned_resnet20() -> tuple[torch.nn.Module, object, object, torch.nn.Module]:
    torch.manual_seed(0)
    model = create_model("resnet20")
    for m in model.modules():  # BatchNorm of a dropped channel is not zero: the masks must do the work
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.bias.data.uniform_(-1, 1)
    graph = trace_channel_graph(model, (3, 32, 32))
    plan = plan_from_keep_ratios(graph, group_importance(model, graph), [0.5] * len(graph.groups))
    return model, graph, plan, prune(model, graph, plan)


def test_a_correct_surgery_passes_and_leaves_modes_alone() -> None:
    model, graph, plan, pruned = _pruned_resnet20()
    model.train()
    assert check_pruned_matches_masked(model, graph, plan, pruned, torch.randn(4, 3, 32, 32)) < 1e-4  # type: ignore[arg-type]
    assert model.training and not any(h for m in model.modules() for h in m._forward_hooks.values())


def test_a_pruned_network_that_computes_something_else_names_the_first_layer() -> None:
    model, graph, plan, pruned = _pruned_resnet20()
    with torch.no_grad():
        pruned.layer2[0].conv1.weight.add_(0.5)  # type: ignore[index, union-attr]
    with pytest.raises(SurgeryMismatchError, match=r"first at layer 'layer2\.0\.conv1'"):
        check_pruned_matches_masked(model, graph, plan, pruned, torch.randn(4, 3, 32, 32))  # type: ignore[arg-type]
