"""Times `scalenet allocate` on an ImageFolder of 600 32x32 images with 5 seed epochs
(the allocation issue's performance figure). Writes benchmarks/results/allocate-<cpu>.json.

    .venv/bin/python benchmarks/allocate_speed.py
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from scalenet.bench import device_name, device_slug


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        rng = np.random.default_rng(0)
        for c in range(6):  # 6 classes x 100 images
            d = root / f"class_{c}"
            d.mkdir(parents=True)
            for i in range(100):
                pixels = np.clip(rng.normal(60 + 25 * c, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.png")
        out = Path(tmp) / "structure.json"
        cmd = [sys.executable, "-m", "scalenet", "allocate", "--data", str(root), "--out", str(out), "--epochs", "5",
               "--no-progress"]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - t
    cpu = device_name(torch.device("cpu"))
    result = {
        "what": "scalenet allocate, ImageFolder of 600 32x32 images (6 classes), 5 seed epochs, defaults otherwise",
        "seconds_wall_including_startup": round(seconds, 1),
        "device": f"CPU: {cpu}",
        "torch": torch.__version__,
    }
    slug = device_slug(cpu)
    path = Path(__file__).parent / "results" / f"allocate-{slug}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
