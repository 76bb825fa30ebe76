"""Measures the one exact rewrite the fast path leaves out: running the 1x1 conv after the
concatenation per branch, at the branch's low resolution, then upsampling and summing.

For nearest branches ``conv3(cat(up(b_i))) = sum_i up(W_i b_i)``, so the conv's pooled-branch
MACs shrink by s^2; but every pooled branch then needs an upsampled, full-resolution map of
``out_channels`` (4x planes) and an add, where the concatenation wrote only ``C_i`` channels.
Blocks of stages 1 and 2 of a fused ScaleNet-50 (every branch nearest there), batch 16,
channels_last, eager, median of 15 interleaved repeats.

    python benchmarks/conv3_per_branch.py

Both forms use plain ops (``F.conv2d``, ``F.relu``).
"""

import torch
import torch.nn.functional as F

from scalenet import create_model, fuse
from scalenet.devices import device_name
from scalenet.timing import interleaved, summarize


def main() -> None:
    torch.manual_seed(0)
    model = fuse(create_model("scalenet50")).eval()
    print(f"{device_name(torch.device('cpu'))}, batch 16, channels_last, eager fp32, median of 15 interleaved repeats\n")
    print("| block | side | concat then conv3 (ms) | conv3 per branch (ms) | ratio | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|")
    for stage, side in (("layer1", 56), ("layer2", 28)):
        blk = getattr(model, stage)[1]
        x = torch.relu(torch.randn(16, blk.conv1.out_channels, side, side)).contiguous(memory_format=torch.channels_last)
        weight, bias = blk.conv3.weight, blk.conv3.bias

        def branch(key, conv):  # a folded branch conv and its ReLU, at the branch's resolution, plain ops
            s = blk.scales[int(key)]
            return s, F.relu(F.conv2d(F.max_pool2d(x, s, s) if s > 1 else x, conv.weight, conv.bias, padding=conv.padding))

        def concat():
            maps = []
            for key, conv in blk.conv2.items():
                s, b = branch(key, conv)
                maps.append(F.interpolate(b, size=(side, side), mode="nearest") if s > 1 else b)
            return F.conv2d(torch.cat(maps, 1), weight, bias)

        def per_branch():
            out, start = None, 0
            for key, conv in blk.conv2.items():
                s, b = branch(key, conv)
                c = conv.out_channels
                z = F.conv2d(b, weight[:, start:start + c])
                start += c
                if s > 1:
                    z = F.interpolate(z, size=(side, side), mode="nearest")
                out = z if out is None else out + z
            return out + bias.view(1, -1, 1, 1)

        with torch.inference_mode():
            diff = (concat() - per_branch()).abs().max().item()
            ms = summarize(interleaved({"concat": concat, "per_branch": per_branch}, 15, warmup=0))
        a, b = ms["concat"]["median_ms"], ms["per_branch"]["median_ms"]
        print(f"| {stage}.1 | {side} | {a:.1f} | {b:.1f} | {b / a:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
