"""Command-line interface: argument parsing and error reporting only.

Each command has one ``add_<command>_arguments`` function and one ``cmd_<command>`` function
that calls into the library. Defaults shown in the help come from the library's config
dataclasses, so they cannot drift from what runs. A user error (ValueError,
FileNotFoundError, PermissionError, a missing optional package) is printed as one line,
``scalenet: error: ...``, with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2


# ---------------------------------------------------------------------------- argument types
def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 3,4,6,3, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 3,4,6,3, got {text!r}")
    return values


def _name_list(text: str) -> list[str]:
    names = [v for v in text.replace(" ", "").split(",") if v]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated model names or structure files, got {text!r}")
    return names


def _number(convert: Callable[[str], Any], accept: Callable[[Any], bool], expected: str, name: str):
    """An argparse type: ``convert`` the text, refuse (one line) what ``accept`` does not."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):  # NaN fails every comparison, so it is refused too
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text if convert is float else value}")
        return value

    parse.__name__ = name
    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer", "positive_int")
_nonneg_int = _number(int, lambda v: v >= 0, "a whole number, 0 or more", "nonneg_int")
_fraction = _number(float, lambda v: 0.0 <= v <= 1.0, "a number between 0 and 1", "fraction")
_positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive number", "positive_float")
_nonneg_float = _number(float, lambda v: 0 <= v < float("inf"), "a finite number, 0 or more", "nonneg_float")


def _names(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def _default(config: type, name: str) -> Any:
    """A config dataclass's default for ``name`` (for help texts)."""
    f = {f.name: f for f in dataclasses.fields(config)}[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _force_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--force", action="store_true", help=f"overwrite {what} if it exists (default: refuse)")


def _option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _refuse_given(args: argparse.Namespace, dests: Sequence[str], why: str) -> None:
    """One line naming the options given on the command line that ``why`` says cannot apply."""
    given = [_option(d) for d in dests if d in getattr(args, "given", ())]
    if given:
        raise ValueError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply {why}; drop "
                         f"{'it' if len(given) == 1 else 'them'}")


def _resume(text: str) -> bool | str:
    if text != "auto":
        raise argparse.ArgumentTypeError(f"expected nothing or 'auto', got {text!r}")
    return text


def add_fault_tolerance_arguments(p: argparse.ArgumentParser) -> None:
    """--resume [auto] and --save-every, shared by train and detect-train."""
    from .training import DEFAULT_SAVE_EVERY, PREEMPTED_EXIT_CODE

    p.add_argument("--resume", nargs="?", const=True, default=False, type=_resume, metavar="auto",
                   help="continue the run in RUN_DIR from its newest complete checkpoint; '--resume auto' continues "
                        "one if it is there and starts fresh otherwise (one command for the first start and every "
                        "torchrun restart)")
    p.add_argument("--save-every", type=_positive_float, default=None, metavar="MINUTES",
                   help=f"also checkpoint inside an epoch when this many minutes have passed since the last checkpoint "
                        f"(default {DEFAULT_SAVE_EVERY:g}; epochs shorter than that only save at their end). SIGTERM: the "
                        f"step finishes, a checkpoint is written, exit code {PREEMPTED_EXIT_CODE}")


def _config(config: type, args: argparse.Namespace, names: Sequence[str], **base: Any):
    """``config`` from ``base`` plus the options given on the command line (None: not given)."""
    values = dict(base)
    values.update({k: getattr(args, k) for k in names if getattr(args, k, None) is not None})
    return config(**values)


# ---------------------------------------------------------------------------- info
def add_info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="NAME|PATH", help="a published model name or a structure JSON")
    p.add_argument("--image-size", type=_positive_int, default=None, help="input side (default: the structure's own)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs counted (default 1000)")
    p.add_argument("--layers", type=_int_list, default=None, help="stage depths for a bare-list file, e.g. 2,2,2")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of the table")
    p.add_argument("--latency", default=None, metavar="MODEL.json",
                   help="also print each block's latency predicted by this cost model (scalenet latency-model)")


def cmd_info(args: argparse.Namespace) -> int:
    from .factory import resolve_structure
    from .structure import format_summary

    from .devices import check_memory

    structure = resolve_structure(args.model, layers=args.layers)
    latency = _latency_rows(args, structure) if args.latency else None
    summary = structure.summary(image_size=args.image_size, num_classes=args.num_classes)
    if latency is not None:
        summary["latency"] = latency
    print(json.dumps(summary) if args.json else format_summary(summary))
    if latency is not None and not args.json:
        print(format_latency(latency))
    try:
        check_memory(structure, args.num_classes)
    except ValueError as e:  # the table is still worth reading; building the model would fail
        print(f"note: {e}", file=sys.stderr)
    return 0


def _latency_rows(args: argparse.Namespace, structure) -> dict[str, Any]:
    from .latency import LatencyModel

    model = LatencyModel.load(args.latency)
    size = args.image_size or model.settings.image_size
    if size != model.settings.image_size:
        raise ValueError(f"{args.latency} was measured at {model.settings.image_size} px; --image-size {size} differs")
    blocks = model.per_block(structure)
    return {"model": str(args.latency), "settings": dataclasses.asdict(model.settings),
            "blocks": [{"block": name, "ms": ms} for name, ms in blocks], "other_ms": model.other,
            "total_ms": model.predict(structure)}


