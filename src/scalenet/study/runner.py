"""Running a study: the arms built (matched in MACs or in measured latency), every (arm, seed)
run trained and tested, the report written."""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..allocation import MacsBudget, supernet_structure
from ..data import build_data
from ..fileio import atomic_write_text
from ..report import format_study, plot_study
from ..stats import paired_interval
from ..structure import Structure
from ..training import NoCheckpointLeft, evaluate, in_processes, is_main_process, jobs_for, train
from .arms import ArmContext, build_arm, learned_structure, macs_target, study_layout
from .config import TOLERANCE, StudyConfig, latency_alpha, prepare_directory
from .latency import latency_budget, matched_in_latency

__all__ = ["build_arms", "run_name", "train_run", "run_study", "summarize_study"]


def build_arms(cfg: StudyConfig, out: Path, num_classes: int, in_chans: int, image_size: int) -> dict[str, Any]:
    """Every arm's structure (the random arm: one per training seed), matched in MACs (or in
    measured latency, :func:`matched_in_latency`), cached in ``out/structures``. Raises one
    clear error when an arm cannot match."""
    layout = study_layout(cfg, image_size)
    pool = supernet_structure(layout["layers"], stem=layout["stem"], width=layout["width"], image_size=image_size)
    learned = learned_structure(cfg, out) if "learned" in cfg.arms else None
    macs = macs_target(cfg, pool, learned, num_classes, in_chans)
    by_latency = cfg.latency_model is not None
    budget = latency_budget(cfg, pool, learned, image_size) if by_latency else MacsBudget(macs, TOLERANCE)
    context = ArmContext(cfg, out, pool, budget, learned, num_classes, in_chans)
    if by_latency:
        arms, latency = matched_in_latency(context)
    else:
        arms, latency = {arm: build_arm(context, arm) for arm in cfg.arms}, None
    for arm, s in arms.items():
        for seed, structure in (s.items() if isinstance(s, dict) else [(None, s)]):
            name = arm if seed is None else f"{arm}-seed{seed}"
            if arm != "learned" and is_main_process():
                structure.save(out / "structures" / f"{name}.json")
    target_macs = macs if not by_latency else learned.macs(None, num_classes, in_chans) if learned else None
    return {"target_macs": target_macs, "latency": latency, "arms": arms}


def run_name(arm: str, seed: int) -> str:
    return f"{arm}-seed{seed}"


def train_run(payload: dict[str, Any]) -> dict[str, Any]:
    """Trains and tests one (arm, seed) run; writes ``results/<arm>-seed<k>.json`` (in a worker
    process when the study runs several at once)."""
    cfg = StudyConfig.from_settings(payload["config"])
    out, arm, seed = Path(payload["out"]), payload["arm"], payload["seed"]
    structure = Structure.from_json(payload["structure"], source=f"{arm} structure")
    data = build_data(cfg.data, cfg.image_size, train_subset=cfg.train_subset, val_subset=cfg.val_subset, seed=cfg.seed)
    test = build_data(cfg.data, cfg.image_size, seed=cfg.seed)
    run_dir = out / "runs" / run_name(arm, seed)
    train_cfg = dataclasses.replace(cfg.train, seed=seed, progress=payload.get("bars", False))
    try:
        result = train(structure, data, train_cfg, run_dir, resume=(run_dir / "last.pt").is_file(),
                       description=f"{arm} seed {seed}")
    except NoCheckpointLeft as e:  # one run is lost, not the study: name the directory to delete
        raise NoCheckpointLeft(e.path, e.damaged, f"delete {run_dir} and run the study again (only that run is "
                                                  "trained again)") from None
    final = evaluate(result.model, test.loader("val", 500))
    record = {
        "arm": arm, "seed": seed, "top1": final["top1"], "top5": final["top5"], "test_images": final["images"],
        "macs": structure.macs(None, data.num_classes, data.in_chans),
        "params": structure.params(data.num_classes, data.in_chans),
        "train_seconds": sum(r["train_seconds"] for r in result.metrics),
        "val_top1_by_epoch": [r["val_top1"] for r in result.metrics],
    }
    if is_main_process():
        atomic_write_text(out / "results" / f"{run_name(arm, seed)}.json", json.dumps(record, indent=2) + "\n")
    return record


