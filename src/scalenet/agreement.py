"""Does an allocation carry information? Agreement between runs, measured against chance.

An allocation gives each block a number of neurons per scale. Two allocations are compared by
the total-variation distance of their scale shares, ``TV = 0.5 * sum |a - b|`` (0: the same
shares; 1: no scale in common), per block and per stage (the blocks of a stage summed).

Chance is what allocations that carry no information would give: each block's kept neurons
drawn at random, without replacement, from the supernet's pool (as many as the allocation
keeps). Two quantities answer "is there signal?":

- **agreement**: the mean pairwise TV between runs that differ only in their seed, next to the
  mean TV between two random allocations (``ratio`` < 1: the runs agree better than chance);
- **preference**: how far the runs' mean allocation sits from the uniform split (the pool's
  own shares), in units of chance's spread: ``z = (d - mean_chance) / sd_chance``, where the
  chance distribution is that of the mean of as many random allocations. A large ``z``: the
  runs share a preference that random draws do not produce.

Chance is simulated with a fixed seed, so a report is reproducible.
"""

from __future__ import annotations

import itertools
import statistics
from typing import Any, Sequence

import numpy as np

from .structure import Structure

__all__ = ["tv", "shares", "block_counts", "stage_counts", "Chance", "agreement_report", "format_agreement"]

Counts = list[list[int]]  # per block (or stage), channels per scale position


def shares(counts: Sequence[float]) -> list[float]:
    total = float(sum(counts))
    return [c / total for c in counts] if total else [0.0 for _ in counts]


def tv(a: Sequence[float], b: Sequence[float]) -> float:
    """Total-variation distance of two share vectors (0 to 1)."""
    return 0.5 * sum(abs(x - y) for x, y in zip(a, b))


def block_counts(structure: Structure) -> Counts:
    return [list(row[:-1]) for row in structure.rows]


def stage_counts(counts: Sequence[Sequence[float]], layers: Sequence[int]) -> list[list[float]]:
    """Per-block counts summed over the blocks of each stage."""
    out, k = [], 0
    for depth in layers:
        out.append([sum(c) for c in zip(*counts[k : k + depth])])
        k += depth
    return out


def _mean_pairwise_tv(vectors: list[list[float]]) -> float:
    pairs = list(itertools.combinations(vectors, 2))
    return statistics.mean(tv(a, b) for a, b in pairs) if pairs else float("nan")


class Chance:
    """Random allocations from ``supernet``'s pool: each block keeps ``kept[b]`` neurons drawn without
    replacement (a multivariate hypergeometric draw over the scales), ``draws`` times."""

    def __init__(self, supernet: Structure, kept: Sequence[int], draws: int = 2000, rng_seed: int = 0):
        self.layers, self.kept, self.draws = supernet.layers, list(kept), draws
        self.pool = block_counts(supernet)
        self.rng = np.random.default_rng(rng_seed)
        self.a, self.b = self._draw(), self._draw()  # two independent sets, for pairwise distances

    def _draw(self) -> np.ndarray:
        """``draws`` random allocations: (draws, blocks, scales)."""
        return np.stack([self.rng.multivariate_hypergeometric(p, k, size=self.draws) for p, k in zip(self.pool, self.kept)], 1)

    def uniform_stage_shares(self) -> list[list[float]]:
        return [shares(c) for c in stage_counts(self.pool, self.layers)]

    def block_tv(self) -> list[float]:
        """Mean TV between two random allocations, per block."""
        return [float(v) for v in _tv_rows(self.a, self.b).mean(0)]

    def stage_tv(self) -> list[float]:
        """Mean TV between two random allocations, per stage."""
        return [float(v) for v in _tv_rows(_stage_sum(self.a, self.layers), _stage_sum(self.b, self.layers)).mean(0)]

    def distance_from_uniform(self, n: int) -> tuple[list[float], list[float]]:
        """Mean and standard deviation, per stage, of the TV between the mean of ``n`` random
        allocations and the uniform split."""
        mean = np.mean([self.a] + [self._draw() for _ in range(n - 1)], axis=0)
        stage = _stage_sum(mean, self.layers)
        uniform = np.array(self.uniform_stage_shares())
        d = 0.5 * np.abs(stage / stage.sum(-1, keepdims=True) - uniform[None]).sum(-1)
        return [float(v) for v in d.mean(0)], [float(v) for v in d.std(0, ddof=1)]


