"""Supernets as ordinary training runs.

Each supernet trains in its own run directory, ``RUNS/supernet-0000``, ``RUNS/supernet-0001``, ...,
through the same training as ``scalenet train`` (checkpoints, ``metrics.jsonl``, TensorBoard,
``--resume auto``, DDP under torchrun), and is scored from its checkpoint
(:func:`score_run`): the same code whether the run just finished in this process or was
trained elsewhere (``scalenet allocate --from-runs``). ``RUNS/allocation.json`` records what
the runs depend on, so that a resumed allocation with other settings is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import SettingError
from ..fileio import atomic_write_text
from ..structure import Structure
from ..training import CHECKPOINT_FORMAT, RunDir, model_from_checkpoint
from .importance import BNScale, Importance
from .records import SupernetRun, SupernetSettings, current_keys

__all__ = ["SETTINGS_FILE", "supernet_run_dirs", "runs_dir_for", "prepare_runs", "score_run", "load_supernet_runs"]

#: What a folder of supernet runs was trained with (checked when the allocation resumes).
SETTINGS_FILE = "allocation.json"


def supernet_run_dirs(runs: str | os.PathLike, repeats: int) -> list[Path]:
    """The run directories of ``repeats`` supernets in ``runs``: ``supernet-NNNN``, or
    ``seed-NNNN`` in a folder that version 1 started (its runs keep their names when resumed)."""
    runs = Path(runs)
    old = any(p.is_dir() for p in runs.glob("seed-[0-9][0-9][0-9][0-9]"))
    new = any(p.is_dir() for p in runs.glob("supernet-[0-9][0-9][0-9][0-9]"))
    prefix = "seed" if old and not new else "supernet"
    return [runs / f"{prefix}-{r:04d}" for r in range(repeats)]


def runs_dir_for(structure_path: str | os.PathLike) -> Path:
    """Where ``scalenet allocate --out X.json`` trains its supernets: ``X.runs/`` beside it."""
    path = Path(structure_path)
    return path.with_name(path.stem + ".runs")


def prepare_runs(runs: Path, record: Mapping[str, Any], repeats: int, resume: bool, write: bool) -> None:
    """Refuses, in one line, supernet runs in ``runs`` trained with other settings than ``record``
    (naming the difference), and supernet runs already there unless ``resume``; then (``write``:
    rank 0) records the settings."""
    if runs.exists() and not runs.is_dir():
        raise SettingError(f"{runs} is a file; the supernets train in a folder there (choose another {{out}})", "out")
    saved = runs / SETTINGS_FILE
    if saved.is_file():
        old = current_keys(json.loads(saved.read_text()))  # a version 1 record compares under its new keys
        differ = [k for k in sorted(set(old) | set(record)) if old.get(k) != record.get(k)]
        if differ:
            shown = [f"{k} ({old.get(k)} there, {record.get(k)} here)" if _short(old.get(k), record.get(k)) else k
                     for k in differ]
            raise SettingError(f"{runs} holds supernet runs of other settings: {', '.join(shown)}; use the same "
                               "settings or another {out}", "out")
    dirs = supernet_run_dirs(runs, repeats)
    files = [d for d in dirs if d.exists() and not d.is_dir()]
    if files:  # refused here, naming the option that moves the runs (a run directory's own error cannot)
        raise SettingError(f"{files[0]} is a file; the supernet runs there need a folder of that name (choose another "
                           "{out})", "out")
    held = [d for d in dirs if RunDir(d, CHECKPOINT_FORMAT).has_checkpoint()]
    if held and not resume:
        raise SettingError(f"{runs} already holds supernet runs ({held[0].name}); pass {{resume='auto'}} to continue "
                           "them, or choose another {out}", "resume", "out")
    if write:
        runs.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, json.dumps(record, indent=2) + "\n")


def _short(*values: Any) -> bool:
    return all(isinstance(v, (str, int, float, type(None))) and len(str(v)) <= 80 for v in values)


def score_run(path: str | os.PathLike, supernet: Structure | None = None,
              importance: Importance | None = None) -> tuple[SupernetRun, dict[str, Any]]:
    """A finished supernet run's scores and records, read from its ``last.pt`` and ``metrics.jsonl``;
    with ``supernet``, the run must be of that structure. Returns the run and its checkpoint."""
    run = RunDir(path, CHECKPOINT_FORMAT)
    if not run.path.is_dir() or not (run.last.is_file() or run.step_files()):
        raise ValueError(f"{run.path} is not a training run (no last.pt); give run directories written by "
                         "scalenet train")
    if not run.last.is_file():
        raise ValueError(f"{run.path} is unfinished (no epoch ended yet); finish it with scalenet train ... "
                         "--resume auto")
    model, ckpt = model_from_checkpoint(run.last)
    epochs = int((ckpt.get("args") or {}).get("epochs", ckpt["epoch"]))
    if int(ckpt["epoch"]) < epochs:
        raise ValueError(f"{run.path} is unfinished (epoch {ckpt['epoch']} of {epochs}); finish it with scalenet "
                         "train ... --resume auto")
    structure = model.structure
    if supernet is not None and (structure.rows, structure.layers, structure.scales) != (
            supernet.rows, supernet.layers, supernet.scales):
        raise ValueError(f"{run.path} is a run of another structure than the supernet's "
                         f"({_describe(structure)} vs {_describe(supernet)}); give runs of one supernet structure")
    scores = (importance or BNScale())(model, structure, int(ckpt["image_size"]))
    seed_value = int((ckpt.get("args") or {}).get("seed", 0))
    records = run.read_metrics(upto=int(ckpt["epoch"]), last=ckpt.get("epoch_record"))  # a line a kill kept out
    return SupernetRun(seed=seed_value, scores=scores, structure=structure, metrics=records), ckpt


def _describe(s: Structure) -> str:
    return f"layers {'-'.join(map(str, s.layers))}, {sum(sum(r[:-1]) for r in s.rows):,} neurons"


def load_supernet_runs(paths: Sequence[str | os.PathLike],
                   importance: Importance | None = None) -> tuple[list[SupernetRun], Structure, SupernetSettings]:
    """Supernets trained anywhere (``scalenet train --model supernet.json``), scored from their
    checkpoints, for :func:`~scalenet.allocation.select_runs`: they must be finished runs of one
    supernet structure (uniform neurons per scale) on one data set; each refusal is one line."""
    if not paths:
        raise SettingError("{paths} needs at least one run directory", "paths")
    first, ckpt0 = score_run(paths[0], importance=importance)
    supernet = first.structure
    if any(len({c for c in r[:-1] if c}) != 1 for r in supernet.rows):  # scales too coarse for a map are 0
        raise ValueError(f"{paths[0]} is a run of {_describe(supernet)} with unequal neurons per scale, not a supernet; "
                         "train the structure scalenet allocate --write-supernet writes")
    runs = [first]
    data0 = (ckpt0.get("data"), ckpt0.get("train_images"), ckpt0["num_classes"], ckpt0["image_size"])
    for path in paths[1:]:
        run, ckpt = score_run(path, supernet, importance)
        data = (ckpt.get("data"), ckpt.get("train_images"), ckpt["num_classes"], ckpt["image_size"])
        if data != data0:
            raise ValueError(f"{path} was trained on {data[0]} ({data[1]:,} images, {data[2]} classes, {data[3]} px) but "
                             f"{paths[0]} on {data0[0]} ({data0[1]:,} images, {data0[2]} classes, {data0[3]} px); give "
                             "runs on one data set")
        runs.append(run)
    seeds = [r.seed for r in runs]
    if len(set(seeds)) != len(seeds):
        raise SettingError(f"{{paths}}: runs {', '.join(map(str, paths))} share training seeds ({seeds}); give runs "
                           "trained with different seeds", "paths")
    planes = supernet.stage_planes()
    per_stage = [supernet.rows[sum(supernet.layers[:i])][0] for i in range(len(supernet.layers))]
    imp = importance or BNScale()
    training = SupernetSettings(
        data=str(ckpt0.get("data")), image_size=int(ckpt0["image_size"]), num_classes=int(ckpt0["num_classes"]),
        in_chans=int(ckpt0["in_chans"]), layers=tuple(supernet.layers), scales=tuple(supernet.scales),
        supernet_width=None if per_stage == list(planes) else tuple(per_stage), importance=type(imp).__name__,
        normalizer=getattr(imp, "normalizer", None), importance_alpha=0.0, sparsity=0.0,
        supernet_epochs=int((ckpt0.get("args") or {}).get("epochs", ckpt0["epoch"])), seed=min(seeds),
        repeats=len(runs),
    )
    return runs, supernet, training