def run_study(cfg: StudyConfig, out: str | os.PathLike) -> dict[str, Any]:
    """Builds the arms, trains every (arm, seed) run not yet done (``cfg.jobs`` at a time) and
    writes ``study.json``, ``study.md`` and ``study.png`` to ``out``. Returns the report."""
    cfg.check()
    out = Path(out)
    prepare_directory(cfg, out)
    spec = build_data(cfg.data, cfg.image_size, val_subset=1, seed=cfg.seed)  # classes, channels, size
    built = build_arms(cfg, out, spec.num_classes, spec.in_chans, spec.image_size)
    main = is_main_process()  # under torchrun rank 0 writes; every run trains with DDP across the ranks
    if main:
        atomic_write_text(out / "settings.json", json.dumps(cfg.settings(), indent=2) + "\n")
    runs = [(arm, seed) for seed in range(cfg.seed, cfg.seed + cfg.seeds) for arm in cfg.arms]
    done = {r: json.loads((out / "results" / f"{run_name(*r)}.json").read_text())
            for r in runs if (out / "results" / f"{run_name(*r)}.json").is_file()}
    todo = [r for r in runs if r not in done]

    def payload(arm: str, seed: int) -> dict[str, Any]:
        structure = built["arms"][arm][seed] if arm == "random" else built["arms"][arm]
        return {"config": cfg.settings(), "out": str(out), "arm": arm, "seed": seed, "structure": structure.to_json(),
                "bars": cfg.progress and jobs == 1}

    jobs = jobs_for(cfg.jobs, len(todo), "study runs")
    bar = _bar(len(runs), len(done), cfg.progress and main)

    def finished(i: int, record: dict[str, Any]) -> None:
        done[todo[i]] = record
        bar.update(1)

    in_processes(train_run, [payload(*r) for r in todo], jobs, on_result=finished)
    bar.close()
    report = summarize_study(cfg, built["target_macs"], [done[r] for r in runs], built["latency"])
    if main:
        atomic_write_text(out / "study.json", json.dumps(report, indent=2) + "\n")
        atomic_write_text(out / "study.md", format_study(report))
        plot_study(report, out / "study.png")
    return report


def _bar(total: int, initial: int, enabled: bool):
    return tqdm(total=total, initial=initial, desc="study runs", disable=not enabled, dynamic_ncols=True)


def summarize_study(cfg: StudyConfig, target: int, results: list[dict[str, Any]],
                    latency: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per arm mean ± std of test top-1; paired (by seed) differences of the learned arm to each
    other arm (or of the first arm, without a learned one) with 95% t-intervals; with
    ``latency`` (matched in latency), each arm's predicted and measured milliseconds."""
    arms = {}
    for arm in cfg.arms:
        rs = sorted((r for r in results if r["arm"] == arm), key=lambda r: r["seed"])
        top1 = [r["top1"] for r in rs]
        arms[arm] = {"top1": statistics.mean(top1), "top1_std": statistics.stdev(top1), "top1_by_seed": top1,
                     "seeds": [r["seed"] for r in rs], "macs": statistics.mean(r["macs"] for r in rs),
                     "params": statistics.mean(r["params"] for r in rs),
                     "train_seconds": statistics.mean(r["train_seconds"] for r in rs)}
        if latency is not None:
            arms[arm].update(budget=latency["budget"][arm], predicted_ms=latency["predicted_ms"][arm],
                             measured_ms=latency["measured_ms"][arm])
    base = "learned" if "learned" in arms else cfg.arms[0]
    comparisons = {
        f"{base} - {arm}": paired_interval(arms[base]["top1_by_seed"], arms[arm]["top1_by_seed"])
        for arm in cfg.arms if arm != base
    }
    if latency is not None:  # the latency arm's alpha as used, for the report
        latency = {**latency, "alpha": latency_alpha(cfg.latency_alpha)}
    return {"settings": cfg.settings(), "target_macs": target, "latency": latency, "arms": arms, "comparisons": comparisons,
            "test_images": results[0]["test_images"] if results else 0}
