"""Small synthetic data for tests: image folders written to a temp directory."""

from pathlib import Path

import numpy as np
from PIL import Image

from scalenet import Structure


def make_image_folder(root: Path, classes: int = 3, per_class: int = 10, size: int = 16, layout: str = "flat",
                      seed: int = 0) -> Path:
    """Noise images whose mean colour depends on the class, so a network can learn them."""
    rng = np.random.default_rng(seed)
    splits = {"flat": [root], "train_val": [root / "train", root / "val"]}[layout]
    for split in splits:
        for c in range(classes):
            d = split / f"class_{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = np.zeros(3)
                base[c % 3] = 160
                pixels = np.clip(rng.normal(base + 40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.png")
    return root


def tiny_structure(image_size: int = 16, name: str = "tiny") -> Structure:
    return Structure.from_channels(
        [[4, 2, 1, 1], [3, 2, 2, 0]], layers=(1, 1), stem="small", width=4, image_size=image_size, name=name
    )
