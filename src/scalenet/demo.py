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
from typing import Any, Sequence

import torch

from .agreement import format_agreement
from .allocation import DEFAULT_REPEATS, allocate, format_stage_summary, seed_structure
from .devices import device_name
from .data import build_data
from .engine import TrainConfig, evaluate, model_from_checkpoint, train
from .fileio import atomic_write_text
from .runs import auto_jobs, in_processes
from .report import plot_curves
from .structure import Structure
from .study import arm_structure
from .timing import interleaved, summarize

__all__ = ["PROFILES", "DemoProfile", "run_demo"]


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
    repeats: int = DEFAULT_REPEATS  # seed networks combined into the allocation
    seed_jobs: int | None = None  # seed networks trained at once (None: one per CPU core, 1 with CUDA)
    jobs: int | None = None  # models trained at once (likewise)


PROFILES = {
    # sized for 15 minutes on a 2-core CPU: short runs on subsets, no augmentation (it slows
    # convergence in runs this short)
    "quick": DemoProfile(
        name="quick", layers=(1, 1, 1), width=12, width_mult=1.0, seed_epochs=1, seed_subset=8000,
        epochs=2, train_subset=50000, batch_size=64, lr=0.1, wd=5e-4, warmup=0.2, augment=False, seeds=1,
        val_subset=2000, jobs=3,
        note="quick profile: 16 seed networks (scalenet allocate's default) on 8,000 training images for one epoch "
             "each, two at a time; each model on 50,000 of the 60,000 training images for 2 epochs without "
             "augmentation (it slows convergence in runs this short), the three at once; one training run per "
             "model; per-epoch validation on 2,000 test images",
    ),
    # meant for a GPU: full data, augmentation, longer schedule, three seeds
    "full": DemoProfile(
        name="full", layers=(2, 2, 2), width=28, width_mult=1.0, seed_epochs=2, seed_subset=None,
        epochs=60, train_subset=None, batch_size=128, lr=0.1, wd=5e-4, warmup=2, augment=True, seeds=3,
        val_subset=None,
        note="full profile: 16 seed networks of 2 epochs on all 60,000 training images; each model on all of them, "
             "crop + flip, 60 epochs, three seeds per model",
    ),
}


def baselines(learned: Structure, num_classes: int, in_chans: int) -> dict[str, Structure]:
    """The uniform-SA and plain-ResNet baselines at the learned structure's MACs (within 1%),
    built as in ``scalenet study``."""
    target = learned.macs(None, num_classes, in_chans)
    pool = seed_structure(learned.layers, scales=learned.scales, stem=learned.stem, width=learned.width,
                          image_size=learned.image_size)
    return {arm: arm_structure(arm, pool, target, num_classes, in_chans) for arm in ("uniform", "resnet")}


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
    seed_jobs = p.seed_jobs if p.seed_jobs is not None else auto_jobs(p.repeats)
    print(f"[1/4] allocating: {p.repeats} seed network(s) on {len(seed_data.train)} images, {p.seed_epochs} epoch(s) "
          f"each, {seed_jobs} at a time", flush=True)
    t = time.perf_counter()
    alloc = allocate(seed_data, layers=p.layers, width=p.width, width_mult=p.width_mult, repeats=p.repeats,
                     jobs=seed_jobs, train_config=replace(base_cfg, epochs=p.seed_epochs, tensorboard=False),
                     name="scalenet")
    learned = alloc.structure
    allocation_seconds = time.perf_counter() - t
    alloc.save(out / "scalenet.json", chart=out / "allocation.png",
               title="Learned allocation on Fashion-MNIST (share of neurons per scale)")
    print(format_stage_summary(learned), flush=True)
    print(format_agreement(alloc.agreement), flush=True)

    # 2-3. the learned network and the baselines, same recipe
    structures = {"scalenet": learned, **baselines(learned, data.num_classes, data.in_chans)}
    for name, s in structures.items():
        if name != "scalenet":
            s.save(out / f"{name}.json")
    jobs = p.jobs if p.jobs is not None else auto_jobs(len(structures) * p.seeds)
    print(f"[2/4] training {', '.join(structures)} at {learned.macs(None, 10, 1):,} MACs, {p.seeds} run(s) each, "
          f"{jobs} at a time", flush=True)
    payloads = [
        dict(name=name, structure=s, data=data, test=test, cfg=replace(base_cfg, seed=seed + r, progress=progress and jobs == 1),
             run_dir=out / "runs" / (name if p.seeds == 1 else f"{name}-seed{seed + r}"))
        for name, s in structures.items() for r in range(p.seeds)
    ]
    trained = in_processes(_train_and_test, payloads, jobs)
    results: dict[str, dict[str, Any]] = {}
    curves: dict[str, list[dict[str, Any]]] = {}
    models: dict[str, torch.nn.Module] = {}
    for name, s in structures.items():
        runs = [(pl, t) for pl, t in zip(payloads, trained) if pl["name"] == name]
        for pl, t in runs:
            curves[name if pl["cfg"].seed == seed else f"{name} (seed {pl['cfg'].seed})"] = t["metrics"]
        models[name] = model_from_checkpoint(runs[0][0]["run_dir"] / "best.pt")[0]
        top1 = [t["top1"] for _, t in runs]
        results[name] = {
            "top1": statistics.mean(top1),
            "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
            "top1_runs": top1,
            "top5": statistics.mean(t["top5"] for _, t in runs),
            "macs": s.macs(None, data.num_classes, data.in_chans),
            "params": s.params(data.num_classes, data.in_chans),
            "train_seconds": sum(t["train_seconds"] for _, t in runs),
            "structure": f"{name}.json",
        }

    # 4. latency, side by side
    print("[3/4] measuring CPU latency", flush=True)
    for name, lat in cpu_latency({k: m.cpu() for k, m in models.items()}, (1, 1, 28, 28)).items():
        results[name]["latency_ms_batch1"] = lat["median_ms"]
    for name, lat in cpu_latency({k: m for k, m in models.items()}, (256, 1, 28, 28), repeats=5).items():
        results[name]["latency_ms_batch256"] = lat["median_ms"]

    print("[4/4] writing the report", flush=True)
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
        "agreement": alloc.agreement["stages"],
        "agreement_runs": alloc.agreement["runs"],
        "study_findings": study_findings(),
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
    lines += ["", *_agreement_lines(report)]
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
        "Is the allocation worth it? " + report["study_findings"],
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