def format_latency(latency: dict[str, Any]) -> str:
    s = latency["settings"]
    where = f"{s['device_name']}" + (f", {s['threads']} threads" if s["threads"] else "")
    lines = ["", f"predicted latency ({latency['model']}: {where}, batch {s['batch_size']}, {s['image_size']} px"
             f"{', compiled' if s['compile'] else ''})", "", "block      |      ms"]
    lines += [f"{b['block']:<10} | {b['ms']:7.1f}" for b in latency["blocks"]]
    lines += [f"{'other':<10} | {latency['other_ms']:7.1f}   (stem, shortcuts, head)",
              f"{'total':<10} | {latency['total_ms']:7.1f}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- latency model
def add_latency_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="MODEL.json", help="where to write the cost model")
    _force_argument(p, "the cost model")
    p.add_argument("--reference", default="scalenet50", metavar="NAME|PATH",
                   help="the layout measured and the network that calibrates the rest (default scalenet50)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default cpu")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="default 16")
    p.add_argument("--image-size", type=_positive_int, default=None, help="default: the reference's own")
    p.add_argument("--compile", action="store_true", help="time torch.compile'd blocks and networks")
    p.add_argument("--configs", type=_positive_int, default=14, help="channel splits timed per stage (default 14)")
    p.add_argument("--repeats", type=_positive_int, default=5, help="interleaved rounds per timing (default 5)")
    p.add_argument("--check", type=_name_list, default=[], metavar="NAME,...",
                   help="structures (names or files) whose measured latency is compared with the prediction (default: none)")
    p.add_argument("--no-progress", action="store_true")


def cmd_latency_model(args: argparse.Namespace) -> int:
    from .factory import resolve_structure
    from .fileio import check_output_file
    from .latency import current_settings, measure_latency_model, prediction_errors

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


# ---------------------------------------------------------------------------- training options
_TRAIN_OPTIONS = ("epochs", "batch_size", "lr", "wd", "warmup", "label_smoothing", "workers", "seed", "init",
                  "freeze_stages", "save_every")
_TRAIN_FLAGS = ("amp", "channels_last", "compile", "no_bn_wd")


def add_training_arguments(p: argparse.ArgumentParser, epochs: int | str | None = None) -> None:
    """The training options of train and allocate (None: the config's default, shown in the help)."""
    from .data import DECODERS
    from .training import TrainConfig

    d = lambda name: _default(TrainConfig, name)  # noqa: E731
    p.add_argument("--preset", choices=["imagenet"], default=None, help="the release's ImageNet recipe (120 epochs, cosine)")
    p.add_argument("--epochs", type=_positive_int, default=None, help=f"default {epochs or d('epochs')}")
    p.add_argument("--image-size", type=_positive_int, default=None, help="default: from the data")
    p.add_argument("--batch-size", type=_positive_int, default=None, help=f"default {d('batch_size')}")
    p.add_argument("--lr", type=_positive_float, default=None, help=f"peak learning rate of the cosine schedule (default {d('lr')})")
    p.add_argument("--wd", type=_nonneg_float, default=None, help=f"weight decay (default {d('wd')})")
    p.add_argument("--warmup", type=_nonneg_float, default=None, help=f"epochs of linear warmup (default {d('warmup')})")
    p.add_argument("--label-smoothing", type=_fraction, default=None, help=f"default {d('label_smoothing')}")
    p.add_argument("--no-bn-wd", action="store_true", help="no weight decay on BN parameters and biases")
    p.add_argument("--amp", action="store_true", help="mixed precision (fp16 on CUDA, bf16 on CPU)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--workers", type=_nonneg_int, default=None, help=f"data-loading processes for image folders (default {d('workers')})")
    p.add_argument("--decode", choices=DECODERS, default="pil",
                   help="image-file decoder: PIL, or TorchCodec or torchvision.io (deprecated from torchvision 0.29) "
                        "with the transforms on uint8 tensors (default pil; see benchmarks/results/data-loading-*)")
    p.add_argument("--seed", type=int, default=None, help=f"default {d('seed')}")
    p.add_argument("--init", default=None, metavar="PATH",
                   help="start from these weights: a release .pth/.safetensors or a scalenet train checkpoint "
                        "(the classifier starts from scratch when the number of classes differs)")
    p.add_argument("--freeze-stages", type=_nonneg_int, default=None, metavar="N",
                   help=f"fine-tuning: train only the stages after the first N and the head (default {d('freeze_stages')})")
    p.add_argument("--train-subset", type=_positive_int, default=None, help="train on a random subset of N images")
    p.add_argument("--val-subset", type=_positive_int, default=None, help="validate on a random subset of N images")
    p.add_argument("--no-augment", action="store_true", help="no crop/flip augmentation (for very short runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _train_config(args: argparse.Namespace, **base: Any):
    from .training import PRESETS, TrainConfig

    base.update(PRESETS[args.preset] if args.preset else {})
    base.update({flag: True for flag in _TRAIN_FLAGS if getattr(args, flag, False)})
    base.update(progress=not args.no_progress, **({"augment": False} if args.no_augment else {}))
    return _config(TrainConfig, args, _TRAIN_OPTIONS, **base)


def _data(args: argparse.Namespace, seed: int):
    from .data import build_data

    return build_data(args.data, args.image_size, train_subset=args.train_subset, val_subset=args.val_subset, seed=seed,
                      decode=args.decode)


# ---------------------------------------------------------------------------- train / eval
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="NAME|PATH", help="a published model name or a structure JSON")
    p.add_argument("--data", required=True, metavar="DIR|fashion-mnist", help="an ImageFolder directory or a built-in data set")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory: checkpoints, metrics.jsonl, TensorBoard logs")
    add_training_arguments(p)
    add_fault_tolerance_arguments(p)
    p.add_argument("--layers", type=_int_list, default=None, help="stage depths for a bare-list structure file")


def cmd_train(args: argparse.Namespace) -> int:
    from .training import train
    from .factory import resolve_structure
    from .training import is_main_process

    structure = resolve_structure(args.model, layers=args.layers)
    cfg = _train_config(args)
    result = train(structure, _data(args, cfg.seed), cfg, args.out, resume=args.resume)
    if result.metrics and is_main_process():
        best = max(result.metrics, key=lambda r: r["val_top1"])
        print(
            f"{structure.name or 'model'}: val top-1 {100 * result.final['val_top1']:.2f}% after epoch "
            f"{result.final['epoch']} (best {100 * best['val_top1']:.2f}% at epoch {best['epoch']}); run in {args.out}"
        )
    return 0


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by scalenet train (last.pt/best.pt)")
    p.add_argument("--data", required=True, metavar="DIR|fashion-mnist")
    p.add_argument("--image-size", type=_positive_int, default=None, help="default: the training image size")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="default 256")
    p.add_argument("--workers", type=_nonneg_int, default=0, help="data-loading processes (default 0)")
    p.add_argument("--val-subset", type=_positive_int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help='print {"top1": ..., "top5": ...} as fractions')


