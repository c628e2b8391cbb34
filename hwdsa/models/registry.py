"""The model zoo's registry: name -> builder, description and default input shape.

Builders are "module:function" strings, imported on first use, so listing the zoo imports neither
torchvision's model package nor any model code.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from hwdsa._registry import Registry
from hwdsa.errors import ConfigError

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model of the zoo.

    Attributes:
        builder: "module:function"; the function takes `num_classes` and keyword arguments.
        input_shape: default (C, H, W) the model is meant for (used to trace it and to export it).
        is_torchvision: built by torchvision with `weights=None`; pretrained weights are never downloaded.
    """

    builder: str
    input_shape: tuple[int, int, int]
    is_torchvision: bool = False

    def resolve(self) -> Callable[..., nn.Module]:
        module_name, _, attr = self.builder.partition(":")
        fn: Callable[..., nn.Module] = getattr(importlib.import_module(module_name), attr)
        return fn


MODELS: Registry[ModelSpec] = Registry("model")

_CIFAR = (3, 32, 32)
_IMAGENET = (3, 224, 224)

for _name, _builder, _shape, _tv, _description in (
    ("resnet20", "hwdsa.models.resnet_cifar:resnet20", _CIFAR, False, "CIFAR ResNet-20 (16/32/64 channels, 1x1-conv shortcuts), 0.27M params"),
    ("resnet56", "hwdsa.models.resnet_cifar:resnet56", _CIFAR, False, "CIFAR ResNet-56 (16/32/64 channels, 1x1-conv shortcuts), 0.86M params"),
    ("vgg16", "hwdsa.models.vgg_cifar:vgg16", _CIFAR, False, "CIFAR VGG-16 with BatchNorm, global pool and one linear layer, 14.7M params"),
    ("mobilenet_v2_cifar", "hwdsa.models.mobilenetv2_cifar:mobilenet_v2_cifar", _CIFAR, False, "MobileNetV2 (width 1.0) with stride-1 stem and second stage for 32x32 inputs, 2.2M params"),
    ("small_cnn", "hwdsa.models.small_cnn:small_cnn", (1, 28, 28), False, "four conv-BN-ReLU layers (16/32/64/128) for 28x28 grey images; in_channels is a keyword"),
    ("resnet18", "torchvision.models:resnet18", _IMAGENET, True, "torchvision ResNet-18 (random init)"),
    ("resnet50", "torchvision.models:resnet50", _IMAGENET, True, "torchvision ResNet-50 (random init)"),
    ("mobilenet_v2", "torchvision.models:mobilenet_v2", _IMAGENET, True, "torchvision MobileNetV2 (random init)"),
    ("mobilenet_v3_small", "torchvision.models:mobilenet_v3_small", _IMAGENET, True, "torchvision MobileNetV3-Small (random init)"),
):
    MODELS.register(_name, ModelSpec(_builder, _shape, _tv), description=_description)


def list_models() -> list[str]:
    """Names accepted by `create_model`, sorted."""
    return MODELS.names()


def default_input_shape(name: str) -> tuple[int, int, int]:
    """The (C, H, W) input the model `name` is meant for, e.g. (3, 32, 32) for the CIFAR models."""
    return MODELS.get(name).input_shape


def create_model(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build the zoo model `name` with freshly initialised weights.

    Args:
        name: one of `list_models()`.
        num_classes: size of the classifier's output.
        **kwargs: passed to the builder, e.g. `in_channels=3` for `small_cnn`.

    Raises:
        ConfigError: unknown name (the message lists the valid ones), a bad `num_classes`, a keyword the
            model does not take, or a request for pretrained torchvision weights.

    Example:
        >>> from hwdsa.models import create_model
        >>> model = create_model("resnet20", num_classes=10)
        >>> sum(p.numel() for p in model.parameters())
        272474
    """
    spec = MODELS.get(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer; got {num_classes!r} for model {name!r}")
    builder = spec.resolve()
    if spec.is_torchvision:
        if kwargs.get("weights") is not None:
            raise ConfigError(
                f"model {name!r}: pretrained weights ({kwargs['weights']!r}) are never downloaded by hwdsa; "
                "build it with weights=None and load a state_dict file instead (e.g. the prune job's `weights` setting)"
            )
        kwargs["weights"] = None
        try:
            return builder(num_classes=num_classes, **kwargs)
        except TypeError as exc:  # torchvision passes unknown keywords on to the model class
            raise ConfigError(f"model {name!r} does not accept keyword arguments {sorted(kwargs)}: {exc}") from exc
    signature = inspect.signature(builder)
    try:
        signature.bind(num_classes=num_classes, **kwargs)
    except TypeError:
        accepted = [p for p in signature.parameters if p != "num_classes"]
        unknown = sorted(set(kwargs) - set(accepted))
        raise ConfigError(f"model {name!r} does not accept keyword arguments {unknown}; it accepts {accepted}") from None
    return builder(num_classes=num_classes, **kwargs)
