"""Detector training and evaluation, with the classification engine's conventions.

- SGD with momentum, linear warmup, then the LR times 0.1 at each of ``lr_steps`` (epochs):
  the usual Faster R-CNN "1x" recipe (12 epochs, steps at 8 and 11).
- torchrun DDP (gloo on CPU, nccl on CUDA); ``batch_size`` is per process.
- ``RUN_DIR/last.pt`` every epoch (and ``best.pt`` on a better validation AP), written
  atomically; ``resume=True`` continues exactly; ``metrics.jsonl`` one object per epoch.
- A NaN or inf loss stops the run with :class:`~scalenet.engine.TrainingError`.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..checkpoint import CheckpointError, read_state_dict
from ..engine import (
    Dist,
    _all_reduce,
    _append_metrics,
    _autocast,
    _kept,
    _prepare_run_dir,
    _progress,
    _read_metrics,
    _rewrite_metrics,
    _unwrap,
    optimizer_step,
    restore_training_state,
    seed_all,
    setup_distributed,
    training_state,
)
from ..factory import resolve_structure
from ..fileio import atomic_write
from ..structure import Structure
from .data import CocoDetection, detection_loader
from .evaluate import coco_evaluate, predict
from .model import fasterrcnn_scalenet_fpn

__all__ = ["DetectConfig", "train_detector", "evaluate_detector", "detector_from_checkpoint"]

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
    progress: bool = True
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # more FasterRCNN keywords


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
    workers: int = 0, progress: bool = True, d: Dist | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """COCO metrics of ``model`` on ``dataset`` (every rank gets them) and the detections (rank 0).

    One image per step by default: a batch pads its images to a common size, which moves the
    scores slightly, so results would otherwise depend on how images are grouped (and sharded).
    """
    device = torch.device(device)
    d = d or Dist(device=device)
    loader = detection_loader(dataset, batch_size, shuffle=False, workers=workers, rank=d.rank, world_size=d.world_size)
    bar = (lambda it: _progress(it, len(loader), "evaluating", True)) if progress and d.main else None
    results, skipped = predict(_unwrap(model), loader, device, progress=bar)
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



def train_detector(
    dataset: CocoDetection,
    cfg: DetectConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    val_dataset: CocoDetection | None = None,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Trains Faster R-CNN + FPN with ``cfg.backbone`` on ``dataset``; returns the model and the
    per-epoch records (also in ``run_dir/metrics.jsonl``)."""
    d = setup_distributed()
    run = Path(run_dir)
    structure = resolve_structure(cfg.backbone)
    if d.main:
        _prepare_run_dir(run, resume)
    if d.enabled:
        dist.barrier()
    seed_all(cfg.seed)
    num_classes = dataset.num_classes
    model = _build(structure, num_classes, cfg, with_weights=not resume).to(d.device)
    if d.main and cfg.backbone_checkpoint is None and cfg.norm == "frozen" and not resume:
        print("note: no --backbone-checkpoint: the backbone starts from random weights with frozen BN (an identity "
              "until trained weights fill it); give ImageNet weights, or --norm bn to train from scratch", flush=True)
    if d.main and dataset.skipped:
        print(f"note: {dataset.annotation_file.name}: skipped {dataset.skipped.describe()}", flush=True)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd)
    loader = detection_loader(dataset, cfg.batch_size, shuffle=True, workers=cfg.workers, seed=cfg.seed,
                              rank=d.rank, world_size=d.world_size)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(
            f"{dataset.annotation_file.name}: {len(dataset)} images make no full batch of {cfg.batch_size} "
            f"on {d.world_size} process(es); lower --batch-size"
        )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg, steps_per_epoch))
    scaler = torch.amp.GradScaler(d.device.type, enabled=cfg.amp and d.device.type == "cuda")

    start_epoch, best_ap, metrics = 0, -1.0, []
    if resume:
        ckpt = read_state_dict(run / "last.pt")
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{run / 'last.pt'}: not a scalenet detection checkpoint")
        saved = Structure.from_json(ckpt["detector"]["structure"], source=f"{run / 'last.pt'} (structure)")
        if saved.rows != structure.rows or saved.layers != structure.layers or ckpt["detector"]["num_classes"] != num_classes:
            raise ValueError(f"{run / 'last.pt'} holds a different backbone or class count; resume with the same --backbone and data")
        restore_training_state(ckpt, model, optimizer, scheduler, scaler)
        start_epoch, best_ap = int(ckpt["epoch"]), float(ckpt["best_ap"])
        metrics = _read_metrics(run / "metrics.jsonl", upto=start_epoch)
    if d.main:
        _rewrite_metrics(run / "metrics.jsonl", metrics)

    net: nn.Module = model
    if d.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)

    label = f"faster-rcnn {structure.name or 'scalenet'}"
    for epoch in range(start_epoch, cfg.epochs):
        loader.sampler.set_epoch(epoch)
        net.train()
        t0 = time.perf_counter()
        sums = dict.fromkeys(("loss",) + LOSS_KEYS, 0.0)
        seen = skipped = 0.0
        bar = _progress(loader, steps_per_epoch, f"{label} epoch {epoch + 1}/{cfg.epochs}", cfg.progress and d.main)
        for step, (images, targets, s) in enumerate(bar):
            skipped += s
            if not images:
                continue
            images = [im.to(d.device, non_blocking=True) for im in images]
            targets = [{k: v.to(d.device) for k, v in t.items()} for t in targets]
            with _autocast(d.device, cfg.amp):
                losses = net(images, targets)
            loss = sum(losses.values())
            optimizer_step(loss, optimizer, scaler, scheduler, where=f"epoch {epoch + 1}, step {step + 1}",
                           kept=_kept(run, epoch), advice=f"lower --lr (now {cfg.lr}) or lengthen --warmup-iters")
            n = len(images)
            sums["loss"] += float(loss.detach()) * n
            for k in LOSS_KEYS:
                sums[k] += float(losses[k].detach()) * n
            seen += n
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{sums['loss'] / seen:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.4g}")
        train_seconds = time.perf_counter() - t0
        reduced = _all_reduce([*sums.values(), seen, skipped], d)
        seen, skipped = reduced[-2], reduced[-1]
        record: dict[str, Any] = {"epoch": epoch + 1}
        record.update({k: v / max(seen, 1) for k, v in zip(sums, reduced)})
        record.update(lr=optimizer.param_groups[0]["lr"], train_seconds=train_seconds,
                      images_per_s=seen / max(train_seconds, 1e-9))
        if skipped:
            record["skipped_images"] = int(skipped)
        improved = False
        if val_dataset is not None:
            stats, _ = evaluate_detector(net, val_dataset, d.device, workers=cfg.workers, progress=cfg.progress, d=d)
            record.update({f"val_{k}": v for k, v in stats.items() if k in ("AP", "AP50", "AP75")})
            improved = stats["AP"] > best_ap
            best_ap = max(best_ap, stats["AP"])
        record["seconds"] = time.perf_counter() - t0
        metrics.append(record)
        if d.main:
            ap = f", val AP {100 * record['val_AP']:.1f}" if "val_AP" in record else ""
            print(f"{label} epoch {epoch + 1}/{cfg.epochs}: loss {record['loss']:.4f}{ap}, "
                  f"{record['images_per_s']:.1f} img/s, {record['seconds']:.1f} s", flush=True)
            ckpt = {
                "format": CHECKPOINT_FORMAT,
                "epoch": epoch + 1,
                **training_state(model, optimizer, scheduler, scaler),
                "detector": {
                    "structure": structure.to_json(),
                    "num_classes": num_classes,
                    "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
                },
                "categories": {str(k): v for k, v in dataset.categories.items()},
                "best_ap": best_ap,
            }
            _append_metrics(run / "metrics.jsonl", record)
            if improved:
                atomic_write(run / "best.pt", lambda f: torch.save(ckpt, f))
            atomic_write(run / "last.pt", lambda f: torch.save(ckpt, f))
        if d.enabled:
            dist.barrier()
    return model, metrics

