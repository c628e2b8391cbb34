"""After the search: round each group's channel count to a latency-optimal neighbour within the budget.

The search ends with real-valued counts α_g·C_g. Rounding them to the nearest integer ignores the
device: on a GPU, 33 channels often cost what 40 cost, and 40 may even be faster than 36. This
pass starts from the table's step points (the counts it measured) around each searched count, then
spends what the budget has left on the cheapest channels anywhere, priced by `LatencyCost.exact`
(true table values, not the monotone envelope the search priced with).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from torch import Tensor

from hwdsa.channels import channels_within_budgets
from hwdsa.costs import Budget
from hwdsa.errors import BudgetInfeasibleError, ConfigError
from hwdsa.lut.cost_model import LatencyCost
from hwdsa.lut.fit import parse_interpolation, weight_mb
from hwdsa.profilers.backend import has_stepped_latency

_log = logging.getLogger(__name__)


def _steps(cost: LatencyCost, group: int, multiple: int | None, *, below_multiple: bool = False) -> list[int]:
    """The counts `group` may be rounded to: multiples of `multiple`, or the table's step points.

    The full width is always one (pruning may keep a group whole); `below_multiple` adds the table's
    measured counts under `multiple` (1, 2, 4 on a "gpu" grid).
    """
    size = cost.group_sizes[group]
    if multiple is not None:
        small = {p for p in cost.step_points(group) if p < multiple} if below_multiple else set()
        return sorted(set(range(multiple, size + 1, multiple)) | {size} | small)
    return sorted(set(cost.step_points(group)) | {size})


def _neighbours(count: float, steps: Sequence[int]) -> list[int]:
    """The nearest step point at or below `count` (the lowest one if none is) and at or above it."""
    below = [p for p in steps if p <= count + 1e-9]
    above = [p for p in steps if p >= count - 1e-9]
    return sorted({below[-1] if below else steps[0], above[0] if above else steps[-1]})


def _groups_of_layer(cost: LatencyCost, layer: int) -> set[int]:
    """The groups whose counts set the layer's input or output channel count."""
    grid = cost.layers[layer].grid
    return {g for ax in (grid.in_axis, grid.out_axis) for g, _ in ax.terms}


def _layers_of_groups(cost: LatencyCost) -> list[list[int]]:
    """For every group, the layers whose input or output count it feeds (the ones a move of it re-prices)."""
    per_group: list[list[int]] = [[] for _ in cost.group_sizes]
    for i in range(len(cost.layers)):
        for g in _groups_of_layer(cost, i):
            per_group[g].append(i)
    return per_group


