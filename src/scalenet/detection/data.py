"""COCO-format detection data: an annotation JSON plus an image folder.

The JSON is checked when the data set is built, so a wrong path or a broken file fails
before any training with one clear line. Individual bad annotations (a box of zero or
negative size, an unknown category) are skipped and counted; crowd regions are not
trained on but stay in the evaluation ground truth, as in COCO.

Labels are the raw category ids (COCO: 1-90, so ``num_classes=91`` with the background).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..data import make_loader, sample_key, sample_rng
from ..fileio import read_json

__all__ = ["CocoDetection", "detection_collate", "detection_loader", "read_coco_json", "validation_set"]

_MAX_LISTED = 3


def read_coco_json(path: str | os.PathLike) -> dict[str, Any]:
    """Reads and checks a COCO annotation file; raises FileNotFoundError/ValueError with one line."""
    p = Path(path)
    data = read_json(p, "annotation file", "the COCO instances JSON (--coco-json)")
    if not isinstance(data, dict):
        raise ValueError(f"{p}: not a COCO annotation file (top level is a {type(data).__name__}, expected an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{p}: not a COCO annotation file (no {key!r} list)")
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not {"id", "file_name"} <= img.keys():
            raise ValueError(f"{p}: images[{i}] needs an 'id' and a 'file_name'")
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or cat["id"] < 1:
            raise ValueError(f"{p}: categories[{i}] needs a positive integer 'id' (0 is the background)")
    if not data["images"]:
        raise ValueError(f"{p} lists no images")
    if not data["categories"]:
        raise ValueError(f"{p} lists no categories")
    return data


@dataclass
class Skipped:
    """Annotations left out of training, by reason."""

    counts: Counter = field(default_factory=Counter)

    def __bool__(self) -> bool:
        return bool(sum(self.counts.values()))

    def describe(self) -> str:
        return ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))


class CocoDetection(Dataset):
    """Images and targets (``boxes`` xyxy float, ``labels`` int64, ``image_id``) from a COCO JSON.

    Args:
        annotation_file: the instances JSON.
        image_dir: the folder its ``file_name`` entries are relative to.
        train: random horizontal flips (the usual Faster R-CNN augmentation).
    """

    def __init__(self, annotation_file: str | os.PathLike, image_dir: str | os.PathLike, *, train: bool = False):
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        self.train = train
        self.coco = read_coco_json(self.annotation_file)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_dir}; give the folder of the JSON's images with --images")
        self.images = sorted(self.coco["images"], key=lambda im: im["id"])
        missing = [im["file_name"] for im in self.images if not (self.image_dir / im["file_name"]).is_file()]
        if missing:
            shown = ", ".join(missing[:_MAX_LISTED]) + (", ..." if len(missing) > _MAX_LISTED else "")
            raise FileNotFoundError(
                f"{len(missing)} of {len(self.images)} images listed in {self.annotation_file.name} are not in "
                f"{self.image_dir} ({shown}); check --images"
            )
        self.categories = {c["id"]: c.get("name", str(c["id"])) for c in self.coco["categories"]}
        image_ids = {im["id"] for im in self.images}
        self.skipped = Skipped()
        self.targets: dict[int, list[dict[str, Any]]] = {i: [] for i in image_ids}
        #: the annotations the evaluation compares against (valid boxes, crowd included)
        self.valid_annotations: list[dict[str, Any]] = []
        for ann in self.coco["annotations"]:
            reason = self._problem(ann, image_ids)
            if reason:
                self.skipped.counts[reason] += 1
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            ann = dict(ann, area=float(ann.get("area", w * h)), iscrowd=int(ann.get("iscrowd", 0)))
            self.valid_annotations.append(ann)
            if not ann["iscrowd"]:
                self.targets[ann["image_id"]].append(ann)

    def _problem(self, ann: Any, image_ids: set[int]) -> str | None:
        if not isinstance(ann, dict) or not {"image_id", "bbox", "category_id"} <= ann.keys():
            return "annotations without image_id/bbox/category_id"
        if ann["image_id"] not in image_ids:
            return "annotations of unlisted images"
        if ann["category_id"] not in self.categories:
            return "annotations of unknown categories"
        box = ann["bbox"]
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
            return "annotations with a malformed bbox"
        if not (box[2] > 0 and box[3] > 0):
            return "boxes with non-positive size"
        return None

    @property
    def num_classes(self) -> int:
        """Outputs of the classifier: the largest category id plus the background."""
        return max(self.categories) + 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        index, seed = sample_key(key)  # training: (index, seed of its flip), see ShardSampler
        info = self.images[index]
        try:
            with Image.open(self.image_dir / info["file_name"]) as f:
                pixels = np.asarray(f.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError):
            return None  # unreadable: skipped and counted by the collate
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255)
        height, width = image.shape[-2:]
        boxes = torch.tensor([a["bbox"] for a in self.targets[info["id"]]], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        labels = torch.tensor([a["category_id"] for a in self.targets[info["id"]]], dtype=torch.int64)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # boxes wholly outside the image
        boxes, labels = boxes[keep], labels[keep]
        with sample_rng(seed):
            flip = self.train and bool(torch.rand(()) < 0.5)
        if flip:
            image = image.flip(-1)
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        return image, {"boxes": boxes, "labels": labels, "image_id": torch.tensor(info["id"])}


def detection_collate(batch: list) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]], int]:
    """Images and targets as lists (sizes differ); the third item counts unreadable images."""
    good = [b for b in batch if b is not None]
    return [b[0] for b in good], [b[1] for b in good], len(batch) - len(good)


def detection_loader(
    dataset: CocoDetection, batch_size: int, *, shuffle: bool, workers: int = 0, seed: int = 0, rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A loader over this rank's shard (seeded shuffle per epoch when training)."""
    return make_loader(dataset, batch_size, train=shuffle, collate_fn=detection_collate, workers=workers, seed=seed,
                       rank=rank, world_size=world_size)


def validation_set(annotation_file: str | os.PathLike | None, image_dir: str | os.PathLike | None
                   ) -> CocoDetection | None:
    """The set evaluated after every epoch: an annotation file with its image folder, or neither."""
    if (annotation_file is None) != (image_dir is None):
        raise ValueError("give --val-json and --val-images together (or neither)")
    return CocoDetection(annotation_file, image_dir) if annotation_file is not None else None
