"""The end-to-end main job on Fashion-MNIST: allocate, train, compare, report.

1. Allocate: train a seed network (uniform, abundant neurons per scale), rank neurons by
   their branch BN |gamma| inside each block, keep the top ones (paper Sec. 3.2).
2. Train the learned ScaleNet from scratch.
3. Train two baselines at the same MACs (within 3%): a plain ResNet bottleneck network
   of the same depth and stem (the SA block replaced by one 3x3 conv: a structure with the
   single scale x1), and the SA network with a uniform allocation.
4. Evaluate all three on the test set; measure CPU latency side by side.
5. Write ``report.md`` and ``report.json`` with the allocation chart and training curves.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .allocation import allocate, format_stage_summary
from .bench import device_name
from .data import build_data
from .engine import TrainConfig, evaluate, train
from .fileio import atomic_write_text
from .report import plot_curves
from .structure import Structure
from .timing import interleaved, summarize

__all__ = ["PROFILES", "DemoProfile", "run_demo", "match_macs"]


@dataclass(frozen=True)
class DemoProfile:
    name: str
    layers: tuple[int, ...]
    width: int
    width_mult: float  # neurons kept per block, times the ResNet width
    seed_epochs: int
    seed_subset: int | None
    epochs: int
    train_subset: int | None
    batch_size: int
    lr: float
    wd: float
    warmup: float
    augment: bool
    seeds: int  # training repeats per model (mean and spread)
    val_subset: int | None  # per-epoch validation
    note: str
    test_subset: int | None = None  # the final test; None: all 10,000 images


PROFILES = {
    # sized for 15 minutes on a 2-core CPU: short runs on subsets, no augmentation (it slows
    # convergence in runs this short)
    "quick": DemoProfile(
        name="quick", layers=(1, 1, 1), width=12, width_mult=1.0, seed_epochs=2, seed_subset=8000,
        epochs=2, train_subset=50000, batch_size=64, lr=0.1, wd=5e-4, warmup=0.2, augment=False, seeds=1,
        val_subset=2000,
        note="quick profile: seed network on 8,000 training images for 2 epochs; each model on 50,000 of the "
             "60,000 training images for 2 epochs without augmentation (it slows convergence in runs this short); "
             "one training run per model; per-epoch validation on 2,000 test images",
    ),
    # meant for a GPU: full data, augmentation, longer schedule, three seeds
    "full": DemoProfile(
        name="full", layers=(2, 2, 2), width=28, width_mult=1.0, seed_epochs=15, seed_subset=None,
        epochs=60, train_subset=None, batch_size=128, lr=0.1, wd=5e-4, warmup=2, augment=True, seeds=3,
        val_subset=None,
        note="full profile: all 60,000 training images, crop + flip, 60 epochs, three seeds per model",
    ),
}


def match_macs(build: Callable[[list[int]], Structure], start: Sequence[int], target: int, **count_kw: Any) -> Structure:
    """Per-stage counts whose structure's MACs come closest to ``target`` (local search from ``start``)."""
    counts = [max(1, int(c)) for c in start]

    def gap(c: list[int]) -> int:
        return abs(build(c).macs(**count_kw) - target)

    best = gap(counts)
    while True:
        moves = []
        for i in range(len(counts)):
            for step in (-1, 1):
                c = list(counts)
                c[i] += step
                if c[i] >= 1:
                    moves.append((gap(c), c))
        g, c = min(moves, key=lambda t: t[0])
        if g >= best:
            return build(counts)
        best, counts = g, c