def _train_and_test(p: dict[str, Any]) -> dict[str, Any]:
    """Trains one model (in a worker process when several run at once) and tests its last epoch's
    weights on the whole test split."""
    t = time.perf_counter()
    result = train(p["structure"], p["data"], p["cfg"], p["run_dir"], description=p["name"])
    seconds = time.perf_counter() - t
    final = evaluate(result.model, p["test"].loader("val", 500))
    return {"top1": final["top1"], "top5": final["top5"], "train_seconds": seconds, "metrics": result.metrics}


def _agreement_lines(report: dict[str, Any]) -> list[str]:
    n = report["agreement_runs"]
    lines = [
        f"Reproducibility of the allocation: its {n} seed network(s) against chance (random draws of as many neurons "
        "from the seed's pool), by stage. Ratio: their mean pairwise TV distance over chance's (below 1: they agree "
        "better than chance); z: how far their mean allocation sits from the uniform split, in standard deviations "
        "of chance's.",
        "",
        "| stage | " + " | ".join(str(s["stage"]) for s in report["agreement"]) + " |",
        "|---|" + "---:|" * len(report["agreement"]),
        "| ratio to chance | " + " | ".join("-" if s["ratio"] is None else f"{s['ratio']:.2f}x" for s in report["agreement"]) + " |",
        "| preference z | " + " | ".join("-" if s["z"] is None else f"{s['z']:.1f}" for s in report["agreement"]) + " |",
    ]
    return lines


def study_findings(results: Path | None = None) -> str:
    """One or two sentences on what the committed ``scalenet study`` results found (learned minus
    uniform, paired by seed, with the 95% interval), or where to find out."""
    results = results or Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    found = []
    for path in sorted(results.glob("study-fashion-mnist-*/study.json")):
        r = json.loads(path.read_text())
        c = r["comparisons"].get("learned - uniform")
        if c is None:
            continue
        verdict = ("beats the uniform split" if c["low"] > 0 else "loses to the uniform split" if c["high"] < 0
                   else "is not distinguishable from the uniform split")
        found.append(f"at {r['target_macs'] / 1e6:.2f} M MACs ({path.parent.name}, {r['settings']['seeds']} seeds) the "
                     f"learned allocation {verdict}: {100 * c['mean']:+.2f} points, 95% interval "
                     f"[{100 * c['low']:+.2f}, {100 * c['high']:+.2f}]")
    if not found:
        return "No study results here; run `scalenet study --data fashion-mnist --out runs/study` (see the README)."
    return "The committed studies (`scalenet study`, benchmarks/results/) found: " + "; ".join(found) + "."
