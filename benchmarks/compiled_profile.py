"""Where the time goes under torch.compile: ResNet-50 against the fused ScaleNet-50.

Both models are compiled in one process (inductor, CPU, with freezing: BN folding and weight
prepacking for oneDNN, the inference setting) and profiled over interleaved forwards, batch 16,
224x224, channels_last, fp32. Each oneDNN convolution call is put in a class by its kernel
(1x1, 3x3, 7x7; "+ residual" where inductor fused the residual add into the conv), with its
multiply-adds counted in an eager forward; everything else (inductor's generated kernels for
pooling, upsampling and concatenation, the linear layer, the wrapper) is "other".

    python benchmarks/compiled_profile.py [--repeats 3] [--batch-size 16]

Writes benchmarks/results/compiled-profile-<device>.md.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch
import torch._inductor.config as inductor_config
import torchvision
from torch.profiler import ProfilerActivity, profile

from scalenet import create_model, fuse
from scalenet.devices import device_name, device_slug
from scalenet.fileio import atomic_write_text


def conv_class(name: str, shapes: list) -> str | None:
    """The class of a profiled oneDNN conv call, or None for anything else."""
    if "convolution_pointwise" not in name:
        return None
    binary = name.endswith("_")  # the in-place form: conv + residual (+ ReLU)
    kh, kw = (shapes[2] if binary else shapes[1])[2:]
    return f"conv {kh}x{kw}" + (" + residual" if binary else "")


def macs_by_class(model: torch.nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Multiply-adds of each conv class, from each conv's output shape in an eager forward.
    The residual is fused into each block's last conv (``conv3``) by inductor."""
    out: dict[str, int] = collections.defaultdict(int)
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            kh, kw = m.kernel_size
            klass = f"conv {kh}x{kw}" + (" + residual" if name.endswith("conv3") else "")

            def hook(mod, inp, y, klass=klass):
                out[klass] += y.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]

            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    inductor_config.freezing = True
    inductor_config.cpp.enable_kernel_profile = True  # name inductor's own kernels in the profile
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    models = {"resnet50": torchvision.models.resnet50().eval(), "scalenet50 (fused)": fuse(create_model("scalenet50"))}
    compiled, macs = {}, {}
    for name, model in models.items():
        macs[name] = macs_by_class(model, x)
        net = torch.compile(model.to(memory_format=torch.channels_last))
        with torch.no_grad():
            net(x), net(x)
        compiled[name] = net

    times = {name: collections.defaultdict(float) for name in compiled}
    calls = {name: collections.defaultdict(int) for name in compiled}
    for _ in range(args.repeats):
        for name, net in compiled.items():
            with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                net(x)
            for ev in prof.events():
                if ev.device_type.name != "CPU":
                    continue
                key = conv_class(ev.name, ev.input_shapes) or "other"
                times[name][key] += ev.self_cpu_time_total / 1e3 / args.repeats
                if key != "other":
                    calls[name][key] += 1
    for name in calls:
        for key in calls[name]:
            calls[name][key] //= args.repeats

    keys = ["conv 3x3", "conv 1x1", "conv 1x1 + residual", "conv 7x7", "other"]
    lines = [
        f"torch.compile (inductor, freezing) profile on {device_name(torch.device('cpu'))}, batch {args.batch_size}, "
        f"224x224, fp32, channels_last, {args.repeats} interleaved forwards each (self CPU time per forward)",
        "",
        "| op class | " + " | ".join(f"{m} ms | {m} GMACs | {m} GMAC/s | {m} calls" for m in compiled) + " |",
        "|---|" + "---:|---:|---:|---:|" * len(compiled),
    ]
    for key in keys + ["total"]:
        cells = []
        for name in compiled:
            t = sum(times[name].values()) if key == "total" else times[name].get(key, 0.0)
            m = sum(macs[name].values()) if key == "total" else macs[name].get(key, 0.0)
            c = sum(calls[name].values()) if key == "total" else calls[name].get(key, 0)
            rate = f"{m / 1e9 / (t / 1e3):.1f}" if m and key not in ("other", "total") else ""
            cells.append(f"{t:.1f} | {m / 1e9:.2f} | {rate} | {c}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "GMACs per batch, from each conv's output shape; GMAC/s = GMACs / self time."]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).resolve().parent / "results" / f"compiled-profile-{device_slug(device_name(torch.device('cpu')))}.md"
    atomic_write_text(out, text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