def cmd_eval(args: argparse.Namespace) -> int:
    from .training import evaluate_checkpoint

    out = evaluate_checkpoint(args.checkpoint, args.data, image_size=args.image_size, batch_size=args.batch_size,
                              workers=args.workers, val_subset=args.val_subset)
    if args.json:
        print(json.dumps({k: v for k, v in out.items() if k != "data"}))
    else:
        print(
            f"{args.checkpoint} on {out['data']} ({out['images']} images): top-1 {100 * out['top1']:.2f}% "
            f"(error {100 * out['top1_err']:.2f}%), top-5 {100 * out['top5']:.2f}% (error {100 * out['top5_err']:.2f}%)"
        )
    return 0


# ---------------------------------------------------------------------------- predict
def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and folders (searched recursively)")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by scalenet train (best.pt/last.pt)")
    p.add_argument("--topk", type=_positive_int, default=5, help="classes shown per image (default 5)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--json", action="store_true", help='one JSON object per line: {"path", "top": [{"class", "index", "prob"}]}')
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import format_table, image_paths, load_predictor

    paths = image_paths(args.inputs)
    predictor = load_predictor(args.checkpoint)
    records = list(predictor.predict(paths, topk=args.topk, batch_size=args.batch_size,
                                     progress=not args.no_progress and len(paths) > 1))
    skipped = [r for r in records if r.get("skipped")]
    if len(skipped) == len(records):
        raise ValueError(f"none of the {len(records)} file(s) is a readable image (first: {records[0]['path']})")
    if args.json:
        for r in records:
            if not r.get("skipped"):
                print(json.dumps(r))
    else:
        print(format_table(records))
    if skipped:
        print(f"note: skipped {len(skipped)} unreadable or non-image file(s), e.g. {skipped[0]['path']}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- allocate
def add_allocate_arguments(p: argparse.ArgumentParser) -> None:
    from .allocation import COMBINES, DEFAULT_COMBINE, DEFAULT_REPEATS, SEED_IMAGES

    p.add_argument("--data", default=None, metavar="DIR|fashion-mnist",
                   help="an ImageFolder directory or a built-in data set (required unless --scores)")
    p.add_argument("--scores", default=None, metavar="X.scores.json",
                   help="select again from an earlier allocation's seed networks (its sidecar), without training")
    p.add_argument("--from-runs", nargs="+", default=None, metavar="RUN_DIR",
                   help="score seed networks trained elsewhere (scalenet train --model seed.json) and select")
    p.add_argument("--out", default=None, metavar="structure.json",
                   help="the structure file to write (with OUT.scores.json and the chart OUT.png beside it; the seed "
                        "networks train in OUT.runs/seed-NNNN)")
    p.add_argument("--write-seed", default=None, metavar="seed.json",
                   help="only write the seed structure for --data and the layout (to train with scalenet train anywhere)")
    _force_argument(p, "the structure, its scores file and its chart")
    p.add_argument("--resume", nargs="?", const="auto", default=False, type=_resume, metavar="auto",
                   help="continue the seed runs in OUT.runs: finished ones are scored, not retrained, the interrupted "
                        "one continues from its newest checkpoint (one command for the first start and every restart)")
    p.add_argument("--save-every", type=_positive_float, default=None, metavar="MINUTES",
                   help="seed runs: also checkpoint inside an epoch after this many minutes (default 15)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--width-mult", type=_positive_float, default=None,
                        help="neurons kept per block, times the ResNet width (default 1.0)")
    budget.add_argument("--macs", type=_positive_int, default=None, help="MACs target for the whole network (met within 1%%)")
    budget.add_argument("--latency-ms", type=_positive_float, default=None, metavar="T",
                        help="predicted latency target on the device (never above T, within 1%% below)")
    p.add_argument("--multiple-of", type=int, default=None, metavar="M",
                   help="round each branch's neurons to a multiple of M (M >= 1; a branch may round to 0 neurons) "
                        "within the budget (default: no rounding)")
    lat = p.add_argument_group("latency budget", "the device and settings --latency-ms is for; the cost model is "
                               "--latency-model, or the cached one for these settings (measured once when missing)")
    lat.add_argument("--latency-model", default=None, metavar="MODEL.json", help="a cost model from scalenet latency-model")
    lat.add_argument("--latency-device", choices=["cpu", "cuda"], default="cpu", help="default cpu")
    lat.add_argument("--latency-threads", type=_positive_int, default=None, help="CPU threads (default: torch's)")
    lat.add_argument("--latency-batch-size", type=_positive_int, default=16, help="default 16")
    lat.add_argument("--latency-image-size", type=_positive_int, default=None, help="default: the data's")
    lat.add_argument("--latency-compile", action="store_true", help="latency of torch.compile'd networks")
    p.add_argument("--seed-width", type=_positive_int, default=None, help="seed neurons per scale (default: the block's planes)")
    p.add_argument("--scales", type=_int_list, default=[1, 2, 4, 7], help="pooling factors (default 1,2,4,7)")
    p.add_argument("--alpha", type=_nonneg_float, default=0.0,
                   help="keep neurons by score / cost^alpha, the cost of a neuron under the budget: its MACs for "
                        "--width-mult and --macs, its predicted ms for --latency-ms (default 0, the paper's ranking)")
    p.add_argument("--sparsity", type=_nonneg_float, default=0.0,
                   help="L1 weight on the SA-branch BN scales while the seed trains (default 0)")
    p.add_argument("--scope", choices=["block", "global"], default="block", help="rank per block (the paper) or across blocks (default block)")
    p.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                   help=f"seed networks to train (seeds SEED to SEED+N-1) and combine (default {DEFAULT_REPEATS})")
    p.add_argument("--combine", choices=list(COMBINES), default=DEFAULT_COMBINE,
                   help=f"mean: average the runs' own allocations; union: rank all runs' neurons together per block "
                        f"and scale (default {DEFAULT_COMBINE})")
    p.add_argument("--jobs", type=_positive_int, default=None,
                   help="seed networks trained at once: each with cores/jobs threads, or with CUDA each on a GPU of "
                        "its own (default: one per CPU core, or one per GPU)")
    p.add_argument("--layers", type=_int_list, default=None, help="blocks per stage (default by image size)")
    p.add_argument("--width", type=_positive_int, default=None, help="planes of stage 1 (default by image size)")
    p.add_argument("--bare", action="store_true", help="write the release's bare-list format")
    p.add_argument("--then-train", type=_positive_int, default=None, metavar="EPOCHS", help="then train the result from scratch")
    p.add_argument("--run-dir", default=None, help="run directory for --then-train (default: OUT_run)")
    add_training_arguments(p, epochs=f"the fewest that show each seed network {SEED_IMAGES:,} images")


