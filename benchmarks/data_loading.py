"""Images per second of the ImageFolder training pipeline at ImageNet size: JPEG decode,
RandomResizedCrop(224) and flip, normalised batches, with 0, 1 and 2 loader workers.

Three decoders, as ``scalenet train`` builds them (``scalenet.data.build_data``):
- ``pil``: PIL decode, crop and flip on the PIL image, ``ToTensor`` + ``Normalize`` (float batches);
- ``torchvision``: ``torchvision.io.decode_image`` into a uint8 tensor, crop and flip on it,
  then float conversion and normalisation (``--decode torchvision``; deprecated from
  torchvision 0.29, so its warning is silenced here);
- ``torchcodec``: TorchCodec's ``decode_image``, then the same tensor transforms
  (``--decode torchcodec``, the ``scalenet[torchcodec]`` extra; left out where not installed).

The images are synthetic JPEGs of ImageNet's typical size (500x375, quality 90, about
80-110 KB: smooth structure plus noise, so that they compress like photographs). Every
configuration reads the same images; rounds are interleaved; the figure is the median of
the rounds' images per second (one round: one pass over the folder, workers started before
the round, as with persistent workers).

    .venv/bin/python benchmarks/data_loading.py [--images 256] [--rounds 5] [--batch-size 32]

Writes benchmarks/results/data-loading-<device>.json and .md.
"""

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from scalenet.devices import device_name, device_slug
from scalenet.data import DECODERS, build_data
from scalenet.fileio import atomic_write_text


def make_jpegs(root: Path, n: int, size=(500, 375), seed: int = 0) -> float:
    """``n`` JPEGs in two class folders; returns their mean size in KB."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    total = 0
    for i in range(n):
        folder = root / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.uniform(0, 255, (h // 25 + 1, w // 25 + 1, 3)).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        total += path.stat().st_size
    return total / n / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", default="0,1,2")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="The image decoding", category=DeprecationWarning)
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        kb = make_jpegs(Path(tmp), args.images)
        loaders = {}
        for decode in [d for d in DECODERS if d != "torchcodec" or importlib.util.find_spec("torchcodec")]:
            data = build_data(tmp, image_size=224, decode=decode)
            for w in workers:
                loaders[f"{decode}, {w} worker{'s' if w != 1 else ''}"] = data.loader("train", args.batch_size, workers=w)

        def one_pass(loader):
            images = 0
            for batch in loader:
                images += len(batch[1])
            return images

        rates: dict[str, list[float]] = {k: [] for k in loaders}
        for k, loader in loaders.items():  # warm-up: starts the persistent workers
            one_pass(loader)
        for r in range(args.rounds):
            for k, loader in loaders.items():
                loader.sampler.set_epoch(r + 1)
                t = time.perf_counter()
                n = one_pass(loader)
                rates[k].append(n / (time.perf_counter() - t))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()), flush=True)
        del loaders
    cpu = device_name(torch.device("cpu"))
    base = statistics.median(rates[f"pil, {workers[0]} worker{'s' if workers[0] != 1 else ''}"])
    rows = {k: {"images_per_s": statistics.median(v), "ratio_to_pil_0_workers": statistics.median(v) / base,
                "rounds": v} for k, v in rates.items()}
    result = {
        "what": "ImageFolder training pipeline at 224 px (decode, RandomResizedCrop, flip, normalise), images per second",
        "device": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "images": args.images, "mean_jpeg_kb": kb, "image_size": [500, 375], "batch_size": args.batch_size,
        "rounds": args.rounds, "results": rows,
    }
    out = Path(__file__).resolve().parent / "results" / f"data-loading-{device_slug(cpu)}"
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    lines = [f"# ImageFolder loading throughput, {cpu}", "",
             f"{args.images} synthetic 500x375 JPEGs ({kb:.0f} KB on average), RandomResizedCrop(224) + flip + "
             f"normalise, batch {args.batch_size}, median of {args.rounds} interleaved passes; torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads. `.venv/bin/python benchmarks/data_loading.py`", "",
             "| decoder, loader workers | images/s | vs PIL, 0 workers |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['images_per_s']:.0f} | {v['ratio_to_pil_0_workers']:.2f}x |" for k, v in rows.items()]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
