"""Data-driven neuron allocation (paper Sec. 3.2, Algorithm 1).

1. A *seed* network with abundant, uniform neurons per scale is trained on the task's data.
2. Every output neuron of every SA branch gets an importance score; by default its BN scale
   |gamma| (the per-branch BN after upsampling), optionally divided by cost**alpha, where cost
   is the neuron's multiply-adds (:class:`BNScale`).
3. Inside each block the top-k neurons are kept, k from a width multiplier of the ResNet width
   (constant within a stage) or from a MACs budget for the whole network, and counted per
   scale: that is the block's row ``[C_1, C_2, C_4, C_7, side]``.

The paper ranks per block (``scope="block"``). ``scope="global"`` ranks all neurons of the
network together, network-slimming style, after dividing each block's scores by the block's
largest score; it lets the budget move between blocks. Every block keeps at least one neuron;
a scale may end up with none.

A network's MACs are linear in the kept neurons: each neuron of scale s in a block costs its
branch conv (``planes * k * k * (side // s)**2``) plus its column of the 1x1 conv after the
concatenation (``4 * planes * side**2``); everything else does not depend on the allocation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from torch import nn

from .structure import BlockSpec, Structure

__all__ = [
    "BlockScores",
    "Importance",
    "BNScale",
    "AllocationResult",
    "seed_structure",
    "neuron_costs",
    "select",
    "minimum_macs",
    "check_budget",
    "allocate",
    "default_layout",
    "stage_summary",
    "format_stage_summary",
]


@dataclass
class BlockScores:
    """Scores of one block's seed neurons, grouped by scale position."""

    block: str
    scores: list[list[float]]  # per scale position, one score per seed neuron
    costs: list[int]  # MACs of one neuron of each scale position

    def flat(self) -> list[tuple[float, int, int]]:
        """(score, scale position, index) for every neuron, best first (ties: finer scale first)."""
        items = [(s, i, j) for i, row in enumerate(self.scores) for j, s in enumerate(row)]
        return sorted(items, key=lambda t: (-t[0], t[1], t[2]))


class Importance(Protocol):
    """Scores a trained seed network: one :class:`BlockScores` per SA block."""

    def __call__(self, model: nn.Module, structure: Structure, image_size: int) -> list[BlockScores]: ...


@dataclass
class BNScale:
    """|gamma| of each neuron's branch BN, divided by ``cost ** alpha`` (the paper: alpha = 0)."""

    alpha: float = 0.0

    def __call__(self, model: nn.Module, structure: Structure, image_size: int) -> list[BlockScores]:
        from .models.scalenet import SABottleneck

        blocks = [m for m in model.modules() if isinstance(m, SABottleneck)]
        out = []
        for spec, block in zip(structure.blocks(), blocks):
            costs = neuron_costs(structure, spec, image_size)
            scores = []
            for i, c in enumerate(spec.channels):
                if c == 0:
                    scores.append([])
                    continue
                gamma = block.bn2[str(i)].weight.detach().abs().double().cpu()
                scores.append((gamma / (costs[i] ** self.alpha)).tolist())
            out.append(BlockScores(spec.name, scores, costs))
        return out


