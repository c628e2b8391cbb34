"""The keep-ratio allocator: DSA's learnable ratios with the ADMM variables that hold them to a budget.

Shaped like a `torch.optim` optimizer (`step`, `state_dict`, `load_state_dict`) so a checkpoint of the
search is just its state dict (torchao's BaseSparsifier does the same).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hwdsa.channels import round_channels
from hwdsa.costs import Budget, SpreadAwareCost
from hwdsa.distributed import all_reduce_mean_
from hwdsa.dsa.process import MASK_GRADIENTS, Beta2Schedule, deterministic_masks, keep_probabilities, sample_masks
from hwdsa.dsa.projection import check_feasible, project_onto_budget
from hwdsa.errors import ConfigError
from hwdsa.masking import MASK_PLACEMENTS, MaskPlacement

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdmmConfig:
    """Settings of the ratio optimisation (design note, section 5). The paper's values are unknown; these
    are hwdsa's choices, tuned on CIFAR-10 ResNet-20 and small CNNs, and reported with every run.

    Attributes:
        rho: weight of the augmented penalty (ρ/2)‖α − z + u‖².
        ratio_lr: step size η of the linearised α-step, in keep-ratio units per unit of normalised gradient.
        initial_logit: starting logit of every ratio (the authors' 5 gives α ≈ 0.993).
        min_keep_ratio: lower end of the box every ratio stays in.
        min_channels: the fewest channels the search lets a group keep (a narrower group stays whole): each
            group's box starts at max(min_keep_ratio, min_channels / C_g). Set it to the deployment's channel
            lattice (with the job's matching `round_to`): below it (8 channels for ONNX Runtime's NCHWc
            kernels) a channel saves less time than the table's per-layer prices say, the runtime adds
            layout reorders around the off-lattice layer, while the accuracy it costs is real.
        update_every: weight steps between two ratio steps.
        floor: the keep-probability floor of the pruning process.
        beta2: schedule of the mask steepness over the search's progress.
        importance: how a group's members' BatchNorm scales are combined ("first" is the authors' choice).
        budget_warmup: fraction of the search over which each budget tightens from the cost of the initial
            ratios to its limit, along Zhu & Gupta's cubic (fast first, flat at the end, so the dual has
            little lag to unwind when the limit stops moving). Without it the ADMM transient (z jumps to the
            budget, the dual integrates the gap) drives the ratios far below the budget within a few steps,
            and that transient, not the task gradient, fixes the allocation.
        mask_gradient: "straight_through" (the paper's), "dropped_only" or "dropped_reweighted" (see
            `sample_masks`).
        mask_leak: the value a dropped channel keeps in the masks the ratio step differentiates (not in the
            weight steps' masks). The mask sits before the activation (as in the authors' code), and
            PyTorch's ReLU has zero gradient at 0, so with a dropped channel at exactly 0 its slope ∂L/∂m,
            the effect of adding it back, is lost wherever a ReLU follows the mask (every block-internal
            group of a ResNet): the dropped side of every estimator is then zero there. ReLU is positively
            homogeneous, relu(b·m) = m·relu(b) for m ≥ 0, so the slope wanted is the one from the right,
            which a small positive value (e.g. 1e-3) recovers while changing the forward pass by that
            fraction of the dropped channels only. 0 reproduces the authors' estimator. Which estimator is
            the default is settled by the ablation in `benchmarks/dsa_vs_uniform.py` (held-out accuracy).
        mask_placement: "before_activation" (the authors': at the groups' BatchNorm outputs) or
            "after_activation" (on the inputs of the layers that read each group, after the activation and
            any residual sum): the same forward pass for masks in {0, 1}, and a dropped channel's slope
            without a leak (`hwdsa.masking`).
        smooth_costs: price each budget the z-step projects onto at its expected value over the kept counts
            the current masks draw (per group, a spread of sqrt(Σ_c p_c(1 − p_c)) channels; it shrinks as β2
            rises and the masks become deterministic). A stepped latency table is flat between its lattice
            points, so at σ = 0 a group whose count sits on such a tread has price zero and the projection
            never trims it; the spread gives every group the price of its likely neighbours. Only costs that
            take a spread (`hwdsa.costs.SpreadAwareCost`: latency) change; the result is always checked on the
            exact cost. On by default: on ResNet-20 at half the measured latency it was ahead of the unsmoothed
            search by 1.5 and 3.0 pt on held-out images (`benchmarks/equal_latency.py`), which without it cut
            stage 1 to 1-4 channels.
        fill_budget: when the search ends below a budget (the task gradient of groups that matter little is
            mostly noise, so their ratios can drift down freely), scale every group's pruned fraction by one
            factor until a budget binds: an unused budget is accuracy given away.
        settle_fraction: the final fraction of the search in which the ratios stop: the channels are fixed at
            the feasible counts (rounded as the job will round them) and the weights train under deterministic
            masks keeping each group's most important channels (fixed then too). Without it the search ends
            with weights trained on a distribution of sub-networks (at β2's end, channels near a group's
            threshold are still kept at random), not on the one that is kept; Torch-Pruning's iterative
            pruning trains its final network between its last steps. 0 (off) is the authors' search.
        settle_restart: restart the weights' cosine learning rate at the settle point (a warm restart), so that
            the settle phase trains the network it cut at the full rate and not at the tail of the search's
            decay (at 0.2 of a cosine, under a tenth of the peak), as fine-tuning after a cut and each of
            Torch-Pruning's iterative steps do. Needs `settle_fraction` > 0; the steps before it are unchanged.
    """

    rho: float = 10.0
    ratio_lr: float = 0.05
    initial_logit: float = 5.0
    min_keep_ratio: float = 0.05
    min_channels: int = 1
    update_every: int = 2
    floor: float = 0.01
    beta2: Beta2Schedule = field(default_factory=lambda: Beta2Schedule(start=1.0, end=5.0, kind="linear"))
    importance: str = "first"
    budget_warmup: float = 0.5
    fill_budget: bool = True
    mask_gradient: str = "straight_through"
    mask_leak: float = 1e-3
    mask_placement: MaskPlacement = "before_activation"
    smooth_costs: bool = True
    settle_fraction: float = 0.0
    settle_restart: bool = False

    def __post_init__(self) -> None:
        if not self.rho > 0:
            raise ConfigError(f"rho must be positive; got {self.rho}")
        if not self.ratio_lr > 0:
            raise ConfigError(f"ratio_lr must be positive; got {self.ratio_lr}")
        if not 0 < self.min_keep_ratio < 1:
            raise ConfigError(f"min_keep_ratio must lie in (0, 1); got {self.min_keep_ratio}")
        if self.min_channels < 1:
            raise ConfigError(f"min_channels must be >= 1; got {self.min_channels}")
        if self.update_every < 1:
            raise ConfigError(f"update_every must be >= 1; got {self.update_every}")
        if not 0 <= self.budget_warmup < 1:
            raise ConfigError(f"budget_warmup is a fraction of the search in [0, 1); got {self.budget_warmup}")
        if not 0 <= self.settle_fraction < 1:
            raise ConfigError(f"settle_fraction is a fraction of the search in [0, 1); got {self.settle_fraction}")
        if self.settle_fraction > 1 - self.budget_warmup:
            raise ConfigError(
                f"settle_fraction {self.settle_fraction} would fix the channels before the budget warm-up "
                f"({self.budget_warmup} of the search) reaches the budget: keep settle_fraction + budget_warmup <= 1"
            )
        if self.settle_restart and self.settle_fraction == 0:
            raise ConfigError("settle_restart restarts the learning rate at the settle point: set settle_fraction > 0 as well")
        if not 0 <= self.mask_leak < 0.1:
            raise ConfigError(f"mask_leak is a small value in [0, 0.1) (e.g. 1e-3); got {self.mask_leak}")
        if self.mask_placement not in MASK_PLACEMENTS:
            raise ConfigError(f"unknown mask_placement {self.mask_placement!r}; valid: {', '.join(MASK_PLACEMENTS)}")
        if self.mask_gradient not in MASK_GRADIENTS:
            raise ConfigError(f"unknown mask_gradient {self.mask_gradient!r}; valid: {', '.join(MASK_GRADIENTS)}")

    def lower_bounds(self, group_sizes: Sequence[int]) -> Tensor:
        """The lower end of each group's box: max(min_keep_ratio, min_channels / C_g), held under 1 so that the
        sigmoid parameterisation keeps a gradient (a group no wider than min_channels stays whole)."""
        return torch.tensor(
            [min(max(self.min_keep_ratio, self.min_channels / c), 1.0 - 1e-6) for c in group_sizes], dtype=torch.float64
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pad_importance(per_group: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack per-group importance vectors into a [G, Cmax] matrix and its validity mask."""
    sizes = [int(t.numel()) for t in per_group]
    width = max(sizes)
    imp = per_group[0].new_zeros(len(per_group), width)
    valid = torch.zeros(len(per_group), width, dtype=torch.bool, device=imp.device)
    for i, t in enumerate(per_group):
        imp[i, : sizes[i]] = t.detach()
        valid[i, : sizes[i]] = True
    return imp, valid


class RatioAllocator:
    """Keep ratios α = σ(logits) per channel group, and the ADMM state (z, u) of each budget.

    The search loop calls `masks()` before each forward pass, `ratio_step()` on held-out batches, and
    `admm_update()` after each ratio step. `feasible_ratios()` is the allocation that meets every budget.
    """

    def __init__(self, group_sizes: Sequence[int], budgets: Sequence[Budget], config: AdmmConfig, device: torch.device | str = "cpu") -> None:
        if not budgets:
            raise ConfigError("DSA needs at least one budget (e.g. FLOPs, parameters or latency)")
        names = [b.cost.name for b in budgets]
        if len(set(names)) != len(names):
            raise ConfigError(
                f"one budget per cost, got {names}: two limits on one cost are one limit, the smaller "
                "(several latency budgets are several devices: give each its own table)"
            )
        self.group_sizes = tuple(int(c) for c in group_sizes)
        self.budgets = tuple(budgets)
        self.config = config
        self.device = torch.device(device)
        self.lower = config.lower_bounds(self.group_sizes)
        for b in self.budgets:
            check_feasible(b.cost, b.limit, self.lower)
        self.logits = nn.Parameter(torch.full((len(self.group_sizes),), config.initial_logit, device=self.device))
        self.grad_sq = torch.zeros((), device=self.device)  # running mean square of the task gradient
        self._alpha: Tensor | None = None  # the α the last differentiable masks were drawn from
        self.spread: Tensor | None = None  # kept-count std per group of the last masks drawn (smooth_costs)
        alpha = self.keep_ratios.detach()
        self.initial_costs = tuple(float(b.cost(alpha.double().cpu())) for b in self.budgets)
        self.z = [self._project(alpha, b) for b in self.scheduled_budgets(0.0)]
        self.u = [torch.zeros_like(alpha) for _ in self.budgets]
        self.steps = 0

    # -- ratios --------------------------------------------------------------------------------
    @property
    def keep_ratios(self) -> Tensor:
        """α = ε + (1 − ε)·σ(logits), ε the group's lower end: inside its box [ε, 1] with a gradient everywhere.

        A clamp at ε would zero the gradient below it, and a ratio pushed past the floor by the ADMM
        penalty could then never come back.
        """
        eps = self.lower.to(device=self.logits.device, dtype=self.logits.dtype)
        return eps + (1.0 - eps) * torch.sigmoid(self.logits)

    def scheduled_budgets(self, progress: float) -> list[Budget]:
        """The budgets the z-step projects onto at `progress` ∈ [0, 1] of the search (see `budget_warmup`)."""
        warmup = self.config.budget_warmup
        left = max(0.0, 1.0 - progress / warmup) ** 3 if warmup > 0 else 0.0
        return [
            Budget(b.cost, b.limit + left * max(0.0, c0 - b.limit)) if left > 0 else b
            for b, c0 in zip(self.budgets, self.initial_costs)
        ]

    def _project(self, v: Tensor, budget: Budget) -> Tensor:
        z = project_onto_budget(v.detach().double().cpu(), budget.cost, budget.limit, lower=self.lower, upper=1.0)
        return z.to(device=self.device, dtype=v.dtype)

    def feasible_ratios(self) -> Tensor:
        """The search's result: z (design note, section 5: take z, not α), meeting every budget at once.

        With one budget this is z itself. With several, start from the mean of the z's and project onto each
        budget in turn: projections onto {cost ≤ B} of monotone costs only lower ratios, so a budget already
        met stays met, and a few rounds settle it.
        """
        z = torch.stack(self.z).mean(0)
        for _ in range(20):
            if all(b.is_met(z.double().cpu()) for b in self.budgets):
                break
            for b in self.budgets:
                z = self._project(z, b)
        if self.config.fill_budget:
            z = self._fill(z)
        return z

    def _fill(self, z: Tensor) -> Tensor:
        """z + s·(1 − z) with the largest s ∈ [0, 1] that meets every budget (bisection; costs are monotone).

        Scaling every group's pruned fraction by one factor keeps the searched allocation's shape.
        """
        zd = z.detach().double().cpu()

        def point(s: float) -> Tensor:
            return zd + s * (1.0 - zd)

        def met(s: float) -> bool:
            return all(b.is_met(point(s), rtol=0.0) for b in self.budgets)

        if not met(0.0):
            return z
        if met(1.0):
            return torch.ones_like(z)
        lo, hi = 0.0, 1.0
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if met(mid) else (lo, mid)
        if lo > 1e-3:
            _log.info("the search ended %.1f%% below its budget; pruned fractions scaled by %.3f to fill it", 100 * self._slack(zd), 1 - lo)
        return point(lo).to(device=z.device, dtype=z.dtype)

    def _slack(self, z: Tensor) -> float:
        """The smallest relative slack 1 − cost/limit over the budgets."""
        return min(1.0 - float(b.cost(z)) / b.limit for b in self.budgets)

    # -- masks ---------------------------------------------------------------------------------
    def probabilities(self, importance: Sequence[Tensor], beta2: float) -> tuple[Tensor, Tensor]:
        """Keep probabilities p [G, Cmax] (differentiable in α) and the validity mask."""
        imp, valid = pad_importance([t.to(self.device) for t in importance])
        p = keep_probabilities(imp, valid, self.keep_ratios, beta2, floor=self.config.floor)
        return p, valid

    def masks(self, importance: Sequence[Tensor], beta2: float, generator: torch.Generator | None = None) -> list[Tensor]:
        """Bernoulli masks per group with straight-through gradients to α (one [C_g] vector per group).

        Under autograd (the ratio step's masks) a dropped channel carries `mask_leak` instead of 0; under
        `torch.no_grad()` (the weight steps' masks) masks are exactly 0/1.
        """
        imp, valid = pad_importance([t.to(self.device) for t in importance])
        alpha = self.keep_ratios
        self._alpha = alpha
        p = keep_probabilities(imp, valid, alpha, beta2, floor=self.config.floor)
        if self.config.smooth_costs:
            self.spread = (p * (1 - p)).detach().sum(dim=1).sqrt().double().cpu()
        m = sample_masks(p, generator=generator, gradient=self.config.mask_gradient)
        if self.config.mask_leak > 0 and torch.is_grad_enabled():
            m = m + self.config.mask_leak * (1 - m.detach())
        return [m[g, :c] for g, c in enumerate(self.group_sizes)]

    def eval_masks(self, importance: Sequence[Tensor], ratios: Tensor | None = None) -> list[Tensor]:
        """Deterministic masks keeping the top-⌊αC⌉ channels by importance."""
        imp, valid = pad_importance([t.to(self.device) for t in importance])
        channels = self.channels(ratios)
        m = deterministic_masks(imp, valid, torch.tensor(channels, device=self.device))
        return [m[g, :c].to(imp.dtype) for g, c in enumerate(self.group_sizes)]

    def channels(self, ratios: Tensor | None = None) -> list[int]:
        """Channel counts α·C rounded by the one rule (`hwdsa.channels.round_channels`), at least one per group."""
        r = (self.keep_ratios if ratios is None else ratios).detach().cpu().double()
        return round_channels([float(r[g]) * c for g, c in enumerate(self.group_sizes)], self.group_sizes)

    # -- ADMM ----------------------------------------------------------------------------------
    def ratio_step(self, task_loss: Tensor) -> None:
        """One linearised-ADMM α-step on the task loss of masks drawn by the last `masks()` call.

        With g the task-loss gradient w.r.t. α (through the implicit gradient of the pruning process),
        averaged over ranks and divided by its running root mean square (one scalar for all groups, so the
        groups' relative sensitivities are kept), α moves to the minimiser of
        ⟨g, α⟩ + ‖α − α_k‖²/(2η) + (ρ/2) Σ_b ‖α − z_b + u_b‖², clipped to the box. Unlike a gradient
        step on the penalty, this tracks z − u at a fixed rate whatever the size of u, so the dual cannot
        drive α far past the budget.
        """
        if self._alpha is None:
            raise RuntimeError("ratio_step needs differentiable masks from masks() first")
        (grad,) = torch.autograd.grad(task_loss, [self._alpha])
        g = all_reduce_mean_(grad.detach().clone())
        self.grad_sq = 0.9 * self.grad_sq + 0.1 * g.pow(2).mean() if self.steps else g.pow(2).mean()
        g = g / (self.grad_sq.sqrt() + 1e-12)
        eta, rho = self.config.ratio_lr, self.config.rho
        with torch.no_grad():
            a = self._alpha.detach()
            pull = sum(z - u for z, u in zip(self.z, self.u))
            new = (a / eta - g + rho * pull) / (1.0 / eta + rho * len(self.z))
            self._set_ratios(new)
        self._alpha = None
        self.steps += 1

    def _set_ratios(self, ratios: Tensor) -> None:
        """Store `ratios` (clipped into the box) as logits."""
        eps = self.lower.to(device=ratios.device, dtype=ratios.dtype)
        s = ((ratios - eps) / (1.0 - eps)).clamp(1e-6, 1 - 1e-6)
        self.logits.copy_(torch.log(s) - torch.log1p(-s))

    def admm_update(self, progress: float = 1.0) -> None:
        """z-step (projection of α + u onto each budget, as scheduled at `progress`) and u-step (u ← u + α − z)."""
        alpha = self.keep_ratios.detach()
        for i, budget in enumerate(self.scheduled_budgets(progress)):
            budget = self._smoothed(budget)
            self.z[i] = self._project(alpha + self.u[i], budget)
            self.u[i] = self.u[i] + alpha - self.z[i]

    def _smoothed(self, budget: Budget) -> Budget:
        """`budget` on its cost's expected value under the last masks' spread (`AdmmConfig.smooth_costs`)."""
        if self.spread is None or not isinstance(budget.cost, SpreadAwareCost):
            return budget
        return Budget(budget.cost.with_spread(self.spread), budget.limit)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "logits": self.logits.detach().cpu().clone(),
            "grad_sq": self.grad_sq.detach().cpu(),
            "z": [z.cpu() for z in self.z],
            "u": [u.cpu() for u in self.u],
            "steps": self.steps,
            "spread": None if self.spread is None else self.spread.clone(),
            "group_sizes": list(self.group_sizes),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["group_sizes"]) != list(self.group_sizes):
            raise ConfigError(f"allocator state is for groups {state['group_sizes']}, this model has {list(self.group_sizes)}")
        with torch.no_grad():
            self.logits.copy_(state["logits"].to(self.device))
        self.grad_sq = state["grad_sq"].to(self.device)
        self.z = [z.to(self.device) for z in state["z"]]
        self.u = [u.to(self.device) for u in state["u"]]
        self.steps = int(state["steps"])
        self.spread = state.get("spread")

    def beta2(self, progress: float) -> float:
        return self.config.beta2.value(progress)
