"""Data-driven neuron allocation (paper Sec. 3.2, Algorithm 1), in pieces that can be swapped.

1. A *seed* network with abundant, uniform neurons per scale is trained on the task's data
   (:func:`seed_structure`; optionally with a :class:`BNScaleL1` regulariser).
2. An *importance* scores every output neuron of every SA branch (:class:`BNScale`: its BN
   scale |gamma|), normalised per block. At selection the scores may be divided by each
   neuron's cost under the budget to the power ``alpha`` (:func:`weigh_by_cost`).
3. A *selector* keeps neurons under a *budget* and counts them per scale, which gives each
   block's row ``[C_1, C_2, C_4, C_7, side]``. Budgets: :class:`WidthBudget` (a multiple of
   the ResNet width per block) or :class:`MacsBudget` (the network's multiply-adds).
   Selectors: :func:`select_per_block` (the paper: the top neurons of each block) or
   :func:`select_global` (all blocks' neurons ranked together, network-slimming style, so the
   budget can move between blocks). Every block keeps at least one neuron; a scale may end up
   with none.

A network's MACs are linear in the kept neurons (:meth:`Structure.neuron_macs`): each neuron
costs its branch conv plus its column of the 1x1 conv after the concatenation; everything
else does not depend on the allocation (:class:`CostModel`).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import dataclasses
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, Union

import torch
from torch import nn

from .latency import latency_model_for  # noqa: F401 (resolves a latency budget's model; importable from here)
from .structure import Structure

__all__ = [
    "BlockScores",
    "Importance",
    "BNScale",
    "NORMALIZERS",
    "BNScaleL1",
    "WidthBudget",
    "MacsBudget",
    "LatencyBudget",
    "TARGET_BUDGETS",
    "Budget",
    "budget_from",
    "CostModel",
    "LatencyCost",
    "weigh_by_cost",
    "check_alpha",
    "unweigh",
    "round_channels",
    "multiple_pool",
    "select_runs",
    "select_per_block",
    "select_global",
    "SELECTORS",
    "select",
    "combine_union",
    "combine_mean",
    "COMBINES",
    "DEFAULT_REPEATS",
    "DEFAULT_COMBINE",
    "SEED_IMAGES",
    "seed_epochs",
    "SeedRun",
    "AllocationResult",
    "seed_structure",
    "minimum_macs",
    "allocate",
    "default_layout",
    "load_runs",
    "latency_model_for",
    "stage_summary",
    "format_stage_summary",
]

#: One seed neuron: (score, scale position, index inside its branch).
Neuron = tuple[float, int, int]


# ---------------------------------------------------------------------------- importance
@dataclass
class BlockScores:
    """Scores of one block's seed neurons, grouped by scale position."""

    block: str
    scores: list[list[float]]  # per scale position, one score per seed neuron
    costs: list[int]  # MACs of one neuron of each scale position

    def flat(self) -> list[Neuron]:
        """(score, scale position, index) for every neuron, best first (ties: finer scale first)."""
        items = [(s, i, j) for i, row in enumerate(self.scores) for j, s in enumerate(row)]
        return sorted(items, key=lambda t: (-t[0], t[1], t[2]))


class Importance(Protocol):
    """Scores a trained seed network: one :class:`BlockScores` per SA block."""

    def __call__(self, model: nn.Module, structure: Structure, image_size: int) -> list[BlockScores]: ...


def _normalize_max(values: list[float]) -> float:
    return max(values, default=0.0)


def _normalize_sum(values: list[float]) -> float:
    return sum(values)


def _normalize_mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


#: Per-block normalisers (Torch-Pruning's names): each block's scores are divided by this
#: figure of the block's scores, so that blocks can be ranked together (global scope, a
#: MACs budget's last neurons, several seed runs). ``None``: raw scores.
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
        from .models.scalenet import SABottleneck

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
    """A regulariser for the seed network: ``weight * sum |gamma|`` over the SA branches' BN
    scales (network slimming), which pushes unneeded neurons' scales towards zero."""

    weight: float

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"--sparsity must be 0 or more, got {self.weight}")
        self._model: nn.Module | None = None
        self._gammas: list[torch.Tensor] = []

    def __call__(self, model: nn.Module) -> torch.Tensor:
        if model is not self._model:  # found once per model, not per step
            from .models.scalenet import SABottleneck

            self._model = model
            self._gammas = [bn.weight for m in model.modules() if isinstance(m, SABottleneck) for bn in m.bn2.values()]
        return self.weight * sum(g.abs().sum() for g in self._gammas)


# ---------------------------------------------------------------------------- budgets
class _Cost:
    """What both cost models share: the total of a selection, from its counts per scale."""

    seed: Structure

    def total(self, chosen: list[list[Neuron]]) -> float:
        return self.of_channels(_counts(chosen, len(self.seed.scales)))