def _grow_to_limit(
    current: list[int], latency: float, cost: LatencyCost, steps: Sequence[Sequence[int]], limit: float
) -> tuple[list[int], float]:
    """Spend what the budget has left: raise groups through their allowed steps, cheapest ms per channel first.

    The earlier phases only consider counts near the search's, and the search itself priced with the
    monotone envelope of the table (which over-prices non-monotone tables), so budget may be left that
    the true table values allow spending. A move of group g goes to its next allowed step or to any of
    the table's measured counts above (where a non-monotone table may dip; between measured counts the
    price per channel is constant under linear interpolation and zero under "ceil", so these targets
    suffice; under "ceil:N" the multiples of N are targets too). The cheapest move per channel gained
    that keeps ``cost.exact <= limit`` is taken, a saving or a free move first, the larger target on a
    tie; repeat until none fits.

    Pricing is incremental but exact: a move re-prices only the layers its group feeds, and the total is
    the same `math.fsum` over the same per-layer values that `LatencyCost.exact` takes, so it is equal
    to `cost.exact(current)` bit for bit. Candidate moves are cached per group and recomputed only for
    groups that share a layer with the group that moved.
    """
    sizes = cost.group_sizes
    layers_of = _layers_of_groups(cost)
    priced = cost.breakdown(current)
    parts = [p.latency_ms for p in priced]
    footprint = [weight_mb(p.spec) for p in priced]  # what a calibration's footprint terms read (as `exact` sums it)
    cal = cost.calibration
    scale = cal.scale if cal is not None else 1.0
    # where the price per channel can change: the measured counts and, under "ceil:N", the multiples of N
    blocks = {parse_interpolation(fl.interpolation)[1] for fl in cost.layers if fl.interpolation.startswith("ceil:")}
    measured = [
        frozenset(cost.step_points(g)) | {k for n in blocks for k in range(n, sizes[g] + 1, n)} for g in range(len(sizes))
    ]

    def total(values: Sequence[float], weights: Sequence[float]) -> float:
        s = math.fsum(values)
        if cal is None:
            return s
        return cal.apply(s, math.fsum(weights) if cal.reads_weights else None)

    def moves(g: int) -> list[tuple[float, int, int, dict[int, tuple[float, float]]]]:
        """(ms per channel, -target, target, re-priced layers) for every candidate target of group g."""
        c = current[g]
        above = [p for p in steps[g] if p > c]
        if not above:
            return []
        targets = {above[0]} | (measured[g] & set(above))
        out = []
        base = sum(parts[i] for i in layers_of[g])
        for t in targets:
            trial = current.copy()
            trial[g] = t
            new = {}  # layer -> (ms, weight MB) at the trial counts
            for i in layers_of[g]:
                counts = cost.layers[i].counts(trial, sizes)
                new[i] = (cost.layers[i].latency_ms(*counts), weight_mb(cost.layers[i].grid.spec_at(*counts)))
            delta = sum(ms for ms, _ in new.values()) - base
            out.append((scale * delta / (t - c), -t, t, new))
        out.sort(key=lambda m: (m[0], m[1]))
        return out

    cache = {g: moves(g) for g in range(len(sizes))}
    # groups whose move prices change when g moves: those sharing a layer with g
    neighbours = [{g} | {h for i in layers_of[g] for h in _groups_of_layer(cost, i)} for g in range(len(sizes))]
    while True:
        best: tuple[float, int, int, dict[int, tuple[float, float]], float] | None = None
        for g, cands in cache.items():
            for price, _, t, new in cands:
                if best is not None and (price, -t) >= (best[0], -best[2]):
                    break  # sorted: nothing cheaper follows in this group
                trial_parts, trial_footprint = parts.copy(), footprint.copy()
                for i, (ms, mb) in new.items():
                    trial_parts[i], trial_footprint[i] = ms, mb
                lat = total(trial_parts, trial_footprint)
                if lat <= limit:
                    best = (price, g, t, new, lat)
                    break
        if best is None:
            break
        _, g, t, new, latency = best
        current[g] = t
        for i, (ms, mb) in new.items():
            parts[i], footprint[i] = ms, mb
        for h in neighbours[g]:
            cache[h] = moves(h)
        _log.debug("rounding: grow moves group %d up to %d (%.4g ms)", g, t, latency)
    return current, latency


