"""How reproducible is the allocation, and what makes it so? Measured on the demo's setting.

Fashion-MNIST, the demo's supernet (layers 1,1,1, width 12, 12/24/48 supernet neurons per
scale), width multiplier 1.0, 8,000 training images. For each recipe, ``--runs`` supernets
(seeds 0..M-1) are trained and every neuron's score (BN |gamma|, normalised per block) is
recorded after each epoch. Then, from those runs alone:

- **ranking stability**: Spearman rank correlation of a block's scores between consecutive
  epochs (mean over blocks and runs);
- **agreement of combined allocations**: many random pairs of *disjoint* groups of N runs;
  each group is combined (``union`` or ``mean``, see scalenet.allocation) and the two results'
  per-stage TV distance is divided by chance's (two random draws of as many neurons from the
  supernet's pool). This is what two ``scalenet allocate --repeats N`` runs with different seeds
  would give. Reported: the mean ratio per stage and the share of pairs at most 0.5x chance;
- **preference**: the z-score of the runs' mean allocation against the uniform split
  (scalenet.agreement).

    python benchmarks/allocation_agreement.py [--runs 16] [--recipes 1ep,2ep,4ep:8,2ep-l1e-3:8] [--jobs 2]

(``RECIPE:M`` trains M runs of that recipe instead of ``--runs``.)

Trained runs are cached in runs/allocation-agreement/ (a killed measurement continues).
Writes benchmarks/results/allocation-agreement-<device>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "runs" / "allocation-agreement"
RECIPES = {
    "1ep": dict(epochs=1, sparsity=0.0),
    "2ep": dict(epochs=2, sparsity=0.0),
    "4ep": dict(epochs=4, sparsity=0.0),
    "2ep-l1e-3": dict(epochs=2, sparsity=1e-3),
    "2ep-l1e-2": dict(epochs=2, sparsity=1e-2),
}
SUBSET, LAYERS, WIDTH, BATCH, LR, WD, WARMUP = 8000, (1, 1, 1), 12, 64, 0.1, 5e-4, 0.2


def train_one(recipe: str, seed: int) -> Path:
    """Trains one supernet and writes its per-epoch scores (a cache file)."""
    from scalenet.allocation import BNScale, BNScaleL1, supernet_structure
    from scalenet.data import build_data
    from scalenet.training import TrainConfig, train
    from scalenet.fileio import atomic_write_text

    out = CACHE / f"{recipe}-seed{seed}.json"
    if out.is_file():
        return out
    r = RECIPES[recipe]
    data = build_data("fashion-mnist", train_subset=SUBSET, val_subset=2000, seed=0)
    structure = supernet_structure(LAYERS, stem="small", width=WIDTH, image_size=28)
    importance = BNScale()
    epochs: list[list[list[list[float]]]] = []
    cfg = TrainConfig(epochs=r["epochs"], batch_size=BATCH, lr=LR, wd=WD, warmup=WARMUP, augment=False,
                      channels_last=True, seed=seed, progress=False, tensorboard=False)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="agreement-") as run_dir:  # the run's checkpoints are not kept
        result = train(structure, data, cfg, run_dir, description=f"{recipe} seed {seed}",
                       regularizer=BNScaleL1(r["sparsity"]) if r["sparsity"] else None,
                       on_epoch=lambda model, record: epochs.append([b.scores for b in importance(model, structure, 28)]))
    atomic_write_text(out, json.dumps({"recipe": recipe, "seed": seed, "seconds": time.perf_counter() - t,
                                       "val_top1": result.final["val_top1"], "epochs": epochs}))
    return out


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = torch.tensor(a).argsort().argsort().double(), torch.tensor(b).argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def analyse(recipe: str, runs: list[dict], pairs: int) -> dict:
    from scalenet.agreement import Chance, agreement_report, block_counts, shares, stage_counts, tv
    from scalenet.allocation import BlockScores, WidthBudget, combine_mean, combine_union, supernet_structure, select

    supernet = supernet_structure(LAYERS, stem="small", width=WIDTH, image_size=28)
    costs = [supernet.neuron_macs(spec) for spec in supernet.blocks()]
    budget = WidthBudget(1.0)
    final = [[BlockScores(spec.name, s, c) for spec, s, c in zip(supernet.blocks(), r["epochs"][-1], costs)]
             for r in runs]
    single = [select(f, budget.bind(supernet, 10, 1))[0] for f in final]
    kept = [sum(row[:-1]) for row in single[0].rows]
    chance = Chance(supernet, kept, draws=4000).stage_tv()
    stability = []
    for e in range(1, len(runs[0]["epochs"])):
        rho = [_spearman(sum(r["epochs"][e - 1][b], []), sum(r["epochs"][e][b], [])) for r in runs for b in range(len(kept))]
        stability.append({"epochs": f"{e}->{e + 1}", "spearman": statistics.mean(rho)})

    def combined(group: list[int], how: str):
        if how == "union":
            return select(combine_union([final[i] for i in group]), budget.bind(supernet, 10, 1))[0]
        return combine_mean([single[i] for i in group], supernet)

    rng = random.Random(0)
    agreement = {}
    for n in (1, 2, 4, 8, 12, 16):
        if 2 * n > len(runs):
            continue
        for how in ("union", "mean") if n > 1 else ("union",):
            ratios = []
            for _ in range(pairs if n > 1 else len(runs) * (len(runs) - 1) // 2):
                idx = rng.sample(range(len(runs)), 2 * n)
                a, b = (stage_counts(block_counts(combined(g, how)), LAYERS) for g in (idx[:n], idx[n:]))
                ratios.append([tv(shares(x), shares(y)) / c for x, y, c in zip(a, b, chance)])
            per_stage = [statistics.mean(r[i] for r in ratios) for i in range(len(LAYERS))]
            within = sum(all(v <= 0.5 for v in r) for r in ratios) / len(ratios)
            agreement[f"N={n} {how}"] = {"ratio_by_stage": per_stage, "pairs": len(ratios),
                                         "share_of_pairs_within_0.5x_in_every_stage": within}
    report = agreement_report(single, supernet, draws=4000)
    return {
        "recipe": recipe, **RECIPES[recipe], "runs": len(runs),
        "seconds_per_run": statistics.mean(r["seconds"] for r in runs),
        "supernet_val_top1": statistics.mean(r["val_top1"] for r in runs),
        "chance_tv_by_stage": chance,
        "ranking_stability": stability,
        "agreement_of_combined": agreement,
        "preference_z_by_stage": [s["z"] for s in report["stages"]],
        "mean_shares_by_stage": [s["mean_shares"] for s in report["stages"]],
    }


def _markdown(result: dict) -> str:
    lines = [
        f"Allocation agreement on Fashion-MNIST (demo setting: layers 1,1,1, width 12, {SUBSET:,} images, width "
        f"multiplier 1.0), {result['device']}, torch {result['torch']}. `python benchmarks/allocation_agreement.py`",
        "",
        "Ratio = TV distance between two allocations, each combined from N supernets (disjoint seeds), divided by "
        "the TV between two random draws from the supernet's pool (chance), by stage. Below 1: better than chance; the "
        "goal is at most 0.5 in every stage.",
        "",
        "| recipe | s/run | seed top-1 | N | combine | ratio stage 1 | stage 2 | stage 3 | pairs <= 0.5x everywhere |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in result["recipes"]:
        for key, a in r["agreement_of_combined"].items():
            n, how = key.split(" ")
            cells = " | ".join(f"{v:.2f}" for v in a["ratio_by_stage"])
            lines.append(f"| {r['recipe']} | {r['seconds_per_run']:.0f} | {100 * r['supernet_val_top1']:.1f}% | {n[2:]} | "
                         f"{how} | {cells} | {100 * a['share_of_pairs_within_0.5x_in_every_stage']:.0f}% |")
    lines += ["", "Ranking stability (Spearman of a block's scores between consecutive epochs) and the single runs' "
              "shared preference (z of the mean allocation against the uniform split, by stage):", ""]
    for r in result["recipes"]:
        stab = ", ".join(f"{s['epochs']}: {s['spearman']:.3f}" for s in r["ranking_stability"]) or "-"
        z = " / ".join(f"{v:.1f}" for v in r["preference_z_by_stage"])
        lines.append(f"- {r['recipe']}: stability {stab}; preference z {z}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=16)
    ap.add_argument("--recipes", default="1ep,2ep,4ep:8,2ep-l1e-3:8")
    ap.add_argument("--jobs", type=int, default=1, help="concurrent training processes (one thread each when > 1)")
    ap.add_argument("--pairs", type=int, default=300, help="random pairs of disjoint groups per N")
    ap.add_argument("--train-one", nargs=2, metavar=("RECIPE", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    if args.train_one:
        torch.set_num_threads(1)
        train_one(args.train_one[0], int(args.train_one[1]))
        return
    counts = {r.split(":")[0]: int(r.split(":")[1]) if ":" in r else args.runs for r in args.recipes.split(",") if r}
    recipes = list(counts)
    todo = [(r, s) for r in recipes for s in range(counts[r]) if not (CACHE / f"{r}-seed{s}.json").is_file()]
    if args.jobs > 1:
        running: list[subprocess.Popen] = []
        for r, s in todo:
            while len(running) >= args.jobs:
                running = [p for p in running if p.poll() is None]
                time.sleep(0.5)
            running.append(subprocess.Popen([sys.executable, __file__, "--train-one", r, str(s)]))
            print(f"started {r} seed {s}", flush=True)
        for p in running:
            p.wait()
    else:
        for r, s in todo:
            train_one(r, s)
            print(f"trained {r} seed {s}", flush=True)
    from scalenet.devices import device_name, device_slug
    from scalenet.fileio import atomic_write_text

    result = {"device": device_name(torch.device("cpu")), "torch": torch.__version__, "jobs": args.jobs,
              "recipes": [analyse(r, [json.loads((CACHE / f"{r}-seed{s}.json").read_text()) for s in range(counts[r])],
                                  args.pairs) for r in recipes]}
    out = ROOT / "benchmarks" / "results"
    slug = device_slug(result["device"])
    atomic_write_text(out / f"allocation-agreement-{slug}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / f"allocation-agreement-{slug}.md", _markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
