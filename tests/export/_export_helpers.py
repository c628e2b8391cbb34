"""Helpers for the deployment tests: a small dense CNN (the fixtures in conftest.py train it on digits)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBnRelu(nn.Module):
    """A small dense CNN for 1x28x28 inputs: conv-bn-relu blocks, a residual add, a linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32 * 3 * 3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        x = x + self.block(x)
        x = self.down(x)
        return self.head(torch.flatten(F.avg_pool2d(x, 3, stride=2), 1))
