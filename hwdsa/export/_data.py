"""Turn what a caller passes as calibration or verification data into a list of input batches."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Union

import numpy as np
import torch

from hwdsa.errors import ConfigError

#: What `export_model`, `qdq_onnx_from_onnx` and `compare_outputs` accept as data: one tensor (split into
#: batches), or an iterable of batches, each a tensor, an array, or a `(inputs, labels)` pair as a
#: `DataLoader` yields.
BatchSource = Union[torch.Tensor, np.ndarray, Iterable[Any]]

#: A single tensor is split into batches of this many samples, so calibrating on a few thousand
#: images does not run one huge batch.
DEFAULT_SPLIT = 32


def _to_tensor(item: Any, *, what: str, index: int) -> torch.Tensor:
    if isinstance(item, (tuple, list)) and item:
        item = item[0]  # (inputs, labels) from a DataLoader
    if isinstance(item, np.ndarray):
        item = torch.from_numpy(item)
    if not isinstance(item, torch.Tensor):
        raise ConfigError(
            f"{what}: batch {index} is a {type(item).__name__}; expected a torch.Tensor, a numpy array "
            "or an (inputs, labels) pair"
        )
    return item.detach().to(device="cpu", dtype=torch.float32)


def as_batches(
    data: BatchSource | None,
    *,
    what: str,
    sample_shape: Sequence[int] | None = None,
    split: int = DEFAULT_SPLIT,
) -> list[torch.Tensor]:
    """Normalise `data` to a non-empty list of float32 CPU tensors shaped (batch, *sample_shape).

    Args:
        data: one tensor/array (split along dim 0 into batches of `split`), or an iterable of batches.
        what: how the caller names the data, for error messages ("calibration_data").
        sample_shape: the model's input shape without the batch dimension; checked when given.
        split: batch size used when `data` is a single tensor.
    """
    if data is None:
        raise ConfigError(f"{what} is None; pass a tensor or an iterable of input batches")
    if isinstance(data, (torch.Tensor, np.ndarray)):
        tensor = _to_tensor(data, what=what, index=0)
        items: list[torch.Tensor] = list(torch.split(tensor, split)) if tensor.dim() > 0 else [tensor]
    else:
        try:
            iterator = iter(data)
        except TypeError:
            raise ConfigError(
                f"{what} is a {type(data).__name__}; expected a tensor or an iterable of input batches"
            ) from None
        items = [_to_tensor(item, what=what, index=i) for i, item in enumerate(iterator)]
    if not items or all(t.numel() == 0 for t in items):
        raise ConfigError(f"{what} is empty; pass at least one non-empty input batch")
    if sample_shape is not None:
        expected = tuple(int(s) for s in sample_shape)
        for i, t in enumerate(items):
            if t.dim() != len(expected) + 1 or tuple(t.shape[1:]) != expected:
                raise ConfigError(
                    f"{what}: batch {i} has shape {tuple(t.shape)}; the model's input is "
                    f"(batch, {', '.join(map(str, expected))})"
                )
    return items
