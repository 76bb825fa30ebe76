"""Budgets and cost models: what a selection may spend, and what each kept neuron costs.

A budget is stated by the user (:class:`WidthBudget`, :class:`MacsBudget`,
:class:`LatencyBudget`) and bound once to a supernet (:meth:`bind`), which gives a
:class:`BoundBudget`: the one object the selectors, the rounding and the combination ask
whether a total fits, whether it reaches the target, what the next neuron costs, and whether a
result meets the budget.

A network's MACs are linear in the kept neurons (:meth:`Structure.neuron_macs`): each neuron
costs its branch conv plus its column of the 1x1 conv after the concatenation; everything
else does not depend on the allocation (:class:`MacsCost`). Predicted latency adds a fixed
cost per open branch (:class:`LatencyCost`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence, Union

from ..errors import SettingError, mention
from ..latency import latency_model_for
from ..structure import Structure
from .importance import Neuron

__all__ = [
    "MacsCost", "LatencyCost", "WidthBudget", "MacsBudget", "LatencyBudget", "Budget", "TARGET_BUDGETS",
    "BoundBudget", "budget_from", "minimum_macs", "counts",
]


def counts(chosen: list[list[Neuron]], scales: int) -> list[list[int]]:
    """Per block, the number of chosen neurons of each scale position."""
    out = [[0] * scales for _ in chosen]
    for row, ns in zip(out, chosen):
        for n in ns:
            row[n[1]] += 1
    return out


class _Cost:
    """What both cost models share: the total of a selection, from its counts per scale."""

    supernet: Structure

    def total(self, chosen: list[list[Neuron]]) -> float:
        return self.of_channels(counts(chosen, len(self.supernet.scales)))


class MacsCost(_Cost):
    """A supernet's MACs as a function of the kept neurons: ``base`` (what does not depend
    on the allocation: stem, 1x1 convs in, shortcuts, classifier) plus each kept neuron's cost.

    The cost interface every budget's cost model shares (see :class:`LatencyCost`):
    ``base``, ``lowest`` (one neuron of the cheapest scale per block), ``highest`` (the whole
    supernet), :meth:`added` (what one more neuron costs, given the block's count of its scale) and
    :meth:`of_channels` (the total for per-block, per-scale counts)."""

    unit = "MACs"

    def __init__(self, supernet: Structure, num_classes: int = 1000, in_chans: int = 3):
        self.supernet = supernet
        sides = supernet.stage_sides()
        self.costs = [supernet.neuron_macs(spec, sides[spec.stage]) for spec in supernet.blocks()]
        self.highest = supernet.macs(None, num_classes, in_chans)
        self.base = self.highest - sum(
            c * cost for spec, costs in zip(supernet.blocks(), self.costs) for c, cost in zip(spec.channels, costs)
        )
        #: one neuron, of the cheapest scale, per block
        self.lowest = self.base + sum(
            min(cost for c, cost in zip(spec.channels, costs) if c)
            for spec, costs in zip(supernet.blocks(), self.costs)
        )

    def added(self, block: int, scale: int, have: int) -> float:
        """What one more neuron of ``scale`` (its position) costs in ``block``, which has ``have``."""
        return self.costs[block][scale]

    def of_channels(self, channels: Sequence[Sequence[int]]) -> float:
        return self.base + sum(c * k for ch, ks in zip(channels, self.costs) for c, k in zip(ch, ks))

    def format(self, value: float) -> str:
        return f"{value:,.0f}"


class LatencyCost(_Cost):
    """A supernet's predicted milliseconds (:class:`scalenet.latency.LatencyModel`) as a
    function of the kept neurons: a branch's fixed cost is charged with its first neuron, once."""

    unit = "ms"

    def __init__(self, model, supernet: Structure):
        model.check_structure(supernet)
        self.model, self.supernet = model, supernet
        specs = list(supernet.blocks())
        self.stages = [model.stage_cost(spec.stage, supernet.scales) for spec in specs]
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


class BoundBudget:
    """A budget bound to one supernet (:meth:`WidthBudget.bind` and the others): the cost
    model of its unit, and the answers every selector, rounding and combination needs.

    - :attr:`fixed`: neurons per block the budget fixes (a width budget), or None (a target);
    - :meth:`fits` / :meth:`reached`: whether a total is within the budget / reaches its target
      (both always true without a target);
    - :meth:`added`, :meth:`total`, :meth:`of_channels`: costs, from the cost model;
    - :meth:`check`: refuses, in one line, a budget no selection from the supernet can meet;
    - :meth:`verify`: refuses a result that misses the budget (nothing to miss without a target).
    """

    def __init__(self, budget: "Budget", costs: MacsCost | LatencyCost, fixed: list[int] | None = None):
        self.budget, self.costs, self.fixed = budget, costs, fixed
        self.supernet: Structure = costs.supernet
        self.unit: str = costs.unit

    def format(self, value: float) -> str:
        return self.costs.format(value)

    def added(self, block: int, scale: int, have: int) -> float:
        return self.costs.added(block, scale, have)

    def total(self, chosen: list[list[Neuron]]) -> float:
        return self.costs.total(chosen)

    def of_channels(self, channels: Sequence[Sequence[int]]) -> float:
        return self.costs.of_channels(channels)

    def of_structure(self, structure: Structure) -> float:
        return self.costs.of_channels([row[:-1] for row in structure.rows])

    def fits(self, total: float) -> bool:
        return self.budget.fits(total)

    def reached(self, total: float) -> bool:
        return self.budget.reached(total)

    def check(self) -> "BoundBudget":
        self.budget.check(self.costs)
        return self

    def verify(self, got: float, *, lower: bool = True) -> None:
        self.budget.verify(got, self.costs, lower=lower)

    def check_first(self, first: float) -> None:
        """Every block keeps its best neuron: refuses a budget below what those cost together
        (``first``; above the supernet's lowest when a branch's fixed cost makes a block's best dear)."""
        if not self.fits(first):
            raise SettingError(
                f"impossible budget: {mention(self.budget.setting)} {self.format(self.budget.limit)} is below "
                f"{self.format(first)}, what each block's best-scoring neuron costs; raise it", self.budget.setting
            )

    def settings(self) -> dict[str, Any]:
        return self.budget.settings()


@dataclass(frozen=True)
class WidthBudget:
    """``round(width_mult * planes)`` neurons per block (at least 1): ScaleNet-50 used about
    1.36, ScaleNet-50-light 1.0."""

    width_mult: float
    setting = "width_mult"

    def __post_init__(self) -> None:
        if not (self.width_mult > 0 and math.isfinite(self.width_mult)):
            raise SettingError(f"{{width_mult}} must be positive and finite, got {self.width_mult}", "width_mult")

    def neurons(self, planes: int, capacity: int) -> int:
        return min(capacity, max(1, round(self.width_mult * planes)))

    def bind(self, supernet: Structure, num_classes: int = 1000, in_chans: int = 3) -> BoundBudget:
        fixed = [self.neurons(spec.planes, sum(spec.channels)) for spec in supernet.blocks()]
        return BoundBudget(self, MacsCost(supernet, num_classes, in_chans), fixed)

    def fits(self, total: float) -> bool:  # no target total: every total fits and is reached
        return True

    def reached(self, total: float) -> bool:
        return True

    def check(self, costs: MacsCost) -> None:
        """Refuses a multiplier that keeps more neurons in some block than the supernet has there
        (as a MACs target above the supernet's is refused), in one line."""
        for spec in costs.supernet.blocks():
            wanted, capacity = round(self.width_mult * spec.planes), sum(spec.channels)
            if wanted > capacity:
                most = min(sum(b.channels) / b.planes for b in costs.supernet.blocks())
                raise SettingError(
                    f"impossible budget: {{width_mult}} {self.width_mult:g} keeps {wanted:,} neurons in "
                    f"{spec.name}, but "
                    f"the supernet has {capacity:,} there; lower it (at most {most:g} with this supernet) or raise "
                    "{supernet_width}", "width_mult", "supernet_width"
                )

    def verify(self, got: float, costs, *, lower: bool = True) -> None:
        """Nothing to miss: the neurons per block are the budget."""

    def resolved(self, supernet: Structure, progress: bool = True) -> "WidthBudget":
        return self

    def describe(self) -> str:
        return f"width multiplier {self.width_mult:g}"

    def settings(self) -> dict[str, Any]:
        return {"width_mult": self.width_mult, "macs": None, "latency_ms": None}


class _TargetBudget:
    """A budget on a total the cost model predicts (MACs, milliseconds): neurons are kept until
    the total reaches the target; ``fits`` and ``reached`` say when to stop."""

    setting = ""
    limit: float
    tolerance: float

    def fits(self, total: float) -> bool:
        return total <= self.limit * (1 + self.tolerance)

    def reached(self, total: float) -> bool:
        return total >= self.limit * (1 - self.tolerance)

    def check(self, costs) -> None:
        """Raises one clear line when no selection from the supernet can meet the budget."""
        target = costs.format(self.limit)
        if self.limit < costs.lowest:
            raise SettingError(
                f"impossible budget: {mention(self.setting)} {target} is below the minimum "
                f"{costs.format(costs.lowest)} "
                f"(one neuron per block{self._where()}); raise it", self.setting
            )
        if self.limit > costs.highest * (1 + self.tolerance):
            raise SettingError(
                f"impossible budget: {mention(self.setting)} {target} is above the supernet's "
                f"{costs.format(costs.highest)}"
                f"{self._where()}; lower it or raise {{supernet_width}}", self.setting, "supernet_width"
            )

    def verify(self, got: float, costs, *, lower: bool = True) -> None:
        """Raises when ``got`` misses the budget: above it, or (``lower``) short of reaching it."""
        if not self.fits(got) or lower and not self.reached(got):
            raise SettingError(
                f"could not meet {mention(self.setting)} {costs.format(self.limit)} within {self.tolerance:.0%} "
                f"(closest {costs.format(got)}); raise {{supernet_width}} or use {{scope='global'}}",
                self.setting, "supernet_width", "scope"
            )

    def _where(self) -> str:
        return ""


@dataclass(frozen=True)
class MacsBudget(_TargetBudget):
    """The network's multiply-adds, met within ``tolerance``."""

    macs: int
    tolerance: float = 0.01
    setting = "macs"

    @property
    def limit(self) -> float:
        return self.macs

    def bind(self, supernet: Structure, num_classes: int = 1000, in_chans: int = 3) -> BoundBudget:
        return BoundBudget(self, MacsCost(supernet, num_classes, in_chans))

    def resolved(self, supernet: Structure, progress: bool = True) -> "MacsBudget":
        return self

    def describe(self) -> str:
        return f"{self.macs:,} MACs"

    def settings(self) -> dict[str, Any]:
        return {"width_mult": None, "macs": self.macs, "latency_ms": None}


@dataclass(frozen=True)
class LatencyBudget(_TargetBudget):
    """The network's predicted milliseconds on a device (a :class:`scalenet.latency.LatencyModel`):
    never above ``latency_ms``, and within ``tolerance`` below it."""

    latency_ms: float
    model: Any  # scalenet.latency.LatencyModel (or LatencySettings, until resolved for a supernet)
    tolerance: float = 0.01
    setting = "latency_ms"

    def __post_init__(self) -> None:
        if not (self.latency_ms > 0 and math.isfinite(self.latency_ms)):
            raise SettingError(f"{{latency_ms}} must be positive and finite (milliseconds), got {self.latency_ms}",
                               "latency_ms")

    @property
    def limit(self) -> float:
        return self.latency_ms

    def fits(self, total: float) -> bool:  # a latency target is a ceiling
        return total <= self.latency_ms

    def bind(self, supernet: Structure, num_classes: int = 1000, in_chans: int = 3) -> BoundBudget:
        return BoundBudget(self, LatencyCost(self.model, supernet))

    def resolved(self, supernet: Structure, progress: bool = True) -> "LatencyBudget":
        """This budget with its cost model for ``supernet``'s layout: the given model (checked), or for
        ``LatencySettings`` the cached one (:func:`scalenet.latency.latency_model_for`)."""
        return dataclasses.replace(self, model=latency_model_for(self.model, supernet, progress=progress))

    def describe(self) -> str:
        return f"{self.latency_ms:.2f} ms"

    def settings(self) -> dict[str, Any]:
        return {"width_mult": None, "macs": None, "latency_ms": self.latency_ms,
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


def minimum_macs(supernet: Structure, num_classes: int = 1000, in_chans: int = 3) -> int:
    """The smallest network the supernet allows: one neuron, of the cheapest scale, per block."""
    return MacsCost(supernet, num_classes, in_chans).lowest
