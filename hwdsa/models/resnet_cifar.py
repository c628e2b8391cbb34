"""CIFAR ResNets (He et al. 2016, section 4.2): 6n+2 layers in three stages of 16/32/64 channels.

The shortcut is "option B": identity where the shape is unchanged, a 1x1 convolution with BatchNorm
where the stride or the width changes. With these shortcuts the channel tracer finds 3n block-internal
groups plus one group per stage (the stem's output joins stage 1, whose shortcuts are identities):
12 groups for ResNet-20, 30 for ResNet-56.
"""

from __future__ import annotations

from torch import Tensor, nn

from hwdsa.models._init import kaiming_init_


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.relu2(out + self.shortcut(x))
        return out


class CifarResNet(nn.Module):
    """Stem conv3x3(16), three stages of `depth_per_stage` BasicBlocks, global average pool, linear."""

    def __init__(self, depth_per_stage: int, num_classes: int = 10, in_channels: int = 3, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages = []
        c_in = widths[0]
        for i, width in enumerate(widths):
            blocks = []
            for j in range(depth_per_stage):
                blocks.append(BasicBlock(c_in, width, stride=2 if (i > 0 and j == 0) else 1))
                c_in = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        kaiming_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        logits: Tensor = self.fc(self.avgpool(x).flatten(1))
        return logits


def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-20 for 32x32 inputs (n=3, about 0.27M parameters)."""
    return CifarResNet(3, num_classes, in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-56 for 32x32 inputs (n=9, about 0.86M parameters)."""
    return CifarResNet(9, num_classes, in_channels)
