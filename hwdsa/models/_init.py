"""Weight initialisation shared by the CIFAR models (He et al. 2015, as in the ResNet paper)."""

from __future__ import annotations

from torch import nn


def kaiming_init_(model: nn.Module) -> nn.Module:
    """Kaiming-normal convolutions (fan_out, ReLU gain), unit BatchNorm, small-normal linear layers.

    fan_out keeps the backward signal's variance constant, which is what matters for training
    from scratch (torchvision's ResNet uses the same choice).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model
