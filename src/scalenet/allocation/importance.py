"""Importance: a score for every output neuron of every SA branch of a trained supernet.

:class:`BNScale` (the paper: each neuron's BN scale |gamma|, normalised per block) is one
:class:`Importance`; any callable with its signature can replace it. :class:`BNScaleL1` is the
regulariser that sharpens BN scales while the supernet trains (network slimming).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn

from ..errors import SettingError
from ..models.scalenet import SABottleneck
from ..structure import Structure

__all__ = ["Neuron", "BlockScores", "Importance", "NORMALIZERS", "normalize", "BNScale", "BNScaleL1", "unweigh"]

#: One supernet neuron: (score, scale position, index inside its branch).
Neuron = tuple[float, int, int]


@dataclass
class BlockScores:
    """Scores of one block's supernet neurons, grouped by scale position."""

    block: str
    scores: list[list[float]]  # per scale position, one score per supernet neuron
    costs: list[int]  # MACs of one neuron of each scale position

    def flat(self) -> list[Neuron]:
        """(score, scale position, index) for every neuron, best first (ties: finer scale first)."""
        items = [(s, i, j) for i, row in enumerate(self.scores) for j, s in enumerate(row)]
        return sorted(items, key=lambda t: (-t[0], t[1], t[2]))


class Importance(Protocol):
    """Scores a trained supernet: one :class:`BlockScores` per SA block."""

    def __call__(self, model: nn.Module, structure: Structure, image_size: int) -> list[BlockScores]: ...


def _normalize_max(values: list[float]) -> float:
    return max(values, default=0.0)


def _normalize_sum(values: list[float]) -> float:
    return sum(values)


def _normalize_mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


#: Per-block normalisers (Torch-Pruning's names): each block's scores are divided by this
#: figure of the block's scores, so that blocks can be ranked together (global scope, a
#: MACs budget's last neurons, several supernet runs). ``None``: raw scores.
NORMALIZERS: dict[str | None, Callable[[list[float]], float] | None] = {
    "max": _normalize_max, "sum": _normalize_sum, "mean": _normalize_mean, None: None,
}


def normalize(scores: list[list[float]], normalizer: str | None) -> list[list[float]]:
    """One block's scores divided by the ``normalizer``'s figure of them (:data:`NORMALIZERS`;
    ``None``: unchanged)."""
    norm = NORMALIZERS[normalizer]
    if norm is None:
        return scores
    figure = norm([v for row in scores for v in row]) or 1.0
    return [[v / figure for v in row] for row in scores]


@dataclass
class BNScale:
    """|gamma| of each neuron's branch BN, divided by ``cost ** alpha`` (the paper: alpha = 0),
    then by the block's ``normalizer`` figure (see :data:`NORMALIZERS`)."""

    alpha: float = 0.0
    normalizer: str | None = "max"

    def __post_init__(self) -> None:
        if self.normalizer not in NORMALIZERS:
            raise ValueError(f"normalizer {self.normalizer!r} is unknown; use one of {', '.join(map(str, NORMALIZERS))}")

    def __call__(self, model: nn.Module, structure: Structure, image_size: int) -> list[BlockScores]:
        blocks = [m for m in model.modules() if isinstance(m, SABottleneck)]
        out = []
        for spec, block in zip(structure.blocks(), blocks):
            costs = structure.neuron_macs(spec, structure.stage_sides(image_size)[spec.stage])
            scores = []
            for i, c in enumerate(spec.channels):
                gamma = block.bn2[str(i)].weight.detach().abs().double().cpu() if c else torch.zeros(0)
                scores.append((gamma / (costs[i] ** self.alpha)).tolist())
            out.append(BlockScores(spec.name, normalize(scores, self.normalizer), costs))
        return out


@dataclass
class BNScaleL1:
    """A regulariser for the supernet: ``weight * sum |gamma|`` over the SA branches' BN
    scales (network slimming), which pushes unneeded neurons' scales towards zero."""

    weight: float

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise SettingError(f"{{sparsity}} must be 0 or more, got {self.weight}", "sparsity")
        self._model: nn.Module | None = None
        self._gammas: list[torch.Tensor] = []

    def __call__(self, model: nn.Module) -> torch.Tensor:
        if model is not self._model:  # found once per model, not per step
            self._model = model
            self._gammas = [bn.weight for m in model.modules() if isinstance(m, SABottleneck) for bn in m.bn2.values()]
        return self.weight * sum(g.abs().sum() for g in self._gammas)


def unweigh(scores: list[BlockScores], alpha: float, normalizer: str | None) -> list[BlockScores]:
    """Scores a :class:`BNScale` divided by ``MACs ** alpha`` (sidecars written before ``alpha``
    moved to the selection), multiplied back and normalised again: the unweighted scores."""
    if not alpha:
        return list(scores)
    out = []
    for block in scores:
        rows = [[v * c**alpha for v in row] for row, c in zip(block.scores, block.costs)]
        out.append(dataclasses.replace(block, scores=normalize(rows, normalizer)))
    return out