class CostModel(_Cost):
    """A seed network's MACs as a function of the kept neurons: ``base`` (what does not depend
    on the allocation: stem, 1x1 convs in, shortcuts, classifier) plus each kept neuron's cost.

    The cost interface every budget's cost model shares (see :class:`LatencyCost`):
    ``base``, ``lowest`` (one neuron of the cheapest scale per block), ``highest`` (the whole
    seed), :meth:`added` (what one more neuron costs, given the block's count of its scale) and
    :meth:`of_channels` (the total for per-block, per-scale counts)."""

    unit = "MACs"

    def __init__(self, seed: Structure, num_classes: int = 1000, in_chans: int = 3):
        self.seed = seed
        sides = seed.stage_sides()
        self.costs = [seed.neuron_macs(spec, sides[spec.stage]) for spec in seed.blocks()]
        self.highest = seed.macs(None, num_classes, in_chans)
        self.base = self.highest - sum(
            c * cost for spec, costs in zip(seed.blocks(), self.costs) for c, cost in zip(spec.channels, costs)
        )
        #: one neuron, of the cheapest scale, per block
        self.lowest = self.base + sum(
            min(cost for c, cost in zip(spec.channels, costs) if c) for spec, costs in zip(seed.blocks(), self.costs)
        )

    def added(self, block: int, scale: int, have: int) -> float:
        """What one more neuron of ``scale`` (its position) costs in ``block``, which has ``have``."""
        return self.costs[block][scale]

    def of_channels(self, channels: Sequence[Sequence[int]]) -> float:
        return self.base + sum(c * k for ch, ks in zip(channels, self.costs) for c, k in zip(ch, ks))

    def format(self, value: float) -> str:
        return f"{value:,.0f}"


class LatencyCost(_Cost):
    """A seed network's predicted milliseconds (:class:`scalenet.latency.LatencyModel`) as a
    function of the kept neurons: a branch's fixed cost is charged with its first neuron, once."""

    unit = "ms"

    def __init__(self, model, seed: Structure):
        model.check_structure(seed)
        self.model, self.seed = model, seed
        specs = list(seed.blocks())
        self.stages = [model.stages[spec.stage] for spec in specs]
        self.base = model.other + sum(cost.base for cost in self.stages)
        self.highest = self.of_channels([spec.channels for spec in specs])
        self.lowest = self.base + sum(
            min(cost.fixed[i] + cost.per_neuron[i] for i, c in enumerate(spec.channels) if c)
            for spec, cost in zip(specs, self.stages)
        )

    def added(self, block: int, scale: int, have: int) -> float:
        cost = self.stages[block]
        return cost.per_neuron[scale] + (cost.fixed[scale] if have == 0 else 0.0)

    def of_channels(self, channels: Sequence[Sequence[int]]) -> float:
        return self.model.other + sum(cost.block_ms(ch) for cost, ch in zip(self.stages, channels))

    def format(self, value: float) -> str:
        return f"{value:,.1f} ms"


def _counts(chosen: list[list[Neuron]], scales: int) -> list[list[int]]:
    counts = [[0] * scales for _ in chosen]
    for row, ns in zip(counts, chosen):
        for n in ns:
            row[n[1]] += 1
    return counts


@dataclass(frozen=True)
class WidthBudget:
    """``round(multiplier * planes)`` neurons per block (at least 1): ScaleNet-50 used about
    1.36, ScaleNet-50-light 1.0."""

    multiplier: float

    def __post_init__(self) -> None:
        if not (self.multiplier > 0 and math.isfinite(self.multiplier)):
            raise ValueError(f"--width-mult must be positive and finite, got {self.multiplier}")

    def neurons(self, planes: int, capacity: int) -> int:
        return min(capacity, max(1, round(self.multiplier * planes)))

    def costs(self, seed: Structure, num_classes: int = 1000, in_chans: int = 3) -> CostModel:
        return CostModel(seed, num_classes, in_chans)

    def check(self, costs: CostModel) -> None:
        """Refuses a multiplier that keeps more neurons in some block than the seed has there
        (as a MACs target above the seed's is refused), in one line."""
        for spec in costs.seed.blocks():
            wanted, capacity = round(self.multiplier * spec.planes), sum(spec.channels)
            if wanted > capacity:
                most = min(sum(b.channels) / b.planes for b in costs.seed.blocks())
                raise ValueError(
                    f"impossible budget: --width-mult {self.multiplier:g} keeps {wanted:,} neurons in {spec.name}, but "
                    f"the seed network has {capacity:,} there; lower it (at most {most:g} with this seed) or raise "
                    "--seed-width"
                )

    def settings(self) -> dict[str, Any]:
        return {"width_mult": self.multiplier, "macs_target": None, "latency_ms": None}


class _TargetBudget:
    """A budget on a total the cost model predicts (MACs, milliseconds): neurons are kept until
    the total reaches the target; ``fits`` and ``reached`` say when to stop."""

    option = ""
    limit: float
    tolerance: float

    def fits(self, total: float) -> bool:
        return total <= self.limit * (1 + self.tolerance)

    def reached(self, total: float) -> bool:
        return total >= self.limit * (1 - self.tolerance)

    def check(self, costs) -> None:
        """Raises one clear line when no selection from the seed can meet the budget."""
        target = costs.format(self.limit)
        if self.limit < costs.lowest:
            raise ValueError(
                f"impossible budget: {self.option} {target} is below the minimum {costs.format(costs.lowest)} "
                f"(one neuron per block{self._where()}); raise it"
            )
        if self.limit > costs.highest * (1 + self.tolerance):
            raise ValueError(
                f"impossible budget: {self.option} {target} is above the seed network's {costs.format(costs.highest)}"
                f"{self._where()}; lower it or raise --seed-width"
            )

    def verify(self, got: float, costs, *, lower: bool = True) -> None:
        """Raises when ``got`` misses the budget: above it, or (``lower``) short of reaching it."""
        if not self.fits(got) or lower and not self.reached(got):
            raise ValueError(
                f"could not meet {self.option} {costs.format(self.limit)} within {self.tolerance:.0%} (closest "
                f"{costs.format(got)}); raise --seed-width or use --scope global"
            )

    def _where(self) -> str:
        return ""


