"""Is the allocation worth it? A controlled comparison at matched MACs, over several seeds.

Arms (each a structure of the same layout, MACs within 1% of the learned allocation's, or of
``macs`` when given):

- ``learned``: the data-driven allocation (:func:`scalenet.allocation.allocate`);
- ``uniform``: the same neurons per block split as evenly as integers allow over the scales;
- ``random``: neurons ranked by random scores and kept per block under the same MACs budget
  (a fresh draw for every training seed);
- ``resnet``: the plain bottleneck (one 3x3 conv, the single scale x1);
- ``heuristic``: "fine early, coarse late": each stage's scale shares interpolated, by depth,
  from the published ScaleNet-50's stage shares;
- ``latency`` (only with a latency model, not in the default set): the learned arm's seed
  networks, selected again under a latency budget with scores per millisecond
  (``latency_alpha``, see :func:`scalenet.allocation.weigh_by_cost`).

With ``latency_model`` (a :class:`scalenet.latency.LatencyModel` file) the arms are matched in
predicted latency instead of MACs: the learned (MACs-aware) arm's predicted latency, or
``latency_ms``, is every other arm's budget, and every arm's latency is also measured (fused,
eval, the model's settings) before training, so that "equal latency" is checked, not assumed.

Every arm is trained from scratch with the same recipe and ``seeds`` training seeds, and
tested on the whole evaluation split. The report gives mean ± std per arm and, paired by
seed, the difference of the learned arm to each other arm with a 95% t-interval. One
allocation serves all seeds of the learned arm: the interval covers training noise, not the
allocation's own run-to-run spread (which ``scalenet allocate`` reports against chance).

A study directory resumes: finished runs are read back, not retrained; a run killed mid-way
continues from its ``last.pt``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .allocation import (
    BlockScores, LatencyBudget, MacsBudget, WidthBudget, allocate, default_layout, load_runs, seed_epochs, seed_structure,
    select, select_runs, stage_summary,
)
from .fileio import atomic_write_text
from .runs import auto_jobs, in_processes
from .structure import Structure

__all__ = ["ARMS", "StudyConfig", "run_study", "paired_interval", "t_quantile", "arm_structure", "format_study"]

ARMS = ("learned", "uniform", "random", "resnet", "heuristic")
#: Arms that need a latency model (``--latency-model``); not in the default set.
LATENCY_ARMS = ("latency",)
TOLERANCE = 0.01
#: The latency arm's default alpha: scores per millisecond.
LATENCY_ALPHA = 1.0


def _latency_alpha(alpha: float | None) -> float:
    return LATENCY_ALPHA if alpha is None else alpha


@dataclass
class StudyConfig:
    data: str = "fashion-mnist"
    arms: tuple[str, ...] = ARMS
    seeds: int = 5
    seed: int = 0  # the first training seed; the allocation's seed networks start here too
    width_mult: float | None = None  # the learned arm's budget (default 1.0), or:
    macs: int | None = None
    layers: tuple[int, ...] | None = None
    width: int | None = None
    image_size: int | None = None
    # training recipe of every arm
    epochs: int = 2
    batch_size: int = 64
    lr: float = 0.1
    wd: float = 5e-4
    warmup: float = 0.2
    augment: bool = False
    train_subset: int | None = None
    val_subset: int | None = 2000  # per-epoch validation; the final test uses the whole split
    # the learned arm's allocation
    repeats: int | None = None  # None: the library's default
    seed_epochs: int | None = None  # None: the library's default (one epoch per 8,000 images)
    seed_subset: int | None = 8000
    # matching in latency instead of MACs
    latency_model: str | None = None  # a cost model file (scalenet latency-model)
    latency_ms: float | None = None  # every arm's latency budget (default: the learned arm's prediction)
    latency_alpha: float | None = None  # the latency arm's scores per ms**alpha (None: LATENCY_ALPHA)
    jobs: int | None = None  # concurrent trainings (each with cores / jobs threads); None: one per CPU core
    progress: bool = True

    def check(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS + LATENCY_ARMS]
        if unknown:
            raise ValueError(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS + LATENCY_ARMS)}")
        if self.latency_model is None and (self.latency_ms is not None or any(a in LATENCY_ARMS for a in self.arms)):
            raise ValueError("the latency arm and --latency-ms need --latency-model (a cost model from scalenet "
                             "latency-model)")
        if self.latency_ms is None and self.latency_model is not None and "learned" not in self.arms:
            raise ValueError("matching in latency needs the learned arm or --latency-ms")
        if "latency" in self.arms and "learned" not in self.arms:
            raise ValueError("the latency arm selects from the learned arm's seed networks; add the learned arm")
        if not self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"--arms must name each arm once, got {','.join(self.arms) or 'none'}")
        if self.seeds < 2:
            raise ValueError(f"--seeds must be at least 2 for an interval (mean ± std and a paired t-interval), got {self.seeds}")
        if self.width_mult is not None and self.macs is not None:
            raise ValueError("give --width-mult or --macs, not both")
        if self.jobs is not None and self.jobs < 1:
            raise ValueError(f"--jobs must be 1 or more, got {self.jobs}")


# ---------------------------------------------------------------------------- statistics
def _t_cdf(t: float, df: int) -> float:
    """Student's t CDF by Simpson integration of the density (accurate to ~1e-10 here)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    n = 2000
    h = abs(t) / n
    f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
    area = h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))
    return 0.5 + math.copysign(area, t)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on the CDF)."""
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def paired_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean of ``a - b`` (paired) with its two-sided t-interval."""
    d = [x - y for x, y in zip(a, b)]
    if len(d) < 2:
        raise ValueError("a paired interval needs at least 2 pairs")
    mean, sd = statistics.mean(d), statistics.stdev(d)
    half = t_quantile(0.5 + level / 2, len(d) - 1) * sd / math.sqrt(len(d))
    return {"mean": mean, "low": mean - half, "high": mean + half, "sd": sd, "n": len(d), "level": level}


