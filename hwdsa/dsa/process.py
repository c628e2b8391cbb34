"""DSA's differentiable pruning process: keep probabilities solved from the keep ratios, and masks drawn from them.

All groups are handled at once as a padded matrix: `importance [G, Cmax]` with a boolean `valid [G, Cmax]`
marking each group's real channels (groups have different sizes), so one step costs a fixed number of
batched kernels on the device and no host synchronisation (design note, section 3).

The keep probability of channel c in a group with keep ratio α is

    s_c = σ(β2 · (log b_c − log β1)),        p_c = floor + (1 − floor) · s_c,

where b_c is the channel's (detached) importance, β2 the steepness and β1 the threshold solved so that
mean_c p_c = α exactly, floor included. The affine floor keeps every p in [floor, 1] and makes the
implicit gradient the paper's formula unchanged: ∂p_c/∂α = C · s_c(1 − s_c) / Σ_j s_j(1 − s_j).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from hwdsa.errors import ConfigError, KeepRatioError

_log = logging.getLogger(__name__)

__all__ = [
    "Beta2Schedule",
    "deterministic_masks",
    "keep_probabilities",
    "sample_masks",
    "solve_threshold",
]

# σ(±40) is within 4e-18 of 1 or 0: the bisection bracket reaches past every channel's saturation.
_SATURATION = 40.0
# A zero importance becomes log(1e-12 · the group's largest importance): scale-free, and far below the rest.
_RELATIVE_EPS = 1e-12
_ABSOLUTE_EPS = 1e-300
DEFAULT_BISECTION_STEPS = 64


# ---------------------------------------------------------------------------------------------------------
# input checks (shapes, dtypes and devices only: checking values would cost a host sync every step)
# ---------------------------------------------------------------------------------------------------------
def _check_batch(importance: Tensor, valid: Tensor, keep_ratio: Tensor | None = None) -> None:
    if importance.dim() != 2 or importance.shape[0] == 0 or importance.shape[1] == 0:
        raise ConfigError(
            f"importance must be a non-empty [groups, max_channels] matrix; got shape {tuple(importance.shape)}"
        )
    if not importance.is_floating_point():
        raise ConfigError(f"importance must be a floating-point tensor; got {importance.dtype}")
    if valid.shape != importance.shape or valid.dtype != torch.bool:
        raise ConfigError(
            f"valid must be a bool mask shaped like importance {tuple(importance.shape)}; "
            f"got {valid.dtype} of shape {tuple(valid.shape)}"
        )
    if valid.device != importance.device:
        raise ConfigError(f"valid is on {valid.device} but importance is on {importance.device}; move both to one device")
    if keep_ratio is not None:
        if keep_ratio.dim() != 1 or keep_ratio.shape[0] != importance.shape[0]:
            raise KeepRatioError(
                f"expected one keep ratio per channel group ({importance.shape[0]}), "
                f"got a tensor of shape {tuple(keep_ratio.shape)}"
            )
        if not keep_ratio.is_floating_point():
            raise KeepRatioError(f"keep ratios must be a floating-point tensor; got {keep_ratio.dtype}")
        if keep_ratio.device != importance.device:
            raise ConfigError(
                f"keep ratios are on {keep_ratio.device} but importance is on {importance.device}; move both to one device"
            )


def _check_beta2_floor(beta2: float, floor: float) -> None:
    if not (math.isfinite(beta2) and beta2 > 0):
        raise ConfigError(f"beta2 (the keep-probability steepness) must be a positive finite number; got {beta2}")
    if not 0.0 <= floor < 1.0:
        raise ConfigError(f"floor (the smallest keep probability) must lie in [0, 1); got {floor}")


def _work_dtype(device: torch.device) -> torch.dtype:
    """float64 wherever the device has it: the bisection is then exact to machine precision at no real cost."""
    return torch.float32 if device.type == "mps" else torch.float64


def _log_importance(importance: Tensor, valid: Tensor, dtype: torch.dtype) -> Tensor:
    """log(b + eps) with eps relative to each group's largest importance; negative b count as 0; invalid → 0."""
    b = importance.detach().to(dtype).clamp_min(0.0).masked_fill(~valid, 0.0)
    eps = _RELATIVE_EPS * b.amax(dim=1, keepdim=True) + (_ABSOLUTE_EPS if dtype == torch.float64 else 1e-30)
    return torch.log(b + eps).masked_fill(~valid, 0.0)


