"""Two more exact rewrites of the fused SA block, measured eager and under torch.compile.

- ``pad8``: every branch conv gets zero filters up to a multiple of 8 output channels (AVX2
  blocks by 8 floats; an isolated 3x3 conv 64->59 was slower than 64->64 here), and the
  concatenation takes only the real channels.
- ``split``: the 1x1 conv after the concatenation runs per nearest pooled branch at the
  branch's resolution (exact for nearest: conv3(cat(up(b))) = sum up(W_b b)), and those terms
  are added to the shortcut before the remaining full-resolution conv3 (x1 and bilinear
  branches), whose residual add inductor fuses into the conv. It saves 0.27 of ScaleNet-50's
  3.82 GMACs per image and drops the pooled branches from the concatenation, but adds a
  full-resolution map of 4x-planes channels per block.

Fused ScaleNet-50, batch 16, 224x224, channels_last, fp32, one process, interleaved repeats,
ratio to torchvision ResNet-50 measured alongside. Compiled runs use inductor with freezing.
The difference column compares each model's output with the fused model's, run eagerly
before any model is converted to channels_last (so the fused row shows the rounding of the
layout change and compilation alone).

    python benchmarks/compiled_rewrites.py [--repeats 10] [--mode eager|compile]

Appends to benchmarks/results/compiled-rewrites-<device>.md. The committed results were
measured at commit b56908c, before ``fuse`` ran its convs as oneDNN fused primitives in eager
mode (the compiled rows are unaffected: compiled models take the plain ops).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import torch._inductor.config as inductor_config
import torch.nn.functional as F
import torchvision
from torch import nn

from scalenet import create_model, fuse
from scalenet.devices import device_name, device_slug
from scalenet.fuse import FusedSABottleneck
from scalenet.models.scalenet import branch_input, replicates, upsample_to
from scalenet.timing import interleaved, summarize


@torch.no_grad()
def _padded(conv: nn.Conv2d, extra: int) -> nn.Conv2d:
    new = nn.Conv2d(conv.in_channels, conv.out_channels + extra, conv.kernel_size, padding=conv.padding, bias=True)
    new.weight.zero_()
    new.bias.zero_()
    new.weight[: conv.out_channels] = conv.weight
    new.bias[: conv.out_channels] = conv.bias
    return new


class RewrittenBlock(nn.Module):
    """A :class:`~scalenet.fuse.FusedSABottleneck` at a fixed input side, with ``pad8`` and/or ``split``."""

    def __init__(self, block: FusedSABottleneck, side: int, pad8: bool, split: bool):
        super().__init__()
        self.pool, self.conv1, self.downsample = block.pool, block.conv1, block.downsample
        self.conv2, self.conv3_low = nn.ModuleDict(), nn.ModuleDict()
        self.branches: list[tuple[str, int, int, str]] = []
        columns, start = [], 0
        for key, conv in block.conv2.items():
            scale, c = block.scales[int(key)], conv.out_channels
            pooled = side // scale
            kind = "full" if scale == 1 else "nearest" if replicates([pooled, pooled], [side, side]) else "bilinear"
            extra = (-c) % 8 if pad8 else 0
            self.conv2[key] = _padded(conv, extra)
            w = block.conv3.weight[:, start : start + c]
            start += c
            if split and kind == "nearest":
                low = nn.Conv2d(c + extra, block.conv3.out_channels, 1, bias=False)
                with torch.no_grad():
                    low.weight.zero_()
                    low.weight[:, :c] = w
                self.conv3_low[key] = low
                kind = "split"
            else:
                columns.append(w)
            self.branches.append((key, scale, c, kind))
        self.conv3 = nn.Conv2d(sum(w.shape[1] for w in columns), block.conv3.out_channels, 1)
        with torch.no_grad():
            self.conv3.weight.copy_(torch.cat(columns, 1))
            self.conv3.bias.copy_(block.conv3.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        residual = x if self.downsample is None else self.downsample(x)
        a = self.conv1(x)  # a FusedConv2d: conv + ReLU
        h, w = a.shape[-2:]
        pooled, full = {1: a}, []
        for key, scale, c, kind in self.branches:
            p, _ = branch_input(a, pooled, scale)
            conv = self.conv2[key]
            if kind == "full":
                full.append(F.relu(conv(p))[:, :c])
            elif kind == "bilinear":
                full.append(F.relu(upsample_to(conv(p)[:, :c], (h, w))))
            elif kind == "nearest":
                full.append(F.interpolate(F.relu(conv(p))[:, :c], size=(h, w), mode="nearest"))
            else:
                residual = residual + F.interpolate(self.conv3_low[key](F.relu(conv(p))), size=(h, w), mode="nearest")
        out = self.conv3(torch.cat(full, 1) if len(full) > 1 else full[0])
        return F.relu(out + residual)


def rewritten(fused: nn.Module, pad8: bool, split: bool, image_size: int = 224) -> nn.Module:
    model = copy.deepcopy(fused)
    side = image_size // 4
    for i, name in enumerate(model.stage_names):
        stage = getattr(model, name)
        side = side if i == 0 else side // 2
        for j in range(len(stage)):
            stage[j] = RewrittenBlock(stage[j], side, pad8, split)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--mode", choices=("eager", "compile"), default="compile")
    args = ap.parse_args()
    inductor_config.freezing = True
    torch.manual_seed(0)
    x = torch.randn(16, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    fused = fuse(create_model("scalenet50"))
    models = {"resnet50": torchvision.models.resnet50().eval(), "scalenet50 (fused)": fused}
    for pad8, split in ((True, False), (False, True), (True, True)):
        models[f"scalenet50 (fused){' + pad8' if pad8 else ''}{' + split' if split else ''}"] = rewritten(fused, pad8, split)
    runners, diffs = {}, {}
    with torch.no_grad():
        reference = fused(x)
        for name, model in models.items():
            model = model.eval().to(memory_format=torch.channels_last)
            net = torch.compile(model) if args.mode == "compile" else model
            y = net(x)
            net(x)
            if name != "resnet50":
                diffs[name] = ((y - reference).abs().max() / reference.abs().max()).item()
            runners[name] = net
        times = summarize(interleaved(runners, args.repeats, warmup=0), "resnet50")
    lines = [
        f"{args.mode}{' (inductor, freezing)' if args.mode == 'compile' else ''} on {device_name(torch.device('cpu'))}, "
        f"batch 16, 224x224, fp32, channels_last, median of {args.repeats} interleaved repeats",
        "",
        "| model | median ms | vs ResNet-50 | max rel. diff to fused |",
        "|---|---:|---:|---:|",
    ]
    for name, t in times.items():
        diff = f"{diffs[name]:.1e}" if name in diffs else ""
        lines.append(f"| {name} | {t['median_ms']:.0f} | {t['ratio_to_resnet50']:.3f}x | {diff} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).resolve().parent / "results" / f"compiled-rewrites-{device_slug(device_name(torch.device('cpu')))}.md"
    with open(out, "a") as f:  # one section per mode
        f.write(("\n" if out.exists() and out.stat().st_size else "") + text)
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
