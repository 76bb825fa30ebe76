"""What the allocation costs on ImageNet-size data: the supernet of the ImageNet layout
(``supernet_structure((3, 4, 6, 3), stem="imagenet", width=64, image_size=224)``, C = planes neurons
per scale) against torchvision's ResNet-50, side by side in one process.

- MACs and parameters (analytic for the supernet, FlopCounterMode for ResNet-50);
- the median training-step time (forward, backward, SGD; channels_last, fp32) over interleaved
  repeats, and its ratio to ResNet-50's;
- the peak memory of two training steps above the built model (on CPU a fresh process each,
  :func:`scalenet.bench.peak_step_memory_mb`; on CUDA the allocator's peak: activations,
  gradients, momentum), and whether the supernet's weights fit the device
  (:func:`scalenet.devices.check_memory`, the constructor's check);
- the default allocation's projected cost (16 supernets of one epoch each) in ResNet-50
  epochs, by the step-time ratio and by the MACs ratio.

    .venv/bin/python benchmarks/seed_cost.py [--batch-size 8] [--repeats 5]
    python benchmarks/seed_cost.py --device cuda --batch-size 64 [--amp]   # on a GPU (gpu.sh)

Writes benchmarks/results/seed-cost-<device>[-b<batch>][-amp].json and .md (or to --out-dir).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torchvision

from scalenet import create_model
from scalenet.allocation import DEFAULT_REPEATS, supernet_structure
from scalenet.bench import _count, _runner, _sync, peak_step_memory_mb
from scalenet.devices import check_memory, device_name, device_slug
from scalenet.fileio import atomic_write_text
from scalenet.timing import interleaved, summarize

SUPERNET = dict(layers=(3, 4, 6, 3), stem="imagenet", width=64, image_size=224)
IMAGENET_TRAIN = 1_281_167


def supernet_network(model=None):
    """The ImageNet layout's supernet (``model`` is ignored: the memory child's variant hook)."""
    return create_model(supernet_structure(SUPERNET["layers"], stem=SUPERNET["stem"], width=SUPERNET["width"],
                                           image_size=SUPERNET["image_size"]))


def _cuda_peak_mb(step, dev: torch.device) -> float:
    """The CUDA allocator's peak over two training steps, above what was allocated before."""
    _sync(dev)
    before = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    step()
    step()
    _sync(dev)
    return (torch.cuda.max_memory_allocated(dev) - before) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--amp", action="store_true", help="fp16 autocast (CUDA only)")
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU is present here; use --device cpu")
    if args.amp and args.device != "cuda":
        ap.error("--amp applies to --device cuda only (the CPU figures are fp32)")
    dev = torch.device(args.device)
    torch.manual_seed(0)
    supernet = supernet_structure(SUPERNET["layers"], stem=SUPERNET["stem"], width=SUPERNET["width"],
                                  image_size=SUPERNET["image_size"])
    check_memory(supernet, device=dev)
    models = {"resnet50": torchvision.models.resnet50(), "supernet": supernet_network()}
    x = torch.randn(args.batch_size, 3, 224, 224, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch_size,), device=dev)
    rows = {"resnet50": dict(zip(("macs", "params"), _count(models["resnet50"], 224))),
            "supernet": {"macs": supernet.macs(224), "params": supernet.params()}}
    # bench's training step (SGD, momentum 0.9), as scalenet bench --train times it
    steps = {k: _runner(m, dev, x, y, train=True, amp_dtype=torch.float16 if args.amp else None, compile=False,
                        cuda_graphs=False, freezing=False, channels_last=True) for k, m in models.items()}
    if dev.type == "cuda":
        for k, step in steps.items():
            rows[k]["peak_step_memory_mb"] = _cuda_peak_mb(step, dev)
    times = summarize(interleaved(steps, args.repeats, warmup=1, sync=lambda: _sync(dev),
                                  progress="training steps"), "resnet50")
    if dev.type == "cpu":
        variant = f"{Path(__file__).resolve()}:supernet_network"
        rows["resnet50"]["peak_step_memory_mb"] = peak_step_memory_mb("resnet50", args.batch_size, 224)
        rows["supernet"]["peak_step_memory_mb"] = peak_step_memory_mb("resnet50", args.batch_size, 224, variant)
    for k in rows:
        rows[k].update(times[k])
    step_ratio = times["supernet"]["median_ms"] / times["resnet50"]["median_ms"]
    macs_ratio = rows["supernet"]["macs"] / rows["resnet50"]["macs"]
    name = device_name(dev)
    result = {
        "device": name, "torch": torch.__version__, "batch_size": args.batch_size, "image_size": 224,
        "precision": "fp16 autocast" if args.amp else "fp32",
        "repeats": args.repeats, "models": rows, "step_time_ratio": step_ratio, "macs_ratio": macs_ratio,
        "default_repeats": DEFAULT_REPEATS, "imagenet_train_images": IMAGENET_TRAIN,
        "allocation_in_resnet50_epochs": {"by_step_time": DEFAULT_REPEATS * step_ratio,
                                          "by_macs": DEFAULT_REPEATS * macs_ratio},
    }
    default = args.device == "cpu" and args.batch_size == 8
    out = args.out_dir / (f"seed-cost-{device_slug(name)}" + ("" if default else f"-b{args.batch_size}")
                          + ("-amp" if args.amp else ""))
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    lines = [f"# Supernet of the ImageNet layout vs ResNet-50 ({name}, batch {args.batch_size}, 224 px, "
             f"channels_last, {result['precision']}, median of {args.repeats} interleaved training steps)", "",
             "| model | MACs | params | step ms | ratio | peak step memory MB |", "|---|---:|---:|---:|---:|---:|"]
    for k, r in rows.items():
        lines.append(f"| {k} | {r['macs'] / 1e9:.2f} G | {r['params'] / 1e6:.1f} M | {r['median_ms']:.0f} | "
                     f"{r['ratio_to_resnet50']:.2f}x | {r['peak_step_memory_mb']:.0f} |")
    e = result["allocation_in_resnet50_epochs"]
    lines += ["", f"{DEFAULT_REPEATS} supernets of one epoch each = {e['by_step_time']:.1f} ResNet-50 epochs by "
                  f"step time ({e['by_macs']:.1f} by MACs)."]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
