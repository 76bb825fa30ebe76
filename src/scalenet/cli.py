"""Command-line interface: argument parsing and error reporting only.

Every command calls into the library. A user error (ValueError, FileNotFoundError,
PermissionError) is printed as one line, ``scalenet: error: ...``, with exit code 2 and no
traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["main"]

EXIT_USAGE = 2


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 3,4,6,3, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 3,4,6,3, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value}")
    return value


# ---------------------------------------------------------------------------- info
def _format_count(n: int, unit: str) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.3f} G{unit}"
    if n >= 1e6:
        return f"{n / 1e6:.2f} M{unit}"
    return f"{n / 1e3:.1f} K{unit}"


def format_info(summary: dict[str, Any]) -> str:
    scales = summary["scales"]
    cw = max(4, *(len(str(c)) for b in summary["blocks"] for c in b["channels"]))
    groups = [
        ("channels", [f"x{s}".rjust(cw) for s in scales]),
        ("share %", [f"x{s}".rjust(4) for s in scales]),
        ("kernel", [f"x{s}".rjust(3) for s in scales]),
    ]
    cols = [" ".join(names) for _, names in groups]
    title = " | ".join(label.center(len(c)) for (label, _), c in zip(groups, cols))
    lines = [
        f"{summary['name'] or 'structure'}: {summary['stem']} stem, {summary['image_size']}x{summary['image_size']} "
        f"input, layers {','.join(map(str, summary['layers']))}, scales {','.join(map(str, scales))}",
        "",
        f"{'':<10} {'':>4} | {title} | {'':>13}",
        f"{'block':<10} {'side':>4} | {' | '.join(cols)} | {'MACs':>13}",
    ]
    for b in summary["blocks"]:
        ch = " ".join(str(c).rjust(cw) for c in b["channels"])
        sh = " ".join(f"{100 * s:4.0f}" for s in b["share"])
        ks = " ".join((f"{k}x{k}" if k else "-").rjust(3) for k in b["kernel_sizes"])
        lines.append(f"{b['block']:<10} {b['side']:>4} | {ch} | {sh} | {ks} | {b['macs']:>13,}")
    lines += [
        "",
        f"total: {summary['macs']:,} MACs ({_format_count(summary['macs'], 'MACs')}), "
        f"{summary['params']:,} params ({_format_count(summary['params'], '')}), {summary['num_classes']} classes",
    ]
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    from .factory import resolve_structure

    structure = resolve_structure(args.model, layers=args.layers)
    summary = structure.summary(image_size=args.image_size, num_classes=args.num_classes)
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_info(summary))
    return 0


# ---------------------------------------------------------------------------- train / eval
_TRAIN_FIELDS = ("epochs", "batch_size", "lr", "wd", "warmup", "label_smoothing", "workers", "seed", "sparsity")


def _train_config(args: argparse.Namespace, **defaults: Any):
    from .engine import PRESETS, TrainConfig

    values: dict[str, Any] = dict(defaults)
    values.update(PRESETS[args.preset] if args.preset else {})
    values.update({k: getattr(args, k) for k in _TRAIN_FIELDS if getattr(args, k, None) is not None})
    for flag in ("amp", "channels_last", "compile", "no_bn_wd"):
        if getattr(args, flag, False):
            values[flag] = True
    values["progress"] = not args.no_progress
    if getattr(args, "no_augment", False):
        values["augment"] = False
    return TrainConfig(**values)


def cmd_train(args: argparse.Namespace) -> int:
    from .data import build_data
    from .engine import train
    from .factory import resolve_structure

    structure = resolve_structure(args.model, layers=args.layers)
    cfg = _train_config(args)
    data = build_data(args.data, args.image_size, train_subset=args.train_subset, val_subset=args.val_subset, seed=cfg.seed)
    result = train(structure, data, cfg, args.out, resume=args.resume)
    if result.metrics and int(os.environ.get("RANK", "0")) == 0:
        best = max(result.metrics, key=lambda r: r["val_top1"])
        print(
            f"{structure.name or 'model'}: val top-1 {100 * result.final['val_top1']:.2f}% after epoch "
            f"{result.final['epoch']} (best {100 * best['val_top1']:.2f}% at epoch {best['epoch']}); run in {args.out}"
        )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .data import build_data
    from .engine import evaluate, model_from_checkpoint

    model, ckpt = model_from_checkpoint(args.checkpoint)
    image_size = args.image_size or ckpt.get("image_size")
    data = build_data(args.data, image_size, val_subset=args.val_subset)
    if data.num_classes != ckpt["num_classes"] or data.in_chans != ckpt["in_chans"]:
        raise ValueError(
            f"{args.checkpoint} was trained for {ckpt['num_classes']} classes and {ckpt['in_chans']} channels, "
            f"but {args.data} has {data.num_classes} classes and {data.in_chans} channels"
        )
    model.structure.check_input(data.image_size)
    result = evaluate(model, data.loader("val", args.batch_size, workers=args.workers))
    out = {"top1": result["top1"], "top5": result["top5"], "top1_err": 1 - result["top1"],
           "top5_err": 1 - result["top5"], "loss": result["loss"], "images": result["images"]}
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{args.checkpoint} on {data.name} ({out['images']} images): top-1 {100 * out['top1']:.2f}% "
            f"(error {100 * out['top1_err']:.2f}%), top-5 {100 * out['top5']:.2f}% (error {100 * out['top5_err']:.2f}%)"
        )
    return 0


# ---------------------------------------------------------------------------- allocate
def _check_output_file(path: Path, flag: str = "--out", example: str = "structure.json") -> None:
    from .fileio import check_writable_dir

    check_writable_dir(path.parent)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a directory; give a file name such as {path / example}")


def cmd_allocate(args: argparse.Namespace) -> int:
    from .allocate import allocate, format_stage_summary
    from .data import build_data
    from .engine import train
    from .fileio import atomic_write_text
    from .report import plot_allocation

    out = Path(args.out)
    _check_output_file(out)
    if args.width_mult is not None and args.macs is not None:
        raise ValueError("give --width-mult or --macs, not both")
    cfg = _train_config(args, epochs=5)
    data = build_data(args.data, args.image_size, train_subset=args.train_subset, val_subset=args.val_subset, seed=cfg.seed)
    result = allocate(
        data, layers=args.layers, width=args.width, scales=args.scales, seed_width=args.seed_width,
        width_mult=args.width_mult, macs=args.macs, scope=args.scope, alpha=args.alpha, train_config=cfg,
        name=out.stem,
    )
    structure = result.structure
    sidecar = out.with_name(out.stem + ".scores.json")
    chart = out.with_suffix(".png")
    structure.save(out, bare=args.bare)
    atomic_write_text(sidecar, json.dumps(result.sidecar()) + "\n")
    plot_allocation(structure, chart, title=f"{out.stem}: learned neurons per scale ({data.name})")
    macs = structure.macs(None, data.num_classes, data.in_chans)
    print(format_stage_summary(structure))
    print(
        f"{out}: {macs:,} MACs, {structure.params(data.num_classes, data.in_chans):,} params "
        f"(seed network {result.seed.macs(None, data.num_classes, data.in_chans):,} MACs); "
        f"scores in {sidecar}, chart in {chart}"
    )
    if args.then_train:
        run_dir = Path(args.run_dir) if args.run_dir else out.with_name(out.stem + "_run")
        cfg.epochs = args.then_train
        trained = train(structure, data, cfg, run_dir)
        print(f"{out.stem}: val top-1 {100 * trained.final['val_top1']:.2f}% after {cfg.epochs} epochs; run in {run_dir}")
    return 0


# ---------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    import time

    from .demo import run_demo

    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()):
        kept = out.with_name(f"{out.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
        out.rename(kept)
        print(f"note: moved the earlier demo run to {kept}", flush=True)
    run_demo(out, profile=args.profile, seed=args.seed, progress=not args.no_progress)
    return 0


# ---------------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    from .export import check_onnx, export_onnx
    from .factory import create_model, resolve_structure
    from .fuse import fuse

    structure = resolve_structure(args.model, layers=args.layers)
    image_size = args.image_size or structure.image_size
    structure.check_input(image_size)
    out = Path(args.onnx)
    _check_output_file(out)
    model = create_model(structure, num_classes=args.num_classes, in_chans=args.in_chans, checkpoint=args.checkpoint)
    model = fuse(model) if args.fused else model.eval()
    export_onnx(model, out, image_size, args.in_chans)
    diff = check_onnx(model, out, image_size, args.in_chans)
    if diff > 1e-3:
        out.unlink()
        raise ValueError(f"onnxruntime output differs from PyTorch by {diff:.2e} relative (limit 1e-3); {out} removed")
    print(f"{out}: opset 17, dynamic batch, {'fused, ' if args.fused else ''}onnxruntime vs PyTorch max relative "
          f"difference {diff:.1e}")
    return 0


# ---------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import format_table, run_bench, save_results

    result = run_bench(
        device=args.device, batch_size=args.batch_size, image_size=args.image_size, repeats=args.repeats,
        compile=args.compile, train=args.train, channels_last=not args.channels_first, onnx=not args.no_onnx,
        models=args.models, progress=not args.json, cuda_graphs=args.cuda_graphs,
    )
    js, md = save_results(result, args.out_dir)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
        print(f"\nwritten: {js}, {md}")
    return 0


# ---------------------------------------------------------------------------- detection
_DETECT_FIELDS = ("backbone", "backbone_checkpoint", "epochs", "batch_size", "lr", "wd", "momentum", "warmup_iters",
                  "min_size", "max_size", "trainable_layers", "norm", "fpn_channels", "workers", "seed")


def cmd_detect_train(args: argparse.Namespace) -> int:
    from .detection import CocoDetection, DetectConfig, train_detector

    values = {k: getattr(args, k) for k in _DETECT_FIELDS if getattr(args, k) is not None}
    if args.lr_steps is not None:
        values["lr_steps"] = tuple(args.lr_steps)
    cfg = DetectConfig(**values, amp=args.amp, progress=not args.no_progress)
    if cfg.backbone_checkpoint is not None and not Path(cfg.backbone_checkpoint).is_file():
        raise FileNotFoundError(f"backbone checkpoint not found: {cfg.backbone_checkpoint}")
    if (args.val_json is None) != (args.val_images is None):
        raise ValueError("give --val-json and --val-images together (or neither)")
    dataset = CocoDetection(args.coco_json, args.images, train=True)
    val = CocoDetection(args.val_json, args.val_images) if args.val_json else None
    _, metrics = train_detector(dataset, cfg, args.out, resume=args.resume, val_dataset=val)
    if metrics and int(os.environ.get("RANK", "0")) == 0:
        last = metrics[-1]
        ap = f", val AP {100 * last['val_AP']:.1f}" if "val_AP" in last else ""
        print(f"faster-rcnn {cfg.backbone}: loss {last['loss']:.4f} after epoch {last['epoch']}{ap}; run in {args.out}")
    return 0


def cmd_detect_eval(args: argparse.Namespace) -> int:
    from .detection import CocoDetection, detector_from_checkpoint, evaluate_detector, format_coco_table
    from .engine import setup_distributed
    from .fileio import atomic_write_text

    d = setup_distributed()
    dataset = CocoDetection(args.coco_json, args.images)
    model, ckpt = detector_from_checkpoint(args.checkpoint)
    model.roi_heads.score_thresh = args.score_thresh
    num_classes = ckpt["detector"]["num_classes"]
    if dataset.num_classes > num_classes:
        raise ValueError(
            f"{args.coco_json} has category ids up to {dataset.num_classes - 1}, but {args.checkpoint} "
            f"predicts ids below {num_classes}; evaluate on the data set it was trained for"
        )
    save = Path(args.save) if args.save else Path(args.checkpoint).with_name(f"eval-{Path(args.coco_json).stem}.json")
    if d.main:
        _check_output_file(save, "--save", "eval.json")
        if args.detections:
            _check_output_file(Path(args.detections), "--detections", "detections.json")
    stats, results = evaluate_detector(model.to(d.device), dataset, d.device, batch_size=args.batch_size,
                                       workers=args.workers, progress=not args.no_progress and not args.json, d=d)
    if not d.main:
        return 0
    report = {"checkpoint": str(args.checkpoint), "annotations": str(args.coco_json), **stats}
    atomic_write_text(save, json.dumps(report, indent=2) + "\n")
    if args.detections:
        atomic_write_text(Path(args.detections), json.dumps(results))
    if dataset.skipped:
        print(f"note: {Path(args.coco_json).name}: skipped {dataset.skipped.describe()}", file=sys.stderr)
    if args.json:
        print(json.dumps(report))
    else:
        print(format_coco_table(stats))
        print(f"\n{stats['images']} images, {stats['detections']} detections; written: {save}")
    return 0


# ---------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """Usage errors are one line too (no usage dump), exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="scalenet",
        description="ScaleNet: scale aggregation networks with data-driven neuron allocation (CVPR 2019).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("info", help="per-block allocation table, MACs and params of a model or structure file")
    p.add_argument("model", metavar="NAME|PATH", help="a published model name or a structure JSON")
    p.add_argument("--image-size", type=_positive_int, default=None, help="input side (default: the structure's own)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs counted (default 1000)")
    p.add_argument("--layers", type=_int_list, default=None, help="stage depths for a bare-list file, e.g. 2,2,2")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of the table")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", help="train a model from scratch (torchrun -m scalenet train ... for DDP)")
    p.add_argument("--model", required=True, metavar="NAME|PATH", help="a published model name or a structure JSON")
    p.add_argument("--data", required=True, metavar="DIR|fashion-mnist", help="an ImageFolder directory or a built-in data set")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory: checkpoints, metrics.jsonl, TensorBoard logs")
    _add_train_options(p)
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR/last.pt")
    p.add_argument("--layers", type=_int_list, default=None, help="stage depths for a bare-list structure file")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="top-1/top-5 of a training checkpoint")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by scalenet train (last.pt/best.pt)")
    p.add_argument("--data", required=True, metavar="DIR|fashion-mnist")
    p.add_argument("--image-size", type=_positive_int, default=None, help="default: the training image size")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--val-subset", type=_positive_int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help='print {"top1": ..., "top5": ...} as fractions')
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("allocate", help="learn each block's neurons per scale from data (train a seed, rank |gamma|)")
    p.add_argument("--data", required=True, metavar="DIR|fashion-mnist", help="an ImageFolder directory or a built-in data set")
    p.add_argument("--out", required=True, metavar="structure.json", help="the structure file to write")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--width-mult", type=float, default=None, help="neurons kept per block, times the ResNet width (default 1.0)")
    budget.add_argument("--macs", type=_positive_int, default=None, help="MACs target for the whole network (met within 1%%)")
    p.add_argument("--seed-width", type=_positive_int, default=None, help="seed neurons per scale (default: the block's planes)")
    p.add_argument("--scales", type=_int_list, default=[1, 2, 4, 7], help="pooling factors (default 1,2,4,7)")
    p.add_argument("--alpha", type=float, default=0.0, help="score |gamma| / cost^alpha (the paper: 0)")
    p.add_argument("--scope", choices=["block", "global"], default="block", help="rank per block (the paper) or across blocks")
    p.add_argument("--layers", type=_int_list, default=None, help="blocks per stage (default by image size)")
    p.add_argument("--width", type=_positive_int, default=None, help="planes of stage 1 (default by image size)")
    p.add_argument("--bare", action="store_true", help="write the release's bare-list format")
    p.add_argument("--then-train", type=_positive_int, default=None, metavar="EPOCHS", help="then train the result from scratch")
    p.add_argument("--run-dir", default=None, help="run directory for --then-train (default: OUT_run)")
    _add_train_options(p)
    p.set_defaults(func=cmd_allocate)

    p = sub.add_parser("demo", help="the whole pipeline on Fashion-MNIST: allocate, train, compare, report")
    p.add_argument("--profile", choices=["quick", "full"], default="quick",
                   help="quick: about 15 minutes on a 2-core CPU (default); full: long, meant for a GPU")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo; an earlier run there is moved aside)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("export", help="ONNX export (opset 17, dynamic batch), checked in onnxruntime")
    p.add_argument("--model", required=True, metavar="NAME|PATH", help="a published model name or a structure JSON")
    p.add_argument("--checkpoint", default=None, help="weights (.pth/.pt/.safetensors); default: random init")
    p.add_argument("--onnx", required=True, metavar="out.onnx")
    p.add_argument("--fused", action="store_true", help="export the BN-folded inference model")
    p.add_argument("--image-size", type=_positive_int, default=None, help="default: the structure's own")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--in-chans", type=_positive_int, default=3)
    p.add_argument("--layers", type=_int_list, default=None, help="stage depths for a bare-list structure file")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="latency/throughput against ResNet-50, SE-ResNet-50 and ResNeXt-50, interleaved")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--image-size", type=_positive_int, default=224)
    p.add_argument("--repeats", type=_positive_int, default=10, help="interleaved rounds (median and min reported)")
    p.add_argument("--compile", action="store_true", help="torch.compile every model (inference: inductor with freezing)")
    p.add_argument("--cuda-graphs", action="store_true", help="torch.compile with CUDA graphs (mode reduce-overhead; CUDA only)")
    p.add_argument("--train", action="store_true", help="training steps (forward + backward + SGD) instead of inference")
    p.add_argument("--channels-first", action="store_true", help="NCHW instead of channels_last")
    p.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime rows (CPU inference only)")
    p.add_argument("--models", type=lambda t: [m.strip() for m in t.split(",") if m.strip()], default=None,
                   help="comma-separated subset (resnet50 is always included as the reference)")
    p.add_argument("--out-dir", default="benchmarks/results", help="where the JSON and markdown go")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("detect-train", help="Faster R-CNN + FPN with a ScaleNet backbone on a COCO-format set (torchrun for DDP)")
    p.add_argument("--coco-json", required=True, metavar="PATH", help="COCO instances annotation JSON")
    p.add_argument("--images", required=True, metavar="DIR", help="the folder the JSON's file_name entries are in")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory: last.pt/best.pt, metrics.jsonl")
    p.add_argument("--backbone", default=None, metavar="NAME|PATH", help="published name or structure JSON (default scalenet50)")
    p.add_argument("--backbone-checkpoint", default=None, metavar="PATH",
                   help="ImageNet weights: a scalenet train checkpoint, .safetensors, or the release's .pth")
    p.add_argument("--epochs", type=_positive_int, default=None, help="default 12 (the 1x schedule)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="images per process (default 2)")
    p.add_argument("--lr", type=float, default=None, help="default 0.02 (for 16 images per step in all)")
    p.add_argument("--wd", type=float, default=None, help="default 1e-4")
    p.add_argument("--momentum", type=float, default=None, help="default 0.9")
    p.add_argument("--lr-steps", type=_int_list, default=None, help="epochs after which the LR drops 10x (default 8,11)")
    p.add_argument("--warmup-iters", type=int, default=None, help="linear warmup iterations (default 1000)")
    p.add_argument("--min-size", type=_positive_int, default=None, help="shorter image side (default 600, the paper's)")
    p.add_argument("--max-size", type=_positive_int, default=None, help="longer side cap (default 1000, the paper's)")
    p.add_argument("--trainable-layers", type=int, choices=range(6), default=None, help="stages trained, from the top (default 3)")
    p.add_argument("--norm", choices=["frozen", "bn"], default=None, help="backbone BN: frozen (default) or trained")
    p.add_argument("--fpn-channels", type=_positive_int, default=None, help="FPN width (default 256)")
    p.add_argument("--val-json", default=None, metavar="PATH", help="evaluate on this set after every epoch (best.pt by AP)")
    p.add_argument("--val-images", default=None, metavar="DIR")
    p.add_argument("--amp", action="store_true", help="mixed precision (fp16 on CUDA)")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes (default 0)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR/last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_detect_train)

    p = sub.add_parser("detect-eval", help="COCO box metrics of a detect-train checkpoint (pycocotools)")
    p.add_argument("--checkpoint", required=True, help="last.pt/best.pt written by scalenet detect-train")
    p.add_argument("--coco-json", required=True, metavar="PATH")
    p.add_argument("--images", required=True, metavar="DIR")
    p.add_argument("--batch-size", type=_positive_int, default=1,
                   help="images per step (default 1: larger batches pad images to a common size, which moves scores slightly)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--save", default=None, metavar="PATH", help="metrics JSON (default: eval-<json name>.json beside the checkpoint)")
    p.add_argument("--detections", default=None, metavar="PATH", help="also write the detections in COCO results format")
    p.add_argument("--score-thresh", type=_fraction, default=0.05, help="drop detections scoring below this (default 0.05)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_detect_eval)
    return parser


def _add_train_options(p: argparse.ArgumentParser) -> None:
    """Training options shared by train, allocate and demo (None: the config's default)."""
    p.add_argument("--preset", choices=["imagenet"], default=None, help="the release's ImageNet recipe (120 epochs, cosine)")
    p.add_argument("--epochs", type=_positive_int, default=None)
    p.add_argument("--image-size", type=_positive_int, default=None, help="default: from the data")
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate of the cosine schedule")
    p.add_argument("--wd", type=float, default=None, help="weight decay")
    p.add_argument("--warmup", type=float, default=None, help="epochs of linear warmup")
    p.add_argument("--label-smoothing", type=float, default=None)
    p.add_argument("--no-bn-wd", action="store_true", help="no weight decay on BN parameters and biases")
    p.add_argument("--amp", action="store_true", help="mixed precision (fp16 on CUDA, bf16 on CPU)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes for image folders")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--sparsity", type=float, default=None, help="L1 weight on SA-branch BN scales")
    p.add_argument("--train-subset", type=_positive_int, default=None, help="train on a random subset of N images")
    p.add_argument("--val-subset", type=_positive_int, default=None, help="validate on a random subset of N images")
    p.add_argument("--no-augment", action="store_true", help="no crop/flip augmentation (for very short runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    # ImportError: a missing optional dependency (pycocotools, onnxruntime); the message says what to install
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, ImportError) as e:
        print(f"scalenet: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("scalenet: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        from .engine import TrainingError

        if not isinstance(e, TrainingError):
            raise
        print(f"scalenet: error: {e}", file=sys.stderr)  # a diverged run: what happened and what is kept
        return 1
    except BrokenPipeError:  # e.g. `scalenet info ... | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