# ---------------------------------------------------------------------------- the arms' structures
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


def arm_structure(arm: str, pool: Structure, target: "int | LatencyBudget", num_classes: int, in_chans: int,
                  random_seed: int = 0) -> Structure:
    """A non-learned arm in ``pool``'s layout (a seed structure: abundant, uniform neurons per
    scale) with MACs within 1% of ``target`` (or under a :class:`LatencyBudget`): its neurons
    ranked by the arm's rule and kept per block under that budget, as the learned arm's are
    ranked by |gamma|."""
    stages = len(pool.layers)
    if arm == "uniform":
        scores = _apportioned(pool, [[1.0] * len(pool.scales)] * stages)
    elif arm == "heuristic":
        scores = _apportioned(pool, _published_stage_shares(pool.scales, stages))
    elif arm == "resnet":  # one 3x3 conv: a pool of the single scale x1
        pool = Structure.uniform(pool.layers, [4 * p for p in pool.stage_planes()], scales=(1,), stem=pool.stem,
                                 width=pool.width, image_size=pool.image_size)
        scores = _apportioned(pool, [[1.0]] * stages)
    elif arm == "random":
        g = torch.Generator().manual_seed(random_seed)
        scores = [BlockScores(spec.name, [torch.rand(c, generator=g).tolist() for c in spec.channels],
                              pool.neuron_macs(spec)) for spec in pool.blocks()]
    else:
        raise ValueError(f"arm {arm!r} has no fixed structure")
    budget = target if isinstance(target, LatencyBudget) else MacsBudget(target, TOLERANCE)
    what = f"{target.ms:.2f} ms" if isinstance(target, LatencyBudget) else f"{target:,} MACs"
    try:
        structure = select(scores, pool, budget, num_classes=num_classes, in_chans=in_chans)[0]
    except ValueError as e:
        raise ValueError(f"the {arm} arm cannot match {what} within 1% ({e}); choose a larger budget or "
                         "--width") from None
    return dataclasses.replace(structure, name=arm if arm != "random" else f"random-{random_seed}")


