"""Training helpers: BatchNorm recalibration after surgery on real data (scikit-learn digits), the schedule."""

from __future__ import annotations

import pytest
import torch

from hwdsa.data import load_dataset, make_loader
from hwdsa.graph import trace_channel_graph
from hwdsa.importance import group_importance
from hwdsa.models import create_model
from hwdsa.surgery import plan_from_keep_ratios, prune
from hwdsa.errors import ConfigError
from hwdsa.training import TrainConfig, evaluate, fit, make_optimizer, make_scheduler, recalibrate_batchnorm


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


def _rates(cfg: TrainConfig, steps_per_epoch: int, restart_at: int | None) -> list[float]:
    model = torch.nn.Linear(2, 2)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch, restart_at=restart_at)
    rates = []
    for _ in range(cfg.epochs * steps_per_epoch):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_a_warm_restart_starts_the_cosine_again_at_the_full_rate() -> None:
    cfg = TrainConfig(epochs=4, lr=0.1, warmup_epochs=1)
    plain, restarted = _rates(cfg, 10, None), _rates(cfg, 10, 30)
    assert restarted[:30] == plain[:30], "warm-up and cosine unchanged before the restart"
    assert plain[9] == pytest.approx(0.1) and plain[29] < 0.035
    assert restarted[30] == pytest.approx(0.1) and restarted[35] == pytest.approx(0.05)
    assert restarted[39] < plain[30]
    for bad in (-1, 40):
        with pytest.raises(ConfigError, match="restart_at must be a step"):
            _rates(cfg, 10, bad)
