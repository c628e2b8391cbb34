"""Channel counts: the one rule that turns a real count into whole channels, and counts that meet budgets.

Every place that rounds (plans from keep ratios, the search's result, latency tables' random networks)
goes through `round_channels`: the nearest count, halves up, on the lattice of multiples when one is asked
for, at least one channel (or one multiple) and at most the whole group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from torch import Tensor

from hwdsa.costs import Budget
from hwdsa.errors import BudgetInfeasibleError, ConfigError, KeepRatioError

__all__ = ["Rounding", "channels_within_budgets", "check_multiple", "round_channels"]

Rounding = Literal["nearest", "up", "down"]
_ROUNDINGS: tuple[str, ...] = ("nearest", "up", "down")
# Slack on float round-off: 0.3 · 10 is 3.0000000000000004 and must not round up to 4.
_EPS = 1e-9


def round_channels(
    targets: Sequence[float],
    group_sizes: Sequence[int],
    *,
    multiple: int | None = None,
    mode: Rounding = "nearest",
) -> list[int]:
    """Round real channel counts (e.g. α·C) to whole channels, or to multiples of `multiple`.

    Rules, per group of size C with step s = `multiple` (1 when None):
      - "nearest": the nearest multiple of s, halves rounded up (2.5 → 3 with s = 1; 12 → 16 with s = 8;
        note `round()` and `torch.round` send halves to the even neighbour instead);
        "up": the next multiple at or above; "down": the multiple at or below, so no group gets more
        channels than asked, except through the minimum below;
      - at least min(s, C) channels: one channel, or one whole multiple;
      - at most C: a count above C becomes C, the whole group, even when C is not a multiple of s (a group
        smaller than s stays whole), the same bounds as `channels_within_budgets`.

    Example:
        >>> round_channels([12.0, 3.2, 40.0], [64, 64, 40], multiple=8)
        [16, 8, 40]
        >>> round_channels([12.0, 3.2, 40.0], [64, 64, 40], multiple=8, mode="down")
        [8, 8, 40]
    """
    if len(targets) != len(group_sizes):
        raise KeepRatioError(f"expected {len(group_sizes)} channel counts (one per group), got {len(targets)}")
    if mode not in _ROUNDINGS:
        raise ConfigError(f"unknown rounding mode {mode!r}; valid modes: {', '.join(_ROUNDINGS)}")
    step = check_multiple(multiple)
    out = []
    for g, (x, size) in enumerate(zip(targets, group_sizes)):
        x = float(x)
        if not math.isfinite(x) or x <= 0:
            raise KeepRatioError(f"group {g}: channel count must be positive and finite; got {x}")
        q = x / step
        k = math.floor(q + 0.5 + _EPS) if mode == "nearest" else (math.ceil(q - _EPS) if mode == "up" else math.floor(q + _EPS))
        out.append(min(int(size), max(k * step, min(step, int(size)))))
    return out


def check_multiple(multiple: int | None) -> int:
    """The rounding step: 1 for None, else `multiple` when it is a positive integer."""
    if multiple is None:
        return 1
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ConfigError(f"round_to must be a positive integer (e.g. 8) or None; got {multiple!r}")
    return multiple


def channels_within_budgets(
    ratios: Tensor, budgets: Sequence[Budget], group_sizes: Sequence[int], *, multiple: int | None = None
) -> list[int]:
    """Integer channel counts near `ratios`·C that meet every budget exactly (`cost.exact`).

    Rounds to the nearest count (or multiple), then, while a budget is exceeded, removes channels (one, or
    one multiple) from the group whose removal lowers the exceeded costs most per channel removed.
    """
    step = check_multiple(multiple)
    sizes = [int(c) for c in group_sizes]
    r = ratios.detach().double().cpu()
    channels = round_channels([float(r[g]) * c for g, c in enumerate(sizes)], sizes, multiple=multiple)
    minimum = [min(c, step) for c in sizes]

    def excess(ch: list[int]) -> float:
        return sum(max(0.0, b.cost.exact(ch) / b.limit - 1.0) for b in budgets)

    current = excess(channels)
    while current > 0:
        best, best_gain = -1, 0.0
        for g in range(len(sizes)):
            if channels[g] - step < minimum[g]:
                continue
            trial = list(channels)
            trial[g] -= step
            gain = (current - excess(trial)) / step
            if gain > best_gain:
                best, best_gain = g, gain
        if best < 0:
            costs = ", ".join(f"{b.cost.name} {b.cost.exact(channels):.4g} > {b.limit:.4g}" for b in budgets if b.cost.exact(channels) > b.limit)
            raise BudgetInfeasibleError(f"no integer channel counts meet the budget ({costs}); raise the budget or lower --round-to")
        channels[best] -= step
        current = excess(channels)
    return channels
