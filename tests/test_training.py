"""Training helpers: BatchNorm recalibration after surgery on real data (scikit-learn digits)."""

from __future__ import annotations

import torch

from hwdsa.data import load_dataset, make_loader
from hwdsa.graph import trace_channel_graph
from hwdsa.importance import group_importance
from hwdsa.models import create_model
from hwdsa.surgery import plan_from_keep_ratios, prune
from hwdsa.training import TrainConfig, evaluate, fit, recalibrate_batchnorm


def test_recalibrating_batchnorm_after_surgery_restores_accuracy() -> None:
    torch.manual_seed(0)
    splits = load_dataset("digits", subset_per_class=60)
    train = make_loader(splits.train, 32, train=True, seed=0)
    test = make_loader(splits.test, 256, train=False)
    device = torch.device("cpu")
    model = create_model("small_cnn", in_channels=1)
    fit(model, train, TrainConfig(epochs=4, lr=0.05), device)
    graph = trace_channel_graph(model, splits.input_shape)
    plan = plan_from_keep_ratios(graph, group_importance(model, graph), [0.4] * len(graph.groups))
    pruned = prune(model, graph, plan).eval()
    stale = evaluate(pruned, test, device)
    used = recalibrate_batchnorm(pruned, train, device, images=256)
    assert 256 <= used < 256 + 32, "stops after the images asked for, whole batches"
    recalibrated = evaluate(pruned, test, device)
    assert not pruned.training, "the model's mode is restored"
    assert recalibrated > stale + 0.1, (stale, recalibrated)
