"""Check that a deployed artefact computes what the PyTorch model computes, on the caller's real batches.

Kept apart from building and running (Polygraphy's split): any runner, from ONNX Runtime or
TensorRT, is a callable from an input batch to the first output.

The element-wise test is `|out - ref| <= atol * scale + rtol * |ref|`, where `scale` is the largest
|ref| over all batches: `atol` is relative to the output's magnitude, so the same tolerance fits
logits of size 1 and of size 100. INT8 changes every logit a little, so its default tolerance is loose
and it also requires that the top-1 class agrees on most samples.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from torch import nn

from hwdsa.errors import ConfigError, ExportError
from hwdsa.export._data import BatchSource, as_batches
from hwdsa.profilers.base import PRECISIONS

_log = logging.getLogger(__name__)


class Runner(Protocol):
    """Anything that runs a deployed model on one input batch and returns its (first) output."""

    @property
    def name(self) -> str: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Tolerance:
    """How far a deployed model's outputs may be from the reference's.

    Attributes:
        rtol: element-wise tolerance relative to |ref|.
        atol: element-wise tolerance relative to the largest |ref| (see the module docstring).
        min_top1_agreement: smallest fraction of samples whose argmax must agree (None: not checked);
            applies to (batch, classes) outputs.
    """

    rtol: float
    atol: float
    min_top1_agreement: float | None = None

    def __post_init__(self) -> None:
        if not (self.rtol >= 0 and self.atol >= 0):
            raise ConfigError(f"Tolerance needs rtol >= 0 and atol >= 0; got rtol={self.rtol}, atol={self.atol}")
        if self.min_top1_agreement is not None and not 0.0 <= self.min_top1_agreement <= 1.0:
            raise ConfigError(f"Tolerance.min_top1_agreement must be in [0, 1]; got {self.min_top1_agreement}")

    @classmethod
    def for_precision(cls, precision: str) -> Tolerance:
        """The default tolerance of a precision ("fp32", "fp16", "int8")."""
        try:
            return DEFAULT_TOLERANCES[precision]
        except KeyError:
            raise ConfigError(f"precision must be one of {PRECISIONS}; got {precision!r}") from None


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    # fp32: summation order differs between backends (and TensorRT may pick other algorithms).
    "fp32": Tolerance(rtol=1e-3, atol=1e-4),
    # fp16: 11-bit mantissa, errors add up over ~20-50 layers.
    "fp16": Tolerance(rtol=2e-2, atol=2e-2),
    # int8: 8-bit activations move every logit; what must survive is the decision.
    # Measured: 1-5 % of max|logit| on a digits CNN (per-tensor / per-channel); random-init nets are worse.
    "int8": Tolerance(rtol=0.0, atol=0.2, min_top1_agreement=0.9),
}


@dataclass(frozen=True)
class ComparisonReport:
    """How a runner's outputs compare with the reference model's over some batches."""

    runner: str
    precision: str
    n_batches: int
    n_samples: int
    max_abs_error: float
    max_rel_error: float
    scaled_error: float
    top1_agreement: float | None
    passed: bool
    tolerance: Tolerance

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComparisonReport:
        fields = dict(data)
        fields["tolerance"] = Tolerance(**fields["tolerance"])
        return cls(**fields)

    def summary(self) -> str:
        top1 = "n/a" if self.top1_agreement is None else f"{self.top1_agreement:.3f}"
        return (
            f"{self.runner} ({self.precision}) vs PyTorch on {self.n_samples} samples: "
            f"max abs error {self.max_abs_error:.3g}, max rel error {self.max_rel_error:.3g}, "
            f"max error / max |ref| {self.scaled_error:.3g}, top-1 agreement {top1}"
        )


def _first(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ConfigError(f"the model returned {type(output).__name__}; compare_outputs needs a tensor output")


def _reference_device(model: nn.Module) -> torch.device:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


def compare_outputs(
    reference: nn.Module,
    runner: Runner,
    batches: BatchSource | Iterable[torch.Tensor],
    *,
    precision: str,
    tolerance: Tolerance | None = None,
    raise_on_failure: bool = True,
) -> ComparisonReport:
    """Run `reference` (in eval mode, FP32) and `runner` on the same batches and compare outputs.

    Args:
        reference: the PyTorch model that was exported.
        runner: the deployed model (`OrtRunner`, `TrtRunner`, or any `Runner`).
        batches: real input batches (a tensor, or an iterable of tensors or (inputs, labels) pairs).
        precision: the precision the artefact was built at; picks the default tolerance.
        tolerance: overrides the default tolerance of `precision`.
        raise_on_failure: raise ExportError when the outputs differ beyond tolerance (default), or
            return a report with `passed=False`.

    Raises:
        ExportError: outputs differ beyond tolerance; the message has the max abs/rel errors.
        ConfigError: no batches, or shapes that differ between reference and runner.
    """
    tol = tolerance if tolerance is not None else Tolerance.for_precision(precision)
    data = as_batches(batches, what="verification batches")
    device = _reference_device(reference)
    was_training = reference.training
    refs: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    reference.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(data):
                ref = _first(reference(batch.to(device))).detach().float().cpu()
                out = runner(batch).detach().float().cpu()
                if tuple(out.shape) != tuple(ref.shape):
                    raise ConfigError(
                        f"batch {i}: {runner.name} returned shape {tuple(out.shape)}, the reference "
                        f"{tuple(ref.shape)}"
                    )
                refs.append(ref)
                outs.append(out)
    finally:
        reference.train(was_training)
    ref_all = torch.cat([r.reshape(r.shape[0], -1) for r in refs])
    out_all = torch.cat([o.reshape(o.shape[0], -1) for o in outs])
    diff = (out_all - ref_all).abs()
    scale = float(ref_all.abs().max())
    max_abs = float(diff.max()) if diff.numel() else 0.0
    finite = bool(torch.isfinite(out_all).all())
    # Relative error over the elements that are not tiny against the output's scale (elsewhere it is noise).
    significant = ref_all.abs() > 1e-3 * scale
    max_rel = float((diff[significant] / ref_all.abs()[significant]).max()) if bool(significant.any()) else 0.0
    scaled = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    elementwise_ok = finite and bool((diff <= tol.atol * scale + tol.rtol * ref_all.abs()).all())
    top1: float | None = None
    is_classifier = all(r.dim() == 2 and r.shape[1] > 1 for r in refs)
    if is_classifier:
        top1 = float((ref_all.argmax(dim=1) == out_all.argmax(dim=1)).float().mean())
    elif tol.min_top1_agreement is not None:
        _log.warning("outputs are not (batch, classes): top-1 agreement is not checked")
    top1_ok = tol.min_top1_agreement is None or top1 is None or top1 >= tol.min_top1_agreement
    report = ComparisonReport(
        runner=runner.name,
        precision=precision,
        n_batches=len(data),
        n_samples=int(ref_all.shape[0]),
        max_abs_error=max_abs if finite else math.inf,
        max_rel_error=max_rel if finite else math.inf,
        scaled_error=scaled if finite else math.inf,
        top1_agreement=top1,
        passed=elementwise_ok and top1_ok,
        tolerance=tol,
    )
    _log.info("%s", report.summary())
    if not report.passed and raise_on_failure:
        reasons = []
        if not finite:
            reasons.append("the runner produced NaN or Inf")
        if finite and not elementwise_ok:
            reasons.append(f"errors exceed |d| <= {tol.atol:g} * max|ref| + {tol.rtol:g} * |ref| (max|ref| = {scale:.3g})")
        if not top1_ok:
            reasons.append(f"top-1 agreement {top1:.3f} < {tol.min_top1_agreement}")
        raise ExportError(
            f"{report.summary()}: {'; '.join(reasons)}. The artefact does not compute what the model "
            "computes: check the export, or the calibration data for INT8, or pass a looser `tolerance`."
        )
    return report
