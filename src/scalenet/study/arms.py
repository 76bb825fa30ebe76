"""The arms' structures: the learned allocation, the rule arms (uniform, random, ResNet, the
heuristic) and the latency arm, each under the study's budget."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..allocation import (BlockScores, Budget, LatencyBudget, MacsBudget, Selection, WidthBudget, allocate, budget_from,
                          default_layout, load_runs, supernet_epochs, select, select_runs)
from ..data import build_data
from ..errors import SettingError
from ..report import stage_summary
from ..structure import Structure
from ..training import on_main_rank
from .config import TOLERANCE, StudyConfig, latency_alpha

__all__ = ["RULES", "arm_structure", "study_layout", "learned_structure", "ArmContext", "ARM_BUILDERS", "PER_SEED",
           "macs_target", "build_arm", "timed_structures"]


def _published_stage_shares(scales: Sequence[int], stages: int) -> list[list[float]]:
    """ScaleNet-50's per-stage scale shares, interpolated linearly by relative depth to ``stages``."""
    published = [s["share"] for s in stage_summary(Structure.published("scalenet50"))]
    if tuple(scales) != Structure.published("scalenet50").scales:
        raise ValueError(f"the heuristic arm follows ScaleNet-50's scales 1,2,4,7; this study uses {','.join(map(str, scales))}")
    out = []
    for i in range(stages):
        t = i / max(1, stages - 1) * (len(published) - 1)
        j = min(int(t), len(published) - 2)
        w = t - j
        out.append([(1 - w) * a + w * b for a, b in zip(published[j], published[j + 1])])
    return out


def _apportioned(pool: Structure, shares_by_stage: Sequence[Sequence[float]]) -> list[BlockScores]:
    """Scores that make any top-k selection split k over the scales in proportion to the stage's
    shares: the n-th neuron of a scale with share w scores w / (2n + 1) (Sainte-Lague's
    apportionment; equal shares give a round robin from the finest scale)."""
    return [
        BlockScores(spec.name, [[w / (2 * n + 1) for n in range(c)] for w, c in zip(shares_by_stage[spec.stage], spec.channels)],
                    pool.neuron_macs(spec))
        for spec in pool.blocks()
    ]


def _uniform(pool: Structure, random_seed: int) -> tuple[Structure, list[BlockScores]]:
    return pool, _apportioned(pool, [[1.0] * len(pool.scales)] * len(pool.layers))


def _heuristic(pool: Structure, random_seed: int) -> tuple[Structure, list[BlockScores]]:
    return pool, _apportioned(pool, _published_stage_shares(pool.scales, len(pool.layers)))


def _resnet(pool: Structure, random_seed: int) -> tuple[Structure, list[BlockScores]]:
    """One 3x3 conv: a pool of the single scale x1."""
    pool = Structure.uniform(pool.layers, [4 * p for p in pool.stage_planes()], scales=(1,), stem=pool.stem,
                             width=pool.width, image_size=pool.image_size)
    return pool, _apportioned(pool, [[1.0]] * len(pool.layers))


def _random(pool: Structure, random_seed: int) -> tuple[Structure, list[BlockScores]]:
    g = torch.Generator().manual_seed(random_seed)
    return pool, [BlockScores(spec.name, [torch.rand(c, generator=g).tolist() for c in spec.channels],
                              pool.neuron_macs(spec)) for spec in pool.blocks()]


#: The arms with a fixed rule: (supernet pool, random seed) -> the pool to select from and its
#: neurons' scores, which any top-k selection under the budget then follows.
RULES = {"uniform": _uniform, "random": _random, "resnet": _resnet, "heuristic": _heuristic}


def arm_structure(arm: str, pool: Structure, target: "int | Budget", num_classes: int, in_chans: int,
                  random_seed: int = 0) -> Structure:
    """A non-learned arm in ``pool``'s layout (a supernet structure: abundant, uniform neurons per
    scale) with MACs within 1% of ``target`` (or under another budget, e.g. a
    :class:`LatencyBudget`): its neurons ranked by the arm's rule (:data:`RULES`) and kept per
    block under that budget, as the learned arm's are ranked by |gamma|."""
    if arm not in RULES:
        raise ValueError(f"arm {arm!r} has no fixed structure")
    budget = MacsBudget(target, TOLERANCE) if isinstance(target, int) else target
    pool, scores = RULES[arm](pool, random_seed)
    try:
        structure = select(scores, budget.bind(pool, num_classes, in_chans))[0]
    except ValueError as e:
        why, named = (e.template, e.settings) if isinstance(e, SettingError) else (str(e), ())  # its marks kept
        if isinstance(budget, LatencyBudget):  # the cost model was fitted on SA blocks, not on this arm's
            costs = budget.bind(pool, num_classes, in_chans).costs
            inside = costs.lowest <= budget.latency_ms <= costs.highest
            reason = why if inside else (f"the cost model predicts its pool at {costs.format(costs.lowest)} to "
                                            f"{costs.format(costs.highest)}")
            raise SettingError(
                f"the {arm} arm cannot match {budget.describe()} predicted within 1% ({reason}); a model fitted on SA "
                "blocks may misjudge this arm's blocks (compare with scalenet latency-model --check): match the study "
                "in MACs, or change {width}", "width", *named) from None
        raise SettingError(f"the {arm} arm cannot match {budget.describe()} within 1% ({why}); choose a larger budget "
                           "or {width}", "width", *named) from None
    return dataclasses.replace(structure, name=arm if arm != "random" else f"random-{random_seed}")