# ---------------------------------------------------------------------------- running a study
def _settings(cfg: StudyConfig) -> dict[str, Any]:
    """What decides the results (not how many processes run them)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items() if k not in ("jobs", "progress")}


#: What a study directory holds (structures/ may be filled by hand beforehand, as the README shows).
STUDY_FILES = frozenset({"settings.json", "structures", "results", "runs", "study.json", "study.md", "study.png",
                         "latency.json"})


def _prepare(cfg: StudyConfig, out: Path) -> None:
    from .fileio import check_writable_dir

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; choose a directory")
    check_writable_dir(out.parent if not out.exists() else out)
    foreign = sorted(p.name for p in out.iterdir() if p.name not in STUDY_FILES and not p.name.startswith(".")) if out.is_dir() else []
    if foreign:
        raise ValueError(f"--out {out} holds files that are not a study's ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty directory")
    saved = out / "settings.json"
    if saved.is_file():
        old = json.loads(saved.read_text())
        differ = sorted(k for k in set(old) | set(_settings(cfg)) if old.get(k) != _settings(cfg).get(k))
        if differ:
            raise ValueError(f"{out} holds a study with other settings ({', '.join(differ)}); resume it with the same "
                             "settings or choose another --out")
    (out / "structures").mkdir(parents=True, exist_ok=True)
    (out / "results").mkdir(exist_ok=True)


def _layout(cfg: StudyConfig, image_size: int) -> dict[str, Any]:
    layout = default_layout(image_size)
    return dict(layers=tuple(cfg.layers or layout["layers"]), width=cfg.width or layout["width"], stem=layout["stem"])


def _learned(cfg: StudyConfig, out: Path) -> Structure:
    from .data import build_data
    from .engine import TrainConfig

    path = out / "structures" / "learned.json"
    if path.is_file():
        return Structure.load(path)
    data = build_data(cfg.data, cfg.image_size, train_subset=cfg.seed_subset, val_subset=cfg.val_subset, seed=cfg.seed)
    layout = _layout(cfg, data.image_size)
    kwargs = {"jobs": cfg.jobs, **({} if cfg.repeats is None else {"repeats": cfg.repeats})}
    result = allocate(
        data, layers=layout["layers"], width=layout["width"], width_mult=cfg.width_mult, macs=cfg.macs,
        train_config=TrainConfig(epochs=cfg.seed_epochs or seed_epochs(len(data.train)), batch_size=cfg.batch_size, lr=cfg.lr, wd=cfg.wd,
                                 warmup=cfg.warmup, augment=cfg.augment, channels_last=True, seed=cfg.seed,
                                 progress=cfg.progress, tensorboard=False),
        name="learned", **kwargs,
    )
    result.save(path, title=f"learned allocation for the study ({data.name})")
    return result.structure


def build_arms(cfg: StudyConfig, out: Path, num_classes: int, in_chans: int, image_size: int) -> dict[str, Any]:
    """Every arm's structure (the random arm: one per training seed), matched in MACs, cached in
    ``out/structures``. Raises one clear error when an arm cannot match the budget."""
    layout = _layout(cfg, image_size)
    seed_pool = seed_structure(layout["layers"], stem=layout["stem"], width=layout["width"], image_size=image_size)
    learned = _learned(cfg, out) if "learned" in cfg.arms else None
    if cfg.macs is not None:
        target = cfg.macs
    elif learned is not None:
        target = learned.macs(None, num_classes, in_chans)
    else:  # no learned arm: the uniform split at the width multiplier sets the budget
        k = [WidthBudget(cfg.width_mult or 1.0).neurons(p, 10**9) for p in seed_pool.stage_planes()]
        target = Structure.uniform(layout["layers"], [max(1, round(c / len(seed_pool.scales))) for c in k],
                                   stem=layout["stem"], width=layout["width"], image_size=image_size).macs(None, num_classes, in_chans)
    latency = None
    if cfg.latency_model is not None:
        from .latency import LatencyModel, current_settings

        model = LatencyModel.load(cfg.latency_model)
        st = model.settings  # this machine, at the study's image size, as the model was measured
        model.check(current_settings(st.device, st.threads, st.batch_size, image_size, st.compile), "--latency-model")
        model.check_structure(seed_pool)
        target = LatencyBudget(cfg.latency_ms or model.predict(learned), model, TOLERANCE)
        latency = {"model": model, "target_ms": target.ms}
    arms: dict[str, Any] = {}
    for arm in cfg.arms:
        if arm == "learned":
            arms[arm] = learned
        elif arm == "latency":
            runs, seed, settings = load_runs(out / "structures" / "learned.scores.json")
            arms[arm] = select_runs(runs, seed, target, settings, alpha=_latency_alpha(cfg.latency_alpha),
                                    name="latency").structure
        elif arm == "random":
            arms[arm] = {s: arm_structure(arm, seed_pool, target, num_classes, in_chans, s)
                         for s in range(cfg.seed, cfg.seed + cfg.seeds)}
        else:
            arms[arm] = arm_structure(arm, seed_pool, target, num_classes, in_chans)
    for arm, s in arms.items():
        for seed, structure in (s.items() if isinstance(s, dict) else [(None, s)]):
            name = arm if seed is None else f"{arm}-seed{seed}"
            if arm != "learned":
                structure.save(out / "structures" / f"{name}.json")
    if latency is not None:
        latency = _arm_latency(latency["model"], latency["target_ms"], arms, out, cfg.progress)
    target_macs = target if isinstance(target, int) else learned.macs(None, num_classes, in_chans) if learned else None
    return {"target_macs": target_macs, "latency": latency, "arms": arms}


def _arm_latency(model, target_ms: float, arms: dict[str, Any], out: Path, progress: bool) -> dict[str, Any]:
    """Each arm's predicted and measured latency (the random arm: its first seed's structure),
    measured once and kept in ``out/latency.json``."""
    from .latency import time_networks

    path = out / "latency.json"
    if path.is_file():
        return json.loads(path.read_text())
    st = model.settings
    structures = {arm: next(iter(s.values())) if isinstance(s, dict) else s for arm, s in arms.items()}
    measured = time_networks(structures, st, repeats=7, progress=progress)
    record = {"target_ms": target_ms, "settings": dataclasses.asdict(st),
              "predicted_ms": {arm: model.predict(s) for arm, s in structures.items()}, "measured_ms": measured}
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return record


def _run_name(arm: str, seed: int) -> str:
    return f"{arm}-seed{seed}"


def train_run(payload: dict[str, Any]) -> dict[str, Any]:
    """Trains and tests one (arm, seed) run; writes ``results/<arm>-seed<k>.json`` (in a worker
    process when the study runs several at once)."""
    from .data import build_data
    from .engine import TrainConfig, evaluate, train
    from .runs import NoCheckpointLeft

    cfg = StudyConfig(**{**payload["config"], "arms": tuple(payload["config"]["arms"])})
    out, arm, seed = Path(payload["out"]), payload["arm"], payload["seed"]
    structure = Structure.from_json(payload["structure"], source=f"{arm} structure")
    data = build_data(cfg.data, cfg.image_size, train_subset=cfg.train_subset, val_subset=cfg.val_subset, seed=cfg.seed)
    test = build_data(cfg.data, cfg.image_size, seed=cfg.seed)
    run_dir = out / "runs" / _run_name(arm, seed)
    train_cfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, wd=cfg.wd, warmup=cfg.warmup,
                            augment=cfg.augment, channels_last=True, seed=seed, tensorboard=False,
                            progress=payload.get("bars", False))
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
    atomic_write_text(out / "results" / f"{_run_name(arm, seed)}.json", json.dumps(record, indent=2) + "\n")
    return record


def run_study(cfg: StudyConfig, out: str | os.PathLike) -> dict[str, Any]:
    """Builds the arms, trains every (arm, seed) run not yet done (``cfg.jobs`` at a time) and
    writes ``study.json``, ``study.md`` and ``study.png`` to ``out``. Returns the report."""
    from .data import build_data

    cfg.check()
    out = Path(out)
    _prepare(cfg, out)
    spec = build_data(cfg.data, cfg.image_size, val_subset=1, seed=cfg.seed)  # classes, channels, size
    built = build_arms(cfg, out, spec.num_classes, spec.in_chans, spec.image_size)
    atomic_write_text(out / "settings.json", json.dumps(_settings(cfg), indent=2) + "\n")
    runs = [(arm, seed) for seed in range(cfg.seed, cfg.seed + cfg.seeds) for arm in cfg.arms]
    done = {r: json.loads((out / "results" / f"{_run_name(*r)}.json").read_text())
            for r in runs if (out / "results" / f"{_run_name(*r)}.json").is_file()}
    todo = [r for r in runs if r not in done]

    def payload(arm: str, seed: int) -> dict[str, Any]:
        structure = built["arms"][arm][seed] if arm == "random" else built["arms"][arm]
        return {"config": _settings(cfg), "out": str(out), "arm": arm, "seed": seed, "structure": structure.to_json(),
                "bars": cfg.progress and jobs == 1}

    jobs = auto_jobs(len(todo)) if cfg.jobs is None else cfg.jobs
    bar = _bar(len(runs), len(done), cfg.progress)

    def finished(i: int, record: dict[str, Any]) -> None:
        done[todo[i]] = record
        bar.update(1)

    in_processes(train_run, [payload(*r) for r in todo], jobs, on_result=finished)
    bar.close()
    report = summarize_study(cfg, built["target_macs"], [done[r] for r in runs], built["latency"])
    atomic_write_text(out / "study.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "study.md", format_study(report))
    plot_study(report, out / "study.png")
    return report


def _bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

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
            arms[arm].update(predicted_ms=latency["predicted_ms"][arm], measured_ms=latency["measured_ms"][arm])
    base = "learned" if "learned" in arms else cfg.arms[0]
    comparisons = {
        f"{base} - {arm}": paired_interval(arms[base]["top1_by_seed"], arms[arm]["top1_by_seed"])
        for arm in cfg.arms if arm != base
    }
    return {"settings": _settings(cfg), "target_macs": target, "latency": latency, "arms": arms, "comparisons": comparisons,
            "test_images": results[0]["test_images"] if results else 0}


def format_study(report: dict[str, Any]) -> str:
    """The study's markdown table."""
    s = report["settings"]
    lat = report.get("latency")
    matched = (f"{lat['target_ms']:.2f} ms predicted latency (within 1% below)" if lat else
               f"{report['target_macs']:,} MACs (within 1%)")
    lines = [f"# Study on {s['data']}: {len(report['arms'])} arms at {matched}, {s['seeds']} seeds each", ""]
    if lat:
        st = lat["settings"]
        threads = f" ({st['threads']} threads)" if st["threads"] else ""
        alpha = _latency_alpha(s.get("latency_alpha"))
        lines += [
            f"Latency: fused forward, eval, batch {st['batch_size']}, {st['image_size']} px, "
            f"{'compiled' if st['compile'] else 'eager'}, {st['device_name']}{threads}; predicted by the cost model, "
            "measured (median of 7 interleaved rounds) before training. The learned arm (MACs-aware) sets the budget; "
            f"the latency arm keeps neurons by score per ms^{alpha}.",
            "",
        ]
    lines += [
        f"Each arm trained {s['epochs']} epochs (batch {s['batch_size']}, LR {s['lr']}, "
        f"{'crop + flip' if s['augment'] else 'no augmentation'}, "
        f"{'all' if not s['train_subset'] else format(s['train_subset'], ',')} training images); test top-1 on "
        f"{report['test_images']:,} images.",
        "",
        "| arm | test top-1 (mean ± std) | per seed | MACs | params |" + (" predicted ms | measured ms |" if lat else ""),
        "|---|---:|---|---:|---:|" + ("---:|---:|" if lat else ""),
    ]
    for arm, a in report["arms"].items():
        per_seed = ", ".join(f"{100 * v:.2f}" for v in a["top1_by_seed"])
        ms = f" {a['predicted_ms']:.2f} | {a['measured_ms']:.2f} |" if lat else ""
        lines.append(f"| {arm} | {100 * a['top1']:.2f}% ± {100 * a['top1_std']:.2f} | {per_seed} | "
                     f"{a['macs'] / 1e6:.2f} M | {a['params'] / 1e3:.1f} K |{ms}")
    lines += ["", "Paired by seed, with a 95% t-interval:", "", "| difference | mean (points) | 95% interval |",
              "|---|---:|---|"]
    for name, c in report["comparisons"].items():
        verdict = "above 0" if c["low"] > 0 else "below 0" if c["high"] < 0 else "includes 0"
        lines.append(f"| {name} | {100 * c['mean']:+.2f} | [{100 * c['low']:+.2f}, {100 * c['high']:+.2f}] ({verdict}) |")
    return "\n".join(lines) + "\n"


