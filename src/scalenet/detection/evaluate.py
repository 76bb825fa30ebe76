"""COCO evaluation with pycocotools: mAP@[.5:.95], AP50, AP75, the size breakdown and recalls."""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, Iterable

import torch

from ..compat import require
from torch import nn

__all__ = ["STAT_NAMES", "predict", "coco_evaluate", "format_coco_table"]

#: The twelve numbers of ``COCOeval.stats``, in order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_LINES = (
    ("Average Precision", "(AP)", "0.50:0.95", "all", 100),
    ("Average Precision", "(AP)", "0.50", "all", 100),
    ("Average Precision", "(AP)", "0.75", "all", 100),
    ("Average Precision", "(AP)", "0.50:0.95", "small", 100),
    ("Average Precision", "(AP)", "0.50:0.95", "medium", 100),
    ("Average Precision", "(AP)", "0.50:0.95", "large", 100),
    ("Average Recall", "(AR)", "0.50:0.95", "all", 1),
    ("Average Recall", "(AR)", "0.50:0.95", "all", 10),
    ("Average Recall", "(AR)", "0.50:0.95", "all", 100),
    ("Average Recall", "(AR)", "0.50:0.95", "small", 100),
    ("Average Recall", "(AR)", "0.50:0.95", "medium", 100),
    ("Average Recall", "(AR)", "0.50:0.95", "large", 100),
)


def _pycocotools():
    coco = require("pycocotools.coco", "COCO evaluation")
    return coco.COCO, require("pycocotools.cocoeval", "COCO evaluation").COCOeval


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, device: torch.device, *, progress=None) -> tuple[list[dict[str, Any]], int]:
    """Runs the detector over ``loader``; returns COCO result entries (xywh boxes in the original
    image's pixels) and the number of unreadable images skipped."""
    model.eval()
    results: list[dict[str, Any]] = []
    skipped = 0
    for images, targets, s in progress(loader) if progress else loader:
        skipped += s
        if not images:
            continue
        outputs = model([im.to(device, non_blocking=True) for im in images])
        for target, out in zip(targets, outputs):
            boxes = out["boxes"].float().cpu()
            boxes[:, 2:] -= boxes[:, :2]
            image_id = int(target["image_id"])
            for box, score, label in zip(boxes.tolist(), out["scores"].tolist(), out["labels"].tolist()):
                results.append({"image_id": image_id, "category_id": int(label),
                                "bbox": [round(v, 2) for v in box], "score": round(float(score), 5)})
    return results, skipped


def coco_evaluate(coco_json: dict[str, Any], annotations: list[dict[str, Any]], results: list[dict[str, Any]],
                  image_ids: list[int] | None = None) -> dict[str, float]:
    """The twelve COCO box metrics (fractions) of ``results`` against ``annotations``.

    ``coco_json`` provides the images and categories; ``annotations`` are the ground-truth
    entries to compare against (the data set's valid ones). With no detections at all every
    metric is 0.
    """
    COCO, COCOeval = _pycocotools()
    gt = COCO()
    gt.dataset = {
        "images": copy.deepcopy(coco_json["images"]),
        "categories": copy.deepcopy(coco_json["categories"]),
        "annotations": [dict(a, id=i + 1) for i, a in enumerate(annotations)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    if not results:
        return {name: 0.0 for name in STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(gt, dt, iouType="bbox")
        if image_ids is not None:
            ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}


def format_coco_table(stats: dict[str, float]) -> str:
    """The twelve lines ``COCOeval.summarize()`` prints, from a stats dict."""
    lines = []
    for (title, kind, iou, area, dets), name in zip(_LINES, STAT_NAMES):
        lines.append(f" {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6s} | maxDets={dets:>3d} ] = {stats[name]:0.3f}")
    return "\n".join(lines)