def _target_mean_s(keep_ratio: Tensor, floor: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The mean of s that gives mean p = α, and where α lay outside [floor, 1] and was clamped."""
    alpha = keep_ratio.detach().to(dtype)
    clamped = (alpha < floor) | (alpha > 1.0)
    target = ((alpha.clamp(floor, 1.0) - floor) / (1.0 - floor)).clamp(0.0, 1.0)
    return target, clamped


def _solve_log_threshold(
    log_b: Tensor, valid: Tensor, target: Tensor, beta2: float, steps: int
) -> Tensor:
    """Batched bisection in t = log β1 for mean_valid σ(β2(log b − t)) = target; fixed steps, no host sync."""
    n_valid = valid.sum(dim=1)
    has_channels = n_valid > 0
    n = n_valid.clamp_min(1).to(log_b.dtype)
    big = torch.finfo(log_b.dtype).max
    reach = _SATURATION / beta2
    lo = log_b.masked_fill(~valid, big).amin(dim=1) - reach  # here every s ≈ 1
    hi = log_b.masked_fill(~valid, -big).amax(dim=1) + reach  # here every s ≈ 0
    lo = torch.where(has_channels, lo, torch.zeros_like(lo))
    hi = torch.where(has_channels, hi, torch.zeros_like(hi))
    validf = valid.to(log_b.dtype)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        mean_s = (torch.sigmoid(beta2 * (log_b - mid[:, None])) * validf).sum(dim=1) / n
        above = mean_s > target  # threshold too low: too many channels kept
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    return 0.5 * (lo + hi)


def solve_threshold(
    importance: Tensor,
    valid: Tensor,
    keep_ratio: Tensor,
    beta2: float,
    *,
    floor: float = 0.01,
    steps: int = DEFAULT_BISECTION_STEPS,
) -> Tensor:
    """Solve log β1 per group so that each group's mean keep probability equals its keep ratio.

    A batched bisection with a fixed number of halvings (64 halve the bracket to below float64
    resolution), run in float64 on the tensors' device with no host synchronisation. Keep ratios
    outside [floor, 1] are clamped into it: no threshold gives a mean below the floor.

    Args:
        importance: [G, Cmax] non-negative channel importances (negative values count as 0); detached.
        valid: [G, Cmax] bool, True on each group's real channels.
        keep_ratio: [G] keep ratios α.
        beta2: steepness β2 > 0.
        floor: smallest keep probability, in [0, 1).
        steps: bisection halvings.

    Returns:
        log β1 as a [G] tensor in the promoted dtype of importance and keep_ratio.

    Example:
        >>> imp = torch.tensor([[1.0, 4.0]])
        >>> t = solve_threshold(imp, imp > 0, torch.tensor([0.5]), beta2=1.0, floor=0.0)
        >>> round(float(t.exp()), 6)  # keeping half of two channels: β1 is their geometric mean
        2.0
    """
    _check_batch(importance, valid, keep_ratio)
    _check_beta2_floor(beta2, floor)
    if steps < 1:
        raise ConfigError(f"steps must be >= 1; got {steps}")
    dtype = _work_dtype(importance.device)
    log_b = _log_importance(importance, valid, dtype)
    target, _ = _target_mean_s(keep_ratio, floor, dtype)
    t = _solve_log_threshold(log_b, valid, target, float(beta2), steps)
    return t.to(torch.promote_types(importance.dtype, keep_ratio.dtype))


class _KeepProbabilities(torch.autograd.Function):
    """p(α) with the implicit gradient of the constraint mean p = α; importance gets no gradient."""

    @staticmethod
    def forward(
        ctx: Any, importance: Tensor, valid: Tensor, keep_ratio: Tensor, beta2: float, floor: float, steps: int
    ) -> Tensor:
        dtype = _work_dtype(importance.device)
        out_dtype = torch.promote_types(importance.dtype, keep_ratio.dtype)
        log_b = _log_importance(importance, valid, dtype)
        target, clamped = _target_mean_s(keep_ratio, floor, dtype)
        t = _solve_log_threshold(log_b, valid, target, beta2, steps)
        x = beta2 * (log_b - t[:, None])
        p = (floor + (1.0 - floor) * torch.sigmoid(x)).masked_fill(~valid, 0.0)
        # ∂p_c/∂α = C·w_c/Σ_j w_j with w = s(1 − s) = σ(x)σ(−x); in log space the normalised weights keep
        # their limits when every s saturates (α → 1: w ∝ b^−β2; α → floor: w ∝ b^β2) instead of 0/0.
        log_w = (torch.nn.functional.logsigmoid(x) + torch.nn.functional.logsigmoid(-x)).masked_fill(~valid, -math.inf)
        n = valid.sum(dim=1, keepdim=True).to(dtype)
        coef = torch.softmax(log_w, dim=1).nan_to_num(0.0) * n
        coef = coef.masked_fill(clamped[:, None], 0.0)  # a clamped α does not move p
        ctx.save_for_backward(coef.to(out_dtype))
        ctx.keep_ratio_dtype = keep_ratio.dtype
        return p.to(out_dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_p: Tensor) -> tuple[None, None, Tensor, None, None, None]:
        (coef,) = ctx.saved_tensors
        grad_alpha = (grad_p.to(coef.dtype) * coef).sum(dim=1)
        return None, None, grad_alpha.to(ctx.keep_ratio_dtype), None, None, None


def keep_probabilities(
    importance: Tensor,
    valid: Tensor,
    keep_ratio: Tensor,
    beta2: float,
    floor: float = 0.01,
    *,
    steps: int = DEFAULT_BISECTION_STEPS,
) -> Tensor:
    """Keep probabilities p [G, Cmax] whose mean over each group's channels equals its keep ratio.

    p_c = floor + (1 − floor)·σ(β2(log b_c − log β1)), with β1 from `solve_threshold`. Differentiable in
    `keep_ratio` through the implicit function theorem (∂p_c/∂α = C·s_c(1−s_c)/Σ_j s_j(1−s_j)); no gradient
    reaches `importance`. Padding positions (valid False) get p = 0. Keep ratios below `floor` are clamped to
    it (mean p = floor there) and get zero gradient; the caller keeps α ≥ its minimum keep ratio > floor.

    Args:
        importance: [G, Cmax] non-negative channel importances, e.g. BatchNorm |γ|.
        valid: [G, Cmax] bool mask of each group's real channels.
        keep_ratio: [G] keep ratios α in [floor, 1].
        beta2: steepness β2 > 0 (large values make p a near top-k indicator).
        floor: smallest keep probability, in [0, 1) (the authors use 0.01).
        steps: bisection halvings of the threshold solve.

    Returns:
        p in the promoted dtype of importance and keep_ratio, on their device.

    Example:
        >>> imp = torch.tensor([[0.1, 0.5, 2.0, 0.0], [1.0, 3.0, 0.0, 0.0]])
        >>> valid = torch.tensor([[True, True, True, True], [True, True, False, False]])
        >>> alpha = torch.tensor([0.5, 0.75], requires_grad=True)
        >>> p = keep_probabilities(imp, valid, alpha, beta2=1.0)
        >>> [round(float(v), 6) for v in p.detach().sum(1) / valid.sum(1)]
        [0.5, 0.75]
    """
    _check_batch(importance, valid, keep_ratio)
    _check_beta2_floor(beta2, floor)
    if steps < 1:
        raise ConfigError(f"steps must be >= 1; got {steps}")
    p: Tensor = _KeepProbabilities.apply(importance.detach(), valid, keep_ratio, float(beta2), float(floor), steps)
    return p


class _StraightThroughBernoulli(torch.autograd.Function):
    """m ~ Bernoulli(p) forward, ∂m/∂p = identity backward."""

    @staticmethod
    def forward(ctx: Any, p: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.bernoulli(p.detach(), generator=generator)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_m: Tensor) -> tuple[Tensor, None]:
        return grad_m, None


class _DroppedOnlyBernoulli(torch.autograd.Function):
    """m ~ Bernoulli(p) forward, ∂m/∂p = 1 − m backward: only the channels dropped in this draw pass gradient."""

    @staticmethod
    def forward(ctx: Any, p: Tensor, generator: torch.Generator | None) -> Tensor:
        m = torch.bernoulli(p.detach(), generator=generator)
        ctx.save_for_backward(m)
        return m

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_m: Tensor) -> tuple[Tensor, None]:
        (m,) = ctx.saved_tensors
        return grad_m * (1 - m), None


class _DroppedReweightedBernoulli(torch.autograd.Function):
    """m ~ Bernoulli(p) forward, ∂m/∂p = (1 − m)/(1 − p) backward: the dropped channels' slope, reweighted
    by the inverse probability of being dropped, so its expectation is the slope at m_c = 0 itself."""

    @staticmethod
    def forward(ctx: Any, p: Tensor, generator: torch.Generator | None) -> Tensor:
        m = torch.bernoulli(p.detach(), generator=generator)
        ctx.save_for_backward(m, p.detach())
        return m

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_m: Tensor) -> tuple[Tensor, None]:
        m, p = ctx.saved_tensors
        # A dropped channel had p < 1; p = 1 is never dropped, so the clamp only guards 0/0 at kept channels.
        weight = (1 - m) / (1 - p).clamp_min(_MIN_DROP_PROBABILITY)
        return grad_m * weight, None


_MIN_DROP_PROBABILITY = 1e-6
MASK_GRADIENTS = ("straight_through", "dropped_only", "dropped_reweighted")
_MASK_FUNCTIONS = {
    "straight_through": _StraightThroughBernoulli,
    "dropped_only": _DroppedOnlyBernoulli,
    "dropped_reweighted": _DroppedReweightedBernoulli,
}


def sample_masks(p: Tensor, generator: torch.Generator | None = None, gradient: str = "straight_through") -> Tensor:
    """Masks m ∈ {0, 1} drawn from Bernoulli(p), with the straight-through gradient ∂m/∂p = identity.

    `gradient="dropped_only"` keeps only the dropped channels' term (∂m/∂p = 1 − m). A kept channel's ∂L/∂m
    is the loss's slope in that channel's *scale*, which BatchNorm downstream makes nearly flat and which,
    next to the classifier, measures over-confidence on held-out data; a dropped channel's ∂L/∂m is the
    first-order effect of adding it back, the quantity the expected loss needs. On CIFAR ResNet-20 the
    two-sided estimator pushed the last stage's residual group to the floor ratio within a few steps.

    `gradient="dropped_reweighted"` divides that term by the drop probability (∂m/∂p = (1 − m)/(1 − p)).
    ∂E[L]/∂p_c = E[L(m_c = 1) − L(m_c = 0)], whose first-order estimate from the dropped side is the slope
    at m_c = 0; dropped-only estimates (1 − p_c) times it, so a channel that is rarely dropped passes little
    signal. The reweighted estimator is unbiased for the slope at 0 (the other channels' masks are
    independent of m_c), at the price of more variance where p is near 1; the implicit gradient weights
    those channels little (on a 500-image-per-class CIFAR-10 subset it measured no better than dropped-only;
    those results were withdrawn with that regime). With a BatchNorm downstream in training mode, the loss is invariant to the joint
    scale of a group's kept channels, so their slopes cancel (Σ_kept m_c ∂L/∂m_c = 0) and carry no removal
    signal. Where a ReLU follows the mask, a dropped channel's slope is 0 unless the ratio step's masks
    leak (`AdmmConfig.mask_leak`) or the masks sit after the activation (`AdmmConfig.mask_placement`):
    otherwise both dropped-side estimators pass nothing there.

    Pass a `torch.Generator` on p's device seeded identically on every DDP rank, so that every rank draws
    the same masks (the masks are shared by the whole batch, as in the paper).

    Args:
        p: keep probabilities in [0, 1], any shape (e.g. [G, Cmax] from `keep_probabilities`).
        generator: random source on p's device; None uses torch's global generator.

    Returns:
        m with p's shape, dtype and device.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> m = sample_masks(torch.tensor([0.0, 1.0, 0.5]), generator=g)
        >>> m[:2].tolist()
        [0.0, 1.0]
    """
    if not p.is_floating_point():
        raise ConfigError(f"keep probabilities must be a floating-point tensor; got {p.dtype}")
    if generator is not None and torch.device(generator.device).type != p.device.type:
        raise ConfigError(
            f"the generator lives on {generator.device} but the probabilities are on {p.device}; "
            f"create it with torch.Generator(device={str(p.device)!r})"
        )
    if gradient not in MASK_GRADIENTS:
        raise ConfigError(f"unknown mask gradient {gradient!r}; valid: {', '.join(MASK_GRADIENTS)}")
    m: Tensor = _MASK_FUNCTIONS[gradient].apply(p, generator)
    return m


def deterministic_masks(importance: Tensor, valid: Tensor, channels: Tensor | Sequence[int]) -> Tensor:
    """Keep each group's `channels[g]` most important channels (evaluation, surgery).

    Ties are broken by channel index (the lower index is kept), so the result is reproducible. Padding
    positions are never kept.

    Args:
        importance: [G, Cmax] channel importances.
        valid: [G, Cmax] bool mask of each group's real channels.
        channels: [G] channel counts to keep, each in 0..(group size).

    Returns:
        [G, Cmax] bool masks.

    Example:
        >>> imp = torch.tensor([[0.3, 0.9, 0.3, 0.1]])
        >>> deterministic_masks(imp, imp > 0, [2]).tolist()
        [[True, True, False, False]]
    """
    _check_batch(importance, valid)
    k = torch.as_tensor(channels, device=importance.device)
    if k.dim() != 1 or k.shape[0] != importance.shape[0]:
        raise KeepRatioError(
            f"expected one channel count per group ({importance.shape[0]}), got shape {tuple(k.shape)}"
        )
    if k.is_floating_point() and not bool((k == k.round()).all()):
        raise KeepRatioError(f"channel counts must be whole numbers; got {k.tolist()}")
    k = k.long()
    sizes = valid.sum(dim=1)
    bad = (k < 0) | (k > sizes)
    if bool(bad.any()):
        g = int(bad.nonzero()[0, 0])
        raise KeepRatioError(f"group {g}: channel count {int(k[g])} outside 0..{int(sizes[g])} (the group's size)")
    score = importance.detach().masked_fill(~valid, -math.inf)
    # A stable descending sort keeps equal importances in index order: ties go to the lower index.
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    rank = torch.arange(score.shape[1], device=score.device).expand_as(score)
    keep_sorted = rank < k[:, None]
    return torch.zeros_like(valid).scatter(1, order, keep_sorted) & valid


# ---------------------------------------------------------------------------------------------------------
# β2 schedule
# ---------------------------------------------------------------------------------------------------------
Beta2Kind = Literal["constant", "linear", "exponential"]
_BETA2_KINDS = ("constant", "linear", "exponential")


@dataclass(frozen=True)
class Beta2Schedule:
    """β2 over the search's progress in [0, 1]: constant, linear or exponential (geometric) from start to end.

    Raising β2 makes the masks nearly deterministic (top-k) by the end of the search. `end=None` means
    `end = start`. A constant schedule uses `start` only.

    Example:
        >>> Beta2Schedule(start=1.0, end=100.0, kind="exponential").value(0.5)
        10.0
    """

    start: float = 1.0
    end: float | None = None
    kind: Beta2Kind = "constant"

    def __post_init__(self) -> None:
        if self.kind not in _BETA2_KINDS:
            raise ConfigError(f"unknown beta2 schedule kind {self.kind!r}; valid kinds: {', '.join(_BETA2_KINDS)}")
        for name, value in (("start", self.start), ("end", self.end)):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"beta2 schedule {name} must be a positive finite number; got {value!r}")
        if self.kind == "constant" and self.end is not None and self.end != self.start:
            raise ConfigError(
                f"a constant beta2 schedule has one value, but start={self.start} and end={self.end}; "
                "set kind='linear' or 'exponential', or drop end"
            )

    @property
    def final(self) -> float:
        """The value at progress 1."""
        return float(self.start if self.end is None or self.kind == "constant" else self.end)

    def value(self, progress: float) -> float:
        """β2 at `progress` ∈ [0, 1] (the fraction of the search done)."""
        if not (math.isfinite(progress) and -1e-9 <= progress <= 1.0 + 1e-9):
            raise ConfigError(f"progress must lie in [0, 1]; got {progress}")
        x = min(max(float(progress), 0.0), 1.0)
        start, end = float(self.start), self.final
        if self.kind == "linear":
            return start + (end - start) * x
        if self.kind == "exponential":
            return float(start * (end / start) ** x)
        return start
