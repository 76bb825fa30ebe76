"""Selectors: which supernet neurons to keep under a bound budget, and the weighing of scores by cost.

- :func:`select_per_block` (the paper: the top neurons of each block);
- :func:`select_global` (all blocks' neurons ranked together, network-slimming style, so the
  budget can move between blocks).

Every block keeps at least one neuron; a scale may end up with none. :func:`weigh_by_cost` is
the one meaning of ``alpha``: scores per unit of the budget (MACs, or milliseconds).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from ..errors import SettingError
from ..structure import Structure
from .budgets import BoundBudget, WidthBudget, counts
from .importance import BlockScores, Neuron

__all__ = ["select_per_block", "select_global", "SELECTORS", "select", "check_alpha", "weigh_by_cost", "like_supernet"]


def _fill(ranked: list[list[Neuron]], chosen: list[list[Neuron]], bound: BoundBudget) -> list[list[Neuron]]:
    """Adds neurons one by one, best score first among each block's best that still fits, until
    the bound's target is reached (nothing to add without a target)."""
    rest = [r[len(c):] for r, c in zip(ranked, chosen)]
    have = counts(chosen, len(bound.supernet.scales))
    current = bound.total(chosen)
    while not bound.reached(current):  # whole-stage steps are coarse: fill neuron by neuron
        options = []
        for b in range(len(ranked)):  # each block's best neuron that still fits (a branch's first
            for j, n in enumerate(rest[b]):  # neuron may not, with its fixed cost; later ones may)
                step = bound.added(b, n[1], have[b][n[1]])
                if bound.fits(current + step):
                    options.append((n[0], -b, b, j, step))
                    break
        if not options:
            break
        _, _, b, j, step = max(options)
        n = rest[b].pop(j)
        chosen[b].append(n)
        have[b][n[1]] += 1
        current += step
    return chosen


def _common_multiplier(ranked: list[list[Neuron]], planes: list[int], bound: BoundBudget) -> list[int]:
    """Neurons per block at the largest width multiplier whose total is within the target."""
    capacity = [len(r) for r in ranked]

    def keep_for(mult: float) -> list[int]:
        return [WidthBudget(mult).neurons(p, cap) if mult > 0 else 1 for p, cap in zip(planes, capacity)]

    def total(keep: list[int]) -> float:
        return bound.total([r[:k] for r, k in zip(ranked, keep)])

    lo, hi = 0.0, max(cap / p for cap, p in zip(capacity, planes)) + 1
    for _ in range(60):  # the total grows with the multiplier: bisect for the largest within budget
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(keep_for(mid)) <= bound.budget.limit else (lo, mid)
    return keep_for(lo)


def select_per_block(ranked: list[list[Neuron]], planes: list[int], bound: BoundBudget) -> list[list[Neuron]]:
    """The paper's selection: each block keeps its own top-k neurons. A width budget fixes k per
    block; a target budget (MACs, latency) takes the largest common multiplier within budget,
    then fills the rest neuron by neuron, best score first, so the target is met within its
    tolerance."""
    if bound.fixed is not None:
        return [r[:k] for r, k in zip(ranked, bound.fixed)]
    keep = _common_multiplier(ranked, planes, bound)
    bound.check_first(bound.total([r[:1] for r in ranked]))
    return _fill(ranked, [r[:k] for r, k in zip(ranked, keep)], bound)


def select_global(ranked: list[list[Neuron]], planes: list[int], bound: BoundBudget) -> list[list[Neuron]]:
    """Network slimming's selection: every block's best neuron first, then all other neurons of
    all blocks by score (normalised per block by the importance), until the budget: the width
    budget's total neuron count, or the target budget (MACs, latency)."""
    chosen = [[r[0]] for r in ranked]
    rest = sorted(((n[0], b, n) for b, r in enumerate(ranked) for n in r[1:]), key=lambda t: (-t[0], t[1], t[2][1], t[2][2]))
    if bound.fixed is not None:
        for _, b, n in rest[: max(0, sum(bound.fixed) - len(ranked))]:
            chosen[b].append(n)
        return chosen
    bound.check_first(bound.total(chosen))
    have = counts(chosen, len(bound.supernet.scales))
    current = bound.total(chosen)
    for _, b, n in rest:
        if bound.reached(current):
            break
        step = bound.added(b, n[1], have[b][n[1]])
        if bound.fits(current + step):
            chosen[b].append(n)
            have[b][n[1]] += 1
            current += step
    return chosen


