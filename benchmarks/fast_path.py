"""Measures each exact rewrite of the SA block on this machine, in one process.

Training step (forward + backward + SGD) and eval-mode inference, batch 16, 224x224,
channels_last, eager, median of interleaved repeats, against torchvision's ResNet-50:

- ``paper``: the straightforward formulation (pool, conv, upsample, BN, concat, ReLU);
- ``+ low-res BN/ReLU``: BN and ReLU before each exact nearest upsampling (train and eval);
- ``+ pooled-map reuse``: x4 pooled from the x2 branch's pooled map (the full fast path).

    python benchmarks/fast_path.py [--repeats 30] [--batch-size 16]

Writes benchmarks/results/fast-path-<device>.json and .md. Inference runs the eval-mode
models (BNs not folded). The first two forms exist only here: the library ships the third.
The committed results (commit c2db467) ran the inference column on fused models, when
``fuse`` still kept a switch for the forms; the three rows agreed within noise there.
"""

from __future__ import annotations

import argparse
import copy
import json
import types
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import scalenet.models.scalenet as sa
from scalenet import create_model
from scalenet.bench import peak_step_memory_mb
from scalenet.devices import device_name, device_slug
from scalenet.fileio import atomic_write_text
from scalenet.timing import interleaved, summarize


def _paper_aggregate(block: sa.SABottleneck, x: torch.Tensor) -> torch.Tensor:
    """The straightforward form: pool, conv, upsample, BN, concatenate, ReLU."""
    size = [x.shape[-2], x.shape[-1]]
    branches = []
    for (key, conv), scale in zip(block.conv2.items(), block.branch_scales):
        y = conv(x) if scale == 1 else sa.upsample_to(conv(F.max_pool2d(x, scale, scale)), size)
        branches.append(block.bn2[key](y))
    return F.relu(torch.cat(branches, dim=1))


def _direct_branch_input(x: torch.Tensor, pooled, scale: int):
    return sa.branch_input(x, {1: x}, scale)  # pools the block input, whatever was pooled before


def _aggregate_without_reuse(block: sa.SABottleneck, x: torch.Tensor) -> torch.Tensor:
    """The library's block with every pooled map pooled from the input (no x4-from-x2 reuse)."""
    shipped = sa.branch_input
    sa.branch_input = _direct_branch_input
    try:
        return sa.SABottleneck.aggregate(block, x)
    finally:
        sa.branch_input = shipped


def _with_aggregate(model: nn.Module, aggregate) -> nn.Module:
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, sa.SABottleneck):
            m.aggregate = types.MethodType(aggregate, m)
    return model


def paper_form(model: nn.Module) -> nn.Module:
    return _with_aggregate(model, _paper_aggregate)


VARIANTS = {
    "paper": paper_form,
    "+ low-res BN/ReLU": lambda model: _with_aggregate(model, _aggregate_without_reuse),
    "+ pooled-map reuse": copy.deepcopy,  # the library's block
}


def measure(train: bool, batch_size: int, repeats: int) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    x = torch.randn(batch_size, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch_size,))
    base = create_model("scalenet50")
    models = {"resnet50": torchvision.models.resnet50()}
    for name, make in VARIANTS.items():
        models[f"scalenet50 {name}"] = make(base)
    runners = {}
    for name, model in models.items():
        model = model.to(memory_format=torch.channels_last)
        if train:
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

            def run(model=model, opt=opt):
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        else:
            model.eval()

            def run(model=model):
                with torch.inference_mode():
                    model(x)
        runners[name] = run
    times = interleaved(runners, repeats, warmup=1, progress="train" if train else "inference")
    return summarize(times, "resnet50")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--no-memory", action="store_true")
    args = ap.parse_args()
    result = {"device": device_name(torch.device("cpu")), "torch": torch.__version__, "batch_size": args.batch_size,
              "repeats": args.repeats, "layout": "channels_last", "mode": "eager, fp32"}
    result["train"] = measure(True, args.batch_size, args.repeats)
    result["inference (eval)"] = measure(False, args.batch_size, args.repeats)
    if not args.no_memory:
        result["train_peak_mb"] = {
            "resnet50": peak_step_memory_mb("resnet50", args.batch_size),
            "scalenet50 paper": peak_step_memory_mb("scalenet50", args.batch_size, variant=f"{__file__}:paper_form"),
            "scalenet50 + pooled-map reuse": peak_step_memory_mb("scalenet50", args.batch_size),
        }
    lines = [f"SA-block rewrites on {result['device']}, batch {args.batch_size}, 224x224, channels_last, eager fp32, "
             f"median of {args.repeats} interleaved repeats (`python benchmarks/fast_path.py`)", "",
             "| model | train step ms | vs ResNet-50 | eval inference ms | vs ResNet-50 |", "|---|---:|---:|---:|---:|"]
    for name in result["train"]:
        t, i = result["train"][name], result["inference (eval)"][name]
        lines.append(f"| {name} | {t['median_ms']:.0f} | {t['ratio_to_resnet50']:.3f}x | {i['median_ms']:.0f} | "
                     f"{i['ratio_to_resnet50']:.3f}x |")
    if "train_peak_mb" in result:
        lines += ["", "Peak memory of a training step above the built model (RSS, one fresh process each):", ""]
        lines += [f"- {k}: {v:.0f} MB" for k, v in result["train_peak_mb"].items()]
    slug = device_slug(result["device"])
    out = Path(__file__).parent / "results"
    atomic_write_text(out / f"fast-path-{slug}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / f"fast-path-{slug}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