def baselines(learned: Structure, num_classes: int, in_chans: int) -> dict[str, Structure]:
    """The plain-ResNet and uniform-SA baselines at the learned structure's MACs."""
    target = learned.macs(None, num_classes, in_chans)
    kw = dict(num_classes=num_classes, in_chans=in_chans)
    planes = learned.stage_planes()
    common = dict(stem=learned.stem, width=learned.width, image_size=learned.image_size)

    def resnet(c: list[int]) -> Structure:
        return Structure.uniform(learned.layers, c, scales=(1,), name="resnet", **common)

    def uniform(c: list[int]) -> Structure:
        return Structure.uniform(learned.layers, c, scales=learned.scales, name="uniform", **common)

    n = len(learned.scales)
    out = {
        "resnet": match_macs(resnet, planes, target, **kw),
        "uniform": match_macs(uniform, [max(1, p // n) for p in planes], target, **kw),
    }
    for name, s in out.items():
        got = s.macs(None, num_classes, in_chans)
        if abs(got - target) > 0.03 * target:
            raise ValueError(f"could not match the {name} baseline's MACs within 3% ({got:,} vs {target:,})")
    return out


def cpu_latency(models: dict[str, torch.nn.Module], shape: Sequence[int], repeats: int = 15) -> dict[str, dict[str, float]]:
    """Median and min latency in ms per model, interleaved repeats in one process."""
    x = torch.randn(*shape)
    runners = {name: (lambda m=m.eval(): m(x)) for name, m in models.items()}
    with torch.inference_mode():
        return summarize(interleaved(runners, repeats, warmup=3))


def _fresh_directory(out: Path) -> Path:
    """``out``, empty: an earlier run there is moved aside (``<out>.previous-<time>``), not lost."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output directory {out} is a file; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        kept = out.with_name(f"{out.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
        out.rename(kept)
        print(f"note: moved the earlier demo run to {kept}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_demo(out: str | Path, profile: str | DemoProfile = "quick", seed: int = 0, progress: bool = True) -> dict[str, Any]:
    if isinstance(profile, DemoProfile):
        p = profile
    elif profile in PROFILES:
        p = PROFILES[profile]
    else:
        raise ValueError(f"profile {profile!r} is unknown; use one of {', '.join(PROFILES)}")
    out = _fresh_directory(Path(out))
    started = time.perf_counter()

    seed_data = build_data("fashion-mnist", train_subset=p.seed_subset, val_subset=p.val_subset, seed=seed)
    data = build_data("fashion-mnist", train_subset=p.train_subset, val_subset=p.val_subset, seed=seed)
    test = build_data("fashion-mnist", val_subset=p.test_subset, seed=seed)
    base_cfg = TrainConfig(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, wd=p.wd, warmup=p.warmup, augment=p.augment,
                           channels_last=True, seed=seed, progress=progress, tensorboard=True)

    # 1. allocation
    print(f"[1/4] allocating: seed network on {len(seed_data.train)} images, {p.seed_epochs} epochs", flush=True)
    t = time.perf_counter()
    alloc = allocate(seed_data, layers=p.layers, width=p.width, width_mult=p.width_mult,
                     train_config=replace(base_cfg, epochs=p.seed_epochs, tensorboard=False), name="scalenet")
    learned = alloc.structure
    allocation_seconds = time.perf_counter() - t
    alloc.save(out / "scalenet.json", chart=out / "allocation.png",
               title="Learned allocation on Fashion-MNIST (share of neurons per scale)")
    print(format_stage_summary(learned), flush=True)

    # 2-3. the learned network and the baselines, same recipe
    structures = {"scalenet": learned, **baselines(learned, data.num_classes, data.in_chans)}
    for name, s in structures.items():
        if name != "scalenet":
            s.save(out / f"{name}.json")
    results: dict[str, dict[str, Any]] = {}
    curves: dict[str, list[dict[str, Any]]] = {}
    models: dict[str, torch.nn.Module] = {}
    for i, (name, s) in enumerate(structures.items()):
        runs = []
        for r in range(p.seeds):
            print(f"[{2 + (i > 0)}/4] training {name} ({s.macs(None, 10, 1):,} MACs), run {r + 1}/{p.seeds}", flush=True)
            run_dir = out / "runs" / (name if p.seeds == 1 else f"{name}-seed{seed + r}")
            t = time.perf_counter()
            result = train(s, data, replace(base_cfg, seed=seed + r), run_dir, description=name)
            seconds = time.perf_counter() - t
            final = evaluate(result.model, test.loader("val", 500))
            runs.append({"top1": final["top1"], "top5": final["top5"], "train_seconds": seconds, "seed": seed + r})
            curves[name if r == 0 else f"{name} (seed {seed + r})"] = result.metrics
            models.setdefault(name, result.model)
        top1 = [r["top1"] for r in runs]
        results[name] = {
            "top1": statistics.mean(top1),
            "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
            "top1_runs": top1,
            "top5": statistics.mean(r["top5"] for r in runs),
            "macs": s.macs(None, data.num_classes, data.in_chans),
            "params": s.params(data.num_classes, data.in_chans),
            "train_seconds": sum(r["train_seconds"] for r in runs),
            "structure": f"{name}.json",
        }

    # 4. latency, side by side
    print("[4/4] measuring CPU latency and writing the report", flush=True)
    for name, lat in cpu_latency({k: m.cpu() for k, m in models.items()}, (1, 1, 28, 28)).items():
        results[name]["latency_ms_batch1"] = lat["median_ms"]
    for name, lat in cpu_latency({k: m for k, m in models.items()}, (256, 1, 28, 28), repeats=5).items():
        results[name]["latency_ms_batch256"] = lat["median_ms"]

    plot_curves(curves, out / "curves.png", title="Fashion-MNIST: training loss and per-epoch validation accuracy")
    report = {
        "profile": asdict(p),
        "device": f"CPU: {device_name(torch.device('cpu'))}, torch {torch.__version__}",
        "seconds": time.perf_counter() - started,
        "allocation_seconds": allocation_seconds,
        "seed_val_top1": learned.meta.get("seed_val_top1"),
        "test_images": len(test.val),
        "notes": [p.note, *data.notes],
        "models": results,
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "report.md", render_markdown(report, learned))
    print((out / "report.md").read_text(), flush=True)
    return report


def render_markdown(report: dict[str, Any], learned: Structure) -> str:
    m = report["models"]
    descriptions = {
        "scalenet": "learned allocation (this run)",
        "uniform": "SA blocks, equal neurons per scale",
        "resnet": "plain bottleneck, one 3x3 conv",
    }
    spread = report["profile"]["seeds"] > 1
    lines = [
        "# ScaleNet demo on Fashion-MNIST",
        "",
        f"Profile `{report['profile']['name']}`, {report['device']}; whole run {report['seconds'] / 60:.1f} min.",
        "",
        "| model | what | test top-1 | MACs | params | CPU latency, batch 1 | batch 256 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("scalenet", "uniform", "resnet"):
        r = m[name]
        acc = f"{100 * r['top1']:.2f}%" + (f" ± {100 * r['top1_std']:.2f}" if spread else "")
        lines.append(
            f"| {name} | {descriptions[name]} | {acc} | {r['macs'] / 1e6:.2f} M | {r['params'] / 1e3:.1f} K | "
            f"{r['latency_ms_batch1']:.2f} ms | {r['latency_ms_batch256']:.0f} ms |"
        )
    lines += [
        "",
        f"Test top-1 on {report['test_images']:,} Fashion-MNIST test images"
        + (f", mean ± standard deviation over {report['profile']['seeds']} seeds." if spread else ", one run per model:"
           " differences of a few tenths of a percent are within run-to-run noise."),
        "MACs are multiply-adds of convs and the classifier; latency is the median of interleaved repeats in one process.",
        "",
        "![allocation](allocation.png)",
        "",
        "![curves](curves.png)",
        "",
        "Learned allocation, per stage:",
        "",
        "```",
        format_stage_summary(learned),
        "```",
        "",
        "Notes:",
        "",
        *[f"- {n}" for n in report["notes"]],
        f"- seed network validation top-1 before selection: {100 * (report['seed_val_top1'] or 0):.2f}%",
        "",
    ]
    return "\n".join(lines)