def cmd_allocate(args: argparse.Namespace) -> int:
    from .training import under_torchrun

    sources = [k for k in ("data", "scores", "from_runs") if getattr(args, k) is not None]
    if len(sources) != 1:
        raise ValueError("give --data DIR (train seed networks), --scores X.scores.json or --from-runs RUN_DIR... "
                         "(select from trained ones)")
    if args.write_seed is not None:
        return _write_seed(args)
    if args.out is None:
        raise ValueError("give --out structure.json (or --write-seed seed.json to write the seed structure only)")
    if args.data is None:
        if args.then_train:
            raise ValueError("--then-train needs --data (the data to train the result on)")
        source = "--scores" if args.scores is not None else "--from-runs"
        _refuse_given(args, [*_SEED_OPTIONS, "resume"], f"with {source}, which selects from seed networks trained "
                                                       "already (train anew with --data to change them)")
    if args.latency_ms is None:
        _refuse_given(args, _LATENCY_OPTIONS, "without --latency-ms (they say what a latency budget is predicted for)")
    if args.then_train is None:
        _refuse_given(args, ["run_dir"], "without --then-train")
    elif under_torchrun():
        raise ValueError("--then-train does not apply under torchrun; train the result with torchrun -m scalenet "
                         "train --model OUT.json")
    out, run_dir = _allocate_outputs(args)
    result, data, cfg = _allocation(args, out)
    if result is None:  # a rank other than 0 under torchrun: rank 0 selects and writes
        return 0
    _report_allocation(result, result.save(out, bare=args.bare), out)
    if args.then_train:
        from .training import train

        trained = train(result.structure, data, dataclasses.replace(cfg, epochs=args.then_train), run_dir)
        print(f"{out.stem}: val top-1 {100 * trained.final['val_top1']:.2f}% after {args.then_train} epochs; "
              f"run in {run_dir}")
    return 0


def _write_seed(args: argparse.Namespace) -> int:
    """``allocate --write-seed seed.json``: the seed structure for the data and layout, nothing trained."""
    from .allocation import seed_for
    from .fileio import check_output_file

    if args.data is None:
        raise ValueError("--write-seed needs --data (the seed's image size and layout follow from it)")
    _refuse_given(args, ["out", "scores", "resume", "then_train", "run_dir", "width_mult", "macs", "latency_ms",
                         "multiple_of", "alpha", "scope", "combine", "repeats", "jobs", "sparsity", "bare"],
                  "with --write-seed, which only writes the seed structure")
    out = check_output_file(args.write_seed, "--write-seed", "seed.json", force=args.force)
    data = _data(args, args.seed if args.seed is not None else 0)
    seed = seed_for(data.image_size, layers=args.layers, width=args.width, scales=args.scales,
                    seed_width=args.seed_width)
    seed.save(out)
    print(f"{out}: seed structure for {data.name} ({data.image_size} px, {data.num_classes} classes), "
          f"{seed.macs(None, data.num_classes, data.in_chans):,} MACs; train it with scalenet train --model {out} "
          f"--data {args.data} --seed S, then scalenet allocate --from-runs RUN_DIR... --out structure.json")
    return 0


