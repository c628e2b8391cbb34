"""Fixtures for the deployment tests: real data (scikit-learn's digits) and small trained networks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _export_helpers import ConvBnRelu


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 handwritten digits (bundled, no download), upsampled from 8x8 to 1x28x28."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
    images = (images - images.mean()) / images.std()
    return images, torch.tensor(data.target, dtype=torch.long)


@pytest.fixture(scope="session")
def digits_net(digits: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
    """ConvBnRelu trained for a few epochs on the first 1400 digits (the rest are held out)."""
    images, labels = digits
    torch.manual_seed(0)
    net = ConvBnRelu()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    x_train, y_train = images[:1400], labels[:1400]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: a second thread on a shared 2-core machine makes it ~7x slower
    try:
        net.train()
        for _ in range(4):
            order = torch.randperm(len(x_train))
            for start in range(0, len(order), 50):
                idx = order[start : start + 50]
                optimizer.zero_grad()
                F.cross_entropy(net(x_train[idx]), y_train[idx]).backward()
                optimizer.step()
        # Exact BatchNorm statistics of the final weights (running averages lag behind a short training).
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
        with torch.no_grad():
            net(x_train)
    finally:
        torch.set_num_threads(threads)
    net.eval()
    with torch.no_grad():
        accuracy = (net(images[1400:]).argmax(1) == labels[1400:]).float().mean().item()
    assert accuracy > 0.85, f"the fixture network did not learn the digits (held-out accuracy {accuracy:.2f})"
    return net


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `hwdsa prune` output folder: small_cnn on digits under a latency budget priced by a real table.

    The table is measured here with the profilers' ONNX Runtime backend (one thread, a 2-point grid, a
    short protocol), then `hwdsa prune --latency 0.7 --latency-table ...` trains it to well above chance
    (about 65% top-1 in 3 s): an untrained net's near-tied logits would make the INT8 check's top-1
    agreement a coin toss, which is not what the exports are checked for.
    """
    from hwdsa.cli import main
    from hwdsa.graph import trace_channel_graph
    from hwdsa.lut.grid import GridConfig, grid_specs
    from hwdsa.models import create_model
    from hwdsa.profilers import TimingProtocol, get_backend, profile_specs

    root = tmp_path_factory.mktemp("tiny-run")
    graph = trace_channel_graph(create_model("small_cnn", num_classes=10, in_channels=1), (1, 28, 28))
    table = root / "ort-cpu-1thread.csv"
    profile_specs(
        grid_specs(graph, config=GridConfig("cpu", cpu_points=2, multiple=4)),
        get_backend("onnxruntime", num_threads=1),
        TimingProtocol(warmup=1, repeats=3, max_attempts=1, rounds=1),
        out_path=table,
    )
    run = root / "run"
    argv = [
        "-q", "prune", "--model", "small_cnn", "--data", "digits", "--subset-per-class", "20",
        "--latency", "0.7", "--latency-table", str(table), "--batch-size", "16",
        "--pretrain-epochs", "5", "--search-epochs", "1", "--finetune-epochs", "3", "--out", str(run),
    ]
    assert main(argv) == 0
    assert (run / "pruned.pt").is_file() and (run / "report.json").is_file()
    assert json.loads((run / "report.json").read_text())["pruned"]["accuracy"] > 0.3  # the premise above
    return run
