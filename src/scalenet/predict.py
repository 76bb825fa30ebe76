"""Classifying images with a trained checkpoint: the top-k class names and probabilities.

The model, its class names and its preprocessing all come from the ``scalenet train``
checkpoint: the evaluation transform of training (resize, centre crop, normalise with the
checkpoint's mean and std; grayscale for one-channel models such as Fashion-MNIST's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn

from .data import IMAGE_EXTENSIONS, image_transforms, read_image
from .training import model_from_checkpoint

__all__ = ["Predictor", "load_predictor", "image_paths", "format_predictions"]


@dataclass
class Predictor:
    model: nn.Module
    classes: list[str]
    transform: Any
    in_chans: int
    device: torch.device

    def read(self, path: str | os.PathLike) -> torch.Tensor | None:
        """The preprocessed image, or None when the file is not a readable image."""
        image = read_image(str(path), mode="L" if self.in_chans == 1 else "RGB")  # 16-bit and float scaled to 8 bits
        return self.transform(image) if image is not None else None

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, topk: int = 5) -> list[list[dict[str, Any]]]:
        """Top-k ``{"class", "index", "prob"}`` per image, most probable first."""
        probs = self.model(images.to(self.device)).float().softmax(1)
        top = probs.topk(min(topk, probs.shape[1]), dim=1)
        return [[{"class": self.classes[i], "index": int(i), "prob": float(p)} for p, i in zip(ps.tolist(), ix.tolist())]
                for ps, ix in zip(top.values, top.indices)]

    def predict(self, paths: Sequence[str | os.PathLike], topk: int = 5, batch_size: int = 32,
                progress: bool = False) -> Iterator[dict[str, Any]]:
        """``{"path", "top"}`` per readable image, in order, and ``{"path", "skipped": True}`` for
        the others (not an image, unreadable)."""
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(paths), desc="predicting", leave=False, dynamic_ncols=True)
        for start in range(0, len(paths), batch_size):
            chunk = [str(p) for p in paths[start : start + batch_size]]
            read = [(p, self.read(p)) for p in chunk]
            good = [(p, x) for p, x in read if x is not None]
            results = dict(zip((p for p, _ in good), self(torch.stack([x for _, x in good]), topk))) if good else {}
            for p, x in read:
                yield {"path": p, "top": results[p]} if x is not None else {"path": p, "skipped": True}
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()


def load_predictor(checkpoint: str | os.PathLike, device: str | torch.device | None = None) -> Predictor:
    """The model of a ``scalenet train`` checkpoint, in eval mode, with its class names and
    evaluation preprocessing."""
    model, ckpt = model_from_checkpoint(checkpoint)
    classes = ckpt.get("classes")
    if not classes or len(classes) != ckpt["num_classes"]:
        raise ValueError(f"{checkpoint} holds no class names; predict needs a checkpoint written by scalenet train")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _, transform = image_transforms(ckpt["image_size"], ckpt["mean"], ckpt["std"])
    return Predictor(model.to(device).eval(), list(classes), transform, ckpt["in_chans"], device)


def image_paths(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files to classify: each file as given, and every image file (by extension) under each
    folder, sorted. Raises one clear error for a path that does not exist or a folder without images."""
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(f for f in item.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ValueError(f"folder {item} has no images ({', '.join(IMAGE_EXTENSIONS[:4])}, ...)")
            out += found
        elif item.is_file():
            out.append(item)
        else:
            raise FileNotFoundError(f"image or folder not found: {item}")
    return out


def format_predictions(records: Sequence[dict[str, Any]]) -> str:
    """An aligned table: a header, then one row per classified image (skipped files are left
    out): the path, then each of its top classes with its probability, most probable first."""
    rows = [r for r in records if not r.get("skipped")]
    k = max((len(r["top"]) for r in rows), default=0)
    header = ["image"] + [h for i in range(1, k + 1) for h in (f"top-{i}", "prob")]
    body = [[str(r["path"])] + [c for t in r["top"] for c in (t["class"], f"{100 * t['prob']:.1f}%")] for r in rows]
    widths = [max(len(line[i]) for line in [header, *body] if i < len(line)) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if h == "prob" else c.ljust(w) for c, w, h in zip(cells, widths, header)).rstrip()

    return "\n".join(fmt(line) for line in [header, *body])