def _allocate_outputs(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """The structure file, its sidecar and chart, and the --then-train run: checked before any work."""
    from .allocation import AllocationResult
    from .fileio import check_output_file, check_output_files
    from .training import CHECKPOINT_FORMAT, RunDir

    out = check_output_file(args.out, "--out", "structure.json", force=args.force)
    sidecar, chart = AllocationResult.outputs(out)
    check_output_files({sidecar: "the scores file written beside the structure",
                        chart: "the chart written beside the structure"}, "--out", "structure.json", args.force)
    run_dir = (Path(args.run_dir) if args.run_dir else out.with_name(out.stem + "_run")) if args.then_train else None
    if run_dir is not None:
        RunDir(run_dir, CHECKPOINT_FORMAT).check_new()  # refused now, not after the allocation
    return out, run_dir


def _allocation(args: argparse.Namespace, out: Path):
    """The allocation the flags ask for: from a sidecar, from trained runs, or training the seeds."""
    from .allocation import Selection, allocate, load_runs, load_seed_runs, runs_dir_for, seed_epochs, select_runs

    selection = Selection(scope=args.scope, alpha=args.alpha, combine=args.combine, multiple_of=args.multiple_of)
    if args.data is None:
        runs, seed, training = load_runs(args.scores) if args.scores else load_seed_runs(args.from_runs)
        budget = _budget(args, seed.image_size).resolved(seed, progress=not args.no_progress)
        return select_runs(runs, seed, budget, training, selection, name=out.stem), None, None
    data = _data(args, args.seed if args.seed is not None else 0)
    cfg = _train_config(args, epochs=seed_epochs(len(data.train)))
    result = allocate(data, _budget(args, data.image_size), selection, layers=args.layers, width=args.width,
                      scales=args.scales, seed_width=args.seed_width, sparsity=args.sparsity, repeats=args.repeats,
                      jobs=args.jobs, train_config=cfg, runs=runs_dir_for(out), resume=bool(args.resume), name=out.stem)
    return result, data, cfg


def _report_allocation(result, paths: dict[str, Path], out: Path) -> None:
    from .agreement import format_agreement
    from .report import format_stage_summary

    s = result.structure
    nc, ic = result.training.num_classes, result.training.in_chans
    print(format_stage_summary(s))
    print(format_agreement(result.agreement))
    predicted = f", predicted {result.predicted:,.1f} ms" if result.unit == "ms" else ""
    print(
        f"{out}: {s.macs(None, nc, ic):,} MACs, {s.params(nc, ic):,} params{predicted} (seed network "
        f"{result.seed.macs(None, nc, ic):,} MACs); scores in {paths['sidecar']}, chart in {paths['chart']}"
    )


def _budget(args: argparse.Namespace, image_size: int):
    """The budget the flags ask for (default ``--width-mult 1``). A latency budget is predicted
    with the --latency-model file checked against the wanted settings, or with those settings
    (the cached model is then found for the seed's layout)."""
    from .allocation import budget_from
    from .latency import current_settings, requested_model

    if args.latency_ms is None:
        return budget_from(1.0 if args.width_mult is None and args.macs is None else args.width_mult, args.macs)
    wanted = current_settings(args.latency_device, args.latency_threads, args.latency_batch_size,
                              args.latency_image_size or image_size, args.latency_compile, option="--latency-device")
    return budget_from(latency_ms=args.latency_ms, latency_model=requested_model(args.latency_model, wanted))


#: allocate's options that set up the seed networks' training: with --scores they cannot apply
_SEED_OPTIONS = ("layers", "width", "scales", "seed_width", "repeats", "sparsity", "jobs", "preset", "epochs",
                 "image_size", "batch_size", "lr", "wd", "warmup", "label_smoothing", "no_bn_wd", "amp", "channels_last",
                 "compile", "workers", "decode", "seed", "init", "freeze_stages", "train_subset", "val_subset",
                 "no_augment", "save_every")
#: what a latency budget is predicted for
_LATENCY_OPTIONS = ("latency_model", "latency_device", "latency_threads", "latency_batch_size", "latency_image_size",
                    "latency_compile")


# ---------------------------------------------------------------------------- study
_STUDY_OPTIONS = ("seeds", "width_mult", "macs", "layers", "width", "image_size", "train_subset", "val_subset",
                  "repeats", "seed_epochs", "seed_subset", "latency_model", "latency_ms", "latency_alpha",
                  "latency_tolerance", "jobs")
#: study options that set every arm's training recipe (a TrainConfig)
_STUDY_RECIPE_OPTIONS = ("seed", "epochs", "batch_size", "lr", "wd", "warmup")


def add_study_arguments(p: argparse.ArgumentParser) -> None:
    from .study import ARMS, LATENCY_ARMS, STUDY_RECIPE, StudyConfig

    d = lambda name: getattr(STUDY_RECIPE, name) if hasattr(STUDY_RECIPE, name) else _default(StudyConfig, name)  # noqa: E731
    p.add_argument("--data", required=True, metavar="DIR|fashion-mnist", help="an ImageFolder directory or a built-in data set")
    p.add_argument("--out", required=True, metavar="STUDY_DIR", help="study directory (an unfinished study there resumes)")
    p.add_argument("--arms", type=_arm_names, default=None,
                   help=f"comma-separated subset of {','.join(ARMS + LATENCY_ARMS)} (default: {','.join(ARMS)})")
    p.add_argument("--seeds", type=int, default=None, help=f"training seeds per arm, at least 2 (default {d('seeds')})")
    p.add_argument("--seed", type=int, default=None, help=f"first seed (default {d('seed')})")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--width-mult", type=_positive_float, default=None, help="the learned arm's budget (default 1.0)")
    budget.add_argument("--macs", type=_positive_int, default=None, help="MACs of every arm (within 1%%)")
    p.add_argument("--layers", type=_int_list, default=None, help="blocks per stage (default by image size)")
    p.add_argument("--width", type=_positive_int, default=None, help="planes of stage 1 (default by image size)")
    p.add_argument("--image-size", type=_positive_int, default=None, help="default: from the data")
    p.add_argument("--epochs", type=_positive_int, default=None, help=f"training epochs of every run (default {d('epochs')})")
    p.add_argument("--batch-size", type=_positive_int, default=None, help=f"default {d('batch_size')}")
    p.add_argument("--lr", type=_positive_float, default=None, help=f"default {d('lr')}")
    p.add_argument("--wd", type=_nonneg_float, default=None, help=f"default {d('wd')}")
    p.add_argument("--warmup", type=_nonneg_float, default=None, help=f"epochs of linear warmup (default {d('warmup')})")
    p.add_argument("--augment", action="store_true", help="crop + flip while training (default: off)")
    p.add_argument("--train-subset", type=_positive_int, default=None, help="train every run on a random subset of N images")
    p.add_argument("--val-subset", type=_positive_int, default=None,
                   help=f"per-epoch validation images (default {d('val_subset')}; the final test uses all)")
    p.add_argument("--repeats", type=_positive_int, default=None, help="seed networks of the learned arm's allocation")
    p.add_argument("--seed-epochs", type=_positive_int, default=None,
                   help="epochs of each seed network (default: as scalenet allocate, one per 8,000 images)")
    p.add_argument("--seed-subset", type=_positive_int, default=None, help=f"images for the seed networks (default {d('seed_subset')})")
    p.add_argument("--latency-model", default=None, metavar="MODEL.json",
                   help="match the arms in latency, predicted by this cost model (scalenet latency-model) and measured, "
                        "not in MACs")
    p.add_argument("--latency-ms", type=_positive_float, default=None, help="every arm's latency (default: the learned arm's)")
    p.add_argument("--latency-alpha", type=_nonneg_float, default=None,
                   help="the latency arm keeps neurons by score / ms^alpha (default 1.0)")
    p.add_argument("--latency-tolerance", type=_positive_float, default=None, metavar="FRACTION",
                   help="every arm's measured latency lands within this of the target, its budget calibrated "
                        "(default 0.05)")
    p.add_argument("--jobs", type=_positive_int, default=None,
                   help="trainings run at once: each with cores/jobs threads, or with CUDA each on a GPU of its own "
                        "(default: one per CPU core, or one per GPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _arm_names(text: str) -> list[str]:
    names = _names(text)
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated arm names like learned,uniform, got {text!r}")
    return names


def cmd_study(args: argparse.Namespace) -> int:
    from .study import ARMS, STUDY_RECIPE, StudyConfig, format_study, run_study

    recipe = dataclasses.asdict(STUDY_RECIPE) | {"progress": not args.no_progress}
    recipe |= {"augment": True} if args.augment else {}
    cfg = _config(StudyConfig, args, _STUDY_OPTIONS, data=args.data, arms=tuple(args.arms or ARMS),
                  train=_config(type(STUDY_RECIPE), args, _STUDY_RECIPE_OPTIONS, **recipe))
    from .training import is_main_process

    report = run_study(cfg, args.out)
    if is_main_process():  # under torchrun rank 0 writes and reports
        print(format_study(report))
        print(f"written: {Path(args.out) / 'study.json'}, study.md, study.png")
    return 0


# ---------------------------------------------------------------------------- demo
def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=["quick", "full"], default="quick",
                   help="quick: about 15 minutes on a 2-core CPU (default); full: long, meant for a GPU")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo; an earlier run there is moved aside)")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, profile=args.profile, seed=args.seed, progress=not args.no_progress)
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
    _force_argument(p, "the ONNX file, the Keras file or the SavedModel or Hub folder")
    p.add_argument("--fused", action="store_true", help="ONNX: export the BN-folded inference model")
    p.add_argument("--image-size", type=_positive_int, default=None, help="default: the structure's own")
    p.add_argument("--num-classes", type=_positive_int, default=None, help="default 1000")
    p.add_argument("--in-chans", type=_positive_int, default=None, help="default 3")
    p.add_argument("--layers", type=_int_list, default=None, help="stage depths for a bare-list structure file")
    p.add_argument("--license", default=None, help="Hub: the model card's license (default apache-2.0)")