@dataclass(frozen=True)
class MacsBudget(_TargetBudget):
    """The network's multiply-adds, met within ``tolerance``."""

    macs: int
    tolerance: float = 0.01
    option = "--macs"

    @property
    def limit(self) -> float:
        return self.macs

    def costs(self, seed: Structure, num_classes: int = 1000, in_chans: int = 3) -> CostModel:
        return CostModel(seed, num_classes, in_chans)

    def settings(self) -> dict[str, Any]:
        return {"width_mult": None, "macs_target": self.macs, "latency_ms": None}


@dataclass(frozen=True)
class LatencyBudget(_TargetBudget):
    """The network's predicted milliseconds on a device (a :class:`scalenet.latency.LatencyModel`):
    never above ``ms``, and within ``tolerance`` below it."""

    ms: float
    model: Any  # scalenet.latency.LatencyModel
    tolerance: float = 0.01
    option = "--latency-ms"

    def __post_init__(self) -> None:
        if not (self.ms > 0 and math.isfinite(self.ms)):
            raise ValueError(f"--latency-ms must be positive and finite (milliseconds), got {self.ms}")

    @property
    def limit(self) -> float:
        return self.ms

    def fits(self, total: float) -> bool:  # a latency target is a ceiling
        return total <= self.ms

    def costs(self, seed: Structure, num_classes: int = 1000, in_chans: int = 3) -> LatencyCost:
        return LatencyCost(self.model, seed)

    def settings(self) -> dict[str, Any]:
        return {"width_mult": None, "macs_target": None, "latency_ms": self.ms,
                "latency_settings": dataclasses.asdict(self.model.settings)}

    def _where(self) -> str:
        st = self.model.settings
        return f", predicted for {st.device_name}, batch {st.batch_size}, {st.image_size} px"


Budget = Union[WidthBudget, MacsBudget, LatencyBudget]
#: Budgets with a target total (the others fix neurons per block).
TARGET_BUDGETS = (MacsBudget, LatencyBudget)


def budget_from(width_mult: float | None = None, macs: int | None = None, latency_ms: float | None = None,
                latency_model=None) -> Budget:
    """The budget a user asked for: exactly one of a width multiplier, a MACs target and a
    latency target (which needs the device's ``latency_model``)."""
    given = [v is not None for v in (width_mult, macs, latency_ms)]
    if sum(given) != 1:
        raise ValueError("give exactly one budget: a width multiplier, a MACs target or a latency target")
    if latency_ms is not None:
        if latency_model is None:
            raise ValueError("a latency budget needs a latency model (scalenet latency-model)")
        return LatencyBudget(float(latency_ms), latency_model)
    return WidthBudget(width_mult) if width_mult is not None else MacsBudget(int(macs))


# ---------------------------------------------------------------------------- selectors
def _capacity(ranked: list[list[Neuron]]) -> list[int]:
    return [len(r) for r in ranked]


def select_per_block(ranked: list[list[Neuron]], planes: list[int], budget: Budget, costs) -> list[list[Neuron]]:
    """The paper's selection: each block keeps its own top-k neurons. A width budget fixes k per
    block; a target budget (MACs, latency) takes the largest common multiplier within budget,
    then fills the rest neuron by neuron, best score first, so the target is met within its
    tolerance."""
    capacity = _capacity(ranked)

    def keep_for(mult: float) -> list[int]:
        return [WidthBudget(mult).neurons(p, cap) if mult > 0 else 1 for p, cap in zip(planes, capacity)]

    if isinstance(budget, WidthBudget):
        keep = keep_for(budget.multiplier)
    else:
        def total(keep: list[int]) -> float:
            return costs.total([r[:k] for r, k in zip(ranked, keep)])

        lo, hi = 0.0, max(cap / p for cap, p in zip(capacity, planes)) + 1
        for _ in range(60):  # the total grows with the multiplier: bisect for the largest within budget
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if total(keep_for(mid)) <= budget.limit else (lo, mid)
        keep = keep_for(lo)
        _check_first(ranked, budget, costs)
        chosen = [r[:k] for r, k in zip(ranked, keep)]
        rest = [r[k:] for r, k in zip(ranked, keep)]
        counts = _counts(chosen, len(costs.seed.scales))
        current = costs.total(chosen)
        while not budget.reached(current):  # whole-stage steps are coarse: fill neuron by neuron
            options = []
            for b in range(len(ranked)):  # each block's best neuron that still fits (a branch's first
                for j, n in enumerate(rest[b]):  # neuron may not, with its fixed cost; later ones may)
                    step = costs.added(b, n[1], counts[b][n[1]])
                    if budget.fits(current + step):
                        options.append((n[0], -b, b, j, step))
                        break
            if not options:
                break
            _, _, b, j, step = max(options)
            n = rest[b].pop(j)
            chosen[b].append(n)
            counts[b][n[1]] += 1
            current += step
        return chosen
    return [r[:k] for r, k in zip(ranked, keep)]


