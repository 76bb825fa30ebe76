"""Combining several supernets: their scores ranked together (:func:`combine_union`) or
their own allocations averaged (:func:`combine_mean`)."""

from __future__ import annotations

import statistics
from typing import Sequence

from ..structure import Structure
from .budgets import BoundBudget
from .importance import BlockScores
from .rounding import meet_budget, round_to_total
from .select import like_supernet

__all__ = ["combine_union", "combine_mean", "COMBINES"]

#: How ``allocate(repeats=N)`` combines its N supernets.
COMBINES = ("mean", "union")


def combine_union(runs: Sequence[list[BlockScores]]) -> list[BlockScores]:
    """One ranking from N runs' scores, at the level of scales (neurons are not aligned across
    independently trained networks, so neuron-wise averages would mean nothing).

    Per block and scale, the N runs' neurons are pooled and sorted by score (scores are
    normalised per run and block by the importance); the ``j``-th combined neuron of that scale
    scores as the ``(j+1)N``-th best of the pool. Keeping the top ``k`` combined neurons thus
    keeps about ``1/N`` of each scale's share of the pool's top ``Nk``: "rank the union, keep
    N times as many, divide the counts by N", in a form every selector and budget accepts.
    """
    if len(runs) == 1:
        return list(runs[0])
    n = len(runs)
    out = []
    for blocks in zip(*runs):
        scores = []
        for i in range(len(blocks[0].scores)):
            pool = sorted((v for b in blocks for v in b.scores[i]), reverse=True)
            scores.append([pool[(j + 1) * n - 1] for j in range(len(pool) // n)])
        out.append(BlockScores(blocks[0].block, scores, blocks[0].costs))
    return out


def combine_mean(structures: Sequence[Structure], supernet: Structure, bound: BoundBudget | None = None) -> Structure:
    """The runs' own allocations, averaged per block and scale and rounded (block totals kept).

    With a target budget (``bound``: MACs, latency) the rounding is then corrected neuron by
    neuron, the most under-rounded count first when below the budget, the most over-rounded
    first when above (the unrounded mean meets a MACs budget as each run does, since MACs are
    linear in the counts; a latency budget's fixed branch costs make it nearly so)."""
    rows = [[row[:-1] for row in s.rows] for s in structures]
    mean = [[statistics.mean(r[b][i] for r in rows) for i in range(len(supernet.scales))]
            for b in range(len(supernet.rows))]
    channels = [round_to_total(m, max(1, round(sum(m)))) for m in mean]
    if bound is not None:
        meet_budget(channels, mean, [list(row[:-1]) for row in supernet.rows], 1, bound)
    return like_supernet(supernet, channels)
