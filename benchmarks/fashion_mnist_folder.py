"""Writes a 224-px ImageFolder (train/ and val/, one folder per class, RGB JPEG) from the
Fashion-MNIST IDX files: a stand-in for an ImageNet-layout data set on a machine without one
(the 28-px images are upsampled bicubically, so it has ImageNet's input size, not its content).

    python benchmarks/fashion_mnist_folder.py OUT_DIR [--train-per-class 100] [--val-per-class 20]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from scalenet.data import _find_idx, _read_idx  # noqa: E402

ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def write(images: np.ndarray, labels: np.ndarray, out: Path, per_class: int, size: int) -> int:
    n = 0
    for k, name in enumerate(CLASSES):
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(labels == k)[:per_class]:
            img = Image.fromarray(images[i]).resize((size, size), Image.BICUBIC).convert("RGB")
            img.save(out / name / f"{i:05d}.jpg", quality=90)
            n += 1
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--val-per-class", type=int, default=20)
    p.add_argument("--size", type=int, default=224)
    a = p.parse_args()
    out = Path(a.out)
    for split, stem, per_class in (("train", "train", a.train_per_class), ("val", "t10k", a.val_per_class)):
        images = _read_idx(_find_idx(ROOT, f"{stem}-images-idx3-ubyte"))
        labels = _read_idx(_find_idx(ROOT, f"{stem}-labels-idx1-ubyte"))
        print(f"{split}: {write(images, labels, out / split, per_class, a.size)} images")


if __name__ == "__main__":
    main()
