"""The exceptions hwdsa raises for bad input; each also inherits the matching builtin."""

from __future__ import annotations


class HwdsaError(Exception):
    """Base of every error hwdsa raises on purpose. The CLI prints it as one line and exits 2."""


class ConfigError(HwdsaError, ValueError):
    """A setting, flag or argument is out of range or malformed."""


class TracingError(HwdsaError, ValueError):
    """`torch.fx` could not trace the model, or its channel structure cannot be grouped."""


class NoPrunableLayerError(TracingError):
    """The model has no channel group that pruning may change."""


class KeepRatioError(HwdsaError, ValueError):
    """A keep-ratio vector has the wrong length or a value outside (0, 1]."""


class BudgetInfeasibleError(HwdsaError, ValueError):
    """No allocation of keep ratios can meet the requested budget."""


class TableError(HwdsaError, ValueError):
    """A latency lookup table is malformed, truncated, or measured on another device."""


class DataError(HwdsaError, FileNotFoundError):
    """A data set is missing or not in the expected format."""


class BackendUnavailableError(HwdsaError, ImportError):
    """An optional backend (TensorRT, a CUDA device, an ONNX Runtime provider) is not installed here."""


class ExportError(HwdsaError, RuntimeError):
    """An export failed, or the exported artefact does not compute what the PyTorch model computes."""


class EngineMismatchError(ExportError):
    """An engine file was built for another device or library version, or is corrupted."""


class CheckpointError(HwdsaError, RuntimeError):
    """A checkpoint cannot be resumed (missing, corrupted, or from a different configuration)."""


class SurgeryMismatchError(HwdsaError, RuntimeError):
    """The pruned network does not compute what the masked dense network computed (a tracer or surgery bug)."""
