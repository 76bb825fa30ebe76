"""Side-by-side speed of ScaleNet against its peers (the paper's GPU-time table).

All models run in one process, same batch, same layout, with interleaved repeats (one
forward of each model per round), so drift of a shared, noisy machine hits every model
alike. Reported: MACs, params, median and min latency, the ratio to ResNet-50, and with
``train=True`` the training-step throughput (forward + backward + SGD step) and peak memory
(CUDA's allocator counter; on CPU the peak RSS of a fresh process per model).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import timm
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .compat import require
from .devices import device_name, device_slug
from .errors import SettingError
from .factory import create_model
from .export import export_onnx
from .fileio import atomic_write_text, check_output_files
from .fuse import fuse
from .timing import interleaved, summarize

__all__ = ["peer_models", "run_bench", "format_bench_table", "peak_step_memory_mb"]


def _fold_bn(model: nn.Module) -> nn.Module:
    from torch.fx.experimental.optimization import fuse as fx_fuse

    return fx_fuse(model.eval())


def peer_models(train: bool = False) -> dict[str, Callable[[], nn.Module]]:
    """Builders for the paper's table. Inference uses fused ScaleNets (and a BN-folded ResNet-50
    for a like-for-like row); training uses the plain, trainable models."""
    peers: dict[str, Callable[[], nn.Module]] = {
        "resnet50": lambda: torchvision.models.resnet50(),
        "seresnet50": lambda: timm.create_model("seresnet50"),
        "resnext50_32x4d": lambda: torchvision.models.resnext50_32x4d(),
    }
    if train:
        peers["scalenet50"] = lambda: create_model("scalenet50")
        peers["scalenet50_light"] = lambda: create_model("scalenet50_light")
    else:
        peers["resnet50 (BN folded)"] = lambda: _fold_bn(torchvision.models.resnet50())
        peers["scalenet50 (fused)"] = lambda: fuse(create_model("scalenet50"))
        peers["scalenet50_light (fused)"] = lambda: fuse(create_model("scalenet50_light"))
    return peers


def _count(model: nn.Module, image_size: int) -> tuple[int, int]:
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    return counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters())


#: ``--precision``: autocast dtype (None: plain fp32). CUDA defaults to fp16, CPU to fp32.
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_bench(device: str, train: bool, models: list[str] | None, cuda_graphs: bool,
                precision: str | None) -> tuple[torch.device, dict[str, Callable[[], Any]], str]:
    """The device, the models and the precision of a benchmark, or one clear line (before any work)."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SettingError("{device='cuda'}: no CUDA device is available here; use {device='cpu'}", "device")
    if cuda_graphs and dev.type != "cuda":
        raise SettingError("{cuda_graphs=True} needs {device='cuda'}", "cuda_graphs", "device")
    builders = peer_models(train)
    if models:
        unknown = [m for m in models if m not in builders]
        if unknown:
            raise ValueError(f"unknown bench model(s) {', '.join(unknown)}; choose from {', '.join(builders)}")
        builders = {k: v for k, v in builders.items() if k in models or k == "resnet50"}
    precision = precision or ("fp16" if dev.type == "cuda" else "fp32")
    if precision not in PRECISIONS or precision == "fp16" and dev.type != "cuda":
        raise SettingError(f"{{precision}} {precision} is not offered on {dev.type}; use "
                         f"{'fp32, fp16 or bf16' if dev.type == 'cuda' else 'fp32 or bf16'}", "precision")
    return dev, builders, precision


