"""Channel importance: |γ| of BatchNorm members, filter L1 norms where there is none, and the aggregations."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from hwdsa.errors import ConfigError, TracingError
from hwdsa.graph.structure import ChannelGraph
from hwdsa.graph.tracer import trace_channel_graph
from hwdsa.importance import (
    group_importance,
    list_importance_criteria,
    list_importance_modes,
    member_importance,
)
from hwdsa.models import create_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _Mixed(nn.Module):
    """A group with two BatchNorm members (residual add), a conv without BatchNorm, a hidden linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 4, 1)  # no BatchNorm: scored by its filters
        self.fc1 = nn.Linear(4, 5)  # hidden linear: scored by its rows
        self.fc2 = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        a = torch.relu(self.bn1(self.conv1(x)))
        b = torch.relu(self.bn2(self.conv2(a)) + a)
        c = torch.relu(self.conv3(b)).mean(dim=(2, 3))
        return self.fc2(torch.relu(self.fc1(c)))


def _mixed() -> tuple[nn.Module, ChannelGraph]:
    torch.manual_seed(0)
    model = _Mixed()
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor([0.5, -2.0, 1.0, 0.1, 3.0, -0.2]))
        model.bn2.weight.copy_(torch.tensor([1.0, 1.0, 4.0, 1.0, 1.0, 2.0]))
    return model, trace_channel_graph(model, (3, 8, 8))


def test_members_follow_mask_sites_and_score_by_bn_scale_or_filter_l1() -> None:
    model, graph = _mixed()
    assert [g.mask_sites for g in graph.groups] == [("bn1", "bn2"), ("conv3",), ("fc1",)]
    members = member_importance(model, graph)
    assert [len(m) for m in members] == [2, 1, 1]
    torch.testing.assert_close(members[0][0], model.bn1.weight.abs())
    torch.testing.assert_close(members[0][1], model.bn2.weight.abs())
    torch.testing.assert_close(members[1][0], model.conv3.weight.abs().sum(dim=(1, 2, 3)))
    torch.testing.assert_close(members[2][0], model.fc1.weight.abs().sum(dim=1))
    assert all(not t.requires_grad for group in members for t in group)


def test_l1_filter_criterion_scores_the_producers() -> None:
    model, graph = _mixed()
    members = member_importance(model, graph, criterion="l1_filter")
    torch.testing.assert_close(members[0][0], model.conv1.weight.abs().sum(dim=(1, 2, 3)))
    torch.testing.assert_close(members[0][1], model.conv2.weight.abs().sum(dim=(1, 2, 3)))
    torch.testing.assert_close(members[2][0], model.fc1.weight.abs().sum(dim=1))
    assert list_importance_criteria() == ["bn_scale", "l1_filter"]


def test_aggregation_modes() -> None:
    model, graph = _mixed()
    g1, g2 = model.bn1.weight.detach().abs(), model.bn2.weight.detach().abs()
    torch.testing.assert_close(group_importance(model, graph)[0], g1)  # "first": the authors' choice
    torch.testing.assert_close(group_importance(model, graph, "sum_normalized")[0], g1 / g1.mean() + g2 / g2.mean())
    assert {"first", "sum_normalized"} <= set(list_importance_modes())
    imp = group_importance(model, graph, "sum_normalized")
    assert [t.shape[0] for t in imp] == list(graph.group_sizes)
    assert all(not t.requires_grad for t in imp)


def test_importance_of_a_zoo_model_is_bn_gamma_of_the_first_member() -> None:
    model = create_model("resnet20")
    with torch.no_grad():
        model.bn1.weight.uniform_(-1.0, 1.0)
    graph = trace_channel_graph(model, (3, 32, 32))
    assert len(graph.groups) == 12
    imp = group_importance(model, graph)
    assert graph.groups[0].mask_sites[0] == "bn1"
    torch.testing.assert_close(imp[0], model.bn1.weight.detach().abs())


def test_a_batchnorm_without_affine_scores_every_channel_alike() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False), nn.ReLU(), nn.Conv2d(4, 2, 1))
    graph = trace_channel_graph(model, (3, 8, 8))
    torch.testing.assert_close(group_importance(model, graph)[0], torch.ones(4))


def test_unwraps_data_parallel() -> None:
    model, graph = _mixed()
    torch.testing.assert_close(group_importance(nn.DataParallel(model), graph)[0], group_importance(model, graph)[0])


def test_errors() -> None:
    model, graph = _mixed()
    with pytest.raises(ConfigError, match="unknown importance aggregation 'median'; valid names: first, .*sum_normalized"):
        group_importance(model, graph, "median")
    with pytest.raises(ConfigError, match="unknown importance criterion 'taylor'; valid names: bn_scale, l1_filter"):
        group_importance(model, graph, criterion="taylor")
    other = nn.Sequential(nn.Conv2d(3, 6, 3))
    with pytest.raises(TracingError, match="the model has no submodule 'bn1' named by the channel graph"):
        member_importance(other, graph)
    model.bn1 = nn.BatchNorm2d(5)
    with pytest.raises(TracingError, match=r"group 0: mask site 'bn1' scores \(5,\) channels but the group has 6"):
        member_importance(model, graph)
    model.bn1 = nn.ReLU()  # type: ignore[assignment]
    with pytest.raises(TracingError, match="cannot score channels by the filters of a ReLU"):
        member_importance(model, graph)