def _check_first(ranked: list[list[Neuron]], budget: Budget, costs) -> None:
    """Every block keeps its best neuron: refuses a budget below what those cost together (above
    the seed's lowest when a branch's fixed cost makes a block's best neuron dear)."""
    first = costs.total([r[:1] for r in ranked])
    if not budget.fits(first):
        raise ValueError(
            f"impossible budget: {budget.option} {costs.format(budget.limit)} is below {costs.format(first)}, what "
            "each block's best-scoring neuron costs; raise it"
        )


def select_global(ranked: list[list[Neuron]], planes: list[int], budget: Budget, costs) -> list[list[Neuron]]:
    """Network slimming's selection: every block's best neuron first, then all other neurons of
    all blocks by score (normalised per block by the importance), until the budget: the width
    budget's total neuron count, or the target budget (MACs, latency)."""
    chosen = [[r[0]] for r in ranked]
    rest = sorted(((n[0], b, n) for b, r in enumerate(ranked) for n in r[1:]), key=lambda t: (-t[0], t[1], t[2][1], t[2][2]))
    if isinstance(budget, WidthBudget):
        total = sum(budget.neurons(p, cap) for p, cap in zip(planes, _capacity(ranked)))
        for _, b, n in rest[: max(0, total - len(ranked))]:
            chosen[b].append(n)
        return chosen
    _check_first(ranked, budget, costs)
    counts = _counts(chosen, len(costs.seed.scales))
    current = costs.total(chosen)
    for _, b, n in rest:
        if budget.reached(current):
            break
        step = costs.added(b, n[1], counts[b][n[1]])
        if budget.fits(current + step):
            chosen[b].append(n)
            counts[b][n[1]] += 1
            current += step
    return chosen


#: ``scope`` names of the selectors.
SELECTORS = {"block": select_per_block, "global": select_global}


def select(
    scores: list[BlockScores],
    seed: Structure,
    budget: Budget,
    *,
    scope: str = "block",
    num_classes: int = 1000,
    in_chans: int = 3,
) -> tuple[Structure, list[list[list[int]]]]:
    """Keeps neurons under ``budget`` with the ``scope``'s selector and counts them per scale.

    Returns the structure and, per block and scale, the indices of the kept seed neurons.
    """
    if scope not in SELECTORS:
        raise ValueError(f"scope {scope!r} is unknown; use {' or '.join(SELECTORS)}")
    costs = budget.costs(seed, num_classes, in_chans)
    budget.check(costs)
    specs = list(seed.blocks())
    chosen = SELECTORS[scope]([b.flat() for b in scores], [s.planes for s in specs], budget, costs)
    kept = [[sorted(j for _, i, j in ns if i == pos) for pos in range(len(seed.scales))] for ns in chosen]
    structure = _like(seed, [[len(k) for k in per_scale] for per_scale in kept])
    if isinstance(budget, TARGET_BUDGETS):
        budget.verify(costs.of_channels([row[:-1] for row in structure.rows]), costs)
    return structure, kept


def _like(seed: Structure, channels: Sequence[Sequence[int]]) -> Structure:
    """A structure of the seed's layout with these neurons per block and scale."""
    return Structure.from_channels([list(c) for c in channels], seed.layers, scales=seed.scales, stem=seed.stem,
                                   width=seed.width, image_size=seed.image_size)


