"""VGG-16 with BatchNorm for CIFAR: 13 conv3x3-BN-ReLU layers, global average pool, one linear layer.

The single classifier layer (rather than VGG's three) is the usual CIFAR variant and the one the
DSA paper prunes; it leaves exactly 13 channel groups, one per convolution.
"""

from __future__ import annotations

from torch import Tensor, nn

from hwdsa.models._init import kaiming_init_

# Channel widths; "M" is a 2x2 max-pool.
VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class CifarVGG(nn.Module):
    """`layout` of convolutions and pools, then AdaptiveAvgPool2d(1), flatten, Linear."""

    def __init__(self, layout: tuple[int | str, ...] = VGG16_LAYOUT, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                width = int(item)
                layers += [nn.Conv2d(c_in, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                c_in = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        kaiming_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.classifier(self.avgpool(self.features(x)).flatten(1))
        return logits


def vgg16(num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
    """VGG-16-BN for 32x32 inputs (about 14.7M parameters)."""
    return CifarVGG(VGG16_LAYOUT, num_classes, in_channels)