def _is_training_checkpoint(path: str | None) -> bool:
    """Whether ``path`` is a ``scalenet train`` checkpoint (its entries looked at, tensors mapped, not read)."""
    from .checkpoint import CheckpointError
    from .training import load_run_checkpoint

    if path is None or Path(path).suffix == ".safetensors" or not Path(path).is_file():
        return False
    try:
        load_run_checkpoint(path, mmap=True)
    except CheckpointError:  # a plain weight file (or an old, non-zip .pth)
        return False
    return True


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_checked
    from .factory import create_model, resolve_structure
    from .fuse import fuse

    if args.hub is not None:
        return _export_hub(args)
    _refuse_given(args, ["license"], "without --hub (it is the model card's)")
    flag = "--onnx" if args.onnx else "--keras" if args.keras else "--saved-model"
    if args.model is None:
        raise ValueError(f"{flag} needs --model NAME|structure.json")
    if flag != "--onnx":
        _refuse_given(args, ["fused"], f"with {flag} (the Keras model is the trainable one; BN folds nothing there)")
    structure = resolve_structure(args.model, layers=args.layers)
    image_size = args.image_size or structure.image_size
    structure.check_input(image_size)
    out = _export_output(args, flag)
    in_chans = args.in_chans or 3
    model = create_model(structure, num_classes=args.num_classes or 1000, in_chans=in_chans, checkpoint=args.checkpoint)
    if flag == "--onnx":
        diff = export_checked(fuse(model) if args.fused else model.eval(), out, image_size, in_chans)
        print(f"{out}: opset 17, dynamic batch, {'fused, ' if args.fused else ''}onnxruntime vs PyTorch max relative "
              f"difference {diff:.1e}")
        return 0
    from .keras.export import export_keras, export_saved_model  # optional: Keras and a backend

    export = export_keras if flag == "--keras" else export_saved_model
    diff = export(model.eval(), out, image_size, in_chans)
    what = "Keras 3 model, reloaded" if flag == "--keras" else "TensorFlow SavedModel (serve), loaded back"
    print(f"{out}: {what}; {image_size} px NHWC input, max relative difference from PyTorch {diff:.1e}")
    return 0


def _export_output(args: argparse.Namespace, flag: str) -> Path:
    """The export's output, checked before any work: a file for --onnx and --keras (which must
    end in .keras), a folder for --saved-model; an existing one only with --force."""
    from .fileio import check_output_file, check_writable_dir

    if flag == "--onnx":
        return check_output_file(args.onnx, "--onnx", "model.onnx", force=args.force)
    if flag == "--keras":
        if Path(args.keras).suffix != ".keras":
            raise ValueError(f"--keras {args.keras}: Keras writes .keras files; give a name such as model.keras")
        return check_output_file(args.keras, "--keras", "model.keras", force=args.force)
    out = Path(args.saved_model)
    check_writable_dir(out.parent)
    if out.exists() and not args.force:
        raise FileExistsError(f"--saved-model {out} exists; choose another folder or pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--saved-model {out} is a file; give a folder name")
    return out


