"""``scalenet detect-train`` and ``detect-eval``: Faster R-CNN + FPN with a ScaleNet backbone."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..detection import CocoDetection, DetectConfig, evaluate_detector_checkpoint, format_coco_table, train_detector, \
    validation_set
from ..training import is_main_process
from .options import add_fault_tolerance_arguments, add_force, config_from, default, fraction, int_list, nonneg_int, \
    positive_int

__all__ = ["COMMANDS"]


def add_detect_train_arguments(p: argparse.ArgumentParser) -> None:
    d = lambda name: default(DetectConfig, name)  # noqa: E731
    p.add_argument("--coco-json", required=True, metavar="PATH", help="COCO instances annotation JSON")
    p.add_argument("--images", required=True, metavar="DIR", help="the folder the JSON's file_name entries are in")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory: last.pt/best.pt, metrics.jsonl")
    p.add_argument("--backbone", default=None, metavar="NAME|PATH", help=f"published name or structure JSON (default {d('backbone')})")
    p.add_argument("--backbone-checkpoint", default=None, metavar="PATH",
                   help="ImageNet weights: a scalenet train checkpoint, .safetensors, or the release's .pth")
    p.add_argument("--epochs", type=positive_int, default=None, help=f"default {d('epochs')} (the 1x schedule)")
    p.add_argument("--batch-size", type=positive_int, default=None, help=f"images per process (default {d('batch_size')})")
    p.add_argument("--lr", type=float, default=None, help=f"default {d('lr')} (for 16 images per step in all)")
    p.add_argument("--wd", type=float, default=None, help=f"default {d('wd')}")
    p.add_argument("--momentum", type=float, default=None, help=f"default {d('momentum')}")
    p.add_argument("--lr-steps", type=int_list, default=None,
                   help=f"epochs after which the LR drops 10x (default {','.join(map(str, d('lr_steps')))})")
    p.add_argument("--warmup-iters", type=int, default=None, help=f"linear warmup iterations (default {d('warmup_iters')})")
    p.add_argument("--min-size", type=positive_int, default=None, help=f"shorter image side (default {d('min_size')}, the paper's)")
    p.add_argument("--max-size", type=positive_int, default=None, help=f"longer side cap (default {d('max_size')}, the paper's)")
    p.add_argument("--trainable-layers", type=int, choices=range(6), default=None,
                   help=f"stages trained, from the top (default {d('trainable_layers')})")
    p.add_argument("--norm", choices=["frozen", "bn"], default=None, help=f"backbone BN: frozen or trained (default {d('norm')})")
    p.add_argument("--fpn-channels", type=positive_int, default=None, help=f"FPN width (default {d('fpn_channels')})")
    p.add_argument("--val-json", default=None, metavar="PATH", help="evaluate on this set after every epoch (best.pt by AP)")
    p.add_argument("--val-images", default=None, metavar="DIR")
    p.add_argument("--amp", action="store_true", help="mixed precision (fp16 on CUDA)")
    p.add_argument("--workers", type=nonneg_int, default=None, help=f"data-loading processes (default {d('workers')})")
    p.add_argument("--seed", type=int, default=None, help=f"default {d('seed')}")
    add_fault_tolerance_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_detect_train(args: argparse.Namespace) -> int:
    lr_steps = {"lr_steps": tuple(args.lr_steps)} if args.lr_steps is not None else {}
    cfg = config_from(DetectConfig, args, exclude=("lr_steps",), amp=args.amp, progress=not args.no_progress, **lr_steps)
    cfg.check()
    val = validation_set(args.val_json, args.val_images)
    dataset = CocoDetection(args.coco_json, args.images, train=True)
    _, metrics = train_detector(dataset, cfg, args.out, resume=args.resume, val_dataset=val)
    if metrics and is_main_process():
        last = metrics[-1]
        ap = f", val AP {100 * last['val_AP']:.1f}" if "val_AP" in last else ""
        print(f"faster-rcnn {cfg.backbone}: loss {last['loss']:.4f} after epoch {last['epoch']}{ap}; run in {args.out}")
    return 0


def add_detect_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="last.pt/best.pt written by scalenet detect-train")
    p.add_argument("--coco-json", required=True, metavar="PATH")
    p.add_argument("--images", required=True, metavar="DIR")
    p.add_argument("--batch-size", type=positive_int, default=1,
                   help="images per step (default 1: larger batches pad images to a common size, which moves scores slightly)")
    p.add_argument("--workers", type=nonneg_int, default=0, help="data-loading processes (default 0)")
    p.add_argument("--save", default=None, metavar="PATH", help="metrics JSON (default: eval-<json name>.json beside the checkpoint)")
    p.add_argument("--detections", default=None, metavar="PATH", help="also write the detections in COCO results format")
    add_force(p, "the metrics JSON and the detections file")
    p.add_argument("--score-thresh", type=fraction, default=0.05, help="drop detections scoring below this (default 0.05)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_detect_eval(args: argparse.Namespace) -> int:
    report = evaluate_detector_checkpoint(
        args.checkpoint, args.coco_json, args.images, save=args.save, detections=args.detections,
        score_thresh=args.score_thresh, batch_size=args.batch_size, workers=args.workers, force=args.force,
        progress=not args.no_progress and not args.json,
    )
    if report is None:  # not rank 0
        return 0
    if report["skipped"]:
        print(f"note: {Path(args.coco_json).name}: skipped {report['skipped']}", file=sys.stderr)
    saved = report.pop("saved")
    report.pop("skipped")
    if args.json:
        print(json.dumps(report))
    else:
        print(format_coco_table(report))
        print(f"\n{report['images']} images, {report['detections']} detections; written: {saved}")
    return 0


COMMANDS = {
    "detect-train": ("Faster R-CNN + FPN with a ScaleNet backbone on a COCO-format set (torchrun for DDP)",
                     add_detect_train_arguments, cmd_detect_train),
    "detect-eval": ("COCO box metrics of a detect-train checkpoint (pycocotools)", add_detect_eval_arguments,
                    cmd_detect_eval),
}