def round_to_latency_optimal(
    channels: Sequence[float],
    cost: LatencyCost,
    limit: float,
    *,
    multiple: int | None = None,
    below_multiple: bool = False,
) -> tuple[int, ...]:
    """Integer channel counts near `channels` that keep ``cost.exact(counts) <= limit``.

    The rule, per group g with searched count x_g (float or int):

    1. Neighbours: the nearest step point at or below x_g ("down") and at or above it ("up"); step
       points are the table's measured counts for the group (`cost.step_points`), or the multiples of
       `multiple` when given (the full width is always one).
    2. Start every group at "down", and move it "up" wherever that is no slower (a staircase tread,
       or an aligned width the device runs faster). If the budget is still exceeded (the search's
       continuous cost under-priced), repair: repeatedly move the group whose next lower step point
       saves the most latency per channel removed, until the budget holds; nothing left to remove raises.
    3. Grow: repeatedly raise a group from "down" to "up", choosing among the moves that keep the
       budget the one with the least latency added per channel gained (a move that costs nothing or
       saves latency, a staircase tread or a faster aligned width, goes first). Stop when no move fits.
    4. Fill (only with `multiple`, whose steps are finer than the table's): a group may keep growing,
       one step or straight to the table's next measured count at or above x_g (never beyond it),
       cheapest latency per channel first, while the budget holds. Where the table prices counts as a
       staircase (``"ceil"`` interpolation), the channels up to the next tread cost nothing.
    5. Grow to the limit: any group may keep moving up through all its allowed steps (whole channels
       or multiples of `multiple`, else the step points), cheapest latency per channel first, while
       the budget holds (`_grow_to_limit`). The search priced with the table's monotone envelope,
       which over-prices a non-monotone table, so phases 1–4 can leave budget the true values allow
       spending; afterwards no single move of one group up fits the budget (exactly so under linear,
       "ceil" and "ceil:N" pricing of layers that each read a group on one side).

    The result keeps the budget by construction and, among the neighbours, prefers counts the device
    runs fastest per channel kept: the channel count is the accuracy proxy. On a coarse (CPU) grid
    the step points are far apart; pass ``multiple=1`` to round to any integer (priced by
    interpolation between the measured points) or a vector width such as 8. `below_multiple` also
    allows the table's measured counts under `multiple` (a device's channel lattice, below which a
    heavy budget would otherwise be out of reach).

    Raises:
        BudgetInfeasibleError: no neighbour configuration, even one channel per group, meets `limit`.
        ConfigError: a count or `multiple` out of range.
    """
    sizes = cost.group_sizes
    if len(channels) != len(sizes):
        raise ConfigError(f"expected {len(sizes)} channel counts (one per group), got {len(channels)}")
    if multiple is not None and multiple < 1:
        raise ConfigError(f"multiple must be >= 1; got {multiple}")
    for g, (x, c) in enumerate(zip(channels, sizes)):
        if not (math.isfinite(float(x)) and 0 < float(x) <= c + 1e-9):
            raise ConfigError(f"group {g}: count {x} outside (0, {c}]")
    steps = [_steps(cost, g, multiple, below_multiple=below_multiple) for g in range(len(sizes))]
    cands = [_neighbours(float(x), steps[g]) for g, x in enumerate(channels)]
    current = [cs[0] for cs in cands]
    latency = cost.exact(current)

    # Dominance: where the step point above is no slower (a staircase tread, a faster aligned width),
    # take it: more channels for no latency.
    moved = True
    while moved:
        moved = False
        for g, cs in enumerate(cands):
            ups = [u for u in cs if u > current[g]]
            if ups:
                trial = current.copy()
                trial[g] = ups[0]
                lat = cost.exact(trial)
                if lat <= latency:
                    current, latency, moved = trial, lat, True

    # 2. Repair: walk down the step points until the budget holds.
    while latency > limit:
        best: tuple[float, int, int, float] | None = None
        for g, c in enumerate(current):
            lower_steps = [p for p in steps[g] if p < c]
            if not lower_steps:
                continue
            lower = lower_steps[-1]
            trial = current.copy()
            trial[g] = lower
            lat = cost.exact(trial)
            saving = (latency - lat) / (c - lower)
            if best is None or saving > best[0]:
                best = (saving, g, lower, lat)
        if best is None:
            if multiple == 1:
                smallest, finer = "one channel per group", ""
            elif multiple is None:
                smallest, finer = "the table's smallest measured count per group", " or round to whole channels (--round-to 1)"
            else:
                smallest = f"every group at {multiple} channels (narrower groups whole)"
                finer = f" or allow counts off the device's {multiple}-channel lattice (--round-to 1; they run slower)"
            raise BudgetInfeasibleError(
                f"no channel counts meet the latency budget {limit:.4g} ms: {smallest} already costs "
                f"{latency:.4g} ms; raise the budget{finer}"
            )
        _, g, lower, latency = best
        cands[g] = sorted({lower, current[g]})
        current[g] = lower
        _log.debug("rounding: repair moves group %d down to %d (%.4g ms)", g, lower, latency)

    # 3. Grow: take the cheapest moves up that keep the budget.
    while True:
        best = None
        for g, cs in enumerate(cands):
            ups = [u for u in cs if u > current[g]]
            if not ups:
                continue
            trial = current.copy()
            trial[g] = ups[0]
            lat = cost.exact(trial)
            if lat > limit:
                continue
            price = (lat - latency) / (ups[0] - current[g])
            if best is None or price < best[0]:
                best = (price, g, ups[0], lat)
        if best is None:
            break
        _, g, up, latency = best
        current[g] = up

    # 4. Fill: finer steps than the table's, up to the table's next measured count above the search's.
    if multiple is not None:
        ceilings = []
        for g, x in enumerate(channels):
            table_steps = sorted(set(cost.step_points(g)) | {sizes[g]})
            ceilings.append(next(p for p in table_steps if p >= float(x) - 1e-9))
        while True:
            best = None
            for g, c in enumerate(current):
                targets = {p for p in steps[g] if c < p <= ceilings[g]}
                if not targets:
                    continue
                for t in {min(targets), max(targets)}:
                    trial = current.copy()
                    trial[g] = t
                    lat = cost.exact(trial)
                    if lat > limit:
                        continue
                    price = (lat - latency) / (t - c)
                    if best is None or price < best[0]:
                        best = (price, g, t, lat)
            if best is None:
                break
            _, g, up, latency = best
            current[g] = up

    # 5. Grow to the limit: any group, through all its allowed steps (not only near the search's count).
    current, latency = _grow_to_limit(current, latency, cost, steps, limit)
    _log.info("latency-optimal rounding: %.4g ms for a budget of %.4g ms", latency, limit)
    return tuple(current)