def _stage_sum(x: np.ndarray, layers: Sequence[int]) -> np.ndarray:
    bounds = np.cumsum([0, *layers])
    return np.stack([x[:, a:b].sum(1) for a, b in zip(bounds[:-1], bounds[1:])], 1)


def _tv_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sa = a / np.maximum(a.sum(-1, keepdims=True), 1)
    sb = b / np.maximum(b.sum(-1, keepdims=True), 1)
    return 0.5 * np.abs(sa - sb).sum(-1)


def agreement_report(runs: Sequence[Structure], supernet: Structure, *, draws: int = 2000,
                     rng_seed: int = 0) -> dict[str, Any]:
    """Agreement of ``runs`` (allocations that differ only in their supernets' random seed) and their
    shared preference, per block and per stage, each next to chance (see the module docs)."""
    counts = [block_counts(r) for r in runs]
    kept = [round(statistics.mean(sum(c[b]) for c in counts)) for b in range(len(supernet.rows))]
    chance = Chance(supernet, kept, draws, rng_seed)
    n = len(runs)
    block_tv = [_mean_pairwise_tv([shares(c[b]) for c in counts]) for b in range(len(kept))]
    stages = [stage_counts(c, supernet.layers) for c in counts]
    stage_tv = [_mean_pairwise_tv([shares(s[i]) for s in stages]) for i in range(len(supernet.layers))]
    mean_stage = [shares([statistics.mean(s[i][j] for s in stages) for j in range(len(supernet.scales))])
                  for i in range(len(supernet.layers))]
    distance = [tv(m, u) for m, u in zip(mean_stage, chance.uniform_stage_shares())]
    d_mean, d_sd = chance.distance_from_uniform(n)
    chance_block, chance_stage = chance.block_tv(), chance.stage_tv()
    return {
        "runs": n,
        "draws": draws,
        "scales": list(supernet.scales),
        "stages": [
            {
                "stage": i + 1,
                "tv": stage_tv[i] if n > 1 else None,
                "chance_tv": chance_stage[i],
                "ratio": stage_tv[i] / chance_stage[i] if n > 1 and chance_stage[i] else None,
                "mean_shares": mean_stage[i],
                "uniform_shares": chance.uniform_stage_shares()[i],
                "distance_from_uniform": distance[i],
                "chance_distance_mean": d_mean[i],
                "chance_distance_sd": d_sd[i],
                "z": (distance[i] - d_mean[i]) / d_sd[i] if d_sd[i] else None,
            }
            for i in range(len(supernet.layers))
        ],
        "blocks": [
            {"block": spec.name, "tv": block_tv[b] if n > 1 else None, "chance_tv": chance_block[b],
             "ratio": block_tv[b] / chance_block[b] if n > 1 and chance_block[b] else None,
             "shares": [shares(c[b]) for c in counts]}
            for b, spec in enumerate(supernet.blocks())
        ],
    }


def format_agreement(report: dict[str, Any]) -> str:
    """The per-stage agreement table printed by ``scalenet allocate``."""
    head = " ".join(f"x{s}".rjust(6) for s in report["scales"])
    lines = [
        f"agreement of {report['runs']} supernet(s) (TV of scale shares; chance: random draws from the "
        "supernet's pool)",
        f"{'stage':>5} | {'TV':>6} {'chance':>6} {'ratio':>6} | mean share {head} | {'from uniform':>12} {'z':>6}",
    ]
    for s in report["stages"]:
        tv_ = f"{s['tv']:6.3f}" if s["tv"] is not None else f"{'-':>6}"
        ratio = f"{s['ratio']:5.2f}x" if s["ratio"] is not None else f"{'-':>6}"
        share = " ".join(f"{100 * v:5.1f}%" for v in s["mean_shares"])
        z = f"{s['z']:6.1f}" if s["z"] is not None else f"{'-':>6}"
        lines.append(f"{s['stage']:>5} | {tv_} {s['chance_tv']:6.3f} {ratio} |            {share} | "
                     f"{s['distance_from_uniform']:12.3f} {z}")
    return "\n".join(lines)