def _export_hub(args: argparse.Namespace) -> int:
    """``scalenet export --hub DIR``: a training checkpoint, or a published name (or structure) with weights."""
    from .hub import export_hub

    _refuse_given(args, ["fused"], "with --hub (the Hub folder holds the trainable model)")
    trained = _is_training_checkpoint(args.checkpoint)
    if trained:
        _refuse_given(args, ["model", "num_classes", "in_chans", "layers"],
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
    p.add_argument("--batch-size", type=_positive_int, default=16, help="default 16")
    p.add_argument("--image-size", type=_positive_int, default=224, help="default 224")
    p.add_argument("--repeats", type=_positive_int, default=10, help="interleaved rounds, median and min reported (default 10)")
    p.add_argument("--compile", action="store_true", help="torch.compile every model (inference: inductor with freezing)")
    p.add_argument("--cuda-graphs", action="store_true", help="torch.compile with CUDA graphs (mode reduce-overhead; CUDA only)")
    p.add_argument("--train", action="store_true", help="training steps (forward + backward + SGD) instead of inference")
    p.add_argument("--channels-first", action="store_true", help="NCHW instead of channels_last")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                   help="autocast dtype (default: fp16 on CUDA, fp32 on CPU; fp16 is CUDA only)")
    p.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime rows (CPU inference only)")
    p.add_argument("--models", type=_names, default=None,
                   help="comma-separated subset (resnet50 is always included as the reference)")
    p.add_argument("--out-dir", default="benchmarks/results",
                   help="where the JSON and markdown go, named after the device and settings (default benchmarks/results)")
    _force_argument(p, "earlier results of the same device and settings")
    p.add_argument("--json", action="store_true")


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import check_results_free, format_table, run_bench, save_results

    check_results_free(args.out_dir, device=args.device, train=args.train, batch_size=args.batch_size,
                       compile=args.compile, cuda_graphs=args.cuda_graphs, precision=args.precision, force=args.force,
                       models=args.models)
    result = run_bench(
        device=args.device, batch_size=args.batch_size, image_size=args.image_size, repeats=args.repeats,
        compile=args.compile, train=args.train, channels_last=not args.channels_first, onnx=not args.no_onnx,
        models=args.models, progress=not args.json, cuda_graphs=args.cuda_graphs, precision=args.precision,
    )
    js, md = save_results(result, args.out_dir)
    print(json.dumps(result) if args.json else f"{format_table(result)}\n\nwritten: {js}, {md}")
    return 0


# ---------------------------------------------------------------------------- detection
_DETECT_OPTIONS = ("backbone", "backbone_checkpoint", "epochs", "batch_size", "lr", "wd", "momentum", "warmup_iters",
                   "min_size", "max_size", "trainable_layers", "norm", "fpn_channels", "workers", "seed", "save_every")