def round_for_budgets(
    ratios: Tensor, budgets: Sequence[Budget], group_sizes: Sequence[int], *, multiple: int | None = None
) -> list[int]:
    """Integer channel counts for searched keep ratios: latency-optimal when the one budget is a latency budget.

    With a single `LatencyCost` budget the counts come from `round_to_latency_optimal`, which fills the
    budget as closely as the table allows: to the table's step points on backends whose latency is a
    staircase (`Backend.stepped_latency`, asked of the backend the table records: GPU backends),
    else to multiples of `multiple`, by default the table's channel lattice (`TableMeta.channel_multiple`:
    8 for ONNX Runtime's NCHWc kernels, whose off-lattice counts run about 2x slower; 1, whole
    channels, for PyTorch on the CPU) and the table's measured counts below it (1, 2, 4: a stage of
    ResNet-20 at 8 channels already costs 40% of the dense latency there). Any other combination of budgets goes through
    `hwdsa.channels.channels_within_budgets`, which meets every budget.
    """
    if len(budgets) != 1 or not isinstance(budgets[0].cost, LatencyCost):
        return channels_within_budgets(ratios, budgets, group_sizes, multiple=multiple)
    cost = budgets[0].cost
    sizes = [int(c) for c in group_sizes]
    r = ratios.detach().double().cpu().tolist()
    counts = [min(float(c), max(1.0, float(x) * c)) for x, c in zip(r, sizes)]
    step, below = _grid(cost, multiple)
    return list(round_to_latency_optimal(counts, cost, budgets[0].limit, multiple=step, below_multiple=below))


def _grid(cost: LatencyCost, multiple: int | None) -> tuple[int | None, bool]:
    """`round_for_budgets`' grid: (multiple, below_multiple) for `round_to_latency_optimal`."""
    stepped = cost.meta is not None and has_stepped_latency(cost.meta.backend)
    lattice = cost.meta.channel_multiple if cost.meta is not None else 1
    step = multiple if multiple is not None else (None if stepped else lattice)
    on_lattice = multiple is None and not stepped and lattice > 1  # the table's lattice, not a user's --round-to
    return step, on_lattice


def rounding_steps(cost: LatencyCost, group: int, multiple: int | None = None) -> list[int]:
    """The counts `round_for_budgets` may give `group` (ascending), for the same `multiple`."""
    step, below = _grid(cost, multiple)
    return _steps(cost, group, step, below_multiple=below)


__all__ = ["round_for_budgets", "round_to_latency_optimal", "rounding_steps"]
