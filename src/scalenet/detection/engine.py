"""Detector training and evaluation on the shared run layer (:mod:`scalenet.training`).

- SGD with momentum, linear warmup, then the LR times 0.1 at each of ``lr_steps`` (epochs):
  the usual Faster R-CNN "1x" recipe (12 epochs, steps at 8 and 11).
- torchrun DDP (gloo on CPU, nccl on CUDA); ``batch_size`` is per process.
- ``RUN_DIR/last.pt`` every epoch (and ``best.pt`` on a better validation AP), written
  atomically; ``resume=True`` continues exactly; ``metrics.jsonl`` one object per epoch.
- A NaN or inf loss stops the run with :class:`~scalenet.training.TrainingError`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist
from torch import nn
from timm.utils import random_seed, unwrap_model

from ..checkpoint import CheckpointError, read_state_dict
from ..errors import SettingError
from ..factory import resolve_structure
from ..fileio import atomic_write_text, check_output_file
from ..training import (
    DEFAULT_SAVE_EVERY, CheckpointSaver, DistContext, RunDir, Updater, fit, progress_bar, setup_distributed,
)
from ..structure import Structure
from .data import CocoDetection, detection_loader
from .evaluate import coco_evaluate, predict
from .model import fasterrcnn_scalenet_fpn

__all__ = ["DetectConfig", "train_detector", "evaluate_detector", "evaluate_detector_checkpoint",
           "detector_from_checkpoint"]

CHECKPOINT_FORMAT = "scalenet-detect"
LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")


@dataclass
class DetectConfig:
    backbone: str = "scalenet50"
    backbone_checkpoint: str | None = None
    epochs: int = 12
    batch_size: int = 2  # per process
    lr: float = 0.02
    momentum: float = 0.9
    wd: float = 1e-4
    lr_steps: tuple[int, ...] = (8, 11)  # epochs after which the LR is multiplied by 0.1
    warmup_iters: int = 1000
    min_size: int = 600  # the paper's COCO setting: 600/1000
    max_size: int = 1000
    trainable_layers: int = 3
    norm: str = "frozen"
    fpn_channels: int = 256
    amp: bool = False
    workers: int = 0
    seed: int = 0
    save_every: float | None = DEFAULT_SAVE_EVERY  # minutes between checkpoints inside an epoch (None: epoch ends only)
    progress: bool = True
    tensorboard: bool = True
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # more FasterRCNN keywords

    def check(self) -> None:
        """Refuses, before any data is read, a backbone weight file that is not there."""
        if self.backbone_checkpoint is not None and not Path(self.backbone_checkpoint).is_file():
            raise FileNotFoundError(f"backbone checkpoint not found: {self.backbone_checkpoint}")


def _build(structure: Structure, num_classes: int, cfg: DetectConfig, *, with_weights: bool) -> nn.Module:
    return fasterrcnn_scalenet_fpn(
        structure, num_classes, backbone_checkpoint=cfg.backbone_checkpoint if with_weights else None,
        trainable_layers=cfg.trainable_layers, norm=cfg.norm, fpn_channels=cfg.fpn_channels,
        min_size=cfg.min_size, max_size=cfg.max_size, **cfg.model_kwargs,
    )


def _lr_factor(cfg: DetectConfig, steps_per_epoch: int):
    warmup = min(cfg.warmup_iters, max(steps_per_epoch - 1, 0))
    milestones = [s * steps_per_epoch for s in cfg.lr_steps]

    def factor(step: int) -> float:
        f = 0.1 ** sum(step >= m for m in milestones)
        if step < warmup:
            alpha = step / warmup
            f *= 1e-3 * (1 - alpha) + alpha
        return f

    return factor


def detector_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilds a trained detector from its checkpoint alone."""
    ckpt = read_state_dict(path)
    if ckpt.get("format") != CHECKPOINT_FORMAT or "model" not in ckpt or "detector" not in ckpt:
        raise CheckpointError(f"{path}: not a scalenet detection checkpoint (written by scalenet detect-train)")
    spec = ckpt["detector"]
    structure = Structure.from_json(spec["structure"], source=f"{path} (structure)")
    cfg = DetectConfig(**{k: v for k, v in spec["config"].items() if k in DetectConfig.__dataclass_fields__})
    model = _build(structure, spec["num_classes"], cfg, with_weights=False)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit its own detector ({str(e).splitlines()[0]})") from None
    return model, ckpt


