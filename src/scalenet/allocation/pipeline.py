"""The whole allocation: supernet structure, supernets trained and scored, selection under a
budget, and the result with its files (structure, ``.scores.json`` sidecar, chart).

Two typed records say what a result depends on, and travel in its sidecar:
:class:`SupernetSettings` (how the supernets were trained) and :class:`Selection` (how neurons
were kept: scope, combination, ``alpha``, rounding). The budget is a :class:`Budget` object.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from ..agreement import agreement_report
from ..errors import SettingError
from ..fileio import atomic_write_text, read_json
from ..report import plot_allocation
from ..structure import Structure
from ..training import TrainConfig, check_jobs, in_processes, is_main_process, jobs_for, train, under_torchrun
from .budgets import Budget, BoundBudget, WidthBudget
from .combine import combine_mean, combine_union
from .importance import BlockScores, BNScale, BNScaleL1, Importance, unweigh
from .records import DEFAULT_COMBINE, SIDECAR_VERSION, SupernetRun, SupernetSettings, Selection
from .rounding import round_channels
from .supernets import prepare_runs, score_run, supernet_run_dirs
from .select import select, weigh_by_cost

__all__ = [
    "DEFAULT_REPEATS", "DEFAULT_COMBINE", "SUPERNET_IMAGES", "SupernetSettings", "Selection", "SupernetRun",
    "AllocationResult",
    "supernet_structure", "supernet_for", "supernet_epochs", "default_layout", "allocate", "select_runs", "load_runs",
]

#: Defaults chosen by measurement (benchmarks/allocation_agreement.py, demo setting): single
#: supernets agree no better than chance, however long they train; 16 networks of one
#: epoch each, averaged, agree at 0.34x / 0.19x / 0.28x chance by stage (``union``: 0.32x /
#: 0.22x / 0.33x), and take about 4 minutes on 2 cores, two at a time.
DEFAULT_REPEATS = 16
#: Each supernet trains for the fewest whole epochs that show it this many images (one
#: epoch of the demo's 8,000; longer schedules did not make the rankings agree more).
SUPERNET_IMAGES = 8000


def supernet_structure(
    layers: Sequence[int],
    *,
    supernet_width: int | Sequence[int] | None = None,
    scales: Sequence[int] = (1, 2, 4, 7),
    stem: str = "imagenet",
    width: int = 64,
    image_size: int = 224,
) -> Structure:
    """The abundant supernet: C neurons for every scale of every block (default C = the block's planes)."""
    planes = [width * 2**i for i in range(len(layers))]
    per_stage = planes if supernet_width is None else supernet_width
    if isinstance(per_stage, int) and per_stage < 1 or not isinstance(per_stage, int) and min(per_stage) < 1:
        raise SettingError(f"{{supernet_width}} must be a positive number of neurons per scale, got {supernet_width}",
                           "supernet_width")
    supernet = Structure.uniform(layers, per_stage, scales=tuple(scales), stem=stem, width=width, image_size=image_size,
                             name="supernet")
    sides = supernet.stage_sides()
    unused = [s for s in supernet.scales if all(side // s < 1 for side in sides)]
    if unused:
        raise SettingError(
            f"{{scales}} {','.join(map(str, unused))} do not fit any feature map (largest side {max(sides)} at "
            f"{{image_size}} {image_size}); choose smaller {{scales}}", "scales", "image_size"
        )
    return supernet


def supernet_epochs(train_images: int) -> int:
    """The default supernet schedule: the fewest whole epochs that show a supernet
    :data:`SUPERNET_IMAGES` images."""
    return max(1, -(-SUPERNET_IMAGES // max(1, train_images)))


def supernet_for(image_size: int, *, layers: Sequence[int] | None = None, width: int | None = None,
             stem: str | None = None, scales: Sequence[int] = (1, 2, 4, 7),
             supernet_width: int | Sequence[int] | None = None) -> Structure:
    """The supernet :func:`allocate` trains for data of ``image_size``: the given layout, the
    rest by image size (:func:`default_layout`)."""
    layout = default_layout(image_size)
    return supernet_structure(tuple(layers or layout["layers"]), supernet_width=supernet_width, scales=scales,
                          stem=stem or layout["stem"], width=width or layout["width"], image_size=image_size)


def default_layout(image_size: int) -> dict[str, Any]:
    """Sensible defaults by image size: the small stem and three 1-block stages at 64 px or less,
    else the ImageNet stem and the ResNet-50 layout."""
    if image_size <= 64:
        return dict(stem="small", layers=(1, 1, 1), width=16)
    return dict(stem="imagenet", layers=(3, 4, 6, 3), width=64)


@dataclass
class AllocationResult:
    structure: Structure
    scores: list[BlockScores]  # the combined ranking (the one run's scores when repeats=1)
    supernet: Structure
    training: SupernetSettings
    selection: Selection
    budget: Budget
    predicted: float  # the structure's total under the budget's cost model, in ``unit``
    unit: str = "MACs"
    kept: list[list[list[int]]] = field(default_factory=list)  # per block, per scale: kept (combined) neuron indices
    runs: list[SupernetRun] = field(default_factory=list)
    agreement: dict[str, Any] = field(default_factory=dict)  # scalenet.agreement.agreement_report of the runs

    @property
    def settings(self) -> dict[str, Any]:
        """Everything the result depends on, as the sidecar and the structure's meta record it."""
        return {**self.training.to_json(), **self.budget.settings(), **self.selection.to_json(),
                "predicted": self.predicted, "predicted_unit": self.unit}

    @property
    def supernet_metrics(self) -> list[dict[str, Any]]:
        return self.runs[0].metrics if self.runs else []

    def sidecar(self) -> dict[str, Any]:
        return {
            "version": SIDECAR_VERSION,
            "settings": self.settings,
            "supernet": self.supernet.to_json(),
            "macs": self.structure.macs(num_classes=self.training.num_classes, in_chans=self.training.in_chans),
            "agreement": self.agreement,
            "blocks": [
                {"block": spec.name, "scales": list(self.supernet.scales), "channels": list(row[:-1]),
                 "costs": self.supernet.neuron_macs(spec),
                 # the combined ranking and the kept indices in it (a union of runs, or the one run)
                 "scores": self.scores[b].scores if self.scores else None, "kept": self.kept[b] if self.kept else None}
                for b, (spec, row) in enumerate(zip(self.supernet.blocks(), self.structure.rows))
            ],
            "runs": [
                {"seed": r.seed, "rows": [list(row) for row in r.structure.rows], "metrics": r.metrics,
                 "scores": [b.scores for b in r.scores]}
                for r in self.runs
            ],
        }

    @staticmethod
    def outputs(path: str | os.PathLike) -> tuple[Path, Path]:
        """The sidecar and the chart :meth:`save` writes beside the structure ``path``."""
        path = Path(path)
        return path.with_name(path.stem + ".scores.json"), path.with_suffix(".png")

    def save(self, path: str | os.PathLike, *, bare: bool = False, chart: str | os.PathLike | None = None,
             title: str | None = None) -> dict[str, Path]:
        """Writes the structure (``bare``: the release's bare-list format), the sidecar
        ``<stem>.scores.json`` (every neuron's score and the settings) and the allocation chart
        (default ``<stem>.png``), each atomically. Returns the three paths."""
        path = Path(path)
        sidecar, default_chart = self.outputs(path)
        chart = Path(chart) if chart is not None else default_chart
        self.structure.save(path, bare=bare)
        atomic_write_text(sidecar, json.dumps(self.sidecar()) + "\n")
        default_title = f"{path.stem}: learned neurons per scale ({self.training.data})"
        runs = [r.structure for r in self.runs] if len(self.runs) > 1 else None
        plot_allocation(self.structure, chart, title=title or default_title, runs=runs)
        return {"structure": path, "sidecar": sidecar, "chart": chart}


def load_runs(path: str | os.PathLike) -> tuple[list[SupernetRun], Structure, SupernetSettings]:
    """The supernets' scores, the supernet and the training settings from a sidecar
    (``<structure>.scores.json`` written by :meth:`AllocationResult.save`), to select again under
    another budget (:func:`select_runs`) without training."""
    p = Path(path)
    raw = read_json(p, "scores file", "the .scores.json that scalenet allocate wrote beside its structure")
    try:
        if "supernet" in raw:
            supernet = Structure.from_json(raw["supernet"], source=f"{p} (supernet)")
        else:  # format 1 named it "seed"
            supernet = Structure.from_json(raw["seed"], source=f"{p} (supernet)")
            supernet = replace(supernet, name="supernet" if supernet.name == "seed" else supernet.name)
        costs = [b["costs"] for b in raw["blocks"]]
        names = [b["block"] for b in raw["blocks"]]
        runs = [SupernetRun(seed=r["seed"],
                            scores=[BlockScores(n, sc, c) for n, sc, c in zip(names, r["scores"], costs)],
                            structure=supernet, metrics=r.get("metrics", [])) for r in raw["runs"]]
        settings = dict(raw["settings"])
        training = SupernetSettings.from_json(settings)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{p}: not a scores file of scalenet allocate (missing or malformed {e})") from None
    if not runs or any(len(r.scores) != len(list(supernet.blocks())) for r in runs):
        raise ValueError(f"{p}: the scores do not match the supernet's {len(list(supernet.blocks()))} blocks")
    # sidecars written before latency budgets kept the importance's alpha as "alpha"; before
    # alpha moved to the selection, scores were stored divided by MACs^importance_alpha
    weighted = settings.get("importance_alpha", settings.get("alpha", 0.0)) or 0.0
    if weighted:
        runs = [replace(r, scores=unweigh(r.scores, weighted, training.normalizer)) for r in runs]
    return runs, supernet, replace(training, importance_alpha=0.0)


def _check_before_training(data, supernet: Structure, budget: Budget, selection: Selection,
                           importance: Importance | None) -> None:
    """Refuses, before any training, a budget no selection from ``supernet`` meets, a rounding the
    supernet cannot offer, and an importance that weighs its scores itself."""
    budget.bind(supernet, data.num_classes, data.in_chans).check()
    selection.check(supernet)
    if getattr(importance, "alpha", 0):
        raise ValueError("scores are stored unweighted and weighed by each neuron's cost at selection; give the "
                         "importance alpha=0 and pass alpha in the Selection")


def _check_repeats(repeats: int, jobs: int | None) -> None:
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise SettingError(f"{{repeats}} must be a whole number of supernets, 1 or more; got {repeats}", "repeats")
    check_jobs(jobs)


def allocate(
    data,
    budget: Budget | None = None,
    selection: Selection = Selection(),
    *,
    layers: Sequence[int] | None = None,
    width: int | None = None,
    stem: str | None = None,
    scales: Sequence[int] = (1, 2, 4, 7),
    supernet_width: int | Sequence[int] | None = None,
    importance: Importance | None = None,
    sparsity: float = 0.0,
    repeats: int = DEFAULT_REPEATS,
    jobs: int | None = None,
    train_config=None,
    runs: str | os.PathLike | None = None,
    resume: bool = False,
    name: str | None = None,
) -> AllocationResult | None:
    """Trains ``repeats`` supernets on ``data`` (a :class:`~scalenet.data.DataSpec`), seeds
    ``s`` to ``s + repeats - 1`` (``s``: the training config's seed), ``jobs`` of them at a time
    (:func:`scalenet.training.in_processes`; None: one per CPU core, or one per GPU with CUDA, each on
    a GPU of its own), and keeps
    neurons from their scores under ``budget`` (default ``WidthBudget(1.0)``) as ``selection``
    says (:func:`select_runs`).

    Each supernet is an ordinary training run in ``runs/supernet-NNNN`` (:mod:`.supernets`; None: a
    temporary folder), scored from its checkpoint. ``resume`` continues the runs there: finished
    ones are scored, not retrained, the interrupted one continues from its newest checkpoint.
    Under torchrun every supernet trains with DDP across all ranks, one after another; rank
    0 selects and returns the result, the other ranks return None.

    The supernet's layout is ``layers``, ``width`` and ``stem`` (default by image size,
    :func:`default_layout`), with ``supernet_width`` neurons per scale; ``sparsity`` adds a
    :class:`BNScaleL1` penalty. Bad settings fail before any training.
    """
    _check_repeats(repeats, jobs)
    supernet = supernet_for(data.image_size, layers=layers, width=width, stem=stem, scales=scales,
                            supernet_width=supernet_width)
    layers = supernet.layers
    budget = (budget or WidthBudget(1.0)).resolved(supernet, progress=train_config is None or train_config.progress)
    _check_before_training(data, supernet, budget, selection, importance)
    importance = importance or BNScale(0.0)
    cfg = train_config or TrainConfig(epochs=supernet_epochs(len(data.train)))
    jobs = _jobs(jobs, repeats, runs)
    training = SupernetSettings(
        data=data.name, image_size=data.image_size, num_classes=data.num_classes, in_chans=data.in_chans,
        layers=layers, scales=tuple(supernet.scales),
        supernet_width=tuple(supernet_width) if isinstance(supernet_width, (list, tuple)) else supernet_width,
        importance=type(importance).__name__, normalizer=getattr(importance, "normalizer", None),
        importance_alpha=getattr(importance, "alpha", None), sparsity=sparsity, supernet_epochs=cfg.epochs,
        seed=cfg.seed,
        repeats=repeats,
    )
    scored = _train_and_score(supernet, data, cfg, training, importance, jobs, runs, resume)
    if scored is None:  # a rank other than 0 under torchrun
        return None
    return select_runs(scored, supernet, budget, training, selection, name=name)


def _train_and_score(supernet: Structure, data, cfg, training: SupernetSettings, importance: Importance, jobs: int,
                     runs, resume: bool) -> list[SupernetRun] | None:
    """Trains the supernets in ``runs`` (None: a temporary folder), ``jobs`` at a time, and
    scores them from their checkpoints (None on ranks other than 0)."""
    repeats = training.repeats
    with tempfile.TemporaryDirectory(prefix="scalenet-supernets-") if runs is None \
            else nullcontext(str(runs)) as folder:
        dirs = supernet_run_dirs(folder, repeats)
        prepare_runs(Path(folder), _runs_record(training, cfg, supernet, len(data.train)), repeats, resume,
                     write=is_main_process())
        payloads = [
            dict(supernet=supernet, data=data, sparsity=training.sparsity, run_dir=str(d),
                 resume="auto" if resume else False,
                 cfg=dataclasses.replace(cfg, seed=cfg.seed + r, progress=cfg.progress and jobs == 1),
                 label="supernet" if repeats == 1 else f"supernet {r + 1}/{repeats}")
            for r, d in enumerate(dirs)
        ]
        in_processes(_train_supernet, payloads, jobs)
        if not is_main_process():
            return None
        return [score_run(d, supernet, importance)[0] for d in dirs]


def _jobs(jobs: int | None, repeats: int, runs) -> int:
    """Supernets trained at once: one under torchrun (each with DDP across the ranks, which
    need a shared runs folder), else ``jobs`` or one per CPU core (one per GPU with CUDA)."""
    if under_torchrun() and runs is None:
        raise ValueError("under torchrun the supernets train one after another with DDP across all ranks, in a "
                         "runs folder every rank reads: give runs= (scalenet allocate does)")
    return jobs_for(jobs, repeats, "supernets")


def _runs_record(training: SupernetSettings, cfg, supernet: Structure, train_images: int) -> dict[str, Any]:
    """What a folder of supernet runs depends on: the supernet, its data and every training setting
    that changes the numbers (not progress bars, workers or checkpoint timing)."""
    recipe = {k: v for k, v in dataclasses.asdict(cfg).items()
              if k not in ("progress", "workers", "save_every", "tensorboard")}
    return {**training.to_json(), "train_images": train_images, "supernet_rows": [list(r) for r in supernet.rows],
            **recipe}


def select_runs(runs: list[SupernetRun], supernet: Structure, budget: Budget, training: SupernetSettings,
                selection: Selection = Selection(), *, name: str | None = None) -> AllocationResult:
    """Selects under ``budget`` from trained supernets' scores (each run's own allocation,
    then combined; ``training``: how they were trained, from :func:`allocate` or a sidecar) as
    ``selection`` says. ``alpha`` weighs the (unweighted) scores by each neuron's cost under the
    budget: MACs for width and MACs budgets, milliseconds for a latency budget
    (:func:`weigh_by_cost`)."""
    if training.importance_alpha:
        raise ValueError("select_runs needs unweighted scores (load_runs unweighs older sidecars' scores)")
    bound = budget.bind(supernet, training.num_classes, training.in_chans).check()
    selection.check(supernet)  # a bad --multiple-of fails before any selection
    weighed = [weigh_by_cost(r.scores, bound, selection.alpha) for r in runs]  # the one meaning of alpha
    runs = [replace(r, structure=select(w, bound, scope=selection.scope)[0]) for r, w in zip(runs, weighed)]
    structure, combined, kept = _combined(runs, weighed, supernet, bound, selection)
    return _result(structure, combined, kept, runs, supernet, bound, training, selection, name)


def _combined(runs: list[SupernetRun], weighed: list[list[BlockScores]], supernet: Structure, bound: BoundBudget,
              selection: Selection) -> tuple[Structure, list[BlockScores], list[list[list[int]]]]:
    """The runs combined as ``selection.combine`` says, then rounded to ``selection.multiple_of``."""
    if selection.combine == "union":
        combined = combine_union(weighed)
        structure, kept = select(combined, bound, scope=selection.scope)
    else:
        combined, kept = [], []
        structure = combine_mean([r.structure for r in runs], supernet, bound)
        bound.verify(bound.of_structure(structure))
    if selection.multiple_of is not None:
        structure = round_channels(structure, supernet, selection.multiple_of, bound)
        if kept:  # the best neurons of each scale, as many as the rounded counts
            kept = [[sorted([j for _, i, j in block.flat() if i == pos][: row[pos]])
                     for pos in range(len(supernet.scales))]
                    for block, row in zip(combined, structure.rows)]
    return structure, combined, kept


def _result(structure: Structure, combined: list[BlockScores], kept: list[list[list[int]]], runs: list[SupernetRun],
            supernet: Structure, bound: BoundBudget, training: SupernetSettings, selection: Selection,
            name: str | None) -> AllocationResult:
    """The result, with the structure's meta (settings, MACs, parameters, agreement) filled in."""
    nc, ic = training.num_classes, training.in_chans
    result = AllocationResult(structure, combined, supernet, training, selection, bound.budget,
                              bound.of_structure(structure), bound.unit, kept, runs,
                              agreement_report([r.structure for r in runs], supernet))
    meta = {
        "allocation": result.settings,
        "macs": structure.macs(None, nc, ic),
        "params": structure.params(nc, ic),
        "supernet_val_top1": statistics.mean(r.metrics[-1]["val_top1"] for r in runs) if runs[0].metrics else None,
        "agreement": {f"stage{s['stage']}": {k: s[k] for k in ("ratio", "z")} for s in result.agreement["stages"]},
    }
    result.structure = replace(structure, name=name, meta=meta)
    return result


def _train_supernet(p: dict[str, Any]) -> None:
    """Trains one supernet in its run directory (in a worker process when several run at once)."""
    train(p["supernet"], p["data"], p["cfg"], p["run_dir"], resume=p["resume"], description=p["label"],
          regularizer=BNScaleL1(p["sparsity"]) if p["sparsity"] else None)
