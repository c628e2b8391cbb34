"""The model zoo: CIFAR ResNet-20/56, VGG-16, MobileNetV2, a small MNIST CNN, and torchvision models.

Every model is traceable with `torch.fx.symbolic_trace`, which the channel tracer needs.
"""

from hwdsa.models.registry import MODELS as MODELS
from hwdsa.models.registry import ModelSpec as ModelSpec
from hwdsa.models.registry import create_model as create_model
from hwdsa.models.registry import default_input_shape as default_input_shape
from hwdsa.models.registry import list_models as list_models

__all__ = ["MODELS", "ModelSpec", "create_model", "default_input_shape", "list_models"]
