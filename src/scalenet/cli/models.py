"""``scalenet info``, ``latency-model``, ``export`` and ``bench``: commands about a model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..bench import check_results_free, format_bench_table, run_bench, save_results
from ..devices import check_memory
from ..export import export_checked, export_hub
from ..factory import create_model, resolve_structure
from ..fileio import check_output_dir, check_output_file
from ..fuse import fuse
from ..latency import LatencyModel, block_latencies, current_settings, format_block_latencies, measure_latency_model, \
    prediction_errors
from ..structure import format_summary
from ..training import is_training_checkpoint
from .options import add_force, int_list, name_list, names, positive_int, refuse_given

__all__ = ["COMMANDS"]


# ---------------------------------------------------------------------------- info
def add_info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="NAME|PATH", help="a published model name or a structure JSON")
    p.add_argument("--image-size", type=positive_int, default=None, help="input side (default: the structure's own)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs counted (default 1000)")
    p.add_argument("--layers", type=int_list, default=None, help="stage depths for a bare-list file, e.g. 2,2,2")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of the table")
    p.add_argument("--latency", default=None, metavar="MODEL.json",
                   help="also print each block's latency predicted by this cost model (scalenet latency-model)")


def cmd_info(args: argparse.Namespace) -> int:
    structure = resolve_structure(args.model, layers=args.layers)
    latency = None
    if args.latency:
        latency = block_latencies(LatencyModel.load(args.latency), structure, args.latency, image_size=args.image_size)
    summary = structure.summary(image_size=args.image_size, num_classes=args.num_classes)
    if latency is not None:
        summary["latency"] = latency
    print(json.dumps(summary) if args.json else format_summary(summary))
    if latency is not None and not args.json:
        print(format_block_latencies(latency))
    try:
        check_memory(structure, args.num_classes)
    except ValueError as e:  # the table is still worth reading; building the model would fail
        print(f"note: {e}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- latency model
def add_latency_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="MODEL.json", help="where to write the cost model")
    add_force(p, "the cost model")
    p.add_argument("--reference", default="scalenet50", metavar="NAME|PATH",
                   help="the layout measured and the network that calibrates the rest (default scalenet50)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default cpu")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="default 16")
    p.add_argument("--image-size", type=positive_int, default=None, help="default: the reference's own")
    p.add_argument("--compile", action="store_true", help="time torch.compile'd blocks and networks")
    p.add_argument("--configs", type=positive_int, default=14, help="channel splits timed per stage (default 14)")
    p.add_argument("--repeats", type=positive_int, default=5, help="interleaved rounds per timing (default 5)")
    p.add_argument("--check", type=name_list, default=[], metavar="NAME,...",
                   help="structures (names or files) whose measured latency is compared with the prediction (default: none)")
    p.add_argument("--no-progress", action="store_true")


def cmd_latency_model(args: argparse.Namespace) -> int:
    check_output_file(args.out, "--out", "model.json", force=args.force)  # before minutes of timing
    reference = resolve_structure(args.reference)
    checks = {name: resolve_structure(name) for name in args.check}
    settings = current_settings(args.device, args.threads, args.batch_size, args.image_size or reference.image_size,
                                args.compile)
    model = measure_latency_model(reference, settings, configs=args.configs, repeats=args.repeats,
                                  progress=not args.no_progress)
    for structure in checks.values():
        model.check_structure(structure)
    if checks:
        model.fit["check"] = prediction_errors(model, checks, args.repeats, progress=not args.no_progress)
    model.save(args.out)
    print(f"latency model of {reference.name or args.reference}'s layout on {settings.device_name}: written to {args.out}")
    print("stage |   base ms | fixed ms per branch (by scale) | ms per neuron (by scale)")
    for i, c in enumerate(model.stages):
        print(f"{i + 1:>5} | {c.base:9.2f} | {' '.join(f'{v:6.2f}' for v in c.fixed):>30} | "
              f"{' '.join(f'{v:.4f}' for v in c.per_neuron)}")
    print(f"other (stem, shortcuts, head): {model.other:.1f} ms; {reference.name or 'reference'} measured "
          f"{model.fit['reference_ms']:.1f} ms")
    for row in model.fit.get("check", []):
        print(f"{row['name']}: measured {row['measured_ms']:.1f} ms, predicted {row['predicted_ms']:.1f} ms "
              f"({100 * row['error']:+.1f}%)")
    return 0


# ---------------------------------------------------------------------------- export
def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="NAME|PATH",
                   help="a published model name or a structure JSON (required unless --checkpoint is a scalenet train "
                        "checkpoint)")
    p.add_argument("--checkpoint", default=None,
                   help="weights (.pth/.pt/.safetensors) or a scalenet train checkpoint; default: random init")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--onnx", default=None, metavar="out.onnx", help="write ONNX, checked in onnxruntime")
    target.add_argument("--hub", default=None, metavar="DIR",
                        help="write a Hugging Face Hub folder: config.json, model.safetensors, README.md (timm loads it "
                             "as local-dir:DIR)")
    target.add_argument("--keras", default=None, metavar="out.keras",
                        help="write a Keras 3 model (NHWC), reloaded and checked against PyTorch (scalenet[tensorflow] "
                             "or scalenet[jax])")
    target.add_argument("--saved-model", default=None, metavar="DIR",
                        help="write a TensorFlow SavedModel for serving (NHWC, any batch), loaded back and checked "
                             "against PyTorch (scalenet[tensorflow])")
    add_force(p, "the ONNX file, the Keras file or the SavedModel or Hub folder")
    p.add_argument("--fused", action="store_true", help="ONNX: export the BN-folded inference model")
    p.add_argument("--image-size", type=positive_int, default=None, help="default: the structure's own")
    p.add_argument("--num-classes", type=positive_int, default=None, help="default 1000")
    p.add_argument("--in-chans", type=positive_int, default=None, help="default 3")
    p.add_argument("--layers", type=int_list, default=None, help="stage depths for a bare-list structure file")
    p.add_argument("--license", default=None, help="Hub: the model card's license (default apache-2.0)")


def cmd_export(args: argparse.Namespace) -> int:
    if args.hub is not None:
        return _export_hub(args)
    refuse_given(args, ["license"], "without --hub (it is the model card's)")
    flag = "--onnx" if args.onnx else "--keras" if args.keras else "--saved-model"
    if args.model is None:
        raise ValueError(f"{flag} needs --model NAME|structure.json")
    if flag != "--onnx":
        refuse_given(args, ["fused"], f"with {flag} (the Keras model is the trainable one; BN folds nothing there)")
    structure = resolve_structure(args.model, layers=args.layers)
    image_size = args.image_size or structure.image_size
    structure.check_input(image_size)
    if flag == "--onnx":
        out = check_output_file(args.onnx, "--onnx", "model.onnx", force=args.force)
    elif flag == "--keras":
        if Path(args.keras).suffix != ".keras":
            raise ValueError(f"--keras {args.keras}: Keras writes .keras files; give a name such as model.keras")
        out = check_output_file(args.keras, "--keras", "model.keras", force=args.force)
    else:
        out = check_output_dir(args.saved_model, "--saved-model", force=args.force)
    in_chans = args.in_chans or 3
    model = create_model(structure, num_classes=args.num_classes or 1000, in_chans=in_chans, checkpoint=args.checkpoint)
    if flag == "--onnx":
        diff = export_checked(fuse(model) if args.fused else model.eval(), out, image_size, in_chans)
        print(f"{out}: opset 17, dynamic batch, {'fused, ' if args.fused else ''}onnxruntime vs PyTorch max relative "
              f"difference {diff:.1e}")
        return 0
    from ..keras.export import export_keras, export_saved_model  # optional: Keras and a backend

    export = export_keras if flag == "--keras" else export_saved_model
    diff = export(model.eval(), out, image_size, in_chans)
    what = "Keras 3 model, reloaded" if flag == "--keras" else "TensorFlow SavedModel (serve), loaded back"
    print(f"{out}: {what}; {image_size} px NHWC input, max relative difference from PyTorch {diff:.1e}")
    return 0


def _export_hub(args: argparse.Namespace) -> int:
    """``scalenet export --hub DIR``: a training checkpoint, or a published name (or structure) with weights."""
    refuse_given(args, ["fused"], "with --hub (the Hub folder holds the trainable model)")
    trained = is_training_checkpoint(args.checkpoint)
    if trained:
        refuse_given(args, ["model", "num_classes", "in_chans", "layers"],
                     f"with --checkpoint {args.checkpoint}, a scalenet train checkpoint that holds them")
    elif args.model is None:
        raise ValueError("give --model NAME|structure.json (or a scalenet train checkpoint as --checkpoint)")
    out = export_hub(args.hub, args.checkpoint, model=None if trained else args.model, image_size=args.image_size,
                     num_classes=args.num_classes or 1000, in_chans=args.in_chans or 3, layers=args.layers,
                     license=args.license, force=args.force)
    print(f"{out}: config.json, model.safetensors, README.md; load with timm.create_model(\"local-dir:{out}\", "
          "pretrained=True) after import scalenet")
    return 0


# ---------------------------------------------------------------------------- bench
def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default cpu")
    p.add_argument("--batch-size", type=positive_int, default=16, help="default 16")
    p.add_argument("--image-size", type=positive_int, default=224, help="default 224")
    p.add_argument("--repeats", type=positive_int, default=10, help="interleaved rounds, median and min reported (default 10)")
    p.add_argument("--compile", action="store_true", help="torch.compile every model (inference: inductor with freezing)")
    p.add_argument("--cuda-graphs", action="store_true", help="torch.compile with CUDA graphs (mode reduce-overhead; CUDA only)")
    p.add_argument("--train", action="store_true", help="training steps (forward + backward + SGD) instead of inference")
    p.add_argument("--channels-first", action="store_true", help="NCHW instead of channels_last")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                   help="autocast dtype (default: fp16 on CUDA, fp32 on CPU; fp16 is CUDA only)")
    p.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime rows (CPU inference only)")
    p.add_argument("--models", type=names, default=None,
                   help="comma-separated subset (resnet50 is always included as the reference)")
    p.add_argument("--out-dir", default="benchmarks/results",
                   help="where the JSON and markdown go, named after the device and settings (default benchmarks/results)")
    add_force(p, "earlier results of the same device and settings")
    p.add_argument("--json", action="store_true")


def cmd_bench(args: argparse.Namespace) -> int:
    check_results_free(args.out_dir, device=args.device, train=args.train, batch_size=args.batch_size,
                       compile=args.compile, cuda_graphs=args.cuda_graphs, precision=args.precision, force=args.force,
                       models=args.models)
    result = run_bench(
        device=args.device, batch_size=args.batch_size, image_size=args.image_size, repeats=args.repeats,
        compile=args.compile, train=args.train, channels_last=not args.channels_first, onnx=not args.no_onnx,
        models=args.models, progress=not args.json, cuda_graphs=args.cuda_graphs, precision=args.precision,
    )
    js, md = save_results(result, args.out_dir)
    print(json.dumps(result) if args.json else f"{format_bench_table(result)}\n\nwritten: {js}, {md}")
    return 0


#: command -> (help, add_<command>_arguments, cmd_<command>)
COMMANDS = {
    "info": ("per-block allocation table, MACs and params of a model or structure file", add_info_arguments, cmd_info),
    "latency-model": ("time SA blocks on this device and fit a latency cost model (ms per neuron and per branch)",
                      add_latency_model_arguments, cmd_latency_model),
    "export": ("export to ONNX, Keras, a TensorFlow SavedModel or a Hub folder, each checked against PyTorch",
               add_export_arguments, cmd_export),
    "bench": ("latency/throughput against ResNet-50, SE-ResNet-50 and ResNeXt-50, interleaved", add_bench_arguments,
              cmd_bench),
}