def check_alpha(alpha: float) -> float:
    """``alpha`` if it is a finite number, 0 or more; else one clear line."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"--alpha must be a finite number, 0 or more (0: the paper's ranking); got {alpha}")
    return float(alpha)


def weigh_by_cost(scores: list[BlockScores], costs, alpha: float) -> list[BlockScores]:
    """Scores divided by ``cost ** alpha``, where cost is what one neuron of each scale adds
    under the budget's cost model (MACs; for latency its milliseconds, without the branch's
    fixed cost), then renormalised per block by the best score: the importance per unit of the
    budget, so that cheap neurons win ties of |gamma|. The scores must be unweighted (as
    :func:`allocate` stores them). Where the weights underflow or overflow (a large ``alpha``,
    a neuron the cost model calls free) the same ratios are formed in log space."""
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


def multiple_pool(seed: Structure, multiple: int) -> list[list[int]]:
    """Per block and scale, the most neurons the seed offers in multiples of ``multiple``;
    refuses (one line) a ``multiple`` below 1 or one that leaves a block without any."""
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"--multiple-of must be a whole number of neurons, 1 or more; got {multiple}")
    pool = [[c - c % multiple for c in row[:-1]] for row in seed.rows]
    if any(not any(row) for row in pool):
        raise ValueError(f"--multiple-of {multiple} is larger than the seed's neurons per scale "
                         f"({min(max(row[:-1]) for row in seed.rows)}); lower it or raise --seed-width")
    return pool


def round_channels(structure: Structure, seed: Structure, multiple: int, budget: Budget | None = None,
                   num_classes: int = 1000, in_chans: int = 3) -> Structure:
    """Each branch's neuron count rounded to a multiple of ``multiple`` (a branch may round to 0;
    every block keeps at least one branch), within the seed's capacity.

    Each block's total is rounded to the nearest multiple and split by largest remainders;
    under a target budget (MACs, latency) the counts are then moved by ``multiple`` neurons,
    the most over-rounded first while above the budget and the most under-rounded first while
    short of it, so that the budget still holds (the total may stay further below the target
    than the budget's tolerance when the steps are coarse)."""
    pool = multiple_pool(seed, multiple)
    wanted = [[c / multiple for c in row[:-1]] for row in structure.rows]
    units = []
    for w, cap in zip(wanted, pool):
        row = _round_to_total([min(v, c // multiple) for v, c in zip(w, cap)], max(1, round(sum(w))))
        units.append([min(u, c // multiple) for u, c in zip(row, cap)])
        if not any(units[-1]):
            units[-1][max(range(len(cap)), key=lambda i: (cap[i] > 0, w[i]))] = 1
    channels = [[u * multiple for u in row] for row in units]
    if isinstance(budget, TARGET_BUDGETS):
        costs = budget.costs(seed, num_classes, in_chans)
        _meet_budget(channels, [[v * multiple for v in w] for w in wanted], pool, multiple, budget, costs)
        budget.verify(costs.of_channels(channels), costs, lower=False)
    return _like(seed, channels)


def _meet_budget(channels: list[list[int]], wanted: list[list[float]], pool: list[list[int]], step: int,
                 budget: Budget, costs) -> None:
    """Moves counts by ``step`` (in place) into the budget: while above it, the count furthest
    above its ``wanted`` value comes down (each block keeps a branch); then, while short of it,
    the count furthest below its wanted value that still fits goes up."""
    cells = [(b, i) for b in range(len(channels)) for i in range(len(channels[b]))]

    def delta(b: int, i: int, by: int) -> float:
        before = costs.of_channels(channels)
        channels[b][i] += by
        after = costs.of_channels(channels)
        channels[b][i] -= by
        return after - before

    total = costs.of_channels(channels)
    while not budget.fits(total):  # first under the ceiling (closing a branch may undershoot) ...
        options = [(channels[b][i] - wanted[b][i], -b, -i, b, i) for b, i in cells
                   if channels[b][i] >= step and sum(channels[b]) > step]
        if not options:
            break
        *_, b, i = max(options)
        total += delta(b, i, -step)
        channels[b][i] -= step
    while not budget.reached(total):  # ... then filled up to the target with what still fits
        options = [(wanted[b][i] - channels[b][i], -b, -i, b, i) for b, i in cells
                   if channels[b][i] + step <= pool[b][i] and budget.fits(total + delta(b, i, step))]
        if not options:
            break
        *_, b, i = max(options)
        total += delta(b, i, step)
        channels[b][i] += step


# ---------------------------------------------------------------------------- several seed networks
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


def _round_to_total(values: Sequence[float], total: int) -> list[int]:
    """Integers summing to ``total``, each the floor of its value or one more (largest remainders
    first; ties to the finer scale)."""
    floors = [int(v) for v in values]
    order = sorted(range(len(values)), key=lambda i: (-(values[i] - floors[i]), i))
    for i in order[: max(0, total - sum(floors))]:
        floors[i] += 1
    return floors


def combine_mean(structures: Sequence[Structure], seed: Structure, budget: Budget | None = None,
                 num_classes: int = 1000, in_chans: int = 3) -> Structure:
    """The runs' own allocations, averaged per block and scale and rounded (block totals kept).

    With a target budget (MACs, latency) the rounding is then corrected neuron by neuron, the
    most under-rounded count first when below the budget, the most over-rounded first when
    above (the unrounded mean meets a MACs budget as each run does, since MACs are linear in
    the counts; a latency budget's fixed branch costs make it nearly so)."""
    rows = [[row[:-1] for row in s.rows] for s in structures]
    mean = [[statistics.mean(r[b][i] for r in rows) for i in range(len(seed.scales))] for b in range(len(seed.rows))]
    channels = [_round_to_total(m, max(1, round(sum(m)))) for m in mean]
    if isinstance(budget, TARGET_BUDGETS):
        pool = [list(row[:-1]) for row in seed.rows]
        _meet_budget(channels, mean, pool, 1, budget, budget.costs(seed, num_classes, in_chans))
    return _like(seed, channels)


#: How ``allocate(repeats=N)`` combines its N seed networks.
COMBINES = ("mean", "union")
#: Defaults chosen by measurement (benchmarks/allocation_agreement.py, demo setting): single
#: seed networks agree no better than chance, however long they train; 16 networks of one
#: epoch each, averaged, agree at 0.34x / 0.19x / 0.28x chance by stage (``union``: 0.32x /
#: 0.22x / 0.33x), and take about 4 minutes on 2 cores, two at a time.
DEFAULT_REPEATS = 16
DEFAULT_COMBINE = "mean"
#: Each seed network trains for the fewest whole epochs that show it this many images (one
#: epoch of the demo's 8,000; longer schedules did not make the rankings agree more).
SEED_IMAGES = 8000


# ---------------------------------------------------------------------------- the whole allocation
def seed_structure(
    layers: Sequence[int],
    *,
    seed_width: int | Sequence[int] | None = None,
    scales: Sequence[int] = (1, 2, 4, 7),
    stem: str = "imagenet",
    width: int = 64,
    image_size: int = 224,
) -> Structure:
    """The abundant seed: C neurons for every scale of every block (default C = the block's planes)."""
    planes = [width * 2**i for i in range(len(layers))]
    per_stage = planes if seed_width is None else seed_width
    if isinstance(per_stage, int) and per_stage < 1 or not isinstance(per_stage, int) and min(per_stage) < 1:
        raise ValueError(f"--seed-width must be a positive number of neurons per scale, got {seed_width}")
    seed = Structure.uniform(layers, per_stage, scales=tuple(scales), stem=stem, width=width, image_size=image_size,
                             name="seed")
    sides = seed.stage_sides()
    unused = [s for s in seed.scales if all(side // s < 1 for side in sides)]
    if unused:
        raise ValueError(
            f"scales {','.join(map(str, unused))} do not fit any feature map (largest side {max(sides)} at "
            f"image size {image_size}); choose smaller --scales"
        )
    return seed


def minimum_macs(seed: Structure, num_classes: int = 1000, in_chans: int = 3) -> int:
    """The smallest network the seed allows: one neuron, of the cheapest scale, per block."""
    return CostModel(seed, num_classes, in_chans).lowest


@dataclass
class SeedRun:
    """One trained seed network: its seed, its neurons' scores, its own allocation under the
    budget, and its training records."""

    seed: int
    scores: list[BlockScores]
    structure: Structure
    metrics: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class AllocationResult:
    structure: Structure
    scores: list[BlockScores]  # the combined ranking (the one run's scores when repeats=1)
    seed: Structure
    settings: dict[str, Any] = field(default_factory=dict)
    kept: list[list[list[int]]] = field(default_factory=list)  # per block, per scale: kept (combined) neuron indices
    runs: list[SeedRun] = field(default_factory=list)
    agreement: dict[str, Any] = field(default_factory=dict)  # scalenet.agreement.agreement_report of the runs

    @property
    def seed_metrics(self) -> list[dict[str, Any]]:
        return self.runs[0].metrics if self.runs else []

    def sidecar(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "seed": self.seed.to_json(),
            "macs": self.structure.macs(num_classes=self.settings.get("num_classes", 1000),
                                        in_chans=self.settings.get("in_chans", 3)),
            "agreement": self.agreement,
            "blocks": [
                {"block": spec.name, "scales": list(self.seed.scales), "channels": list(row[:-1]),
                 "costs": self.seed.neuron_macs(spec),
                 # the combined ranking and the kept indices in it (a union of runs, or the one run)
                 "scores": self.scores[b].scores if self.scores else None, "kept": self.kept[b] if self.kept else None}
                for b, (spec, row) in enumerate(zip(self.seed.blocks(), self.structure.rows))
            ],
            "runs": [
                {"seed": r.seed, "rows": [list(row) for row in r.structure.rows], "metrics": r.metrics,
                 "scores": [b.scores for b in r.scores]}
                for r in self.runs
            ],
        }

    @staticmethod
    def outputs(path: str | os.PathLike) -> tuple[Path, Path]:
        """The sidecar and the chart :meth:`save` writes beside the structure ``path``."""
        path = Path(path)
        return path.with_name(path.stem + ".scores.json"), path.with_suffix(".png")

    def save(self, path: str | os.PathLike, *, bare: bool = False, chart: str | os.PathLike | None = None,
             title: str | None = None) -> dict[str, Path]:
        """Writes the structure (``bare``: the release's bare-list format), the sidecar
        ``<stem>.scores.json`` (every neuron's score and the settings) and the allocation chart
        (default ``<stem>.png``), each atomically. Returns the three paths."""
        from .fileio import atomic_write_text
        from .report import plot_allocation

        path = Path(path)
        sidecar, default_chart = self.outputs(path)
        chart = Path(chart) if chart is not None else default_chart
        self.structure.save(path, bare=bare)
        atomic_write_text(sidecar, json.dumps(self.sidecar()) + "\n")
        default_title = f"{path.stem}: learned neurons per scale ({self.settings.get('data', 'data')})"
        runs = [r.structure for r in self.runs] if len(self.runs) > 1 else None
        plot_allocation(self.structure, chart, title=title or default_title, runs=runs)
        return {"structure": path, "sidecar": sidecar, "chart": chart}


def load_runs(path: str | os.PathLike) -> tuple[list[SeedRun], Structure, dict[str, Any]]:
    """The seed networks' scores, the seed and the training settings from a sidecar
    (``<structure>.scores.json`` written by :meth:`AllocationResult.save`), to select again under
    another budget (:func:`select_runs`) without training."""
    from .fileio import read_json

    p = Path(path)
    raw = read_json(p, "scores file", "the .scores.json that scalenet allocate wrote beside its structure")
    try:
        seed = Structure.from_json(raw["seed"], source=f"{p} (seed)")
        costs = [b["costs"] for b in raw["blocks"]]
        names = [b["block"] for b in raw["blocks"]]
        runs = [SeedRun(r["seed"], [BlockScores(n, sc, c) for n, sc, c in zip(names, r["scores"], costs)], seed,
                        r.get("metrics", [])) for r in raw["runs"]]
        settings = dict(raw["settings"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"{p}: not a scores file of scalenet allocate (missing or malformed {e})") from None
    if not runs or any(len(r.scores) != len(list(seed.blocks())) for r in runs):
        raise ValueError(f"{p}: the scores do not match the seed's {len(list(seed.blocks()))} blocks")
    # sidecars written before latency budgets kept the importance's alpha as "alpha"; before
    # alpha moved to the selection, scores were stored divided by MACs^importance_alpha
    weighted = settings.get("importance_alpha", settings.get("alpha", 0.0)) or 0.0
    if weighted:
        runs = [replace(r, scores=unweigh(r.scores, weighted, settings.get("normalizer", "max"))) for r in runs]
    settings["importance_alpha"] = 0.0
    for key in ("width_mult", "macs_target", "latency_ms", "latency_settings", "scope", "alpha", "combine",
                "multiple_of", "predicted", "predicted_unit"):
        settings.pop(key, None)
    return runs, seed, settings


def default_layout(image_size: int) -> dict[str, Any]:
    """Sensible defaults by image size: the small stem and three 1-block stages at 64 px or less,
    else the ImageNet stem and the ResNet-50 layout."""
    if image_size <= 64:
        return dict(stem="small", layers=(1, 1, 1), width=16)
    return dict(stem="imagenet", layers=(3, 4, 6, 3), width=64)


def allocate(
    data,
    *,
    layers: Sequence[int] | None = None,
    width: int | None = None,
    stem: str | None = None,
    scales: Sequence[int] = (1, 2, 4, 7),
    seed_width: int | Sequence[int] | None = None,
    width_mult: float | None = None,
    macs: int | None = None,
    latency_ms: float | None = None,
    latency_model=None,
    multiple_of: int | None = None,
    scope: str = "block",
    alpha: float = 0.0,
    importance: Importance | None = None,
    sparsity: float = 0.0,
    repeats: int = DEFAULT_REPEATS,
    combine: str = DEFAULT_COMBINE,
    jobs: int | None = None,
    train_config=None,
    name: str | None = None,
) -> AllocationResult:
    """Trains ``repeats`` seed networks on ``data`` (a :class:`~scalenet.data.DataSpec`), seeds
    ``s`` to ``s + repeats - 1`` (``s``: the training config's seed), and selects neurons from
    their combined scores (``combine``: :func:`combine_union` or :func:`combine_mean`),
    ``jobs`` of them at a time (:func:`scalenet.runs.in_processes`; None: one per CPU core, or one
    with CUDA).

    The budget is ``width_mult`` (default 1.0), ``macs`` or ``latency_ms`` (predicted by
    ``latency_model``, a :class:`scalenet.latency.LatencyModel`). The scores are stored
    unweighted; ``alpha`` divides them at selection by each neuron's cost under the budget (MACs,
    or milliseconds for a latency budget; :func:`weigh_by_cost`). ``multiple_of`` rounds
    each branch to a multiple of that many neurons (:func:`round_channels`). ``sparsity`` adds a
    :class:`BNScaleL1` penalty while the seeds train. Returns the allocated
    :class:`Structure`, the scores, each run's own allocation and their agreement against
    chance (:func:`scalenet.agreement.agreement_report`). Bad settings (an impossible budget,
    ``repeats < 1``) fail before any training.
    """
    from .engine import TrainConfig
    from .runs import auto_jobs, in_processes

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"--repeats must be a whole number of seed networks, 1 or more; got {repeats}")
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs must be 1 or more, got {jobs}")
    if combine not in COMBINES:
        raise ValueError(f"combine {combine!r} is unknown; use {' or '.join(COMBINES)}")
    if scope not in SELECTORS:
        raise ValueError(f"scope {scope!r} is unknown; use {' or '.join(SELECTORS)}")
    layout = default_layout(data.image_size)
    layers = tuple(layers or layout["layers"])
    seed = seed_structure(
        layers, seed_width=seed_width, scales=scales, stem=stem or layout["stem"], width=width or layout["width"],
        image_size=data.image_size,
    )
    none = width_mult is None and macs is None and latency_ms is None
    if latency_ms is not None:
        latency_model = latency_model_for(latency_model, seed, progress=train_config is None or train_config.progress)
    budget = budget_from(1.0 if none else width_mult, macs, latency_ms, latency_model)
    budget.check(budget.costs(seed, data.num_classes, data.in_chans))  # fail before training
    if multiple_of is not None:
        multiple_pool(seed, multiple_of)  # a bad --multiple-of fails before training too
    check_alpha(alpha)
    if getattr(importance, "alpha", 0):
        raise ValueError("scores are stored unweighted and weighed by each neuron's cost at selection; give the "
                         "importance alpha=0 and pass alpha to allocate")
    importance = importance or BNScale(0.0)
    cfg = train_config or TrainConfig(epochs=seed_epochs(len(data.train)))
    jobs = auto_jobs(repeats) if jobs is None else jobs
    payloads = [
        dict(seed=seed, data=data, sparsity=sparsity, importance=importance,
             cfg=dataclasses.replace(cfg, seed=cfg.seed + r, progress=cfg.progress and jobs == 1),
             label="seed" if repeats == 1 else f"seed {r + 1}/{repeats}")
        for r in range(repeats)
    ]
    trained = in_processes(_train_seed_network, payloads, jobs)
    settings = {
        "data": data.name, "image_size": data.image_size, "num_classes": data.num_classes, "in_chans": data.in_chans,
        "layers": list(layers), "scales": list(seed.scales), "seed_width": seed_width,
        "importance": type(importance).__name__, "normalizer": getattr(importance, "normalizer", None),
        "importance_alpha": getattr(importance, "alpha", None), "sparsity": sparsity, "seed_epochs": cfg.epochs,
        "seed": cfg.seed, "repeats": repeats,
    }
    runs = [SeedRun(p["cfg"].seed, scores, seed, metrics) for p, (scores, metrics) in zip(payloads, trained)]
    return select_runs(runs, seed, budget, settings, scope=scope, combine=combine, alpha=alpha,
                       multiple_of=multiple_of, name=name)


def select_runs(runs: list[SeedRun], seed: Structure, budget: Budget, settings: dict[str, Any], *, scope: str = "block",
                combine: str = DEFAULT_COMBINE, alpha: float = 0.0, multiple_of: int | None = None,
                name: str | None = None) -> AllocationResult:
    """Selects under ``budget`` from trained seed networks' scores (each run's own allocation,
    then combined; ``settings``: the seed training's, from :func:`allocate` or a sidecar) and
    rounds to ``multiple_of``. ``alpha`` weighs the (unweighted) scores by each neuron's cost
    under the budget: MACs for width and MACs budgets, milliseconds for a latency budget
    (:func:`weigh_by_cost`)."""
    from .agreement import agreement_report

    if combine not in COMBINES:
        raise ValueError(f"combine {combine!r} is unknown; use {' or '.join(COMBINES)}")
    nc, ic = settings.get("num_classes", 1000), settings.get("in_chans", 3)
    costs = budget.costs(seed, nc, ic)
    budget.check(costs)
    if multiple_of is not None:
        multiple_pool(seed, multiple_of)  # a bad --multiple-of fails before any selection
    if settings.get("importance_alpha"):
        raise ValueError("select_runs needs unweighted scores (load_runs unweighs older sidecars' scores)")
    weighed = [weigh_by_cost(r.scores, costs, alpha) for r in runs]  # the one meaning of alpha, for every budget
    selection = dict(scope=scope, num_classes=nc, in_chans=ic)
    runs = [replace(r, structure=select(w, seed, budget, **selection)[0]) for r, w in zip(runs, weighed)]
    if combine == "union":
        combined = combine_union(weighed)
        structure, kept = select(combined, seed, budget, **selection)
    else:
        combined, kept = [], []
        structure = combine_mean([r.structure for r in runs], seed, budget, nc, ic)
        if isinstance(budget, TARGET_BUDGETS):
            budget.verify(costs.of_channels([row[:-1] for row in structure.rows]), costs)
    if multiple_of is not None:
        structure = round_channels(structure, seed, multiple_of, budget, nc, ic)
        if kept:  # the best neurons of each scale, as many as the rounded counts
            kept = [[sorted([j for _, i, j in block.flat() if i == pos][: row[pos]]) for pos in range(len(seed.scales))]
                    for block, row in zip(combined, structure.rows)]
    settings = {**settings, **budget.settings(), "scope": scope, "alpha": alpha, "combine": combine,
                "multiple_of": multiple_of, "predicted": costs.of_channels([row[:-1] for row in structure.rows]),
                "predicted_unit": costs.unit}
    agreement = agreement_report([r.structure for r in runs], seed)
    meta = {
        "allocation": settings,
        "macs": structure.macs(None, nc, ic),
        "params": structure.params(nc, ic),
        "seed_val_top1": statistics.mean(r.metrics[-1]["val_top1"] for r in runs) if runs[0].metrics else None,
        "agreement": {f"stage{s['stage']}": {k: s[k] for k in ("ratio", "z")} for s in agreement["stages"]},
    }
    structure = replace(structure, name=name, meta=meta)
    return AllocationResult(structure, combined, seed, settings, kept, runs, agreement)


def seed_epochs(train_images: int) -> int:
    """The default seed schedule: the fewest whole epochs that show a seed network
    :data:`SEED_IMAGES` images."""
    return max(1, -(-SEED_IMAGES // max(1, train_images)))


def _train_seed_network(p: dict[str, Any]) -> tuple[list[BlockScores], list[dict[str, Any]]]:
    """Trains one seed network and scores its neurons (in a worker process when several run at once)."""
    from .engine import train

    trained = train(p["seed"], p["data"], p["cfg"], None, description=p["label"],
                    regularizer=BNScaleL1(p["sparsity"]) if p["sparsity"] else None)
    return p["importance"](trained.model, p["seed"], p["data"].image_size), trained.metrics


def stage_summary(structure: Structure) -> list[dict[str, Any]]:
    """Per stage: blocks, neurons per block, share of each scale (for the terminal table)."""
    out = []
    for stage in range(len(structure.layers)):
        specs = [s for s in structure.blocks() if s.stage == stage]
        totals = [sum(s.channels[i] for s in specs) for i in range(len(structure.scales))]
        n = sum(totals)
        out.append({
            "stage": stage + 1,
            "blocks": len(specs),
            "side": specs[0].side,
            "planes": specs[0].planes,
            "neurons_per_block": [s.width for s in specs],
            "share": [t / n for t in totals],
        })
    return out


def format_stage_summary(structure: Structure) -> str:
    head = " ".join(f"x{s}".rjust(6) for s in structure.scales)
    lines = [f"{'stage':>5} {'side':>5} {'planes':>6} {'neurons/block':>14} | share {head}"]
    for r in stage_summary(structure):
        per_block = ",".join(map(str, r["neurons_per_block"]))
        share = " ".join(f"{100 * s:5.1f}%" for s in r["share"])
        lines.append(f"{r['stage']:>5} {r['side']:>5} {r['planes']:>6} {per_block:>14} |       {share}")
    return "\n".join(lines)