def evaluate_detector(
    model: nn.Module, dataset: CocoDetection, device: torch.device | str = "cpu", *, batch_size: int = 1,
    workers: int = 0, progress: bool = True, d: DistContext | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """COCO metrics of ``model`` on ``dataset`` (every rank gets them) and the detections (rank 0).

    One image per step by default: a batch pads its images to a common size, which moves the
    scores slightly, so results would otherwise depend on how images are grouped (and sharded).
    """
    device = torch.device(device)
    d = d or DistContext(device=device)
    loader = detection_loader(dataset, batch_size, shuffle=False, workers=workers, rank=d.rank, world_size=d.world_size)
    bar = (lambda it: progress_bar(it, len(loader), "evaluating", True)) if progress and d.main else None
    results, skipped = predict(unwrap_model(model), loader, device, progress=bar)
    if d.enabled:
        gathered: list[Any] = [None] * d.world_size
        dist.all_gather_object(gathered, (results, skipped))
        results = [r for part, _ in gathered for r in part]
        skipped = sum(s for _, s in gathered)
    stats = coco_evaluate(dataset.coco, dataset.valid_annotations, results) if d.main else {}
    if d.enabled:
        box = [stats]
        dist.broadcast_object_list(box, src=0)
        stats = box[0]
    stats = dict(stats, images=len(dataset) - skipped, skipped_images=skipped, detections=len(results))
    return stats, results


def category_mismatch(recorded: Mapping[str, str] | None, categories: Mapping[int, str], recorded_by: str,
                      data: str) -> str | None:
    """Why a detector that learned the categories ``recorded`` (id -> name, as its checkpoint
    keeps them) does not fit data with ``categories``: an id it never learned, or an id that
    names another category; None when every id agrees or nothing was recorded."""
    if not recorded:
        return None
    known = {int(k): str(v) for k, v in recorded.items()}
    differ = [i for i in sorted(categories) if known.get(i) != str(categories[i])]
    if not differ:
        return None

    def show(names: Mapping[int, str]) -> str:
        shown = ", ".join(f"{i}: {names[i]!r}" if i in names else f"{i}: none" for i in differ[:6])
        return "{" + shown + (f", ... ({len(differ)} ids differ)" if len(differ) > 6 else "") + "}"

    return (f"{recorded_by} was trained on other categories than {data} names: {show(known)} there, "
            f"{show(categories)} here")


def evaluate_detector_checkpoint(
    checkpoint: str | os.PathLike, annotations: str | os.PathLike, images: str | os.PathLike, *,
    save: str | os.PathLike | None = None, detections: str | os.PathLike | None = None, score_thresh: float = 0.05,
    batch_size: int = 1, workers: int = 0, progress: bool = True, force: bool = True,
) -> dict[str, Any] | None:
    """COCO metrics of a ``detect-train`` checkpoint on a COCO-format set, sharded across
    torchrun's ranks. Rank 0 writes the report (``save``, default ``eval-<json name>.json``
    beside the checkpoint) and, with ``detections``, the detections in COCO results format,
    and returns the report; other ranks return None."""
    d = setup_distributed()
    dataset = CocoDetection(annotations, images)
    model, ckpt = detector_from_checkpoint(checkpoint)
    model.roi_heads.score_thresh = score_thresh
    num_classes = ckpt["detector"]["num_classes"]
    problem = category_mismatch(ckpt.get("categories"), dataset.categories, str(checkpoint), str(annotations))
    if problem:
        raise ValueError(f"{problem}; evaluate on data with the categories it was trained on")
    if dataset.num_classes > num_classes:
        raise ValueError(
            f"{annotations} has category ids up to {dataset.num_classes - 1}, but {checkpoint} "
            f"predicts ids below {num_classes}; evaluate on the data set it was trained for"
        )
    save = Path(save) if save else Path(checkpoint).with_name(f"eval-{Path(annotations).stem}.json")
    if d.main:
        check_output_file(save, "--save", "eval.json", force=force, what="the metrics of an earlier evaluation")
        if detections:
            check_output_file(Path(detections), "--detections", "detections.json", force=force)
    stats, results = evaluate_detector(model.to(d.device), dataset, d.device, batch_size=batch_size, workers=workers,
                                       progress=progress, d=d)
    if not d.main:
        return None
    report = {"checkpoint": str(checkpoint), "annotations": str(annotations), **stats}
    atomic_write_text(save, json.dumps(report, indent=2) + "\n")
    if detections:
        atomic_write_text(Path(detections), json.dumps(results))
    return dict(report, saved=str(save), skipped=dataset.skipped.describe() if dataset.skipped else None)


class DetectionTask:
    """Faster R-CNN's four losses; best checkpoint by validation AP (when a validation set is given)."""

    checkpoint_format = CHECKPOINT_FORMAT
    train_prefix = ""
    best_key = "best_ap"
    metric = "val_AP"
    initial_best = -1.0

    def __init__(self, structure: Structure, dataset: CocoDetection, cfg: DetectConfig, val: CocoDetection | None,
                 d: DistContext):
        self.structure, self.dataset, self.cfg, self.val, self.d = structure, dataset, cfg, val, d
        self.label = f"faster-rcnn {structure.name or 'scalenet'}"
        self.advice = f"lower --lr (now {cfg.lr}) or lengthen --warmup-iters"

    def step(self, net: nn.Module, images: list, targets: list) -> dict[str, torch.Tensor]:
        images = [im.to(self.d.device, non_blocking=True) for im in images]
        targets = [{k: v.to(self.d.device) for k, v in t.items()} for t in targets]
        losses = net(images, targets)
        return {"loss": sum(losses.values()), **{k: losses[k] for k in LOSS_KEYS}}

    def validate(self, net: nn.Module) -> dict[str, Any]:
        if self.val is None:
            return {}
        stats, _ = evaluate_detector(net, self.val, self.d.device, workers=self.cfg.workers, progress=self.cfg.progress,
                                     d=self.d)
        return {f"val_{k}": v for k, v in stats.items() if k in ("AP", "AP50", "AP75")}

    def describe(self, record: Mapping[str, Any]) -> str:
        return f", val AP {100 * record['val_AP']:.1f}" if "val_AP" in record else ""

    def identity(self) -> dict[str, Any]:
        s = self.structure
        return {"backbone": (s.rows, s.layers, s.scales), "number of classes": self.dataset.num_classes,
                "data set": str(self.dataset.annotation_file), "number of training images": len(self.dataset),
                "batch size": self.cfg.batch_size,
                "categories": {str(k): v for k, v in sorted(self.dataset.categories.items())}}

    def identity_of(self, ckpt: Mapping[str, Any]) -> dict[str, Any]:
        spec = ckpt["detector"]
        s = Structure.from_json(spec["structure"], source="checkpoint (structure)")
        return {"backbone": (s.rows, s.layers, s.scales), "number of classes": spec["num_classes"],
                "data set": spec.get("data"), "number of training images": spec.get("train_images"),
                "batch size": (spec.get("config") or {}).get("batch_size"), "categories": ckpt.get("categories")}

    def checkpoint(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "detector": {
                "structure": self.structure.to_json(),
                "num_classes": self.dataset.num_classes,
                "data": str(self.dataset.annotation_file),
                "train_images": len(self.dataset),
                "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.cfg).items()},
            },
            "categories": {str(k): v for k, v in self.dataset.categories.items()},
        }


def train_detector(
    dataset: CocoDetection,
    cfg: DetectConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool | str = False,
    val_dataset: CocoDetection | None = None,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Trains Faster R-CNN + FPN with ``cfg.backbone`` on ``dataset``; returns the model and the
    per-epoch records (also in ``run_dir/metrics.jsonl``)."""
    d = setup_distributed()
    run = RunDir(run_dir, CHECKPOINT_FORMAT)
    structure = resolve_structure(cfg.backbone)
    resume = run.open(resume, d)
    random_seed(cfg.seed)  # torch, NumPy and Python's generators (timm.utils)
    model = _build(structure, dataset.num_classes, cfg, with_weights=not resume).to(d.device)
    if d.main:
        _notes(dataset, cfg, resume)
    loader = detection_loader(dataset, cfg.batch_size, shuffle=True, workers=cfg.workers, seed=cfg.seed,
                              rank=d.rank, world_size=d.world_size)
    if len(loader) == 0:
        raise SettingError(
            f"{dataset.annotation_file.name}: {len(dataset)} images make no full batch of {cfg.batch_size} "
            f"on {d.world_size} process(es); lower {{batch_size}}", "batch_size")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg, len(loader)))
    updater = Updater(optimizer, scheduler, torch.amp.GradScaler(d.device.type, enabled=cfg.amp and d.device.type == "cuda"))
    task = DetectionTask(structure, dataset, cfg, val_dataset, d)
    saver = CheckpointSaver(run, d, save_every=cfg.save_every, tensorboard=cfg.tensorboard)
    result = fit(task, model, updater, loader, saver, epochs=cfg.epochs, d=d, resume=resume, amp=cfg.amp,
                 progress=cfg.progress)
    return model, result.metrics


def _notes(dataset: CocoDetection, cfg: DetectConfig, resume: bool) -> None:
    if cfg.backbone_checkpoint is None and cfg.norm == "frozen" and not resume:
        print("note: no --backbone-checkpoint: the backbone starts from random weights with frozen BN (an identity "
              "until trained weights fill it); give ImageNet weights, or --norm bn to train from scratch", flush=True)
    if dataset.skipped:
        print(f"note: {dataset.annotation_file.name}: skipped {dataset.skipped.describe()}", flush=True)