def plot_study(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Left: each arm's per-seed test top-1 (dots) with mean ± std. Right: the paired differences
    with their 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import save_figure

    arms = list(report["arms"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw=dict(width_ratios=[1.2, 1]))
    for i, arm in enumerate(arms):
        a = report["arms"][arm]
        left.scatter([i] * len(a["top1_by_seed"]), [100 * v for v in a["top1_by_seed"]], s=14, alpha=0.7)
        left.errorbar([i + 0.18], [100 * a["top1"]], yerr=[100 * a["top1_std"]], fmt="o", color="black", capsize=4)
    left.set_xticks(range(len(arms)))
    left.set_xticklabels(arms, rotation=20)
    left.set_ylabel("test top-1 (%)")
    left.set_title("per seed (dots), mean ± std (black)", fontsize=9)
    left.grid(alpha=0.3, axis="y")
    names = list(report["comparisons"])
    for j, name in enumerate(names):
        c = report["comparisons"][name]
        right.errorbar([100 * c["mean"]], [j], xerr=[[100 * (c["mean"] - c["low"])], [100 * (c["high"] - c["mean"])]],
                       fmt="o", color="black", capsize=4)
    right.axvline(0, color="grey", lw=0.8, ls="--")
    right.set_yticks(range(len(names)))
    right.set_yticklabels(names)
    right.set_xlabel("difference in test top-1 (points), 95% interval")
    right.set_title("paired by seed", fontsize=9)
    lat = report.get("latency")
    matched = f"{lat['target_ms']:.2f} ms predicted" if lat else f"{report['target_macs'] / 1e6:.2f} M MACs"
    fig.suptitle(f"{report['settings']['data']}: arms at {matched}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