def study_layout(cfg: StudyConfig, image_size: int) -> dict[str, Any]:
    layout = default_layout(image_size)
    return dict(layers=tuple(cfg.layers or layout["layers"]), width=cfg.width or layout["width"], stem=layout["stem"])


def learned_structure(cfg: StudyConfig, out: Path) -> Structure:
    path = out / "structures" / "learned.json"
    if path.is_file():
        return Structure.load(path)
    data = build_data(cfg.data, cfg.image_size, train_subset=cfg.supernet_subset, val_subset=cfg.val_subset,
                      seed=cfg.seed)
    layout = study_layout(cfg, data.image_size)
    given = cfg.width_mult is not None or cfg.macs is not None
    budget = budget_from(cfg.width_mult, cfg.macs) if given else WidthBudget(1.0)
    recipe = dataclasses.replace(cfg.train, epochs=cfg.supernet_epochs or supernet_epochs(len(data.train)))
    result = allocate(data, budget, layers=layout["layers"], width=layout["width"], jobs=cfg.jobs, train_config=recipe,
                      runs=out / "structures" / "learned.runs", resume=True, name="learned",
                      **({} if cfg.repeats is None else {"repeats": cfg.repeats}))

    def save() -> dict[str, Any]:
        result.save(path, title=f"learned allocation for the study ({data.name})")
        return result.structure.to_json()

    return Structure.from_json(on_main_rank(save), source=str(path))


@dataclass
class ArmContext:
    """What every arm's builder may use: the study, the supernet pool, the budget and the learned arm."""

    cfg: StudyConfig
    out: Path
    pool: Structure
    budget: Budget
    learned: Structure | None
    num_classes: int
    in_chans: int


def _latency_arm(a: ArmContext, random_seed: int) -> Structure:
    """The learned arm's supernets, selected again under the latency budget (scores per ms)."""
    runs, supernet, training = load_runs(a.out / "structures" / "learned.scores.json")
    selection = Selection(alpha=latency_alpha(a.cfg.latency_alpha))
    return select_runs(runs, supernet, a.budget, training, selection, name="latency").structure


#: Every arm's builder, by name: (the study's arms context, the training seed) -> its structure.
ARM_BUILDERS = {
    "learned": lambda a, s: a.learned,
    "latency": _latency_arm,
    **{arm: (lambda a, s, arm=arm: arm_structure(arm, a.pool, a.budget, a.num_classes, a.in_chans, s)) for arm in RULES},
}


#: Arms built afresh for every training seed.
PER_SEED = ("random",)


def macs_target(cfg: StudyConfig, pool: Structure, learned: Structure | None, num_classes: int, in_chans: int) -> int:
    """The MACs every arm matches: ``--macs``, the learned arm's, or (no learned arm) the uniform
    split's at the width multiplier."""
    if cfg.macs is not None:
        return cfg.macs
    if learned is not None:
        return learned.macs(None, num_classes, in_chans)
    k = [WidthBudget(cfg.width_mult or 1.0).neurons(p, 10**9) for p in pool.stage_planes()]
    return Structure.uniform(pool.layers, [max(1, round(c / len(pool.scales))) for c in k], stem=pool.stem,
                             width=pool.width, image_size=pool.image_size).macs(None, num_classes, in_chans)


def build_arm(a: ArmContext, arm: str, budget: Budget | None = None) -> Any:
    """One arm's structure (the random arm: ``{seed: structure}``), under the study's budget or
    under ``budget``."""
    if budget is not None:
        a = dataclasses.replace(a, budget=budget)
    build = ARM_BUILDERS[arm]
    seeds = range(a.cfg.seed, a.cfg.seed + a.cfg.seeds)
    return {s: build(a, s) for s in seeds} if arm in PER_SEED else build(a, 0)


def timed_structures(structures: dict[str, Any]) -> dict[str, Structure]:
    """The structure timed for each arm (the random arm: its first seed's)."""
    return {arm: next(iter(s.values())) if isinstance(s, dict) else s for arm, s in structures.items()}
