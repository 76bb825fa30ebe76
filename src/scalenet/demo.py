"""The end-to-end main job on Fashion-MNIST: allocate, train, compare, report.

1. Allocate: train a supernet (uniform, abundant neurons per scale), rank neurons by
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
from .allocation import DEFAULT_REPEATS, WidthBudget, allocate, supernet_structure
from .data import build_data
from .devices import device_name
from .errors import SettingError
from .fileio import atomic_write_text
from .report import format_stage_summary, plot_curves, render_demo
from .structure import Structure
from .study import StudyConfig, arm_structure
from .training import TrainConfig, auto_jobs, evaluate, gpu_slots, in_processes, model_from_checkpoint, train
from .timing import interleaved, summarize

__all__ = ["PROFILES", "DemoProfile", "run_demo"]


@dataclass(frozen=True)
class DemoProfile:
    """A demo's size: ``study`` holds the layout, the budget (``width_mult``), every model's
    training recipe (``study.train``), the seeds per model, the subsets and the allocation's
    supernets, as ``scalenet study`` takes them."""

    name: str
    study: StudyConfig
    note: str
    test_subset: int | None = None  # the final test; None: all 10,000 images
    supernet_jobs: int | None = None  # supernets trained at once (None: one per CPU core, or one per GPU)

    @property
    def repeats(self) -> int:
        return DEFAULT_REPEATS if self.study.repeats is None else self.study.repeats


def _recipe(**changes: Any) -> TrainConfig:
    return TrainConfig(channels_last=True, **changes)


PROFILES = {
    # sized for 15 minutes on a 2-core CPU: short runs on subsets, no augmentation (it slows
    # convergence in runs this short)
    "quick": DemoProfile(
        name="quick",
        study=StudyConfig(layers=(1, 1, 1), width=12, width_mult=1.0, supernet_epochs=1, supernet_subset=8000, seeds=1,
                          train=_recipe(epochs=2, batch_size=64, lr=0.1, wd=5e-4, warmup=0.2, augment=False),
                          train_subset=50000, val_subset=2000, jobs=3),
        note="quick profile: 16 supernets (scalenet allocate's default) on 8,000 training images for one epoch "
             "each, two at a time; each model on 50,000 of the 60,000 training images for 2 epochs without "
             "augmentation (it slows convergence in runs this short), the three at once; one training run per "
             "model; per-epoch validation on 2,000 test images",
    ),
    # meant for a GPU: full data, augmentation, longer schedule, three seeds
    "full": DemoProfile(
        name="full",
        study=StudyConfig(layers=(2, 2, 2), width=28, width_mult=1.0, supernet_epochs=2, supernet_subset=None, seeds=3,
                          train=_recipe(epochs=60, batch_size=128, lr=0.1, wd=5e-4, warmup=2, augment=True),
                          train_subset=None, val_subset=None),
        note="full profile: 16 supernets of 2 epochs on all 60,000 training images; each model on all of them, "
             "crop + flip, 60 epochs, three seeds per model",
    ),
}


def baselines(learned: Structure, num_classes: int, in_chans: int) -> dict[str, Structure]:
    """The uniform-SA and plain-ResNet baselines at the learned structure's MACs (within 1%),
    built as in ``scalenet study``."""
    target = learned.macs(None, num_classes, in_chans)
    pool = supernet_structure(learned.layers, scales=learned.scales, stem=learned.stem, width=learned.width,
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
        raise SettingError(f"output directory {out} is a file; choose another {{out}}", "out")
    if out.is_dir() and any(out.iterdir()):
        kept = out.with_name(f"{out.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
        out.rename(kept)
        print(f"note: moved the earlier demo run to {kept}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_demo(out: str | Path, profile: str | DemoProfile = "quick", seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """The whole pipeline (allocate, train, compare, report) into ``out``; returns the report."""
    if isinstance(profile, DemoProfile):
        p = profile
    elif profile in PROFILES:
        p = PROFILES[profile]
    else:
        raise ValueError(f"profile {profile!r} is unknown; use one of {', '.join(PROFILES)}")
    out = _fresh_directory(Path(out))
    started = time.perf_counter()
    st = p.study
    data = build_data("fashion-mnist", train_subset=st.train_subset, val_subset=st.val_subset, seed=seed)
    test = build_data("fashion-mnist", val_subset=p.test_subset, seed=seed)
    base_cfg = replace(st.train, seed=seed, progress=progress, tensorboard=True)

    alloc, allocation_seconds = _allocate(p, base_cfg, out, seed)  # 1
    learned = alloc.structure
    structures = {"scalenet": learned, **baselines(learned, data.num_classes, data.in_chans)}  # 2-3
    results, curves, models = _train_all(p, structures, data, test, base_cfg, out, seed)
    print("[3/4] measuring CPU latency", flush=True)  # 4. latency, side by side
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
        "supernet_val_top1": learned.meta.get("supernet_val_top1"),
        "test_images": len(test.val),
        "notes": [p.note, *data.notes],
        "models": results,
        "agreement": alloc.agreement["stages"],
        "agreement_runs": alloc.agreement["runs"],
        "study_findings": study_findings(),
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "report.md", render_demo(report, learned))
    print((out / "report.md").read_text(), flush=True)
    return report


def _jobs(profile_jobs: int | None, tasks: int) -> int:
    """A profile's trainings at once (chosen for CPU cores), at most one per GPU with CUDA."""
    if profile_jobs is None:
        return auto_jobs(tasks)
    return min(profile_jobs, auto_jobs(tasks)) if gpu_slots() else profile_jobs


