"""Rounding an allocation's branches to a multiple of some neurons (hardware-friendly widths),
within the supernet's capacity and, under a target budget, within the budget."""

from __future__ import annotations

from typing import Sequence

from ..errors import SettingError
from ..structure import Structure
from .budgets import BoundBudget
from .select import like_supernet

__all__ = ["multiple_pool", "round_channels", "round_to_total", "meet_budget"]


def multiple_pool(supernet: Structure, multiple: int) -> list[list[int]]:
    """Per block and scale, the most neurons the supernet offers in multiples of ``multiple``;
    refuses (one line) a ``multiple`` below 1 or one that leaves a block without any."""
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise SettingError(f"{{multiple_of}} must be a whole number of neurons, 1 or more; got {multiple}",
                           "multiple_of")
    pool = [[c - c % multiple for c in row[:-1]] for row in supernet.rows]
    if any(not any(row) for row in pool):
        raise SettingError(f"{{multiple_of}} {multiple} is larger than the supernet's neurons per scale "
                           f"({min(max(row[:-1]) for row in supernet.rows)}); lower it or raise {{supernet_width}}",
                           "multiple_of", "supernet_width")
    return pool


def round_to_total(values: Sequence[float], total: int) -> list[int]:
    """Integers summing to ``total``, each the floor of its value or one more (largest remainders
    first; ties to the finer scale)."""
    floors = [int(v) for v in values]
    order = sorted(range(len(values)), key=lambda i: (-(values[i] - floors[i]), i))
    for i in order[: max(0, total - sum(floors))]:
        floors[i] += 1
    return floors


def round_channels(structure: Structure, supernet: Structure, multiple: int,
                   bound: BoundBudget | None = None) -> Structure:
    """Each branch's neuron count rounded to a multiple of ``multiple`` (a branch may round to 0;
    every block keeps at least one branch), within the supernet's capacity.

    Each block's total is rounded to the nearest multiple and split by largest remainders;
    under a target budget (``bound``: MACs, latency) the counts are then moved by ``multiple``
    neurons, the most over-rounded first while above the budget and the most under-rounded
    first while short of it, so that the budget still holds (the total may stay further below
    the target than the budget's tolerance when the steps are coarse)."""
    pool = multiple_pool(supernet, multiple)
    wanted = [[c / multiple for c in row[:-1]] for row in structure.rows]
    units = []
    for w, cap in zip(wanted, pool):
        row = round_to_total([min(v, c // multiple) for v, c in zip(w, cap)], max(1, round(sum(w))))
        units.append([min(u, c // multiple) for u, c in zip(row, cap)])
        if not any(units[-1]):
            units[-1][max(range(len(cap)), key=lambda i: (cap[i] > 0, w[i]))] = 1
    channels = [[u * multiple for u in row] for row in units]
    if bound is not None:
        meet_budget(channels, [[v * multiple for v in w] for w in wanted], pool, multiple, bound)
        bound.verify(bound.of_channels(channels), lower=False)
    return like_supernet(supernet, channels)


def meet_budget(channels: list[list[int]], wanted: list[list[float]], pool: list[list[int]], step: int,
                bound: BoundBudget) -> None:
    """Moves counts by ``step`` (in place) into the budget: while above it, the count furthest
    above its ``wanted`` value comes down (each block keeps a branch); then, while short of it,
    the count furthest below its wanted value that still fits goes up (nothing moves without a
    target)."""
    cells = [(b, i) for b in range(len(channels)) for i in range(len(channels[b]))]

    def delta(b: int, i: int, by: int) -> float:
        before = bound.of_channels(channels)
        channels[b][i] += by
        after = bound.of_channels(channels)
        channels[b][i] -= by
        return after - before

    total = bound.of_channels(channels)
    while not bound.fits(total):  # first under the ceiling (closing a branch may undershoot) ...
        options = [(channels[b][i] - wanted[b][i], -b, -i, b, i) for b, i in cells
                   if channels[b][i] >= step and sum(channels[b]) > step]
        if not options:
            break
        *_, b, i = max(options)
        total += delta(b, i, -step)
        channels[b][i] -= step
    while not bound.reached(total):  # ... then filled up to the target with what still fits
        options = [(wanted[b][i] - channels[b][i], -b, -i, b, i) for b, i in cells
                   if channels[b][i] + step <= pool[b][i] and bound.fits(total + delta(b, i, step))]
        if not options:
            break
        *_, b, i = max(options)
        total += delta(b, i, step)
        channels[b][i] += step