def add_detect_train_arguments(p: argparse.ArgumentParser) -> None:
    from .detection.engine import DetectConfig

    d = lambda name: _default(DetectConfig, name)  # noqa: E731
    p.add_argument("--coco-json", required=True, metavar="PATH", help="COCO instances annotation JSON")
    p.add_argument("--images", required=True, metavar="DIR", help="the folder the JSON's file_name entries are in")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory: last.pt/best.pt, metrics.jsonl")
    p.add_argument("--backbone", default=None, metavar="NAME|PATH", help=f"published name or structure JSON (default {d('backbone')})")
    p.add_argument("--backbone-checkpoint", default=None, metavar="PATH",
                   help="ImageNet weights: a scalenet train checkpoint, .safetensors, or the release's .pth")
    p.add_argument("--epochs", type=_positive_int, default=None, help=f"default {d('epochs')} (the 1x schedule)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help=f"images per process (default {d('batch_size')})")
    p.add_argument("--lr", type=float, default=None, help=f"default {d('lr')} (for 16 images per step in all)")
    p.add_argument("--wd", type=float, default=None, help=f"default {d('wd')}")
    p.add_argument("--momentum", type=float, default=None, help=f"default {d('momentum')}")
    p.add_argument("--lr-steps", type=_int_list, default=None,
                   help=f"epochs after which the LR drops 10x (default {','.join(map(str, d('lr_steps')))})")
    p.add_argument("--warmup-iters", type=int, default=None, help=f"linear warmup iterations (default {d('warmup_iters')})")
    p.add_argument("--min-size", type=_positive_int, default=None, help=f"shorter image side (default {d('min_size')}, the paper's)")
    p.add_argument("--max-size", type=_positive_int, default=None, help=f"longer side cap (default {d('max_size')}, the paper's)")
    p.add_argument("--trainable-layers", type=int, choices=range(6), default=None,
                   help=f"stages trained, from the top (default {d('trainable_layers')})")
    p.add_argument("--norm", choices=["frozen", "bn"], default=None, help=f"backbone BN: frozen or trained (default {d('norm')})")
    p.add_argument("--fpn-channels", type=_positive_int, default=None, help=f"FPN width (default {d('fpn_channels')})")
    p.add_argument("--val-json", default=None, metavar="PATH", help="evaluate on this set after every epoch (best.pt by AP)")
    p.add_argument("--val-images", default=None, metavar="DIR")
    p.add_argument("--amp", action="store_true", help="mixed precision (fp16 on CUDA)")
    p.add_argument("--workers", type=_nonneg_int, default=None, help=f"data-loading processes (default {d('workers')})")
    p.add_argument("--seed", type=int, default=None, help=f"default {d('seed')}")
    add_fault_tolerance_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_detect_train(args: argparse.Namespace) -> int:
    from .detection import CocoDetection, DetectConfig, train_detector
    from .training import is_main_process

    lr_steps = {"lr_steps": tuple(args.lr_steps)} if args.lr_steps is not None else {}
    cfg = _config(DetectConfig, args, _DETECT_OPTIONS, amp=args.amp, progress=not args.no_progress, **lr_steps)
    if cfg.backbone_checkpoint is not None and not Path(cfg.backbone_checkpoint).is_file():
        raise FileNotFoundError(f"backbone checkpoint not found: {cfg.backbone_checkpoint}")
    if (args.val_json is None) != (args.val_images is None):
        raise ValueError("give --val-json and --val-images together (or neither)")
    dataset = CocoDetection(args.coco_json, args.images, train=True)
    val = CocoDetection(args.val_json, args.val_images) if args.val_json else None
    _, metrics = train_detector(dataset, cfg, args.out, resume=args.resume, val_dataset=val)
    if metrics and is_main_process():
        last = metrics[-1]
        ap = f", val AP {100 * last['val_AP']:.1f}" if "val_AP" in last else ""
        print(f"faster-rcnn {cfg.backbone}: loss {last['loss']:.4f} after epoch {last['epoch']}{ap}; run in {args.out}")
    return 0


def add_detect_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="last.pt/best.pt written by scalenet detect-train")
    p.add_argument("--coco-json", required=True, metavar="PATH")
    p.add_argument("--images", required=True, metavar="DIR")
    p.add_argument("--batch-size", type=_positive_int, default=1,
                   help="images per step (default 1: larger batches pad images to a common size, which moves scores slightly)")
    p.add_argument("--workers", type=_nonneg_int, default=0, help="data-loading processes (default 0)")
    p.add_argument("--save", default=None, metavar="PATH", help="metrics JSON (default: eval-<json name>.json beside the checkpoint)")
    p.add_argument("--detections", default=None, metavar="PATH", help="also write the detections in COCO results format")
    _force_argument(p, "the metrics JSON and the detections file")
    p.add_argument("--score-thresh", type=_fraction, default=0.05, help="drop detections scoring below this (default 0.05)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_detect_eval(args: argparse.Namespace) -> int:
    from .detection import evaluate_checkpoint, format_coco_table

    report = evaluate_checkpoint(
        args.checkpoint, args.coco_json, args.images, save=args.save, detections=args.detections,
        score_thresh=args.score_thresh, batch_size=args.batch_size, workers=args.workers, force=args.force,
        progress=not args.no_progress and not args.json,
    )
    if report is None:  # not rank 0
        return 0
    if report["skipped"]:
        print(f"note: {Path(args.coco_json).name}: skipped {report['skipped']}", file=sys.stderr)
    saved = report.pop("saved")
    report.pop("skipped")
    if args.json:
        print(json.dumps(report))
    else:
        print(format_coco_table(report))
        print(f"\n{report['images']} images, {report['detections']} detections; written: {saved}")
    return 0


# ---------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """Usage errors are one line too (no usage dump), exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: command -> (help, add_<command>_arguments, cmd_<command>)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "info": ("per-block allocation table, MACs and params of a model or structure file", add_info_arguments, cmd_info),
    "train": ("train a model, from scratch or from weights (--init); torchrun -m scalenet train ... for DDP",
              add_train_arguments, cmd_train),
    "eval": ("top-1/top-5 of a training checkpoint", add_eval_arguments, cmd_eval),
    "predict": ("classify images with a training checkpoint: top-k class names and probabilities", add_predict_arguments,
                cmd_predict),
    "allocate": ("learn each block's neurons per scale from data (train a seed, rank |gamma|)", add_allocate_arguments,
                 cmd_allocate),
    "latency-model": ("time SA blocks on this device and fit a latency cost model (ms per neuron and per branch)",
                      add_latency_model_arguments, cmd_latency_model),
    "study": ("is the allocation worth it? learned vs uniform, random, ResNet and a heuristic at matched MACs, "
              "over seeds", add_study_arguments, cmd_study),
    "demo": ("the whole pipeline on Fashion-MNIST: allocate, train, compare, report", add_demo_arguments, cmd_demo),
    "export": ("ONNX export (opset 17, dynamic batch), checked in onnxruntime", add_export_arguments, cmd_export),
    "bench": ("latency/throughput against ResNet-50, SE-ResNet-50 and ResNeXt-50, interleaved", add_bench_arguments,
              cmd_bench),
    "detect-train": ("Faster R-CNN + FPN with a ScaleNet backbone on a COCO-format set (torchrun for DDP)",
                     add_detect_train_arguments, cmd_detect_train),
    "detect-eval": ("COCO box metrics of a detect-train checkpoint (pycocotools)", add_detect_eval_arguments,
                    cmd_detect_eval),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="scalenet",
        description="ScaleNet: scale aggregation networks with data-driven neuron allocation (CVPR 2019).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (help_text, add_arguments, func) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        add_arguments(p)
        p.set_defaults(func=func)
    return parser


def given_options(argv: Sequence[str] | None) -> frozenset[str]:
    """The destinations of the options given on the command line (not left at their defaults):
    the same parse with every default suppressed."""
    parser = build_parser()
    for sub in parser._subparsers._group_actions[0].choices.values():  # noqa: SLF001 (argparse has no public walk)
        for action in sub._actions:
            action.default = argparse.SUPPRESS
    given = vars(parser.parse_args(sys.argv[1:] if argv is None else argv))
    return frozenset(k for k in given if k not in ("command", "func"))


def main(argv: Sequence[str] | None = None) -> int:
    from .training import Preempted, TrainingError, is_main_process

    args = build_parser().parse_args(argv)
    args.given = given_options(argv)
    try:
        code = args.func(args)
        _close_process_group()
        return code
    except Preempted as e:  # SIGTERM: the position is saved; torchrun or the scheduler restarts the command
        if is_main_process():
            print(f"scalenet: {e}", file=sys.stderr)
        _close_process_group()  # every rank stopped at the same step
        return e.exit_code
    # ImportError: a missing optional dependency (pycocotools, onnxruntime); the message says what to install
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError,
            ImportError) as e:
        print(f"scalenet: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingError as e:  # a diverged run: what happened and what is kept
        print(f"scalenet: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("scalenet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `scalenet info ... | head`
        return 0


def _close_process_group() -> None:
    """Tears down the process group a torchrun run set up, before the interpreter exits: left to
    interpreter shutdown, gloo's worker threads can abort the process ("terminate called without
    an active exception", pytorch/pytorch#190489). Only where every rank got here (success or
    an agreed stop): after one rank's error the others may still be inside a collective."""
    from .compat import destroy_process_group

    destroy_process_group()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
