"""Euclidean projection of keep ratios onto a budget, the z-step of DSA's ADMM (design note, section 5).

The feasible set is {z : cost(z) ≤ limit, lower ≤ z ≤ upper} for a cost that is non-decreasing in every
ratio. The projection always returns a point of that set: every iterate is the feasible end of a bracket,
and a last bisection toward the box's lower corner (feasible whenever the budget is) repairs anything else.

Two solvers:
- a cost exposing `quadratic_terms()` (FLOPs, parameters) follows the exact KKT path: for a multiplier λ the
  box-constrained minimiser of ½‖z − v‖² + λ·cost(z) solves (I + λQ)z = v − λc on its free coordinates;
  λ is found by root bracketing so that cost(z(λ)) = limit. While I + λQ stays positive definite this is the
  global optimum, even though the set is not convex (Lagrangian sufficiency);
- any other differentiable cost (latency) re-linearises: z(λ) = clip(v − λ∇cost(z_k)), λ bracketed so that
  cost(z(λ)) = limit, then ∇ taken again at the new point, until z settles on a KKT point.
A FLOPs quadratic is indefinite (α_i·α_j terms), so a very tight budget can need λ past 1/|μ_min(Q)|; the
quadratic path then hands over to the re-linearised solver, which returns a KKT point (locally closest).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from hwdsa.costs import CostModel
from hwdsa.errors import BudgetInfeasibleError, ConfigError, KeepRatioError

_log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LOWER",
    "ProjectionResult",
    "SupportsQuadraticTerms",
    "check_feasible",
    "project_onto_budget",
    "solve_projection",
]

DEFAULT_LOWER = 0.01
"""The default smallest keep ratio of the box (the allocator passes its own `min_keep_ratio`)."""

_F64 = torch.float64


@runtime_checkable
class SupportsQuadraticTerms(Protocol):
    """A cost that is exactly ½·zᵀQz + cᵀz + const in the keep ratios z, with Q and c non-negative.

    `hwdsa.costs.QuadraticCost` (FlopsCost, ParamsCost) implements it.
    """

    def quadratic_terms(self) -> tuple[Tensor, Tensor, float]: ...


Method = Literal["inside", "quadratic", "linearized", "slsqp", "restored"]

# A re-linearisation whose residual ‖T(z) − z‖∞ ends above this did not settle: SLSQP polishes its point.
_SETTLED = 1e-6


@dataclass(frozen=True)
class ProjectionResult:
    """The projected point and how it was found.

    Attributes:
        z: the projection, in v's dtype and on v's device.
        method: "inside" (v clipped to the box met the budget), "quadratic" (exact KKT path),
            "linearized" (re-linearised solver), "restored" (only the feasibility repair found a point).
        multiplier: the budget's Lagrange multiplier λ in 1/(cost unit) (0 when "inside"; nan when unknown).
        is_exact: whether z is provably the closest feasible point.
        cost: the cost at z (float64 evaluation).
        iterations: outer iterations of the re-linearised solver (0 for the other methods).
        kkt_residual: ‖z − clip(v − λ∇cost(z))‖∞, 0 at a KKT point (nan when λ is unknown).
    """

    z: Tensor
    method: Method
    multiplier: float
    is_exact: bool
    cost: float
    iterations: int = 0
    kkt_residual: float = math.nan


# ---------------------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------------------
def _n_groups(cost: CostModel) -> int:
    sizes = getattr(cost, "group_sizes", None)
    if sizes is None:
        raise ConfigError(f"{type(cost).__name__} is not a CostModel: it has no group_sizes")
    return len(sizes)


def _bound(value: float | Tensor, n: int, name: str, device: torch.device) -> Tensor:
    t = torch.as_tensor(value, dtype=_F64, device=device) if not isinstance(value, Tensor) else value.detach().to(device=device, dtype=_F64)
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ConfigError(f"{name} must be a number or one value per channel group ({n}); got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()) or bool((t > 1).any()):
        raise ConfigError(
            f"{name} keep ratios must lie in (0, 1] (a cost is defined there); got values in "
            f"[{float(t.min()):.4g}, {float(t.max()):.4g}]"
        )
    return t.clone()


def _box(lower: float | Tensor, upper: float | Tensor, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    lo = _bound(lower, n, "lower", device)
    hi = _bound(upper, n, "upper", device)
    if bool((lo > hi).any()):
        g = int((lo > hi).nonzero()[0, 0])
        raise ConfigError(f"group {g}: lower bound {float(lo[g]):.4g} is above upper bound {float(hi[g]):.4g}")
    return lo, hi


def _check_limit(limit: float) -> float:
    value = float(limit)
    if not math.isfinite(value):
        raise ConfigError(f"a budget limit must be a finite number; got {limit}")
    return value


def _cost_value(cost: CostModel, z: Tensor) -> float:
    with torch.no_grad():
        value = float(cost(z))
    if math.isnan(value):
        raise ConfigError(f"{type(cost).__name__} returned nan at keep ratios {z.tolist()}")
    return value


def _cost_value_and_grad(cost: CostModel, z: Tensor) -> tuple[float, Tensor]:
    with torch.enable_grad():
        x = z.detach().clone().requires_grad_(True)
        value = cost(x)
        if not value.requires_grad:
            raise ConfigError(f"{type(cost).__name__} is not differentiable in the keep ratios; the projection needs ∇cost")
        (grad,) = torch.autograd.grad(value, x, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(z)
    grad = grad.detach().to(_F64)
    if not bool(torch.isfinite(grad).all()):
        raise ConfigError(f"{type(cost).__name__} returned a non-finite gradient at keep ratios {z.tolist()}")
    return float(value.detach()), grad.clamp_min(0.0)  # a monotone cost has ∇ ≥ 0; round-off would flip directions


def _cost_grad(cost: CostModel, z: Tensor) -> Tensor:
    return _cost_value_and_grad(cost, z)[1]


# ---------------------------------------------------------------------------------------------------------
# feasibility
# ---------------------------------------------------------------------------------------------------------
def check_feasible(cost: CostModel, limit: float, lower: float | Tensor = DEFAULT_LOWER) -> None:
    """Refuse, before any training, a budget below the cost at the smallest allowed keep ratios.

    A monotone cost is smallest at the box's lower corner, so the budget is reachable exactly when the
    cost there is within the limit.

    Raises:
        BudgetInfeasibleError: the limit is below the smallest reachable cost; the message gives that
            cost, as a value and as a fraction of the dense network's cost.

    Example:
        >>> class Channels:  # kept channels of two groups of 8, plus 4 that are never pruned
        ...     name, unit, group_sizes, dense = "channels", "", (8, 8), 20.0
        ...     def __call__(self, z): return 8 * z.sum() + 4
        >>> check_feasible(Channels(), 5.0, lower=0.125)  # one channel per group: 1 + 1 + 4 = 6 > 5
        Traceback (most recent call last):
        ...
        hwdsa.errors.BudgetInfeasibleError: the budget 5 is below the smallest reachable channels cost 6 (30.0% ...
    """
    limit = _check_limit(limit)
    n = _n_groups(cost)
    lo = _bound(lower, n, "lower", lower.device if isinstance(lower, Tensor) else torch.device("cpu"))
    smallest = _cost_value(cost, lo)
    if smallest <= limit:
        return
    unit = f" {cost.unit}" if getattr(cost, "unit", "") else ""
    try:
        dense = float(cost.dense)
    except Exception:  # noqa: BLE001 - the fraction is a courtesy; the refusal must not depend on it
        dense = math.nan
    share = f" ({smallest / dense:.1%} of the dense network's {dense:.6g}{unit})" if dense > 0 else ""
    lowest = f"{float(lo.min()):.4g}" if bool((lo == lo[0]).all()) else f"{float(lo.min()):.4g}..{float(lo.max()):.4g}"
    raise BudgetInfeasibleError(
        f"the budget {limit:.6g}{unit} is below the smallest reachable {getattr(cost, 'name', 'cost')} cost "
        f"{smallest:.6g}{unit}{share}, reached with every keep ratio at its lower bound {lowest}; raise the budget "
        f"to at least that, or lower the smallest keep ratio (the allocator's min_keep_ratio)"
    )


# ---------------------------------------------------------------------------------------------------------
# one-dimensional root bracketing (Illinois regula falsi with a bisection safeguard)
# ---------------------------------------------------------------------------------------------------------
def _feasible_root(
    phi: Callable[[float], float], lo: float, hi: float, phi_lo: float, phi_hi: float, tol: float, steps: int
) -> tuple[float, float]:
    """For φ non-increasing with φ(lo) > 0 ≥ φ(hi), return (x, φ(x)) with −tol ≤ φ(x) ≤ 0 (the feasible end).

    Illinois steps converge superlinearly on smooth pieces; a bisection step is forced whenever the bracket
    failed to halve in the last three steps, so plateaus and kinks cost at most a bisection's worth.
    """
    w_lo, w_hi = phi_lo, phi_hi
    side = 0
    width_mark, since_mark = hi - lo, 0
    for _ in range(steps):
        if phi_hi >= -tol or hi - lo <= 1e-15 * max(abs(hi), 1e-300):
            break
        if since_mark >= 3:
            x = 0.5 * (lo + hi)
        else:
            x = (lo * w_hi - hi * w_lo) / (w_hi - w_lo) if w_hi != w_lo else 0.5 * (lo + hi)
            if not lo < x < hi:
                x = 0.5 * (lo + hi)
        f = phi(x)
        if f > 0:
            lo, phi_lo, w_lo = x, f, f
            if side == 1:
                w_hi *= 0.5
            side = 1
        else:
            hi, phi_hi, w_hi = x, f, f
            if side == -1:
                w_lo *= 0.5
            side = -1
        since_mark += 1
        if hi - lo <= 0.5 * width_mark:
            width_mark, since_mark = hi - lo, 0
    return hi, phi_hi


def _restore(cost: CostModel, limit: float, lo: Tensor, z: Tensor, tol: float, steps: int) -> Tensor:
    """The point lo + t(z − lo) with the largest t ∈ [0, 1] (to tolerance) whose cost is within the limit.

    Cost is non-decreasing in t because z ≥ lo, and t = 0 is feasible whenever the budget is.
    """
    excess_at_z = _cost_value(cost, z) - limit
    if excess_at_z <= 0:
        return z

    def excess(x: float) -> float:  # x = 1 − t: non-increasing in x, infeasible at 0, feasible at 1
        return _cost_value(cost, lo + (1.0 - x) * (z - lo)) - limit

    x, _ = _feasible_root(excess, 0.0, 1.0, excess_at_z, _cost_value(cost, lo) - limit, tol, steps)
    return lo + (1.0 - x) * (z - lo)


# ---------------------------------------------------------------------------------------------------------
# exact KKT path for quadratic costs
# ---------------------------------------------------------------------------------------------------------
def _box_qp(h: Tensor, b: Tensor, lo: Tensor, hi: Tensor, max_iter: int) -> Tensor | None:
    """argmin ½zᵀHz − bᵀz over lo ≤ z ≤ hi for positive definite H (block principal pivoting, Murty fallback).

    Returns None if the active set did not settle within `max_iter` pivots (the caller falls back).
    """
    n = b.shape[0]
    state = torch.zeros(n, dtype=torch.int8, device=b.device)  # 0 free, −1 at lower, +1 at upper
    scale = 1.0 + float(b.abs().max()) + float(h.abs().max())
    z_tol, g_tol = 1e-12, 1e-12 * scale
    best, backup = n + 1, 3
    for _ in range(max_iter):
        free = state == 0
        z = torch.where(state < 0, lo, hi).clone()
        if bool(free.any()):
            bound = ~free
            rhs = b[free] - h[free][:, bound] @ z[bound]
            try:
                z[free] = torch.linalg.solve(h[free][:, free], rhs)
            except RuntimeError:  # singular: only possible at the edge of positive definiteness
                return None
        grad = h @ z - b
        below = free & (z < lo - z_tol)
        above = free & (z > hi + z_tol)
        release = ((state < 0) & (grad < -g_tol)) | ((state > 0) & (grad > g_tol))
        wrong = below | above | release
        count = int(wrong.sum())
        if count == 0:
            return torch.minimum(torch.maximum(z, lo), hi)
        if count < best:
            best, backup = count, 3
        elif backup > 0:
            backup -= 1
        else:  # Murty's rule: switch only the largest wrong index; finite for P-matrices
            keep = torch.zeros_like(wrong)
            keep[int(wrong.nonzero()[-1, 0])] = True
            below, above, release = below & keep, above & keep, release & keep
        state = torch.where(below, torch.full_like(state, -1), state)
        state = torch.where(above, torch.full_like(state, 1), state)
        state = torch.where(release, torch.zeros_like(state), state)
    return None


@dataclass
class _PathOutcome:
    z: Tensor
    multiplier: float  # in scaled units (cost / limit)
    reached: bool


def _quadratic_path(
    terms: tuple[Tensor, Tensor, float], v: Tensor, z0: Tensor, lo: Tensor, hi: Tensor, limit: float, rtol: float, steps: int
) -> _PathOutcome | None:
    q_raw, c_raw, const = terms
    n = v.shape[0]
    q = torch.as_tensor(q_raw).detach().to(device=v.device, dtype=_F64)
    c = torch.as_tensor(c_raw).detach().to(device=v.device, dtype=_F64)
    if q.shape != (n, n) or c.shape != (n,):
        raise ConfigError(
            f"quadratic_terms() must give Q [{n}, {n}] and c [{n}]; got {tuple(q.shape)} and {tuple(c.shape)}"
        )
    if limit <= 0:
        return None
    # Work in units of the limit: the budget becomes 1 and λ is O(1) whatever the cost's unit (MACs ~ 1e8).
    q = 0.5 * (q + q.T) / limit
    c = c / limit
    k = float(const) / limit

    def g(z: Tensor) -> float:
        return float(0.5 * z @ q @ z + c @ z) + k

    eigs = torch.linalg.eigvalsh(q)
    mu_min, mu_abs = float(eigs[0]), float(eigs.abs().max())
    lam_cap = math.inf if mu_min >= -1e-12 * max(mu_abs, 1e-300) else (1.0 - 1e-7) / -mu_min
    eye = torch.eye(n, dtype=_F64, device=v.device)
    max_pivots = 10 * n + 50
    cache: dict[float, Tensor | None] = {}

    def solve(lam: float) -> Tensor | None:
        if lam not in cache:
            cache[lam] = _box_qp(eye + lam * q, v - lam * c, lo, hi, max_pivots)
        return cache[lam]

    # Bracket: double λ from a scale where the linearised step would reach the lower corner.
    grad0 = q @ z0 + c
    lam = float((z0 - lo).norm() / grad0.norm().clamp_min(1e-300)) if float(grad0.norm()) > 0 else 1.0
    lam = min(max(lam, 1e-12), lam_cap)
    lam_lo = 0.0
    for _ in range(200):
        z = solve(lam)
        if z is None:
            return None
        if g(z) <= 1.0:
            break
        lam_lo = lam
        if lam >= lam_cap:
            return _PathOutcome(z, lam, reached=False)
        lam = min(4.0 * lam, lam_cap)
    else:
        return None
    failed = False

    def phi(x: float) -> float:
        nonlocal failed
        zx = solve(x)
        if zx is None:
            failed = True
            return 0.0  # treated as feasible; the outcome is discarded below
        return g(zx) - 1.0

    z_lo = solve(lam_lo)
    if z_lo is None:
        return None
    lam_star, _ = _feasible_root(phi, lam_lo, lam, g(z_lo) - 1.0, g(z) - 1.0, rtol, steps)
    z_star = solve(lam_star)
    if failed or z_star is None:
        return None
    return _PathOutcome(z_star, lam_star, reached=True)


# ---------------------------------------------------------------------------------------------------------
# re-linearised solver for any monotone differentiable cost
# ---------------------------------------------------------------------------------------------------------
def _ray_step(
    cost: CostModel, v: Tensor, vc: Tensor, z: Tensor, lo: Tensor, hi: Tensor, limit: float, tol: float, steps: int
) -> tuple[Tensor, float] | None:
    """T(z): the feasible point clip(v − λ∇cost(z)) with cost = limit (the design's re-linearised step).

    λ ↦ cost(clip(v − λd)) is non-increasing for d = ∇cost ≥ 0, so the root is bracketed between λ = 0 and
    the λ where every movable ratio reaches its lower bound. If even that point is over the budget (the
    cost is flat in some ratio here), the point is repaired toward the lower corner and λ is unknown (nan).
    None when the gradient vanishes.
    """
    d = _cost_grad(cost, z)
    movable = d > 0
    if not bool(movable.any()):
        return None
    lam_top = float(((vc - lo)[movable] / d[movable]).max())

    def ray(lam: float) -> Tensor:
        return torch.minimum(torch.maximum(v - lam * d, lo), hi)

    bottom = ray(lam_top)
    excess_bottom = _cost_value(cost, bottom) - limit
    if excess_bottom > 0:
        return _restore(cost, limit, lo, bottom, tol, steps), math.nan
    excess_top = _cost_value(cost, vc) - limit
    if excess_top <= 0:
        return vc, 0.0
    lam, _ = _feasible_root(lambda x: _cost_value(cost, ray(x)) - limit, 0.0, lam_top, excess_top, excess_bottom, tol, steps)
    return ray(lam), lam


@dataclass
class _Linearized:
    z: Tensor
    multiplier: float  # nan when unknown (the repair step produced z)
    iterations: int
    residual: float  # smallest ‖T(z) − z‖∞ seen: ~0 at a fixed point (a KKT point)


def _linearized(
    cost: CostModel,
    v: Tensor,
    start: Tensor,
    lo: Tensor,
    hi: Tensor,
    limit: float,
    rtol: float,
    steps: int,
    max_outer: int,
    xtol: float,
    memory: int = 5,
    patience: int = 10,
) -> _Linearized:
    """Fixed point of z = T(z) (`_ray_step`), a KKT point; returns the feasible iterate closest to v.

    The plain iteration z ← T(z) oscillates where the cost curves strongly (λ·curvature > 1), so the next
    linearisation point is extrapolated from the last few iterates by Anderson acceleration. Only where ∇ is
    taken changes; every iterate T(·) is feasible, so the result is feasible whatever the extrapolation does.
    A cost whose gradient jumps (a piecewise-linear latency surface) can have no fixed point at all: the
    iteration then cycles, and it stops after `patience` iterations without halving its best residual.
    """
    tol = rtol * abs(limit)
    vc = torch.minimum(torch.maximum(v, lo), hi)
    z = start
    best: tuple[float, Tensor, float] | None = None
    residuals: list[Tensor] = []
    images: list[Tensor] = []
    last = best_res = mark = math.inf
    since_mark = 0
    iterations = 0
    for iterations in range(1, max_outer + 1):
        step = _ray_step(cost, v, vc, z, lo, hi, limit, tol, steps)
        if step is None:
            _log.debug("budget projection: zero cost gradient at %s; stopping", z.tolist())
            break
        tz, lam = step
        dist = float((tz - v).norm())
        if best is None or dist < best[0]:
            best = (dist, tz, lam)
        f = tz - z
        res = float(f.abs().max())
        best_res = min(best_res, res)
        if res <= xtol:
            break
        since_mark += 1
        if best_res <= 0.5 * mark:
            mark, since_mark = best_res, 0
        elif since_mark >= patience:
            _log.debug("budget projection: re-linearisation stalled at residual %.3g", best_res)
            break
        if res > 2.0 * last:  # the extrapolation misled: restart its memory from here
            residuals.clear()
            images.clear()
        last = res
        residuals.append(f)
        images.append(tz)
        if len(residuals) > memory + 1:
            residuals.pop(0)
            images.pop(0)
        if len(residuals) >= 2:
            fs, gs = torch.stack(residuals, dim=1), torch.stack(images, dim=1)
            gamma = torch.linalg.pinv(fs[:, 1:] - fs[:, :-1], rtol=1e-10) @ f
            z = tz - (gs[:, 1:] - gs[:, :-1]) @ gamma
            z = torch.minimum(torch.maximum(z, lo), hi)
        else:
            z = tz
    if best is None:
        return _Linearized(_restore(cost, limit, lo, start, tol, steps), math.nan, iterations, math.nan)
    return _Linearized(best[1], best[2], iterations, best_res)


def _polish(cost: CostModel, v: Tensor, z: Tensor, lo: Tensor, hi: Tensor, limit: float, max_iter: int) -> Tensor | None:
    """Run scipy's SLSQP (a quasi-Newton SQP) from z; None if scipy is missing.

    Used only where the re-linearisation did not settle: SLSQP's BFGS model of the curvature copes with
    a gradient that jumps between the pieces of a piecewise-linear cost. Its result may be infeasible by
    round-off; the caller repairs it and keeps it only if it is closer to v.
    """
    try:
        from scipy.optimize import minimize
    except ImportError:  # scipy comes with scikit-learn; without it the linearised point stands
        return None
    import numpy as np

    vn = v.cpu().numpy()
    lo_n, hi_n = lo.cpu().numpy(), hi.cpu().numpy()
    # SLSQP asks for the constraint and its gradient at the same points, often repeatedly: price each once.
    seen: dict[bytes, tuple[float, np.ndarray | None]] = {}

    def point(x: np.ndarray) -> Tensor:
        return torch.from_numpy(np.clip(x, lo_n, hi_n)).to(device=v.device, dtype=_F64)

    def slack(x: np.ndarray) -> float:
        key = x.tobytes()
        if key not in seen:
            seen[key] = (1.0 - _cost_value(cost, point(x)) / limit, None)
        return seen[key][0]

    def slack_grad(x: np.ndarray) -> np.ndarray:
        key = x.tobytes()
        cached = seen.get(key)
        if cached is None or cached[1] is None:
            value, grad = _cost_value_and_grad(cost, point(x))
            cached = (1.0 - value / limit, -grad.cpu().numpy() / limit)
            seen[key] = cached
        assert cached[1] is not None
        return cached[1]

    result = minimize(
        lambda x: 0.5 * float(np.sum((x - vn) ** 2)),
        z.cpu().numpy(),
        jac=lambda x: x - vn,
        bounds=list(zip(lo_n, hi_n)),
        constraints=[{"type": "ineq", "fun": slack, "jac": slack_grad}],
        method="SLSQP",
        options={"ftol": 1e-13, "maxiter": max_iter},
    )
    return point(result.x)


def _multiplier_estimate(cost: CostModel, v: Tensor, z: Tensor, lo: Tensor, hi: Tensor) -> float:
    """λ from v − z = λ∇cost(z) by least squares over the ratios strictly inside their box."""
    grad = _cost_grad(cost, z)
    inner = (z > lo + 1e-9) & (z < hi - 1e-9)
    g, r = grad[inner], (v - z)[inner]
    dd = float(g @ g)
    return max(float(r @ g) / dd, 0.0) if dd > 0 else math.nan


def _kkt_residual(cost: CostModel, v: Tensor, z: Tensor, lo: Tensor, hi: Tensor, lam: float) -> float:
    if not math.isfinite(lam):
        return math.nan
    target = torch.minimum(torch.maximum(v - lam * _cost_grad(cost, z), lo), hi)
    return float((z - target).abs().max())


# ---------------------------------------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------------------------------------
def _to_dtype_feasible(z: Tensor, dtype: torch.dtype, cost: CostModel, limit: float, lo: Tensor) -> Tensor:
    """Cast to `dtype`; where rounding up broke the budget, round those ratios down by one ulp instead."""
    out = z.to(dtype)
    if dtype == _F64 or _cost_value(cost, out.to(_F64)) <= limit:
        return out
    rounded_up = (out.to(_F64) > z) & (out.to(_F64) > lo)
    return torch.where(rounded_up, torch.nextafter(out, torch.zeros_like(out)), out)


def solve_projection(
    v: Tensor,
    cost: CostModel,
    limit: float,
    *,
    lower: float | Tensor = DEFAULT_LOWER,
    upper: float | Tensor = 1.0,
    rtol: float = 1e-10,
    max_outer: int = 50,
    root_steps: int = 200,
    xtol: float = 1e-10,
    polish: bool = True,
) -> ProjectionResult:
    """Project `v` onto {z : cost(z) ≤ limit, lower ≤ z ≤ upper} and report how (see `project_onto_budget`).

    Args:
        v: [G] point to project (e.g. α + u in the ADMM z-step).
        cost: a `CostModel`; one with `quadratic_terms()` takes the exact KKT path.
        limit: the budget, in the cost's unit.
        lower: smallest keep ratio, a number or one per group, in (0, 1].
        upper: largest keep ratio, a number or one per group, in (0, 1].
        rtol: the result's cost lies in [limit·(1 − rtol), limit] when the budget is active.
        max_outer: re-linearisations of the general solver.
        root_steps: evaluations allowed to each one-dimensional root search.
        xtol: the general solver stops once an iteration moves no ratio by more than this.
        polish: where the re-linearisation does not settle (a cost whose gradient jumps, a tight budget
            on a non-convex set), refine its point with scipy's SLSQP and keep it if it is closer to v.

    Raises:
        BudgetInfeasibleError: the limit is below the cost at the lower corner.
        KeepRatioError: v has the wrong shape or non-finite values.
    """
    if not isinstance(v, Tensor) or v.dim() != 1 or not v.is_floating_point():
        shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise KeepRatioError(f"v must be a 1-D floating-point tensor of keep ratios; got {shape}")
    n = _n_groups(cost)
    if v.shape[0] != n:
        raise KeepRatioError(f"expected one keep ratio per channel group ({n}), got {v.shape[0]}")
    if not bool(torch.isfinite(v).all()):
        raise KeepRatioError(f"cannot project non-finite keep ratios: {v.tolist()}")
    if not (0 < rtol < 1) or max_outer < 1 or root_steps < 1 or not xtol > 0:
        raise ConfigError(
            f"need 0 < rtol < 1, max_outer >= 1, root_steps >= 1, xtol > 0; got {rtol}, {max_outer}, {root_steps}, {xtol}"
        )
    limit = _check_limit(limit)
    lo, hi = _box(lower, upper, n, v.device)
    check_feasible(cost, limit, lo)
    x = v.detach().to(_F64)
    z0 = torch.minimum(torch.maximum(x, lo), hi)
    cost0 = _cost_value(cost, z0)
    if cost0 <= limit:
        return ProjectionResult(z0.to(v.dtype), "inside", 0.0, True, cost0, kkt_residual=0.0)

    tol = rtol * abs(limit)
    start = z0
    if isinstance(cost, SupportsQuadraticTerms):
        outcome = _quadratic_path(cost.quadratic_terms(), x, z0, lo, hi, limit, rtol, root_steps)
        if outcome is not None and outcome.reached:
            z = outcome.z
            value = _cost_value(cost, z)
            if value > limit:  # round-off between quadratic_terms() and cost(): a step toward lo repairs it
                z = _restore(cost, limit, lo, z, tol, root_steps)
                value = _cost_value(cost, z)
            if value >= limit * (1.0 - 1e3 * rtol):
                lam = outcome.multiplier / limit
                out = _to_dtype_feasible(z, v.dtype, cost, limit, lo)
                return ProjectionResult(out, "quadratic", lam, True, value, kkt_residual=_kkt_residual(cost, x, z, lo, hi, lam))
            _log.warning(
                "%s.quadratic_terms() disagrees with its cost (%.6g vs the limit %.6g at the KKT point); "
                "projecting with the general solver instead", type(cost).__name__, value, limit
            )
        elif outcome is not None:
            _log.debug("budget needs λ past 1/|μ_min(Q)|: the quadratic path stops, the linearised solver goes on")
            start = outcome.z
    found = _linearized(cost, x, start, lo, hi, limit, rtol, root_steps, max_outer, xtol)
    z, lam = found.z, found.multiplier
    method: Method = "linearized" if math.isfinite(lam) else "restored"
    if _cost_value(cost, z) > limit:  # cannot happen with exact arithmetic; keep the guarantee anyway
        z, lam, method = _restore(cost, limit, lo, z, tol, root_steps), math.nan, "restored"
    residual = _kkt_residual(cost, x, z, lo, hi, lam)
    if polish and not residual <= _SETTLED:
        polished = _polish(cost, x, z, lo, hi, limit, max_iter=max(4 * max_outer, 100))
        if polished is not None:
            # SLSQP may stop a little outside the set: pull its point back along the segment toward the lower
            # corner, or along the ray from v by the gradient there, and keep whichever is closer to v.
            candidates = [(_restore(cost, limit, lo, polished, tol, root_steps), math.nan)]
            step = _ray_step(cost, x, z0, polished, lo, hi, limit, tol, root_steps)
            if step is not None:
                candidates.append(step)
            for point, multiplier in candidates:
                if float((point - x).norm()) < float((z - x).norm()):
                    z, lam, method = point, multiplier, "slsqp"
            if method == "slsqp":
                if not math.isfinite(lam):
                    lam = _multiplier_estimate(cost, x, z, lo, hi)
                residual = _kkt_residual(cost, x, z, lo, hi, lam)
    out = _to_dtype_feasible(z, v.dtype, cost, limit, lo)
    return ProjectionResult(out, method, lam, False, _cost_value(cost, z), found.iterations, residual)


def project_onto_budget(
    v: Tensor,
    cost: CostModel,
    limit: float,
    *,
    lower: float | Tensor = DEFAULT_LOWER,
    upper: float | Tensor = 1.0,
    rtol: float = 1e-10,
    max_outer: int = 50,
    polish: bool = True,
) -> Tensor:
    """The point of {z : cost(z) ≤ limit, lower ≤ z ≤ upper} closest to `v` (Euclidean); always feasible.

    If v clipped to the box meets the budget, that clip is the answer. Otherwise: the exact KKT path for a
    cost with `quadratic_terms()`, else (or past the quadratic path's reach) re-linearised bisection, and in
    every case a feasible result. Runs in float64 on v's device; returns v's dtype (rounded so the budget
    still holds).

    Args:
        v: [G] point to project.
        cost: the budget's cost model (non-decreasing in every ratio, differentiable).
        limit: the budget in the cost's unit.
        lower: smallest keep ratio (number or [G]).
        upper: largest keep ratio (number or [G]).
        rtol: relative tolerance on an active budget: cost(z) ∈ [limit·(1 − rtol), limit].
        max_outer: re-linearisations of the general solver.
        polish: refine an unsettled re-linearisation with scipy's SLSQP (see `solve_projection`).

    Raises:
        BudgetInfeasibleError: the limit is below the cost at the lower corner (see `check_feasible`).

    Example:
        >>> class Channels:  # kept channels of two groups of 4
        ...     name, unit, group_sizes, dense = "channels", "", (4, 4), 8.0
        ...     def __call__(self, z): return 4 * z.sum()
        >>> z = project_onto_budget(torch.tensor([1.0, 0.5], dtype=torch.float64), Channels(), 4.0, lower=0.1)
        >>> [round(x, 9) for x in z.tolist()]  # the budget keeps 4 of 8 channels: both lose the same
        [0.75, 0.25]
    """
    return solve_projection(v, cost, limit, lower=lower, upper=upper, rtol=rtol, max_outer=max_outer, polish=polish).z