def neuron_costs(structure: Structure, spec: BlockSpec, image_size: int | None = None) -> list[int]:
    """MACs of one output neuron of each scale position in this block."""
    side = structure.stage_sides(image_size)[spec.stage]
    return [
        spec.planes * k * k * (side // s) ** 2 + spec.out_channels * side * side
        for s, k in zip(structure.scales, spec.kernel_sizes)
    ]


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


def _base_macs(structure: Structure, image_size: int | None, num_classes: int, in_chans: int) -> int:
    """MACs that do not depend on the allocation (stem, 1x1 convs in, shortcuts, classifier)."""
    total = structure.macs(image_size, num_classes, in_chans)
    for spec in structure.blocks():
        total -= sum(c * cost for c, cost in zip(spec.channels, neuron_costs(structure, spec, image_size)))
    return total


def minimum_macs(seed: Structure, num_classes: int = 1000, in_chans: int = 3) -> int:
    """The smallest network the seed allows: one neuron, of the cheapest scale, per block."""
    base = _base_macs(seed, None, num_classes, in_chans)
    return base + sum(
        min(cost for c, cost in zip(spec.channels, neuron_costs(seed, spec)) if c) for spec in seed.blocks()
    )


def check_budget(seed: Structure, macs: int, num_classes: int = 1000, in_chans: int = 3, tolerance: float = 0.01) -> None:
    """Raises a clear ValueError when no selection from ``seed`` can meet ``macs``."""
    lowest = minimum_macs(seed, num_classes, in_chans)
    highest = seed.macs(None, num_classes, in_chans)
    if macs < lowest:
        raise ValueError(f"impossible budget: --macs {macs:,} is below the minimum {lowest:,} (one neuron per block); raise it")
    if macs > highest * (1 + tolerance):
        raise ValueError(
            f"impossible budget: --macs {macs:,} is above the seed network's {highest:,}; lower it or raise --seed-width"
        )


@dataclass
class AllocationResult:
    structure: Structure
    scores: list[BlockScores]
    seed: Structure
    settings: dict[str, Any] = field(default_factory=dict)
    kept: list[list[list[int]]] = field(default_factory=list)  # per block, per scale: kept neuron indices
    seed_metrics: list[dict[str, Any]] = field(default_factory=list)

    def sidecar(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "seed": self.seed.to_json(),
            "seed_metrics": self.seed_metrics,
            "macs": self.structure.macs(num_classes=self.settings.get("num_classes", 1000),
                                        in_chans=self.settings.get("in_chans", 3)),
            "blocks": [
                {"block": b.block, "scales": list(self.seed.scales), "scores": b.scores, "costs": b.costs, "kept": k}
                for b, k in zip(self.scores, self.kept)
            ],
        }


def select(
    scores: list[BlockScores],
    seed: Structure,
    *,
    width_mult: float | None = None,
    macs: int | None = None,
    scope: str = "block",
    num_classes: int = 1000,
    in_chans: int = 3,
    tolerance: float = 0.01,
) -> tuple[Structure, list[list[list[int]]]]:
    """Keeps the top neurons under the budget and counts them per scale.

    Give ``width_mult`` (k = round(width_mult * planes) per block, at least 1) or ``macs``
    (the network's MACs land within ``tolerance`` of it). Returns the structure and, per block
    and scale, the indices of the kept seed neurons.
    """
    if scope not in ("block", "global"):
        raise ValueError(f"scope {scope!r} is unknown; use block or global")
    if (width_mult is None) == (macs is None):
        raise ValueError("give exactly one budget: a width multiplier or a MACs target")
    specs = list(seed.blocks())
    ranked = [b.flat() for b in scores]
    capacity = [len(r) for r in ranked]
    base = _base_macs(seed, None, num_classes, in_chans)
    if width_mult is not None and width_mult <= 0:
        raise ValueError(f"--width-mult must be positive, got {width_mult}")
    if macs is not None:
        check_budget(seed, macs, num_classes, in_chans, tolerance)

    def cost_of(block: int, neuron: tuple[float, int, int]) -> int:
        return scores[block].costs[neuron[1]]

    if scope == "block":
        def keep_for(mult: float) -> list[int]:
            return [min(capacity[b], max(1, round(mult * spec.planes))) for b, spec in enumerate(specs)]

        def total(keep: list[int]) -> int:
            return base + sum(cost_of(b, n) for b in range(len(specs)) for n in ranked[b][: keep[b]])

        if width_mult is not None:
            keep = keep_for(width_mult)
        else:
            lo, hi = 0.0, max(capacity[b] / spec.planes for b, spec in enumerate(specs)) + 1
            for _ in range(60):  # MACs grow with the multiplier: bisect for the largest within budget
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if total(keep_for(mid)) <= macs else (lo, mid)
            keep = keep_for(lo)
            # whole-stage steps can be coarse on small networks: fill the rest neuron by neuron,
            # best normalised score first, so the target is met within the tolerance
            current = total(keep)
            while current < macs * (1 - tolerance):
                options = []
                for b in range(len(specs)):
                    if keep[b] < capacity[b]:
                        n = ranked[b][keep[b]]
                        top = ranked[b][0][0] or 1.0
                        if current + cost_of(b, n) <= macs * (1 + tolerance):
                            options.append((n[0] / top, -b, b))
                if not options:
                    break
                _, _, b = max(options)
                current += cost_of(b, ranked[b][keep[b]])
                keep[b] += 1
        chosen = [ranked[b][: keep[b]] for b in range(len(specs))]
    else:
        # global: every block's best neuron first, then all others by score normalised per block
        chosen = [[r[0]] for r in ranked]
        rest = sorted(
            ((n[0] / (ranked[b][0][0] or 1.0), b, n) for b in range(len(specs)) for n in ranked[b][1:]),
            key=lambda t: (-t[0], t[1], t[2][1], t[2][2]),
        )
        if width_mult is not None:
            budget_neurons = sum(min(capacity[b], max(1, round(width_mult * spec.planes))) for b, spec in enumerate(specs))
            for _, b, n in rest[: max(0, budget_neurons - len(specs))]:
                chosen[b].append(n)
        else:
            current = base + sum(cost_of(b, c[0]) for b, c in enumerate(chosen))
            for _, b, n in rest:
                if current + cost_of(b, n) > macs * (1 + tolerance):
                    continue
                if current >= macs * (1 - tolerance):
                    break
                chosen[b].append(n)
                current += cost_of(b, n)

    channels, kept = [], []
    for b, spec in enumerate(specs):
        per_scale = [sorted(j for _, i, j in chosen[b] if i == pos) for pos in range(len(seed.scales))]
        kept.append(per_scale)
        channels.append([len(p) for p in per_scale])
    structure = Structure.from_channels(
        channels, seed.layers, scales=seed.scales, stem=seed.stem, width=seed.width, image_size=seed.image_size,
    )
    if macs is not None:
        got = structure.macs(None, num_classes, in_chans)
        if abs(got - macs) > tolerance * macs:
            raise ValueError(
                f"could not meet --macs {macs:,} within {tolerance:.0%} (closest {got:,}); raise --seed-width or "
                "use --scope global"
            )
    return structure, kept


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
    scope: str = "block",
    alpha: float = 0.0,
    importance: Importance | None = None,
    train_config=None,
    name: str | None = None,
) -> AllocationResult:
    """Trains a seed network on ``data`` (a :class:`~scalenet.data.DataSpec`) and selects neurons.

    Returns the allocated :class:`Structure`, the per-neuron scores and the settings. The
    budget is checked before any training, so an impossible one fails fast.
    """
    from .engine import TrainConfig, train

    layout = default_layout(data.image_size)
    layers = tuple(layers or layout["layers"])
    seed = seed_structure(
        layers, seed_width=seed_width, scales=scales, stem=stem or layout["stem"], width=width or layout["width"],
        image_size=data.image_size,
    )
    if width_mult is None and macs is None:
        width_mult = 1.0
    if macs is not None:  # fail before training when the budget cannot be met
        check_budget(seed, macs, data.num_classes, data.in_chans)
    cfg = train_config or TrainConfig(epochs=5)
    result = train(seed, data, cfg, None, description="seed")
    importance = importance or BNScale(alpha)
    scores = importance(result.model, seed, data.image_size)
    structure, kept = select(scores, seed, width_mult=width_mult, macs=macs, scope=scope,
                             num_classes=data.num_classes, in_chans=data.in_chans)
    settings = {
        "data": data.name, "image_size": data.image_size, "num_classes": data.num_classes, "in_chans": data.in_chans,
        "layers": list(layers), "scales": list(seed.scales), "seed_width": seed_width, "width_mult": width_mult,
        "macs_target": macs, "scope": scope, "alpha": alpha, "importance": type(importance).__name__,
        "sparsity": cfg.sparsity, "seed_epochs": cfg.epochs, "seed": cfg.seed,
    }
    meta = {
        "allocation": settings,
        "macs": structure.macs(None, data.num_classes, data.in_chans),
        "params": structure.params(data.num_classes, data.in_chans),
        "seed_val_top1": result.final.get("val_top1"),
    }
    structure = Structure(rows=structure.rows, layers=structure.layers, scales=structure.scales, stem=structure.stem,
                          width=structure.width, image_size=structure.image_size, name=name, meta=meta)
    return AllocationResult(structure, scores, seed, settings, kept, result.metrics)


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