def run_bench(
    device: str = "cpu",
    batch_size: int = 16,
    image_size: int = 224,
    repeats: int = 10,
    warmup: int = 2,
    compile: bool = False,
    train: bool = False,
    channels_last: bool = True,
    onnx: bool = True,
    models: list[str] | None = None,
    progress: bool = True,
    cuda_graphs: bool = False,
    precision: str | None = None,
) -> dict[str, Any]:
    """One interleaved run of the peers (``compile``: inductor, with freezing for inference;
    ``cuda_graphs``: CUDA graphs). On CPU, ``train=True`` also measures each model's peak step
    memory in a fresh process (:func:`peak_step_memory_mb`)."""
    dev, builders, precision = check_bench(device, train, models, cuda_graphs, precision)
    amp_dtype = PRECISIONS[precision]
    # inference compiles with inductor's freezing (BN folding, weight prepacking): deployment's setting
    freezing = compile and not cuda_graphs and not train
    rows: dict[str, dict[str, Any]] = {}
    runners: dict[str, Callable[[], None]] = {}
    x = torch.randn(batch_size, 3, image_size, image_size, device=dev)
    y = torch.randint(0, 1000, (batch_size,), device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if onnx and not train and dev.type == "cpu" and amp_dtype is None:
        require("onnxruntime", ONNX_ROWS)  # before any model is built
    for name, build in builders.items():
        model = build()
        macs, params = _count(model, image_size)
        rows[name] = {"macs": macs, "params": params}
        runners[name] = _runner(model, dev, x, y, train=train, amp_dtype=amp_dtype, compile=compile,
                                cuda_graphs=cuda_graphs, freezing=freezing, channels_last=channels_last)
    if onnx and not train and dev.type == "cpu" and amp_dtype is None:  # onnxruntime runs fp32
        runners.update(_onnx_runners(builders, rows, batch_size, image_size))
    _warm_up(runners, rows, dev, warmup)
    times = interleaved(runners, repeats, warmup=0, sync=lambda: _sync(dev),
                        progress=f"bench {'train' if train else 'inference'} b{batch_size}" if progress else None)
    if train and dev.type == "cpu":
        for name in runners:
            rows[name]["peak_memory_mb"] = peak_step_memory_mb(name, batch_size, image_size)
    for name, summary in summarize(times, "resnet50").items():
        rows[name].update(summary)
        if train:
            rows[name]["images_per_s"] = batch_size / (summary["median_ms"] / 1e3)
    return {
        "device": device_name(dev),
        "torch": torch.__version__,
        "mode": "train" if train else "inference",
        "batch_size": batch_size,
        "image_size": image_size,
        "repeats": repeats,
        "compile": compile or cuda_graphs,
        "freezing": freezing,
        "cuda_graphs": cuda_graphs,
        "channels_last": channels_last,
        "precision": f"{precision} autocast" if amp_dtype is not None else "fp32",
        "models": rows,
    }


def _runner(model: nn.Module, dev: torch.device, x: torch.Tensor, y: torch.Tensor, *, train: bool, amp_dtype,
            compile: bool, cuda_graphs: bool, freezing: bool, channels_last: bool) -> Callable[[], None]:
    """One model's timed call on ``dev``: a training step (SGD) or an inference forward."""
    model = model.to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cuda_graphs:
        net = torch.compile(model, mode="reduce-overhead")
    elif compile:
        net = torch.compile(model, options={"freezing": True}) if freezing else torch.compile(model)
    else:
        net = model
    if train:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step() -> None:
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step
    model.eval()

    def forward() -> None:
        with torch.inference_mode(), torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            net(x)

    return forward


def _warm_up(runners: dict[str, Callable[[], None]], rows: dict[str, dict[str, Any]], dev: torch.device,
             warmup: int) -> None:
    """Warm-up (and compilation) of every runner, with each model's peak CUDA memory."""
    for name, run in runners.items():
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        for _ in range(warmup):
            run()
        _sync(dev)
        if dev.type == "cuda":
            rows[name]["peak_memory_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20


ONNX_ROWS = "bench (its onnxruntime rows; skip them with --no-onnx)"


def _onnx_runners(builders, rows, batch_size, image_size) -> dict[str, Callable[[], None]]:
    ort = require("onnxruntime", ONNX_ROWS)

    out: dict[str, Callable[[], None]] = {}
    x = torch.randn(batch_size, 3, image_size, image_size).numpy()
    tmp = Path(tempfile.mkdtemp(prefix="scalenet-bench-"))
    for name in ("resnet50", "scalenet50 (fused)"):
        if name not in builders:
            continue
        path = export_onnx(builders[name](), tmp / f"{re.sub(r'[^a-z0-9]+', '_', name)}.onnx", image_size)
        for mode, label in ((ort.ExecutionMode.ORT_SEQUENTIAL, "sequential"), (ort.ExecutionMode.ORT_PARALLEL, "parallel")):
            opts = ort.SessionOptions()
            opts.execution_mode = mode
            # idle onnxruntime threads otherwise spin for a while after each run and steal the
            # cores from the next model in the round (measured: it slowed ResNet-50 at batch 1 by 1.7x)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            key = f"{name.split(' ')[0]} (onnxruntime, {label})"
            rows[key] = dict(rows[name])
            out[key] = lambda s=session: s.run(None, {"input": x})
    return out


def format_bench_table(result: dict[str, Any]) -> str:
    train = result["mode"] == "train"
    head = "| model | MACs (G) | params (M) | median ms | min ms | vs ResNet-50 |" + (" img/s | peak MB |" if train else "")
    lines = [
        f"{result['mode']} on {result['device']}, batch {result['batch_size']}, {result['image_size']}x{result['image_size']}, "
        f"{result['precision']}, {'channels_last' if result['channels_last'] else 'channels_first'}"
        f"{', CUDA graphs' if result.get('cuda_graphs') else _compile_label(result) if result['compile'] else ', eager'}, median of {result['repeats']} interleaved repeats",
        "",
        head,
        "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if train else ""),
    ]
    for name, r in result["models"].items():
        line = (f"| {name} | {r['macs'] / 1e9:.2f} | {r['params'] / 1e6:.2f} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | "
                f"{r['ratio_to_resnet50']:.2f}x |")
        if train:
            peak = r.get("peak_memory_mb")
            line += f" {r['images_per_s']:.1f} | {peak:.0f} |" if peak is not None else f" {r['images_per_s']:.1f} | n/a |"
        lines.append(line)
    return "\n".join(lines)


def _compile_label(result: dict[str, Any]) -> str:
    return ", torch.compile (freezing)" if result.get("freezing") else ", torch.compile"


def result_paths(out_dir: str | Path, device: str, mode: str, batch_size: int, compile: bool, cuda_graphs: bool,
                 precision: str | None) -> tuple[Path, Path]:
    """The JSON and markdown files of one benchmark's results: named after the device, the mode,
    the batch size and the variant (compiled, CUDA graphs, bf16)."""
    variant = "-cudagraphs" if cuda_graphs else "-compile" if compile else ""
    if (precision or "").startswith("bf16"):  # fp16 (CUDA) and fp32 (CPU) keep their names
        variant += "-bf16"
    stem = f"bench-{device_slug(device)}-{mode}-b{batch_size}{variant}"
    return Path(out_dir) / f"{stem}.json", Path(out_dir) / f"{stem}.md"


def check_results_free(out_dir: str | Path, *, device: str, train: bool, batch_size: int, compile: bool,
                       cuda_graphs: bool, precision: str | None, force: bool,
                       models: list[str] | None = None) -> None:
    """Refuses (one line, before anything is timed) results that would overwrite earlier ones."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SettingError(f"{{out_dir}} {out} is a file; choose a directory", "out_dir")
    dev, _, precision = check_bench(device, train, models, cuda_graphs, precision)
    paths = result_paths(out, device_name(dev), "train" if train else "inference", batch_size, compile, cuda_graphs,
                         precision)
    if out.is_dir():
        check_output_files({p: "results of the same device and settings" for p in paths}, "--out-dir", "results",
                           force)


def save_results(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Writes the results (``check_results_free`` refuses earlier ones before the work)."""
    js, md = result_paths(out_dir, result["device"], result["mode"], result["batch_size"], result["compile"],
                          bool(result.get("cuda_graphs")), result.get("precision"))
    js.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(js, json.dumps(result, indent=2) + "\n")
    atomic_write_text(md, format_bench_table(result) + "\n")
    return js, md


_MEMORY_CHILD = """
import importlib.util, resource, sys, torch
from scalenet.bench import peer_models
name, batch, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = peer_models(train=True)[name]()
if len(sys.argv) > 4:  # FILE.py:FUNCTION turns the model into a variant
    path, func = sys.argv[4].rsplit(":", 1)
    spec = importlib.util.spec_from_file_location("variant", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = getattr(module, func)(model)
model = model.to(memory_format=torch.channels_last).train()
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 1000, (batch,))
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
before = rss()
for _ in range(2):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before) / 2**20)
"""


def peak_step_memory_mb(name: str, batch_size: int = 16, image_size: int = 224, variant: str | None = None) -> float:
    """Peak resident memory of two CPU training steps above the built model, in MB, measured in a
    fresh process (CPU allocations have no counter like CUDA's, and the peak RSS of a process
    never goes down). Includes gradients and the optimiser's momentum, for every model alike.
    ``variant`` (``FILE.py:FUNCTION``) names a function that turns the built model into the one
    measured (benchmark scripts use it for forms of the SA block that the library does not ship)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, name, str(batch_size), str(image_size), *([variant] if variant else [])],
        capture_output=True, text=True, check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])