def _allocate(p: DemoProfile, base_cfg: TrainConfig, out: Path, seed: int):
    """Step 1: the learned allocation (saved as ``scalenet.json`` with its chart); returns it and its seconds."""
    st = p.study
    supernet_data = build_data("fashion-mnist", train_subset=st.supernet_subset, val_subset=st.val_subset, seed=seed)
    supernet_jobs = _jobs(p.supernet_jobs, p.repeats)
    print(f"[1/4] allocating: {p.repeats} supernet(s) on {len(supernet_data.train)} images, "
          f"{st.supernet_epochs} epoch(s) "
          f"each, {supernet_jobs} at a time", flush=True)
    t = time.perf_counter()
    alloc = allocate(supernet_data, WidthBudget(st.width_mult), layers=st.layers, width=st.width, repeats=p.repeats,
                     jobs=supernet_jobs, train_config=replace(base_cfg, epochs=st.supernet_epochs, tensorboard=False),
                     runs=out / "scalenet.runs", name="scalenet")
    seconds = time.perf_counter() - t
    alloc.save(out / "scalenet.json", chart=out / "allocation.png",
               title="Learned allocation on Fashion-MNIST (share of neurons per scale)")
    print(format_stage_summary(alloc.structure), flush=True)
    print(format_agreement(alloc.agreement), flush=True)
    return alloc, seconds


def _train_all(p: DemoProfile, structures: dict[str, Structure], data, test, base_cfg: TrainConfig, out: Path,
               seed: int) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]], dict[str, torch.nn.Module]]:
    """Steps 2-3: every model trained ``seeds`` times with the same recipe and tested; returns the
    results per model, the training curves and each model's first run's best weights."""
    for name, s in structures.items():
        if name != "scalenet":
            s.save(out / f"{name}.json")
    seeds = p.study.seeds
    jobs = _jobs(p.study.jobs, len(structures) * seeds)
    learned = structures["scalenet"]
    print(f"[2/4] training {', '.join(structures)} at {learned.macs(None, 10, 1):,} MACs, {seeds} run(s) each, "
          f"{jobs} at a time", flush=True)
    payloads = [
        dict(name=name, structure=s, data=data, test=test, cfg=replace(base_cfg, seed=seed + r, progress=base_cfg.progress and jobs == 1),
             run_dir=out / "runs" / (name if seeds == 1 else f"{name}-seed{seed + r}"))
        for name, s in structures.items() for r in range(seeds)
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
    return results, curves, models


def _train_and_test(p: dict[str, Any]) -> dict[str, Any]:
    """Trains one model (in a worker process when several run at once) and tests its last epoch's
    weights on the whole test split."""
    t = time.perf_counter()
    result = train(p["structure"], p["data"], p["cfg"], p["run_dir"], description=p["name"])
    seconds = time.perf_counter() - t
    final = evaluate(result.model, p["test"].loader("val", 500))
    return {"top1": final["top1"], "top5": final["top5"], "train_seconds": seconds, "metrics": result.metrics}


def study_findings(results: Path | None = None) -> str:
    """One or two sentences on what the committed ``scalenet study`` results found (learned minus
    uniform, and minus the plain ResNet where a study has it, paired by seed, with the 95%
    interval; at the MACs or the latency the study matched), or where to find out."""
    results = results or Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    found = []
    for path in sorted(results.glob("study-fashion-mnist-*/study.json")):
        r = json.loads(path.read_text())
        parts = []
        for arm, name in (("uniform", "the uniform split"), ("resnet", "the plain ResNet")):
            c = r["comparisons"].get(f"learned - {arm}")
            if c is None:
                continue
            verdict = (f"beats {name}" if c["low"] > 0 else f"loses to {name}" if c["high"] < 0
                       else f"is not distinguishable from {name}")
            parts.append(f"{verdict}: {100 * c['mean']:+.2f} points, 95% interval "
                         f"[{100 * c['low']:+.2f}, {100 * c['high']:+.2f}]")
        if not parts:
            continue
        lat = r.get("latency")
        matched = (f"at equal {'measured' if 'rounds' in lat else 'predicted'} latency ({lat['target_ms']:.1f} ms)"
                   if lat else f"at {r['target_macs'] / 1e6:.2f} M MACs")
        found.append(f"{matched} ({path.parent.name}, {r['settings']['seeds']} seeds) the learned allocation "
                     + " and ".join(parts))
    if not found:
        return "No study results here; run `scalenet study --data fashion-mnist --out runs/study` (see the README)."
    return "The committed studies (`scalenet study`, benchmarks/results/) found: " + "; ".join(found) + "."
