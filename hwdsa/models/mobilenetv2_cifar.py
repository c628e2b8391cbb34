"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 inputs.

Same inverted-residual stages as torchvision's width-1.0 model, but the stem and the second stage
use stride 1 instead of 2, so a 32x32 image reaches the last stage at 4x4 instead of 1x1 (the usual
CIFAR adaptation). Written with plain modules: `torch.fx.symbolic_trace` sees every layer, and the
only branch in `forward` is on a constant attribute fixed at construction.
"""

from __future__ import annotations

from torch import Tensor, nn

from hwdsa.models._init import kaiming_init_

# (expansion t, output channels c, repeats n, first stride s), as in Table 2 of the paper, with
# the second stage's stride changed from 2 to 1 for CIFAR.
CIFAR_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class ConvBNReLU6(nn.Sequential):
    """Convolution, BatchNorm, ReLU6 (torchvision's Conv2dNormActivation for this model)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1x1 expansion (skipped when t=1), 3x3 depthwise, linear 1x1 projection; residual when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_channels, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x)
        if self.use_residual:  # fixed at construction: fx records one branch
            out = x + out
        return out


class CifarMobileNetV2(nn.Module):
    """Stem conv3x3(32, stride 1), the inverted-residual stages, conv1x1(1280), pool, dropout, linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.2) -> None:
        super().__init__()
        c_in = 32
        layers: list[nn.Module] = [ConvBNReLU6(in_channels, c_in, stride=1)]
        for t, c, n, s in CIFAR_SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(c_in, c, s if i == 0 else 1, t))
                c_in = c
        layers.append(ConvBNReLU6(c_in, 1280, kernel_size=1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
        kaiming_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.classifier(self.avgpool(self.features(x)).flatten(1))
        return logits


def mobilenet_v2_cifar(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.2) -> CifarMobileNetV2:
    """MobileNetV2 (width 1.0) for 32x32 inputs (about 2.2M parameters)."""
    return CifarMobileNetV2(num_classes, in_channels, dropout)
