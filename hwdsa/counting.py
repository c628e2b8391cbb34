"""Count MACs and parameters of a concrete network by running it: the independent check on the cost functions.

Deliberately shares nothing with `hwdsa.costs`: it reads only module attributes and the tensor shapes
seen by forward hooks, so agreement between the two is evidence, not tautology.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of trainable and frozen parameters (buffers such as BatchNorm statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """MACs of every convolution and linear layer for one input of `input_shape` ((C, H, W) or with batch).

    Per-sample: a batch dimension in `input_shape` is divided out.
    """
    shape = tuple(int(s) for s in input_shape)
    batched = shape if len(shape) == 4 else (1, *shape)
    total = 0

    def conv_hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(mod, nn.modules.conv._ConvNd)
        kernel = 1
        for k in mod.kernel_size:
            kernel *= int(k)
        per_output = (mod.in_channels // mod.groups) * kernel
        total += output[0].numel() * per_output

    def linear_hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(mod, nn.Linear)
        total += output[0].numel() * mod.in_features

    handles = []
    for mod in model.modules():
        if isinstance(mod, nn.modules.conv._ConvNd):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        x = torch.zeros(batched, device=param.device if param is not None else "cpu")
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total // batched[0] if len(shape) == 4 else total