#: ``scope`` names of the selectors.
SELECTORS = {"block": select_per_block, "global": select_global}


def select(scores: list[BlockScores], bound: BoundBudget, *, scope: str = "block") -> tuple[Structure, list[list[list[int]]]]:
    """Keeps neurons under the ``bound`` budget with the ``scope``'s selector and counts them per
    scale. Returns the structure and, per block and scale, the indices of the kept supernet neurons."""
    if scope not in SELECTORS:
        raise ValueError(f"scope {scope!r} is unknown; use {' or '.join(SELECTORS)}")
    supernet = bound.check().supernet
    chosen = SELECTORS[scope]([b.flat() for b in scores], [s.planes for s in supernet.blocks()], bound)
    kept = [[sorted(j for _, i, j in ns if i == pos) for pos in range(len(supernet.scales))] for ns in chosen]
    structure = like_supernet(supernet, [[len(k) for k in per_scale] for per_scale in kept])
    bound.verify(bound.of_structure(structure))
    return structure, kept


def like_supernet(supernet: Structure, channels: Sequence[Sequence[int]]) -> Structure:
    """A structure of the supernet's layout with these neurons per block and scale."""
    return Structure.from_channels([list(c) for c in channels], supernet.layers, scales=supernet.scales,
                                   stem=supernet.stem,
                                   width=supernet.width, image_size=supernet.image_size)


def check_alpha(alpha: float) -> float:
    """``alpha`` if it is a finite number, 0 or more; else one clear line."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha >= 0):
        raise SettingError(f"{{alpha}} must be a finite number, 0 or more (0: the paper's ranking); got {alpha}",
                           "alpha")
    return float(alpha)


def weigh_by_cost(scores: list[BlockScores], costs, alpha: float) -> list[BlockScores]:
    """Scores divided by ``cost ** alpha``, where cost is what one neuron of each scale adds
    under the budget (``costs``: a :class:`BoundBudget` or its cost model; MACs, or for latency
    its milliseconds without the branch's fixed cost), then renormalised per block by the best
    score: the importance per unit of the budget, so that cheap neurons win ties of |gamma|.
    The scores must be unweighted (as :func:`allocate` stores them). Where the weights
    underflow or overflow (a large ``alpha``, a neuron the cost model calls free) the same
    ratios are formed in log space."""
    alpha = check_alpha(alpha)
    if alpha == 0:
        return list(scores)
    out = []
    for b, block in enumerate(scores):
        cost = [costs.added(b, i, 1) for i in range(len(block.scores))]
        weights = [max(c, 1e-12) ** alpha for c in cost]
        if all(0 < w < math.inf for w in weights):
            rows = [[v / w for v in row] for row, w in zip(block.scores, weights)]
            top = max((v for row in rows for v in row), default=0.0) or 1.0
            rows = [[v / top for v in row] for row in rows]
        else:
            rows = _weigh_in_logs(block.scores, cost, alpha)
        out.append(dataclasses.replace(block, scores=rows))
    return out


def _weigh_in_logs(scores: list[list[float]], cost: list[float], alpha: float) -> list[list[float]]:
    """``v / cost ** alpha`` divided by the block's best, without forming the weights; a cost of 0
    counts as a millionth of the block's cheapest positive one."""
    positive = [c for c in cost if c > 0]
    floor = min(positive) * 1e-6 if positive else 1.0
    logs = [[math.log(v) - alpha * math.log(max(c, floor)) if v > 0 else -math.inf for v in row]
            for row, c in zip(scores, cost)]
    top = max((v for row in logs for v in row), default=-math.inf)
    if top == -math.inf:
        return [list(row) for row in scores]
    return [[math.exp(v - top) for v in row] for row in logs]
